//! The architecture numbers of a Llama-family model, from GGUF metadata or `config.json`.

use std::path::Path;

use serde::Deserialize;

use crate::error::LoadError;
use crate::gguf::GgufFile;

#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub vocab: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f32,
    pub rms_eps: f32,
    pub context: usize,
    /// GGUF stores Q and K rows permuted for RoPE on adjacent pairs; Hugging Face rotates halves.
    pub rope_interleaved: bool,
    pub tied_embeddings: bool,
}

impl LlamaConfig {
    pub fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    pub fn q_width(&self) -> usize {
        self.heads * self.head_dim
    }

    fn check(self, path: &Path) -> Result<Self, LoadError> {
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
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) || self.head_dim > 512 {
            return Err(bad(format!(
                "head dimension {} is not supported",
                self.head_dim
            )));
        }
        if self.layers == 0 || self.hidden == 0 || self.intermediate == 0 || self.vocab == 0 {
            return Err(bad("a dimension of the model is zero".into()));
        }
        Ok(self)
    }

    pub fn from_gguf(g: &GgufFile) -> Result<Self, LoadError> {
        let arch = g.get_str("general.architecture").unwrap_or("").to_string();
        if arch != "llama" && arch != "mistral" {
            return Err(LoadError::Architecture {
                path: g.path.clone(),
                arch,
            });
        }
        let key = |k: &str| format!("{arch}.{k}");
        let hidden = g.get_u64(&key("embedding_length"))? as usize;
        let heads = g.get_u64(&key("attention.head_count"))? as usize;
        let kv_heads = g
            .get(&key("attention.head_count_kv"))
            .and_then(|v| v.as_u64())
            .unwrap_or(heads as u64) as usize;
        let head_dim = g
            .get(&key("rope.dimension_count"))
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
            .unwrap_or(hidden / heads.max(1));
        let vocab = match g.get(&key("vocab_size")).and_then(|v| v.as_u64()) {
            Some(v) => v as usize,
            None => g
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.as_array())
                .map(|a| a.len())
                .or_else(|| g.tensors.get("token_embd.weight").map(|t| t.dims[1]))
                .ok_or_else(|| LoadError::MissingKey {
                    path: g.path.clone(),
                    key: key("vocab_size"),
                })?,
        };
        LlamaConfig {
            vocab,
            hidden,
            intermediate: g.get_u64(&key("feed_forward_length"))? as usize,
            layers: g.get_u64(&key("block_count"))? as usize,
            heads,
            kv_heads,
            head_dim,
            rope_theta: g
                .get(&key("rope.freq_base"))
                .and_then(|v| v.as_f64())
                .unwrap_or(10000.0) as f32,
            rms_eps: g
                .get(&key("attention.layer_norm_rms_epsilon"))
                .and_then(|v| v.as_f64())
                .unwrap_or(1e-5) as f32,
            context: g
                .get(&key("context_length"))
                .and_then(|v| v.as_u64())
                .unwrap_or(4096) as usize,
            rope_interleaved: true,
            tied_embeddings: !g.tensors.contains_key("output.weight"),
        }
        .check(&g.path)
    }

    pub fn from_hf_json(path: &Path, text: &str) -> Result<Self, LoadError> {
        #[derive(Deserialize)]
        struct RopeParams {
            rope_theta: Option<f64>,
            rope_type: Option<String>,
        }
        #[derive(Deserialize)]
        struct Hf {
            model_type: Option<String>,
            architectures: Option<Vec<String>>,
            vocab_size: usize,
            hidden_size: usize,
            intermediate_size: usize,
            num_hidden_layers: usize,
            num_attention_heads: usize,
            num_key_value_heads: Option<usize>,
            head_dim: Option<usize>,
            rope_theta: Option<f64>,
            rope_parameters: Option<RopeParams>,
            rope_scaling: Option<serde_json::Value>,
            rms_norm_eps: Option<f64>,
            max_position_embeddings: Option<usize>,
            tie_word_embeddings: Option<bool>,
            hidden_act: Option<String>,
        }
        let bad = |what: String| LoadError::Config {
            path: path.to_path_buf(),
            what,
        };
        let hf: Hf =
            serde_json::from_str(text).map_err(|e| bad(format!("invalid config.json: {e}")))?;
        let arch = hf
            .model_type
            .clone()
            .or_else(|| hf.architectures.as_ref().and_then(|a| a.first().cloned()))
            .unwrap_or_default();
        if !matches!(
            arch.as_str(),
            "llama" | "mistral" | "LlamaForCausalLM" | "MistralForCausalLM"
        ) {
            return Err(LoadError::Architecture {
                path: path.to_path_buf(),
                arch,
            });
        }
        if let Some(act) = hf.hidden_act.as_deref().filter(|a| *a != "silu") {
            return Err(bad(format!(
                "activation `{act}` is not supported (expected silu)"
            )));
        }
        let rope_type = hf
            .rope_parameters
            .as_ref()
            .and_then(|r| r.rope_type.clone());
        if rope_type.as_deref().is_some_and(|t| t != "default")
            || hf.rope_scaling.as_ref().is_some_and(|v| !v.is_null())
        {
            return Err(bad("scaled RoPE (rope_scaling) is not supported yet".into()));
        }
        let theta = hf
            .rope_parameters
            .as_ref()
            .and_then(|r| r.rope_theta)
            .or(hf.rope_theta)
            .unwrap_or(10000.0);
        LlamaConfig {
            vocab: hf.vocab_size,
            hidden: hf.hidden_size,
            intermediate: hf.intermediate_size,
            layers: hf.num_hidden_layers,
            heads: hf.num_attention_heads,
            kv_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            head_dim: hf
                .head_dim
                .unwrap_or(hf.hidden_size / hf.num_attention_heads.max(1)),
            rope_theta: theta as f32,
            rms_eps: hf.rms_norm_eps.unwrap_or(1e-6) as f32,
            context: hf.max_position_embeddings.unwrap_or(4096),
            rope_interleaved: false,
            tied_embeddings: hf.tie_word_embeddings.unwrap_or(false),
        }
        .check(path)
    }
}
