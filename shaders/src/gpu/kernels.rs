//! One dispatch function per WGSL kernel. Each records work; nothing runs until a download or
//! [`Gpu::flush`].

use super::{grid_1d, Gpu, GpuError, GpuMatrix, GpuTensor, KvFormat, MAX_GROUPS};
use crate::cpu::AttnShape;
use crate::quant::DType;

pub(super) const COMMON: &str = include_str!("../../wgsl/common.wgsl");
pub(super) const DEQUANT: &str = include_str!("../../wgsl/dequant.wgsl");

/// The WGSL file and entry point of a kernel.
pub(super) fn source(name: &str) -> (&'static str, &'static str) {
    match name {
        "matmul" => (include_str!("../../wgsl/matmul.wgsl"), "main"),
        "embed" => (include_str!("../../wgsl/embed.wgsl"), "main"),
        "rmsnorm" => (include_str!("../../wgsl/rmsnorm.wgsl"), "main"),
        "rope" => (include_str!("../../wgsl/rope.wgsl"), "main"),
        "attention" => (include_str!("../../wgsl/attention.wgsl"), "main"),
        "kv_store" => (include_str!("../../wgsl/kv.wgsl"), "main"),
        "silu_mul" => (include_str!("../../wgsl/elementwise.wgsl"), "silu_mul"),
        "add" => (include_str!("../../wgsl/elementwise.wgsl"), "add"),
        "gelu_mul" => (include_str!("../../wgsl/elementwise.wgsl"), "gelu_mul"),
        "add_rows" => (include_str!("../../wgsl/elementwise.wgsl"), "add_rows"),
        "scale" => (include_str!("../../wgsl/elementwise.wgsl"), "scale"),
        "gather" => (include_str!("../../wgsl/gather.wgsl"), "main"),
        "columns" => (include_str!("../../wgsl/columns.wgsl"), "main"),
        other => unreachable!("no kernel named {other}"),
    }
}

pub(super) fn reads_weights(name: &str) -> bool {
    matches!(name, "matmul" | "embed")
}

/// The kernels' DTYPE constant: GGML's number for the format.
fn dtype_code(d: DType) -> u32 {
    d.ggml_type()
}

impl Gpu {
    /// `y[tokens, rows] = x[tokens, cols] · wᵀ`.
    pub fn matmul(&self, w: &GpuMatrix, x: &GpuTensor, tokens: usize) -> GpuTensor {
        debug_assert_eq!(x.len, tokens * w.cols);
        let y = self.zeros(tokens * w.rows);
        // Eight tokens per workgroup row; the y dimension must stay within the grid limit, and the
        // input and output of a pass within one buffer binding (a 262,144-wide head's logits for
        // 256 tokens would not).
        let per_token = (w.rows.max(w.cols) * 4) as u64;
        let by_binding = (self.max_binding / per_token).max(1) as usize;
        let max_tokens = (MAX_GROUPS as usize * 8).min(by_binding);
        for t0 in (0..tokens).step_by(max_tokens) {
            let nt = (tokens - t0).min(max_tokens);
            let (xs, ys) = if t0 == 0 && nt == tokens {
                (None, None)
            } else {
                let xs = self.zeros(nt * w.cols);
                self.copy(&x.buf, t0 * w.cols, &xs.buf, 0, nt * w.cols);
                (Some(xs), Some(self.zeros(nt * w.rows)))
            };
            let xb = xs.as_ref().map_or(&x.buf, |t| &t.buf);
            let yb = ys.as_ref().map_or(&y.buf, |t| &t.buf);
            for (buf, r0, rows) in &w.parts {
                let params = [
                    *rows as u32,
                    w.cols as u32,
                    nt as u32,
                    w.row_bytes as u32,
                    *r0 as u32,
                    w.rows as u32,
                    0,
                    0,
                ];
                let groups = (*rows as u32, nt.div_ceil(8) as u32);
                self.dispatch(
                    "matmul",
                    dtype_code(w.dtype),
                    params,
                    &[buf, xb, yb],
                    groups,
                );
            }
            if let Some(ys) = ys {
                self.copy(&ys.buf, 0, &y.buf, t0 * w.rows, nt * w.rows);
            }
        }
        y
    }

