//! The 256-element super-block formats: Q2_K to Q6_K and IQ4_XS. Scalar reference
//! dequantization, one super-block at a time, in GGML's element order; written as loops over
//! sub-blocks so that prefill, which expands weights through these, stays fast.

use super::f16_at;
use super::legacy::IQ4_LEVELS;

/// Q4_K's and Q5_K's 6-bit scale and minimum of sub-block `j` (0..8), packed in 12 bytes.
#[inline]
pub fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Q3_K's signed 6-bit scale of sub-block `i` (0..16), packed in 12 bytes.
#[inline]
pub fn scale_q3_k(i: usize, s: &[u8]) -> i32 {
    let low = if i < 8 { s[i] & 0x0f } else { s[i - 8] >> 4 };
    let high = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
    (low | (high << 4)) as i32 - 32
}

/// Layout: scales[16] (low nibble scale, high nibble minimum), qs[64], d, dmin.
/// Element `128n + 32j + l` is bits `2j` of `qs[32n + l]`, in sub-block `8n + 2j + l/16`.
pub(super) fn q2_k(b: &[u8], out: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    let (scales, qs) = (&b[0..16], &b[16..80]);
    for n in 0..2 {
        for j in 0..4 {
            for half in 0..2 {
                let sc = scales[n * 8 + j * 2 + half];
                let (dl, ml) = (d * (sc & 0x0f) as f32, dmin * (sc >> 4) as f32);
                let o = &mut out[128 * n + 32 * j + 16 * half..][..16];
                let q = &qs[32 * n + 16 * half..][..16];
                for (v, q) in o.iter_mut().zip(q) {
                    *v = dl * ((q >> (2 * j)) & 3) as f32 - ml;
                }
            }
        }
    }
}

/// Layout: hmask[32], qs[64], scales[12], d. Element `128n + 32j + l` is bits `2j` of
/// `qs[32n + l]` less 4 unless bit `4n + j` of `hmask[l]` is set.
pub(super) fn q3_k(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 108);
    let (hmask, qs, scales) = (&b[0..32], &b[32..96], &b[96..108]);
    for n in 0..2 {
        for j in 0..4 {
            for half in 0..2 {
                let dl = d * scale_q3_k(n * 8 + j * 2 + half, scales) as f32;
                for l in 16 * half..16 * half + 16 {
                    let q = ((qs[32 * n + l] >> (2 * j)) & 3) as i32;
                    let high = (hmask[l] >> (4 * n + j)) & 1;
                    out[128 * n + 32 * j + l] = dl * (q - if high == 0 { 4 } else { 0 }) as f32;
                }
            }
        }
    }
}

/// Layout: d, dmin, scales[12], qs[128]. Elements `64j..64j+32` are the low nibbles of
/// `qs[32j..32j+32]` (sub-block `2j`), the next 32 their high nibbles (sub-block `2j+1`).
pub(super) fn q4_k(b: &[u8], out: &mut [f32]) {
    k4(b, &b[16..144], None, out);
}

/// Layout: d, dmin, scales[12], qh[32], qs[128]. As Q4_K, with bit `is` of `qh[l]` as the fifth
/// bit of element `l` of sub-block `is`.
pub(super) fn q5_k(b: &[u8], out: &mut [f32]) {
    k4(b, &b[48..176], Some(&b[16..48]), out);
}

/// Q4_K, and Q5_K when `qh` holds its fifth bits.
fn k4(b: &[u8], qs: &[u8], qh: Option<&[u8]>, out: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    for j in 0..4 {
        let (s0, m0) = scale_min_k4(2 * j, scales);
        let (s1, m1) = scale_min_k4(2 * j + 1, scales);
        let (d0, n0, d1, n1) = (
            d * s0 as f32,
            dmin * m0 as f32,
            d * s1 as f32,
            dmin * m1 as f32,
        );
        let (lo, hi) = out[64 * j..64 * j + 64].split_at_mut(32);
        for l in 0..32 {
            let q = qs[32 * j + l];
            let (h0, h1) = qh.map_or((0, 0), |qh| {
                (
                    ((qh[l] >> (2 * j)) & 1) << 4,
                    ((qh[l] >> (2 * j + 1)) & 1) << 4,
                )
            });
            lo[l] = d0 * ((q & 0x0f) | h0) as f32 - n0;
            hi[l] = d1 * ((q >> 4) | h1) as f32 - n1;
        }
    }
}

/// Layout: ql[128], qh[64], scales[16] (i8), d. Element `128n + 32g + l` takes a nibble of
/// `ql[64n + l + 32(g&1)]` (low for g < 2) and bits `2g` of `qh[32n + l]`, less 32, in
/// sub-block `8n + 2g + l/16`.
pub(super) fn q6_k(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 208);
    let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
    for n in 0..2 {
        for g in 0..4 {
            for l in 0..32 {
                let low = ql[64 * n + l + 32 * (g & 1)];
                let low = if g < 2 { low & 0x0f } else { low >> 4 };
                let high = (qh[32 * n + l] >> (2 * g)) & 3;
                let q = (low | (high << 4)) as i32 - 32;
                let sc = scales[8 * n + 2 * g + l / 16] as i8;
                out[128 * n + 32 * g + l] = d * sc as f32 * q as f32;
            }
        }
    }
}

/// Layout: d, scales_h (u16), scales_l[4], qs[128]: eight sub-blocks of 32 nibbles into IQ4_NL's
/// levels, each with a 6-bit scale.
pub(super) fn iq4_xs(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let sh = u16::from_le_bytes([b[2], b[3]]);
    let (sl, qs) = (&b[4..8], &b[8..136]);
    for ib in 0..8 {
        let ls = ((sl[ib / 2] >> (4 * (ib % 2))) & 0x0f) | ((((sh >> (2 * ib)) & 3) as u8) << 4);
        let dl = d * (ls as i32 - 32) as f32;
        let (lo, hi) = out[32 * ib..32 * ib + 32].split_at_mut(16);
        for ((a, b), q) in lo.iter_mut().zip(hi).zip(&qs[16 * ib..16 * ib + 16]) {
            *a = dl * IQ4_LEVELS[(q & 0x0f) as usize] as f32;
            *b = dl * IQ4_LEVELS[(q >> 4) as usize] as f32;
        }
    }
}
