//! Storage formats of weights and the layout of their blocks.
//!
//! [`dequantize_row`] is the scalar reference of every format: each dequantizing kernel, on the
//! CPU and in WGSL, is tested against it, and it is tested against the `gguf` Python package's
//! dequantization of the same blocks (`shaders/tests/quant_reference.rs`).

pub mod fp8;
pub(crate) mod kquants;
pub(crate) mod legacy;

use half::{bf16, f16};

/// How a weight is stored. Quantized formats pack `block_len()` elements into `block_bytes()`;
/// the layouts are GGML's (`ggml-common.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    Bf16,
    /// 32 elements: f16 scale `d`, 32 × i8. Value = d·q.
    Q8_0,
    /// 32 elements: f16 `d`, 16 bytes of nibbles. Element `j < 16` is the low nibble of byte
    /// `j`, element `j + 16` its high nibble. Value = d·(q − 8).
    Q4_0,
    /// As Q4_0 with an f16 minimum `m` after `d`. Value = d·q + m.
    Q4_1,
    /// As Q4_0 with a fifth bit per element in a 32-bit word after `d`. Value = d·(q − 16).
    Q5_0,
    /// As Q5_0 with an f16 minimum after `d`. Value = d·q + m.
    Q5_1,
    /// 256 elements: 16 sub-blocks of 16 with 4-bit scales and minimums, 2-bit values.
    Q2K,
    /// 256 elements: 16 sub-blocks of 16 with 6-bit scales, 3-bit values.
    Q3K,
    /// 256 elements: 8 sub-blocks of 32 with 6-bit scales and minimums, 4-bit values.
    Q4K,
    /// As Q4_K with a fifth bit per element.
    Q5K,
    /// 256 elements: 16 sub-blocks of 16 with 8-bit scales, 6-bit values.
    Q6K,
    /// 32 elements: f16 `d`, 16 bytes of nibbles indexing a fixed non-linear table.
    Iq4Nl,
    /// 256 elements: 8 sub-blocks of 32 with 6-bit scales, nibbles into IQ4_NL's table.
    Iq4Xs,
    /// 128 elements: f32 scale `d`, 128 × FP8 E4M3. Value = d·q. FP8 checkpoints' weights,
    /// each row's blocks with the scale of their 128 × 128 tile ([`fp8`]); no GGUF type.
    Fp8E4M3,
    /// As Fp8E4M3 in blocks of 32: rows that are not whole tiles.
    Fp8E4M3B32,
}

/// Every format, for tests and listings.
pub const ALL_DTYPES: [DType; 17] = [
    DType::F32,
    DType::F16,
    DType::Bf16,
    DType::Q8_0,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q2K,
    DType::Q3K,
    DType::Q4K,
    DType::Q5K,
    DType::Q6K,
    DType::Iq4Nl,
    DType::Iq4Xs,
    DType::Fp8E4M3,
    DType::Fp8E4M3B32,
];

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
            DType::Q8_0 | DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 | DType::Iq4Nl => {
                32
            }
            DType::Q2K | DType::Q3K | DType::Q4K | DType::Q5K | DType::Q6K | DType::Iq4Xs => 256,
            DType::Fp8E4M3 => fp8::BLOCK,
            DType::Fp8E4M3B32 => fp8::SMALL_BLOCK,
        }
    }

    pub fn block_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::Bf16 => 2,
            DType::Q8_0 => 34,
            DType::Q4_0 | DType::Iq4Nl => 18,
            DType::Q4_1 => 20,
            DType::Q5_0 => 22,
            DType::Q5_1 => 24,
            DType::Q2K => 84,
            DType::Q3K => 110,
            DType::Q4K => 144,
            DType::Q5K => 176,
            DType::Q6K => 210,
            DType::Iq4Xs => 136,
            DType::Fp8E4M3 | DType::Fp8E4M3B32 => 4 + self.block_len(),
        }
    }

    /// Byte offsets of the f16 scales inside one block (tests fill the rest with random bytes).
    pub fn f16_fields(self) -> &'static [usize] {
        match self {
            DType::F32 | DType::F16 | DType::Bf16 | DType::Fp8E4M3 | DType::Fp8E4M3B32 => &[],
            DType::Q8_0 | DType::Q4_0 | DType::Q5_0 | DType::Iq4Nl | DType::Iq4Xs => &[0],
            DType::Q4_1 | DType::Q5_1 | DType::Q4K | DType::Q5K => &[0, 2],
            DType::Q2K => &[80, 82],
            DType::Q3K => &[108],
            DType::Q6K => &[208],
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
            DType::Q4_0 => "q4_0",
            DType::Q4_1 => "q4_1",
            DType::Q5_0 => "q5_0",
            DType::Q5_1 => "q5_1",
            DType::Q2K => "q2_k",
            DType::Q3K => "q3_k",
            DType::Q4K => "q4_k",
            DType::Q5K => "q5_k",
            DType::Q6K => "q6_k",
            DType::Iq4Nl => "iq4_nl",
            DType::Iq4Xs => "iq4_xs",
            DType::Fp8E4M3 => "fp8_e4m3",
            DType::Fp8E4M3B32 => "fp8_e4m3_b32",
        }
    }

    /// GGML's number for the format, as GGUF files store it; Baton's own, past GGML's, for a
    /// format GGUF lacks ([`DType::in_gguf`]). The kernels are specialised by it.
    pub fn ggml_type(self) -> u32 {
        match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::Q4_0 => 2,
            DType::Q4_1 => 3,
            DType::Q5_0 => 6,
            DType::Q5_1 => 7,
            DType::Q8_0 => 8,
            DType::Q2K => 10,
            DType::Q3K => 11,
            DType::Q4K => 12,
            DType::Q5K => 13,
            DType::Q6K => 14,
            DType::Iq4Nl => 20,
            DType::Iq4Xs => 23,
            DType::Bf16 => 30,
            DType::Fp8E4M3 => 1000,
            DType::Fp8E4M3B32 => 1001,
        }
    }

    /// Whether GGUF files may hold the format.
    pub fn in_gguf(self) -> bool {
        !self.is_fp8()
    }

    /// Whether it is one of the FP8 block formats ([`fp8`]).
    pub fn is_fp8(self) -> bool {
        matches!(self, DType::Fp8E4M3 | DType::Fp8E4M3B32)
    }

    /// The format GGML numbers `kind`, when it is one Baton runs.
    pub fn from_ggml_type(kind: u32) -> Option<DType> {
        ALL_DTYPES
            .into_iter()
            .find(|d| d.in_gguf() && d.ggml_type() == kind)
    }
}

