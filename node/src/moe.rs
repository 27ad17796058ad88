//! The mixture-of-experts feed-forward. A router scores every expert in f32 and picks a few per
//! token; each chosen expert, a SiLU-gated MLP, runs once over all the tokens of the pass routed
//! to it, so a batch reads each chosen expert's weights once and the others not at all. A
//! token's output is the sum of its experts' outputs times their weights, added in expert order
//! from zero, as transformers' `index_add_` adds them.
//!
//! Routing runs on the host over the downloaded router logits (a few values per token), so the
//! same code routes for every backend.

use crate::backend::Backend;
use crate::error::{Error, RunError};
use crate::layers::{Activation, Loader, Mlp};
use crate::pass::{is_decode, Pass};

/// Most experts per layer a config may declare (DeepSeek-V3 has 256).
pub const MAX_EXPERTS: usize = 1024;

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

/// The shape of a model's mixture-of-experts layers.
#[derive(Clone, Debug, PartialEq)]
pub struct MoeConfig {
    pub experts: usize,
    /// Experts chosen per token.
    pub used: usize,
    /// Each expert's intermediate width.
    pub ffn: usize,
    pub routing: Routing,
    /// Layers whose feed-forward is instead a dense MLP of the config's `intermediate` width.
    pub dense: Vec<usize>,
    /// The intermediate width of the shared experts every token also runs, unweighted, as one
    /// MLP (`ffn_*_shexp`); 0 for none.
    pub shared: usize,
}

impl MoeConfig {
    pub fn is_moe(&self, layer: usize) -> bool {
        !self.dense.contains(&layer)
    }

    /// What is wrong with the numbers, if anything.
    pub fn check(&self) -> Result<(), String> {
        if self.experts == 0 || self.experts > MAX_EXPERTS {
            return Err(format!(
                "{} experts per layer (1 to {MAX_EXPERTS} are supported)",
                self.experts
            ));
        }
        if self.used == 0 || self.used > self.experts {
            return Err(format!(
                "{} experts per token of {}",
                self.used, self.experts
            ));
        }
        if self.ffn == 0 {
            return Err("the experts' intermediate width is zero".into());
        }
        let groups = match self.routing {
            Routing::Grouped { groups, keep, .. } => Some((groups, keep, 2)),
            Routing::SoftmaxGroups { groups, keep, .. } => Some((groups, keep, 1)),
            Routing::Softmax { .. } => None,
        };
        if let Some((groups, keep, least)) = groups {
            if groups == 0 || !self.experts.is_multiple_of(groups) || self.experts / groups < least
            {
                return Err(format!(
                    "{} experts do not split into {groups} groups of {least} or more",
                    self.experts
                ));
            }
            if keep == 0 || keep > groups || self.used > keep * (self.experts / groups) {
                return Err(format!(
                    "{} experts per token from {keep} of {groups} groups of {}",
                    self.used,
                    self.experts / groups
                ));
            }
        }
        Ok(())
    }

    /// Whether `part` (a block's tensor name without `blk.{i}.`) is one of its tensors.
    pub fn uses_part(&self, part: &str) -> bool {
        if part == "ffn_gate_inp.weight" || self.is_routed_part(part) {
            return true;
        }
        if self.shared > 0
            && matches!(
                part,
                "ffn_gate_shexp.weight" | "ffn_up_shexp.weight" | "ffn_down_shexp.weight"
            )
        {
            return true;
        }
        matches!(self.routing, Routing::Grouped { .. }) && part == "exp_probs_b.bias"
    }

