//! DeepSeek-V2, V3 and R1: multi-head latent attention ([`crate::mla`]) and, after the first
//! `first_k_dense_replace` dense layers, a mixture of SiLU-gated experts plus shared experts
//! added unweighted. They differ in routing:
//! - V3/R1: grouped sigmoid routing (`e_score_correction_bias` for the choice only, `n_group`
//!   groups of which `topk_group` stay, weights renormalised with `norm_topk_prob` and times
//!   `routed_scaling_factor`);
//! - V2: softmax, `greedy` or `group_limited_greedy` (groups scored by their likeliest), times
//!   `routed_scaling_factor`, never renormalised.
//!
//! The decoupled RoPE part is interleaved (V2 always, V3 with `rope_interleave`, the default);
//! under YaRN the softmax scale is `(nope + rope)^-½ · mscale(factor, mscale_all_dim)²`.
//!
//! GGUF calls both `deepseek2`, in two layouts: the older one with `attn_kv_b` and per-head key
//! and value lengths, and the one for latent attention, with `attn_k_b` and `attn_v_b` split
//! per head, one KV head, and the per-head lengths under `key_length_mla` and
//! `value_length_mla`.

use std::path::Path;

use serde_json::Value as Json;

use super::{hf, rope, Arch, GgufKeys, ModelConfig, RopeScaling};
use crate::backend::Backend;
use crate::error::{Error, LoadError};
use crate::layers::{Block, Loader, PreNormBlock, SelfAttention};
use crate::mla::{MlaAttention, MlaConfig};
use crate::model::ModelFile;
use crate::moe::{MoeConfig, Routing};

/// The attention's tensors, besides the norms.
const ATTENTION: &[&str] = &[
    "attn_q_a.weight",
    "attn_q_a_norm.weight",
    "attn_q_b.weight",
    "attn_kv_a_mqa.weight",
    "attn_kv_a_norm.weight",
    "attn_output.weight",
];

pub fn uses_part(c: &ModelConfig, part: &str) -> bool {
    let mla = c.mla.as_ref();
    let q = match mla.map(|m| m.q_lora) {
        Some(0) => part == "attn_q.weight",
        _ => ATTENTION[..3].contains(&part),
    };
    let moe = c.moe.as_ref().is_some_and(|m| m.uses_part(part));
    q || moe
        || ATTENTION[3..].contains(&part)
        || matches!(
            part,
            "attn_norm.weight"
                | "ffn_norm.weight"
                | "attn_kv_b.weight"
                | "attn_k_b.weight"
                | "attn_v_b.weight"
                | "ffn_gate.weight"
                | "ffn_up.weight"
                | "ffn_down.weight"
        )
}

/// The GGUF keys `deepseek2` adds to the common ones.
const KEYS: &[&str] = &[
    "leading_dense_block_count",
    "expert_count",
    "expert_used_count",
    "expert_feed_forward_length",
    "expert_shared_count",
    "expert_weights_scale",
    "expert_weights_norm",
    "expert_gating_func",
    "expert_group_count",
    "expert_group_used_count",
    "attention.q_lora_rank",
    "attention.kv_lora_rank",
    "attention.key_length_mla",
    "attention.value_length_mla",
    "rope.scaling.yarn_log_multiplier",
];

