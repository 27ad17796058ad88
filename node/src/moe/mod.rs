//! The mixture-of-experts feed-forward. A router scores every expert in f32 and picks a few per
//! token; each chosen expert, a SiLU-gated MLP, runs once over all the tokens of the pass routed
//! to it, so a batch reads each chosen expert's weights once and the others not at all. A
//! token's output is the sum of its experts' outputs times their weights, added in expert order
//! from zero, as transformers' `index_add_` adds them.
//!
//! Routing runs on the host over the downloaded router logits (a few values per token), so the
//! same code routes for every backend.
//!
//! A node may hold only some of the routed experts (see [`remote`]): the rows of the others go
//! to peers holding them, and their outputs come back into the same sum.

use baton_protocol::experts::{ExpertRows, ExpertShard};
use baton_protocol::{HiddenStates, WireDtype};

use crate::backend::Backend;
use crate::error::{Error, RunError};
use crate::layers::{outputs, Activation, Loader, Mlp};
use crate::pass::{is_decode, Pass};

pub mod remote;
mod route;
pub use remote::{Remote, RemoteExperts};
pub use route::{route, Routing};

/// Most experts per layer a config may declare (DeepSeek-V3 has 256).
pub const MAX_EXPERTS: usize = 1024;

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
    /// The routed experts this node loads, when not all of them; with `only`, it loads
    /// nothing else of the model.
    pub shard: Option<ExpertShard>,
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
/// and down weights, and the shared experts where the model has them. A node holding a shard
/// of the experts has `None` for the others; one holding experts only has no router either.
pub struct MoeMlp<B: Backend> {
    block: usize,
    hidden: usize,
    router: Option<B::Weight>,
    experts: Vec<Option<[B::Weight; 3]>>,
    used: usize,
    routing: Routing,
    /// The grouped routing's choice bias (`exp_probs_b`), on the host where routing runs.
    bias: Option<Vec<f32>>,
    shared: Option<Mlp<B>>,
}

/// An expert's rows in a pass: the expert, its input rows, and how many are decode rows.
type Rows<A> = (usize, A, usize);

impl<B: Backend> MoeMlp<B> {
    pub fn load(l: &Loader<B>, moe: &MoeConfig) -> Result<Self, Error> {
        let h = l.config.hidden;
        let held = remote::held(moe.shard, moe.experts);
        let experts = (0..moe.experts)
            .map(|e| {
                if !held.contains(&e) {
                    return Ok(None);
                }
                let w = |part, cols, rows| l.expert(part, e, moe.experts, cols, rows);
                Ok(Some([
                    w("ffn_gate", h, moe.ffn)?,
                    w("ffn_up", h, moe.ffn)?,
                    w("ffn_down", moe.ffn, h)?,
                ]))
            })
            .collect::<Result<_, Error>>()?;
        let only = moe.shard.is_some_and(|s| s.only);
        let bias = match moe.routing {
            Routing::Grouped { .. } if !only => Some(
                l.model
                    .tensor(&format!("blk.{}.exp_probs_b.bias", l.block), &[moe.experts])?
                    .to_f32()
                    .map_err(RunError::from)?,
            ),
            _ => None,
        };
        let shared = if moe.shared > 0 && !only {
            let parts = ["ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp"];
            Some(Mlp::load_parts(l, parts, moe.shared, Activation::Silu)?)
        } else {
            None
        };
        let router = if only {
            None
        } else {
            Some(l.weight("ffn_gate_inp", h, moe.experts)?)
        };
        Ok(MoeMlp {
            block: l.block,
            hidden: h,
            router,
            experts,
            used: moe.used,
            routing: moe.routing,
            bias,
            shared,
        })
    }

    /// Whether this node holds routed expert `e`.
    pub fn holds(&self, e: usize) -> bool {
        self.experts.get(e).is_some_and(|w| w.is_some())
    }

