//! A span loaded on the backend the user chose, behind one type, and its sessions' caches.

use std::sync::Arc;

use baton_protocol::experts::ExpertShard;
use baton_protocol::Span;

use crate::backend::cpu::CpuBackend;
use crate::backend::gpu::GpuBackend;
use crate::backend::kv::KvPositions;
use crate::error::{Error, RunError};
use crate::model::ModelFile;
use crate::span::{DecoderSpan, Logits, SpanCache, SpanInput};
use baton_shaders::gpu::{Gpu, GpuOptions, KvFormat};

/// `--backend`: `auto` takes a real GPU when there is one, the CPU otherwise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    #[default]
    Auto,
    Cpu,
    Wgpu,
    /// NVIDIA GPUs through CUDA: not in this build yet.
    Cuda,
}

/// `--kv-dtype`: how a GPU keeps the KV cache. The CPU keeps f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum KvDtype {
    /// Half the memory and bandwidth; logits move by about 0.01.
    #[default]
    F16,
    /// Full precision, as the CPU keeps it.
    F32,
}

/// How to run a span.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineOptions {
    pub backend: BackendChoice,
    pub kv_dtype: KvDtype,
    /// Only these routed experts of each mixture-of-experts layer (all when `None`).
    pub experts: Option<ExpertShard>,
}

impl From<BackendChoice> for EngineOptions {
    fn from(backend: BackendChoice) -> Self {
        EngineOptions {
            backend,
            ..Default::default()
        }
    }
}

/// Tokens per prefill chunk: long prompts run in pieces so that activations stay small.
pub const PREFILL_CHUNK: usize = 256;

/// A span loaded on one backend.
pub enum Engine {
    Cpu(Arc<DecoderSpan<CpuBackend>>),
    Gpu(Arc<DecoderSpan<GpuBackend>>),
}

/// One session on one engine: the span it runs on together with the session's KV caches,
/// built by [`Engine::new_cache`], so that a cache never meets another backend's span. Steps
/// run through it.
pub enum Cache {
    Cpu(Arc<DecoderSpan<CpuBackend>>, SpanCache<CpuBackend>),
    Gpu(Arc<DecoderSpan<GpuBackend>>, SpanCache<GpuBackend>),
}

/// Calls the same method on whichever span an engine holds.
macro_rules! each {
    ($engine:expr, $s:ident => $body:expr) => {
        match $engine {
            Engine::Cpu($s) => $body,
            Engine::Gpu($s) => $body,
        }
    };
}

/// The same for a cache: its span `$s` and its KV caches `$c`.
macro_rules! each_cache {
    ($cache:expr, $s:ident, $c:ident => $body:expr) => {
        match $cache {
            Cache::Cpu($s, $c) => $body,
            Cache::Gpu($s, $c) => $body,
        }
    };
}

