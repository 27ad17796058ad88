//! AVX2 and AVX-512 VNNI dot products of quantized weight rows with an [`Activation`]'s 22-bit
//! integer copy.
//!
//! Weights stay in bytes; `vpdpbusd` (or `vpmaddubsw` and `vpmaddwd`) multiplies 32 unsigned
//! weight bytes with each of the activation's three bytes into exact 32-bit sums, so a block of
//! 32 costs a handful of instructions instead of widening every weight to f32. Block and sub-block
//! scales (the weight's and the activation's) are applied in f32; signed formats are written
//! as unsigned values with a bias that the activation's f32 sums take out, or (Q8_0, IQ4_NL)
//! through the sign trick. Tested against the scalar reference in `dot.rs`.

use std::arch::x86_64::*;

use super::act::Activation;
use super::dot_x86::hsum;

#[inline(always)]
unsafe fn f16_to_f32(p: *const u8) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
        (p as *const u16).read_unaligned() as i32,
    )))
}

/// How 32 unsigned weight bytes `u` meet an activation's 32 `top`, `mid` and `low` bytes:
/// `Σ u·(16384·top + 128·mid + low)` over each four consecutive bytes, as eight 32-bit lanes
/// (at most 4 · 128 · 2,080,767 < 2³¹ in magnitude).
pub trait Mul {
    unsafe fn dot4(u: __m256i, top: __m256i, mid: __m256i, low: __m256i) -> __m256i;
}

/// AVX2: `vpmaddubsw` into 16-bit pair sums (at most 2·128·127, no saturation), widened and
/// weighted by `vpmaddwd`.
pub struct Avx2;

impl Mul for Avx2 {
    #[inline(always)]
    unsafe fn dot4(u: __m256i, top: __m256i, mid: __m256i, low: __m256i) -> __m256i {
        let t = _mm256_madd_epi16(_mm256_maddubs_epi16(u, top), _mm256_set1_epi16(16384));
        let m = _mm256_madd_epi16(_mm256_maddubs_epi16(u, mid), _mm256_set1_epi16(128));
        let l = _mm256_madd_epi16(_mm256_maddubs_epi16(u, low), _mm256_set1_epi16(1));
        _mm256_add_epi32(_mm256_add_epi32(t, m), l)
    }
}

/// AVX-512 VNNI on 256-bit registers: `vpdpbusd` sums four byte products into 32 bits at once.
pub struct Vnni;

impl Mul for Vnni {
    #[inline(always)]
    unsafe fn dot4(u: __m256i, top: __m256i, mid: __m256i, low: __m256i) -> __m256i {
        let t = _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, top);
        let m = _mm256_dpbusd_epi32(_mm256_slli_epi32(t, 7), u, mid);
        _mm256_dpbusd_epi32(_mm256_slli_epi32(m, 7), u, low)
    }
}

/// The activation's three bytes of elements `at..at + 32`.
#[inline(always)]
unsafe fn act32(a: &Activation, at: usize) -> [__m256i; 3] {
    [
        _mm256_loadu_si256(a.top.as_ptr().add(at) as *const __m256i),
        _mm256_loadu_si256(a.mid.as_ptr().add(at) as *const __m256i),
        _mm256_loadu_si256(a.low.as_ptr().add(at) as *const __m256i),
    ]
}

/// `Σ q[i]·a.q(i)` over the 32 unsigned bytes of `q` (each below 128) and activation elements
/// `at..at + 32`, as eight 32-bit sums: lanes 0..4 hold elements 0..16, lanes 4..8 elements
/// 16..32.
#[inline(always)]
unsafe fn mul32<M: Mul>(q: __m256i, a: &Activation, at: usize) -> __m256i {
    let [t, m, l] = act32(a, at);
    M::dot4(q, t, m, l)
}

/// As [`mul32`] for signed weight bytes (-128..=127): their magnitudes times the activation
/// bytes with the weights' signs.
#[inline(always)]
unsafe fn mul32_signed<M: Mul>(q: __m256i, a: &Activation, at: usize) -> __m256i {
    let [t, m, l] = act32(a, at);
    M::dot4(
        _mm256_sign_epi8(q, q),
        _mm256_sign_epi8(t, q),
        _mm256_sign_epi8(m, q),
        _mm256_sign_epi8(l, q),
    )
}

/// How far ahead of the block being multiplied the kernels ask for weights. Decode streams
/// every weight once, so without it each core waits on memory; on a 2-core Xeon this took a 1B
/// Q4_K_M from 16.6 to 22.1 tokens/s (1,024 bytes: 19.4; 2,048: 21.3; 8,192: no better).
const PREFETCH: usize = 4096;

