//! The 32-element block formats: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and IQ4_NL. Scalar reference
//! dequantization, one block at a time.

use super::f16_at;

/// IQ4_NL's and IQ4_XS's 16 levels, a non-uniform grid fitted to weight distributions.
pub const IQ4_LEVELS: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// 32 × i8 after `d`.
pub(super) fn q8_0(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, v) in out[..32].iter_mut().enumerate() {
        *v = d * (b[2 + j] as i8) as f32;
    }
}

/// The 32 nibbles of 16 bytes: element `j` is the low nibble of byte `j`, `j + 16` the high.
#[inline]
fn nibble(qs: &[u8], j: usize) -> u8 {
    if j < 16 {
        qs[j] & 0x0f
    } else {
        qs[j - 16] >> 4
    }
}

pub(super) fn q4_0(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, v) in out[..32].iter_mut().enumerate() {
        *v = d * (nibble(&b[2..18], j) as i32 - 8) as f32;
    }
}

pub(super) fn q4_1(b: &[u8], out: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for (j, v) in out[..32].iter_mut().enumerate() {
        *v = d * nibble(&b[4..20], j) as f32 + m;
    }
}

/// Element `j` of a 5-bit block whose high bits are the 32-bit word `qh` and whose nibbles are
/// `qs`.
#[inline]
fn five_bits(qh: u32, qs: &[u8], j: usize) -> u32 {
    nibble(qs, j) as u32 | (((qh >> j) & 1) << 4)
}

pub(super) fn q5_0(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for (j, v) in out[..32].iter_mut().enumerate() {
        *v = d * (five_bits(qh, &b[6..22], j) as i32 - 16) as f32;
    }
}

pub(super) fn q5_1(b: &[u8], out: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for (j, v) in out[..32].iter_mut().enumerate() {
        *v = d * five_bits(qh, &b[8..24], j) as f32 + m;
    }
}

pub(super) fn iq4_nl(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, v) in out[..32].iter_mut().enumerate() {
        *v = d * IQ4_LEVELS[nibble(&b[2..18], j) as usize] as f32;
    }
}
