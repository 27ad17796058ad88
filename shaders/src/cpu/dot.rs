//! Dot products of one stored weight row with one f32 vector: the inner loop of decode.
//!
//! Each format has a portable version and, on x86-64, an AVX2/FMA/F16C version chosen once per
//! call of [`Dot::new`]. The portable versions are the reference the SIMD ones are tested against.

use crate::quant::{dequantize_block, f16_at, DType};

/// Sums of `x` over each 32-element block: the minimums of Q4_1, Q5_1, Q4_K and Q5_K multiply
/// them, so they are computed once per vector rather than once per row.
pub fn block_sums(x: &[f32]) -> Vec<f32> {
    x.chunks(32).map(|c| c.iter().sum()).collect()
}

/// A dot-product routine for one format, with the instruction set settled up front.
#[derive(Clone, Copy)]
pub struct Dot {
    dtype: DType,
    simd: bool,
}

impl Dot {
    pub fn new(dtype: DType) -> Self {
        Dot {
            dtype,
            simd: simd_available(),
        }
    }

    pub fn portable(dtype: DType) -> Self {
        Dot { dtype, simd: false }
    }

    /// `row · x`. `xs` holds [`block_sums`] of `x` (formats with minimums read it).
    #[inline]
    pub fn dot(&self, row: &[u8], x: &[f32], xs: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if self.simd {
            // SAFETY: `simd` is only set when the CPU reports AVX2, FMA and F16C; the kernels
            // read exactly `x.len()` elements of `x` and the matching bytes of `row`, whose sizes
            // the callers checked through `QTensor::new`.
            unsafe {
                return match self.dtype {
                    DType::F32 => x86::dot_f32(row, x),
                    DType::F16 => x86::dot_f16(row, x),
                    DType::Bf16 => x86::dot_bf16(row, x),
                    DType::Q8_0 => x86::dot_q8_0(row, x),
                    DType::Q4_1 => x86::dot_q4_1(row, x, xs),
                    DType::Q4_0 => super::dot_x86::dot_q4_0(row, x),
                    DType::Q5_0 => super::dot_x86::dot_q5_0(row, x),
                    DType::Q5_1 => super::dot_x86::dot_q5_1(row, x, xs),
                    DType::Iq4Nl => super::dot_x86::dot_iq4_nl(row, x),
                    DType::Q4K => super::dot_x86::dot_q4_k(row, x, xs),
                    DType::Q5K => super::dot_x86::dot_q5_k(row, x, xs),
                    DType::Q6K => super::dot_x86::dot_q6_k(row, x),
                    _ => by_blocks(self.dtype, row, x, |w, x| {
                        x86::dot_f32(bytemuck::cast_slice(w), x)
                    }),
                };
            }
        }
        portable_dot(self.dtype, row, x, xs)
    }
}

fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn portable_dot(dtype: DType, row: &[u8], x: &[f32], xs: &[f32]) -> f32 {
    match dtype {
        DType::Q8_0 => row
            .chunks_exact(34)
            .zip(x.chunks_exact(32))
            .map(|(b, xb)| {
                let s: f32 = xb
                    .iter()
                    .enumerate()
                    .map(|(j, v)| (b[2 + j] as i8) as f32 * v)
                    .sum();
                f16_at(b, 0) * s
            })
            .sum(),
        DType::Q4_1 => row
            .chunks_exact(20)
            .zip(x.chunks_exact(32))
            .zip(xs)
            .map(|((b, xb), s)| {
                let mut acc = 0f32;
                for j in 0..16 {
                    acc += (b[4 + j] & 0x0f) as f32 * xb[j] + (b[4 + j] >> 4) as f32 * xb[j + 16];
                }
                f16_at(b, 0) * acc + f16_at(b, 2) * s
            })
            .sum(),
        _ => by_blocks(dtype, row, x, |w, x| {
            w.iter().zip(x).map(|(a, b)| a * b).sum()
        }),
    }
}

