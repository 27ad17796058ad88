//! The architectures Baton runs, behind one seam. Each file owns one architecture: how its
//! config is read from GGUF metadata and from `config.json`, its weight names in both formats,
//! and how a block of it loads and runs. Adding an architecture means adding a file here and a
//! line in each `match` below.
//!
//! - [`llama`]: Llama 2/3/3.1/3.2, Mistral, SmolLM.
//! - [`qwen`]: Qwen2/2.5 (biases on q, k, v) and Qwen3 (per-head q/k norms).
//! - [`gemma3`]: Gemma 3 (sliding-window layers, GELU, norms around attention and MLP).
//! - [`mixtral`]: Mixtral (Llama with a mixture of experts).
//! - [`qwen3_moe`]: Qwen3-MoE (Qwen3 with a mixture of experts).
//! - [`deepseek`]: DeepSeek-V2/V3/R1 (latent attention, grouped routing, shared experts).

pub mod deepseek;
pub mod gemma3;
mod hf;
pub mod llama;
pub mod mixtral;
pub mod qwen;
pub mod qwen3_moe;
pub mod rope;

use std::path::Path;

use crate::backend::{Backend, KvLayout};
use crate::error::{Error, LoadError};
use crate::gguf::{GgufFile, Value};
use crate::layers::Block;
use crate::mla::MlaConfig;
use crate::model::ModelFile;
use crate::moe::MoeConfig;

pub use gemma3::Gemma3;
pub use rope::{Rope, RopeScaling};

/// What differs between architectures beyond the common numbers of [`ModelConfig`].
#[derive(Clone, Debug, PartialEq)]
pub enum Arch {
    Llama,
    /// Qwen2/2.5: biases on the q, k and v projections.
    Qwen2,
    /// Qwen3: RMSNorm per head on q and k before RoPE.
    Qwen3,
    Gemma3(Gemma3),
    /// Llama with a mixture of experts.
    Mixtral,
    /// Qwen3 with a mixture of experts.
    Qwen3Moe,
    /// DeepSeek-V2/V3: latent attention and a mixture of experts with shared experts.
    Deepseek,
}

impl Arch {
    pub fn name(&self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Gemma3(_) => "gemma3",
            Arch::Mixtral => "mixtral",
            Arch::Qwen3Moe => "qwen3moe",
            Arch::Deepseek => "deepseek2",
        }
    }
}

/// The GGUF `general.architecture` values and Hugging Face `model_type`s Baton runs.
pub const SUPPORTED: &str = "llama (Mixtral too), mistral, qwen2, qwen3, qwen3moe, gemma3, \
     deepseek2 \
     (Hugging Face model_type: llama, mistral, mixtral, qwen2, qwen3, qwen3_moe, gemma3_text, \
     deepseek_v2, deepseek_v3)";

/// The numbers of a decoder-only transformer, from GGUF metadata or `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rms_eps: f32,
    pub context: usize,
    pub rope: Rope,
    pub tied_embeddings: bool,
    /// Added to every RMSNorm weight on load. Gemma's checkpoints store `w` for a norm that
    /// multiplies by `1 + w`; its GGUF conversions store the sum already.
    pub norm_shift: f32,
    /// The mixture-of-experts layers' shape, for an architecture that has them.
    pub moe: Option<MoeConfig>,
    /// Multi-head latent attention's shape, for an architecture that has it; then `kv_heads`
    /// is 1 and `head_dim` the width of a latent cache row.
    pub mla: Option<MlaConfig>,
}

impl ModelConfig {
    pub fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    pub fn q_width(&self) -> usize {
        self.heads * self.head_dim
    }

    /// What one position of one layer's KV cache holds.
    pub fn kv_layout(&self) -> KvLayout {
        KvLayout {
            width: self.kv_width(),
            values: self.mla.is_none(),
        }
    }

    pub(crate) fn check(self, path: &Path) -> Result<Self, LoadError> {
        let bad = |what: String| LoadError::Config {
            path: path.to_path_buf(),
            what,
        };
        if self.heads == 0 || self.kv_heads == 0 || !self.heads.is_multiple_of(self.kv_heads) {
            return Err(bad(format!(
                "{} attention heads do not split into groups of {} KV heads",
                self.heads, self.kv_heads
            )));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) || self.head_dim > 1024 {
            return Err(bad(format!(
                "head dimension {} is not supported",
                self.head_dim
            )));
        }
        if self.layers == 0 || self.hidden == 0 || self.intermediate == 0 || self.vocab == 0 {
            return Err(bad("a dimension of the model is zero".into()));
        }
        // Bound everything a load sizes an allocation or a loop by.
        if self.layers > baton_protocol::record::MAX_BLOCKS as usize
            || self.heads > 1024
            || self.hidden > 1 << 20
            || self.vocab > 1 << 24
        {
            return Err(bad(format!(
                "implausible dimensions: {} layers, {} heads, hidden {}, vocabulary {}",
                self.layers, self.heads, self.hidden, self.vocab
            )));
        }
        if self.context == 0 {
            return Err(bad("the context length is zero".into()));
        }
        // Latent attention rotates only each head's RoPE part.
        let rotated = self.mla.as_ref().map_or(self.head_dim, |m| m.rope);
        self.rope.check(rotated).map_err(bad)?;
        if let Some(moe) = &self.moe {
            moe.check().map_err(bad)?;
            if moe.dense.iter().any(|&l| l >= self.layers) {
                return Err(bad("a dense layer past the last layer".into()));
            }
        }
        if let Some(mla) = &self.mla {
            mla.check().map_err(bad)?;
            if self.kv_heads != 1 || self.head_dim != mla.latent_width() {
                return Err(bad("latent attention with another cache shape".into()));
            }
        }
        Ok(self)
    }

