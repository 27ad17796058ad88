//! The parts decoder blocks are made of, written once against [`Backend`]: attention with the
//! options architectures differ by (biases, per-head norms, RoPE scaling, a sliding window), the
//! gated MLP, and the pre-norm block of the Llama family. Architecture files compose them.

use baton_shaders::cpu::AttnShape;

use crate::arch::{ModelConfig, Rope};
use crate::backend::Backend;
use crate::error::{Error, LoadError, RunError};
use crate::mla::MlaAttention;
use crate::model::ModelFile;
use crate::moe::MoeMlp;
use crate::pass::Pass;

/// One decoder block: reads the residual stream `x` of a pass and adds its contribution in
/// place; `kvs` are the layer's caches of the pass's sessions, one per segment.
pub trait Block<B: Backend>: Send + Sync {
    fn forward(
        &self,
        be: &B,
        x: &mut B::Act,
        kvs: &mut [&mut B::Kv],
        pass: &Pass,
    ) -> Result<(), RunError>;

    /// The block's mixture of experts, where it has one.
    fn moe(&self) -> Option<&MoeMlp<B>> {
        None
    }
}

/// The `N` outputs of a call that returns one per weight it was given.
pub fn outputs<const N: usize, A>(v: Vec<A>) -> Result<[A; N], RunError> {
    v.try_into()
        .map_err(|_| RunError::Backend("linear returned too few outputs".into()))
}

/// Attention of each segment of `pass` over its session's cache: `attend` gets the segment's
/// rows of each of `acts`, its cache and its first position; the results follow in pass order.
pub fn per_segment<B: Backend, const N: usize>(
    be: &B,
    acts: [B::Act; N],
    kvs: &mut [&mut B::Kv],
    pass: &Pass,
    mut attend: impl FnMut([B::Act; N], &mut B::Kv, usize) -> Result<B::Act, RunError>,
) -> Result<B::Act, RunError> {
    let segments = pass.segments();
    if kvs.len() != segments.len() {
        return Err(RunError::Backend(format!(
            "{} caches for {} steps",
            kvs.len(),
            segments.len()
        )));
    }
    match (segments, kvs) {
        ([s], [kv]) => attend(acts, kv, s.pos0),
        (segments, kvs) => {
            let mut parts = Vec::with_capacity(segments.len());
            for (s, kv) in segments.iter().zip(kvs.iter_mut()) {
                let rows = acts
                    .iter()
                    .map(|a| be.rows(a, s.start, s.len))
                    .collect::<Result<Vec<_>, _>>()?;
                parts.push(attend(outputs(rows)?, kv, s.pos0)?);
            }
            be.concat(&parts)
        }
    }
}

/// Loads the weights of block `i` under GGUF's names (`blk.{i}.{part}.weight`).
pub struct Loader<'a, B: Backend> {
    pub model: &'a ModelFile,
    pub config: &'a ModelConfig,
    pub backend: &'a B,
    pub block: usize,
}

impl<'a, B: Backend> Loader<'a, B> {
    pub fn new(
        model: &'a ModelFile,
        config: &'a ModelConfig,
        backend: &'a B,
        block: usize,
    ) -> Self {
        Loader {
            model,
            config,
            backend,
            block,
        }
    }

    fn name(&self, part: &str, kind: &str) -> String {
        format!("blk.{}.{part}.{kind}", self.block)
    }

    /// A linear layer's weight `[cols → rows]`.
    pub fn weight(&self, part: &str, cols: usize, rows: usize) -> Result<B::Weight, Error> {
        let t = self
            .model
            .tensor(&self.name(part, "weight"), &[cols, rows])?;
        Ok(self.backend.weight(t)?)
    }

    /// A vector of `n` values, as f32.
    pub fn vector(&self, name: &str, n: usize) -> Result<B::Vector, Error> {
        let t = self.model.tensor(name, &[n])?;
        Ok(self.backend.vector(&t.to_f32().map_err(RunError::from)?)?)
    }

    /// An RMSNorm's weight, shifted as the architecture stores it.
    pub fn norm(&self, part: &str, n: usize) -> Result<B::Vector, Error> {
        let v = self.model.norm_weight(&self.name(part, "weight"), n)?;
        Ok(self.backend.vector(&v)?)
    }

    /// Expert `e` of `experts`' weight `[cols → rows]` ([`ModelFile::expert`]).
    pub fn expert(
        &self,
        part: &str,
        e: usize,
        experts: usize,
        cols: usize,
        rows: usize,
    ) -> Result<B::Weight, Error> {
        let t = self
            .model
            .expert(self.block, part, e, experts, [cols, rows])?;
        Ok(self.backend.weight(&t)?)
    }

