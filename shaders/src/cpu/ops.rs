//! The element-wise and attention kernels of a Llama block, on f32 activations `[tokens, width]`.

use super::pool::{pool, SharedOut};

/// From this many queries on, attention runs as matrix products.
const GEMM_MIN_TOKENS: usize = 4;

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

/// Rotary position embedding, in place, on `[tokens, heads · head_dim]` at positions
/// `pos0, pos0 + 1, …`. `interleaved` rotates pairs `(2i, 2i+1)` (GGUF's row order); otherwise
/// pairs `(i, i + head_dim/2)` (Hugging Face's).
pub fn rope(
    x: &mut [f32],
    pos0: usize,
    heads: usize,
    head_dim: usize,
    theta: f32,
    interleaved: bool,
) {
    let half = head_dim / 2;
    let inv: Vec<f32> = (0..half)
        .map(|i| 1.0 / theta.powf(2.0 * i as f32 / head_dim as f32))
        .collect();
    for (t, tok) in x.chunks_exact_mut(heads * head_dim).enumerate() {
        let p = (pos0 + t) as f32;
        let (sin, cos): (Vec<f32>, Vec<f32>) = inv.iter().map(|f| (p * f).sin_cos()).unzip();
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

/// Causal grouped-query attention of `tokens` new queries at positions `pos0..` over a cache
/// that already holds their keys and values: `k`, `v` are `[pos0 + tokens, kv_heads · head_dim]`.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    pos0: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    out: &mut [f32],
) {
    let tokens = q.len() / (heads * head_dim);
    if tokens >= GEMM_MIN_TOKENS {
        return attention_gemm(q, k, v, pos0, heads, kv_heads, head_dim, out);
    }
    let group = heads / kv_heads;
    let kv_width = kv_heads * head_dim;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let out_ptr = SharedOut(out.as_mut_ptr());
    let pairs = out.len() / head_dim;
    pool().for_each(pairs, Vec::new, |i, scores: &mut Vec<f32>| {
        // SAFETY: each (token, head) pair `i` owns the disjoint slice i·head_dim.. of `out`.
        let o = unsafe { std::slice::from_raw_parts_mut(out_ptr.at(i * head_dim), head_dim) };
        let (t, h) = (i / heads, i % heads);
        let kvh = h / group;
        let qh = &q[i * head_dim..(i + 1) * head_dim];
        let len = pos0 + t + 1;
        scores.clear();
        let mut max = f32::NEG_INFINITY;
        for p in 0..len {
            let kp = &k[p * kv_width + kvh * head_dim..][..head_dim];
            let s = dot_f32(qh, kp) * scale;
            max = max.max(s);
            scores.push(s);
        }
        let mut total = 0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            total += *s;
        }
        o.fill(0.0);
        for (p, s) in scores.iter().enumerate() {
            let vp = &v[p * kv_width + kvh * head_dim..][..head_dim];
            let wgt = s / total;
            for (a, b) in o.iter_mut().zip(vp) {
                *a += wgt * b;
            }
        }
    });
}

/// Attention of a prefill chunk, one head at a time: the scores of all its queries against all
/// positions are one matrix product, and their weighted sum of values another, both handed to
/// a float GEMM. Positions past each query's own are masked out before the softmax.
#[allow(clippy::too_many_arguments)]
fn attention_gemm(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    pos0: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    out: &mut [f32],
) {
    let tokens = q.len() / (heads * head_dim);
    let len = pos0 + tokens;
    let (q_width, kv_width) = (heads * head_dim, kv_heads * head_dim);
    let group = heads / kv_heads;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let out_ptr = SharedOut(out.as_mut_ptr());
    pool().for_each(
        heads,
        || vec![0f32; tokens * len],
        |h, scores| {
            let kv0 = (h / group) * head_dim;
            // SAFETY: A, B and C are in bounds for the strides given: q is [tokens, q_width],
            // k and v are [len, kv_width], scores is [tokens, len]. Head h alone writes the
            // columns h·head_dim.. of out.
            unsafe {
                matrixmultiply::sgemm(
                    tokens,
                    head_dim,
                    len,
                    scale,
                    q.as_ptr().add(h * head_dim),
                    q_width as isize,
                    1,
                    k.as_ptr().add(kv0),
                    1,
                    kv_width as isize,
                    0.0,
                    scores.as_mut_ptr(),
                    len as isize,
                    1,
                );
            }
            for (t, row) in scores.chunks_exact_mut(len).enumerate() {
                let (live, masked) = row.split_at_mut(pos0 + t + 1);
                let max = live.iter().fold(f32::NEG_INFINITY, |m, s| m.max(*s));
                let mut total = 0f32;
                for s in live.iter_mut() {
                    *s = (*s - max).exp();
                    total += *s;
                }
                live.iter_mut().for_each(|s| *s /= total);
                masked.fill(0.0);
            }
            unsafe {
                matrixmultiply::sgemm(
                    tokens,
                    len,
                    head_dim,
                    1.0,
                    scores.as_ptr(),
                    len as isize,
                    1,
                    v.as_ptr().add(kv0),
                    kv_width as isize,
                    1,
                    0.0,
                    out_ptr.at(h * head_dim),
                    q_width as isize,
                    1,
                );
            }
        },
    );
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

/// `x += y`.
pub fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
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
        rope(&mut a, 5, 2, hd, 10000.0, false);
        let mut b: Vec<f32> = x.chunks(hd).flat_map(perm).collect();
        rope(&mut b, 5, 2, hd, 10000.0, true);
        let a_perm: Vec<f32> = a.chunks(hd).flat_map(perm).collect();
        for (u, v) in a_perm.iter().zip(&b) {
            assert!((u - v).abs() < 1e-6);
        }
    }

    #[test]
    fn both_attention_paths_agree() {
        let (heads, kv, hd, pos0, tokens) = (6, 2, 16, 9, 5);
        let len = pos0 + tokens;
        let r = |n: usize, s: usize| -> Vec<f32> {
            (0..n)
                .map(|i| (((i * 7919 + s) % 997) as f32 / 997.0) - 0.5)
                .collect()
        };
        let (q, k, v) = (
            r(tokens * heads * hd, 1),
            r(len * kv * hd, 2),
            r(len * kv * hd, 3),
        );
        let mut gemm = vec![0f32; q.len()];
        attention(&q, &k, &v, pos0, heads, kv, hd, &mut gemm);
        // The same queries one at a time take the per-query path.
        for t in 0..tokens {
            let w = heads * hd;
            let mut one = vec![0f32; w];
            attention(
                &q[t * w..(t + 1) * w],
                &k[..(pos0 + t + 1) * kv * hd],
                &v[..(pos0 + t + 1) * kv * hd],
                pos0 + t,
                heads,
                kv,
                hd,
                &mut one,
            );
            for (a, b) in one.iter().zip(&gemm[t * w..(t + 1) * w]) {
                assert!((a - b).abs() < 1e-5, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn attention_of_one_position_returns_its_value() {
        let (heads, kv, hd) = (4, 2, 4);
        let q = vec![0.3f32; heads * hd];
        let k = vec![0.7f32; kv * hd];
        let v: Vec<f32> = (0..kv * hd).map(|i| i as f32).collect();
        let mut out = vec![0f32; heads * hd];
        attention(&q, &k, &v, 0, heads, kv, hd, &mut out);
        assert_eq!(&out[..hd], &v[..hd]);
        assert_eq!(&out[3 * hd..], &v[hd..]);
    }
}