    /// Over the rows of `pass`. Each token is computed as its step alone computes it: see
    /// [`expert_rows`]. The experts' products run together, one pass for gate and up and one
    /// for down. The rows of experts held elsewhere go to `pass`'s remote experts first.
    pub fn forward(&self, be: &B, xn: &B::Act, pass: &Pass) -> Result<B::Act, RunError> {
        let n = self.experts.len();
        let router = self
            .router
            .as_ref()
            .ok_or_else(|| RunError::Backend(format!("block {} holds experts only", self.block)))?;
        let logits = be.linear(&[router], xn, pass.decode_rows())?.remove(0);
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
        let mut active: Vec<Rows<B::Act>> = Vec::new();
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
        let (local, away): (Vec<_>, Vec<_>) = active.into_iter().partition(|a| self.holds(a.0));
        let pending = self.send_away(be, &away, pass)?;
        let mut mine = self.run(be, &local)?.into_iter();
        let mut theirs = match pending {
            Some(p) => remote::wait(p, away.len())?.into_iter(),
            None => Vec::new().into_iter(),
        };
        // Every expert's output rows, in expert order.
        let (mut li, mut ai) = (local.iter().peekable(), away.iter().peekable());
        let mut outs = Vec::with_capacity(local.len() + away.len());
        loop {
            let take_local = match (li.peek(), ai.peek()) {
                (Some(l), Some(a)) => l.0 < a.0,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            let missing = || RunError::Backend("an expert's output is missing".into());
            if take_local {
                li.next();
                outs.push(mine.next().ok_or_else(missing)?);
            } else {
                ai.next();
                let y = theirs.next().ok_or_else(missing)?;
                outs.push(be.upload(&y, self.hidden)?);
            }
        }
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

    /// Hands the rows of experts held elsewhere to the pass's remote experts, in f32.
    fn send_away(
        &self,
        be: &B,
        away: &[Rows<B::Act>],
        pass: &Pass,
    ) -> Result<Option<remote::Pending>, RunError> {
        if away.is_empty() {
            return Ok(None);
        }
        let Some(peers) = &pass.remote().0 else {
            let names: Vec<String> = away.iter().map(|a| a.0.to_string()).collect();
            return Err(RunError::Experts(format!(
                "block {} routes to experts {} that this node does not hold, and it has no \
                 expert peers",
                self.block,
                names.join(", ")
            )));
        };
        let calls = away
            .iter()
            .map(|(e, x, decode)| {
                let v = be.download(x)?;
                let rows = (v.len() / self.hidden.max(1)) as u32;
                Ok(ExpertRows {
                    expert: *e as u32,
                    decode: *decode as u32,
                    rows: HiddenStates::encode(&v, rows, self.hidden as u32, WireDtype::F32),
                })
            })
            .collect::<Result<Vec<_>, RunError>>()?;
        Ok(Some(peers.call(self.block as u32, calls)))
    }

    /// The held experts' outputs over their rows, unweighted, in the order given.
    fn run(&self, be: &B, list: &[Rows<B::Act>]) -> Result<Vec<B::Act>, RunError> {
        if list.is_empty() {
            return Ok(Vec::new());
        }
        let weights = list
            .iter()
            .map(|(e, _, _)| {
                self.experts
                    .get(*e)
                    .and_then(|w| w.as_ref())
                    .ok_or_else(|| {
                        RunError::Experts(format!("block {} does not hold expert {e}", self.block))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let gate_up: Vec<[&B::Weight; 2]> = weights.iter().map(|w| [&w[0], &w[1]]).collect();
        let groups: Vec<_> = list
            .iter()
            .zip(&gate_up)
            .map(|((_, x, d), ws)| (&ws[..], x, *d))
            .collect();
        let mut hidden = Vec::with_capacity(list.len());
        for gu in be.linear_groups(&groups)? {
            let [mut g, u] = outputs(gu)?;
            be.silu_mul(&mut g, &u)?;
            hidden.push(g);
        }
        let down: Vec<[&B::Weight; 1]> = weights.iter().map(|w| [&w[2]]).collect();
        let groups: Vec<_> = list
            .iter()
            .zip(&down)
            .zip(&hidden)
            .map(|(((_, _, d), ws), h)| (&ws[..], h, *d))
            .collect();
        Ok(be
            .linear_groups(&groups)?
            .into_iter()
            .filter_map(|mut o| o.pop())
            .collect())
    }

    /// Answers an expert call: each expert's output rows over the rows it was sent, computed
    /// as [`MoeMlp::forward`] computes them.
    pub fn run_call(
        &self,
        be: &B,
        calls: &[(usize, Vec<f32>, usize)],
    ) -> Result<Vec<Vec<f32>>, RunError> {
        let list = calls
            .iter()
            .map(|(e, rows, decode)| Ok((*e, be.upload(rows, self.hidden)?, *decode)))
            .collect::<Result<Vec<_>, RunError>>()?;
        self.run(be, &list)?
            .iter()
            .map(|y| be.download(y))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expert_tensor_names() {
        let moe = MoeConfig {
            experts: 8,
            used: 2,
            ffn: 16,
            routing: Routing::Softmax { renorm: true },
            dense: vec![0],
            shared: 0,
            shard: None,
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
