//! The element-wise kernels of a decoder block, on f32 activations `[tokens, width]`.

/// `out[t] = x[t] / rms(x[t]) · w`.
pub fn rmsnorm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let n = w.len();
    for (xt, ot) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let ms = xt.iter().map(|v| v * v).sum::<f32>() / n as f32;
        let scale = 1.0 / (ms + eps).sqrt();
        for ((o, v), g) in ot.iter_mut().zip(xt).zip(w) {
            *o = v * scale * g;
        }
    }
}

/// The inverse frequencies of RoPE without scaling: `θ^(-2i/d)` for `i < d/2`, in f32 as
/// transformers computes them.
pub fn rope_inv_freq(theta: f32, dims: usize) -> Vec<f32> {
    (0..dims / 2)
        .map(|i| 1.0 / theta.powf(2.0 * i as f32 / dims as f32))
        .collect()
}

/// Rotary position embedding, in place, on `[tokens, heads · head_dim]` at positions
/// `pos0, pos0 + 1, …`, with the inverse frequencies `inv` (`head_dim / 2` of them) and the
/// result scaled by `factor` (YaRN's attention factor; 1 otherwise). `interleaved` rotates
/// pairs `(2i, 2i+1)` (GGUF's row order for Llama); otherwise pairs `(i, i + head_dim/2)`.
pub fn rope(
    x: &mut [f32],
    pos0: usize,
    heads: usize,
    head_dim: usize,
    inv: &[f32],
    factor: f32,
    interleaved: bool,
) {
    let half = head_dim / 2;
    assert_eq!(inv.len(), half, "rope: one frequency per pair");
    for (t, tok) in x.chunks_exact_mut(heads * head_dim).enumerate() {
        let p = (pos0 + t) as f32;
        let (sin, cos): (Vec<f32>, Vec<f32>) = inv
            .iter()
            .map(|f| {
                let (s, c) = (p * f).sin_cos();
                (s * factor, c * factor)
            })
            .unzip();
        for head in tok.chunks_exact_mut(head_dim) {
            for i in 0..half {
                let (a, b) = if interleaved {
                    (2 * i, 2 * i + 1)
                } else {
                    (i, i + half)
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * cos[i] - x1 * sin[i];
                head[b] = x0 * sin[i] + x1 * cos[i];
            }
        }
    }
}

/// `a · b` with eight independent partial sums, which the compiler turns into vector code (a
/// single running sum is a serial chain it must not reorder).
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `gate = silu(gate) · up`, in place.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// `gate = gelu(gate) · up`, in place, with GELU's tanh approximation (`gelu_pytorch_tanh`).
pub fn gelu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = gelu_tanh(*g) * u;
    }
}

#[inline]
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh())
}

/// `x += y`.
pub fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// `x[t] += b` for every row `t` of `x` (a bias).
pub fn add_rows(x: &mut [f32], b: &[f32]) {
    for row in x.chunks_exact_mut(b.len()) {
        add(row, b);
    }
}

/// `x *= s`.
pub fn scale(x: &mut [f32], s: f32) {
    x.iter_mut().for_each(|v| *v *= s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_forms_agree_after_permuting_pairs() {
        let hd = 8;
        let x: Vec<f32> = (0..2 * hd).map(|i| i as f32 * 0.1 - 0.5).collect();
        // Interleaved order of a head: (x0, x4, x1, x5, ...) for the half-split order (x0..x7).
        let perm =
            |h: &[f32]| -> Vec<f32> { (0..hd / 2).flat_map(|i| [h[i], h[i + hd / 2]]).collect() };
        let mut a = x.clone();
        let inv = rope_inv_freq(10000.0, hd);
        rope(&mut a, 5, 2, hd, &inv, 1.0, false);
        let mut b: Vec<f32> = x.chunks(hd).flat_map(perm).collect();
        rope(&mut b, 5, 2, hd, &inv, 1.0, true);
        let a_perm: Vec<f32> = a.chunks(hd).flat_map(perm).collect();
        for (u, v) in a_perm.iter().zip(&b) {
            assert!((u - v).abs() < 1e-6);
        }
    }
}
