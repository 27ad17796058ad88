//! `y = x · Wᵀ` for stored weights: the matrix products of every linear layer.
//!
//! Few tokens (decode): one dot product per (row, token), rows split across threads; each row
//! is read once for all the tokens, so a pass over the decode steps of many sessions reads the
//! weights once.
//! Many tokens (prefill): each thread expands a tile of rows to f32 in a buffer that stays in
//! cache and hands it to a float GEMM, so dequantizing costs once per tile and not per token.
//!
//! Either way a token's output depends on that token's input alone, never on the other tokens
//! of the product: a session's output is the same whether it runs alone or batched.

use super::act::Activation;
use super::dot::Dot;
use super::pool::{pool, SharedOut};
use crate::quant::{dequantize_row, QTensor};

/// From this many tokens on, a step's product dequantizes a tile and uses GEMM; steps of fewer
/// tokens take the dot products of decode. Dequantizing costs the same however few the tokens:
/// on the demo model (2 threads) a 4-token step took 71 ms by GEMM and 13 ms by dot products,
/// which stay ahead up to about 24 tokens.
pub const GEMM_MIN_TOKENS: usize = 24;
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

/// Several products of the same input (Q, K and V; gate and up) in one parallel pass, as one
/// step of `tokens` tokens.
pub fn matmul_many(ws: &[QTensor], x: &[f32], tokens: usize, ys: &mut [&mut [f32]]) {
    let decode = if tokens < GEMM_MIN_TOKENS { tokens } else { 0 };
    matmul_batch(ws, x, tokens, decode, ys);
}

/// Products over the tokens of several steps at once: the first `decode` tokens belong to
/// steps of fewer than [`GEMM_MIN_TOKENS`] tokens and take the dot products of decode, the
/// others belong to longer steps and take GEMM, so that each token is computed exactly as its
/// step alone would compute it ([`matmul_many`]).
pub fn matmul_batch(
    ws: &[QTensor],
    x: &[f32],
    tokens: usize,
    decode: usize,
    ys: &mut [&mut [f32]],
) {
    matmul_groups(
        &[Product {
            ws,
            x,
            tokens,
            decode,
        }],
        ys,
    );
}

/// One product of [`matmul_groups`]: weights over one input, as [`matmul_batch`] takes them.
pub struct Product<'a> {
    pub ws: &'a [QTensor<'a>],
    pub x: &'a [f32],
    pub tokens: usize,
    pub decode: usize,
}

/// Products over different inputs (the experts of a mixture, each over its own tokens) in one
/// parallel pass, each computed exactly as [`matmul_batch`] computes it alone. `ys` holds the
/// outputs of every product's weights, product after product.
pub fn matmul_groups(products: &[Product], ys: &mut [&mut [f32]]) {
    assert_eq!(
        products.iter().map(|p| p.ws.len()).sum::<usize>(),
        ys.len(),
        "one output per weight"
    );
    let mut outs: Vec<SharedOut> = Vec::with_capacity(ys.len());
    let mut y_at = 0;
    for p in products {
        assert!(p.decode <= p.tokens, "more decode tokens than tokens");
        for w in p.ws {
            let y = &mut ys[y_at];
            assert_eq!(p.x.len(), p.tokens * w.cols, "input is not [tokens, cols]");
            assert_eq!(y.len(), p.tokens * w.rows, "output is not [tokens, rows]");
            outs.push(SharedOut(y.as_mut_ptr()));
            y_at += 1;
        }
    }
    let threads = pool().threads();
    // (product, weight, output, first row, end row, gemm)
    let mut units: Vec<(usize, usize, usize, usize, usize, bool)> = Vec::new();
    let mut first_out = 0;
    for (g, p) in products.iter().enumerate() {
        for (gemm, count) in [(false, p.decode), (true, p.tokens - p.decode)] {
            if count == 0 {
                continue;
            }
            for (i, w) in p.ws.iter().enumerate() {
                let step = if gemm {
                    GEMM_ROWS
                } else {
                    dot_rows(w, threads)
                };
                units.extend(
                    (0..w.rows)
                        .step_by(step)
                        .map(|r| (g, i, first_out + i, r, (r + step).min(w.rows), gemm)),
                );
            }
        }
        first_out += p.ws.len();
    }
    let acts: Vec<Vec<Activation>> = products
        .iter()
        .map(|p| {
            let cols = p.ws.first().map_or(1, |w| w.cols.max(1));
            p.x[..p.decode * cols]
                .chunks(cols)
                .map(Activation::new)
                .collect()
        })
        .collect();
    pool().for_each(units.len(), Vec::new, |u, buf| {
        let (g, i, o, r0, r1, gemm) = units[u];
        let p = &products[g];
        let w = &p.ws[i];
        if gemm {
            let rest = &p.x[p.decode * w.cols..];
            // The rows of the GEMM tokens follow the `decode` rows of the others.
            let out = SharedOut(outs[o].at(p.decode * w.rows));
            gemm_tile(w, r0, r1, rest, p.tokens - p.decode, out, buf);
        } else {
            dot_unit(w, r0, r1, outs[o], &acts[g]);
        }
    });
}

