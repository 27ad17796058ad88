//! The CPU kernels: the CPU backend, and the reference for every GPU kernel.
//!
//! Threads come from one process-wide pool ([`pool`]); `--threads N` sizes it.

mod act;
mod attention;
mod dot;
#[cfg(target_arch = "x86_64")]
mod dot_int;
#[cfg(target_arch = "x86_64")]
mod dot_x86;
mod matmul;
mod ops;
mod pool;

pub use crate::quant::{dequantize_row, quantize_row};
pub use act::Activation;
pub use attention::{attention, AttnShape};
pub use dot::Dot;
pub use matmul::{matmul, matmul_batch, matmul_groups, matmul_many, Product, GEMM_MIN_TOKENS};
pub use ops::{add, add_rows, gelu_mul, gelu_tanh, rmsnorm, rope, rope_inv_freq, scale, silu_mul};
pub use pool::{pool, set_threads};