    /// Rows of `table` for `ids`, as f32.
    pub fn embed(&self, table: &GpuMatrix, ids: &[u32]) -> GpuTensor {
        let out = self.zeros(ids.len() * table.cols);
        let idb = self.upload_u32(ids);
        for (buf, r0, rows) in &table.parts {
            let params = [
                table.cols as u32,
                ids.len() as u32,
                table.row_bytes as u32,
                *r0 as u32,
                *rows as u32,
                0,
                0,
                0,
            ];
            let groups = (table.cols.div_ceil(64) as u32, ids.len() as u32);
            self.dispatch(
                "embed",
                dtype_code(table.dtype),
                params,
                &[buf, &idb, &out.buf],
                groups,
            );
        }
        out
    }

    pub fn rmsnorm(&self, x: &GpuTensor, w: &GpuTensor, eps: f32) -> GpuTensor {
        let out = self.zeros(x.len);
        let tokens = x.len / w.len;
        let params = [w.len as u32, eps.to_bits(), 0, 0, 0, 0, 0, 0];
        self.dispatch(
            "rmsnorm",
            0,
            params,
            &[&x.buf, &w.buf, &out.buf],
            (tokens as u32, 1),
        );
        out
    }

    /// RoPE in place on `[tokens, heads · head_dim]` at positions `pos0..`, with the inverse
    /// frequencies `inv` (`head_dim / 2` values) and the result scaled by `factor`.
    #[allow(clippy::too_many_arguments)]
    pub fn rope(
        &self,
        x: &GpuTensor,
        heads: usize,
        head_dim: usize,
        pos0: usize,
        inv: &GpuTensor,
        factor: f32,
        interleaved: bool,
    ) {
        let pairs = x.len / 2;
        let params = [
            pairs as u32,
            heads as u32,
            head_dim as u32,
            pos0 as u32,
            factor.to_bits(),
            interleaved as u32,
            0,
            0,
        ];
        self.dispatch("rope", 0, params, &[&x.buf, &inv.buf], grid_1d(pairs));
    }

    /// Stores `src` (f32, an even count) into a KV cache of 32-bit words in `format`, starting
    /// at element `at` (even).
    pub fn kv_store(&self, src: &GpuTensor, cache: &wgpu::Buffer, at: usize, format: KvFormat) {
        let pairs = src.len / 2;
        let params = [pairs as u32, at as u32, 0, 0, 0, 0, 0, 0];
        self.dispatch(
            "kv_store",
            format as u32,
            params,
            &[&src.buf, cache],
            grid_1d(pairs),
        );
    }

    /// Attention of `q [tokens, heads · head_dim]` at positions `pos0..` over caches in `format`
    /// ([`Gpu::kv_store`]) that hold positions `0..pos0 + tokens`: key rows
    /// `kv_heads · head_dim` wide, value rows [`AttnShape::v_row`] wide (for a latent shape,
    /// `v_cache` is the key cache), with the shape's scale and window.
    pub fn attention(
        &self,
        q: &GpuTensor,
        k_cache: &wgpu::Buffer,
        v_cache: &wgpu::Buffer,
        pos0: usize,
        a: &AttnShape,
        format: KvFormat,
    ) -> Result<GpuTensor, GpuError> {
        if a.head_dim > 1024 || !a.head_dim.is_multiple_of(2) {
            return Err(GpuError::HeadDim(a.head_dim));
        }
        if a.v_dim > 512 || a.v_dim > a.v_head() || (a.latent && a.kv_heads != 1) {
            return Err(GpuError::ValueDim(a.v_dim));
        }
        let tokens = q.len / (a.heads * a.head_dim);
        let out = self.zeros(tokens * a.out_width());
        let params = [
            a.heads as u32,
            a.kv_heads as u32,
            a.head_dim as u32,
            pos0 as u32,
            (a.kv_heads * a.head_dim) as u32,
            a.scale.to_bits(),
            a.window.min(u32::MAX as usize) as u32,
            a.v_dim as u32 | (u32::from(a.latent) << 16),
        ];
        self.dispatch(
            "attention",
            format as u32,
            params,
            &[&q.buf, k_cache, v_cache, &out.buf],
            (a.heads as u32, tokens as u32),
        );
        Ok(out)
    }