/// Asks for the `bytes` of weights [`PREFETCH`] bytes ahead of `p`, one cache line at a time.
/// Past the end of the weights this only asks for lines nobody reads: prefetches never fault.
#[inline(always)]
unsafe fn prefetch(p: *const u8, bytes: usize) {
    let ahead = p.wrapping_add(PREFETCH);
    let mut i = 0;
    while i < bytes {
        _mm_prefetch(ahead.wrapping_add(i) as *const i8, _MM_HINT_T0);
        i += 64;
    }
}

/// The 32 nibbles of 16 bytes at `p` in element order: low nibbles, then high ones.
#[inline(always)]
unsafe fn nibbles32(p: *const u8) -> __m256i {
    let q = _mm_loadu_si128(p as *const __m128i);
    let mask = _mm_set1_epi8(0x0f);
    let lo = _mm_and_si128(q, mask);
    let hi = _mm_and_si128(_mm_srli_epi16(q, 4), mask);
    _mm256_set_m128i(hi, lo)
}

/// 32 bytes, byte `j` 0x10 where bit `j` of `bits` is set and 0 elsewhere.
#[inline(always)]
unsafe fn fifth_bits(bits: u32) -> __m256i {
    let shuf = _mm256_setr_epi64x(
        0,
        0x0101_0101_0101_0101,
        0x0202_0202_0202_0202,
        0x0303_0303_0303_0303,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(bits as i32), shuf);
    let others = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe_u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_or_si256(bytes, others), _mm256_set1_epi64x(-1));
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// What a 32-element block adds beside its scaled integer products.
#[derive(Clone, Copy)]
enum Zero {
    /// Nothing: the integers are signed.
    None,
    /// `-bias · d · Σx`: the integers are stored `bias` above their values.
    Bias(f32),
    /// `m · Σx`, with `m` the f16 at byte 2.
    Min,
}

/// Block `b` of [`dot_blocks32`] for each activation: its scaled products, and what its zero
/// point adds. The weights are read and unpacked once for all the activations.
#[inline(always)]
unsafe fn block32<M: Mul, const N: usize>(
    row: &[u8],
    acts: &[&Activation; N],
    bytes: usize,
    b: usize,
    zero: Zero,
    signed: bool,
    q: &impl Fn(*const u8) -> __m256i,
) -> ([__m256; N], [f32; N]) {
    let p = row.as_ptr().add(b * bytes);
    prefetch(p, 1);
    let d = f16_to_f32(p);
    let w = q(p);
    let min = match zero {
        Zero::Min => f16_to_f32(p.add(2)),
        _ => 0.0,
    };
    let mut scaled = [_mm256_setzero_ps(); N];
    let mut extra = [0f32; N];
    for t in 0..N {
        let a = acts[t];
        let s = if signed {
            mul32_signed::<M>(w, a, 32 * b)
        } else {
            mul32::<M>(w, a, 32 * b)
        };
        scaled[t] = _mm256_mul_ps(
            _mm256_cvtepi32_ps(s),
            _mm256_set1_ps(d * a.scales.get_unchecked(b)),
        );
        extra[t] = match zero {
            Zero::None => 0.0,
            Zero::Bias(k) => -k * d * a.sums.get_unchecked(b),
            Zero::Min => min * a.sums.get_unchecked(b),
        };
    }
    (scaled, extra)
}

/// The 32-element formats, with one f16 scale `d` at byte 0 and `bytes` per block: `q(p)` is
/// the block's 32 integers, unsigned or (`signed`) signed. Blocks alternate between two
/// accumulators so that neither waits on the other's latency. Each activation's sum is
/// computed in the same order whatever `N`: a row times several activations at once gives
/// each exactly what it gets alone.
#[inline(always)]
unsafe fn dot_blocks32<M: Mul, const N: usize>(
    row: &[u8],
    acts: &[&Activation; N],
    bytes: usize,
    zero: Zero,
    signed: bool,
    q: impl Fn(*const u8) -> __m256i,
) -> [f32; N] {
    let n = acts[0].x.len() / 32;
    let (mut acc0, mut acc1) = ([_mm256_setzero_ps(); N], [_mm256_setzero_ps(); N]);
    let (mut e0, mut e1) = ([0f32; N], [0f32; N]);
    let mut b = 0;
    while b + 1 < n {
        let (s0, x0) = block32::<M, N>(row, acts, bytes, b, zero, signed, &q);
        let (s1, x1) = block32::<M, N>(row, acts, bytes, b + 1, zero, signed, &q);
        for t in 0..N {
            acc0[t] = _mm256_add_ps(acc0[t], s0[t]);
            acc1[t] = _mm256_add_ps(acc1[t], s1[t]);
            (e0[t], e1[t]) = (e0[t] + x0[t], e1[t] + x1[t]);
        }
        b += 2;
    }
    if b < n {
        let (s0, x0) = block32::<M, N>(row, acts, bytes, b, zero, signed, &q);
        for t in 0..N {
            acc0[t] = _mm256_add_ps(acc0[t], s0[t]);
            e0[t] += x0[t];
        }
    }
    std::array::from_fn(|t| hsum(_mm256_add_ps(acc0[t], acc1[t])) + e0[t] + e1[t])
}

