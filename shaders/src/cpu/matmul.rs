//! `y = x · Wᵀ` for stored weights: the matrix products of every linear layer.
//!
//! Few tokens (decode): one dot product per (row, token), rows split across threads.
//! Many tokens (prefill): each thread expands a tile of rows to f32 in a buffer that stays in
//! cache and hands it to a float GEMM, so dequantizing costs once per tile and not per token.

use super::act::Activation;
use super::dot::Dot;
use super::pool::{pool, SharedOut};
use crate::quant::{dequantize_row, QTensor};

/// From this many tokens on, dequantize a tile and use GEMM.
const GEMM_MIN_TOKENS: usize = 4;
/// Weight bytes per unit of work in decode. Small units cost more than they balance: each
/// starts a new stream through memory that the prefetcher must pick up again (on the demo
/// model 23 KiB units decoded at 0.75x the speed of 192-384 KiB ones).
const DOT_UNIT_BYTES: usize = 256 << 10;
/// Rows per unit of work in prefill: a tile dequantized to f32 that stays in cache.
const GEMM_ROWS: usize = 64;

/// Rows per unit for decode: about [`DOT_UNIT_BYTES`], in a number of units that the threads
/// share evenly.
fn dot_rows(w: &QTensor, threads: usize) -> usize {
    let units = w
        .data
        .len()
        .div_ceil(DOT_UNIT_BYTES)
        .max(1)
        .next_multiple_of(threads);
    w.rows.div_ceil(units).max(1)
}

/// `y[t, rows] = x[t, cols] · wᵀ`.
pub fn matmul(w: &QTensor, x: &[f32], tokens: usize, y: &mut [f32]) {
    matmul_many(&[*w], x, tokens, &mut [y]);
}

/// Several products of the same input (Q, K and V; gate and up) in one parallel pass.
pub fn matmul_many(ws: &[QTensor], x: &[f32], tokens: usize, ys: &mut [&mut [f32]]) {
    assert_eq!(ws.len(), ys.len());
    for (w, y) in ws.iter().zip(ys.iter()) {
        assert_eq!(x.len(), tokens * w.cols, "input is not [tokens, cols]");
        assert_eq!(y.len(), tokens * w.rows, "output is not [tokens, rows]");
    }
    let gemm = tokens >= GEMM_MIN_TOKENS;
    let threads = pool().threads();
    // (weight, first row, end row)
    let units: Vec<(usize, usize, usize)> = ws
        .iter()
        .enumerate()
        .flat_map(|(i, w)| {
            let step = if gemm {
                GEMM_ROWS
            } else {
                dot_rows(w, threads)
            };
            (0..w.rows)
                .step_by(step)
                .map(move |r| (i, r, (r + step).min(w.rows)))
        })
        .collect();
    let outs: Vec<SharedOut> = ys.iter_mut().map(|y| SharedOut(y.as_mut_ptr())).collect();
    let acts: Vec<Activation> = if gemm {
        Vec::new()
    } else {
        x.chunks(ws[0].cols).map(Activation::new).collect()
    };
    pool().for_each(units.len(), Vec::new, |u, buf| {
        let (i, r0, r1) = units[u];
        run_unit(&ws[i], r0, r1, gemm, x, tokens, outs[i], &acts, buf);
    });
}

/// Rows `r0..r1` of `w` times every token of `x`.
#[allow(clippy::too_many_arguments)]
fn run_unit(
    w: &QTensor,
    r0: usize,
    r1: usize,
    gemm: bool,
    x: &[f32],
    tokens: usize,
    out: SharedOut,
    acts: &[Activation],
    buf: &mut Vec<f32>,
) {
    if gemm {
        return gemm_tile(w, r0, r1, x, tokens, out, buf);
    }
    let dot = Dot::new(w.dtype);
    for (t, a) in acts.iter().enumerate() {
        for r in r0..r1 {
            let v = dot.dot(w.row(r), a);
            // SAFETY: (t, r) lies inside y, and rows r0..r1 belong to this unit alone.
            unsafe { *out.at(t * w.rows + r) = v };
        }
    }
}

fn gemm_tile(
    w: &QTensor,
    r0: usize,
    r1: usize,
    x: &[f32],
    tokens: usize,
    out: SharedOut,
    buf: &mut Vec<f32>,
) {
    let (k, n) = (w.cols, r1 - r0);
    buf.resize(n * k, 0.0);
    for (r, dst) in (r0..r1).zip(buf.chunks_exact_mut(k)) {
        dequantize_row(w.dtype, w.row(r), dst);
    }
    // SAFETY: C is the [tokens, r0..r1] block of y (row stride w.rows); no other unit writes
    // these columns. A and B are read-only slices of the stated sizes.
    unsafe {
        matrixmultiply::sgemm(
            tokens,
            k,
            n,
            1.0,
            x.as_ptr(),
            k as isize,
            1,
            buf.as_ptr(),
            1,
            k as isize,
            0.0,
            out.0.add(r0),
            w.rows as isize,
            1,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::dot::tests::{rounding_bound, test_row};
    use crate::quant::{QTensor, ALL_DTYPES};
    use rand::{Rng, SeedableRng};

    #[test]
    fn both_paths_match_the_dequantized_product() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for dtype in ALL_DTYPES {
            for (rows, cols, tokens) in [(1, 256, 1), (67, 512, 3), (130, 256, 5), (64, 768, 17)] {
                let bytes: Vec<u8> = (0..rows)
                    .flat_map(|_| test_row(&mut rng, dtype, cols))
                    .collect();
                let w = QTensor::new(dtype, rows, cols, &bytes).unwrap();
                let x: Vec<f32> = (0..tokens * cols)
                    .map(|_| rng.random_range(-1.0..1.0))
                    .collect();
                let mut y = vec![0f32; tokens * rows];
                matmul(&w, &x, tokens, &mut y);
                let mut deq = vec![0f32; cols];
                let acts: Vec<Activation> = x.chunks(cols).map(Activation::new).collect();
                for r in 0..rows {
                    dequantize_row(dtype, w.row(r), &mut deq);
                    for t in 0..tokens {
                        let xt = &x[t * cols..(t + 1) * cols];
                        let want: f32 = deq.iter().zip(xt).map(|(a, b)| a * b).sum();
                        let mag: f32 = deq.iter().zip(xt).map(|(a, b)| (a * b).abs()).sum();
                        let got = y[t * rows + r];
                        // Decode multiplies with the activation's integer copy.
                        let rounding = if tokens < GEMM_MIN_TOKENS {
                            rounding_bound(dtype, w.row(r), &acts[t]) as f32
                        } else {
                            0.0
                        };
                        assert!(
                            (got - want).abs() < 1e-5 * mag + 1e-4 + rounding,
                            "{dtype:?} {rows}x{cols} t={t}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
