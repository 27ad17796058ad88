//! Hop verification: a node can be broken (a bad driver, an overheated card) or malicious and
//! return wrong hidden states. With verification on, every hop without `head` taps a copy of
//! its output to the client, and every few steps (an audit) a checker — another node serving
//! the same span, with a session of its own — computes the hop's span again from the same
//! inputs, for every position since the last audit in one batched step. The head hop is checked
//! by its greedy token and its log-probability after each step. When a hop and its checker disagree, a third node decides from the whole
//! history; the node that disagrees with it is banned (see [`crate::bans`]), and a lying
//! route hop is replaced, the hops' caches cut back to the first wrong step, and the steps since
//! then run again, so the generation goes on from correct state.

use std::collections::{BTreeMap, HashSet};

use baton_protocol::wire::MAX_FRAME_BYTES;
use baton_protocol::HiddenStates;

use super::check::{Checker, Running, Seen};
use super::*;

/// Hidden states of a position agree when they differ by at most this share of their norm:
/// f16 on the wire and different backends stay well within it.
pub const TOLERANCE: f32 = 0.05;
/// The head's log-probabilities of its token agree within this many nats.
pub const LOGPROB_TOLERANCE: f32 = 0.25;
/// The most bytes of hidden states one check step carries.
const CHUNK_BYTES: usize = 8 << 20;
/// How long a checker has to answer, and a hop's tap to arrive.
pub(super) const CHECK_WAIT: Duration = Duration::from_secs(60);

/// Peers found lying, shared by the sessions of one client.
pub type Banned = Arc<std::sync::Mutex<HashSet<PeerId>>>;

/// The first row (of `width` values) where `got` differs from `want` by more than `tol` of
/// `want`'s norm; row 0 when the lengths differ.
pub fn first_mismatch(got: &[f32], want: &[f32], width: usize, tol: f32) -> Option<usize> {
    if got.len() != want.len() || width == 0 {
        return Some(0);
    }
    got.chunks(width)
        .zip(want.chunks(width))
        .position(|(g, w)| {
            let (mut diff, mut norm) = (0f64, 0f64);
            for (a, b) in g.iter().zip(w) {
                diff += ((a - b) as f64).powi(2);
                norm += (*b as f64).powi(2);
            }
            // NaN never agrees.
            let agree = diff.sqrt() <= tol as f64 * norm.sqrt().max(1e-6);
            !agree
        })
}

/// Who a third node sides against, from whether the route hop's and the checker's outputs each
/// disagree with its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    RouteHop,
    Checker,
    Undecided,
}

pub fn decide(route_disagrees: bool, checker_disagrees: bool) -> Verdict {
    match (route_disagrees, checker_disagrees) {
        (true, false) => Verdict::RouteHop,
        (false, true) => Verdict::Checker,
        _ => Verdict::Undecided,
    }
}

/// What a verified session keeps.
pub(super) struct Verify {
    /// An audit follows every step whose number is a multiple of this (step 0, the prompt,
    /// included).
    every: u64,
    /// Per route position without head: its output of each step, by step number.
    pub taps: Vec<BTreeMap<u64, HiddenStates>>,
    /// Every step the session ran: its number and first position.
    pub steps: Vec<(u64, usize)>,
    /// The token the head hop sampled after each step, with its log-probability.
    pub tokens: BTreeMap<u64, (u32, Option<f32>)>,
    /// Per route position, its checker when no check is running on it.
    pub checkers: Vec<Option<Checker>>,
    /// Positions no other node serves: they go unchecked.
    pub unchecked: Vec<bool>,
    pub banned: Banned,
    /// The last step of an audit that is due but not started (its taps may be on their way).
    pub pending: Option<u64>,
    /// Checks running alongside the generation.
    pub running: Vec<Running>,
    /// A disagreement found while the head hop ran steps by itself, settled once the client
    /// has the session again.
    pub found: Option<(usize, Checker, Seen)>,
}

impl Verify {
    pub fn new(share: f64, hops: usize, banned: Banned) -> Verify {
        Verify {
            every: (1.0 / share.clamp(1e-6, 1.0)).round().max(1.0) as u64,
            taps: vec![BTreeMap::new(); hops],
            steps: Vec::new(),
            tokens: BTreeMap::new(),
            checkers: (0..hops).map(|_| None).collect(),
            unchecked: vec![false; hops],
            banned,
            pending: None,
            running: Vec::new(),
            found: None,
        }
    }

