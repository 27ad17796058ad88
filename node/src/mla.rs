//! Multi-head latent attention (DeepSeek-V2/V3). Each position's keys and values are
//! compressed into one latent row (`kv_lora` values, RMS-normed) plus a key part that carries
//! RoPE (`rope` values, shared by every head). Each head's key without RoPE is `W_UK · c` and its
//! value `W_UV · c`.
//!
//! Baton runs it in the absorbed form throughout: `W_UK` is folded into the query
//! (`q_abs = W_UKᵀ · q_nope`), so every head scores `[q_abs, q_rope] · [c, k_rope]` against the
//! cached row itself, and takes as its output `W_UV` times the attention-weighted sum of the
//! latents. The cache holds only `[c, k_rope]` per position and layer (576 values for
//! DeepSeek-V3's 512 + 64): a latent cache ([`AttnShape::latent`]) of one KV head whose values
//! are the first `kv_lora` of each key.

use baton_shaders::cpu::AttnShape;

use crate::arch::ModelConfig;
use crate::backend::Backend;
use crate::error::{Error, LoadError, RunError};
use crate::layers::{outputs, per_segment, Loader};
use crate::pass::{Pass, Segment};

/// The shape of a model's MLA layers.
#[derive(Clone, Debug, PartialEq)]
pub struct MlaConfig {
    /// Rank of the query's compression; 0 for a full query projection (DeepSeek-V2-Lite).
    pub q_lora: usize,
    pub kv_lora: usize,
    /// Per head: the query and key dimensions without RoPE and with it, and the values'.
    pub nope: usize,
    pub rope: usize,
    pub v: usize,
    /// Multiplies the scores before the softmax: `(nope + rope)^-½`, times `mscale²` under
    /// YaRN.
    pub scale: f32,
}

impl MlaConfig {
    /// The width of a cached row, which is also the attention's key dimension.
    pub fn latent_width(&self) -> usize {
        self.kv_lora + self.rope
    }

    pub fn check(&self) -> Result<(), String> {
        let dims = [self.kv_lora, self.nope, self.rope, self.v];
        if dims.contains(&0) || dims.iter().any(|&d| d > 4096) || self.q_lora > 1 << 16 {
            return Err(format!("implausible MLA dimensions: {self:?}"));
        }
        if !self.rope.is_multiple_of(2) || self.kv_lora > 512 || self.latent_width() > 1024 {
            return Err(format!(
                "MLA with a latent of {} and a RoPE part of {} (up to 512 and 1024 in all, \
                 an even RoPE part) is not supported",
                self.kv_lora, self.rope
            ));
        }
        Ok(())
    }
}

/// The query projection: compressed (`attn_q_a`, its norm, `attn_q_b`) or full (`attn_q`).
enum Query<B: Backend> {
    Lora {
        a: B::Weight,
        norm: B::Vector,
        b: B::Weight,
    },
    Full(B::Weight),
}

pub struct MlaAttention<B: Backend> {
    query: Query<B>,
    /// `[hidden → kv_lora + rope]`: the latent and the key's RoPE part.
    kv_a: B::Weight,
    kv_norm: B::Vector,
    /// Per head, `W_UKᵀ` `[nope → kv_lora]` and `W_UV` `[kv_lora → v]`.
    k_b: Vec<B::Weight>,
    v_b: Vec<B::Weight>,
    wo: B::Weight,
    inv_freq: B::Vector,
    rope_factor: f32,
    interleaved: bool,
    c: MlaConfig,
    shape: AttnShape,
    eps: f32,
}

