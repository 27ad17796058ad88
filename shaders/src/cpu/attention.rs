//! Causal grouped-query attention over a KV cache, on f32 activations, with an optional
//! sliding window.

use super::ops::dot_f32;
use super::pool::{pool, SharedOut};

/// From this many queries on, attention runs as matrix products.
const GEMM_MIN_TOKENS: usize = 4;

/// The shape of one attention call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Multiplies the scores before the softmax (`1/√head_dim` for most models).
    pub scale: f32,
    /// A query at position `p` sees positions `p - window + 1 ..= p`; 0 for no window.
    pub window: usize,
    /// Values per head: `head_dim` for most models.
    pub v_dim: usize,
    /// The values are the first `v_dim` of each key rather than a cache of their own: MLA's
    /// latent cache, which holds one compressed row per position that serves as both.
    pub latent: bool,
}

impl AttnShape {
    /// The usual shape: scale `1/√head_dim`, no window.
    pub fn new(heads: usize, kv_heads: usize, head_dim: usize) -> Self {
        AttnShape {
            heads,
            kv_heads,
            head_dim,
            scale: 1.0 / (head_dim as f32).sqrt(),
            window: 0,
            v_dim: head_dim,
            latent: false,
        }
    }

    /// Values a row of the value cache holds: the key row itself for a latent cache.
    pub fn v_row(&self) -> usize {
        self.kv_heads * self.v_head()
    }

    /// Where the values of KV head `h + 1` start after those of head `h` in a row.
    pub fn v_head(&self) -> usize {
        if self.latent {
            self.head_dim
        } else {
            self.v_dim
        }
    }

    /// The width of the output rows: each head's `v_dim` values.
    pub fn out_width(&self) -> usize {
        self.heads * self.v_dim
    }

    /// The first position a query at `pos` sees.
    pub fn first_seen(&self, pos: usize) -> usize {
        if self.window == 0 {
            0
        } else {
            (pos + 1).saturating_sub(self.window)
        }
    }
}

/// Attention of `tokens` new queries at positions `pos0..` over a cache that already holds
/// their keys and values: `k` is `[pos0 + tokens, kv_heads · head_dim]`, `v` is
/// `[pos0 + tokens, v_row]` (`k` itself for a latent cache), `out` is `[tokens, out_width]`.
///
/// # Panics
/// When `q`, `k`, `v` or `out` are not of the lengths the shape and `pos0` imply.
pub fn attention(q: &[f32], k: &[f32], v: &[f32], pos0: usize, a: &AttnShape, out: &mut [f32]) {
    let (heads, kv_heads, head_dim) = (a.heads, a.kv_heads, a.head_dim);
    assert!(
        heads > 0 && kv_heads > 0 && head_dim > 0 && heads.is_multiple_of(kv_heads),
        "attention: {heads} heads do not group over {kv_heads} KV heads"
    );
    let q_width = heads * head_dim;
    let tokens = q.len() / q_width;
    let kv_width = kv_heads * head_dim;
    let (v_dim, v_row, v_head) = (a.v_dim, a.v_row(), a.v_head());
    assert!(
        q.len() == tokens * q_width
            && out.len() == tokens * a.out_width()
            && k.len() == (pos0 + tokens) * kv_width
            && v.len() == (pos0 + tokens) * v_row
            && v_dim <= v_head,
        "attention: q {}, k {}, v {}, out {} do not fit {tokens} tokens after {pos0}",
        q.len(),
        k.len(),
        v.len(),
        out.len()
    );
    if tokens >= GEMM_MIN_TOKENS {
        return attention_gemm(q, k, v, pos0, a, out);
    }
    let group = heads / kv_heads;
    let out_ptr = SharedOut(out.as_mut_ptr());
    let pairs = tokens * heads;
    pool().for_each(pairs, Vec::new, |i, scores: &mut Vec<f32>| {
        // SAFETY: each (token, head) pair `i` owns the disjoint slice i·v_dim.. of `out`.
        let o = unsafe { std::slice::from_raw_parts_mut(out_ptr.at(i * v_dim), v_dim) };
        let (t, h) = (i / heads, i % heads);
        let kvh = h / group;
        let qh = &q[i * head_dim..(i + 1) * head_dim];
        let (lo, len) = (a.first_seen(pos0 + t), pos0 + t + 1);
        scores.clear();
        let mut max = f32::NEG_INFINITY;
        for p in lo..len {
            let kp = &k[p * kv_width + kvh * head_dim..][..head_dim];
            let s = dot_f32(qh, kp) * a.scale;
            max = max.max(s);
            scores.push(s);
        }
        let mut total = 0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            total += *s;
        }
        o.fill(0.0);
        for (p, s) in (lo..len).zip(scores.iter()) {
            let vp = &v[p * v_row + kvh * v_head..][..v_dim];
            let wgt = s / total;
            for (a, b) in o.iter_mut().zip(vp) {
                *a += wgt * b;
            }
        }
    });
}

