//! One activation vector prepared for the dot products of decode.
//!
//! Besides the f32 values it holds, per 32-element block, a 22-bit integer copy with one f32
//! scale: `x ≈ scale · q`, `|q| ≤` [`Q_MAX`], so the rounding error is below 1/2,770,000 of
//! the block's largest magnitude. A block's elements can differ by orders of magnitude
//! (activations have outlier channels): with a 15-bit copy the demo model's logits moved by up to
//! 0.024 in decode, as much as f16 moves them, while this one keeps elements up to 2,000 times
//! smaller than their block's largest at f16 precision or better. The integer kernels
//! (`dot_int.rs`) multiply weights with it exactly in integer arithmetic and apply the scales in
//! f32. Each `q` is stored as three bytes, `q = 16384 · top + 128 · mid + low` with `top` signed
//! and `mid`, `low` in 0..128: the operand shape of the byte multiply-add instructions.
//!
//! Built once per token and matrix product, it costs `O(cols)` against the `O(rows · cols)` of
//! the product.

/// Largest magnitude of the integer copy: with it `top` stays in -127..=126, so that negating
/// it (for signed weights) cannot overflow a byte and two products of a weight byte with it fit
/// a signed 16-bit sum.
pub const Q_MAX: f32 = 2_080_767.0;

/// `y` rounded to the nearest integer, halves to even, for `|y| < 2²²`: adding and taking away
/// 1.5 · 2²³ leaves no fraction bits. Plain arithmetic, unlike `f32::round` (a library call
/// per value on the baseline x86-64 target), so that the loop of [`Activation::new`] vectorizes.
#[inline(always)]
fn round(y: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0;
    (y + SHIFT) - SHIFT
}

/// An activation vector with its sums and its 22-bit integer copy.
pub struct Activation<'a> {
    /// The values themselves.
    pub x: &'a [f32],
    /// Σx over each 32-element block.
    pub sums: Vec<f32>,
    /// Σx over each 16-element block.
    pub sums16: Vec<f32>,
    /// `x ≈ scales[i / 32] · (16384 · top[i] + 128 · mid[i] + low[i])`.
    pub scales: Vec<f32>,
    pub top: Vec<i8>,
    pub mid: Vec<i8>,
    pub low: Vec<i8>,
}

impl<'a> Activation<'a> {
    pub fn new(x: &'a [f32]) -> Self {
        let n = x.len();
        let mut a = Activation {
            x,
            sums: x.chunks(32).map(|c| c.iter().sum()).collect(),
            sums16: x.chunks(16).map(|c| c.iter().sum()).collect(),
            scales: Vec::with_capacity(n.div_ceil(32)),
            top: vec![0; n],
            mid: vec![0; n],
            low: vec![0; n],
        };
        for (b, c) in x.chunks(32).enumerate() {
            let amax = c.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = amax / Q_MAX;
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            a.scales.push(scale);
            let at = 32 * b..32 * b + c.len();
            let (top, mid, low) = (
                &mut a.top[at.clone()],
                &mut a.mid[at.clone()],
                &mut a.low[at],
            );
            for i in 0..c.len() {
                let q = round((c[i] * inv).clamp(-Q_MAX, Q_MAX)) as i32;
                top[i] = (q >> 14) as i8;
                mid[i] = ((q >> 7) & 127) as i8;
                low[i] = (q & 127) as i8;
            }
        }
        a
    }

    /// The integer copy of element `i`.
    pub fn q(&self, i: usize) -> i32 {
        16384 * self.top[i] as i32 + 128 * self.mid[i] as i32 + self.low[i] as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_copy_is_within_a_step() {
        let x: Vec<f32> = (0..100)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013 * (1.0 + (i / 32) as f32))
            .collect();
        let a = Activation::new(&x);
        for (i, v) in x.iter().enumerate() {
            let s = a.scales[i / 32];
            let q = a.q(i);
            assert!(q.abs() <= Q_MAX as i32);
            assert!(a.low[i] >= 0 && a.mid[i] >= 0);
            assert!((-127..=126).contains(&a.top[i]));
            // Half a step, and the f32 roundings of `1 / s` and `v · (1 / s)` (1/8 step each
            // at 2²¹).
            let err = (s as f64 * q as f64 - *v as f64).abs();
            assert!(err <= 0.75 * s as f64, "{i}: {v} vs {}", s * q as f32);
        }
        // The largest magnitude of each block maps to ±Q_MAX exactly.
        let amax = x[..32].iter().fold(0f32, |m, v| m.max(v.abs()));
        let at = x[..32].iter().position(|v| v.abs() == amax).unwrap();
        assert_eq!(a.q(at).abs(), Q_MAX as i32);
        assert_eq!(a.sums.len(), 4);
        assert_eq!(a.sums16.len(), 7);
    }

    #[test]
    fn rounding_is_to_the_nearest_integer_halves_to_even() {
        let mut y = -Q_MAX;
        while y <= Q_MAX {
            for v in [y, y + 0.5, y + 0.25, y + 0.75, -(y + 0.5)] {
                assert_eq!(round(v), v.round_ties_even(), "{v}");
            }
            y += 997.0;
        }
        assert_eq!(round(Q_MAX), Q_MAX);
        assert_eq!(round(-0.4), 0.0);
    }

    #[test]
    fn zero_blocks_stay_zero() {
        let x = vec![0f32; 64];
        let a = Activation::new(&x);
        assert!(a.scales.iter().all(|s| *s == 0.0));
        assert!((0..64).all(|i| a.q(i) == 0));
    }
}
