//! One span of a decoder-only model's stages, over a [`Backend`]: the embedding when the span
//! starts the model, its blocks (each architecture's, see [`crate::arch`]), and the final norm
//! and head when it ends the model.

use baton_protocol::Span;

use crate::arch::ModelConfig;
use crate::backend::Backend;
use crate::error::{Error, RunError};
use crate::layers::Block;
use crate::model::ModelFile;

/// The weights of one span, resident on its backend.
pub struct DecoderSpan<B: Backend> {
    pub config: ModelConfig,
    pub span: Span,
    pub backend: B,
    embed: Option<B::Weight>,
    blocks: Vec<Box<dyn Block<B>>>,
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

impl<B: Backend + 'static> DecoderSpan<B> {
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
        let h = c.hidden;
        let total = span.len() as usize + 3;
        let mut done = 0;
        let mut step = |n: usize| {
            done += n;
            progress(done, total);
        };
        let weight = |name: &str, shape: &[usize]| -> Result<B::Weight, Error> {
            Ok(backend.weight(model.tensor(name, shape)?)?)
        };
        let embed = if span.has_embed() {
            Some(weight("token_embd.weight", &[h, c.vocab])?)
        } else {
            None
        };
        step(1);
        let mut blocks = Vec::with_capacity(span.len() as usize);
        for i in span.start..span.end {
            blocks.push(c.load_block(model, i as usize, &backend)?);
            step(1);
        }
        let (norm, head) = if span.has_head(c.layers as u32) {
            let norm = Some(backend.vector(&model.norm_weight("output_norm.weight", h)?)?);
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
        Ok(DecoderSpan {
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
        let c = &self.config;
        let layers = (self.span.start..self.span.end)
            .map(|layer| {
                let window = c.window(layer as usize);
                self.backend.kv_cache(c.kv_width(), c.context, window)
            })
            .collect::<Result<_, _>>()?;
        Ok(SpanCache { layers, pos: 0 })
    }

    /// Forgets every position of the cache from `pos` on. Refused, with nothing changed, where
    /// a sliding-window layer no longer holds what a query at `pos` sees.
    pub fn truncate(&self, cache: &mut SpanCache<B>, pos: usize) -> Result<(), RunError> {
        if pos < cache.pos {
            // Window layers refuse before anything moves; the others always can.
            let mut order: Vec<usize> = (0..cache.layers.len()).collect();
            order.sort_by_key(|&i| self.config.window(self.span.start as usize + i) == 0);
            for i in order {
                self.backend.kv_truncate(&mut cache.layers[i], pos)?;
            }
            cache.pos = pos;
        }
        Ok(())
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
                let mut x = be.embed(table, ids)?;
                if let Some(s) = c.embed_scale() {
                    be.scale(&mut x, s)?;
                }
                x
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
            b.forward(be, &mut x, kv, pos0)?;
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