#[inline(always)]
unsafe fn q4_0<M: Mul, const N: usize>(row: &[u8], a: &[&Activation; N]) -> [f32; N] {
    dot_blocks32::<M, N>(row, a, 18, Zero::Bias(8.0), false, |p| nibbles32(p.add(2)))
}

#[inline(always)]
unsafe fn q4_1<M: Mul, const N: usize>(row: &[u8], a: &[&Activation; N]) -> [f32; N] {
    dot_blocks32::<M, N>(row, a, 20, Zero::Min, false, |p| nibbles32(p.add(4)))
}

#[inline(always)]
unsafe fn q5_0<M: Mul, const N: usize>(row: &[u8], a: &[&Activation; N]) -> [f32; N] {
    dot_blocks32::<M, N>(row, a, 22, Zero::Bias(16.0), false, |p| {
        let qh = (p.add(2) as *const u32).read_unaligned();
        _mm256_or_si256(nibbles32(p.add(6)), fifth_bits(qh))
    })
}

#[inline(always)]
unsafe fn q5_1<M: Mul, const N: usize>(row: &[u8], a: &[&Activation; N]) -> [f32; N] {
    dot_blocks32::<M, N>(row, a, 24, Zero::Min, false, |p| {
        let qh = (p.add(4) as *const u32).read_unaligned();
        _mm256_or_si256(nibbles32(p.add(8)), fifth_bits(qh))
    })
}

#[inline(always)]
unsafe fn q8_0<M: Mul, const N: usize>(row: &[u8], a: &[&Activation; N]) -> [f32; N] {
    dot_blocks32::<M, N>(row, a, 34, Zero::None, true, |p| {
        _mm256_loadu_si256(p.add(2) as *const __m256i)
    })
}

#[inline(always)]
unsafe fn iq4_nl<M: Mul, const N: usize>(row: &[u8], a: &[&Activation; N]) -> [f32; N] {
    let levels = _mm256_broadcastsi128_si256(_mm_loadu_si128(
        crate::quant::legacy::IQ4_LEVELS.as_ptr() as *const __m128i,
    ));
    dot_blocks32::<M, N>(row, a, 18, Zero::None, true, |p| {
        _mm256_shuffle_epi8(levels, nibbles32(p.add(2)))
    })
}

/// Q4_K's and Q5_K's eight 6-bit scales and eight 6-bit minimums, unpacked from their 12 bytes
/// as two groups of eight bytes (scales of sub-blocks 0..8, then minimums).
#[inline(always)]
unsafe fn scales_mins_k4(p: *const u8) -> (u64, u64) {
    let w = |i: usize| (p.add(4 * i) as *const u32).read_unaligned();
    let (w0, w1, w2) = (w(0), w(1), w(2));
    let low6 = 0x3f3f_3f3f;
    let (low4, top2) = (0x0f0f_0f0f, 0x0303_0303);
    let sc_lo = w0 & low6;
    let sc_hi = (w2 & low4) | (((w0 >> 6) & top2) << 4);
    let mn_lo = w1 & low6;
    let mn_hi = ((w2 >> 4) & low4) | (((w1 >> 6) & top2) << 4);
    (
        sc_lo as u64 | (sc_hi as u64) << 32,
        mn_lo as u64 | (mn_hi as u64) << 32,
    )
}

/// Eight bytes as eight f32s.
#[inline(always)]
unsafe fn bytes_to_f32(b: u64) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(b as i64)))
}

