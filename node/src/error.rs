//! The errors of loading and running a model. Every message names the file or tensor at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a GGUF file (bad magic)")]
    NotGguf { path: PathBuf },
    #[error("{path}: GGUF version {version} is not supported (expected 2 or 3)")]
    GgufVersion { path: PathBuf, version: u32 },
    #[error("{path}: truncated or corrupt: {what}")]
    Corrupt { path: PathBuf, what: String },
    #[error(
        "{path}: architecture `{arch}` is not supported (supported: {})",
        crate::arch::SUPPORTED
    )]
    Architecture { path: PathBuf, arch: String },
    #[error("{path}: tensor `{tensor}` has type {kind}, which is not supported (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS)")]
    QuantType {
        path: PathBuf,
        tensor: String,
        kind: String,
    },
    #[error("{path}: tensor `{tensor}` is not one a {arch} model reads; Baton refuses to skip it")]
    UnusedTensor {
        path: PathBuf,
        tensor: String,
        arch: &'static str,
    },
    #[error("{path}: missing metadata `{key}`")]
    MissingKey { path: PathBuf, key: String },
    #[error("{path}: missing tensor `{tensor}`")]
    MissingTensor { path: PathBuf, tensor: String },
    #[error("{path}: tensor `{tensor}` has shape {got:?}, the config implies {want:?}")]
    Shape {
        path: PathBuf,
        tensor: String,
        got: Vec<usize>,
        want: Vec<usize>,
    },
    #[error("{path}: tensor `{tensor}` lies outside the file (the file is truncated)")]
    OutOfBounds { path: PathBuf, tensor: String },
    #[error("{path}: {what}")]
    Config { path: PathBuf, what: String },
    #[error("{path}: tokenizer: {what}")]
    Tokenizer { path: PathBuf, what: String },
    #[error(transparent)]
    Span(#[from] baton_protocol::SpanError),
    #[error("tensor: {0}")]
    Tensor(#[from] baton_shaders::QuantError),
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the span does not hold `embed`: it takes hidden states, not token ids")]
    NeedsHidden,
    #[error("the span holds `embed`: it takes token ids, not hidden states")]
    NeedsTokens,
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    TokenId { id: u32, vocab: usize },
    #[error("hidden states have {got} values, expected a multiple of {width}")]
    HiddenShape { got: usize, width: usize },
    #[error("the context would reach {want} tokens, more than the model's {max}")]
    ContextFull { want: usize, max: usize },
    #[error("an empty step: no tokens")]
    Empty,
    #[error(
        "cannot go back to position {pos}: a sliding-window layer no longer holds what it saw \
         (it holds positions from {held} on)"
    )]
    RewindTooFar { pos: usize, held: usize },
    #[error("gpu: {0}")]
    Gpu(#[from] baton_shaders::gpu::GpuError),
    #[error("tensor: {0}")]
    Tensor(#[from] baton_shaders::QuantError),
    #[error("{0}")]
    Backend(String),
    #[error("expert peers: {0}")]
    Experts(String),
    #[error(
        "this build has no {0} backend; use --backend wgpu (any Vulkan, Metal or DX12 GPU) or cpu"
    )]
    NotCompiled(&'static str),
}

/// Either kind of failure, for calls that load and then run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Run(#[from] RunError),
}
