//! Baton's wire vocabulary: the words every node and client share.
//!
//! This crate does no I/O and knows nothing of GPUs. Everything that decodes bytes from a peer
//! returns a typed error instead of panicking, and bounds every length before allocating.

// Bytes from peers and files never panic this crate: no unwrap or expect outside tests.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod experts;
pub mod record;
mod span;
mod tensor;
pub mod wire;

pub use span::{Span, SpanError, Stage};
pub use tensor::{HiddenStates, TensorError, WireDtype};

/// The protocol version a node and a client exchange before anything else.
pub const PROTOCOL_VERSION: u32 = 6;