    /// Whether `part` holds routed experts' weights: all of them stacked (`ffn_gate_exps`),
    /// or one expert's (`ffn_gate.{e}`).
    pub fn is_routed_part(&self, part: &str) -> bool {
        if matches!(
            part,
            "ffn_gate_exps.weight" | "ffn_up_exps.weight" | "ffn_down_exps.weight"
        ) {
            return true;
        }
        let Some(rest) = part.strip_suffix(".weight") else {
            return false;
        };
        let Some((stem, e)) = rest.rsplit_once('.') else {
            return false;
        };
        matches!(stem, "ffn_gate" | "ffn_up" | "ffn_down")
            && e.parse::<usize>().is_ok_and(|e| e < self.experts)
    }
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

/// Each expert's rows of `pass`, in two groups each in pass order: first those it computes as
/// decode, then those it computes by GEMM, and how many the first are. A step's rows routed to
/// one expert take GEMM when they are [`GEMM_MIN_TOKENS`] or more, which depends on that step
/// alone and never on the other steps of the pass; so do the rows of each path.
pub fn expert_rows(
    chosen: &[Vec<(u32, f32)>],
    pass: &Pass,
    experts: usize,
) -> Vec<(Vec<u32>, usize)> {
    let mut dot: Vec<Vec<u32>> = vec![Vec::new(); experts];
    let mut gemm: Vec<Vec<u32>> = vec![Vec::new(); experts];
    let mut step: Vec<Vec<u32>> = vec![Vec::new(); experts];
    for seg in pass.segments() {
        for t in seg.start..seg.start + seg.len {
            for &(e, _) in chosen.get(t).map_or(&[][..], |c| &c[..]) {
                step[e as usize].push(t as u32);
            }
        }
        for (e, rows) in step.iter_mut().enumerate() {
            let to = if is_decode(rows.len()) {
                &mut dot[e]
            } else {
                &mut gemm[e]
            };
            to.append(rows);
        }
    }
    dot.into_iter()
        .zip(gemm)
        .map(|(mut d, g)| {
            let decode = d.len();
            d.extend(g);
            (d, decode)
        })
        .collect()
}

/// A mixture-of-experts feed-forward: the router (`ffn_gate_inp`), each expert's gate, up
/// and down weights, and the shared experts where the model has them.
pub struct MoeMlp<B: Backend> {
    router: B::Weight,
    experts: Vec<[B::Weight; 3]>,
    used: usize,
    routing: Routing,
    /// The grouped routing's choice bias (`exp_probs_b`), on the host where routing runs.
    bias: Option<Vec<f32>>,
    shared: Option<Mlp<B>>,
}

impl<B: Backend> MoeMlp<B> {
    pub fn load(l: &Loader<B>, moe: &MoeConfig) -> Result<Self, Error> {
        let h = l.config.hidden;
        let experts = (0..moe.experts)
            .map(|e| {
                let w = |part, cols, rows| l.expert(part, e, moe.experts, cols, rows);
                Ok([
                    w("ffn_gate", h, moe.ffn)?,
                    w("ffn_up", h, moe.ffn)?,
                    w("ffn_down", moe.ffn, h)?,
                ])
            })
            .collect::<Result<_, Error>>()?;
        let bias = match moe.routing {
            Routing::Grouped { .. } => Some(
                l.model
                    .tensor(&format!("blk.{}.exp_probs_b.bias", l.block), &[moe.experts])?
                    .to_f32()
                    .map_err(RunError::from)?,
            ),
            Routing::Softmax { .. } | Routing::SoftmaxGroups { .. } => None,
        };
        let shared = if moe.shared > 0 {
            let parts = ["ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp"];
            Some(Mlp::load_parts(l, parts, moe.shared, Activation::Silu)?)
        } else {
            None
        };
        Ok(MoeMlp {
            router: l.weight("ffn_gate_inp", h, moe.experts)?,
            experts,
            used: moe.used,
            routing: moe.routing,
            bias,
            shared,
        })
    }