/// Q4_K and Q5_K: `fifth` adds Q5_K's high bits from `qh`. Sub-blocks are 32 elements, one per
/// activation block; their minimums multiply the activation's f32 sums. Each super-block's
/// scales are unpacked and multiplied with `d` and the activation's scales at once.
#[inline(always)]
unsafe fn dot_k4<M: Mul, const N: usize>(
    row: &[u8],
    acts: &[&Activation; N],
    fifth: bool,
) -> [f32; N] {
    let (bytes, qs_at) = if fifth { (176, 48) } else { (144, 16) };
    let mask = _mm256_set1_epi8(0x0f);
    let one = _mm256_set1_epi8(1);
    let mut acc = [_mm256_setzero_ps(); N];
    let mut mins = [_mm256_setzero_ps(); N];
    let mut scale = [[0f32; 8]; N];
    for b in 0..acts[0].x.len() / 256 {
        let p = row.as_ptr().add(b * bytes);
        prefetch(p, bytes);
        let (d, dmin) = (f16_to_f32(p), f16_to_f32(p.add(2)));
        let (sc, mn) = scales_mins_k4(p.add(4));
        let (sc, mn) = (bytes_to_f32(sc), bytes_to_f32(mn));
        for t in 0..N {
            let a = acts[t];
            let xs = _mm256_loadu_ps(a.scales.as_ptr().add(8 * b));
            let sums = _mm256_loadu_ps(a.sums.as_ptr().add(8 * b));
            let s = _mm256_mul_ps(_mm256_mul_ps(sc, xs), _mm256_set1_ps(d));
            _mm256_storeu_ps(scale[t].as_mut_ptr(), s);
            let m = _mm256_mul_ps(mn, _mm256_set1_ps(dmin));
            mins[t] = _mm256_fmadd_ps(m, sums, mins[t]);
        }
        let qh = if fifth {
            _mm256_loadu_si256(p.add(16) as *const __m256i)
        } else {
            _mm256_setzero_si256()
        };
        for j in 0..4 {
            let q = _mm256_loadu_si256(p.add(qs_at + 32 * j) as *const __m256i);
            let mut lo = _mm256_and_si256(q, mask);
            let mut hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), mask);
            if fifth {
                let shift = _mm_cvtsi32_si128(2 * j as i32);
                let h0 = _mm256_and_si256(_mm256_srl_epi16(qh, shift), one);
                let h1 = _mm256_and_si256(_mm256_srli_epi16(_mm256_srl_epi16(qh, shift), 1), one);
                lo = _mm256_or_si256(lo, _mm256_slli_epi16(h0, 4));
                hi = _mm256_or_si256(hi, _mm256_slli_epi16(h1, 4));
            }
            let at = 256 * b + 64 * j;
            for t in 0..N {
                let a = acts[t];
                let (s0, s1) = (mul32::<M>(lo, a, at), mul32::<M>(hi, a, at + 32));
                acc[t] = _mm256_fmadd_ps(
                    _mm256_cvtepi32_ps(s0),
                    _mm256_broadcast_ss(&scale[t][2 * j]),
                    acc[t],
                );
                acc[t] = _mm256_fmadd_ps(
                    _mm256_cvtepi32_ps(s1),
                    _mm256_broadcast_ss(&scale[t][2 * j + 1]),
                    acc[t],
                );
            }
        }
    }
    std::array::from_fn(|t| hsum(acc[t]) - hsum(mins[t]))
}

#[inline(always)]
unsafe fn q4_k<M: Mul, const N: usize>(row: &[u8], a: &[&Activation; N]) -> [f32; N] {
    dot_k4::<M, N>(row, a, false)
}

#[inline(always)]
unsafe fn q5_k<M: Mul, const N: usize>(row: &[u8], a: &[&Activation; N]) -> [f32; N] {
    dot_k4::<M, N>(row, a, true)
}

