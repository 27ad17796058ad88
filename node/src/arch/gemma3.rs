//! Gemma 3 (text): embeddings scaled by √hidden; RMSNorm by `1 + w` around both attention and
//! the MLP (before and after each); per-head q/k norms; a GELU-gated MLP; local layers that
//! attend within a sliding window with their own RoPE base, interleaved with global layers.
//! Numerics follow transformers' `modeling_gemma3.py`.

use std::path::Path;

use serde_json::Value as Json;

use super::{hf, rope, Arch, GgufKeys, ModelConfig, Rope, RopeScaling};
use crate::backend::Backend;
use crate::error::{Error, LoadError, RunError};
use crate::layers::{Activation, Attention, AttentionOptions, Block, Loader, Mlp};
use crate::model::ModelFile;
use crate::pass::Pass;

#[derive(Clone, Debug, PartialEq)]
pub struct Gemma3 {
    /// A local layer at position `p` sees positions `p - window + 1 ..= p`.
    pub sliding_window: usize,
    /// Per layer: whether it is local (sliding window).
    pub local: Vec<bool>,
    /// RoPE base of the local layers, which use no scaling.
    pub local_theta: f32,
    /// Multiplies attention scores: `query_pre_attn_scalar^-1/2`.
    pub query_scale: f32,
}

impl Gemma3 {
    pub fn is_local(&self, layer: usize) -> bool {
        self.local.get(layer).copied().unwrap_or(false)
    }
}

/// The tensors of a block, under GGUF's names without `blk.{i}.`.
pub const BLOCK_TENSORS: &[&str] = &[
    "attn_norm.weight",
    "attn_q.weight",
    "attn_k.weight",
    "attn_v.weight",
    "attn_output.weight",
    "attn_q_norm.weight",
    "attn_k_norm.weight",
    "post_attention_norm.weight",
    "ffn_norm.weight",
    "ffn_gate.weight",
    "ffn_up.weight",
    "ffn_down.weight",
    "post_ffw_norm.weight",
];

/// Every sixth layer is global, the others local: Gemma 3's pattern when a file names none.
fn default_pattern(layers: usize) -> Vec<bool> {
    (0..layers).map(|i| (i + 1) % 6 != 0).collect()
}

pub fn from_gguf(g: &crate::gguf::GgufFile) -> Result<ModelConfig, LoadError> {
    let k = GgufKeys { g, arch: "gemma3" };
    k.refuse_unknown(&["attention.sliding_window", "rope.freq_base_swa"])?;
    let mut c = k.common(Arch::Llama, false)?;
    let window = k.u("attention.sliding_window")?;
    // llama.cpp's reading of the same file: scores scaled by 1/√head_dim, except the 27B (62
    // layers) whose query_pre_attn_scalar is hidden/heads; local layers on their own base, 10,000
    // where older conversions do not state it.
    let scalar = if c.layers == 62 {
        c.hidden / c.heads.max(1)
    } else {
        c.head_dim
    };
    c.arch = Arch::Gemma3(Gemma3 {
        sliding_window: window,
        local: default_pattern(c.layers),
        local_theta: k.f_or("rope.freq_base_swa", 10000.0) as f32,
        query_scale: 1.0 / (scalar as f32).sqrt(),
    });
    c.rms_eps = k.f_or("attention.layer_norm_rms_epsilon", 1e-6) as f32;
    Ok(c)
}

