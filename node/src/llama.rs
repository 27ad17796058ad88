//! The Llama architecture (Llama 2/3, Mistral, SmolLM): one span of stages, written once against
//! [`Backend`].
//!
//! Shapes, with `H` hidden, `Q = heads·head_dim`, `K = kv_heads·head_dim`, `F` intermediate:
//! `attn_q [H→Q]`, `attn_k`/`attn_v [H→K]`, `attn_output [Q→H]`, `ffn_gate`/`ffn_up [H→F]`,
//! `ffn_down [F→H]`, `token_embd [vocab, H]`, `output [vocab, H]` (or `token_embd` when tied).

use baton_protocol::Span;

use crate::backend::Backend;
use crate::config::LlamaConfig;
use crate::error::{Error, RunError};
use crate::model::ModelFile;

struct Block<B: Backend> {
    attn_norm: B::Vector,
    wq: B::Weight,
    wk: B::Weight,
    wv: B::Weight,
    wo: B::Weight,
    ffn_norm: B::Vector,
    gate: B::Weight,
    up: B::Weight,
    down: B::Weight,
}

/// The weights of one span, resident on its backend.
pub struct LlamaSpan<B: Backend> {
    pub config: LlamaConfig,
    pub span: Span,
    pub backend: B,
    embed: Option<B::Weight>,
    blocks: Vec<Block<B>>,
    norm: Option<B::Vector>,
    /// `None` while the span has no head, or when the tied head is `embed` itself.
    head: Option<B::Weight>,
}

/// The per-session state of a span: each layer's KV cache and the next position.
pub struct SpanCache<B: Backend> {
    layers: Vec<B::Kv>,
    pub pos: usize,
}

/// What enters a span: token ids when it holds `embed`, hidden states `[tokens, hidden]` otherwise.
pub enum SpanInput<'a> {
    Tokens(&'a [u32]),
    Hidden(&'a [f32]),
}

/// Which positions of a span holding `head` get logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    Last,
    All,
}

