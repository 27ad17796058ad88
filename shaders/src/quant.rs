//! Storage formats of weights and the layout of their blocks.

use half::{bf16, f16};

/// How a weight is stored. Quantized formats pack `block_len()` elements into `block_bytes()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    Bf16,
    /// 32 elements: f16 scale `d`, 32 × i8. Value = d·q.
    Q8_0,
    /// 32 elements: f16 scale `d`, f16 minimum `m`, 16 bytes of nibbles. Element `j < 16` is the
    /// low nibble of byte `j`, element `j + 16` its high nibble. Value = d·q + m.
    Q4_1,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuantError {
    #[error("a row of {cols} elements is not a whole number of {dtype:?} blocks of {block}")]
    PartialBlock {
        dtype: DType,
        cols: usize,
        block: usize,
    },
    #[error("{rows}x{cols} {dtype:?} needs {want} bytes, got {got}")]
    Size {
        dtype: DType,
        rows: usize,
        cols: usize,
        want: usize,
        got: usize,
    },
}

impl DType {
    pub fn block_len(self) -> usize {
        match self {
            DType::F32 | DType::F16 | DType::Bf16 => 1,
            DType::Q8_0 | DType::Q4_1 => 32,
        }
    }

    pub fn block_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::Bf16 => 2,
            DType::Q8_0 => 34,
            DType::Q4_1 => 20,
        }
    }

    /// Bytes of one row of `cols` elements, or an error when `cols` splits a block.
    pub fn row_bytes(self, cols: usize) -> Result<usize, QuantError> {
        let block = self.block_len();
        if !cols.is_multiple_of(block) {
            return Err(QuantError::PartialBlock {
                dtype: self,
                cols,
                block,
            });
        }
        Ok(cols / block * self.block_bytes())
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
            DType::Q8_0 => "q8_0",
            DType::Q4_1 => "q4_1",
        }
    }
}

/// A row-major matrix of `rows` rows of `cols` elements in its stored format: a linear layer's
/// weight is `[out_features, in_features]`.
#[derive(Clone, Copy, Debug)]
pub struct QTensor<'a> {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
}

impl<'a> QTensor<'a> {
    pub fn new(dtype: DType, rows: usize, cols: usize, data: &'a [u8]) -> Result<Self, QuantError> {
        let want = dtype.row_bytes(cols)? * rows;
        if data.len() != want {
            return Err(QuantError::Size {
                dtype,
                rows,
                cols,
                want,
                got: data.len(),
            });
        }
        Ok(QTensor {
            dtype,
            rows,
            cols,
            data,
        })
    }

    pub fn row_bytes(&self) -> usize {
        self.data.len() / self.rows.max(1)
    }

    pub fn row(&self, r: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }

    /// Rows `r0..r1` as a tensor of their own.
    pub fn rows(&self, r0: usize, r1: usize) -> QTensor<'a> {
        let rb = self.row_bytes();
        QTensor {
            dtype: self.dtype,
            rows: r1 - r0,
            cols: self.cols,
            data: &self.data[r0 * rb..r1 * rb],
        }
    }
}

#[inline]
pub(crate) fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Expands one stored row to f32. The reference for every dequantizing kernel.
pub fn dequantize_row(dtype: DType, row: &[u8], out: &mut [f32]) {
    match dtype {
        DType::F32 => {
            for (o, c) in out.iter_mut().zip(row.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        DType::F16 => {
            for (o, c) in out.iter_mut().zip(row.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        DType::Bf16 => {
            for (o, c) in out.iter_mut().zip(row.chunks_exact(2)) {
                *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        DType::Q8_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(row.chunks_exact(34)) {
                let d = f16_at(b, 0);
                for (j, v) in o.iter_mut().enumerate() {
                    *v = d * (b[2 + j] as i8) as f32;
                }
            }
        }
        DType::Q4_1 => {
            for (o, b) in out.chunks_exact_mut(32).zip(row.chunks_exact(20)) {
                let d = f16_at(b, 0);
                let m = f16_at(b, 2);
                for j in 0..16 {
                    o[j] = d * (b[4 + j] & 0x0f) as f32 + m;
                    o[j + 16] = d * (b[4 + j] >> 4) as f32 + m;
                }
            }
        }
    }
}

/// Quantizes f32 values into `dtype` the way GGUF writers do. Used to make test weights.
pub fn quantize_row(dtype: DType, values: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    match dtype {
        DType::F32 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DType::F16 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
        DType::Bf16 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&bf16::from_f32(*v).to_le_bytes())),
        DType::Q8_0 => {
            for blk in values.chunks(32) {
                let amax = blk.iter().fold(0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let id = if d > 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend(blk.iter().map(|v| (v * id).round() as i8 as u8));
            }
        }
        DType::Q4_1 => {
            for blk in values.chunks(32) {
                let min = blk.iter().fold(f32::INFINITY, |a, v| a.min(*v));
                let max = blk.iter().fold(f32::NEG_INFINITY, |a, v| a.max(*v));
                let d = (max - min) / 15.0;
                let id = if d > 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
                let q = |v: f32| (((v - min) * id).round() as i32).clamp(0, 15) as u8;
                for j in 0..16 {
                    out.push(q(blk[j]) | (q(blk[j + 16]) << 4));
                }
            }
        }
    }
    out
}
