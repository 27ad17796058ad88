//! Qwen3-MoE: Qwen3's block (per-head q/k norms, an explicit head dimension; see
//! [`super::qwen`]) with a mixture of SiLU-gated experts. The router's softmax runs over all
//! experts in f32; the chosen experts' weights are renormalised only with `norm_topk_prob`
//! (llama.cpp's `qwen3moe` always renormalises). Layer `i` is a mixture iff it is not in
//! `mlp_only_layers` and `(i + 1) % decoder_sparse_step == 0`; the others keep a dense MLP of
//! `intermediate_size`.

use std::path::Path;

use serde_json::Value as Json;

use super::{hf, qwen, Arch, GgufKeys, ModelConfig};
use crate::error::LoadError;
use crate::moe::{MoeConfig, Routing};

/// The GGUF keys Qwen3-MoE adds to the common ones.
const KEYS: &[&str] = &[
    "expert_count",
    "expert_used_count",
    "expert_feed_forward_length",
];

/// Qwen3's tensors, with the router and the experts' beside or instead of the MLP's.
pub fn uses_part(c: &ModelConfig, part: &str) -> bool {
    let moe = c.moe.as_ref().is_some_and(|m| m.uses_part(part));
    moe || qwen::block_tensors(&Arch::Qwen3).contains(&part)
}

pub fn from_gguf(g: &crate::gguf::GgufFile) -> Result<ModelConfig, LoadError> {
    let k = GgufKeys {
        g,
        arch: "qwen3moe",
    };
    k.refuse_unknown(KEYS)?;
    let mut c = k.common(Arch::Qwen3Moe, false)?;
    c.moe = Some(MoeConfig {
        experts: k.u("expert_count")?,
        used: k.u("expert_used_count")?,
        ffn: k.u("expert_feed_forward_length")?,
        routing: Routing::Softmax { renorm: true },
        dense: Vec::new(),
        shared: 0,
        shard: None,
    });
    Ok(c)
}

pub fn from_hf(path: &Path, raw: &Json) -> Result<ModelConfig, LoadError> {
    let mut c = qwen::from_hf(path, raw, "qwen3")?;
    let bad = |what: String| LoadError::Config {
        path: path.to_path_buf(),
        what,
    };
    let int = |k: &str| raw.get(k).and_then(Json::as_u64).map(|v| v as usize);
    let experts = int("num_experts")
        .or_else(|| int("num_local_experts"))
        .ok_or_else(|| bad("`num_experts` is missing".into()))?;
    let used =
        int("num_experts_per_tok").ok_or_else(|| bad("`num_experts_per_tok` is missing".into()))?;
    let ffn = int("moe_intermediate_size")
        .ok_or_else(|| bad("`moe_intermediate_size` is missing".into()))?;
    let step = int("decoder_sparse_step").unwrap_or(1);
    if step == 0 {
        return Err(bad("`decoder_sparse_step` is zero".into()));
    }
    let mut only_mlp = Vec::new();
    if let Some(list) = raw.get("mlp_only_layers").and_then(Json::as_array) {
        for v in list {
            let i = v
                .as_u64()
                .ok_or_else(|| bad(format!("`mlp_only_layers` holds {v}")))?;
            only_mlp.push(i as usize);
        }
    }
    let renorm = raw
        .get("norm_topk_prob")
        .and_then(Json::as_bool)
        .unwrap_or(false);
    c.arch = Arch::Qwen3Moe;
    c.moe = Some(MoeConfig {
        experts,
        used,
        ffn,
        routing: Routing::Softmax { renorm },
        dense: (0..c.layers)
            .filter(|i| only_mlp.contains(i) || !(i + 1).is_multiple_of(step))
            .collect(),
        shared: 0,
        shard: None,
    });
    Ok(c)
}

pub fn hf_to_gguf(name: &str) -> Option<String> {
    hf::expert_name(name, "mlp.experts.", hf::MLP_EXPERT_PARTS).or_else(|| {
        hf::map_names(
            name,
            &[
                ("post_attention_layernorm", "ffn_norm"),
                ("mlp.gate", "ffn_gate_inp"),
            ],
        )
    })
}