    pub fn from_gguf(g: &GgufFile) -> Result<Self, LoadError> {
        let arch = g.get_str("general.architecture").unwrap_or("").to_string();
        let config = match arch.as_str() {
            "llama" if g.get_u64("llama.expert_count").is_ok_and(|n| n > 0) => {
                mixtral::from_gguf(g)?
            }
            "llama" | "mistral" => llama::from_gguf(g, &arch)?,
            "qwen3moe" => qwen3_moe::from_gguf(g)?,
            "deepseek2" => deepseek::from_gguf(g)?,
            "qwen2" | "qwen3" => qwen::from_gguf(g, &arch)?,
            "gemma3" => gemma3::from_gguf(g)?,
            _ => {
                return Err(LoadError::Architecture {
                    path: g.path.clone(),
                    arch,
                })
            }
        };
        config.check(&g.path)
    }

    pub fn from_hf_json(path: &Path, text: &str) -> Result<Self, LoadError> {
        let raw: serde_json::Value = serde_json::from_str(text).map_err(|e| LoadError::Config {
            path: path.to_path_buf(),
            what: format!("invalid config.json: {e}"),
        })?;
        let model_type = raw
            .get("model_type")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        let config = match model_type.as_str() {
            "llama" | "mistral" => llama::from_hf(path, &raw)?,
            "mixtral" => mixtral::from_hf(path, &raw)?,
            "qwen3_moe" => qwen3_moe::from_hf(path, &raw)?,
            "deepseek_v2" | "deepseek_v3" => deepseek::from_hf(path, &raw, &model_type)?,
            "qwen2" | "qwen3" => qwen::from_hf(path, &raw, &model_type)?,
            "gemma3_text" | "gemma3" => gemma3::from_hf(path, &raw)?,
            _ => {
                return Err(LoadError::Architecture {
                    path: path.to_path_buf(),
                    arch: if model_type.is_empty() {
                        "(no model_type)".into()
                    } else {
                        model_type
                    },
                })
            }
        };
        config.check(path)
    }

    /// The GGUF name of a Hugging Face weight, or `None` for a name this architecture does not
    /// use.
    pub fn hf_to_gguf(&self, hf: &str) -> Option<String> {
        match self.arch {
            Arch::Gemma3(_) => gemma3::hf_to_gguf(hf),
            Arch::Mixtral => mixtral::hf_to_gguf(hf),
            Arch::Qwen3Moe => qwen3_moe::hf_to_gguf(hf),
            Arch::Deepseek => deepseek::hf_to_gguf(hf),
            _ => llama::hf_to_gguf(hf),
        }
    }

    /// Whether a tensor of the file is one this architecture reads.
    pub fn uses_tensor(&self, name: &str) -> bool {
        let block_part = name
            .strip_prefix("blk.")
            .and_then(|r| r.split_once('.'))
            .filter(|(i, _)| i.parse::<usize>().is_ok_and(|i| i < self.layers))
            .map(|(_, part)| part);
        match block_part {
            Some(part) => match &self.arch {
                Arch::Llama => llama::BLOCK_TENSORS.contains(&part),
                Arch::Qwen2 | Arch::Qwen3 => qwen::block_tensors(&self.arch).contains(&part),
                Arch::Gemma3(_) => gemma3::BLOCK_TENSORS.contains(&part),
                Arch::Mixtral => mixtral::uses_part(self, part),
                Arch::Qwen3Moe => qwen3_moe::uses_part(self, part),
                Arch::Deepseek => deepseek::uses_part(self, part),
            },
            None => {
                matches!(
                    name,
                    "token_embd.weight" | "output_norm.weight" | "output.weight"
                ) || (name == "rope_freqs.weight" && matches!(self.arch, Arch::Llama))
            }
        }
    }

