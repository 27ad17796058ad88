//! baton-node: the model runtime and the node.
//!
//! - [`model`]: a GGUF file or Hugging Face folder, memory-mapped ([`gguf`] parses the former).
//! - [`llama`]: the architecture, one span of stages at a time, over a [`backend::Backend`].
//! - [`runtime`]: a span on the backend the user chose, with per-session KV caches.
//! - [`tokenizer`]: text to ids and the chat template.

pub mod backend;
pub mod config;
pub mod error;
pub mod gguf;
pub mod llama;
pub mod model;
pub mod runtime;
pub mod sampling;
pub mod tokenizer;

pub use config::LlamaConfig;
pub use error::{Error, LoadError, RunError};
pub use llama::{Logits, SpanInput};
pub use model::ModelFile;
pub use runtime::{BackendChoice, Cache, Engine};
