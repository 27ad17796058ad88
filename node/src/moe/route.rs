//! How a router's scores become each token's experts and their weights: Mixtral's and
//! Qwen3-MoE's softmax, DeepSeek-V2's group-limited softmax and DeepSeek-V3's grouped sigmoid
//! with its choice bias, each as transformers computes it (f32, ties to the lower index).
//! Routing runs on the host over the downloaded router logits, so every backend routes alike.

/// How the router's scores become each token's experts and weights.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Routing {
    /// Softmax over all the experts in f32, the `used` likeliest, their probabilities
    /// renormalised to sum to one when `renorm` (Mixtral always; Qwen3-MoE with
    /// `norm_topk_prob`).
    Softmax { renorm: bool },
    /// DeepSeek-V2: softmax over all the experts in f32; the experts split into `groups`, each
    /// scored by its likeliest, of which the best `keep` groups stay; the `used` likeliest of
    /// those chosen, their probabilities times `scale`, never renormalised (one group: plain
    /// top-k).
    SoftmaxGroups {
        groups: usize,
        keep: usize,
        scale: f32,
    },
    /// DeepSeek-V3: sigmoid scores; for choosing only, a per-expert bias added (the layer's
    /// `exp_probs_b`); the experts split into `groups`, each scored by the sum of its two best
    /// biased scores, of which the best `keep` groups stay; the `used` best biased scores of
    /// those groups chosen; their unbiased scores as weights, renormalised when `renorm`,
    /// times `scale`.
    Grouped {
        groups: usize,
        keep: usize,
        renorm: bool,
        scale: f32,
    },
}

/// Each token's experts in ascending order with their weights, from its row of `experts`
/// router logits; `bias` is the grouped routing's choice bias.
pub fn route(
    logits: &[f32],
    experts: usize,
    used: usize,
    routing: Routing,
    bias: Option<&[f32]>,
) -> Vec<Vec<(u32, f32)>> {
    logits
        .chunks_exact(experts)
        .map(|row| {
            let mut chosen = match routing {
                Routing::Softmax { renorm } => {
                    let probs = softmax(row);
                    let mut chosen = best(&probs, used, &probs);
                    if renorm {
                        normalise(&mut chosen, 0.0);
                    }
                    chosen
                }
                Routing::SoftmaxGroups {
                    groups,
                    keep,
                    scale,
                } => {
                    let probs = softmax(row);
                    let size = experts / groups.max(1);
                    let group_scores: Vec<f32> = probs
                        .chunks(size.max(1))
                        .map(|g| g.iter().copied().fold(f32::NEG_INFINITY, f32::max))
                        .collect();
                    let choice = in_groups(&probs, &best(&group_scores, keep, &group_scores), size);
                    let mut chosen = best(&choice, used, &probs);
                    for c in &mut chosen {
                        c.1 *= scale;
                    }
                    chosen
                }
                Routing::Grouped {
                    groups,
                    keep,
                    renorm,
                    scale,
                } => {
                    let scores: Vec<f32> = row.iter().map(|&l| 1.0 / (1.0 + (-l).exp())).collect();
                    let biased: Vec<f32> = match bias {
                        Some(b) => scores.iter().zip(b).map(|(s, b)| s + b).collect(),
                        None => scores.clone(),
                    };
                    let size = experts / groups.max(1);
                    let group_scores: Vec<f32> = biased
                        .chunks(size.max(1))
                        .map(|g| best(g, 2, g).iter().map(|c| c.1).sum())
                        .collect();
                    let kept = best(&group_scores, keep, &group_scores);
                    let choice = in_groups(&biased, &kept, size);
                    let mut chosen = best(&choice, used, &scores);
                    if renorm {
                        normalise(&mut chosen, 1e-20);
                    }
                    for c in &mut chosen {
                        c.1 *= scale;
                    }
                    chosen
                }
            };
            chosen.sort_by_key(|c| c.0);
            chosen
        })
        .collect()
}