/// A row-major matrix of `rows` rows of `cols` elements in its stored format: a linear layer's
/// weight is `[out_features, in_features]`.
#[derive(Clone, Copy, Debug)]
/// Built only by [`QTensor::new`] (or [`QTensor::rows`]), which check the bytes against the
/// shape: kernels read rows by that shape without further checks.
#[non_exhaustive]
pub struct QTensor<'a> {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
}

impl<'a> QTensor<'a> {
    pub fn new(dtype: DType, rows: usize, cols: usize, data: &'a [u8]) -> Result<Self, QuantError> {
        let want = dtype.row_bytes(cols)?.checked_mul(rows);
        if want != Some(data.len()) {
            let want = want.unwrap_or(usize::MAX);
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

/// Expands one block (`block_bytes()` bytes) into `block_len()` values.
pub fn dequantize_block(dtype: DType, b: &[u8], out: &mut [f32]) {
    match dtype {
        DType::F32 => out[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        DType::F16 => out[0] = f16_at(b, 0),
        DType::Bf16 => out[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        DType::Q8_0 => legacy::q8_0(b, out),
        DType::Q4_0 => legacy::q4_0(b, out),
        DType::Q4_1 => legacy::q4_1(b, out),
        DType::Q5_0 => legacy::q5_0(b, out),
        DType::Q5_1 => legacy::q5_1(b, out),
        DType::Iq4Nl => legacy::iq4_nl(b, out),
        DType::Q2K => kquants::q2_k(b, out),
        DType::Q3K => kquants::q3_k(b, out),
        DType::Q4K => kquants::q4_k(b, out),
        DType::Q5K => kquants::q5_k(b, out),
        DType::Q6K => kquants::q6_k(b, out),
        DType::Iq4Xs => kquants::iq4_xs(b, out),
        DType::Fp8E4M3 | DType::Fp8E4M3B32 => fp8::block(b, out),
    }
}

/// Expands one stored row to f32. The reference for every dequantizing kernel.
pub fn dequantize_row(dtype: DType, row: &[u8], out: &mut [f32]) {
    let (n, bytes) = (dtype.block_len(), dtype.block_bytes());
    for (o, b) in out.chunks_exact_mut(n).zip(row.chunks_exact(bytes)) {
        dequantize_block(dtype, b, o);
    }
}

/// Quantizes f32 values into `dtype` the way GGUF writers do, for the formats tests and the
/// synthetic-model example write (f32, f16, bf16, Q8_0, Q4_1, and FP8 blocks); `None` for the
/// others, whose test data are random blocks ([`DType::f16_fields`]).
pub fn quantize_row(dtype: DType, values: &[f32]) -> Option<Vec<u8>> {
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
        DType::Fp8E4M3 | DType::Fp8E4M3B32 => fp8::quantize(values, dtype.block_len(), &mut out),
        _ => return None,
    }
    Some(out)
}

/// `rows` random rows of `cols` elements in `dtype`: random bytes with every f16 scale set to
/// a small finite value from `scale(i)`. Test data for formats [`quantize_row`] does not write.
pub fn random_rows(
    dtype: DType,
    rows: usize,
    cols: usize,
    mut byte: impl FnMut() -> u8,
    mut scale: impl FnMut() -> f32,
) -> Vec<u8> {
    let n = rows * cols / dtype.block_len();
    let bb = dtype.block_bytes();
    let mut out: Vec<u8> = (0..n * bb).map(|_| byte()).collect();
    if dtype.block_len() == 1 {
        // Plain floats: every element is a scale.
        for c in out.chunks_exact_mut(bb) {
            let v = scale();
            match dtype {
                DType::F32 => c.copy_from_slice(&v.to_le_bytes()),
                DType::F16 => c.copy_from_slice(&f16::from_f32(v).to_le_bytes()),
                _ => c.copy_from_slice(&bf16::from_f32(v).to_le_bytes()),
            }
        }
        return out;
    }
    for blk in out.chunks_exact_mut(bb) {
        for &o in dtype.f16_fields() {
            blk[o..o + 2].copy_from_slice(&f16::from_f32(scale()).to_le_bytes());
        }
        if dtype.is_fp8() {
            blk[..4].copy_from_slice(&scale().to_le_bytes());
            // No NaNs among the values.
            blk[4..].iter_mut().for_each(|b| *b &= 0xf7);
        }
    }
    out
}