    /// `gate = silu(gate) · up`.
    pub fn silu_mul(&self, gate: &GpuTensor, up: &GpuTensor) {
        let params = [gate.len as u32, 0, 0, 0, 0, 0, 0, 0];
        self.dispatch(
            "silu_mul",
            0,
            params,
            &[&gate.buf, &up.buf],
            grid_1d(gate.len),
        );
    }

    /// `gate = gelu(gate) · up`, GELU's tanh approximation.
    pub fn gelu_mul(&self, gate: &GpuTensor, up: &GpuTensor) {
        let params = [gate.len as u32, 0, 0, 0, 0, 0, 0, 0];
        self.dispatch(
            "gelu_mul",
            0,
            params,
            &[&gate.buf, &up.buf],
            grid_1d(gate.len),
        );
    }

    /// `x[t] += b` for every row of `x`.
    pub fn add_rows(&self, x: &GpuTensor, b: &GpuTensor) {
        let params = [x.len as u32, b.len as u32, 0, 0, 0, 0, 0, 0];
        self.dispatch("add_rows", 0, params, &[&x.buf, &b.buf], grid_1d(x.len));
    }

    /// `x *= s`.
    pub fn scale(&self, x: &GpuTensor, s: f32) {
        let params = [x.len as u32, s.to_bits(), 0, 0, 0, 0, 0, 0];
        self.dispatch("scale", 0, params, &[&x.buf], grid_1d(x.len));
    }

    /// `x += y`.
    pub fn add(&self, x: &GpuTensor, y: &GpuTensor) {
        let params = [x.len as u32, 0, 0, 0, 0, 0, 0, 0];
        self.dispatch("add", 0, params, &[&x.buf, &y.buf], grid_1d(x.len));
    }

    /// `out[r] = x[idx[r]] · scale[r]` over rows `width` wide; every index must be below
    /// `x`'s row count.
    pub fn gather(&self, x: &GpuTensor, width: usize, idx: &[u32], scale: &[f32]) -> GpuTensor {
        debug_assert_eq!(idx.len(), scale.len());
        let out = self.zeros(idx.len() * width);
        let ib = self.upload_u32(idx);
        let sb = self.upload(scale);
        let params = [width as u32, idx.len() as u32, 0, 0, 0, 0, 0, 0];
        self.dispatch(
            "gather",
            0,
            params,
            &[&x.buf, &ib, &sb.buf, &out.buf],
            grid_1d(idx.len() * width),
        );
        out
    }

    /// Rows of `width` whose columns are the given column ranges `(x, x's width, first
    /// column, columns)` of the rows of each part, one after the other; every part has `rows`.
    pub fn columns(
        &self,
        parts: &[(&GpuTensor, usize, usize, usize)],
        rows: usize,
        width: usize,
    ) -> GpuTensor {
        let out = self.zeros(rows * width);
        let mut at = 0;
        for &(x, x_width, first, n) in parts {
            let params = [
                rows as u32,
                n as u32,
                x_width as u32,
                first as u32,
                width as u32,
                at as u32,
                0,
                0,
            ];
            self.dispatch("columns", 0, params, &[&x.buf, &out.buf], grid_1d(rows * n));
            at += n;
        }
        out
    }
}
