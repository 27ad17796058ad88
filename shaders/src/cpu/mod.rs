//! The CPU kernels: the CPU backend, and the reference for every GPU kernel.
//!
//! Threads come from one process-wide pool ([`pool`]); `--threads N` sizes it.

mod dot;
mod matmul;
mod ops;
mod pool;

pub use crate::quant::{dequantize_row, quantize_row};
pub use dot::{block_sums, Dot};
pub use matmul::{matmul, matmul_many};
pub use ops::{add, attention, rmsnorm, rope, silu_mul};
pub use pool::{pool, set_threads};