    /// Whether an audit follows step `seq`.
    pub fn due(&self, seq: u64) -> bool {
        seq.is_multiple_of(self.every)
    }

    /// Forgets the steps from `seq` on.
    pub fn forget_from(&mut self, seq: u64) {
        for t in &mut self.taps {
            t.retain(|s, _| *s < seq);
        }
        self.steps.retain(|(s, _)| *s < seq);
        self.tokens.retain(|s, _| *s < seq);
    }

    /// The steps whose first position is `from` or later, up to step `last`: number, first
    /// and end position (`fed` positions in all).
    pub fn window(&self, from: usize, last: u64, fed: usize) -> Vec<(u64, usize, usize)> {
        let mut out = Vec::new();
        for (i, &(seq, start)) in self.steps.iter().enumerate() {
            let end = self.steps.get(i + 1).map_or(fed, |s| s.1).min(fed);
            if start >= from && seq <= last {
                out.push((seq, start, end));
            }
        }
        out
    }

    /// Whether every tap the checks need of the steps up to `last` is in.
    pub fn taps_in(&self, last: u64) -> bool {
        self.missing_taps(last).is_empty()
    }

    /// The positions whose taps of the steps up to `last` are not all in, of those the checks
    /// need (a position's taps are its own check's outputs and the next one's inputs).
    pub fn missing_taps(&self, last: u64) -> Vec<usize> {
        let heads = self.taps.len().saturating_sub(1);
        (0..heads)
            .filter(|&j| !self.unchecked[j] || !self.unchecked[j + 1])
            .filter(|&j| {
                self.steps
                    .iter()
                    .any(|(s, _)| *s <= last && !self.taps[j].contains_key(s))
            })
            .collect()
    }

    /// Position `k`'s outputs of the steps in `window`, if all are in.
    pub fn outputs(&self, k: usize, window: &[(u64, usize, usize)]) -> Option<Vec<HiddenStates>> {
        window
            .iter()
            .map(|(s, _, _)| self.taps.get(k)?.get(s).cloned())
            .collect()
    }

    /// What the head hop said after the steps in `window`.
    pub fn said(&self, from: usize, window: &[(u64, usize, usize)]) -> Checked {
        let tokens = window
            .iter()
            .filter_map(|&(seq, at, _)| {
                let &(token, logprob) = self.tokens.get(&seq)?;
                Some(Said { at, token, logprob })
            })
            .collect();
        Checked {
            from,
            tokens,
            ..Checked::default()
        }
    }
}

/// What a span computed over the positions from `from` on: hidden states `width` wide, or
/// for the head the token of each step, with the step's first position.
#[derive(Default)]
pub(super) struct Checked {
    pub from: usize,
    pub hidden: Vec<f32>,
    pub width: usize,
    pub tokens: Vec<Said>,
}

/// The head's token after a step, with its log-probability, and the step's first position.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Said {
    pub at: usize,
    pub token: u32,
    pub logprob: Option<f32>,
}

impl Said {
    /// The same token after the same step, with log-probabilities (when both have one) within
    /// [`LOGPROB_TOLERANCE`]: a perturbed head that still picks the same token shows here.
    fn agrees(&self, o: &Said) -> bool {
        self.at == o.at
            && self.token == o.token
            && match (self.logprob, o.logprob) {
                (Some(a), Some(b)) => (a - b).abs() <= LOGPROB_TOLERANCE,
                _ => true,
            }
    }
}

impl Checked {
    pub fn of(from: usize, pieces: Vec<HiddenStates>) -> Result<Checked, NetError> {
        let mut out = Checked {
            from,
            ..Checked::default()
        };
        for h in pieces {
            out.width = h.hidden as usize;
            out.hidden.extend(decode(&h)?);
        }
        Ok(out)
    }

    /// The first position where the two disagree, if they do.
    pub fn differs(&self, other: &Checked) -> Option<usize> {
        if !self.tokens.is_empty() || !other.tokens.is_empty() {
            if self.tokens.len() != other.tokens.len() {
                return Some(self.from);
            }
            return self
                .tokens
                .iter()
                .zip(&other.tokens)
                .find(|(a, b)| !a.agrees(b))
                .map(|(a, _)| a.at);
        }
        first_mismatch(&self.hidden, &other.hidden, self.width, TOLERANCE).map(|r| self.from + r)
    }