    /// Over the rows of `pass`. Each token is computed as its step alone computes it: see
    /// [`expert_rows`]. The experts' products run together, one pass for gate and up and one
    /// for down.
    pub fn forward(&self, be: &B, xn: &B::Act, pass: &Pass) -> Result<B::Act, RunError> {
        let n = self.experts.len();
        let logits = be
            .linear(&[&self.router], xn, pass.decode_rows())?
            .remove(0);
        let chosen = route(
            &be.download(&logits)?,
            n,
            self.used,
            self.routing,
            self.bias.as_deref(),
        );
        if chosen.len() != pass.tokens() {
            return Err(RunError::Backend(format!(
                "{} routed rows in a pass of {}",
                chosen.len(),
                pass.tokens()
            )));
        }
        // The experts with rows, their inputs and decode rows; where each token's slots land
        // among all the experts' outputs, one expert's after another's.
        let mut active = Vec::new();
        let mut slot_at = vec![vec![0u32; self.used]; chosen.len()];
        let mut at = 0;
        for (e, (rows, decode)) in expert_rows(&chosen, pass, n).into_iter().enumerate() {
            if rows.is_empty() {
                continue;
            }
            for &t in &rows {
                let c = &chosen[t as usize];
                let s = c.iter().position(|&(x, _)| x as usize == e).unwrap_or(0);
                slot_at[t as usize][s] = at;
                at += 1;
            }
            let x = be.gather(xn, &rows, None)?;
            active.push((e, x, decode));
        }
        let gate_up: Vec<[&B::Weight; 2]> = active
            .iter()
            .map(|(e, _, _)| [&self.experts[*e][0], &self.experts[*e][1]])
            .collect();
        let groups: Vec<_> = active
            .iter()
            .zip(&gate_up)
            .map(|((_, x, d), ws)| (&ws[..], x, *d))
            .collect();
        let mut hidden = Vec::with_capacity(active.len());
        for gu in be.linear_groups(&groups)? {
            let mut gu = gu.into_iter();
            let (Some(mut g), Some(u)) = (gu.next(), gu.next()) else {
                return Err(RunError::Backend("linear returned too few outputs".into()));
            };
            be.silu_mul(&mut g, &u)?;
            hidden.push(g);
        }
        let down: Vec<[&B::Weight; 1]> = active
            .iter()
            .map(|(e, _, _)| [&self.experts[*e][2]])
            .collect();
        let groups: Vec<_> = active
            .iter()
            .zip(&down)
            .zip(&hidden)
            .map(|(((_, _, d), ws), h)| (&ws[..], h, *d))
            .collect();
        let outs: Vec<B::Act> = be
            .linear_groups(&groups)?
            .into_iter()
            .filter_map(|mut o| o.pop())
            .collect();
        let ys = be.concat(&outs)?;
        // Slot s of every token: its s-th expert's output row, weighted; the slots add up in
        // expert order.
        let slots: Vec<(Vec<u32>, Vec<f32>)> = (0..self.used)
            .map(|s| {
                chosen
                    .iter()
                    .zip(&slot_at)
                    .map(|(c, at)| (at[s], c[s].1))
                    .unzip()
            })
            .collect();
        let mut out: Option<B::Act> = None;
        for (idx, weights) in &slots {
            let y = be.gather(&ys, idx, Some(weights))?;
            match &mut out {
                None => out = Some(y),
                Some(o) => be.add(o, &y)?,
            }
        }
        let mut out = out.ok_or_else(|| RunError::Backend("a layer routes to no expert".into()))?;
        if let Some(shared) = &self.shared {
            be.add(&mut out, &shared.forward(be, xn, pass.decode_rows())?)?;
        }
        Ok(out)
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

    #[test]
    fn expert_tensor_names() {
        let moe = MoeConfig {
            experts: 8,
            used: 2,
            ffn: 16,
            routing: Routing::Softmax { renorm: true },
            dense: vec![0],
            shared: 0,
        };
        assert!(moe.uses_part("ffn_up.7.weight") && moe.uses_part("ffn_down_exps.weight"));
        assert!(!moe.uses_part("ffn_up.8.weight") && !moe.uses_part("ffn_up.x.weight"));
        assert!(!moe.is_moe(0) && moe.is_moe(1));
        assert!(MoeConfig {
            used: 9,
            ..moe.clone()
        }
        .check()
        .is_err());
        assert!(MoeConfig { experts: 0, ..moe }.check().is_err());
    }

    #[test]
    fn an_experts_few_rows_of_a_long_step_take_the_decode_path() {
        // A decode step (row 0), then a 30-row step: rows 1..26 to expert 0 (GEMM), the last
        // five to expert 1 (too few for GEMM); every row also goes to expert 2.
        let pass = Pass::new([(1, 7), (30, 0)]).unwrap();
        let chosen: Vec<Vec<(u32, f32)>> = (0..31)
            .map(|t| {
                let first = if t == 0 || t > 25 { 1 } else { 0 };
                vec![(first, 0.5), (2, 0.5)]
            })
            .collect();
        let rows = expert_rows(&chosen, &pass, 4);
        assert_eq!(rows[0], ((1..26).collect::<Vec<u32>>(), 0));
        assert_eq!(rows[1], (vec![0, 26, 27, 28, 29, 30], 6));
        assert_eq!(rows[2], ((0..31).collect::<Vec<u32>>(), 1));
        assert!(rows[3].0.is_empty());
    }
}