pub fn from_hf(path: &Path, raw: &Json) -> Result<ModelConfig, LoadError> {
    let bad = |what: String| LoadError::Config {
        path: path.to_path_buf(),
        what,
    };
    for key in ["final_logit_softcapping", "attn_logit_softcapping"] {
        if raw.get(key).is_some_and(|v| !v.is_null()) {
            return Err(bad(format!("`{key}` is not supported")));
        }
    }
    // transformers 5 keeps one set of RoPE parameters per layer type.
    let per_type = raw
        .get("rope_parameters")
        .filter(|p| p.get("full_attention").is_some());
    let mut global_raw = raw.clone();
    if let (Some(p), Some(obj)) = (per_type, global_raw.as_object_mut()) {
        obj.insert("rope_parameters".into(), p["full_attention"].clone());
    }
    let h = hf::Common::parse(path, &global_raw, "gelu_pytorch_tanh")?;
    let mut c = h.config(path, Arch::Llama, 1_000_000.0, 1e-6)?;
    let local_theta = match per_type.and_then(|p| p.get("sliding_attention")) {
        Some(local) => {
            let wrapped = serde_json::json!({ "rope_parameters": local });
            match rope::from_hf(&wrapped, 10000.0).map_err(bad)? {
                (theta, RopeScaling::None) => theta,
                _ => return Err(bad("scaled RoPE on local layers is not supported".into())),
            }
        }
        None => raw
            .get("rope_local_base_freq")
            .and_then(Json::as_f64)
            .unwrap_or(10000.0) as f32,
    };
    let local = match raw.get("layer_types").and_then(Json::as_array) {
        Some(types) => {
            if types.len() != c.layers {
                return Err(bad(format!(
                    "`layer_types` names {} layers, not {}",
                    types.len(),
                    c.layers
                )));
            }
            types
                .iter()
                .map(|t| match t.as_str() {
                    Some("sliding_attention") => Ok(true),
                    Some("full_attention") => Ok(false),
                    _ => Err(bad(format!("layer type {t} is not supported"))),
                })
                .collect::<Result<_, _>>()?
        }
        None => match raw.get("sliding_window_pattern").and_then(Json::as_u64) {
            Some(n) if n > 0 => (0..c.layers).map(|i| (i + 1) % n as usize != 0).collect(),
            _ => default_pattern(c.layers),
        },
    };
    let scalar = raw
        .get("query_pre_attn_scalar")
        .and_then(Json::as_f64)
        .unwrap_or(c.head_dim as f64);
    c.arch = Arch::Gemma3(Gemma3 {
        sliding_window: raw
            .get("sliding_window")
            .and_then(Json::as_u64)
            .unwrap_or(4096) as usize,
        local,
        local_theta,
        query_scale: 1.0 / (scalar as f32).sqrt(),
    });
    c.tied_embeddings = h.tie_word_embeddings.unwrap_or(true);
    c.norm_shift = 1.0;
    Ok(c)
}

pub fn hf_to_gguf(name: &str) -> Option<String> {
    hf::map_names(
        name,
        &[
            ("post_attention_layernorm", "post_attention_norm"),
            ("pre_feedforward_layernorm", "ffn_norm"),
            ("post_feedforward_layernorm", "post_ffw_norm"),
        ],
    )
}

struct Gemma3Block<B: Backend> {
    attn_norm: B::Vector,
    attn: Attention<B>,
    post_attn_norm: B::Vector,
    ffn_norm: B::Vector,
    mlp: Mlp<B>,
    post_ffw_norm: B::Vector,
    eps: f32,
}

impl<B: Backend> Block<B> for Gemma3Block<B> {
    fn forward(
        &self,
        be: &B,
        x: &mut B::Act,
        kvs: &mut [&mut B::Kv],
        pass: &Pass,
    ) -> Result<(), RunError> {
        let xn = be.rmsnorm(x, &self.attn_norm, self.eps)?;
        let o = self.attn.forward(be, &xn, kvs, pass)?;
        let o = be.rmsnorm(&o, &self.post_attn_norm, self.eps)?;
        be.add(x, &o)?;
        let xn = be.rmsnorm(x, &self.ffn_norm, self.eps)?;
        let d = self.mlp.forward(be, &xn, pass.decode_rows())?;
        let d = be.rmsnorm(&d, &self.post_ffw_norm, self.eps)?;
        be.add(x, &d)
    }
}

pub fn load_block<B: Backend + 'static>(
    model: &ModelFile,
    c: &ModelConfig,
    g: &Gemma3,
    i: usize,
    backend: &B,
) -> Result<Box<dyn Block<B>>, Error> {
    let l = Loader::new(model, c, backend, i);
    let local = g.is_local(i);
    let rope = if local {
        Rope {
            theta: g.local_theta,
            scaling: RopeScaling::None,
            ..c.rope.clone()
        }
    } else {
        c.rope.clone()
    };
    let options = AttentionOptions {
        bias: false,
        qk_norm: true,
        rope,
        scale: g.query_scale,
        window: if local { g.sliding_window } else { 0 },
    };
    Ok(Box::new(Gemma3Block {
        attn_norm: l.norm("attn_norm", c.hidden)?,
        attn: Attention::load(&l, &options)?,
        post_attn_norm: l.norm("post_attention_norm", c.hidden)?,
        ffn_norm: l.norm("ffn_norm", c.hidden)?,
        mlp: Mlp::load(&l, Activation::GeluTanh)?,
        post_ffw_norm: l.norm("post_ffw_norm", c.hidden)?,
        eps: c.rms_eps,
    }))
}
