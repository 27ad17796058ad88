//! One span of a decoder-only model's stages, over a [`Backend`]: the embedding when the span
//! starts the model, its blocks (each architecture's, see [`crate::arch`]), and the final norm
//! and head when it ends the model.

use std::sync::RwLock;

use baton_protocol::experts::ExpertShard;
use baton_protocol::Span;

use crate::arch::ModelConfig;
use crate::backend::Backend;
use crate::error::{Error, RunError};
use crate::layers::{Block, ExpertsOnlyBlock, Loader};
use crate::model::ModelFile;
use crate::moe::{MoeMlp, Remote};
use crate::pass::Pass;

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
    /// The routed experts its mixture-of-experts layers hold, when not all of them.
    pub shard: Option<ExpertShard>,
    /// Where the experts it does not hold run; set once the node's network is up.
    remote: RwLock<Remote>,
}

/// The per-session state of a span: each layer's KV cache and the next position.
pub struct SpanCache<B: Backend> {
    layers: Vec<B::Kv>,
    pub pos: usize,
}

impl<B: Backend> SpanCache<B> {
    /// Bytes its layers' caches have allocated.
    pub fn allocated(&self, backend: &B) -> usize {
        self.layers.iter().map(|kv| backend.kv_allocated(kv)).sum()
    }
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
        Self::load_part(model, span, None, backend, progress)
    }

    /// Loads the span holding only `shard`'s routed experts in its mixture-of-experts layers
    /// (all of them for `None`); with `shard.only`, those experts and nothing else.
    pub fn load_part(
        model: &ModelFile,
        span: Span,
        shard: Option<ExpertShard>,
        backend: B,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, Error> {
        let mut c = model.config.clone();
        if let Some(shard) = shard {
            let moe = c
                .moe
                .as_mut()
                .ok_or_else(|| crate::error::LoadError::Config {
                    path: model.path.clone(),
                    what: "experts were asked for, but the model has no mixture-of-experts layers"
                        .into(),
                })?;
            if !shard.is_valid() || shard.of as usize != moe.experts {
                return Err(crate::error::LoadError::Config {
                    path: model.path.clone(),
                    what: format!(
                        "{shard} asked for, but its layers have {} experts",
                        moe.experts
                    ),
                }
                .into());
            }
            moe.shard = Some(shard);
        }
        if shard.is_some_and(|s| s.only) {
            return Self::load_experts_only(model, span, c, backend, progress);
        }
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
            shard,
            remote: RwLock::new(Remote::default()),
        })
    }

    /// The routed experts of the span's mixture-of-experts layers that `c` names, and nothing
    /// else: no embedding, attention, norms, router or head.
    fn load_experts_only(
        model: &ModelFile,
        span: Span,
        c: crate::arch::ModelConfig,
        backend: B,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, Error> {
        span.check(c.layers as u32)
            .map_err(crate::error::LoadError::from)?;
        let total = span.len() as usize;
        let mut blocks: Vec<Box<dyn Block<B>>> = Vec::with_capacity(total);
        for (n, i) in (span.start..span.end).enumerate() {
            let l = Loader::new(model, &c, &backend, i as usize);
            let moe = match &c.moe {
                Some(moe) if moe.is_moe(i as usize) => Some(MoeMlp::load(&l, moe)?),
                _ => None,
            };
            blocks.push(Box::new(ExpertsOnlyBlock(moe)));
            progress(n + 1, total);
        }
        let shard = c.moe.as_ref().and_then(|m| m.shard);
        Ok(DecoderSpan {
            config: c,
            span,
            backend,
            embed: None,
            blocks,
            norm: None,
            head: None,
            shard,
            remote: RwLock::new(Remote::default()),
        })
    }

    /// Whether the span holds routed experts and nothing else.
    pub fn experts_only(&self) -> bool {
        self.shard.is_some_and(|s| s.only)
    }

    /// Sends the rows of experts the span does not hold to `remote` from now on.
    pub fn set_remote(&self, remote: Remote) {
        match self.remote.write() {
            Ok(mut r) => *r = remote,
            Err(poisoned) => *poisoned.into_inner() = remote,
        }
    }

    fn remote(&self) -> Remote {
        match self.remote.read() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Runs routed experts of block `block` (of the model) that the span holds over rows sent
    /// by a peer: `(expert, rows, decode rows)`; each expert's output rows, unweighted.
    pub fn run_experts(
        &self,
        block: usize,
        calls: &[(usize, Vec<f32>, usize)],
    ) -> Result<Vec<Vec<f32>>, RunError> {
        let moe = block
            .checked_sub(self.span.start as usize)
            .and_then(|i| self.blocks.get(i))
            .and_then(|b| b.moe())
            .ok_or_else(|| {
                RunError::Experts(format!(
                    "block {block} is not a mixture-of-experts layer of span {}",
                    self.span
                ))
            })?;
        if let Some((e, _, _)) = calls.iter().find(|(e, _, _)| !moe.holds(*e)) {
            return Err(RunError::Experts(format!(
                "this node does not hold expert {e} of block {block}"
            )));
        }
        moe.run_call(&self.backend, calls)
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
                self.backend.kv_cache(c.kv_layout(), c.context, window)
            })
            .collect::<Result<_, _>>()?;
        Ok(SpanCache { layers, pos: 0 })
    }

    /// A new cache holding a copy of the first `tokens` positions of `cache`; refused where a
    /// layer no longer holds all of them (a sliding-window layer that dropped some).
    pub fn fork(&self, cache: &SpanCache<B>, tokens: usize) -> Result<SpanCache<B>, RunError> {
        let layers = cache
            .layers
            .iter()
            .map(|kv| self.backend.kv_fork(kv, tokens))
            .collect::<Result<_, _>>()?;
        Ok(SpanCache {
            layers,
            pos: tokens,
        })
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
        let mut out = self.forward_batch(&mut [cache], &[input], logits)?;
        out.pop().ok_or(RunError::Empty)
    }

    /// Runs one step of each session as one pass (see [`Pass`]): step `i` of `inputs` with
    /// `caches[i]`, each output as [`DecoderSpan::forward`] gives it and the same as that step
    /// alone would give. On an error, caches may hold part of the pass: the caller truncates.
    pub fn forward_batch(
        &self,
        caches: &mut [&mut SpanCache<B>],
        inputs: &[SpanInput],
        logits: Logits,
    ) -> Result<Vec<Vec<f32>>, RunError> {
        let c = &self.config;
        let be = &self.backend;
        if caches.len() != inputs.len() {
            return Err(RunError::Backend(format!(
                "{} caches for {} steps",
                caches.len(),
                inputs.len()
            )));
        }
        let lens = inputs
            .iter()
            .map(|input| self.input_tokens(input))
            .collect::<Result<Vec<_>, _>>()?;
        for (len, cache) in lens.iter().zip(caches.iter()) {
            if cache.pos + len > c.context {
                return Err(RunError::ContextFull {
                    want: cache.pos + len,
                    max: c.context,
                });
            }
        }
        let order = crate::pass::order(&lens);
        let pass =
            Pass::new(order.iter().map(|&i| (lens[i], caches[i].pos)))?.with_remote(self.remote());
        let mut x = match &self.embed {
            Some(table) => {
                let ids: Vec<u32> = order
                    .iter()
                    .flat_map(|&i| match inputs[i] {
                        SpanInput::Tokens(ids) => ids,
                        SpanInput::Hidden(_) => &[],
                    })
                    .copied()
                    .collect();
                let mut x = be.embed(table, &ids)?;
                if let Some(s) = c.embed_scale() {
                    be.scale(&mut x, s)?;
                }
                x
            }
            None => {
                let hs: Vec<f32> = order
                    .iter()
                    .flat_map(|&i| match inputs[i] {
                        SpanInput::Hidden(h) => h,
                        SpanInput::Tokens(_) => &[],
                    })
                    .copied()
                    .collect();
                be.upload(&hs, c.hidden)?
            }
        };
        for (layer, b) in self.blocks.iter().enumerate() {
            let mut kvs = Vec::with_capacity(order.len());
            let mut slots: Vec<Option<&mut B::Kv>> = caches
                .iter_mut()
                .map(|cache| cache.layers.get_mut(layer))
                .collect();
            for &i in &order {
                let kv = slots[i]
                    .take()
                    .ok_or_else(|| RunError::Backend(format!("a cache without layer {layer}")))?;
                kvs.push(kv);
            }
            b.forward(be, &mut x, &mut kvs, &pass)?;
        }
        for (len, cache) in lens.iter().zip(caches.iter_mut()) {
            cache.pos += len;
        }
        // Rows out of the pass, per segment in pass order.
        let (y, rows): (B::Act, Vec<usize>) =
            match (&self.norm, self.head.as_ref().or(self.embed.as_ref())) {
                (Some(norm), Some(head)) => {
                    let (x, rows, decode) = match logits {
                        Logits::Last => {
                            let last = pass
                                .segments()
                                .iter()
                                .map(|s| be.rows(&x, s.start + s.len - 1, 1))
                                .collect::<Result<Vec<_>, _>>()?;
                            let n = last.len();
                            (be.concat(&last)?, vec![1; n], n)
                        }
                        Logits::All => {
                            let rows = pass.segments().iter().map(|s| s.len).collect();
                            (x, rows, pass.decode_rows())
                        }
                    };
                    let xn = be.rmsnorm(&x, norm, c.rms_eps)?;
                    (be.linear(&[head], &xn, decode)?.remove(0), rows)
                }
                _ => (x, pass.segments().iter().map(|s| s.len).collect()),
            };
        let y = be.download(&y)?;
        let width = y.len() / rows.iter().sum::<usize>().max(1);
        let mut outs = vec![Vec::new(); order.len()];
        let mut at = 0;
        for (&i, n) in order.iter().zip(rows) {
            outs[i] = y[at * width..(at + n) * width].to_vec();
            at += n;
        }
        Ok(outs)
    }

    /// The tokens of a step, checked against what the span takes.
    fn input_tokens(&self, input: &SpanInput) -> Result<usize, RunError> {
        let c = &self.config;
        let n = match (input, &self.embed) {
            (SpanInput::Tokens(ids), Some(_)) => ids.len(),
            (SpanInput::Hidden(hs), None) => {
                if hs.len() % c.hidden != 0 {
                    return Err(RunError::HiddenShape {
                        got: hs.len(),
                        width: c.hidden,
                    });
                }
                hs.len() / c.hidden
            }
            (SpanInput::Tokens(_), None) => return Err(RunError::NeedsHidden),
            (SpanInput::Hidden(_), Some(_)) => return Err(RunError::NeedsTokens),
        };
        if n == 0 {
            return Err(RunError::Empty);
        }
        Ok(n)
    }
}
