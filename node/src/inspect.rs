//! What a model takes: its parameters, total and active per token; each block's size, its dense
//! part and one routed expert; and what a node of a given memory holds of it. From a config
//! alone ([`Sizes::params`]) or exactly from a model's tensors ([`Sizes::of_tensors`]).

use crate::arch::{Arch, ModelConfig};
use crate::model::{ModelFile, TensorRef};

/// One block: everything but its routed experts, and each of them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockSize {
    pub dense: u64,
    pub expert: u64,
    pub experts: u64,
}

impl BlockSize {
    pub fn total(&self) -> u64 {
        self.dense + self.expert * self.experts
    }
}

/// Parameters or bytes of a model: outside the blocks (embedding, final norm, head) and per
/// block; `used` routed experts per token.
#[derive(Clone, Debug, PartialEq)]
pub struct Sizes {
    pub outside: u64,
    pub blocks: Vec<BlockSize>,
    pub used: u64,
}

impl Sizes {
    /// The parameters the config implies, by each architecture's weights.
    pub fn params(c: &ModelConfig) -> Sizes {
        let (h, f) = (c.hidden as u64, c.intermediate as u64);
        let head = if c.tied_embeddings {
            0
        } else {
            c.vocab as u64 * h
        };
        let outside = c.vocab as u64 * h + head + h;
        let attn = attention_params(c);
        let norms = match c.arch {
            Arch::Gemma3(_) => 4 * h,
            _ => 2 * h,
        };
        let blocks = (0..c.layers)
            .map(|i| match &c.moe {
                Some(m) if m.is_moe(i) => {
                    let (e, ffn) = (m.experts as u64, m.ffn as u64);
                    let bias = if m.uses_part("exp_probs_b.bias") {
                        e
                    } else {
                        0
                    };
                    BlockSize {
                        dense: attn + norms + h * e + bias + 3 * h * m.shared as u64,
                        expert: 3 * h * ffn,
                        experts: e,
                    }
                }
                _ => BlockSize {
                    dense: attn + norms + 3 * h * f,
                    ..Default::default()
                },
            })
            .collect();
        let used = c.moe.as_ref().map_or(0, |m| m.used as u64);
        Sizes {
            outside,
            blocks,
            used,
        }
    }

    /// `size` of each tensor of `model`, summed by where it lies: routed experts' tensors
    /// count toward one expert each (a stacked tensor's share, or the expert's own).
    pub fn of_tensors(model: &ModelFile, size: impl Fn(&TensorRef) -> u64) -> Sizes {
        let c = &model.config;
        let mut blocks = vec![BlockSize::default(); c.layers];
        let mut outside = 0;
        for t in model.tensors() {
            let block = t
                .name
                .strip_prefix("blk.")
                .and_then(|r| r.split_once('.'))
                .and_then(|(i, p)| Some((i.parse::<usize>().ok()?, p)));
            match (block, &c.moe) {
                (Some((i, p)), Some(m)) if i < c.layers && m.is_routed_part(p) => {
                    blocks[i].experts = m.experts as u64;
                    blocks[i].expert += size(t);
                }
                (Some((i, _)), _) if i < c.layers => blocks[i].dense += size(t),
                _ => outside += size(t),
            }
        }
        for b in &mut blocks {
            b.expert = b.expert.checked_div(b.experts).unwrap_or(0);
        }
        let used = c.moe.as_ref().map_or(0, |m| m.used as u64);
        Sizes {
            outside,
            blocks,
            used,
        }
    }

    pub fn total(&self) -> u64 {
        self.outside + self.blocks.iter().map(BlockSize::total).sum::<u64>()
    }

    /// What one token reads: all but the routed experts, and `used` of those per block.
    pub fn active(&self) -> u64 {
        let per_block = |b: &BlockSize| b.dense + b.expert * self.used.min(b.experts);
        self.outside + self.blocks.iter().map(per_block).sum::<u64>()
    }

    /// Each figure times `factor` (parameters to bytes at so many bytes each).
    pub fn scaled(&self, factor: f64) -> Sizes {
        let s = |v: u64| (v as f64 * factor).round() as u64;
        Sizes {
            outside: s(self.outside),
            blocks: self
                .blocks
                .iter()
                .map(|b| BlockSize {
                    dense: s(b.dense),
                    expert: s(b.expert),
                    experts: b.experts,
                })
                .collect(),
            used: self.used,
        }
    }
}

/// One block's attention weights and their norms.
fn attention_params(c: &ModelConfig) -> u64 {
    let h = c.hidden as u64;
    if let Some(m) = &c.mla {
        let heads = c.heads as u64;
        let (q_lora, kv_lora) = (m.q_lora as u64, m.kv_lora as u64);
        let q_head = (m.nope + m.rope) as u64;
        let q = if q_lora > 0 {
            h * q_lora + q_lora + q_lora * heads * q_head
        } else {
            h * heads * q_head
        };
        let kv = h * (kv_lora + m.rope as u64) + kv_lora + kv_lora * heads * (m.nope + m.v) as u64;
        return q + kv + heads * m.v as u64 * h;
    }
    let (q, kv) = (c.q_width() as u64, c.kv_width() as u64);
    let bias = if c.arch == Arch::Qwen2 { q + 2 * kv } else { 0 };
    let qk_norm = match c.arch {
        Arch::Qwen3 | Arch::Qwen3Moe | Arch::Gemma3(_) => 2 * c.head_dim as u64,
        _ => 0,
    };
    h * (q + 2 * kv) + q * h + bias + qk_norm
}

/// Whole blocks, with all their experts and the KV cache of `context` positions, that fit in
/// `memory` bytes, and routed experts (of the largest) for a node that serves only experts.
pub fn capacity(
    bytes: &Sizes,
    kv_per_block_position: u64,
    context: u64,
    memory: u64,
) -> (u64, u64) {
    let largest = bytes.blocks.iter().map(BlockSize::total).max().unwrap_or(0);
    let per_block = largest + kv_per_block_position * context;
    let blocks = memory
        .checked_div(per_block)
        .unwrap_or(0)
        .min(bytes.blocks.len() as u64);
    let expert = bytes.blocks.iter().map(|b| b.expert).max().unwrap_or(0);
    (blocks, memory.checked_div(expert).unwrap_or(0))
}

/// Runs of equal items: `(first, last, item)` for each, in order.
pub fn runs<T: PartialEq + Clone>(items: &[T]) -> Vec<(usize, usize, T)> {
    let mut out: Vec<(usize, usize, T)> = Vec::new();
    for (i, x) in items.iter().enumerate() {
        match out.last_mut() {
            Some(last) if last.2 == *x => last.1 = i,
            _ => out.push((i, i, x.clone())),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn runs_group_equal_neighbours() {
        let r = super::runs(&[1, 1, 2, 2, 2, 0, 1]);
        assert_eq!(r, [(0, 1, 1), (2, 4, 2), (5, 5, 0), (6, 6, 1)]);
        assert!(super::runs::<u8>(&[]).is_empty());
    }
}