/// `row · x` for any format: each block is expanded into a buffer on the stack and dotted with
/// its part of `x` by `dot`. Formats without a kernel of their own take this path.
#[inline]
fn by_blocks(dtype: DType, row: &[u8], x: &[f32], dot: impl Fn(&[f32], &[f32]) -> f32) -> f32 {
    let (n, bytes) = (dtype.block_len(), dtype.block_bytes());
    if n == 1 {
        let mut buf = [0f32; 64];
        let mut s = 0f32;
        for (b, xb) in row.chunks(64 * bytes).zip(x.chunks(64)) {
            for (v, e) in buf.iter_mut().zip(b.chunks_exact(bytes)) {
                dequantize_block(dtype, e, std::slice::from_mut(v));
            }
            s += dot(&buf[..xb.len()], xb);
        }
        return s;
    }
    let mut buf = [0f32; 256];
    let buf = &mut buf[..n];
    let mut s = 0f32;
    for (b, xb) in row.chunks_exact(bytes).zip(x.chunks_exact(n)) {
        dequantize_block(dtype, b, buf);
        s += dot(buf, xb);
    }
    s
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::dot_x86::hsum;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f32(row: &[u8], x: &[f32]) -> f32 {
        let n = x.len();
        let w = row.as_ptr() as *const f32;
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            acc = _mm256_fmadd_ps(
                _mm256_loadu_ps(w.add(i)),
                _mm256_loadu_ps(x.as_ptr().add(i)),
                acc,
            );
            i += 8;
        }
        let mut s = hsum(acc);
        while i < n {
            s += w.add(i).read_unaligned() * x[i];
            i += 1;
        }
        s
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16(row: &[u8], x: &[f32]) -> f32 {
        let n = x.len();
        let w = row.as_ptr();
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            let h = _mm_loadu_si128(w.add(2 * i) as *const __m128i);
            acc = _mm256_fmadd_ps(_mm256_cvtph_ps(h), _mm256_loadu_ps(x.as_ptr().add(i)), acc);
            i += 8;
        }
        let mut s = hsum(acc);
        while i < n {
            s += super::f16_at(row, 2 * i) * x[i];
            i += 1;
        }
        s
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_bf16(row: &[u8], x: &[f32]) -> f32 {
        let n = x.len();
        let w = row.as_ptr();
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            let h = _mm_loadu_si128(w.add(2 * i) as *const __m128i);
            let f = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
            acc = _mm256_fmadd_ps(f, _mm256_loadu_ps(x.as_ptr().add(i)), acc);
            i += 8;
        }
        let mut s = hsum(acc);
        while i < n {
            let b = half::bf16::from_le_bytes([row[2 * i], row[2 * i + 1]]);
            s += b.to_f32() * x[i];
            i += 1;
        }
        s
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q8_0(row: &[u8], x: &[f32]) -> f32 {
        let nb = x.len() / 32;
        // Two accumulators and two product chains per block, as in `dot_q4_1`.
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        for b in 0..nb {
            let p = row.as_ptr().add(b * 34);
            let d = _mm_cvtph_ps(_mm_cvtsi32_si128((p as *const u16).read_unaligned() as i32));
            let q = _mm256_loadu_si256(p.add(2) as *const __m256i);
            let xp = x.as_ptr().add(b * 32);
            let lo = _mm256_castsi256_si128(q);
            let hi = _mm256_extracti128_si256(q, 1);
            let q0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
            let q1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)));
            let q2 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
            let q3 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)));
            let t0 = _mm256_fmadd_ps(
                q2,
                _mm256_loadu_ps(xp.add(16)),
                _mm256_mul_ps(q0, _mm256_loadu_ps(xp)),
            );
            let t1 = _mm256_fmadd_ps(
                q3,
                _mm256_loadu_ps(xp.add(24)),
                _mm256_mul_ps(q1, _mm256_loadu_ps(xp.add(8))),
            );
            let d = _mm256_broadcastss_ps(d);
            acc0 = _mm256_fmadd_ps(d, t0, acc0);
            acc1 = _mm256_fmadd_ps(d, t1, acc1);
        }
        hsum(_mm256_add_ps(acc0, acc1))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q4_1(row: &[u8], x: &[f32], xs: &[f32]) -> f32 {
        let nb = x.len() / 32;
        let mask = _mm_set1_epi8(0x0f);
        // Two accumulators and two product chains per block keep the FMA pipes busy instead
        // of waiting on one long dependency chain.
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut macc = _mm_setzero_ps();
        for b in 0..nb {
            let p = row.as_ptr().add(b * 20);
            // d and m are adjacent f16s: convert both at once.
            let dm = _mm_cvtph_ps(_mm_cvtsi32_si128((p as *const i32).read_unaligned()));
            let q = _mm_loadu_si128(p.add(4) as *const __m128i);
            let lo = _mm_and_si128(q, mask);
            let hi = _mm_and_si128(_mm_srli_epi16(q, 4), mask);
            let xp = x.as_ptr().add(b * 32);
            let l0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
            let l1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));
            let h0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
            let h1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));
            let t0 = _mm256_fmadd_ps(
                h0,
                _mm256_loadu_ps(xp.add(16)),
                _mm256_mul_ps(l0, _mm256_loadu_ps(xp)),
            );
            let t1 = _mm256_fmadd_ps(
                h1,
                _mm256_loadu_ps(xp.add(24)),
                _mm256_mul_ps(l1, _mm256_loadu_ps(xp.add(8))),
            );
            let d = _mm256_broadcastss_ps(dm);
            acc0 = _mm256_fmadd_ps(d, t0, acc0);
            acc1 = _mm256_fmadd_ps(d, t1, acc1);
            // m · Σx for this block, accumulated in lane 1.
            macc = _mm_fmadd_ps(dm, _mm_set1_ps(*xs.get_unchecked(b)), macc);
        }
        let m: [f32; 4] = std::mem::transmute(macc);
        hsum(_mm256_add_ps(acc0, acc1)) + m[1]
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::quant::{dequantize_row, quantize_row, random_rows, ALL_DTYPES};
    use rand::{Rng, SeedableRng};

    /// A row of `dtype`: quantized from uniform values where a writer exists, random blocks
    /// otherwise.
    pub(crate) fn test_row(rng: &mut rand::rngs::StdRng, dtype: DType, cols: usize) -> Vec<u8> {
        let w: Vec<f32> = (0..cols).map(|_| rng.random_range(-1.0..1.0)).collect();
        quantize_row(dtype, &w).unwrap_or_else(|| {
            let mut r2 = rand::rngs::StdRng::seed_from_u64(rng.random());
            let mut r3 = rand::rngs::StdRng::seed_from_u64(rng.random());
            random_rows(
                dtype,
                1,
                cols,
                || r2.random(),
                || r3.random_range(-0.002..0.002),
            )
        })
    }

    #[test]
    fn simd_matches_portable_and_dequantized() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for dtype in ALL_DTYPES {
            for cols in [256usize, 512, 768, 1536, 2048] {
                let x: Vec<f32> = (0..cols).map(|_| rng.random_range(-2.0..2.0)).collect();
                let row = test_row(&mut rng, dtype, cols);
                let mut deq = vec![0f32; cols];
                dequantize_row(dtype, &row, &mut deq);
                let want: f64 = deq
                    .iter()
                    .zip(&x)
                    .map(|(a, b)| (*a as f64) * (*b as f64))
                    .sum();
                let xs = block_sums(&x);
                let p = Dot::portable(dtype).dot(&row, &x, &xs);
                let s = Dot::new(dtype).dot(&row, &x, &xs);
                let mag: f64 = deq.iter().zip(&x).map(|(a, b)| (a * b).abs() as f64).sum();
                let tol = 1e-5 * mag + 1e-4;
                assert!(
                    ((p as f64) - want).abs() < tol,
                    "{dtype:?} {cols}: portable {p} vs {want}"
                );
                assert!(
                    ((s as f64) - want).abs() < tol,
                    "{dtype:?} {cols}: simd {s} vs {want}"
                );
            }
        }
    }
}
