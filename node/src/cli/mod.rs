//! The subcommands of `baton-node` and what they share.

pub mod bench;
pub mod eval;
pub mod info;
pub mod inspect;
pub mod join;

use std::path::{Path, PathBuf};

use baton_node::{BackendChoice, Engine, EngineOptions, KvDtype, ModelFile};
use baton_protocol::Span;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

/// How to load a model: shared by every command that runs one.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// A GGUF file or a Hugging Face folder (config.json, *.safetensors, tokenizer.json).
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// Where to compute: `auto` picks a real GPU when there is one, the CPU otherwise.
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendChoice,
    /// CPU threads (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// How a GPU keeps the KV cache (the CPU keeps f32).
    #[arg(long, value_enum, default_value = "f16")]
    pub kv_dtype: KvDtype,
}

impl ModelArgs {
    pub fn open(&self) -> anyhow::Result<ModelFile> {
        set_threads(self.threads)?;
        Ok(ModelFile::open(&self.model)?)
    }

    pub fn load(&self, model: &ModelFile) -> anyhow::Result<Engine> {
        let options = EngineOptions {
            backend: self.backend,
            kv_dtype: self.kv_dtype,
            ..Default::default()
        };
        let span = Span::full(model.config.layers as u32);
        load_span(model, span, options, &self.model)
    }
}

pub fn set_threads(threads: Option<usize>) -> anyhow::Result<()> {
    if let Some(n) = threads {
        baton_node::set_threads(n)?;
    }
    Ok(())
}

/// The bar shown while a model's tensors load (hidden when stderr is not a terminal).
pub fn progress_bar(path: &Path) -> ProgressBar {
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} tensors")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(format!("loading {}", path.display()));
    bar
}

pub fn load_span(
    model: &ModelFile,
    span: Span,
    options: EngineOptions,
    path: &Path,
) -> anyhow::Result<Engine> {
    let bar = progress_bar(path);
    let engine = Engine::load(model, span, options, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    });
    bar.finish_and_clear();
    Ok(engine?)
}
