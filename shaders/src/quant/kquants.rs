//! The 256-element super-block formats: Q2_K to Q6_K and IQ4_XS. Scalar reference
//! dequantization, one super-block at a time, element by element in GGML's order.

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
pub(super) fn q2_k(b: &[u8], out: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    let (scales, qs) = (&b[0..16], &b[16..80]);
    for (e, v) in out[..256].iter_mut().enumerate() {
        let (n, r) = (e / 128, e % 128);
        let (j, l) = (r / 32, r % 32);
        let sc = scales[n * 8 + j * 2 + l / 16];
        let q = (qs[n * 32 + l] >> (2 * j)) & 3;
        *v = d * (sc & 0x0f) as f32 * q as f32 - dmin * (sc >> 4) as f32;
    }
}

/// Layout: hmask[32], qs[64], scales[12], d.
pub(super) fn q3_k(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 108);
    let (hmask, qs, scales) = (&b[0..32], &b[32..96], &b[96..108]);
    for (e, v) in out[..256].iter_mut().enumerate() {
        let (n, r) = (e / 128, e % 128);
        let (j, l) = (r / 32, r % 32);
        let q = ((qs[n * 32 + l] >> (2 * j)) & 3) as i32;
        let high = (hmask[l] >> (n * 4 + j)) & 1;
        let q = q - if high == 0 { 4 } else { 0 };
        *v = d * scale_q3_k(n * 8 + j * 2 + l / 16, scales) as f32 * q as f32;
    }
}

/// Layout: d, dmin, scales[12], qs[128].
pub(super) fn q4_k(b: &[u8], out: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (scales, qs) = (&b[4..16], &b[16..144]);
    for (e, v) in out[..256].iter_mut().enumerate() {
        let (j, r) = (e / 64, e % 64);
        let (sc, m) = scale_min_k4(2 * j + r / 32, scales);
        let byte = qs[j * 32 + r % 32];
        let q = if r < 32 { byte & 0x0f } else { byte >> 4 };
        *v = d * sc as f32 * q as f32 - dmin * m as f32;
    }
}

/// Layout: d, dmin, scales[12], qh[32], qs[128].
pub(super) fn q5_k(b: &[u8], out: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
    for (e, v) in out[..256].iter_mut().enumerate() {
        let (j, r) = (e / 64, e % 64);
        let is = 2 * j + r / 32;
        let (sc, m) = scale_min_k4(is, scales);
        let l = r % 32;
        let byte = qs[j * 32 + l];
        let q = if r < 32 { byte & 0x0f } else { byte >> 4 };
        let q = q as u32 | ((((qh[l] >> is) & 1) as u32) << 4);
        *v = d * sc as f32 * q as f32 - dmin * m as f32;
    }
}

/// Layout: ql[128], qh[64], scales[16] (i8), d.
pub(super) fn q6_k(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 208);
    let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
    for (e, v) in out[..256].iter_mut().enumerate() {
        let (n, r) = (e / 128, e % 128);
        let (g, l) = (r / 32, r % 32);
        let low = ql[n * 64 + l + (g & 1) * 32];
        let low = if g < 2 { low & 0x0f } else { low >> 4 };
        let high = (qh[n * 32 + l] >> (2 * g)) & 3;
        let q = (low | (high << 4)) as i32 - 32;
        let sc = scales[n * 8 + l / 16 + 2 * g] as i8;
        *v = d * sc as f32 * q as f32;
    }
}

/// Layout: d, scales_h (u16), scales_l[4], qs[128].
pub(super) fn iq4_xs(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let sh = u16::from_le_bytes([b[2], b[3]]);
    let (sl, qs) = (&b[4..8], &b[8..136]);
    for (e, v) in out[..256].iter_mut().enumerate() {
        let (ib, i) = (e / 32, e % 32);
        let ls = ((sl[ib / 2] >> (4 * (ib % 2))) & 0x0f) | ((((sh >> (2 * ib)) & 3) as u8) << 4);
        let byte = qs[ib * 16 + i % 16];
        let q = if i < 16 { byte & 0x0f } else { byte >> 4 };
        *v = d * (ls as i32 - 32) as f32 * IQ4_LEVELS[q as usize] as f32;
    }
}