    /// The position after the last one this covers.
    pub fn end(&self) -> usize {
        match self.tokens.last() {
            Some(s) => s.at + 1,
            None => self.from + self.hidden.len() / self.width.max(1),
        }
    }

    /// The part over positions `from..to`.
    pub fn within(mut self, from: usize, to: usize) -> Checked {
        let w = self.width;
        let rows = |p: usize| p.saturating_sub(self.from) * w;
        let (a, b) = (rows(from), rows(to));
        self.hidden.truncate(b.min(self.hidden.len()));
        self.hidden.drain(..a.min(self.hidden.len()));
        self.tokens.retain(|s| s.at >= from && s.at < to);
        self.from = self.from.max(from);
        self
    }
}

/// One check step's input.
pub(super) enum Piece {
    Tokens(Vec<u32>),
    Hidden(HiddenStates),
}

impl Piece {
    pub fn len(&self) -> usize {
        match self {
            Piece::Tokens(t) => t.len(),
            Piece::Hidden(h) => h.tokens as usize,
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Piece::Tokens(t) => t.len() * 4,
            Piece::Hidden(h) => h.data.len(),
        }
    }

    /// Appends `other`; false when the two cannot be one step.
    fn append(&mut self, other: &Piece) -> bool {
        match (self, other) {
            (Piece::Tokens(a), Piece::Tokens(b)) => {
                a.extend_from_slice(b);
                true
            }
            (Piece::Hidden(a), Piece::Hidden(b)) => a.append(b),
            _ => false,
        }
    }
}

/// Hidden states from a hop, as f32.
pub(super) fn decode(h: &HiddenStates) -> Result<Vec<f32>, NetError> {
    h.decode(MAX_FRAME_BYTES / 2)
        .map_err(|e| NetError::Protocol(format!("a hop's hidden states: {e}")))
}