    /// Part `i` of the `n` a tensor stacks, `[cols, rows, n]`, as a weight `[cols → rows]`
    /// (GGUF's per-head `attn_k_b` and `attn_v_b`).
    pub fn stacked(
        &self,
        part: &str,
        i: usize,
        n: usize,
        cols: usize,
        rows: usize,
    ) -> Result<B::Weight, Error> {
        let name = self.name(part, "weight");
        let t = self.model.tensor(&name, &[cols, rows, n])?;
        let p = t.part(i, n).ok_or_else(|| LoadError::Shape {
            path: self.model.path.clone(),
            tensor: name.clone(),
            got: t.dims.clone(),
            want: vec![cols, rows, n],
        })?;
        Ok(self.backend.weight(&p)?)
    }

    pub fn bias(&self, part: &str, n: usize) -> Result<B::Vector, Error> {
        self.vector(&self.name(part, "bias"), n)
    }
}

/// How attention differs between architectures and layers.
pub struct AttentionOptions {
    pub bias: bool,
    pub qk_norm: bool,
    pub rope: Rope,
    pub scale: f32,
    pub window: usize,
}

impl AttentionOptions {
    pub fn plain(c: &ModelConfig) -> Self {
        AttentionOptions {
            bias: false,
            qk_norm: false,
            rope: c.rope.clone(),
            scale: 1.0 / (c.head_dim as f32).sqrt(),
            window: 0,
        }
    }
}

pub struct Attention<B: Backend> {
    wq: B::Weight,
    wk: B::Weight,
    wv: B::Weight,
    wo: B::Weight,
    bias: Option<[B::Vector; 3]>,
    qk_norm: Option<[B::Vector; 2]>,
    inv_freq: B::Vector,
    rope_factor: f32,
    interleaved: bool,
    shape: AttnShape,
    eps: f32,
}

