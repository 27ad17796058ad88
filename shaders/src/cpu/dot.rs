//! Dot products of one stored weight row with one activation vector: the inner loop of decode.
//!
//! Each format has a portable version over the f32 activation, the reference, and on x86-64 an
//! AVX2 version chosen once per call of [`Dot::new`]: the quantized formats multiply their
//! integers with the activation's 15-bit integer copy ([`Activation`], `dot_int.rs`), float
//! weights and the formats without a kernel of their own use the f32 values.

use super::act::Activation;
use crate::quant::{dequantize_block, f16_at, DType};

/// A quantized format's integer kernel.
pub(super) type IntKernel = unsafe fn(&[u8], &Activation) -> f32;
/// The same for four activations at once: the row is read and unpacked once, and each
/// activation gets exactly what [`IntKernel`] gives it.
pub(super) type IntKernel4 = unsafe fn(&[u8], &[&Activation; 4]) -> [f32; 4];

/// A dot-product routine for one format, with the instruction set settled up front.
#[derive(Clone, Copy)]
pub struct Dot {
    dtype: DType,
    /// The AVX2/FMA/F16C float kernels may run.
    simd: bool,
    /// The integer kernels for `dtype` on this CPU.
    int: Option<(IntKernel, IntKernel4)>,
}

impl Dot {
    pub fn new(dtype: DType) -> Self {
        let simd = simd_available();
        Dot {
            dtype,
            simd,
            int: if simd { int_kernel(dtype) } else { None },
        }
    }

    pub fn portable(dtype: DType) -> Self {
        Dot {
            dtype,
            simd: false,
            int: None,
        }
    }

    /// `row · a.x`.
    #[inline]
    pub fn dot(&self, row: &[u8], a: &Activation) -> f32 {
        if let Some((kernel, _)) = self.int {
            // SAFETY: `int_kernel` only hands out kernels whose instruction sets the CPU
            // reports; they read `a.x.len()` elements of the activation and the matching bytes
            // of `row`, whose sizes the callers checked through `QTensor::new`.
            return unsafe { kernel(row, a) };
        }
        #[cfg(target_arch = "x86_64")]
        if self.simd {
            use super::dot_x86 as float;
            let x = a.x;
            // SAFETY: `simd` is only set when the CPU reports AVX2, FMA and F16C; as above for
            // the sizes.
            unsafe {
                return match self.dtype {
                    DType::F32 => float::dot_f32(row, x),
                    DType::F16 => float::dot_f16(row, x),
                    DType::Bf16 => float::dot_bf16(row, x),
                    _ => by_blocks(self.dtype, row, x, |w, x| {
                        float::dot_f32(bytemuck::cast_slice(w), x)
                    }),
                };
            }
        }
        portable_dot(self.dtype, row, a.x, &a.sums)
    }

    /// `row · a.x` for four activations of the same length: each result is exactly what
    /// [`Dot::dot`] gives, the row read once where the format has an integer kernel.
    #[inline]
    pub fn dot4(&self, row: &[u8], acts: &[&Activation; 4]) -> [f32; 4] {
        if let Some((_, kernel)) = self.int {
            debug_assert!(acts.iter().all(|a| a.x.len() == acts[0].x.len()));
            // SAFETY: as in `dot`, for each of the four activations, all of one length.
            return unsafe { kernel(row, acts) };
        }
        acts.map(|a| self.dot(row, a))
    }
}