impl<B: Backend> MlaAttention<B> {
    pub fn load(l: &Loader<B>, c: &MlaConfig) -> Result<Self, Error> {
        let config = l.config;
        let (h, heads) = (config.hidden, config.heads);
        let q_width = heads * (c.nope + c.rope);
        let query = if c.q_lora > 0 {
            Query::Lora {
                a: l.weight("attn_q_a", h, c.q_lora)?,
                norm: l.norm("attn_q_a_norm", c.q_lora)?,
                b: l.weight("attn_q_b", c.q_lora, q_width)?,
            }
        } else {
            Query::Full(l.weight("attn_q", h, q_width)?)
        };
        let (k_b, v_b) = head_weights(l, c, heads)?;
        let (inv, rope_factor) = config.rope.inv_freq();
        Ok(MlaAttention {
            query,
            kv_a: l.weight("attn_kv_a_mqa", h, c.latent_width())?,
            kv_norm: l.norm("attn_kv_a_norm", c.kv_lora)?,
            k_b,
            v_b,
            wo: l.weight("attn_output", heads * c.v, h)?,
            inv_freq: l.backend.vector(&inv)?,
            rope_factor,
            interleaved: config.rope.interleaved,
            c: c.clone(),
            shape: latent_shape(config, c),
            eps: config.rms_eps,
        })
    }

    /// Attention over the normed input `xn`; each segment of the pass appends to its session's
    /// cache and attends over it.
    pub fn forward(
        &self,
        be: &B,
        xn: &B::Act,
        kvs: &mut [&mut B::Kv],
        pass: &Pass,
    ) -> Result<B::Act, RunError> {
        let segments = pass.segments();
        let decode = pass.decode_rows();
        let c = &self.c;
        let heads = self.k_b.len();
        let (q, kv_a) = match &self.query {
            Query::Lora { a, norm, b } => {
                let [qa, kv_a] = outputs(be.linear(&[a, &self.kv_a], xn, decode)?)?;
                let qa = be.rmsnorm(&qa, norm, self.eps)?;
                (be.linear(&[b], &qa, decode)?.remove(0), kv_a)
            }
            Query::Full(w) => {
                let [q, kv_a] = outputs(be.linear(&[w, &self.kv_a], xn, decode)?)?;
                (q, kv_a)
            }
        };
        let latent = be.rmsnorm(
            &be.columns(&[(&kv_a, 0, c.kv_lora)])?,
            &self.kv_norm,
            self.eps,
        )?;
        let k_rope = be.columns(&[(&kv_a, c.kv_lora, c.rope)])?;
        let k_rope = self.rope(be, k_rope, segments)?;
        let qd = c.nope + c.rope;
        let q_rope: Vec<_> = (0..heads).map(|h| (&q, h * qd + c.nope, c.rope)).collect();
        let q_rope = self.rope(be, be.columns(&q_rope)?, segments)?;
        // Each head's query without RoPE, taken into the latent space by W_UKᵀ.
        let q_nope = (0..heads)
            .map(|h| be.columns(&[(&q, h * qd, c.nope)]))
            .collect::<Result<Vec<_>, _>>()?;
        let q_abs = self.per_head(be, &self.k_b, &q_nope, decode)?;
        let mut parts = Vec::with_capacity(2 * heads);
        for (h, qa) in q_abs.iter().enumerate() {
            parts.push((qa, 0, c.kv_lora));
            parts.push((&q_rope, h * c.rope, c.rope));
        }
        let query = be.columns(&parts)?;
        let key = be.columns(&[(&latent, 0, c.kv_lora), (&k_rope, 0, c.rope)])?;
        let att = per_segment(be, [query, key], kvs, pass, |[q, k], kv, pos0| {
            be.attention(&q, &k, None, kv, pos0, &self.shape)
        })?;
        // Each head's weighted latents out through W_UV, side by side, then the output.
        let att = (0..heads)
            .map(|h| be.columns(&[(&att, h * c.kv_lora, c.kv_lora)]))
            .collect::<Result<Vec<_>, _>>()?;
        let values = self.per_head(be, &self.v_b, &att, decode)?;
        let values: Vec<_> = values.iter().map(|v| (v, 0, c.v)).collect();
        let values = be.columns(&values)?;
        Ok(be.linear(&[&self.wo], &values, decode)?.remove(0))
    }

