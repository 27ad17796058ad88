//! Mixtral: Llama's block (see [`super::llama`]) with a mixture of SiLU-gated experts in place of
//! its MLP. The router's softmax runs over all experts in f32; the chosen experts' weights are
//! renormalised to sum to one. GGUF files call it `llama` and add `expert_count` and
//! `expert_used_count`; Hugging Face names it `mixtral`, its experts `w1` (gate), `w3` (up) and
//! `w2` (down) under `block_sparse_moe`.

use std::path::Path;

use serde_json::Value as Json;

use super::{hf, llama, Arch, GgufKeys, ModelConfig};
use crate::error::LoadError;
use crate::moe::{MoeConfig, Routing};

/// The GGUF keys Mixtral adds to Llama's.
const KEYS: &[&str] = &["expert_count", "expert_used_count"];

/// The router and the experts' tensors replace Llama's `ffn_gate`, `ffn_up` and `ffn_down`.
pub fn uses_part(c: &ModelConfig, part: &str) -> bool {
    let moe = c.moe.as_ref().is_some_and(|m| m.uses_part(part));
    moe || llama::BLOCK_TENSORS[..6].contains(&part)
}

fn moe(experts: usize, used: usize, ffn: usize) -> MoeConfig {
    MoeConfig {
        experts,
        used,
        ffn,
        routing: Routing::Softmax { renorm: true },
        dense: Vec::new(),
        shared: 0,
        shard: None,
    }
}

/// A `llama` GGUF file whose `expert_count` is not zero.
pub fn from_gguf(g: &crate::gguf::GgufFile) -> Result<ModelConfig, LoadError> {
    let k = GgufKeys { g, arch: "llama" };
    k.refuse_unknown(KEYS)?;
    let mut c = k.common(Arch::Mixtral, true)?;
    c.moe = Some(moe(
        k.u("expert_count")?,
        k.u("expert_used_count")?,
        c.intermediate,
    ));
    Ok(c)
}

pub fn from_hf(path: &Path, raw: &Json) -> Result<ModelConfig, LoadError> {
    let mut c = llama::from_hf(path, raw)?;
    let get = |k: &str| {
        raw.get(k)
            .and_then(Json::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| LoadError::Config {
                path: path.to_path_buf(),
                what: format!("`{k}` is missing"),
            })
    };
    c.arch = Arch::Mixtral;
    c.moe = Some(moe(
        get("num_local_experts")?,
        get("num_experts_per_tok")?,
        c.intermediate,
    ));
    Ok(c)
}

pub fn hf_to_gguf(name: &str) -> Option<String> {
    let experts = [("w1", "ffn_gate"), ("w3", "ffn_up"), ("w2", "ffn_down")];
    hf::expert_name(name, "block_sparse_moe.experts.", &experts).or_else(|| {
        hf::map_names(
            name,
            &[
                ("post_attention_layernorm", "ffn_norm"),
                ("block_sparse_moe.gate", "ffn_gate_inp"),
            ],
        )
    })
}