/// Softmax in f32.
fn softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = row.iter().map(|&l| (l - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.iter().map(|e| e / sum).collect()
}

/// `scores` of the experts in the `kept` groups of `size`, and 0 for the others, as
/// transformers masks them before choosing.
fn in_groups(scores: &[f32], kept: &[(u32, f32)], size: usize) -> Vec<f32> {
    scores
        .iter()
        .enumerate()
        .map(|(e, &s)| {
            let g = (e / size.max(1)) as u32;
            if kept.iter().any(|k| k.0 == g) {
                s
            } else {
                0.0
            }
        })
        .collect()
}

/// The `n` best of `by`, best first (of equal ones, the lower index), each with its value in
/// `value`.
fn best(by: &[f32], n: usize, value: &[f32]) -> Vec<(u32, f32)> {
    let mut order: Vec<usize> = (0..by.len()).collect();
    order.sort_by(|&a, &b| by[b].total_cmp(&by[a]).then(a.cmp(&b)));
    order
        .iter()
        .take(n)
        .map(|&e| (e as u32, value[e]))
        .collect()
}

/// Scales the weights to sum to one (`eps` added to the sum).
fn normalise(chosen: &mut [(u32, f32)], eps: f32) {
    let total: f32 = chosen.iter().map(|c| c.1).sum::<f32>() + eps;
    for c in chosen {
        c.1 /= total;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_routing_picks_the_likeliest_and_renormalises() {
        let logits = [0.0, 2.0, 1.0, 2.0, -1.0, 0.5, 0.5, 3.0];
        let r = route(&logits, 4, 2, Routing::Softmax { renorm: true }, None);
        // Token 0: experts 1 and 3 tie at the top. Token 1: expert 3, then 1 before 2 (a tie).
        assert_eq!(r[0].iter().map(|c| c.0).collect::<Vec<_>>(), [1, 3]);
        assert!((r[0][0].1 - 0.5).abs() < 1e-6 && (r[0][1].1 - 0.5).abs() < 1e-6);
        assert_eq!(r[1].iter().map(|c| c.0).collect::<Vec<_>>(), [1, 3]);
        let e = |x: f32| x.exp();
        let want3 = e(3.0) / (e(3.0) + e(0.5));
        assert!((r[1][1].1 - want3).abs() < 1e-6, "{:?}", r[1]);
        let plain = route(&logits, 4, 2, Routing::Softmax { renorm: false }, None);
        let total = e(0.0) + 2.0 * e(2.0) + e(1.0);
        assert!((plain[0][0].1 - e(2.0) / total).abs() < 1e-6);
    }

    #[test]
    fn grouped_routing_keeps_the_best_groups_and_weighs_by_unbiased_scores() {
        // 8 experts in 4 groups of 2; 2 groups kept; 3 experts per token.
        let logits = [2.0, 1.0, 0.0, -1.0, 3.0, -3.0, 0.5, 0.4];
        let bias = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.9, 0.9];
        let routing = Routing::Grouped {
            groups: 4,
            keep: 2,
            renorm: true,
            scale: 2.5,
        };
        let s = |x: f32| 1.0 / (1.0 + (-x).exp());
        // Group sums (biased): g0 s(2)+s(1), g1 s(0)+s(-1), g2 s(3)+s(-3), g3 s(.5)+s(.4)+1.8.
        // g3 and g0 stay; the best biased scores there are 6, 7 (biased) and 0.
        let r = route(&logits, 8, 3, routing, Some(&bias));
        assert_eq!(r[0].iter().map(|c| c.0).collect::<Vec<_>>(), [0, 6, 7]);
        let total = s(2.0) + s(0.5) + s(0.4);
        for (c, l) in r[0].iter().zip([2.0, 0.5, 0.4]) {
            assert!((c.1 - 2.5 * s(l) / total).abs() < 1e-6, "{:?}", r[0]);
        }
        // Without the bias g0 and g3 still stay, so expert 4, the best single score, is not
        // chosen: its group's other expert drags g2 below g3.
        let r = route(&logits, 8, 3, routing, None);
        assert_eq!(r[0].iter().map(|c| c.0).collect::<Vec<_>>(), [0, 1, 6]);
    }

    #[test]
    fn softmax_groups_keep_the_groups_of_the_likeliest_and_scale_without_renormalising() {
        // 6 experts in 3 groups of 2, one group kept, 2 experts per token, scale 1.5.
        let logits = [0.0, 2.5, 2.0, 1.9, -1.0, 0.0];
        let routing = Routing::SoftmaxGroups {
            groups: 3,
            keep: 1,
            scale: 1.5,
        };
        let e: Vec<f32> = logits.iter().map(|l: &f32| l.exp()).collect();
        let total: f32 = e.iter().sum();
        // Group 0 holds the likeliest (2.5): experts 0 and 1, though 2 and 3 beat 0.
        let r = route(&logits, 6, 2, routing, None);
        assert_eq!(r[0].iter().map(|c| c.0).collect::<Vec<_>>(), [0, 1]);
        assert!((r[0][1].1 - 1.5 * e[1] / total).abs() < 1e-6, "{:?}", r[0]);
        assert!((r[0][0].1 - 1.5 * e[0] / total).abs() < 1e-6);
        // One group: plain top-k.
        let one = Routing::SoftmaxGroups {
            groups: 1,
            keep: 1,
            scale: 1.0,
        };
        let r = route(&logits, 6, 2, one, None);
        assert_eq!(r[0].iter().map(|c| c.0).collect::<Vec<_>>(), [1, 2]);
    }
}
