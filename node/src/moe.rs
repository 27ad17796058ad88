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

/// Most experts per layer a config may declare (DeepSeek-V3 has 256).
pub const MAX_EXPERTS: usize = 1024;

/// How the router's scores become each token's experts and weights.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Routing {
    /// Softmax over all the experts in f32, the `used` likeliest, their probabilities
    /// renormalised to sum to one when `renorm` (Mixtral always; Qwen3-MoE with
    /// `norm_topk_prob`).
    Softmax { renorm: bool },
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
        Ok(())
    }

    /// Whether `part` (a block's tensor name without `blk.{i}.`) is one of its tensors.
    pub fn uses_part(&self, part: &str) -> bool {
        if matches!(
            part,
            "ffn_gate_inp.weight"
                | "ffn_gate_exps.weight"
                | "ffn_up_exps.weight"
                | "ffn_down_exps.weight"
        ) {
            return true;
        }
        // One tensor per expert: `ffn_gate.{e}.weight`.
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
/// router logits.
pub fn route(
    logits: &[f32],
    experts: usize,
    used: usize,
    routing: Routing,
) -> Vec<Vec<(u32, f32)>> {
    logits
        .chunks_exact(experts)
        .map(|row| {
            let Routing::Softmax { renorm } = routing;
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exp: Vec<f32> = row.iter().map(|&l| (l - max).exp()).collect();
            let sum: f32 = exp.iter().sum();
            let probs: Vec<f32> = exp.iter().map(|e| e / sum).collect();
            // The likeliest first; of equal ones, the lower index.
            let mut order: Vec<usize> = (0..experts).collect();
            order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
            let mut chosen: Vec<(u32, f32)> = order[..used]
                .iter()
                .map(|&e| (e as u32, probs[e]))
                .collect();
            if renorm {
                let total: f32 = chosen.iter().map(|c| c.1).sum();
                for c in &mut chosen {
                    c.1 /= total;
                }
            }
            chosen.sort_by_key(|c| c.0);
            chosen
        })
        .collect()
}

/// A mixture-of-experts feed-forward: the router (`ffn_gate_inp`) and the experts' MLPs.
pub struct MoeMlp<B: Backend> {
    router: B::Weight,
    experts: Vec<Mlp<B>>,
    used: usize,
    routing: Routing,
}

impl<B: Backend> MoeMlp<B> {
    pub fn load(l: &Loader<B>, moe: &MoeConfig) -> Result<Self, Error> {
        let h = l.config.hidden;
        let experts = (0..moe.experts)
            .map(|e| {
                let w = |part, cols, rows| l.expert(part, e, moe.experts, cols, rows);
                Ok(Mlp::new(
                    w("ffn_gate", h, moe.ffn)?,
                    w("ffn_up", h, moe.ffn)?,
                    w("ffn_down", moe.ffn, h)?,
                    Activation::Silu,
                ))
            })
            .collect::<Result<_, Error>>()?;
        Ok(MoeMlp {
            router: l.weight("ffn_gate_inp", h, moe.experts)?,
            experts,
            used: moe.used,
            routing: moe.routing,
        })
    }

    /// Over the rows of a pass whose first `decode` rows are decode steps'. Each expert sees
    /// its tokens in pass order, so its own first rows are decode rows too, and every token is
    /// computed as its step alone computes it.
    pub fn forward(&self, be: &B, xn: &B::Act, decode: usize) -> Result<B::Act, RunError> {
        let n = self.experts.len();
        let logits = be.linear(&[&self.router], xn, decode)?.remove(0);
        let chosen = route(&be.download(&logits)?, n, self.used, self.routing);
        let mut tokens: Vec<Vec<u32>> = vec![Vec::new(); n];
        for (t, c) in chosen.iter().enumerate() {
            for &(e, _) in c {
                tokens[e as usize].push(t as u32);
            }
        }
        // The experts' outputs one after the other; `first[e]` is where expert e's begin.
        let mut outs = Vec::new();
        let mut first = vec![0u32; n];
        let mut at = 0;
        for (e, rows) in tokens.iter().enumerate() {
            if rows.is_empty() {
                continue;
            }
            first[e] = at;
            at += rows.len() as u32;
            let x = be.gather(xn, rows, None)?;
            let decode = rows.iter().take_while(|&&t| (t as usize) < decode).count();
            outs.push(self.experts[e].forward(be, &x, decode)?);
        }
        let ys = be.concat(&outs)?;
        // Slot s of every token: its s-th expert's output row, weighted; the slots add up in
        // expert order.
        let mut next = first;
        let mut slots = vec![(Vec::new(), Vec::new()); self.used];
        for c in &chosen {
            for (s, &(e, w)) in c.iter().enumerate() {
                slots[s].0.push(next[e as usize]);
                slots[s].1.push(w);
                next[e as usize] += 1;
            }
        }
        let mut out: Option<B::Act> = None;
        for (idx, weights) in &slots {
            let y = be.gather(&ys, idx, Some(weights))?;
            match &mut out {
                None => out = Some(y),
                Some(o) => be.add(o, &y)?,
            }
        }
        out.ok_or_else(|| RunError::Backend("a layer routes to no expert".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_routing_picks_the_likeliest_and_renormalises() {
        let logits = [0.0, 2.0, 1.0, 2.0, -1.0, 0.5, 0.5, 3.0];
        let r = route(&logits, 4, 2, Routing::Softmax { renorm: true });
        // Token 0: experts 1 and 3 tie at the top. Token 1: expert 3, then 1 before 2 (a tie).
        assert_eq!(r[0].iter().map(|c| c.0).collect::<Vec<_>>(), [1, 3]);
        assert!((r[0][0].1 - 0.5).abs() < 1e-6 && (r[0][1].1 - 0.5).abs() < 1e-6);
        assert_eq!(r[1].iter().map(|c| c.0).collect::<Vec<_>>(), [1, 3]);
        let e = |x: f32| x.exp();
        let want3 = e(3.0) / (e(3.0) + e(0.5));
        assert!((r[1][1].1 - want3).abs() < 1e-6, "{:?}", r[1]);
        let plain = route(&logits, 4, 2, Routing::Softmax { renorm: false });
        let total = e(0.0) + 2.0 * e(2.0) + e(1.0);
        assert!((plain[0][0].1 - e(2.0) / total).abs() < 1e-6);
    }

    #[test]
    fn expert_tensor_names() {
        let moe = MoeConfig {
            experts: 8,
            used: 2,
            ffn: 16,
            routing: Routing::Softmax { renorm: true },
            dense: vec![0],
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
}
