//! The wgpu backend: weights and activations stay on the GPU across the layers of a span; only
//! what leaves the span is read back.

use std::sync::Arc;

use baton_shaders::cpu::AttnShape;
use baton_shaders::gpu::{Gpu, GpuMatrix, GpuTensor, KvFormat};

use super::kv::{KvLayout, KvPositions};
use super::Backend;
use crate::error::RunError;
use crate::model::TensorRef;
use crate::runtime::PREFILL_CHUNK;

pub struct GpuBackend {
    pub gpu: Arc<Gpu>,
    pub kv_format: KvFormat,
}

pub struct GpuAct {
    t: GpuTensor,
    width: usize,
}

/// One layer's keys and values, `[capacity, width]` each in the backend's [`KvFormat`], grown
/// by doubling; a latent cache has keys only.
pub struct GpuKv {
    /// Keys and values of positions `at.base..at.end`, from the start of the buffers.
    k: GpuTensor,
    v: GpuTensor,
    layout: KvLayout,
    /// Positions the buffers have room for.
    capacity: usize,
    /// The most positions a session can need at once.
    max: usize,
    at: KvPositions,
}

impl GpuBackend {
    fn act(&self, t: GpuTensor, width: usize) -> GpuAct {
        GpuAct { t, width }
    }

    /// Makes room for `need` positions when `used` are held, the first `drop` of which go:
    /// new buffers, into which the kept positions are copied (a buffer cannot be copied onto
    /// itself).
    fn make_room(&self, kv: &mut GpuKv, need: usize, used: usize, drop: usize) {
        if need <= kv.capacity && drop == 0 {
            return;
        }
        let capacity = need.next_power_of_two().max(256).min(kv.max.max(need));
        // 32-bit words: two f16 values or one f32 each.
        let words = |n: usize| self.kv_format.words(n * kv.layout.width);
        let buffers = if kv.layout.values { 2 } else { 1 };
        for t in [&mut kv.k, &mut kv.v].into_iter().take(buffers) {
            let fresh = self.gpu.zeros(words(capacity));
            self.gpu
                .copy(&t.buf, words(drop), &fresh.buf, 0, words(used - drop));
            *t = fresh;
        }
        kv.capacity = capacity;
    }
}

impl Backend for GpuBackend {
    type Act = GpuAct;
    type Weight = GpuMatrix;
    type Vector = GpuTensor;
    type Kv = GpuKv;

    fn describe(&self) -> String {
        format!("{}, KV cache {:?}", self.gpu.describe(), self.kv_format)
    }

    fn weight(&self, t: &TensorRef) -> Result<GpuMatrix, RunError> {
        Ok(self.gpu.upload_matrix(&t.matrix()?)?)
    }

    fn vector(&self, v: &[f32]) -> Result<GpuTensor, RunError> {
        Ok(self.gpu.upload(v))
    }

    /// Positions past the session's are never read and are overwritten by the next step.
    fn kv_truncate(&self, kv: &mut GpuKv, tokens: usize) -> Result<(), RunError> {
        kv.at.truncate(tokens)
    }

    fn kv_cache(
        &self,
        layout: KvLayout,
        capacity: usize,
        window: usize,
    ) -> Result<GpuKv, RunError> {
        let max =
            KvPositions::most_held(window, PREFILL_CHUNK).map_or(capacity, |m| m.min(capacity));
        Ok(GpuKv {
            k: self.gpu.zeros(0),
            v: self.gpu.zeros(0),
            layout,
            capacity: 0,
            max,
            at: KvPositions::new(window),
        })
    }

    fn kv_allocated(&self, kv: &GpuKv) -> usize {
        (kv.k.len + kv.v.len) * 4
    }

    fn kv_fork(&self, kv: &GpuKv, tokens: usize) -> Result<GpuKv, RunError> {
        let at = kv.at.first(tokens)?;
        let mut fork = GpuKv {
            k: self.gpu.zeros(0),
            v: self.gpu.zeros(0),
            layout: kv.layout,
            capacity: 0,
            max: kv.max,
            at: KvPositions::new(at.window),
        };
        // Fresh buffers with room for the positions, then a copy of them.
        self.make_room(&mut fork, tokens, 0, 0);
        let words = self.kv_format.words(tokens * kv.layout.width);
        self.gpu.copy(&kv.k.buf, 0, &fork.k.buf, 0, words);
        if kv.layout.values {
            self.gpu.copy(&kv.v.buf, 0, &fork.v.buf, 0, words);
        }
        fork.at = at;
        Ok(fork)
    }

    fn upload(&self, x: &[f32], width: usize) -> Result<GpuAct, RunError> {
        Ok(self.act(self.gpu.upload(x), width))
    }

    fn download(&self, x: &GpuAct) -> Result<Vec<f32>, RunError> {
        Ok(self.gpu.download(&x.t)?)
    }

    fn tokens(&self, x: &GpuAct) -> usize {
        x.t.len / x.width
    }

