//! FP8 weights of Hugging Face checkpoints (DeepSeek-V3/R1's): `X.weight` in `float8_e4m3fn`
//! `[rows, cols]` beside `X.weight_scale_inv`, one f32 scale per 128 × 128 tile (the last ones
//! of a row or column may be partial), the weight being their product. A tensor's rows become
//! FP8 blocks, each its tile's scale then its values, the first time a span reads it, so that a
//! node reads and holds only the weights of its own span: [`DType::Fp8E4M3`] blocks of 128 for
//! rows of whole tiles, [`DType::Fp8E4M3B32`] blocks of 32 for the others, and f32 values for
//! rows that are not even whole blocks of 32 (none in DeepSeek-V3, whose dimensions are all
//! multiples of 128; some in tiny test models).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use baton_shaders::fp8;
use baton_shaders::DType;

use crate::error::LoadError;
use crate::model::TensorRef;

/// The side of a scale tile.
pub const TILE: usize = 128;

/// A weight's E4M3 values and its tile scales, packed into blocks when first read.
pub struct Fp8Source {
    values: TensorRef,
    scales: TensorRef,
    rows: usize,
    cols: usize,
    /// Values per packed block; 0 for f32 values.
    block: usize,
    packed: OnceLock<Vec<u8>>,
}

impl Fp8Source {
    /// The rows as FP8 blocks.
    pub fn bytes(&self) -> &[u8] {
        self.packed.get_or_init(|| {
            let (n, tiles) = (self.block, self.cols.div_ceil(TILE));
            // Checked when paired: f32 or bf16, one scale per tile.
            let scales = self.scales.to_f32().unwrap_or_default();
            let raw = self.values.bytes();
            let scale = |r: usize, c: usize| {
                let s = scales.get((r / TILE) * tiles + c / TILE).copied();
                s.unwrap_or(f32::NAN)
            };
            if n == 0 {
                let mut out = Vec::with_capacity(self.rows * self.cols * 4);
                for (i, &q) in raw.iter().enumerate() {
                    let v = fp8::e4m3(q) * scale(i / self.cols, i % self.cols);
                    out.extend_from_slice(&v.to_le_bytes());
                }
                return out;
            }
            let mut out = Vec::with_capacity(self.rows * (self.cols / n) * (4 + n));
            for r in 0..self.rows {
                for b in 0..self.cols / n {
                    out.extend_from_slice(&scale(r, b * n).to_le_bytes());
                    out.extend_from_slice(&raw[r * self.cols + b * n..][..n]);
                }
            }
            out
        })
    }
}

/// Whether a tensor holds E4M3 values as a safetensors file stores them, not yet paired with
/// its scales.
pub fn is_raw(t: &TensorRef) -> bool {
    t.dtype == DType::Fp8E4M3 && !t.is_packed_fp8()
}

/// Replaces each `X.weight` of raw E4M3 values and its `X.weight_scale_inv` (Hugging Face
/// names) by one weight of FP8 blocks; refuses a weight without scales, scales of another
/// shape, and rows that are not whole tiles.
pub fn pair(tensors: &mut HashMap<String, TensorRef>, dir: &Path) -> Result<(), LoadError> {
    let bad = |what: String| LoadError::Corrupt {
        path: dir.to_path_buf(),
        what,
    };
    let scale_names: Vec<String> = tensors
        .keys()
        .filter(|n| n.ends_with(".weight_scale_inv"))
        .cloned()
        .collect();
    for name in scale_names {
        let base = name.trim_end_matches("_scale_inv").to_string();
        let (Some(values), Some(scales)) = (tensors.remove(&base), tensors.remove(&name)) else {
            return Err(bad(format!("`{name}` scales no weight `{base}`")));
        };
        if !is_raw(&values) || values.dims.len() != 2 {
            return Err(bad(format!(
                "`{name}` scales `{base}`, which is not an FP8 matrix"
            )));
        }
        let (cols, rows) = (values.dims[0], values.dims[1]);
        let want = [cols.div_ceil(TILE), rows.div_ceil(TILE)];
        if !matches!(scales.dtype, DType::F32 | DType::Bf16) || scales.dims != want {
            return Err(bad(format!(
                "`{name}` is {:?} {:?}, not f32 scales of {want:?} tiles of {TILE}",
                scales.dtype, scales.dims
            )));
        }
        let (dtype, block) = if cols.is_multiple_of(fp8::BLOCK) {
            (DType::Fp8E4M3, fp8::BLOCK)
        } else if cols.is_multiple_of(fp8::SMALL_BLOCK) {
            (DType::Fp8E4M3B32, fp8::SMALL_BLOCK)
        } else {
            (DType::F32, 0)
        };
        let source = Fp8Source {
            values,
            scales,
            rows,
            cols,
            block,
            packed: OnceLock::new(),
        };
        let len = dtype.row_bytes(cols).unwrap_or(0) * rows;
        tensors.insert(
            base.clone(),
            TensorRef::packed_fp8(base, dtype, vec![cols, rows], Arc::new(source), len),
        );
    }
    if let Some(raw) = tensors.values().find(|t| is_raw(t)) {
        return Err(bad(format!(
            "`{}` holds FP8 values without a `weight_scale_inv`",
            raw.name
        )));
    }
    Ok(())
}
