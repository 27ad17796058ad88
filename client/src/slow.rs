//! Hops that are alive but slow: each decode step's per-hop compute times, checked against what
//! each hop's record claims. A hop that stays well above its claim for several steps in a row is
//! to be replaced between steps, as a leaving hop is. No I/O: the session feeds it the times it
//! receives and acts on what it returns.

/// Consecutive slow steps after which a hop is replaced.
pub const SLOW_STEPS: u32 = 8;

/// Whether `took` microseconds is well above a claim of `claimed` (0: no claim, never slow).
/// The margin is wide: a node's claim is measured at start, alone, and a busy node serving
/// several sessions may take a few times as long.
pub fn too_slow(claimed: u64, took: u64) -> bool {
    claimed > 0 && took > claimed.saturating_mul(4).saturating_add(20_000)
}

/// Per hop of a route, how many decode steps in a row it has been too slow.
#[derive(Clone, Debug, Default)]
pub struct SlowHops {
    runs: Vec<u32>,
}

impl SlowHops {
    /// Takes one decode step's compute time of every hop (`hop_us`, in route order) against
    /// their claims, and returns the hops that have now been too slow for [`SLOW_STEPS`] steps
    /// in a row. Times that do not match the route (a hop left out, or extra) are ignored.
    pub fn observe(&mut self, claimed: &[u64], hop_us: &[u32]) -> Vec<usize> {
        if hop_us.len() != claimed.len() {
            return Vec::new();
        }
        self.runs.resize(claimed.len(), 0);
        let mut slow = Vec::new();
        for (k, (&c, &t)) in claimed.iter().zip(hop_us).enumerate() {
            if too_slow(c, t as u64) {
                self.runs[k] += 1;
                if self.runs[k] == SLOW_STEPS {
                    slow.push(k);
                }
            } else {
                self.runs[k] = 0;
            }
        }
        slow
    }

    /// Forgets hop `k`'s run: it was replaced.
    pub fn reset(&mut self, k: usize) {
        if let Some(r) = self.runs.get_mut(k) {
            *r = 0;
        }
    }
}

/// The microseconds per decode step a record's throughput claims (0 for no claim).
pub fn claimed_us(tokens_per_s: f32) -> u64 {
    if tokens_per_s.is_finite() && tokens_per_s > 0.0 {
        (1e6 / tokens_per_s as f64).min(u64::MAX as f64) as u64
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hop_slow_for_a_run_of_steps_is_named_once() {
        let claimed = [5_000, 5_000, 0];
        let mut s = SlowHops::default();
        // Hop 1 takes 60 ms against 5 ms claimed; hop 2 claims nothing and is never slow.
        for step in 1..=SLOW_STEPS + 3 {
            let got = s.observe(&claimed, &[4_000, 60_000, 900_000]);
            assert_eq!(got, if step == SLOW_STEPS { vec![1] } else { vec![] });
        }
        // A fast step ends the run; a replaced hop starts afresh.
        s.observe(&claimed, &[4_000, 4_000, 0]);
        for _ in 1..SLOW_STEPS {
            assert!(s.observe(&claimed, &[4_000, 60_000, 0]).is_empty());
        }
        s.reset(1);
        assert!(s.observe(&claimed, &[4_000, 60_000, 0]).is_empty());
    }

    #[test]
    fn busy_but_honest_hops_and_odd_input_are_left_alone() {
        let mut s = SlowHops::default();
        for _ in 0..3 * SLOW_STEPS {
            // Three times the claim plus some is within the margin.
            assert!(s.observe(&[5_000], &[3 * 5_000 + 15_000]).is_empty());
            // Times that do not match the route are ignored.
            assert!(s.observe(&[5_000], &[1_000_000, 1_000_000]).is_empty());
        }
        assert_eq!(claimed_us(200.0), 5_000);
        assert_eq!(claimed_us(0.0), 0);
        assert_eq!(claimed_us(f32::NAN), 0);
        assert_eq!(claimed_us(-1.0), 0);
        assert_eq!(claimed_us(1e-30), u64::MAX);
    }
}