/// Attention of a prefill chunk, one head at a time: the scores of all its queries against all
/// positions are one matrix product, and their weighted sum of values another, both handed to
/// a float GEMM. Positions a query does not see are masked out before the softmax.
fn attention_gemm(q: &[f32], k: &[f32], v: &[f32], pos0: usize, a: &AttnShape, out: &mut [f32]) {
    let head_dim = a.head_dim;
    let (q_width, kv_width) = (a.heads * head_dim, a.kv_heads * head_dim);
    let tokens = q.len() / q_width;
    let len = pos0 + tokens;
    let group = a.heads / a.kv_heads;
    let out_ptr = SharedOut(out.as_mut_ptr());
    pool().for_each(
        a.heads,
        || vec![0f32; tokens * len],
        |h, scores| {
            let kv0 = (h / group) * head_dim;
            // SAFETY: A, B and C are in bounds for the strides given: q is [tokens, q_width],
            // k and v are [len, kv_width] (checked by `attention`), scores is [tokens, len].
            // Head h alone writes the columns h·head_dim.. of out.
            unsafe {
                matrixmultiply::sgemm(
                    tokens,
                    head_dim,
                    len,
                    a.scale,
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
                let end = pos0 + t + 1;
                let lo = a.first_seen(pos0 + t);
                let (head, masked) = row.split_at_mut(end);
                let (early, live) = head.split_at_mut(lo);
                let max = live.iter().fold(f32::NEG_INFINITY, |m, s| m.max(*s));
                let mut total = 0f32;
                for s in live.iter_mut() {
                    *s = (*s - max).exp();
                    total += *s;
                }
                live.iter_mut().for_each(|s| *s /= total);
                early.fill(0.0);
                masked.fill(0.0);
            }
            // SAFETY: as above; scores is [tokens, len], v is [len, v_row], out is
            // [tokens, out_width] and head h alone writes its columns h·v_dim.. of it.
            unsafe {
                matrixmultiply::sgemm(
                    tokens,
                    len,
                    a.v_dim,
                    1.0,
                    scores.as_ptr(),
                    len as isize,
                    1,
                    v.as_ptr().add((h / group) * a.v_head()),
                    a.v_row() as isize,
                    1,
                    0.0,
                    out_ptr.at(h * a.v_dim),
                    a.out_width() as isize,
                    1,
                );
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(n: usize, s: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7919 + s) % 997) as f32 / 997.0) - 0.5)
            .collect()
    }

    #[test]
    fn both_attention_paths_agree_with_and_without_a_window() {
        for window in [0, 3, 6] {
            let mut a = AttnShape::new(6, 2, 16);
            a.window = window;
            let (pos0, tokens) = (9, 5);
            let (hd, kv, heads) = (a.head_dim, a.kv_heads, a.heads);
            let len = pos0 + tokens;
            let (q, k, v) = (
                r(tokens * heads * hd, 1),
                r(len * kv * hd, 2),
                r(len * kv * hd, 3),
            );
            let mut gemm = vec![0f32; q.len()];
            attention(&q, &k, &v, pos0, &a, &mut gemm);
            // The same queries one at a time take the per-query path.
            for t in 0..tokens {
                let w = heads * hd;
                let mut one = vec![0f32; w];
                let end = (pos0 + t + 1) * kv * hd;
                attention(
                    &q[t * w..(t + 1) * w],
                    &k[..end],
                    &v[..end],
                    pos0 + t,
                    &a,
                    &mut one,
                );
                for (x, y) in one.iter().zip(&gemm[t * w..(t + 1) * w]) {
                    assert!((x - y).abs() < 1e-5, "window {window}: {x} vs {y}");
                }
            }
        }
    }

    #[test]
    fn a_latent_cache_attends_as_a_cache_of_the_keys_first_values() {
        // One KV head of 12 whose first 8 are the values, as MLA keeps its cache.
        let mut a = AttnShape::new(3, 1, 12);
        a.scale = 0.3;
        let mut latent = a;
        latent.v_dim = 8;
        latent.latent = true;
        let mut apart = a;
        apart.v_dim = 8;
        for (pos0, tokens) in [(5, 1), (9, 6)] {
            let len = pos0 + tokens;
            let (q, k) = (r(tokens * 36, 1), r(len * 12, 2));
            let v: Vec<f32> = k.chunks(12).flat_map(|row| row[..8].to_vec()).collect();
            let mut want = vec![0f32; tokens * 24];
            attention(&q, &k, &v, pos0, &apart, &mut want);
            let mut got = vec![0f32; tokens * 24];
            attention(&q, &k, &k, pos0, &latent, &mut got);
            assert_eq!(got, want);
            // Against full-width values, whose first 8 of each head are these.
            let mut full = vec![0f32; tokens * 36];
            attention(&q, &k, &k, pos0, &a, &mut full);
            for (g, f) in got.chunks(8).zip(full.chunks(12)) {
                for (x, y) in g.iter().zip(f) {
                    assert!((x - y).abs() < 1e-5, "{x} vs {y}");
                }
            }
        }
    }

    #[test]
    fn a_window_of_one_returns_the_own_value() {
        let mut a = AttnShape::new(2, 1, 4);
        a.window = 1;
        let (q, k, v) = (r(8, 1), r(3 * 4, 2), r(3 * 4, 3));
        let mut out = vec![0f32; 8];
        attention(&q, &k, &v, 2, &a, &mut out);
        assert_eq!(&out[..4], &v[8..12]);
        assert_eq!(&out[4..], &v[8..12]);
    }

    #[test]
    fn attention_of_one_position_returns_its_value() {
        let a = AttnShape::new(4, 2, 4);
        let q = vec![0.3f32; 16];
        let k = vec![0.7f32; 8];
        let v: Vec<f32> = (0..8).map(|i| i as f32).collect();
        let mut out = vec![0f32; 16];
        attention(&q, &k, &v, 0, &a, &mut out);
        assert_eq!(&out[..4], &v[..4]);
        assert_eq!(&out[12..], &v[4..]);
    }

    #[test]
    #[should_panic(expected = "do not fit")]
    fn a_short_cache_is_refused() {
        let a = AttnShape::new(2, 1, 4);
        let mut out = vec![0f32; 8];
        attention(&[0.0; 8], &[0.0; 4], &[0.0; 4], 3, &a, &mut out);
    }
}