    /// `ws[h] · xs[h]` for every head, in one pass.
    fn per_head(
        &self,
        be: &B,
        ws: &[B::Weight],
        xs: &[B::Act],
        decode: usize,
    ) -> Result<Vec<B::Act>, RunError> {
        let refs: Vec<[&B::Weight; 1]> = ws.iter().map(|w| [w]).collect();
        let groups: Vec<_> = refs
            .iter()
            .zip(xs)
            .map(|(w, x)| (&w[..], x, decode))
            .collect();
        be.linear_groups(&groups)?
            .into_iter()
            .map(|mut o| {
                o.pop()
                    .ok_or_else(|| RunError::Backend("linear returned no output".into()))
            })
            .collect()
    }

    /// RoPE over heads of `rope` values, each segment at its own positions.
    fn rope(&self, be: &B, mut x: B::Act, segments: &[Segment]) -> Result<B::Act, RunError> {
        let (d, inv, f, il) = (
            self.c.rope,
            &self.inv_freq,
            self.rope_factor,
            self.interleaved,
        );
        if let [s] = segments {
            be.rope(&mut x, s.pos0, d, inv, f, il)?;
            return Ok(x);
        }
        let mut parts = Vec::with_capacity(segments.len());
        for s in segments {
            let mut part = be.rows(&x, s.start, s.len)?;
            be.rope(&mut part, s.pos0, d, inv, f, il)?;
            parts.push(part);
        }
        be.concat(&parts)
    }
}

/// The attention over the latent cache: every head against one KV head of `kv_lora + rope`,
/// whose first `kv_lora` are the values.
fn latent_shape(config: &ModelConfig, c: &MlaConfig) -> AttnShape {
    AttnShape {
        scale: c.scale,
        v_dim: c.kv_lora,
        latent: true,
        ..AttnShape::new(config.heads, 1, c.latent_width())
    }
}

/// Per head, `W_UKᵀ` and `W_UV`: from GGUF's `attn_k_b` and `attn_v_b`, which stack them so
/// already, or from `attn_kv_b` (Hugging Face's `kv_b_proj`), whose rows hold each head's
/// `W_UK` (`nope` rows) then its `W_UV` (`v` rows).
#[allow(clippy::type_complexity)]
fn head_weights<B: Backend>(
    l: &Loader<B>,
    c: &MlaConfig,
    heads: usize,
) -> Result<(Vec<B::Weight>, Vec<B::Weight>), Error> {
    let name = |part: &str| format!("blk.{}.{part}.weight", l.block);
    let mut k_b = Vec::with_capacity(heads);
    let mut v_b = Vec::with_capacity(heads);
    if l.model.has_tensor(&name("attn_k_b")) {
        for h in 0..heads {
            k_b.push(l.stacked("attn_k_b", h, heads, c.nope, c.kv_lora)?);
            v_b.push(l.stacked("attn_v_b", h, heads, c.kv_lora, c.v)?);
        }
        return Ok((k_b, v_b));
    }
    let kv_b = l
        .model
        .tensor(&name("attn_kv_b"), &[c.kv_lora, heads * (c.nope + c.v)])?;
    let bad = || LoadError::Corrupt {
        path: l.model.path.clone(),
        what: format!("`{}` does not split into heads", kv_b.name),
    };
    for h in 0..heads {
        let at = h * (c.nope + c.v);
        let uk = kv_b.row_range(at, c.nope).ok_or_else(bad)?;
        let uv = kv_b.row_range(at + c.nope, c.v).ok_or_else(bad)?;
        k_b.push(
            l.backend
                .weight(&uk.transposed().map_err(RunError::from)?)?,
        );
        v_b.push(l.backend.weight(&uv)?);
    }
    Ok((k_b, v_b))
}
