//! Expert parallelism on the wire: which routed experts a node holds, and the one message a
//! hop sends, per mixture-of-experts layer and step, to a peer holding experts it lacks.
//!
//! Such a call carries only the rows routed to the peer's experts and needs no session: an
//! expert peer keeps no state between calls, so a dead one is replaced by re-sending the same
//! call to another peer holding the same experts.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::HiddenStates;

/// The most experts a layer may have on the wire (DeepSeek-V3 has 256).
pub const MAX_WIRE_EXPERTS: u32 = 1024;

/// The routed experts `start..end` of `of` that a node holds in every mixture-of-experts
/// layer of its span. With `only`, it holds nothing else of those layers (no attention, no KV
/// cache): it answers [`ExpertCall`]s and opens no sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ExpertShard {
    pub start: u32,
    pub end: u32,
    pub of: u32,
    pub only: bool,
}

impl ExpertShard {
    /// Every expert of `of`, beside the rest of the span.
    pub fn all(of: u32) -> ExpertShard {
        ExpertShard {
            start: 0,
            end: of,
            of,
            only: false,
        }
    }

    pub fn holds(&self, expert: u32) -> bool {
        (self.start..self.end).contains(&expert)
    }

    pub fn is_all(&self) -> bool {
        self.start == 0 && self.end == self.of
    }

    /// Whether a node holding it runs a step of its span by itself: every expert, and the
    /// rest of the span beside them.
    pub fn runs_alone(&self) -> bool {
        self.is_all() && !self.only
    }

    /// Whether the numbers make sense: a non-empty range inside `1..=MAX_WIRE_EXPERTS` experts.
    pub fn is_valid(&self) -> bool {
        self.start < self.end && self.end <= self.of && self.of <= MAX_WIRE_EXPERTS
    }
}

impl fmt::Display for ExpertShard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "experts {}..{} of {}", self.start, self.end, self.of)?;
        if self.only {
            write!(f, " (experts only)")?;
        }
        Ok(())
    }
}

/// One expert's rows in an [`ExpertCall`]: the normalised hidden states of the tokens routed to
/// it, and how many of the first rows belong to decode steps (computed as a step of that size
/// alone computes them, so that the output is the same wherever it runs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExpertRows {
    pub expert: u32,
    pub decode: u32,
    pub rows: HiddenStates,
}

/// Hop → expert peer: run these experts of `block` over their rows. Answered with
/// [`ExpertOut`] (or an error) on the same stream, in the order of the calls.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExpertCall {
    /// The model the hop runs; a peer serving another refuses.
    pub model_id: String,
    pub block: u32,
    pub experts: Vec<ExpertRows>,
}

/// Expert peer → hop: each expert's output rows (unweighted), in the order of the call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExpertOut {
    pub outputs: Vec<HiddenStates>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_say_what_they_hold() {
        let s = ExpertShard {
            start: 4,
            end: 8,
            of: 8,
            only: true,
        };
        assert!(s.is_valid() && s.holds(4) && s.holds(7) && !s.holds(8) && !s.holds(3));
        assert!(!s.is_all() && ExpertShard::all(8).is_all());
        assert!(ExpertShard::all(8).runs_alone() && !s.runs_alone());
        assert!(!ExpertShard {
            only: true,
            ..ExpertShard::all(8)
        }
        .runs_alone());
        assert_eq!(s.to_string(), "experts 4..8 of 8 (experts only)");
        for (start, end, of) in [(4, 4, 8), (0, 9, 8), (0, 2000, 2000)] {
            let bad = ExpertShard {
                start,
                end,
                of,
                only: false,
            };
            assert!(!bad.is_valid(), "{start}..{end} of {of}");
        }
    }
}