impl Engine {
    pub fn load(
        model: &ModelFile,
        span: Span,
        options: EngineOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, Error> {
        let gpu = match options.backend {
            BackendChoice::Cpu => None,
            BackendChoice::Cuda => return Err(RunError::NotCompiled("cuda").into()),
            // `auto` never settles for a software adapter.
            BackendChoice::Auto => Gpu::new(&GpuOptions::default()).ok(),
            BackendChoice::Wgpu => Some(
                Gpu::new(&GpuOptions {
                    allow_software: true,
                    ..Default::default()
                })
                .map_err(RunError::from)?,
            ),
        };
        Ok(match gpu {
            None => Engine::Cpu(Arc::new(DecoderSpan::load_part(
                model,
                span,
                options.experts,
                CpuBackend,
                progress,
            )?)),
            Some(gpu) => {
                let kv_format = match options.kv_dtype {
                    KvDtype::F16 => KvFormat::F16,
                    KvDtype::F32 => KvFormat::F32,
                };
                let backend = GpuBackend { gpu, kv_format };
                Engine::Gpu(Arc::new(DecoderSpan::load_part(
                    model,
                    span,
                    options.experts,
                    backend,
                    progress,
                )?))
            }
        })
    }

    pub fn describe(&self) -> String {
        each!(self, s => crate::backend::Backend::describe(&s.backend))
    }

    /// The model's context length in tokens.
    pub fn context(&self) -> usize {
        each!(self, s => s.config.context)
    }

    /// The length of a row of logits.
    pub fn vocab(&self) -> usize {
        each!(self, s => s.config.vocab)
    }

    pub fn span(&self) -> Span {
        each!(self, s => s.span)
    }

    /// A new session's cache on this span.
    pub fn new_cache(&self) -> Result<Cache, RunError> {
        Ok(match self {
            Engine::Cpu(s) => Cache::Cpu(s.clone(), s.new_cache()?),
            Engine::Gpu(s) => Cache::Gpu(s.clone(), s.new_cache()?),
        })
    }

    pub fn has_embed(&self) -> bool {
        each!(self, s => s.has_embed())
    }

    pub fn has_head(&self) -> bool {
        each!(self, s => s.has_head())
    }

    /// The width of the hidden states.
    pub fn hidden(&self) -> usize {
        each!(self, s => s.config.hidden)
    }

    /// Bytes of KV cache one position takes in all the span's layers: keys and values (MLA:
    /// the latent row alone), in f32 on the CPU and in the cache's format on a GPU.
    /// The routed experts its mixture-of-experts layers hold, when not all of them.
    pub fn shard(&self) -> Option<ExpertShard> {
        each!(self, s => s.shard)
    }

    /// Whether the engine holds routed experts only: it answers expert calls, and opens no
    /// sessions.
    pub fn experts_only(&self) -> bool {
        each!(self, s => s.experts_only())
    }

    /// Sends the rows of experts the span does not hold to `remote` from now on.
    pub fn set_remote(&self, remote: crate::moe::Remote) {
        each!(self, s => s.set_remote(remote))
    }

    /// Multiply-adds one routed expert takes per token (0 for a dense model).
    pub fn expert_row_macs(&self) -> usize {
        each!(self, s => s.config.moe.as_ref().map_or(0, |m| 3 * m.ffn * s.config.hidden))
    }

    /// See [`DecoderSpan::run_experts`].
    pub fn run_experts(
        &self,
        block: usize,
        calls: &[(usize, Vec<f32>, usize)],
    ) -> Result<Vec<Vec<f32>>, RunError> {
        each!(self, s => s.run_experts(block, calls))
    }

    pub fn kv_bytes_per_token(&self) -> usize {
        if self.experts_only() {
            return 0;
        }
        let (blocks, layout) = each!(self, s => (s.span.len(), s.config.kv_layout()));
        blocks as usize * layout.per_position() * self.kv_value_bytes()
    }

    fn kv_value_bytes(&self) -> usize {
        match self {
            Engine::Cpu(_) => 4,
            Engine::Gpu(s) => match s.backend.kv_format {
                baton_shaders::gpu::KvFormat::F32 => 4,
                baton_shaders::gpu::KvFormat::F16 => 2,
            },
        }
    }

    /// Bytes of KV cache a session of `tokens` positions takes on this span at most: a
    /// sliding-window layer holds a bounded number of positions however long the session.
    pub fn kv_bytes(&self, tokens: usize) -> u64 {
        let (config, span) = each!(self, s => (&s.config, s.span));
        let per_position = config.kv_layout().per_position() * self.kv_value_bytes();
        (span.start..span.end)
            .map(|layer| {
                let window = config.window(layer as usize);
                let held = KvPositions::most_held(window, PREFILL_CHUNK).unwrap_or(tokens);
                (tokens.min(held) * per_position) as u64
            })
            .sum()
    }

    /// What admission counts for a session of `tokens` positions: its KV bytes, in positions
    /// of every layer of the span ([`Engine::kv_bytes_per_token`]).
    pub fn kv_cost(&self, tokens: usize) -> usize {
        let per = self.kv_bytes_per_token().max(1) as u64;
        self.kv_bytes(tokens).div_ceil(per) as usize
    }

    /// The longest session, up to the context, whose [`Engine::kv_cost`] is at most `cost`.
    pub fn tokens_within(&self, cost: usize) -> usize {
        let (mut lo, mut hi) = (0, self.context());
        if self.kv_cost(hi) <= cost {
            return hi;
        }
        // kv_cost(lo) <= cost < kv_cost(hi); the cost never falls as tokens grow.
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.kv_cost(mid) <= cost {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

impl Cache {
    pub fn pos(&self) -> usize {
        each_cache!(self, _s, c => c.pos)
    }

    fn context(&self) -> usize {
        each_cache!(self, s, _c => s.config.context)
    }

    fn hidden(&self) -> usize {
        each_cache!(self, s, _c => s.config.hidden)
    }

    fn has_head(&self) -> bool {
        each_cache!(self, s, _c => s.has_head())
    }

    /// Bytes of KV cache the session's layers have allocated.
    pub fn kv_allocated(&self) -> usize {
        each_cache!(self, s, c => c.allocated(&s.backend))
    }

    /// Forgets every position from `pos` on (see [`DecoderSpan::truncate`]).
    pub fn truncate(&mut self, pos: usize) -> Result<(), RunError> {
        each_cache!(self, s, c => s.truncate(c, pos))
    }

    /// A new cache on the same span holding a copy of this one's first `tokens` positions
    /// (see [`DecoderSpan::fork`]).
    pub fn fork(&self, tokens: usize) -> Result<Cache, RunError> {
        Ok(match self {
            Cache::Cpu(s, c) => Cache::Cpu(s.clone(), s.fork(c, tokens)?),
            Cache::Gpu(s, c) => Cache::Gpu(s.clone(), s.fork(c, tokens)?),
        })
    }

    /// One step through the span (see [`DecoderSpan::forward`]).
    pub fn forward(&mut self, input: SpanInput, logits: Logits) -> Result<Vec<f32>, RunError> {
        each_cache!(self, s, c => s.forward(c, input, logits))
    }

    /// Whether two caches belong to the same loaded span, so that their steps can share a pass.
    pub fn same_span(&self, other: &Cache) -> bool {
        match (self, other) {
            (Cache::Cpu(a, _), Cache::Cpu(b, _)) => Arc::ptr_eq(a, b),
            (Cache::Gpu(a, _), Cache::Gpu(b, _)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// The tokens of a step, or an error for input the span does not take.
    pub fn step_tokens(&self, input: &SpanInput) -> Result<usize, RunError> {
        match input {
            SpanInput::Tokens(ids) => Ok(ids.len()),
            SpanInput::Hidden(h) => {
                let width = self.hidden().max(1);
                if h.len() % width != 0 {
                    return Err(RunError::HiddenShape {
                        got: h.len(),
                        width,
                    });
                }
                Ok(h.len() / width)
            }
        }
    }

    /// Refuses a step of `tokens` that would not fit the context, before any of it runs.
    pub fn check_room(&self, tokens: usize) -> Result<(), RunError> {
        if self.pos() + tokens > self.context() {
            return Err(RunError::ContextFull {
                want: self.pos() + tokens,
                max: self.context(),
            });
        }
        Ok(())
    }

    /// One pass over a step of each session (see [`DecoderSpan::forward_batch`]); the caches
    /// must belong to one span ([`Cache::same_span`]). On an error, caches may hold part of the
    /// pass: the caller truncates them.
    pub fn forward_pass(
        caches: &mut [&mut Cache],
        inputs: &[SpanInput],
        logits: Logits,
    ) -> Result<Vec<Vec<f32>>, RunError> {
        macro_rules! pass {
            ($variant:ident, $span:expr) => {{
                let span = $span.clone();
                let mut cs = Vec::with_capacity(caches.len());
                for cache in caches.iter_mut() {
                    match &mut **cache {
                        Cache::$variant(s, c) if Arc::ptr_eq(s, &span) => cs.push(c),
                        _ => return Err(RunError::Backend("a pass over two spans".into())),
                    }
                }
                span.forward_batch(&mut cs, inputs, logits)
            }};
        }
        match caches.first() {
            None => Ok(Vec::new()),
            Some(first) => match &**first {
                Cache::Cpu(span, _) => pass!(Cpu, span),
                Cache::Gpu(span, _) => pass!(Gpu, span),
            },
        }
    }

    /// Runs `input` in chunks of [`PREFILL_CHUNK`], handing each chunk's output to `each`. On
    /// an error the cache is rolled back to where the step began.
    pub fn run_chunked(
        &mut self,
        input: SpanInput,
        logits: Logits,
        each: &mut dyn FnMut(&[f32]),
    ) -> Result<(), RunError> {
        // Refuse a step that cannot fit before any chunk of it touches the cache.
        let tokens = match input {
            SpanInput::Tokens(ids) => ids.len(),
            SpanInput::Hidden(h) => h.len() / self.hidden().max(1),
        };
        if self.pos() + tokens > self.context() {
            return Err(RunError::ContextFull {
                want: self.pos() + tokens,
                max: self.context(),
            });
        }
        let start = self.pos();
        let run = match input {
            SpanInput::Tokens(ids) => ids.chunks(PREFILL_CHUNK).try_for_each(|chunk| {
                each(&self.forward(SpanInput::Tokens(chunk), logits)?);
                Ok(())
            }),
            SpanInput::Hidden(h) => {
                let width = PREFILL_CHUNK * self.hidden();
                h.chunks(width).try_for_each(|chunk| {
                    each(&self.forward(SpanInput::Hidden(chunk), logits)?);
                    Ok(())
                })
            }
        };
        // A step that fails partway leaves the cache as it was before it.
        if let Err(e) = run {
            if let Err(back) = self.truncate(start) {
                return Err(RunError::Backend(format!(
                    "{e}; and the session's KV cache could not be rolled back: {back}"
                )));
            }
            return Err(e);
        }
        Ok(())
    }

    /// One step of any length, run in chunks as [`Cache::run_chunked`] does: the hidden states
    /// of every token, or the logits of the last (`Logits::Last`) or of all.
    pub fn run_step(&mut self, input: SpanInput, logits: Logits) -> Result<Vec<f32>, RunError> {
        let keep_last = logits == Logits::Last && self.has_head();
        let mut out = Vec::new();
        self.run_chunked(input, logits, &mut |o| {
            if keep_last {
                out.clear();
            }
            out.extend_from_slice(o);
        })?;
        Ok(out)
    }
}