/// Rows `r0..r1` of `w` times each decode token, each row read once for all of them and
/// unpacked once for each four.
fn dot_unit(w: &QTensor, r0: usize, r1: usize, out: SharedOut, acts: &[Activation]) {
    let dot = Dot::new(w.dtype);
    let fours = acts.len() / 4 * 4;
    for r in r0..r1 {
        let row = w.row(r);
        // SAFETY (both writes): (t, r) lies inside y, and rows r0..r1 belong to this unit
        // alone.
        for (i, four) in acts[..fours].chunks_exact(4).enumerate() {
            let v = dot.dot4(row, &[&four[0], &four[1], &four[2], &four[3]]);
            for (j, v) in v.into_iter().enumerate() {
                unsafe { *out.at((4 * i + j) * w.rows + r) = v };
            }
        }
        for (t, a) in acts.iter().enumerate().skip(fours) {
            unsafe { *out.at(t * w.rows + r) = dot.dot(row, a) };
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
    use crate::quant::{DType, QTensor, ALL_DTYPES};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// `rows` random rows of `dtype`, `cols` weights each.
    fn random_rows(rng: &mut StdRng, dtype: DType, rows: usize, cols: usize) -> Vec<u8> {
        (0..rows).flat_map(|_| test_row(rng, dtype, cols)).collect()
    }

    fn random_acts(rng: &mut StdRng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    #[test]
    fn both_paths_match_the_dequantized_product() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for dtype in ALL_DTYPES {
            for (rows, cols, tokens) in [
                (1, 256, 1),
                (67, 512, 3),
                (130, 256, 5),
                (64, 768, 17),
                (40, 512, 30),
            ] {
                let bytes = random_rows(&mut rng, dtype, rows, cols);
                let w = QTensor::new(dtype, rows, cols, &bytes).unwrap();
                let x = random_acts(&mut rng, tokens * cols);
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

    #[test]
    fn a_batch_computes_each_step_as_it_runs_alone() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        // Decode steps first, then longer ones: the layout a pass gives the product.
        let steps = [1usize, 2, 1, 3, 5, 17, 4, 30, 24];
        let decode: usize = steps.iter().filter(|&&n| n < GEMM_MIN_TOKENS).sum();
        let tokens: usize = steps.iter().sum();
        for dtype in ALL_DTYPES {
            let (rows, cols) = (300, 512);
            let bytes = random_rows(&mut rng, dtype, rows, cols);
            let w = QTensor::new(dtype, rows, cols, &bytes).unwrap();
            let x = random_acts(&mut rng, tokens * cols);
            let mut y = vec![0f32; tokens * rows];
            matmul_batch(&[w], &x, tokens, decode, &mut [&mut y]);
            let mut t0 = 0;
            for n in steps {
                let mut alone = vec![0f32; n * rows];
                matmul(&w, &x[t0 * cols..(t0 + n) * cols], n, &mut alone);
                assert!(
                    alone == y[t0 * rows..(t0 + n) * rows],
                    "{dtype:?}: the step of {n} tokens at {t0} differs in the batch"
                );
                t0 += n;
            }
        }
    }

    #[test]
    fn grouped_products_compute_each_as_alone() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let (rows, cols) = (96, 256);
        // (tokens, decode) of each product: decode only, GEMM only, both.
        let shapes = [(3usize, 3usize), (30, 0), (27, 2), (1, 1)];
        for dtype in [DType::Q4K, DType::Q8_0, DType::F16] {
            let bytes: Vec<Vec<u8>> = (0..2 * shapes.len())
                .map(|_| random_rows(&mut rng, dtype, rows, cols))
                .collect();
            let ws: Vec<QTensor> = bytes
                .iter()
                .map(|b| QTensor::new(dtype, rows, cols, b).unwrap())
                .collect();
            let xs: Vec<Vec<f32>> = shapes
                .iter()
                .map(|&(t, _)| random_acts(&mut rng, t * cols))
                .collect();
            let products: Vec<Product> = shapes
                .iter()
                .enumerate()
                .map(|(g, &(tokens, decode))| Product {
                    ws: &ws[2 * g..2 * g + 2],
                    x: &xs[g],
                    tokens,
                    decode,
                })
                .collect();
            let mut ys: Vec<Vec<f32>> = shapes
                .iter()
                .flat_map(|&(t, _)| [vec![0f32; t * rows], vec![0f32; t * rows]])
                .collect();
            let mut refs: Vec<&mut [f32]> = ys.iter_mut().map(|y| y.as_mut_slice()).collect();
            matmul_groups(&products, &mut refs);
            for (g, p) in products.iter().enumerate() {
                let mut alone = [vec![0f32; p.tokens * rows], vec![0f32; p.tokens * rows]];
                let [a, b] = &mut alone;
                matmul_batch(p.ws, p.x, p.tokens, p.decode, &mut [a, b]);
                assert!(
                    alone[0] == ys[2 * g] && alone[1] == ys[2 * g + 1],
                    "{dtype:?}: product {g} differs in the group"
                );
            }
        }
    }
}