/// Q6_K: unsigned 6-bit values less 32, a signed scale per 16 elements. The bias is taken out
/// once per super-block from the activation's 16-element sums.
#[inline(always)]
unsafe fn q6_k<M: Mul, const N: usize>(row: &[u8], acts: &[&Activation; N]) -> [f32; N] {
    let mask = _mm256_set1_epi8(0x0f);
    let three = _mm256_set1_epi8(3);
    let mut acc = [_mm256_setzero_ps(); N];
    let mut bias = [_mm256_setzero_ps(); N];
    let mut scale = [[0f32; 16]; N];
    for b in 0..acts[0].x.len() / 256 {
        let p = row.as_ptr().add(b * 210);
        prefetch(p, 210);
        let d = f16_to_f32(p.add(208));
        let sc = p.add(192) as *const i8;
        let scv = _mm_loadu_si128(sc as *const __m128i);
        let sc_lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(scv));
        let sc_hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(scv, 8)));
        for t in 0..N {
            let a = acts[t];
            // Σ scale · Σx over the 16 sixteen-element groups.
            let s16 = a.sums16.as_ptr().add(16 * b);
            let sums = _mm256_fmadd_ps(
                sc_hi,
                _mm256_loadu_ps(s16.add(8)),
                _mm256_mul_ps(sc_lo, _mm256_loadu_ps(s16)),
            );
            bias[t] = _mm256_fmadd_ps(_mm256_set1_ps(32.0 * d), sums, bias[t]);
            // d · scale · the activation's scale, for each 16 elements.
            let xs = _mm256_mul_ps(
                _mm256_loadu_ps(a.scales.as_ptr().add(8 * b)),
                _mm256_set1_ps(d),
            );
            let pairs = |first: i32| {
                let i = _mm256_setr_epi32(
                    first,
                    first,
                    first + 1,
                    first + 1,
                    first + 2,
                    first + 2,
                    first + 3,
                    first + 3,
                );
                _mm256_permutevar8x32_ps(xs, i)
            };
            _mm256_storeu_ps(scale[t].as_mut_ptr(), _mm256_mul_ps(sc_lo, pairs(0)));
            _mm256_storeu_ps(scale[t].as_mut_ptr().add(8), _mm256_mul_ps(sc_hi, pairs(4)));
        }
        for n in 0..2 {
            let ql0 = _mm256_loadu_si256(p.add(64 * n) as *const __m256i);
            let ql1 = _mm256_loadu_si256(p.add(64 * n + 32) as *const __m256i);
            let qh = _mm256_loadu_si256(p.add(128 + 32 * n) as *const __m256i);
            let high = |shift: i32| {
                let h = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(shift)), three);
                _mm256_slli_epi16(h, 4)
            };
            let groups = [
                _mm256_or_si256(_mm256_and_si256(ql0, mask), high(0)),
                _mm256_or_si256(_mm256_and_si256(ql1, mask), high(2)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), mask), high(4)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), mask), high(6)),
            ];
            for (g, q) in groups.into_iter().enumerate() {
                let k = 4 * n + g;
                for t in 0..N {
                    // Elements 0..16 and 16..32 of a group have scales of their own.
                    let c = _mm256_insertf128_ps(
                        _mm256_castps128_ps256(_mm_broadcast_ss(&scale[t][2 * k])),
                        _mm_broadcast_ss(&scale[t][2 * k + 1]),
                        1,
                    );
                    let s = _mm256_cvtepi32_ps(mul32::<M>(q, acts[t], 256 * b + 32 * k));
                    acc[t] = _mm256_fmadd_ps(s, c, acc[t]);
                }
            }
        }
    }
    std::array::from_fn(|t| hsum(acc[t]) - hsum(bias[t]))
}

/// The entry points for one instruction set: `$features` enabled, `$mul` multiplying, one
/// function per format that has a kernel.
macro_rules! kernels {
    ($module:ident, $mul:ty, $features:literal) => {
        kernels!(@ $module, $mul, $features,
            Q4_0 => q4_0, Q4_1 => q4_1, Q5_0 => q5_0, Q5_1 => q5_1, Q8_0 => q8_0,
            Iq4Nl => iq4_nl, Q4K => q4_k, Q5K => q5_k, Q6K => q6_k);
    };
    (@ $module:ident, $mul:ty, $features:literal, $($dtype:ident => $f:ident),*) => {
        pub mod $module {
            use super::*;
            use crate::quant::DType;

            /// The kernel for `dtype`, if it has one: one activation, or four at once.
            pub fn kernel(dtype: DType) -> Option<(super::super::dot::IntKernel, super::super::dot::IntKernel4)> {
                $(
                    #[target_feature(enable = $features)]
                    unsafe fn $f(row: &[u8], a: &Activation) -> f32 {
                        super::$f::<$mul, 1>(row, &[a])[0]
                    }
                )*
                mod four {
                    use super::*;
                    $(
                        #[target_feature(enable = $features)]
                        pub unsafe fn $f(row: &[u8], a: &[&Activation; 4]) -> [f32; 4] {
                            super::super::$f::<$mul, 4>(row, a)
                        }
                    )*
                }
                Some(match dtype {
                    $(DType::$dtype => ($f as super::super::dot::IntKernel, four::$f as super::super::dot::IntKernel4),)*
                    _ => return None,
                })
            }
        }
    };
}

kernels!(avx2, Avx2, "avx2,fma,f16c");
kernels!(vnni, Vnni, "avx2,fma,f16c,avx512vnni,avx512vl");