pub fn from_gguf(g: &crate::gguf::GgufFile) -> Result<ModelConfig, LoadError> {
    let k = GgufKeys {
        g,
        arch: "deepseek2",
    };
    k.refuse_unknown(KEYS)?;
    let bad = |what: String| LoadError::Config {
        path: g.path.clone(),
        what,
    };
    let mut c = k.common(Arch::Deepseek, true)?;
    let rope_dim = k.u("rope.dimension_count")?;
    // The per-head lengths: under `_mla` in the latent layout, else the plain ones.
    let (qk, v) = match g.get(&k.key("attention.key_length_mla")) {
        Some(_) => (
            k.u("attention.key_length_mla")?,
            k.u("attention.value_length_mla")?,
        ),
        None => (k.u("attention.key_length")?, k.u("attention.value_length")?),
    };
    let nope = qk
        .checked_sub(rope_dim)
        .filter(|&n| n > 0)
        .ok_or_else(|| bad(format!("a key length of {qk} with {rope_dim} for RoPE")))?;
    let mut scale = (qk as f32).powf(-0.5);
    if let RopeScaling::Yarn {
        factor,
        attention_factor,
        ..
    } = &mut c.rope.scaling
    {
        // llama.cpp's `yarn_log_multiplier` is 0.1 · mscale_all_dim; RoPE itself is not scaled.
        let m = 1.0 + k.f_or("rope.scaling.yarn_log_multiplier", 0.0) as f32 * factor.ln();
        scale *= m * m;
        *attention_factor = Some(1.0);
    }
    let mla = MlaConfig {
        q_lora: k.u_or("attention.q_lora_rank", 0),
        kv_lora: k.u("attention.kv_lora_rank")?,
        nope,
        rope: rope_dim,
        v,
        scale,
    };
    mla.check().map_err(bad)?;
    let ffn = k.u("expert_feed_forward_length")?;
    let norm = g
        .get(&k.key("expert_weights_norm"))
        .is_some_and(|v| matches!(v, crate::gguf::Value::Bool(true)));
    let weights_scale = k.f_or("expert_weights_scale", 1.0) as f32;
    let groups = k.u_or("expert_group_count", 1);
    // Files that do not say: DeepSeek-V3's sigmoid where the layers have its choice bias
    // (converters leave the key out when the config does not name `scoring_func`, as
    // transformers 5 saves it), DeepSeek-V2's softmax where they have none.
    let v3 = g.tensors.keys().any(|n| n.ends_with(".exp_probs_b.bias"));
    let routing = match k.u_or("expert_gating_func", if v3 { 2 } else { 1 }) {
        2 => Routing::Grouped {
            groups,
            keep: k.u_or("expert_group_used_count", 1),
            renorm: norm,
            scale: weights_scale,
        },
        1 if norm && groups <= 1 && weights_scale == 1.0 => Routing::Softmax { renorm: true },
        // DeepSeek-V2's: its groups scored by their likeliest, never renormalised.
        1 if !norm => Routing::SoftmaxGroups {
            groups,
            keep: k.u_or("expert_group_used_count", 1),
            scale: weights_scale,
        },
        f => {
            return Err(bad(format!(
                "expert gating {f} with {groups} groups, a weight scale of {weights_scale} and \
                 renormalisation {norm} is not supported (DeepSeek-V3's sigmoid gating is, and \
                 DeepSeek-V2's softmax)"
            )))
        }
    };
    c.moe = Some(MoeConfig {
        experts: k.u("expert_count")?,
        used: k.u("expert_used_count")?,
        ffn,
        routing,
        dense: (0..c.layers.min(k.u_or("leading_dense_block_count", 0))).collect(),
        shared: k.u_or("expert_shared_count", 0).saturating_mul(ffn),
        shard: None,
    });
    latent(&mut c, mla);
    Ok(c)
}

/// Latent attention in place of the config's heads: one KV head of the cached row's width.
fn latent(c: &mut ModelConfig, mla: MlaConfig) {
    c.head_dim = mla.latent_width();
    c.kv_heads = 1;
    c.rope.dims = mla.rope;
    c.mla = Some(mla);
}