    /// Loads block `i` of `model` onto `backend`.
    pub fn load_block<B: Backend + 'static>(
        &self,
        model: &ModelFile,
        i: usize,
        backend: &B,
    ) -> Result<Box<dyn Block<B>>, Error> {
        match &self.arch {
            Arch::Llama | Arch::Qwen2 | Arch::Qwen3 | Arch::Mixtral | Arch::Qwen3Moe => {
                llama::load_block(model, self, i, backend)
            }
            Arch::Gemma3(g) => gemma3::load_block(model, self, g, i, backend),
            Arch::Deepseek => {
                let mla = self.mla.as_ref().ok_or_else(|| LoadError::Config {
                    path: model.path.clone(),
                    what: "DeepSeek-V3 without its latent attention's shape".into(),
                })?;
                deepseek::load_block(model, self, mla, i, backend)
            }
        }
    }

    /// The sliding window of layer `layer`: a query at `p` sees `p - window + 1 ..= p`; 0 for a
    /// layer that sees every position.
    pub fn window(&self, layer: usize) -> usize {
        match &self.arch {
            Arch::Gemma3(g) if g.is_local(layer) => g.sliding_window,
            _ => 0,
        }
    }

    /// What the token embedding is multiplied by (Gemma: √hidden).
    pub fn embed_scale(&self) -> Option<f32> {
        match self.arch {
            Arch::Gemma3(_) => Some((self.hidden as f32).sqrt()),
            _ => None,
        }
    }
}

/// Reads the metadata every architecture shares, under `{arch}.`, and refuses keys of that
/// namespace that are not in `known`, since a key Baton does not apply may change the numerics.
pub(crate) struct GgufKeys<'a> {
    pub g: &'a GgufFile,
    pub arch: &'a str,
}

/// Keys of every architecture's namespace that Baton reads or that do not change the numerics.
const COMMON_KEYS: &[&str] = &[
    "context_length",
    "embedding_length",
    "block_count",
    "feed_forward_length",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.layer_norm_rms_epsilon",
    "attention.key_length",
    "attention.value_length",
    "rope.dimension_count",
    "rope.freq_base",
    "rope.scaling.type",
    "rope.scaling.factor",
    "rope.scaling.original_context_length",
    "rope.scaling.finetuned",
    "rope.scaling.yarn_beta_fast",
    "rope.scaling.yarn_beta_slow",
    "vocab_size",
];

impl<'a> GgufKeys<'a> {
    pub fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.arch)
    }

    pub fn u(&self, k: &str) -> Result<usize, LoadError> {
        Ok(self.g.get_u64(&self.key(k))? as usize)
    }

    pub fn u_or(&self, k: &str, default: usize) -> usize {
        self.g
            .get(&self.key(k))
            .and_then(Value::as_u64)
            .map_or(default, |v| v as usize)
    }

    pub fn f_or(&self, k: &str, default: f64) -> f64 {
        self.g
            .get(&self.key(k))
            .and_then(Value::as_f64)
            .unwrap_or(default)
    }

    /// Errors on a key of the namespace that is neither common nor in `extra`.
    pub fn refuse_unknown(&self, extra: &[&str]) -> Result<(), LoadError> {
        let prefix = format!("{}.", self.arch);
        for key in self.g.metadata.keys() {
            let Some(rest) = key.strip_prefix(&prefix) else {
                continue;
            };
            // Some dense conversions state zero experts.
            let no_experts = matches!(rest, "expert_count" | "expert_used_count")
                && self.g.get(key).and_then(Value::as_u64) == Some(0);
            if !COMMON_KEYS.contains(&rest) && !extra.contains(&rest) && !no_experts {
                return Err(LoadError::Config {
                    path: self.g.path.clone(),
                    what: format!(
                        "metadata `{key}` is not supported: Baton would ignore it and compute \
                         something else than the model"
                    ),
                });
            }
        }
        Ok(())
    }

    /// The config fields every architecture reads the same way.
    pub fn common(&self, arch: Arch, interleaved: bool) -> Result<ModelConfig, LoadError> {
        let g = self.g;
        let hidden = self.u("embedding_length")?;
        let heads = self.u("attention.head_count")?;
        let head_dim = self.u_or(
            "attention.key_length",
            self.u_or("rope.dimension_count", hidden / heads.max(1)),
        );
        let vocab = match g.get(&self.key("vocab_size")).and_then(Value::as_u64) {
            Some(v) => v as usize,
            None => g
                .get("tokenizer.ggml.tokens")
                .and_then(Value::as_array)
                .map(|a| a.len())
                .or_else(|| g.tensors.get("token_embd.weight").map(|t| t.dims[1]))
                .ok_or_else(|| LoadError::MissingKey {
                    path: g.path.clone(),
                    key: self.key("vocab_size"),
                })?,
        };
        let rope = Rope {
            theta: self.f_or("rope.freq_base", 10000.0) as f32,
            dims: self.u_or("rope.dimension_count", head_dim),
            interleaved,
            scaling: rope::scaling_from_gguf(self)?,
        };
        Ok(ModelConfig {
            arch,
            vocab,
            hidden,
            intermediate: self.u("feed_forward_length")?,
            layers: self.u("block_count")?,
            heads,
            kv_heads: self.u_or("attention.head_count_kv", heads),
            head_dim,
            rms_eps: self.f_or("attention.layer_norm_rms_epsilon", 1e-5) as f32,
            context: self.u_or("context_length", 4096),
            rope,
            tied_embeddings: !g.tensors.contains_key("output.weight"),
            norm_shift: 0.0,
            moe: None,
            mla: None,
        })
    }
}
