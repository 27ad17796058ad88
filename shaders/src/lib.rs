//! Baton's compute kernels.
//!
//! - [`cpu`]: plain, multithreaded kernels. They are the CPU backend and the reference that every
//!   GPU kernel is tested against.
//! - [`gpu`]: the wgpu runtime over the WGSL sources in `shaders/wgsl/`: device, pipeline cache and
//!   one dispatch function per kernel.
//!
//! Weights stay in the format they were stored in ([`DType`]) and are dequantized inside the
//! kernels. Activations are f32; accumulation is f32.

// Bytes from peers and files never panic this crate: no unwrap or expect outside tests.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod cpu;
pub mod gpu;
mod quant;

pub use quant::{dequantize_block, fp8, random_rows, DType, QTensor, QuantError, ALL_DTYPES};