/// Steps' inputs merged into pieces of at most [`CHUNK_BYTES`] (a step each at least), each
/// with its first position.
pub(super) fn merge(steps: Vec<(usize, Piece)>) -> Vec<(usize, Piece)> {
    let mut out: Vec<(usize, Piece)> = Vec::new();
    for (start, piece) in steps {
        if let Some((_, last)) = out.last_mut() {
            if last.bytes() + piece.bytes() <= CHUNK_BYTES && last.append(&piece) {
                continue;
            }
        }
        out.push((start, piece));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_agree_within_the_tolerance_of_their_norm() {
        let want = [3.0, 4.0, 0.0, 0.0, 1.0, 0.0];
        // 1% off in the first row, exact in the others.
        let close = [3.03, 4.0, 0.0, 0.0, 1.0, 0.0];
        assert_eq!(first_mismatch(&close, &want, 2, TOLERANCE), None);
        // 10% off in the third row.
        let off = [3.0, 4.0, 0.0, 0.0, 1.1, 0.0];
        assert_eq!(first_mismatch(&off, &want, 2, TOLERANCE), Some(2));
        // A zero row must be matched exactly (up to a tiny floor), a NaN never matches.
        let noise = [3.0, 4.0, 0.01, 0.0, 1.0, 0.0];
        assert_eq!(first_mismatch(&noise, &want, 2, TOLERANCE), Some(1));
        let nan = [f32::NAN, 4.0, 0.0, 0.0, 1.0, 0.0];
        assert_eq!(first_mismatch(&nan, &want, 2, TOLERANCE), Some(0));
        assert_eq!(first_mismatch(&want[..4], &want, 2, TOLERANCE), Some(0));
    }

    #[test]
    fn the_third_node_sides_against_exactly_one() {
        assert_eq!(decide(true, false), Verdict::RouteHop);
        assert_eq!(decide(false, true), Verdict::Checker);
        assert_eq!(decide(true, true), Verdict::Undecided);
        assert_eq!(decide(false, false), Verdict::Undecided);
    }

    #[test]
    fn audits_fall_every_few_steps_over_whole_steps() {
        let mut v = Verify::new(0.1, 2, Banned::default());
        assert!(v.due(0) && v.due(10) && !v.due(1) && !v.due(9));
        assert!(Verify::new(1.0, 1, Banned::default()).due(5));
        // Steps 0 (positions 0..4), 1 (4), 2 (5); 7 positions fed.
        v.steps = vec![(0, 0), (1, 4), (2, 5)];
        assert_eq!(v.window(0, 2, 7), vec![(0, 0, 4), (1, 4, 5), (2, 5, 7)]);
        assert_eq!(v.window(4, 1, 7), vec![(1, 4, 5)]);
        let tap = HiddenStates::encode(&[1.0; 4], 1, 4, WireDtype::F16);
        v.taps[0].insert(0, tap.clone());
        assert!(v.taps_in(0) && !v.taps_in(1));
        v.taps[0].insert(1, tap);
        assert!(v.taps_in(1));
        assert!(v.outputs(0, &v.window(0, 1, 7)).is_some());
        assert!(v.outputs(0, &v.window(0, 2, 7)).is_none());
        assert_eq!(v.missing_taps(2), vec![0]);
        // Taps of a position that neither check needs are not waited for.
        v.unchecked = vec![true, true];
        assert!(v.taps_in(2));
        v.forget_from(1);
        assert_eq!(v.steps, vec![(0, 0)]);
        v.unchecked = vec![false, false];
        assert!(v.taps_in(5));
    }

    #[test]
    fn steps_merge_into_bounded_pieces() {
        let step = |at: usize, n: u32| {
            let h = HiddenStates::encode(&vec![1.0; n as usize * 4], n, 4, WireDtype::F16);
            (at, Piece::Hidden(h))
        };
        let merged = merge(vec![step(0, 1), step(1, 2), step(3, 3)]);
        assert_eq!(merged.len(), 1);
        assert_eq!((merged[0].0, merged[0].1.len()), (0, 6));
        // Two halves of the limit make one piece; one more token starts another.
        let half = (CHUNK_BYTES / 16) as u32;
        let pieces = merge(vec![step(0, half), step(9, half), step(99, 1)]);
        let starts: Vec<usize> = pieces.iter().map(|p| p.0).collect();
        assert_eq!(starts, vec![0, 99]);
        let tokens = merge(vec![
            (0, Piece::Tokens(vec![1, 2])),
            (2, Piece::Tokens(vec![3])),
        ]);
        assert_eq!(tokens.len(), 1);
        assert_eq!(tokens[0].1.len(), 3);
    }

    #[test]
    fn checks_disagree_at_the_first_wrong_position() {
        let hidden = |from: usize, rows: &[f32]| Checked {
            from,
            hidden: rows.iter().flat_map(|v| [*v, 1.0]).collect(),
            width: 2,
            tokens: Vec::new(),
        };
        let route = hidden(5, &[1.0, 2.0, 3.0]);
        assert_eq!(route.differs(&hidden(5, &[1.0, 2.0, 3.0])), None);
        assert_eq!(route.differs(&hidden(5, &[1.0, 2.5, 3.0])), Some(6));
        // A third node's whole history, longer than the window, cut to it.
        assert_eq!(route.end(), 8);
        let third = hidden(0, &[9.0, 9.0, 9.0, 9.0, 9.0, 1.0, 2.0, 3.0, 7.0]).within(5, 8);
        assert_eq!(route.differs(&third), None);
        let tokens = |t: &[(usize, u32)]| Checked {
            from: 5,
            tokens: t
                .iter()
                .map(|&(at, token)| Said {
                    at,
                    token,
                    logprob: Some(-1.0),
                })
                .collect(),
            ..Checked::default()
        };
        let route = tokens(&[(5, 10), (6, 11), (7, 12)]);
        assert_eq!(route.differs(&tokens(&[(5, 10), (6, 11), (7, 12)])), None);
        let longer = tokens(&[(5, 10), (6, 11), (7, 12), (8, 1)]).within(5, route.end());
        assert_eq!(route.differs(&longer), None);
        // The same tokens with another log-probability: a perturbed head.
        let mut unsure = tokens(&[(5, 10), (6, 11), (7, 12)]);
        unsure.tokens[1].logprob = Some(-1.5);
        assert_eq!(route.differs(&unsure), Some(6));
        unsure.tokens[1].logprob = Some(-1.1);
        assert_eq!(route.differs(&unsure), None);
        assert_eq!(
            route.differs(&tokens(&[(5, 10), (6, 13), (7, 12)])),
            Some(6)
        );
        assert_eq!(route.differs(&tokens(&[(5, 10)])), Some(5));
    }
}
