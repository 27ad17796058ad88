//! Qwen2/2.5 and Qwen3: Llama's block (see [`super::llama`]) with biases on the q, k and v
//! projections (Qwen2) or an RMSNorm per head on q and k before RoPE and an explicit head
//! dimension (Qwen3). Both rotate halves of each head, in GGUF as in Hugging Face.

use std::path::Path;

use serde_json::Value as Json;

use super::{hf, llama, Arch, GgufKeys, ModelConfig};
use crate::error::LoadError;

const QWEN2_EXTRA: &[&str] = &["attn_q.bias", "attn_k.bias", "attn_v.bias"];
const QWEN3_EXTRA: &[&str] = &["attn_q_norm.weight", "attn_k_norm.weight"];

/// The tensors of a block, under GGUF's names without `blk.{i}.`.
pub fn block_tensors(arch: &Arch) -> Vec<&'static str> {
    let extra = if *arch == Arch::Qwen2 {
        QWEN2_EXTRA
    } else {
        QWEN3_EXTRA
    };
    llama::BLOCK_TENSORS.iter().chain(extra).copied().collect()
}

fn arch_of(name: &str) -> Arch {
    if name == "qwen2" {
        Arch::Qwen2
    } else {
        Arch::Qwen3
    }
}

pub fn from_gguf(g: &crate::gguf::GgufFile, arch: &str) -> Result<ModelConfig, LoadError> {
    let k = GgufKeys { g, arch };
    k.refuse_unknown(&[])?;
    k.common(arch_of(arch), false)
}

pub fn from_hf(path: &Path, raw: &Json, model_type: &str) -> Result<ModelConfig, LoadError> {
    let h = hf::Common::parse(path, raw, "silu")?;
    if raw.get("use_sliding_window").and_then(Json::as_bool) == Some(true) {
        return Err(LoadError::Config {
            path: path.to_path_buf(),
            what: "`use_sliding_window` is not supported for Qwen".into(),
        });
    }
    h.config(path, arch_of(model_type), 10000.0, 1e-6)
}