/// The integer kernels for `dtype`: AVX-512 VNNI where the CPU has it, else AVX2.
fn int_kernel(dtype: DType) -> Option<(IntKernel, IntKernel4)> {
    #[cfg(target_arch = "x86_64")]
    {
        use super::dot_int::{avx2, vnni};
        if vnni_available() {
            vnni::kernel(dtype)
        } else {
            avx2::kernel(dtype)
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = dtype;
        None
    }
}

#[cfg(target_arch = "x86_64")]
fn vnni_available() -> bool {
    std::is_x86_feature_detected!("avx512vnni") && std::is_x86_feature_detected!("avx512vl")
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

#[cfg(test)]
pub(crate) mod tests {
    use super::super::act::Activation;
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

    type DotFn = Box<dyn Fn(&[u8], &Activation) -> f32>;

    /// Every kernel this CPU can run for `dtype` besides the portable one: what `Dot::new`
    /// picks, and each integer kernel by name, so that a CPU with VNNI tests the AVX2 ones too.
    fn simd_dots(dtype: DType) -> Vec<(&'static str, DotFn)> {
        let dot = Dot::new(dtype);
        let mut all: Vec<(&'static str, DotFn)> =
            vec![("Dot::new", Box::new(move |r, a| dot.dot(r, a)))];
        #[cfg(target_arch = "x86_64")]
        {
            use super::super::dot_int::{avx2, vnni};
            let mut add = |name, kernel: Option<(IntKernel, IntKernel4)>| {
                if let Some((k, _)) = kernel {
                    // SAFETY: only kernels whose instruction sets the CPU reports.
                    all.push((name, Box::new(move |r, a| unsafe { k(r, a) })));
                }
            };
            if simd_available() {
                add("avx2", avx2::kernel(dtype));
            }
            if simd_available() && vnni_available() {
                add("vnni", vnni::kernel(dtype));
            }
        }
        all
    }

    /// `row · x` in f64 from the dequantized row, and Σ|wᵢ·xᵢ|.
    fn reference(dtype: DType, row: &[u8], x: &[f32]) -> (f64, f64) {
        let mut deq = vec![0f32; x.len()];
        dequantize_row(dtype, row, &mut deq);
        let want = deq
            .iter()
            .zip(x)
            .map(|(a, b)| (*a as f64) * (*b as f64))
            .sum();
        let mag = deq.iter().zip(x).map(|(a, b)| (a * b).abs() as f64).sum();
        (want, mag)
    }

    /// The bytes of each block that hold a format's unsigned integers, for the formats whose
    /// integer kernels multiply those integers as they are and take the zero point (bias or
    /// minimum) out in f32.
    fn integer_bytes(dtype: DType) -> Option<std::ops::Range<usize>> {
        Some(match dtype {
            DType::Q4_0 | DType::Q5_0 => 2..dtype.block_bytes(),
            DType::Q4_1 | DType::Q5_1 => 4..dtype.block_bytes(),
            DType::Q4K | DType::Q5K => 16..dtype.block_bytes(),
            DType::Q6K => 0..192,
            _ => return None,
        })
    }

    /// What rounding the activation to its integer copy may move `row · x` by: 3/4 of a step
    /// of each element's block (see `act.rs`) times the integer part of its weight,
    /// `w - w(q = 0)`.
    pub(crate) fn rounding_bound(dtype: DType, row: &[u8], a: &Activation) -> f64 {
        let mut w = vec![0f32; a.x.len()];
        dequantize_row(dtype, row, &mut w);
        let mut w0 = vec![0f32; a.x.len()];
        if let Some(ints) = integer_bytes(dtype) {
            let mut zeroed = row.to_vec();
            for b in zeroed.chunks_exact_mut(dtype.block_bytes()) {
                b[ints.clone()].fill(0);
            }
            dequantize_row(dtype, &zeroed, &mut w0);
        }
        w.iter()
            .zip(&w0)
            .enumerate()
            .map(|(i, (w, w0))| 0.75 * ((w - w0).abs() * a.scales[i / 32]) as f64)
            .sum()
    }

    #[test]
    fn simd_matches_portable_and_dequantized() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for dtype in ALL_DTYPES {
            for cols in [256usize, 512, 768, 1536, 2048] {
                let mut x: Vec<f32> = (0..cols).map(|_| rng.random_range(-2.0..2.0)).collect();
                // An outlier, as real activations have, that sets its block's scale.
                x[cols / 3] = 40.0;
                let row = test_row(&mut rng, dtype, cols);
                let (want, mag) = reference(dtype, &row, &x);
                let a = Activation::new(&x);
                let p = Dot::portable(dtype).dot(&row, &a);
                let tol = 1e-5 * mag + 1e-4;
                assert!(
                    ((p as f64) - want).abs() < tol,
                    "{dtype:?} {cols}: portable {p} vs {want}"
                );
                let simd_tol = tol + rounding_bound(dtype, &row, &a);
                for (name, dot) in simd_dots(dtype) {
                    let s = dot(&row, &a);
                    assert!(
                        ((s as f64) - want).abs() < simd_tol,
                        "{dtype:?} {cols}: {name} {s} vs {want} (tolerance {simd_tol})"
                    );
                }
            }
        }
    }

    /// Four activations at once get, each, exactly what each gets alone, from every kernel this
    /// CPU runs.
    #[test]
    fn four_activations_at_once_get_what_each_gets_alone() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for dtype in ALL_DTYPES {
            let cols = 768;
            let row = test_row(&mut rng, dtype, cols);
            let xs: Vec<Vec<f32>> = (0..4)
                .map(|i| {
                    let mut x: Vec<f32> = (0..cols).map(|_| rng.random_range(-2.0..2.0)).collect();
                    x[(i * 97) % cols] = 30.0;
                    x
                })
                .collect();
            let acts: Vec<Activation> = xs.iter().map(|x| Activation::new(x)).collect();
            let four = [&acts[0], &acts[1], &acts[2], &acts[3]];
            let dot = Dot::new(dtype);
            let alone: Vec<u32> = acts.iter().map(|a| dot.dot(&row, a).to_bits()).collect();
            let together: Vec<u32> = dot.dot4(&row, &four).iter().map(|v| v.to_bits()).collect();
            assert_eq!(together, alone, "{dtype:?}: Dot::dot4");
            #[cfg(target_arch = "x86_64")]
            {
                use super::super::dot_int::{avx2, vnni};
                let mut kernels = Vec::new();
                if simd_available() {
                    kernels.extend(avx2::kernel(dtype).map(|k| ("avx2", k)));
                }
                if simd_available() && vnni_available() {
                    kernels.extend(vnni::kernel(dtype).map(|k| ("vnni", k)));
                }
                for (name, (one, four_at_once)) in kernels {
                    // SAFETY: only kernels whose instruction sets the CPU reports.
                    let (alone, together) =
                        unsafe { (four.map(|a| one(&row, a)), four_at_once(&row, &four)) };
                    assert_eq!(
                        together.map(f32::to_bits),
                        alone.map(f32::to_bits),
                        "{dtype:?}: {name}"
                    );
                }
            }
        }
    }

    /// The extremes of both operands: weights at their largest magnitude (Q8_0's -128) against
    /// activations at ±amax, where a 16-bit pair sum would overflow if the integer copy were
    /// one bit wider.
    #[test]
    fn extreme_weights_and_activations_do_not_saturate() {
        for dtype in ALL_DTYPES {
            let (n, bytes) = (dtype.block_len(), dtype.block_bytes());
            if n < 32 {
                continue;
            }
            for fill in [0x00u8, 0x80, 0xff, 0x77] {
                let mut row = vec![fill; 2 * bytes];
                // Keep scales finite and positive: f16 1.0 wherever a format keeps one first
                // (FP8's first is an f32).
                for b in row.chunks_exact_mut(bytes) {
                    if dtype.is_fp8() {
                        b[..4].copy_from_slice(&1f32.to_le_bytes());
                    } else if !matches!(dtype, DType::Q6K | DType::Q2K | DType::Q3K) {
                        b[0] = 0x00;
                        b[1] = 0x3c;
                    }
                }
                for sign in [1f32, -1.0] {
                    let x: Vec<f32> = (0..2 * n).map(|i| sign * (1.0 + (i % 2) as f32)).collect();
                    let (want, mag) = reference(dtype, &row, &x);
                    if !want.is_finite() {
                        continue;
                    }
                    let a = Activation::new(&x);
                    let s = Dot::new(dtype).dot(&row, &a) as f64;
                    let tol = 1e-5 * mag + 1e-4 + rounding_bound(dtype, &row, &a);
                    assert!(
                        (s - want).abs() <= tol,
                        "{dtype:?} {fill:#x} {sign}: {s} vs {want}"
                    );
                }
            }
        }
    }
}