impl<B: Backend> Attention<B> {
    pub fn load(l: &Loader<B>, o: &AttentionOptions) -> Result<Self, Error> {
        let c = l.config;
        let (h, q, k) = (c.hidden, c.q_width(), c.kv_width());
        let bias = if o.bias {
            Some([
                l.bias("attn_q", q)?,
                l.bias("attn_k", k)?,
                l.bias("attn_v", k)?,
            ])
        } else {
            None
        };
        let qk_norm = if o.qk_norm {
            Some([
                l.norm("attn_q_norm", c.head_dim)?,
                l.norm("attn_k_norm", c.head_dim)?,
            ])
        } else {
            None
        };
        let (inv, rope_factor) = o.rope.inv_freq();
        Ok(Attention {
            wq: l.weight("attn_q", h, q)?,
            wk: l.weight("attn_k", h, k)?,
            wv: l.weight("attn_v", h, k)?,
            wo: l.weight("attn_output", q, h)?,
            bias,
            qk_norm,
            inv_freq: l.backend.vector(&inv)?,
            rope_factor,
            interleaved: o.rope.interleaved,
            shape: AttnShape {
                scale: o.scale,
                window: o.window,
                ..AttnShape::new(c.heads, c.kv_heads, c.head_dim)
            },
            eps: c.rms_eps,
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
        let decode = pass.decode_rows();
        let [mut q, mut k, mut v] =
            outputs(be.linear(&[&self.wq, &self.wk, &self.wv], xn, decode)?)?;
        if let Some([bq, bk, bv]) = &self.bias {
            be.add_rows(&mut q, bq)?;
            be.add_rows(&mut k, bk)?;
            be.add_rows(&mut v, bv)?;
        }
        if let Some([nq, nk]) = &self.qk_norm {
            q = be.rmsnorm(&q, nq, self.eps)?;
            k = be.rmsnorm(&k, nk, self.eps)?;
        }
        let att = per_segment(be, [q, k, v], kvs, pass, |[q, k, v], kv, pos0| {
            self.attend(be, q, k, &v, kv, pos0)
        })?;
        Ok(be.linear(&[&self.wo], &att, decode)?.remove(0))
    }

    /// One session's rows: RoPE at its positions, then attention over its cache.
    fn attend(
        &self,
        be: &B,
        mut q: B::Act,
        mut k: B::Act,
        v: &B::Act,
        kv: &mut B::Kv,
        pos0: usize,
    ) -> Result<B::Act, RunError> {
        let hd = self.shape.head_dim;
        let (inv, f, il) = (&self.inv_freq, self.rope_factor, self.interleaved);
        be.rope(&mut q, pos0, hd, inv, f, il)?;
        be.rope(&mut k, pos0, hd, inv, f, il)?;
        be.attention(&q, &k, Some(v), kv, pos0, &self.shape)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// GELU's tanh approximation (`gelu_pytorch_tanh`).
    GeluTanh,
}

/// `down(act(gate(x)) · up(x))`.
pub struct Mlp<B: Backend> {
    gate: B::Weight,
    up: B::Weight,
    down: B::Weight,
    act: Activation,
}

impl<B: Backend> Mlp<B> {
    pub fn load(l: &Loader<B>, act: Activation) -> Result<Self, Error> {
        let parts = ["ffn_gate", "ffn_up", "ffn_down"];
        Self::load_parts(l, parts, l.config.intermediate, act)
    }

    /// From the gate, up and down weights named `parts`, `width` wide inside.
    pub fn load_parts(
        l: &Loader<B>,
        [gate, up, down]: [&str; 3],
        width: usize,
        act: Activation,
    ) -> Result<Self, Error> {
        let h = l.config.hidden;
        Ok(Mlp {
            gate: l.weight(gate, h, width)?,
            up: l.weight(up, h, width)?,
            down: l.weight(down, width, h)?,
            act,
        })
    }

    /// Over the rows of a pass whose first `decode` rows are decode steps'.
    pub fn forward(&self, be: &B, xn: &B::Act, decode: usize) -> Result<B::Act, RunError> {
        let [mut g, u] = outputs(be.linear(&[&self.gate, &self.up], xn, decode)?)?;
        match self.act {
            Activation::Silu => be.silu_mul(&mut g, &u)?,
            Activation::GeluTanh => be.gelu_mul(&mut g, &u)?,
        }
        Ok(be.linear(&[&self.down], &g, decode)?.remove(0))
    }
}

/// A block's feed-forward: one MLP, or a mixture of experts.
pub enum Ffn<B: Backend> {
    Dense(Mlp<B>),
    Moe(MoeMlp<B>),
}

impl<B: Backend> Ffn<B> {
    /// The block's mixture of experts when the config makes it one, else its MLP.
    pub fn load(l: &Loader<B>, act: Activation) -> Result<Self, Error> {
        match &l.config.moe {
            Some(moe) if moe.is_moe(l.block) => Ok(Ffn::Moe(MoeMlp::load(l, moe)?)),
            _ => Ok(Ffn::Dense(Mlp::load(l, act)?)),
        }
    }

    pub fn forward(&self, be: &B, xn: &B::Act, pass: &Pass) -> Result<B::Act, RunError> {
        match self {
            Ffn::Dense(m) => m.forward(be, xn, pass.decode_rows()),
            Ffn::Moe(m) => m.forward(be, xn, pass),
        }
    }
}

/// A block's attention: over keys and values per head, or over a latent cache (MLA).
pub enum SelfAttention<B: Backend> {
    Heads(Attention<B>),
    Latent(MlaAttention<B>),
}

impl<B: Backend> SelfAttention<B> {
    fn forward(
        &self,
        be: &B,
        xn: &B::Act,
        kvs: &mut [&mut B::Kv],
        pass: &Pass,
    ) -> Result<B::Act, RunError> {
        match self {
            SelfAttention::Heads(a) => a.forward(be, xn, kvs, pass),
            SelfAttention::Latent(a) => a.forward(be, xn, kvs, pass),
        }
    }
}

/// The Llama family's and DeepSeek's block: `x += attn(norm(x))`, then `x += ffn(norm(x))`.
pub struct PreNormBlock<B: Backend> {
    pub attn_norm: B::Vector,
    pub attn: SelfAttention<B>,
    pub ffn_norm: B::Vector,
    pub mlp: Ffn<B>,
    pub eps: f32,
}

impl<B: Backend> PreNormBlock<B> {
    /// Block `l.block` around `attn`: its norms (`attn_norm`, `ffn_norm`) and its SiLU MLP or
    /// mixture of experts.
    pub fn load(l: &Loader<B>, attn: SelfAttention<B>) -> Result<Self, Error> {
        let c = l.config;
        Ok(PreNormBlock {
            attn_norm: l.norm("attn_norm", c.hidden)?,
            attn,
            ffn_norm: l.norm("ffn_norm", c.hidden)?,
            mlp: Ffn::load(l, Activation::Silu)?,
            eps: c.rms_eps,
        })
    }
}

impl<B: Backend> Block<B> for PreNormBlock<B> {
    fn forward(
        &self,
        be: &B,
        x: &mut B::Act,
        kvs: &mut [&mut B::Kv],
        pass: &Pass,
    ) -> Result<(), RunError> {
        let xn = be.rmsnorm(x, &self.attn_norm, self.eps)?;
        let o = self.attn.forward(be, &xn, kvs, pass)?;
        be.add(x, &o)?;
        let xn = be.rmsnorm(x, &self.ffn_norm, self.eps)?;
        let d = self.mlp.forward(be, &xn, pass)?;
        be.add(x, &d)
    }

    fn moe(&self) -> Option<&MoeMlp<B>> {
        match &self.mlp {
            Ffn::Moe(m) => Some(m),
            Ffn::Dense(_) => None,
        }
    }
}

/// A block of a node that serves experts only: its routed experts, or nothing for a dense
/// layer. It runs expert calls, never a pass.
pub struct ExpertsOnlyBlock<B: Backend>(pub Option<MoeMlp<B>>);

impl<B: Backend> Block<B> for ExpertsOnlyBlock<B> {
    fn forward(
        &self,
        _: &B,
        _: &mut B::Act,
        _: &mut [&mut B::Kv],
        _: &Pass,
    ) -> Result<(), RunError> {
        Err(RunError::Experts(
            "this node serves experts only: it runs no pass".into(),
        ))
    }

    fn moe(&self) -> Option<&MoeMlp<B>> {
        self.0.as_ref()
    }
}
