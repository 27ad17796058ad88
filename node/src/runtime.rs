//! A span loaded on the backend the user chose, behind one type, and its sessions' caches.

use baton_protocol::Span;

use crate::backend::cpu::CpuBackend;
use crate::backend::gpu::GpuBackend;
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

pub enum Engine {
    Cpu(DecoderSpan<CpuBackend>),
    Gpu(DecoderSpan<GpuBackend>),
}

pub enum Cache {
    Cpu(SpanCache<CpuBackend>),
    Gpu(SpanCache<GpuBackend>),
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
            None => Engine::Cpu(DecoderSpan::load(model, span, CpuBackend, progress)?),
            Some(gpu) => {
                let kv_format = match options.kv_dtype {
                    KvDtype::F16 => KvFormat::F16,
                    KvDtype::F32 => KvFormat::F32,
                };
                let backend = GpuBackend { gpu, kv_format };
                Engine::Gpu(DecoderSpan::load(model, span, backend, progress)?)
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

    pub fn new_cache(&self) -> Result<Cache, RunError> {
        Ok(match self {
            Engine::Cpu(s) => Cache::Cpu(s.new_cache()?),
            Engine::Gpu(s) => Cache::Gpu(s.new_cache()?),
        })
    }

    /// Forgets every position of `cache` from `pos` on.
    pub fn truncate(&self, cache: &mut Cache, pos: usize) {
        match (self, cache) {
            (Engine::Cpu(s), Cache::Cpu(c)) => s.truncate(c, pos),
            (Engine::Gpu(s), Cache::Gpu(c)) => s.truncate(c, pos),
            _ => {}
        }
    }

    pub fn forward(
        &self,
        cache: &mut Cache,
        input: SpanInput,
        logits: Logits,
    ) -> Result<Vec<f32>, RunError> {
        match (self, cache) {
            (Engine::Cpu(s), Cache::Cpu(c)) => s.forward(c, input, logits),
            (Engine::Gpu(s), Cache::Gpu(c)) => s.forward(c, input, logits),
            _ => Err(RunError::Backend(
                "a session's cache belongs to another backend".into(),
            )),
        }
    }

    /// Runs `ids` in chunks of [`PREFILL_CHUNK`], handing each chunk's output to `each`.
    pub fn run_chunked(
        &self,
        cache: &mut Cache,
        input: SpanInput,
        logits: Logits,
        each: &mut dyn FnMut(&[f32]),
    ) -> Result<(), RunError> {
        // Refuse a step that cannot fit before any chunk of it touches the cache.
        let tokens = match input {
            SpanInput::Tokens(ids) => ids.len(),
            SpanInput::Hidden(h) => h.len() / self.hidden().max(1),
        };
        if cache.pos() + tokens > self.context() {
            return Err(RunError::ContextFull {
                want: cache.pos() + tokens,
                max: self.context(),
            });
        }
        match input {
            SpanInput::Tokens(ids) => {
                for chunk in ids.chunks(PREFILL_CHUNK) {
                    each(&self.forward(cache, SpanInput::Tokens(chunk), logits)?);
                }
            }
            SpanInput::Hidden(h) => {
                for chunk in h.chunks(PREFILL_CHUNK * self.hidden()) {
                    each(&self.forward(cache, SpanInput::Hidden(chunk), logits)?);
                }
            }
        }
        Ok(())
    }

    /// One step of any length, run in chunks as [`Engine::run_chunked`] does: the hidden states
    /// of every token, or the logits of the last (`Logits::Last`) or of all.
    pub fn run_step(
        &self,
        cache: &mut Cache,
        input: SpanInput,
        logits: Logits,
    ) -> Result<Vec<f32>, RunError> {
        let keep_last = logits == Logits::Last && self.has_head();
        let mut out = Vec::new();
        self.run_chunked(cache, input, logits, &mut |o| {
            if keep_last {
                out.clear();
            }
            out.extend_from_slice(o);
        })?;
        Ok(out)
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

    /// Bytes of KV cache one token of a session takes on this span: keys and values of every
    /// block, in f32 on the CPU and in the cache's format on a GPU.
    pub fn kv_bytes_per_token(&self) -> usize {
        let per_value = match self {
            Engine::Cpu(_) => 4,
            Engine::Gpu(s) => match s.backend.kv_format {
                baton_shaders::gpu::KvFormat::F32 => 4,
                baton_shaders::gpu::KvFormat::F16 => 2,
            },
        };
        let (blocks, width) = each!(self, s => (s.span.len(), s.config.kv_width()));
        2 * blocks as usize * width * per_value
    }
}

impl Cache {
    pub fn pos(&self) -> usize {
        match self {
            Cache::Cpu(c) => c.pos,
            Cache::Gpu(c) => c.pos,
        }
    }
}
