//! What the fuzzers feed bytes to, in one place, so that `cargo fuzz` and the tests that replay
//! the fuzzers' corpora exercise the same code. Each function must return, never panic,
//! whatever the bytes.

use std::path::Path;
use std::sync::Arc;

use baton_protocol::record::{NodeRecord, SignedRecord};
use baton_protocol::wire::{frame_len, Message, MAX_FRAME_BYTES};

use crate::blob::Blob;
use crate::model::{safetensors_tensors, ModelFile};
use crate::runtime::{BackendChoice, Engine, EngineOptions};

/// A data-plane frame: its length prefix, then its body as a node decodes it, hidden states
/// included.
pub fn wire(data: &[u8]) {
    if let Some(prefix) = data.get(..4) {
        let _ = frame_len([prefix[0], prefix[1], prefix[2], prefix[3]]);
    }
    if let Ok(Message::Forward(f)) = Message::decode_body(data) {
        let _ = f.hidden.decode(MAX_FRAME_BYTES / 2);
    }
}

/// A record as the DHT hands it over: signed envelope, signature, inner record.
pub fn record(data: &[u8]) {
    let _ = SignedRecord::decode(data);
    let _ = NodeRecord::decode(data);
    let _ = crate::dht::verify(data, 0);
}

/// A GGUF file: header, metadata, tensor table, config, tokenizer, and loading every span's
/// weights for the CPU.
pub fn gguf(data: &[u8]) {
    let Ok(model) = ModelFile::from_gguf_bytes(Path::new("fuzz.gguf"), data.to_vec()) else {
        return;
    };
    let _ = model.tokenizer();
    let layers = model.config.layers as u32;
    if layers <= 64 {
        let span = baton_protocol::Span::full(layers);
        let options = EngineOptions {
            backend: BackendChoice::Cpu,
            ..Default::default()
        };
        let _ = Engine::load(&model, span, options, &mut |_, _| {});
    }
}

/// A safetensors file: header and tensor table.
pub fn safetensors(data: &[u8]) {
    let blob = Arc::new(Blob::Owned(data.to_vec()));
    let _ = safetensors_tensors(Path::new("fuzz.safetensors"), blob);
}

/// A fuzz target: bytes in, nothing out, never a panic.
pub type Target = fn(&[u8]);

/// Every fuzz target by name, for the corpus replay.
pub const TARGETS: &[(&str, Target)] = &[
    ("wire", wire),
    ("record", record),
    ("gguf", gguf),
    ("safetensors", safetensors),
];