/// `deepseek_v3`, or `deepseek_v2` with its softmax routing.
pub fn from_hf(path: &Path, raw: &Json, model_type: &str) -> Result<ModelConfig, LoadError> {
    let bad = |what: String| LoadError::Config {
        path: path.to_path_buf(),
        what,
    };
    let h = hf::Common::parse(path, raw, "silu")?;
    let mut c = h.config(path, Arch::Deepseek, 10000.0, 1e-6)?;
    let int = |k: &str| raw.get(k).and_then(Json::as_u64).map(|v| v as usize);
    let need = |k: &str| int(k).ok_or_else(|| bad(format!("`{k}` is missing")));
    let v2 = model_type == "deepseek_v2";
    let scoring = if v2 { "softmax" } else { "sigmoid" };
    if let Some(f) = raw.get("scoring_func").and_then(Json::as_str) {
        if f != scoring {
            return Err(bad(format!(
                "`scoring_func` {f} is not {model_type}'s {scoring}"
            )));
        }
    }
    let (nope, rope_dim) = (need("qk_nope_head_dim")?, need("qk_rope_head_dim")?);
    let mut scale = ((nope + rope_dim) as f32).powf(-0.5);
    let params = raw
        .get("rope_parameters")
        .filter(|v| !v.is_null())
        .or_else(|| raw.get("rope_scaling").filter(|v| !v.is_null()));
    if let Some(p) = params {
        let kind = p.get("rope_type").or_else(|| p.get("type"));
        let all_dim = p.get("mscale_all_dim").and_then(Json::as_f64);
        let factor = p.get("factor").and_then(Json::as_f64);
        if let (Some(kind), Some(all), Some(f)) = (kind.and_then(Json::as_str), all_dim, factor) {
            if kind != "default" && all != 0.0 {
                let m = rope::yarn_mscale(f as f32, all as f32);
                scale *= m * m;
            }
        }
    }
    let mla = MlaConfig {
        q_lora: int("q_lora_rank").unwrap_or(0),
        kv_lora: need("kv_lora_rank")?,
        nope,
        rope: rope_dim,
        v: need("v_head_dim")?,
        scale,
    };
    mla.check().map_err(bad)?;
    c.rope.interleaved = raw
        .get("rope_interleave")
        .and_then(Json::as_bool)
        .unwrap_or(true);
    latent(&mut c, mla);
    let experts = need("n_routed_experts")?;
    let ffn = need("moe_intermediate_size")?;
    let dense = int("first_k_dense_replace").unwrap_or(0);
    let (groups, keep) = (int("n_group").unwrap_or(1), int("topk_group").unwrap_or(1));
    let scale = raw
        .get("routed_scaling_factor")
        .and_then(Json::as_f64)
        .unwrap_or(1.0) as f32;
    let routing = if v2 {
        // DeepSeek-V2 never renormalises; greedy is one group.
        match raw
            .get("topk_method")
            .and_then(Json::as_str)
            .unwrap_or("greedy")
        {
            "greedy" => Routing::SoftmaxGroups {
                groups: 1,
                keep: 1,
                scale,
            },
            "group_limited_greedy" => Routing::SoftmaxGroups {
                groups,
                keep,
                scale,
            },
            other => return Err(bad(format!("`topk_method` {other} is not supported"))),
        }
    } else {
        Routing::Grouped {
            groups,
            keep,
            renorm: raw
                .get("norm_topk_prob")
                .and_then(Json::as_bool)
                .unwrap_or(true),
            scale,
        }
    };
    c.moe = Some(MoeConfig {
        experts,
        used: need("num_experts_per_tok")?,
        ffn,
        routing,
        dense: (0..c.layers.min(dense)).collect(),
        shared: int("n_shared_experts").unwrap_or(0).saturating_mul(ffn),
        shard: None,
    });
    Ok(c)
}

pub fn hf_to_gguf(name: &str) -> Option<String> {
    if let Some(rest) = name.strip_suffix(".mlp.gate.e_score_correction_bias") {
        let i: usize = rest.strip_prefix("model.layers.")?.parse().ok()?;
        return Some(format!("blk.{i}.exp_probs_b.bias"));
    }
    hf::expert_name(name, "mlp.experts.", hf::MLP_EXPERT_PARTS).or_else(|| {
        hf::map_names(
            name,
            &[
                ("post_attention_layernorm", "ffn_norm"),
                ("mlp.gate", "ffn_gate_inp"),
                ("mlp.shared_experts.gate_proj", "ffn_gate_shexp"),
                ("mlp.shared_experts.up_proj", "ffn_up_shexp"),
                ("mlp.shared_experts.down_proj", "ffn_down_shexp"),
                ("self_attn.q_a_proj", "attn_q_a"),
                ("self_attn.q_a_layernorm", "attn_q_a_norm"),
                ("self_attn.q_b_proj", "attn_q_b"),
                ("self_attn.kv_a_proj_with_mqa", "attn_kv_a_mqa"),
                ("self_attn.kv_a_layernorm", "attn_kv_a_norm"),
                ("self_attn.kv_b_proj", "attn_kv_b"),
            ],
        )
    })
}

pub fn load_block<B: Backend + 'static>(
    model: &ModelFile,
    c: &ModelConfig,
    mla: &MlaConfig,
    i: usize,
    backend: &B,
) -> Result<Box<dyn Block<B>>, Error> {
    let l = Loader::new(model, c, backend, i);
    let attn = SelfAttention::Latent(MlaAttention::load(&l, mla)?);
    Ok(Box::new(PreNormBlock::load(&l, attn)?))
}
