//! A span loaded on the backend the user chose, behind one type, and its sessions' caches.

use baton_protocol::Span;

use crate::backend::cpu::CpuBackend;
use crate::error::{Error, RunError};
use crate::llama::{LlamaSpan, Logits, SpanCache, SpanInput};
use crate::model::ModelFile;

/// `--backend`: `auto` takes a real GPU when there is one, the CPU otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    Auto,
    Cpu,
    Wgpu,
}

/// Tokens per prefill chunk: long prompts run in pieces so that activations stay small.
pub const PREFILL_CHUNK: usize = 256;

pub enum Engine {
    Cpu(LlamaSpan<CpuBackend>),
}

pub enum Cache {
    Cpu(SpanCache<CpuBackend>),
}

impl Engine {
    pub fn load(
        model: &ModelFile,
        span: Span,
        choice: BackendChoice,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, Error> {
        match choice {
            BackendChoice::Auto | BackendChoice::Cpu => Ok(Engine::Cpu(LlamaSpan::load(
                model, span, CpuBackend, progress,
            )?)),
            BackendChoice::Wgpu => Err(RunError::Backend("wgpu is not available".into()).into()),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Engine::Cpu(s) => crate::backend::Backend::describe(&s.backend),
        }
    }

    pub fn span(&self) -> Span {
        match self {
            Engine::Cpu(s) => s.span,
        }
    }

    pub fn new_cache(&self) -> Result<Cache, RunError> {
        match self {
            Engine::Cpu(s) => Ok(Cache::Cpu(s.new_cache()?)),
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
        }
    }

    /// Runs `ids` in chunks of [`PREFILL_CHUNK`], handing each chunk's output to `each`.
    pub fn run_chunked(
        &self,
        cache: &mut Cache,
        ids: &[u32],
        logits: Logits,
        each: &mut dyn FnMut(&[f32]),
    ) -> Result<(), RunError> {
        for chunk in ids.chunks(PREFILL_CHUNK) {
            let out = self.forward(cache, SpanInput::Tokens(chunk), logits)?;
            each(&out);
        }
        Ok(())
    }
}

impl Cache {
    pub fn pos(&self) -> usize {
        match self {
            Cache::Cpu(c) => c.pos,
        }
    }
}
