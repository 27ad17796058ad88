//! FP8 E4M3 (the `float8_e4m3fn` of FP8 checkpoints such as DeepSeek-V3's): a sign, four
//! exponent bits biased by 7 and three mantissa bits; exponent 0 is subnormal, and the one NaN
//! pattern per sign (all seven low bits set) takes the place of infinity, so the largest value
//! is 448.
//!
//! Baton's blocks: an f32 scale, then 128 E4M3 values ([`DType::Fp8E4M3`]), or 32 for rows that
//! are not whole tiles ([`DType::Fp8E4M3B32`]). A checkpoint's `weight_scale_inv` holds one
//! scale per 128 × 128 tile; each row's blocks take their tile's scale when it loads.
//!
//! [`DType::Fp8E4M3`]: super::DType::Fp8E4M3
//! [`DType::Fp8E4M3B32`]: super::DType::Fp8E4M3B32

/// Elements per block: a whole tile's row.
pub const BLOCK: usize = 128;
/// Elements per block of rows that are not whole tiles.
pub const SMALL_BLOCK: usize = 32;

/// The value of an E4M3 byte.
pub fn e4m3(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let (exp, man) = ((b >> 3) & 0xf, b & 7);
    if exp == 0xf && man == 7 {
        return f32::NAN;
    }
    let mag = if exp == 0 {
        man as f32 / 8.0 * (-6f32).exp2()
    } else {
        (1.0 + man as f32 / 8.0) * (exp as f32 - 7.0).exp2()
    };
    sign * mag
}

/// The E4M3 byte nearest `v` (ties to the even mantissa), saturating at ±448.
pub fn to_e4m3(v: f32) -> u8 {
    let sign = if v.is_sign_negative() { 0x80 } else { 0 };
    let a = v.abs().min(448.0);
    // The 127 finite magnitudes rise with their byte: the nearest by bisection.
    let (mut lo, mut hi) = (0u8, 0x7e);
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if e4m3(mid) <= a {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let (dl, dh) = (a - e4m3(lo), e4m3(hi) - a);
    let q = if dl < dh || (dl == dh && lo % 2 == 0) {
        lo
    } else {
        hi
    };
    sign | q
}

/// A block of `out.len()` values after its scale.
pub(super) fn block(b: &[u8], out: &mut [f32]) {
    let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    for (o, &q) in out.iter_mut().zip(&b[4..]) {
        *o = d * e4m3(q);
    }
}

/// Blocks of `n` of `values`: the scale maps each block's largest magnitude to 448.
pub(super) fn quantize(values: &[f32], n: usize, out: &mut Vec<u8>) {
    for blk in values.chunks(n) {
        let amax = blk.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 448.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&d.to_le_bytes());
        out.extend(blk.iter().map(|v| to_e4m3(v * id)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e4m3_values_follow_the_format() {
        assert_eq!(e4m3(0x00), 0.0);
        assert_eq!(e4m3(0x38), 1.0);
        assert_eq!(e4m3(0xb8), -1.0);
        assert_eq!(e4m3(0x7e), 448.0);
        assert_eq!(e4m3(0x01), (-9f32).exp2());
        assert_eq!(e4m3(0x08), (-6f32).exp2());
        assert_eq!(e4m3(0x3c), 1.5);
        assert!(e4m3(0x7f).is_nan() && e4m3(0xff).is_nan());
        // Every finite byte round-trips, and the magnitudes rise with the byte.
        for b in 0..0x7fu8 {
            assert_eq!(to_e4m3(e4m3(b)), b);
            assert_eq!(to_e4m3(-e4m3(b)), b | 0x80);
            if b > 0 {
                assert!(e4m3(b) > e4m3(b - 1));
            }
        }
        assert_eq!(to_e4m3(1000.0), 0x7e);
        // Halfway between 1.0 (mantissa 0) and 1.125 (mantissa 1): the even one.
        assert_eq!(to_e4m3(1.0625), 0x38);
    }
}
