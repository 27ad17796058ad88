//! What every architecture reads the same way from a Hugging Face `config.json`, and the
//! mapping of Hugging Face weight names to GGUF's.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value as Json;

use super::{rope, Arch, ModelConfig, Rope};
use crate::error::LoadError;

#[derive(Deserialize)]
pub(crate) struct Common {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub rms_norm_eps: Option<f64>,
    pub max_position_embeddings: Option<usize>,
    pub tie_word_embeddings: Option<bool>,
    pub hidden_act: Option<String>,
    pub hidden_activation: Option<String>,
    pub attention_bias: Option<bool>,
    pub mlp_bias: Option<bool>,
    #[serde(skip)]
    raw: Json,
}

impl Common {
    /// Parses the common fields and refuses options that change the numerics in ways the
    /// architectures here do not implement.
    pub fn parse(path: &Path, raw: &Json, activation: &str) -> Result<Self, LoadError> {
        let bad = |what: String| LoadError::Config {
            path: path.to_path_buf(),
            what,
        };
        let mut c: Common = serde_json::from_value(raw.clone())
            .map_err(|e| bad(format!("invalid config.json: {e}")))?;
        c.raw = raw.clone();
        let act = c
            .hidden_activation
            .clone()
            .or(c.hidden_act.clone())
            .unwrap_or(activation.into());
        if act != activation {
            return Err(bad(format!(
                "activation `{act}` is not supported for this architecture (expected {activation})"
            )));
        }
        if let Some(q) = raw.get("quantization_config").filter(|q| !q.is_null()) {
            check_quantization(q).map_err(bad)?;
        }
        if c.attention_bias == Some(true) || c.mlp_bias == Some(true) {
            return Err(bad(
                "`attention_bias` / `mlp_bias` are not supported for this architecture".into(),
            ));
        }
        Ok(c)
    }

    pub fn config(
        &self,
        path: &Path,
        arch: Arch,
        default_theta: f64,
        default_eps: f64,
    ) -> Result<ModelConfig, LoadError> {
        let (theta, scaling) =
            rope::from_hf(&self.raw, default_theta).map_err(|what| LoadError::Config {
                path: path.to_path_buf(),
                what,
            })?;
        let head_dim = self
            .head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1));
        Ok(ModelConfig {
            arch,
            vocab: self.vocab_size,
            hidden: self.hidden_size,
            intermediate: self.intermediate_size,
            layers: self.num_hidden_layers,
            heads: self.num_attention_heads,
            kv_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim,
            rms_eps: self.rms_norm_eps.unwrap_or(default_eps) as f32,
            context: self.max_position_embeddings.unwrap_or(4096),
            rope: Rope {
                theta,
                dims: head_dim,
                interleaved: false,
                scaling,
            },
            tied_embeddings: self.tie_word_embeddings.unwrap_or(false),
            norm_shift: 0.0,
            moe: None,
            mla: None,
        })
    }
}

/// Of the checkpoints' quantization schemes, FP8 E4M3 with 128 × 128 scale tiles (DeepSeek-V3's,
/// see [`crate::fp8`]) loads; its activations stay f32.
fn check_quantization(q: &Json) -> Result<(), String> {
    let method = q.get("quant_method").and_then(Json::as_str).unwrap_or("");
    let fmt = q.get("fmt").and_then(Json::as_str).unwrap_or("e4m3");
    let block: Option<Vec<u64>> = q
        .get("weight_block_size")
        .and_then(Json::as_array)
        .map(|b| b.iter().filter_map(Json::as_u64).collect());
    let tile = crate::fp8::TILE as u64;
    if method == "fp8" && fmt == "e4m3" && block == Some(vec![tile, tile]) {
        return Ok(());
    }
    Err(format!(
        "quantization `{method}` ({fmt}, blocks {block:?}) is not supported: Hugging Face \
         checkpoints load in f32, f16, bf16, or FP8 E4M3 with 128 × 128 scale blocks"
    ))
}

/// The parts of a block every architecture names alike.
const SHARED_PARTS: &[(&str, &str)] = &[
    ("input_layernorm", "attn_norm"),
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("self_attn.q_norm", "attn_q_norm"),
    ("self_attn.k_norm", "attn_k_norm"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

/// `model.layers.{i}.{hf}.{weight|bias}` → `blk.{i}.{gguf}.{weight|bias}` through the shared
/// parts and the architecture's own `parts`, and the embedding, the final norm and the head.
pub(crate) fn map_names(name: &str, parts: &[(&str, &str)]) -> Option<String> {
    let fixed = match name {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (idx, part) = rest.split_once('.')?;
    let idx: usize = idx.parse().ok()?;
    let (stem, kind) = part.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let (_, gguf) = SHARED_PARTS
        .iter()
        .chain(parts)
        .find(|(hf, _)| *hf == stem)?;
    Some(format!("blk.{idx}.{gguf}.{kind}"))
}

/// The parts of each expert of `mlp.experts.{e}` (Qwen3-MoE, DeepSeek), for [`expert_name`].
pub(crate) const MLP_EXPERT_PARTS: &[(&str, &str)] = &[
    ("gate_proj", "ffn_gate"),
    ("up_proj", "ffn_up"),
    ("down_proj", "ffn_down"),
];

/// `model.layers.{i}.{experts}{e}.{hf}.weight` → `blk.{i}.{gguf}.{e}.weight` for the experts'
/// `parts`: one tensor per expert, as Hugging Face folders store them.
pub(crate) fn expert_name(name: &str, experts: &str, parts: &[(&str, &str)]) -> Option<String> {
    let rest = name.strip_prefix("model.layers.")?;
    let (idx, rest) = rest.split_once('.')?;
    let idx: usize = idx.parse().ok()?;
    let (e, stem) = rest.strip_prefix(experts)?.split_once('.')?;
    let e: usize = e.parse().ok()?;
    let stem = stem.strip_suffix(".weight")?;
    let (_, gguf) = parts.iter().find(|(hf, _)| *hf == stem)?;
    Some(format!("blk.{idx}.{gguf}.{e}.weight"))
}
