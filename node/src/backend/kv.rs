//! Which positions one layer's KV cache holds. A layer that attends to everything keeps every
//! position; a sliding-window layer drops the positions no query can see any more, so that a
//! session's cache on it stays bounded however long the session runs.
//!
//! The backends keep the keys and values; this is only their bookkeeping, shared so that the CPU
//! and the GPU drop and rewind alike.

use crate::error::RunError;
use crate::runtime::PREFILL_CHUNK;

/// Positions a window layer keeps beyond what its next query sees, so that a step of up to this
/// many tokens can still be undone ([`KvPositions::truncate`]) — a retried decode step or prefill
/// chunk.
pub const REWIND: usize = PREFILL_CHUNK;
/// Dropping moves the kept positions to the front of the buffer; doing it only once this many
/// are droppable keeps the cost per token small.
pub const DROP_EVERY: usize = 64;

/// What one position of one layer's cache holds: a key row `width` wide, and a value row as
/// wide unless the values are part of the key (MLA's latent cache).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvLayout {
    pub width: usize,
    pub values: bool,
}

impl KvLayout {
    /// Keys and values of `width` each.
    pub fn split(width: usize) -> Self {
        KvLayout {
            width,
            values: true,
        }
    }

    /// Values a position takes.
    pub fn per_position(&self) -> usize {
        if self.values {
            2 * self.width
        } else {
            self.width
        }
    }

    /// Refuses keys, values (none for a latent cache) or a shape that do not fit the cache.
    pub fn check(&self, keys: usize, values: Option<usize>, latent: bool) -> Result<(), RunError> {
        if keys != self.width
            || values != self.values.then_some(self.width)
            || latent == self.values
        {
            return Err(RunError::Backend(format!(
                "keys {keys} and values {values:?} wide, latent {latent}, for a KV cache {self:?}"
            )));
        }
        Ok(())
    }
}

/// Positions `base..end` of a session, in a layer with `window` (0: no window).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvPositions {
    pub base: usize,
    pub end: usize,
    pub window: usize,
}

impl KvPositions {
    pub fn new(window: usize) -> Self {
        KvPositions {
            base: 0,
            end: 0,
            window,
        }
    }

    /// The most positions a layer with `window` holds while a step of `tokens` runs, or `None`
    /// without a window: what a step needs and a rewind may, and up to `DROP_EVERY - 1` that
    /// wait to be dropped.
    pub fn most_held(window: usize, tokens: usize) -> Option<usize> {
        (window > 0).then(|| window - 1 + REWIND + DROP_EVERY - 1 + tokens)
    }

    /// Before `tokens` new positions are appended at `pos0`: checks that they follow the held
    /// ones and returns how many leading positions to drop first (then `base` has moved).
    pub fn append(&mut self, pos0: usize, tokens: usize) -> Result<usize, RunError> {
        if pos0 != self.end {
            return Err(RunError::Backend(format!(
                "the KV cache holds positions {}..{}, not a step at {pos0}",
                self.base, self.end
            )));
        }
        let mut drop = 0;
        if self.window > 0 {
            // What the queries of this step and a rewind of up to REWIND positions need.
            let keep_from = pos0.saturating_sub(self.window - 1 + REWIND);
            if keep_from >= self.base + DROP_EVERY {
                drop = keep_from - self.base;
                self.base = keep_from;
            }
        }
        self.end = pos0 + tokens;
        Ok(drop)
    }

    /// Forgets every position from `pos` on. A window layer can go back only as far as it
    /// still holds what a query at `pos` sees.
    pub fn truncate(&mut self, pos: usize) -> Result<(), RunError> {
        if pos >= self.end {
            return Ok(());
        }
        let needed = if self.window == 0 || pos == 0 {
            0
        } else {
            (pos + 1).saturating_sub(self.window)
        };
        if pos > 0 && needed < self.base {
            return Err(RunError::RewindTooFar {
                pos,
                held: self.base,
            });
        }
        if pos == 0 {
            self.base = 0;
        }
        self.end = pos;
        Ok(())
    }

    /// The bookkeeping of a copy of the first `tokens` positions, for a new session that
    /// starts from them; refused where some of them were dropped or never held.
    pub fn first(&self, tokens: usize) -> Result<KvPositions, RunError> {
        if self.base > 0 || tokens > self.end {
            return Err(RunError::Backend(format!(
                "the KV cache holds positions {}..{}, not 0..{tokens}",
                self.base, self.end
            )));
        }
        Ok(KvPositions {
            base: 0,
            end: tokens,
            window: self.window,
        })
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.end - self.base
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_window_everything_stays() {
        let mut p = KvPositions::new(0);
        for pos in 0..2000 {
            assert_eq!(p.append(pos, 1).unwrap(), 0);
        }
        assert_eq!((p.base, p.end), (0, 2000));
        p.truncate(3).unwrap();
        assert_eq!(p.len(), 3);
        assert!(p.append(7, 1).is_err());
    }

    #[test]
    fn a_window_layer_holds_a_bounded_number_of_positions() {
        let window = 512;
        let mut p = KvPositions::new(window);
        let mut most = 0;
        // A prefill in chunks, then decode.
        let mut steps: Vec<usize> = vec![PREFILL_CHUNK; 5];
        steps.extend(std::iter::repeat_n(1, 3000));
        let mut pos = 0;
        for n in steps {
            p.append(pos, n).unwrap();
            pos += n;
            // Every query of the step sees what it must.
            assert!(p.base <= (pos - n + 1).saturating_sub(window));
            most = most.max(p.len());
        }
        let bound = KvPositions::most_held(window, PREFILL_CHUNK).unwrap();
        assert!(most <= bound && most > window + REWIND, "{most} vs {bound}");
        assert!(p.base > 0);
    }

    #[test]
    fn a_copy_of_the_first_positions_needs_all_of_them() {
        let mut p = KvPositions::new(16);
        p.append(0, 40).unwrap();
        assert_eq!(
            p.first(32).unwrap(),
            KvPositions {
                base: 0,
                end: 32,
                window: 16
            }
        );
        assert!(p.first(41).is_err());
        for pos in 40..2000 {
            p.append(pos, 1).unwrap();
        }
        assert!(p.base > 0 && p.first(32).is_err());
    }

    #[test]
    fn a_window_layer_rewinds_a_step_but_not_further_than_it_holds() {
        let mut p = KvPositions::new(16);
        for pos in 0..1000 {
            p.append(pos, 1).unwrap();
        }
        // The last prefill-sized step can be undone.
        p.truncate(1000 - REWIND).unwrap();
        assert_eq!(p.end, 1000 - REWIND);
        // Back to a position whose window was dropped: refused, and nothing changes.
        let before = p.clone();
        assert!(matches!(
            p.truncate(p.base + 3),
            Err(RunError::RewindTooFar { .. })
        ));
        assert_eq!(p, before);
        // Back to the start always works.
        p.truncate(0).unwrap();
        assert_eq!((p.base, p.end), (0, 0));
    }
}