    fn embed(&self, table: &GpuMatrix, ids: &[u32]) -> Result<GpuAct, RunError> {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= table.rows) {
            return Err(RunError::TokenId {
                id,
                vocab: table.rows,
            });
        }
        Ok(self.act(self.gpu.embed(table, ids), table.cols))
    }

    fn rmsnorm(&self, x: &GpuAct, w: &GpuTensor, eps: f32) -> Result<GpuAct, RunError> {
        Ok(self.act(self.gpu.rmsnorm(&x.t, w, eps), x.width))
    }

    /// The shader computes each token's row alike whatever shares the product: `decode`
    /// needs nothing.
    fn linear(
        &self,
        ws: &[&GpuMatrix],
        x: &GpuAct,
        _decode: usize,
    ) -> Result<Vec<GpuAct>, RunError> {
        let tokens = self.tokens(x);
        Ok(ws
            .iter()
            .map(|w| self.act(self.gpu.matmul(w, &x.t, tokens), w.rows))
            .collect())
    }

    fn rope(
        &self,
        x: &mut GpuAct,
        pos0: usize,
        head_dim: usize,
        inv: &GpuTensor,
        factor: f32,
        interleaved: bool,
    ) -> Result<(), RunError> {
        if head_dim == 0 || !x.width.is_multiple_of(head_dim) || inv.len * 2 != head_dim {
            return Err(RunError::Backend(format!(
                "RoPE of {} frequencies over heads of {head_dim} in rows of {}",
                inv.len, x.width
            )));
        }
        let heads = x.width / head_dim;
        self.gpu
            .rope(&x.t, heads, head_dim, pos0, inv, factor, interleaved);
        Ok(())
    }

    fn attention(
        &self,
        q: &GpuAct,
        k: &GpuAct,
        v: Option<&GpuAct>,
        kv: &mut GpuKv,
        pos0: usize,
        shape: &AttnShape,
    ) -> Result<GpuAct, RunError> {
        let width = kv.layout.width;
        kv.layout.check(k.width, v.map(|v| v.width), shape.latent)?;
        let tokens = self.tokens(k);
        let used = kv.at.len();
        let drop = kv.at.append(pos0, tokens)?;
        self.make_room(kv, kv.at.len(), used, drop);
        // Positions relative to the first held: attention depends on differences only.
        let rel = pos0 - kv.at.base;
        let f = self.kv_format;
        self.gpu.kv_store(&k.t, &kv.k.buf, rel * width, f);
        if let Some(v) = v {
            self.gpu.kv_store(&v.t, &kv.v.buf, rel * width, f);
        }
        let values = if shape.latent { &kv.k.buf } else { &kv.v.buf };
        let out = self.gpu.attention(&q.t, &kv.k.buf, values, rel, shape, f)?;
        Ok(self.act(out, shape.out_width()))
    }

    fn gelu_mul(&self, gate: &mut GpuAct, up: &GpuAct) -> Result<(), RunError> {
        self.gpu.gelu_mul(&gate.t, &up.t);
        Ok(())
    }

    fn add_rows(&self, x: &mut GpuAct, b: &GpuTensor) -> Result<(), RunError> {
        self.gpu.add_rows(&x.t, b);
        Ok(())
    }

    fn scale(&self, x: &mut GpuAct, s: f32) -> Result<(), RunError> {
        self.gpu.scale(&x.t, s);
        Ok(())
    }

    fn silu_mul(&self, gate: &mut GpuAct, up: &GpuAct) -> Result<(), RunError> {
        self.gpu.silu_mul(&gate.t, &up.t);
        Ok(())
    }

    fn add(&self, x: &mut GpuAct, y: &GpuAct) -> Result<(), RunError> {
        self.gpu.add(&x.t, &y.t);
        Ok(())
    }

    fn rows(&self, x: &GpuAct, start: usize, rows: usize) -> Result<GpuAct, RunError> {
        if start + rows > self.tokens(x) {
            return Err(super::cpu::out_of_rows(start, rows, self.tokens(x)));
        }
        let n = rows * x.width;
        let out = self.gpu.zeros(n);
        self.gpu.copy(&x.t.buf, start * x.width, &out.buf, 0, n);
        Ok(self.act(out, x.width))
    }

    fn columns(&self, parts: &[(&GpuAct, usize, usize)]) -> Result<GpuAct, RunError> {
        let rows = super::cpu::check_columns(parts, |x| (self.tokens(x), x.width))?;
        let width = parts.iter().map(|p| p.2).sum();
        let parts: Vec<_> = parts
            .iter()
            .map(|&(x, first, n)| (&x.t, x.width, first, n))
            .collect();
        Ok(self.act(self.gpu.columns(&parts, rows, width), width))
    }

    fn concat(&self, parts: &[GpuAct]) -> Result<GpuAct, RunError> {
        let width = parts.first().map_or(1, |p| p.width);
        if parts.iter().any(|p| p.width != width) {
            return Err(RunError::Backend("rows of different widths".into()));
        }
        let out = self.gpu.zeros(parts.iter().map(|p| p.t.len).sum());
        let mut at = 0;
        for p in parts {
            self.gpu.copy(&p.t.buf, 0, &out.buf, at, p.t.len);
            at += p.t.len;
        }
        Ok(self.act(out, width))
    }

    fn gather(&self, x: &GpuAct, idx: &[u32], scale: Option<&[f32]>) -> Result<GpuAct, RunError> {
        super::cpu::check_gather(idx, scale, self.tokens(x))?;
        let ones;
        let scale = match scale {
            Some(s) => s,
            None => {
                ones = vec![1f32; idx.len()];
                &ones
            }
        };
        Ok(self.act(self.gpu.gather(&x.t, x.width, idx, scale), x.width))
    }
}
