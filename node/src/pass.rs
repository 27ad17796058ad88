//! The layout of one pass: the new tokens of several sessions' steps, one segment per step, in
//! one activation matrix. Linear layers run over all its rows at once, reading each weight once;
//! attention runs per segment over that session's own KV cache.
//!
//! Steps of fewer than [`GEMM_MIN_TOKENS`] tokens (decode) come first, so that a backend can
//! compute their rows as such a step alone computes them (see `Backend::linear`).

use baton_shaders::cpu::GEMM_MIN_TOKENS;

use crate::error::RunError;
use crate::moe::Remote;

/// One step's rows in a pass: `len` rows from `start`, at positions `pos0..pos0 + len` of its
/// session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub start: usize,
    pub len: usize,
    pub pos0: usize,
}

#[derive(Clone, Debug)]
pub struct Pass {
    segments: Vec<Segment>,
    decode: usize,
    /// Where the routed experts the span does not hold run.
    remote: Remote,
}

/// Whether a step of `len` tokens is computed as decode.
pub fn is_decode(len: usize) -> bool {
    len < GEMM_MIN_TOKENS
}

impl Pass {
    /// A pass of steps `(tokens, position of the first)`, in this order: decode steps first.
    pub fn new(steps: impl IntoIterator<Item = (usize, usize)>) -> Result<Pass, RunError> {
        let mut segments = Vec::new();
        let (mut start, mut decode, mut longer) = (0, 0, false);
        for (len, pos0) in steps {
            if len == 0 {
                return Err(RunError::Empty);
            }
            if is_decode(len) {
                if longer {
                    return Err(RunError::Backend(
                        "a pass must hold its decode steps first".into(),
                    ));
                }
                decode += len;
            } else {
                longer = true;
            }
            segments.push(Segment { start, len, pos0 });
            start += len;
        }
        if segments.is_empty() {
            return Err(RunError::Empty);
        }
        Ok(Pass {
            segments,
            decode,
            remote: Remote::default(),
        })
    }

    /// The same pass, sending the rows of experts the span does not hold to `remote`.
    pub fn with_remote(mut self, remote: Remote) -> Pass {
        self.remote = remote;
        self
    }

    pub fn remote(&self) -> &Remote {
        &self.remote
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Rows that belong to decode steps: the first ones.
    pub fn decode_rows(&self) -> usize {
        self.decode
    }

    pub fn tokens(&self) -> usize {
        self.segments.last().map_or(0, |s| s.start + s.len)
    }
}

/// The order in which steps of these lengths enter a pass: decode steps first, each group in
/// the order given.
pub fn order(lens: &[usize]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..lens.len()).collect();
    idx.sort_by_key(|&i| !is_decode(lens[i]));
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_steps_come_first_and_are_counted() {
        let lens = [40, 1, 300, 2, 1];
        let idx = order(&lens);
        assert_eq!(idx, vec![1, 3, 4, 0, 2]);
        let pass = Pass::new(idx.iter().map(|&i| (lens[i], 10 * i))).unwrap();
        assert_eq!(pass.decode_rows(), 4);
        assert_eq!(pass.tokens(), 344);
        assert_eq!(
            pass.segments()[3],
            Segment {
                start: 4,
                len: 40,
                pos0: 0
            }
        );
        assert!(Pass::new([(30, 0), (1, 0)]).is_err());
        assert!(Pass::new([(1, 0), (0, 0)]).is_err());
        assert!(Pass::new([]).is_err());
    }
}