impl<B: Backend> LlamaSpan<B> {
    /// Loads the span's weights onto the backend; `progress(done, total)` follows the tensors.
    pub fn load(
        model: &ModelFile,
        span: Span,
        backend: B,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, Error> {
        let c = model.config.clone();
        span.check(c.layers as u32)
            .map_err(crate::error::LoadError::from)?;
        let (h, q, k, f) = (c.hidden, c.q_width(), c.kv_width(), c.intermediate);
        let total = span.len() as usize * 9 + 3;
        let mut done = 0;
        let mut step = |n: usize| {
            done += n;
            progress(done, total);
        };
        let weight = |name: &str, shape: &[usize]| -> Result<B::Weight, Error> {
            Ok(backend.weight(model.tensor(name, shape)?)?)
        };
        let vector = |name: &str| -> Result<B::Vector, Error> {
            Ok(backend.vector(&model.tensor(name, &[h])?.to_f32())?)
        };
        let embed = if span.has_embed() {
            Some(weight("token_embd.weight", &[h, c.vocab])?)
        } else {
            None
        };
        step(1);
        let mut blocks = Vec::with_capacity(span.len() as usize);
        for i in span.start..span.end {
            let n = |part: &str| format!("blk.{i}.{part}.weight");
            blocks.push(Block {
                attn_norm: vector(&n("attn_norm"))?,
                wq: weight(&n("attn_q"), &[h, q])?,
                wk: weight(&n("attn_k"), &[h, k])?,
                wv: weight(&n("attn_v"), &[h, k])?,
                wo: weight(&n("attn_output"), &[q, h])?,
                ffn_norm: vector(&n("ffn_norm"))?,
                gate: weight(&n("ffn_gate"), &[h, f])?,
                up: weight(&n("ffn_up"), &[h, f])?,
                down: weight(&n("ffn_down"), &[f, h])?,
            });
            step(9);
        }
        let (norm, head) = if span.has_head(c.layers as u32) {
            let norm = Some(vector("output_norm.weight")?);
            let head = match (c.tied_embeddings, &embed) {
                (true, Some(_)) => None,
                (true, None) => Some(weight("token_embd.weight", &[h, c.vocab])?),
                (false, _) => Some(weight("output.weight", &[h, c.vocab])?),
            };
            (norm, head)
        } else {
            (None, None)
        };
        step(2);
        Ok(LlamaSpan {
            config: c,
            span,
            backend,
            embed,
            blocks,
            norm,
            head,
        })
    }

    pub fn has_embed(&self) -> bool {
        self.embed.is_some()
    }

    pub fn has_head(&self) -> bool {
        self.norm.is_some()
    }

    pub fn new_cache(&self) -> Result<SpanCache<B>, RunError> {
        let layers = self
            .blocks
            .iter()
            .map(|_| {
                self.backend
                    .kv_cache(self.config.kv_width(), self.config.context)
            })
            .collect::<Result<_, _>>()?;
        Ok(SpanCache { layers, pos: 0 })
    }

    /// Forgets every position of the cache from `pos` on.
    pub fn truncate(&self, cache: &mut SpanCache<B>, pos: usize) {
        if pos < cache.pos {
            for kv in &mut cache.layers {
                self.backend.kv_truncate(kv, pos);
            }
            cache.pos = pos;
        }
    }

    /// Runs one step through the span and appends to the session's KV cache. Returns the hidden
    /// states `[tokens, hidden]`, or logits `[rows, vocab]` when the span holds `head`.
    pub fn forward(
        &self,
        cache: &mut SpanCache<B>,
        input: SpanInput,
        logits: Logits,
    ) -> Result<Vec<f32>, RunError> {
        let c = &self.config;
        let be = &self.backend;
        let mut x = match (input, &self.embed) {
            (SpanInput::Tokens(ids), Some(table)) => {
                if ids.is_empty() {
                    return Err(RunError::Empty);
                }
                be.embed(table, ids)?
            }
            (SpanInput::Hidden(hs), None) => {
                if hs.is_empty() {
                    return Err(RunError::Empty);
                }
                if hs.len() % c.hidden != 0 {
                    return Err(RunError::HiddenShape {
                        got: hs.len(),
                        width: c.hidden,
                    });
                }
                be.upload(hs, c.hidden)?
            }
            (SpanInput::Tokens(_), None) => return Err(RunError::NeedsHidden),
            (SpanInput::Hidden(_), Some(_)) => return Err(RunError::NeedsTokens),
        };
        let tokens = be.tokens(&x);
        let pos0 = cache.pos;
        if pos0 + tokens > c.context {
            return Err(RunError::ContextFull {
                want: pos0 + tokens,
                max: c.context,
            });
        }
        for (b, kv) in self.blocks.iter().zip(cache.layers.iter_mut()) {
            let xn = be.rmsnorm(&x, &b.attn_norm, c.rms_eps)?;
            let mut qkv = be.linear(&[&b.wq, &b.wk, &b.wv], &xn)?.into_iter();
            let (Some(mut q), Some(mut k), Some(v)) = (qkv.next(), qkv.next(), qkv.next()) else {
                return Err(RunError::Backend("linear returned too few outputs".into()));
            };
            be.rope(&mut q, pos0, c.head_dim, c.rope_theta, c.rope_interleaved)?;
            be.rope(&mut k, pos0, c.head_dim, c.rope_theta, c.rope_interleaved)?;
            let att = be.attention(&q, &k, &v, kv, pos0, c.heads, c.kv_heads, c.head_dim)?;
            let o = be.linear(&[&b.wo], &att)?.remove(0);
            be.add(&mut x, &o)?;
            let xn = be.rmsnorm(&x, &b.ffn_norm, c.rms_eps)?;
            let mut gu = be.linear(&[&b.gate, &b.up], &xn)?.into_iter();
            let (Some(mut g), Some(u)) = (gu.next(), gu.next()) else {
                return Err(RunError::Backend("linear returned too few outputs".into()));
            };
            be.silu_mul(&mut g, &u)?;
            let d = be.linear(&[&b.down], &g)?.remove(0);
            be.add(&mut x, &d)?;
        }
        cache.pos = pos0 + tokens;
        match (&self.norm, self.head.as_ref().or(self.embed.as_ref())) {
            (Some(norm), Some(head)) => {
                let rows = match logits {
                    Logits::Last => 1,
                    Logits::All => tokens,
                };
                let x = be.tail(&x, rows)?;
                let xn = be.rmsnorm(&x, norm, c.rms_eps)?;
                let out = be.linear(&[head], &xn)?.remove(0);
                be.download(&out)
            }
            _ => be.download(&x),
        }
    }
}
