//! AVX2/FMA/F16C dot products of the formats of today's GGUF files (Q4_K, Q5_K, Q6_K, Q4_0,
//! Q5_0, Q5_1, IQ4_NL) with f32 activations. Each expands its integers to f32 in registers and
//! multiplies them with `x`; scales are applied once per sub-block. The scalar reference in
//! `quant/` is what they are tested against (`dot.rs`).

use std::arch::x86_64::*;

use crate::quant::kquants::scale_min_k4;

#[inline(always)]
pub(super) unsafe fn hsum(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

#[inline(always)]
unsafe fn f16_to_f32(p: *const u8) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
        (p as *const u16).read_unaligned() as i32,
    )))
}

/// `Σ q[i]·x[i]` over 16 unsigned bytes of `q` (one 128-bit half) and 16 floats at `x`, as two
/// partial sums.
#[inline(always)]
unsafe fn dot16_u8(q: __m128i, x: *const f32) -> __m256 {
    let a = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q));
    let b = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(q, 8)));
    _mm256_fmadd_ps(
        b,
        _mm256_loadu_ps(x.add(8)),
        _mm256_mul_ps(a, _mm256_loadu_ps(x)),
    )
}

/// As [`dot16_u8`] for signed bytes.
#[inline(always)]
unsafe fn dot16_i8(q: __m128i, x: *const f32) -> __m256 {
    let a = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
    let b = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q, 8)));
    _mm256_fmadd_ps(
        b,
        _mm256_loadu_ps(x.add(8)),
        _mm256_mul_ps(a, _mm256_loadu_ps(x)),
    )
}

/// `Σ q[i]·x[i]` over the 32 unsigned bytes of `q`.
#[inline(always)]
unsafe fn dot32_u8(q: __m256i, x: *const f32) -> __m256 {
    let lo = dot16_u8(_mm256_castsi256_si128(q), x);
    let hi = dot16_u8(_mm256_extracti128_si256(q, 1), x.add(16));
    _mm256_add_ps(lo, hi)
}

/// `Σ q[i]·x[i]` over the 32 signed bytes of `q`.
#[inline(always)]
unsafe fn dot32_i8(q: __m256i, x: *const f32) -> __m256 {
    let lo = dot16_i8(_mm256_castsi256_si128(q), x);
    let hi = dot16_i8(_mm256_extracti128_si256(q, 1), x.add(16));
    _mm256_add_ps(lo, hi)
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

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_0(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let eight = _mm256_set1_epi8(8);
    for b in 0..x.len() / 32 {
        let p = row.as_ptr().add(b * 18);
        let q = _mm256_sub_epi8(nibbles32(p.add(2)), eight);
        let s = dot32_i8(q, x.as_ptr().add(b * 32));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f16_to_f32(p)), s, acc);
    }
    hsum(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_iq4_nl(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let levels = _mm256_broadcastsi128_si256(_mm_loadu_si128(
        crate::quant::legacy::IQ4_LEVELS.as_ptr() as *const __m128i,
    ));
    for b in 0..x.len() / 32 {
        let p = row.as_ptr().add(b * 18);
        let q = _mm256_shuffle_epi8(levels, nibbles32(p.add(2)));
        let s = dot32_i8(q, x.as_ptr().add(b * 32));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f16_to_f32(p)), s, acc);
    }
    hsum(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q5_0(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let sixteen = _mm256_set1_epi8(16);
    for b in 0..x.len() / 32 {
        let p = row.as_ptr().add(b * 22);
        let qh = (p.add(2) as *const u32).read_unaligned();
        let q = _mm256_or_si256(nibbles32(p.add(6)), fifth_bits(qh));
        let s = dot32_i8(_mm256_sub_epi8(q, sixteen), x.as_ptr().add(b * 32));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f16_to_f32(p)), s, acc);
    }
    hsum(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q5_1(row: &[u8], x: &[f32], xs: &[f32]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut mins = 0f32;
    for b in 0..x.len() / 32 {
        let p = row.as_ptr().add(b * 24);
        let qh = (p.add(4) as *const u32).read_unaligned();
        let q = _mm256_or_si256(nibbles32(p.add(8)), fifth_bits(qh));
        let s = dot32_u8(q, x.as_ptr().add(b * 32));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f16_to_f32(p)), s, acc);
        mins += f16_to_f32(p.add(2)) * xs.get_unchecked(b);
    }
    hsum(acc) + mins
}

/// Q4_K and Q5_K: `fifth` adds Q5_K's high bits from `qh`. `xs` holds the sums of `x` over 32
/// elements, which the sub-blocks' minimums multiply.
#[inline(always)]
unsafe fn dot_k4(row: &[u8], x: &[f32], xs: &[f32], fifth: bool) -> f32 {
    let (bytes, qs_at) = if fifth { (176, 48) } else { (144, 16) };
    let mask = _mm256_set1_epi8(0x0f);
    let one = _mm256_set1_epi8(1);
    let mut acc = _mm256_setzero_ps();
    let mut mins = 0f32;
    for b in 0..x.len() / 256 {
        let blk = row.get_unchecked(b * bytes..(b + 1) * bytes);
        let p = blk.as_ptr();
        let (d, dmin) = (f16_to_f32(p), f16_to_f32(p.add(2)));
        let scales = &blk[4..16];
        let qh = if fifth {
            _mm256_loadu_si256(p.add(16) as *const __m256i)
        } else {
            _mm256_setzero_si256()
        };
        let xb = x.as_ptr().add(b * 256);
        for j in 0..4 {
            let (sc0, m0) = scale_min_k4(2 * j, scales);
            let (sc1, m1) = scale_min_k4(2 * j + 1, scales);
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
            let s0 = dot32_u8(lo, xb.add(64 * j));
            let s1 = dot32_u8(hi, xb.add(64 * j + 32));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d * sc0 as f32), s0, acc);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d * sc1 as f32), s1, acc);
            let sums = xs.get_unchecked(b * 8 + 2 * j..b * 8 + 2 * j + 2);
            mins += dmin * (m0 as f32 * sums[0] + m1 as f32 * sums[1]);
        }
    }
    hsum(acc) - mins
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_k(row: &[u8], x: &[f32], xs: &[f32]) -> f32 {
    dot_k4(row, x, xs, false)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q5_k(row: &[u8], x: &[f32], xs: &[f32]) -> f32 {
    dot_k4(row, x, xs, true)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q6_k(row: &[u8], x: &[f32]) -> f32 {
    let mask = _mm256_set1_epi8(0x0f);
    let three = _mm256_set1_epi8(3);
    let bias = _mm256_set1_epi8(32);
    let mut acc = _mm256_setzero_ps();
    for b in 0..x.len() / 256 {
        let p = row.as_ptr().add(b * 210);
        let d = f16_to_f32(p.add(208));
        let sc = p.add(192) as *const i8;
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
            let xn = x.as_ptr().add(b * 256 + 128 * n);
            for (g, q) in groups.into_iter().enumerate() {
                let q = _mm256_sub_epi8(q, bias);
                let xg = xn.add(32 * g);
                // Elements 0..16 and 16..32 of a group have scales of their own.
                let s0 = dot16_i8(_mm256_castsi256_si128(q), xg);
                let s1 = dot16_i8(_mm256_extracti128_si256(q, 1), xg.add(16));
                let c0 = *sc.add(8 * n + 2 * g) as f32;
                let c1 = *sc.add(8 * n + 2 * g + 1) as f32;
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d * c0), s0, acc);
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d * c1), s1, acc);
            }
        }
    }
    hsum(acc)
}
