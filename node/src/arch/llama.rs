//! The Llama architecture: Llama 2/3/3.1/3.2, Mistral and SmolLM. Pre-norm blocks of grouped-
//! query attention and a SiLU-gated MLP; RoPE with the scalings of long-context releases.
//!
//! Shapes, with `H` hidden, `Q = heads·head_dim`, `K = kv_heads·head_dim`, `F` intermediate:
//! `attn_q [H→Q]`, `attn_k`/`attn_v [H→K]`, `attn_output [Q→H]`, `ffn_gate`/`ffn_up [H→F]`,
//! `ffn_down [F→H]`, `token_embd [vocab, H]`, `output [vocab, H]` (or `token_embd` when tied).

use std::path::Path;

use serde_json::Value as Json;

use super::{hf, Arch, GgufKeys, ModelConfig, RopeScaling};
use crate::backend::Backend;
use crate::error::{Error, LoadError};
use crate::layers::{Attention, AttentionOptions, Block, Loader, PreNormBlock, SelfAttention};
use crate::model::ModelFile;

/// The tensors of a block, under GGUF's names without `blk.{i}.`.
pub const BLOCK_TENSORS: &[&str] = &[
    "attn_norm.weight",
    "attn_q.weight",
    "attn_k.weight",
    "attn_v.weight",
    "attn_output.weight",
    "ffn_norm.weight",
    "ffn_gate.weight",
    "ffn_up.weight",
    "ffn_down.weight",
];

pub fn from_gguf(g: &crate::gguf::GgufFile, arch: &str) -> Result<ModelConfig, LoadError> {
    let k = GgufKeys { g, arch };
    k.refuse_unknown(&[])?;
    // GGUF permutes Llama's Q and K rows for RoPE on adjacent pairs.
    let mut c = k.common(Arch::Llama, true)?;
    if let Some(factors) = g.vector_f32("rope_freqs.weight") {
        if c.rope.scaling != RopeScaling::None {
            return Err(LoadError::Config {
                path: g.path.clone(),
                what: "both `rope_freqs.weight` and a RoPE scaling type are given".into(),
            });
        }
        c.rope.scaling = RopeScaling::Factors(factors);
    }
    Ok(c)
}

pub fn from_hf(path: &Path, raw: &Json) -> Result<ModelConfig, LoadError> {
    let h = hf::Common::parse(path, raw, "silu")?;
    let c = h.config(path, Arch::Llama, 10000.0, 1e-6)?;
    // Mistral 7B v0.1 attends within 4,096 positions; later releases set no window.
    if let Some(w) = raw.get("sliding_window").and_then(Json::as_u64) {
        if (w as usize) < c.context {
            return Err(LoadError::Config {
                path: path.to_path_buf(),
                what: format!(
                    "`sliding_window` {w}, shorter than the context ({}), is not supported for \
                     Llama and Mistral",
                    c.context
                ),
            });
        }
    }
    Ok(c)
}

/// Hugging Face's Llama weight names (shared by Mistral and Qwen) in GGUF's vocabulary.
pub fn hf_to_gguf(name: &str) -> Option<String> {
    hf::map_names(name, &[("post_attention_layernorm", "ffn_norm")])
}

/// A pre-norm block; Qwen's options (biases, q/k norms) and a mixture of experts in place of
/// the MLP come from the architecture.
pub fn load_block<B: Backend + 'static>(
    model: &ModelFile,
    c: &ModelConfig,
    i: usize,
    backend: &B,
) -> Result<Box<dyn Block<B>>, Error> {
    let l = Loader::new(model, c, backend, i);
    let options = AttentionOptions {
        bias: c.arch == Arch::Qwen2,
        qk_norm: matches!(c.arch, Arch::Qwen3 | Arch::Qwen3Moe),
        ..AttentionOptions::plain(c)
    };
    let attn = SelfAttention::Heads(Attention::load(&l, &options)?);
    Ok(Box::new(PreNormBlock::load(&l, attn)?))
}
