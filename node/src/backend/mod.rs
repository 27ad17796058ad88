//! The operations a decoder span needs, over activations that live wherever the backend keeps
//! them. `layers.rs`, `span.rs` and the architectures in `arch/` are written once against this
//! trait; each backend implements it.
//!
//! Activations are `[tokens, width]` row-major f32.

pub mod cpu;
pub mod gpu;
pub mod kv;

use baton_shaders::cpu::AttnShape;

use crate::error::RunError;
use crate::model::TensorRef;
pub use kv::KvLayout;

/// One product of [`Backend::linear_groups`]: weights, their input, and its decode rows.
pub type LinearGroup<'a, W, A> = (&'a [&'a W], &'a A, usize);

pub trait Backend: Send + Sync {
    /// Activations `[tokens, width]`.
    type Act: Send;
    /// A linear layer's weight in its stored format, resident where the backend computes.
    type Weight: Send + Sync;
    /// A small f32 vector (a norm's weight).
    type Vector: Send + Sync;
    /// One layer's KV cache for one session.
    type Kv: Send;

    fn describe(&self) -> String;
    fn weight(&self, t: &TensorRef) -> Result<Self::Weight, RunError>;
    fn vector(&self, v: &[f32]) -> Result<Self::Vector, RunError>;
    /// One layer's cache laid out as `layout`, for a session of up to `capacity` positions, in
    /// a layer whose queries see the last `window` positions (0: all of them).
    fn kv_cache(
        &self,
        layout: KvLayout,
        capacity: usize,
        window: usize,
    ) -> Result<Self::Kv, RunError>;
    /// Forgets every position from `tokens` on; refused where a window layer no longer holds
    /// what a query there sees.
    fn kv_truncate(&self, kv: &mut Self::Kv, tokens: usize) -> Result<(), RunError>;
    /// Bytes the cache has allocated: what it holds and the room it has grown.
    fn kv_allocated(&self, kv: &Self::Kv) -> usize;
    /// A new cache holding a copy of the first `tokens` positions of `kv` (which must all be
    /// held): a session that starts from another's prefix.
    fn kv_fork(&self, kv: &Self::Kv, tokens: usize) -> Result<Self::Kv, RunError>;

    fn upload(&self, x: &[f32], width: usize) -> Result<Self::Act, RunError>;
    fn download(&self, x: &Self::Act) -> Result<Vec<f32>, RunError>;
    fn tokens(&self, x: &Self::Act) -> usize;

    /// Rows of `table` for `ids`, dequantized.
    fn embed(&self, table: &Self::Weight, ids: &[u32]) -> Result<Self::Act, RunError>;
    /// `[tokens, width]` rows scaled to unit RMS and multiplied by `w`. A `w` shorter than a
    /// row normalises each `w.len()` slice on its own (a norm per head).
    fn rmsnorm(&self, x: &Self::Act, w: &Self::Vector, eps: f32) -> Result<Self::Act, RunError>;
    /// `x · wᵀ` for each weight: products of one input are issued together. The first `decode`
    /// rows of `x` belong to steps of fewer than [`baton_shaders::cpu::GEMM_MIN_TOKENS`]
    /// tokens (see [`crate::pass::Pass`]): each row's output must not depend on the other rows,
    /// so that a step computes the same alone or batched.
    fn linear(
        &self,
        ws: &[&Self::Weight],
        x: &Self::Act,
        decode: usize,
    ) -> Result<Vec<Self::Act>, RunError>;
    /// [`Backend::linear`] of several inputs, each `(weights, input, decode rows)`, in one pass
    /// where the backend can (the experts of a mixture, each over its own tokens); each
    /// computes exactly as `linear` alone.
    fn linear_groups(
        &self,
        groups: &[LinearGroup<'_, Self::Weight, Self::Act>],
    ) -> Result<Vec<Vec<Self::Act>>, RunError> {
        groups
            .iter()
            .map(|(ws, x, decode)| self.linear(ws, x, *decode))
            .collect()
    }
    /// RoPE in place at positions `pos0..`, with the inverse frequencies `inv` and the result
    /// scaled by `factor`.
    fn rope(
        &self,
        x: &mut Self::Act,
        pos0: usize,
        head_dim: usize,
        inv: &Self::Vector,
        factor: f32,
        interleaved: bool,
    ) -> Result<(), RunError>;
    /// Appends `k`, `v` to the cache at `pos0` and attends causally over it. `v` is `None` for
    /// a cache without values of its own (a latent shape, [`AttnShape::latent`]).
    fn attention(
        &self,
        q: &Self::Act,
        k: &Self::Act,
        v: Option<&Self::Act>,
        kv: &mut Self::Kv,
        pos0: usize,
        shape: &AttnShape,
    ) -> Result<Self::Act, RunError>;
    /// `gate = gelu(gate) · up`, GELU's tanh approximation.
    fn gelu_mul(&self, gate: &mut Self::Act, up: &Self::Act) -> Result<(), RunError>;
    /// `x[t] += b` for every row.
    fn add_rows(&self, x: &mut Self::Act, b: &Self::Vector) -> Result<(), RunError>;
    /// `x *= s`.
    fn scale(&self, x: &mut Self::Act, s: f32) -> Result<(), RunError>;
    fn silu_mul(&self, gate: &mut Self::Act, up: &Self::Act) -> Result<(), RunError>;
    fn add(&self, x: &mut Self::Act, y: &Self::Act) -> Result<(), RunError>;
    /// Rows `start..start + rows`.
    fn rows(&self, x: &Self::Act, start: usize, rows: usize) -> Result<Self::Act, RunError>;
    /// Rows made of the column ranges `(x, first column, columns)` of each part's rows, side
    /// by side; every part has the same rows.
    fn columns(&self, parts: &[(&Self::Act, usize, usize)]) -> Result<Self::Act, RunError>;
    /// The rows of `parts`, one after the other.
    fn concat(&self, parts: &[Self::Act]) -> Result<Self::Act, RunError>;
    /// Rows `idx` of `x` in that order, row `r` multiplied by `scale[r]` when scales are given:
    /// the tokens a mixture-of-experts layer routes to one expert, and the experts' weighted
    /// outputs gathered back in token order.
    fn gather(
        &self,
        x: &Self::Act,
        idx: &[u32],
        scale: Option<&[f32]>,
    ) -> Result<Self::Act, RunError>;
}
