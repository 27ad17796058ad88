//! baton-node: the model runtime and the node.
//!
//! - [`model`]: a GGUF file or Hugging Face folder, memory-mapped ([`gguf`] parses the former).
//! - [`arch`]: the architectures, one file each, and their configs ([`ModelConfig`]).
//! - [`span`]: one span of stages of any of them, over a [`backend::Backend`].
//! - [`runtime`]: a span on the backend the user chose, with per-session KV caches.
//! - [`tokenizer`]: text to ids and the chat template.

// Bytes from peers and files never panic this crate: no unwrap or expect outside tests.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod arch;
pub mod backend;
pub mod blob;
pub mod dht;
pub mod dispatch;
pub mod error;
pub mod fp8;
pub mod fuzzing;
pub mod gguf;
pub mod inspect;
pub mod join;
pub mod layers;
pub mod metrics;
pub mod mla;
pub mod model;
pub mod moe;
pub mod net;
pub mod pass;
pub mod prefix;
pub mod runtime;
pub mod sampling;
pub mod server;
pub mod span;
pub mod system;
pub mod tokenizer;

pub use arch::ModelConfig;
pub use error::{Error, LoadError, RunError};
pub use model::ModelFile;
pub use runtime::{BackendChoice, Cache, Engine, EngineOptions, KvDtype};
pub use span::{Logits, SpanInput};

/// Sizes the CPU backend's thread pool. Call it once, before the first model runs.
pub fn set_threads(n: usize) -> Result<(), RunError> {
    if n == 0 {
        return Err(RunError::Backend(
            "the thread count must be at least 1".into(),
        ));
    }
    baton_shaders::cpu::set_threads(n);
    Ok(())
}

/// Mesa's Vulkan drivers print an error when `XDG_RUNTIME_DIR` is unset, though compute needs no
/// display. Binaries call this first thing, while they are still single-threaded.
pub fn quiet_gpu_probe() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
}
