//! Reading logits: greedy and random sampling (temperature, top-k, top-p, seed, logit bias),
//! the top-k of a row, log-softmax.

pub use baton_protocol::wire::Sampling;

/// A seeded sampler: the same seed and logits give the same tokens on every machine.
pub struct Sampler {
    params: Sampling,
    state: u64,
    /// Added to these tokens' logits before anything else (OpenAI's `logit_bias`).
    bias: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(params: Sampling) -> Self {
        Sampler {
            params,
            state: params.seed ^ 0x9e37_79b9_7f4a_7c15,
            bias: Vec::new(),
        }
    }

    /// The same sampler with `bias` added to the logits it reads; ids past the vocabulary are
    /// left out.
    pub fn with_bias(mut self, bias: Vec<(u32, f32)>) -> Self {
        self.bias = bias;
        self
    }

    /// splitmix64: small, fast and fully determined by the seed.
    fn next_f64(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Samples the token of step `step` of a session: the draw depends on the seed and the
    /// step alone, so a hop that replaces another (or a step run again) draws the same.
    pub fn sample_at(&mut self, logits: &[f32], step: u64) -> u32 {
        self.state = (self.params.seed ^ 0x9e37_79b9_7f4a_7c15)
            .wrapping_add(step.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        self.sample(logits)
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.bias.is_empty() {
            return self.draw(logits);
        }
        let mut biased = logits.to_vec();
        for &(id, b) in &self.bias {
            if let Some(l) = biased.get_mut(id as usize) {
                *l += b;
            }
        }
        self.draw(&biased)
    }

    fn draw(&mut self, logits: &[f32]) -> u32 {
        let p = self.params;
        if p.temperature <= 0.0 || p.top_k == 1 {
            return argmax(logits);
        }
        // Candidates, most likely first when a cut needs the order.
        let k = p.top_k as usize;
        let mut cand: Vec<(u32, f32)> = if k > 0 && k < logits.len() {
            top_k(logits, k)
        } else {
            logits
                .iter()
                .enumerate()
                .map(|(i, l)| (i as u32, *l))
                .collect()
        };
        if p.top_p < 1.0 && cand.len() > 1 {
            cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        }
        let max = cand.iter().fold(f32::NEG_INFINITY, |m, c| m.max(c.1));
        let mut weights: Vec<f64> = cand
            .iter()
            .map(|c| (((c.1 - max) / p.temperature) as f64).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let keep = weights
                .iter()
                .position(|w| {
                    acc += w / total;
                    acc >= p.top_p as f64
                })
                .map_or(weights.len(), |i| i + 1);
            weights.truncate(keep);
        }
        let total: f64 = weights.iter().sum();
        let mut r = self.next_f64() * total;
        for (w, c) in weights.iter().zip(&cand) {
            if r < *w {
                return c.0;
            }
            r -= w;
        }
        cand[weights.len() - 1].0
    }
}

/// The index of the largest logit; ties go to the lowest index.
pub fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best as u32
}

/// The `k` largest entries of `row`, largest first, as (id, logit).
pub fn top_k(row: &[f32], k: usize) -> Vec<(u32, f32)> {
    let k = k.min(row.len());
    if k == 0 {
        return Vec::new();
    }
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    for (i, &v) in row.iter().enumerate() {
        if best.len() < k || v > best[best.len() - 1].1 {
            let at = best.partition_point(|(_, b)| *b >= v);
            best.insert(at, (i as u32, v));
            best.truncate(k);
        }
    }
    best
}

/// `log sum exp(row)`: what a logit less it is its log-probability.
fn log_norm(row: &[f32]) -> f32 {
    let max = row.iter().fold(f32::NEG_INFINITY, |a, b| a.max(*b));
    let sum: f64 = row.iter().map(|v| ((v - max) as f64).exp()).sum();
    max + sum.ln() as f32
}

/// `log softmax(row)[id]`.
pub fn log_prob(row: &[f32], id: usize) -> f32 {
    row[id] - log_norm(row)
}

/// `log softmax(row)` of `id`, and of the `k` likeliest tokens, likeliest first (ties by id):
/// what a token is reported with when its log-probabilities are asked for.
pub fn log_probs(row: &[f32], id: u32, k: usize) -> (f32, Vec<(u32, f32)>) {
    let norm = log_norm(row);
    let of = |id: u32| row.get(id as usize).map_or(f32::NEG_INFINITY, |l| l - norm);
    let top = top_k(row, k).into_iter().map(|(i, _)| (i, of(i))).collect();
    (of(id), top)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_and_breaks_ties_by_index() {
        let row = [0.5, 3.0, -1.0, 3.0, 2.0];
        assert_eq!(top_k(&row, 3), vec![(1, 3.0), (3, 3.0), (4, 2.0)]);
        assert_eq!(top_k(&row, 10).len(), 5);
        assert_eq!(argmax(&row), 1);
    }

    #[test]
    fn log_prob_of_uniform_row() {
        let row = [1.0f32; 4];
        assert!((log_prob(&row, 2) - (0.25f32).ln()).abs() < 1e-6);
    }

    #[test]
    fn log_probs_report_the_token_and_the_likeliest() {
        let row = [0.0f32, 2.0, 1.0, 2.0];
        let (lp, top) = log_probs(&row, 2, 3);
        assert!((lp - log_prob(&row, 2)).abs() < 1e-6);
        let ids: Vec<u32> = top.iter().map(|t| t.0).collect();
        assert_eq!(ids, vec![1, 3, 2]);
        let mass: f32 = (0..4).map(|i| log_prob(&row, i).exp()).sum();
        assert!((mass - 1.0).abs() < 1e-6);
        assert!((top[0].1 - log_prob(&row, 1)).abs() < 1e-6 && top[0].1 == top[1].1);
        assert!(log_probs(&row, 2, 0).1.is_empty());
    }

    #[test]
    fn logit_bias_moves_greedy_and_random_draws() {
        let logits = [1.0, 2.0, 0.5, 1.9];
        let mut s = Sampler::new(Sampling::default()).with_bias(vec![(1, -100.0), (9, 5.0)]);
        assert_eq!(
            s.sample(&logits),
            3,
            "the banned favourite gives way to the next"
        );
        let params = Sampling {
            temperature: 1.0,
            seed: 3,
            ..Default::default()
        };
        let mut s = Sampler::new(params).with_bias(vec![(2, 100.0)]);
        assert!(
            (0..50).all(|_| s.sample(&logits) == 2),
            "a large bias forces its token"
        );
    }

    #[test]
    fn sampling_is_greedy_at_zero_and_seeded_otherwise() {
        let logits = [1.0, 2.0, 0.5, 1.9];
        let mut s = Sampler::new(Sampling::default());
        assert_eq!(s.sample(&logits), 1);
        let params = Sampling {
            temperature: 1.0,
            seed: 7,
            ..Default::default()
        };
        let draw = |p: Sampling| {
            let mut s = Sampler::new(p);
            (0..200).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        let a = draw(params);
        assert_eq!(a, draw(params), "same seed, same tokens");
        assert_ne!(a, draw(Sampling { seed: 8, ..params }));
        // Every token appears at temperature 1; top-k 2 keeps only ids 1 and 3.
        assert!((0..4).all(|id| a.contains(&id)));
        let b = draw(Sampling { top_k: 2, ..params });
        assert!(b.iter().all(|id| *id == 1 || *id == 3));
        // top-p 0.5 keeps the smallest set reaching half the mass: ids 1 and 3 here.
        let c = draw(Sampling {
            top_p: 0.5,
            ..params
        });
        assert!(c.iter().all(|id| *id == 1 || *id == 3) && c.contains(&3));
    }
}
