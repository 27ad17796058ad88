//! Every WGSL kernel against its CPU kernel on random inputs of several shapes, odd ones included.
//! Runs on any Vulkan device; lavapipe serves on machines without a GPU.

use std::sync::Arc;

use baton_shaders::cpu;
use baton_shaders::gpu::{Gpu, GpuOptions, KvFormat};
use baton_shaders::{random_rows, DType, QTensor, ALL_DTYPES};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn gpu(max_binding: Option<u64>) -> Arc<Gpu> {
    Gpu::new(&GpuOptions {
        allow_software: true,
        max_binding,
    })
    .expect("a Vulkan adapter (lavapipe: apt-get install mesa-vulkan-drivers libvulkan1)")
}

fn random(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs() / w.abs().max(1.0);
        assert!(err <= tol, "{what}: element {i}: gpu {g} vs cpu {w}");
    }
}

const DTYPES: [DType; 17] = ALL_DTYPES;

/// Rows quantized from random values where Baton writes the format, random blocks otherwise.
fn quantized(rng: &mut StdRng, dtype: DType, rows: usize, cols: usize) -> Vec<u8> {
    let values = random(rng, rows * cols, 1.0);
    if let Some(q) = cpu::quantize_row(dtype, &values) {
        return q;
    }
    let mut r2 = StdRng::seed_from_u64(rng.random());
    random_rows(
        dtype,
        rows,
        cols,
        || rng.random(),
        || r2.random_range(-0.002..0.002),
    )
}

#[test]
fn matmul_matches_cpu() {
    let mut rng = StdRng::seed_from_u64(11);
    // A small binding limit forces weights into several parts.
    for g in [gpu(None), gpu(Some(4096))] {
        for dtype in DTYPES {
            for (rows, cols, tokens) in [
                (1, 256, 1),
                (67, 512, 1),
                (33, 256, 5),
                (30, 768, 7),
                (9, 256, 19),
            ] {
                let bytes = quantized(&mut rng, dtype, rows, cols);
                let w = QTensor::new(dtype, rows, cols, &bytes).unwrap();
                let x = random(&mut rng, tokens * cols, 1.0);
                let mut want = vec![0f32; tokens * rows];
                cpu::matmul(&w, &x, tokens, &mut want);
                let gw = g.upload_matrix(&w).unwrap();
                let got = g.download(&g.matmul(&gw, &g.upload(&x), tokens)).unwrap();
                assert_close(
                    &got,
                    &want,
                    1e-4,
                    &format!("matmul {dtype:?} {rows}x{cols} t={tokens}"),
                );
            }
        }
    }
}

#[test]
fn matmul_with_odd_columns_in_float_formats() {
    let mut rng = StdRng::seed_from_u64(12);
    let g = gpu(None);
    for dtype in [DType::F32, DType::F16, DType::Bf16] {
        let (rows, cols, tokens) = (9, 37, 3);
        let bytes = quantized(&mut rng, dtype, rows, cols);
        let w = QTensor::new(dtype, rows, cols, &bytes).unwrap();
        let x = random(&mut rng, tokens * cols, 1.0);
        let mut want = vec![0f32; tokens * rows];
        cpu::matmul(&w, &x, tokens, &mut want);
        let got = g
            .download(&g.matmul(&g.upload_matrix(&w).unwrap(), &g.upload(&x), tokens))
            .unwrap();
        assert_close(&got, &want, 1e-4, &format!("matmul {dtype:?} odd"));
    }
}

#[test]
fn embed_matches_cpu() {
    let mut rng = StdRng::seed_from_u64(13);
    for g in [gpu(None), gpu(Some(8192))] {
        for dtype in DTYPES {
            let (rows, cols) = (50, 256);
            let bytes = quantized(&mut rng, dtype, rows, cols);
            let w = QTensor::new(dtype, rows, cols, &bytes).unwrap();
            let ids = [0u32, 49, 7, 7, 23];
            let mut want = vec![0f32; ids.len() * cols];
            for (id, dst) in ids.iter().zip(want.chunks_exact_mut(cols)) {
                cpu::dequantize_row(dtype, w.row(*id as usize), dst);
            }
            let got = g
                .download(&g.embed(&g.upload_matrix(&w).unwrap(), &ids))
                .unwrap();
            assert_close(&got, &want, 0.0, &format!("embed {dtype:?}"));
        }
    }
}

/// Another input of the same length, spread wider than `x` so that GELU's tails are reached.
fn y_of(x: &[f32]) -> Vec<f32> {
    x.iter()
        .enumerate()
        .map(|(i, v)| v * 3.0 - (i % 7) as f32)
        .collect()
}

#[test]
fn elementwise_kernels_match_cpu() {
    let mut rng = StdRng::seed_from_u64(14);
    let g = gpu(None);
    for (tokens, width, head_dim) in [(1, 64, 16), (3, 576, 64), (5, 200, 8)] {
        let x = random(&mut rng, tokens * width, 2.0);
        let w = random(&mut rng, width, 1.0);
        let mut want = vec![0f32; x.len()];
        cpu::rmsnorm(&x, &w, 1e-5, &mut want);
        let got = g
            .download(&g.rmsnorm(&g.upload(&x), &g.upload(&w), 1e-5))
            .unwrap();
        assert_close(&got, &want, 1e-5, "rmsnorm");

        for (interleaved, factor) in [(false, 1.0), (true, 1.0), (false, 1.2)] {
            let mut want = x.clone();
            let heads = width / head_dim;
            let inv = cpu::rope_inv_freq(100000.0, head_dim);
            cpu::rope(&mut want, 17, heads, head_dim, &inv, factor, interleaved);
            let t = g.upload(&x);
            g.rope(
                &t,
                heads,
                head_dim,
                17,
                &g.upload(&inv),
                factor,
                interleaved,
            );
            assert_close(&g.download(&t).unwrap(), &want, 1e-4, "rope");
        }

        let mut want = x.clone();
        cpu::gelu_mul(&mut want, &y_of(&x));
        let t = g.upload(&x);
        g.gelu_mul(&t, &g.upload(&y_of(&x)));
        assert_close(&g.download(&t).unwrap(), &want, 1e-5, "gelu_mul");

        let b = random(&mut rng, head_dim, 1.0);
        let mut want = x.clone();
        cpu::add_rows(&mut want, &b);
        let t = g.upload(&x);
        g.add_rows(&t, &g.upload(&b));
        assert_close(&g.download(&t).unwrap(), &want, 1e-6, "add_rows");

        let mut want = x.clone();
        cpu::scale(&mut want, 25.3);
        let t = g.upload(&x);
        g.scale(&t, 25.3);
        assert_close(&g.download(&t).unwrap(), &want, 1e-6, "scale");

        let y = random(&mut rng, x.len(), 2.0);
        let mut want = x.clone();
        cpu::silu_mul(&mut want, &y);
        let t = g.upload(&x);
        g.silu_mul(&t, &g.upload(&y));
        assert_close(&g.download(&t).unwrap(), &want, 1e-5, "silu_mul");

        let mut want = x.clone();
        cpu::add(&mut want, &y);
        let t = g.upload(&x);
        g.add(&t, &g.upload(&y));
        assert_close(&g.download(&t).unwrap(), &want, 1e-6, "add");
    }
}

#[test]
fn attention_matches_cpu() {
    let mut rng = StdRng::seed_from_u64(15);
    let g = gpu(None);
    // (heads, kv_heads, head_dim, pos0, tokens, window): decode, prefill, long contexts past
    // one tile, sliding windows shorter than the context.
    for (heads, kv, hd, pos0, tokens, window) in [
        (9, 3, 64, 0, 1, 0),
        (4, 2, 16, 0, 7, 0),
        (9, 3, 64, 70, 1, 0),
        (2, 1, 128, 130, 3, 0),
        (3, 3, 8, 5, 66, 0),
        (4, 1, 256, 150, 2, 100),
        (3, 3, 8, 5, 66, 9),
    ] {
        let mut shape = cpu::AttnShape::new(heads, kv, hd);
        shape.window = window;
        shape.scale = 0.5 / (hd as f32).sqrt();
        let len = pos0 + tokens;
        let q = random(&mut rng, tokens * heads * hd, 1.0);
        let k = random(&mut rng, len * kv * hd, 1.0);
        let v = random(&mut rng, len * kv * hd, 1.0);
        for format in [KvFormat::F16, KvFormat::F32] {
            // The reference sees keys and values rounded as the cache stores them.
            let round = |x: &[f32]| -> Vec<f32> {
                match format {
                    KvFormat::F16 => x.iter().map(|v| half::f16::from_f32(*v).to_f32()).collect(),
                    KvFormat::F32 => x.to_vec(),
                }
            };
            let mut want = vec![0f32; q.len()];
            cpu::attention(&q, &round(&k), &round(&v), pos0, &shape, &mut want);
            // Fill the caches in two appends, as a prefill followed by a step would.
            let words = format.words(len * kv * hd);
            let (kc, vc) = (g.zeros(words), g.zeros(words));
            let split = len / 2 * kv * hd;
            for (src, cache) in [(&k, &kc), (&v, &vc)] {
                g.kv_store(&g.upload(&src[..split]), &cache.buf, 0, format);
                g.kv_store(&g.upload(&src[split..]), &cache.buf, split, format);
            }
            let out = g
                .attention(&g.upload(&q), &kc.buf, &vc.buf, pos0, &shape, format)
                .unwrap();
            assert_close(
                &g.download(&out).unwrap(),
                &want,
                1e-4,
                &format!("attention {format:?} h{heads} kv{kv} d{hd} p{pos0} t{tokens} w{window}"),
            );
        }
    }
}

/// Sessions on several threads record into one encoder and one parameter ring. Each thread
/// records more dispatches than the ring holds, so the ring fills and restarts under
/// contention, and reads its tensor back every 50 dispatches, so encoders are submitted by
/// whichever thread reads; every read must see all of that thread's work before it. The
/// ring's slot was once checked under one lock and taken under another, and an encoder was
/// once submitted after its lock was released, so a later readback overtook it.
#[test]
fn concurrent_sessions_share_the_parameter_ring() {
    let g = gpu(None);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let g = g.clone();
            std::thread::spawn(move || {
                let x = g.upload(&[t as f32; 64]);
                let one = g.upload(&[1.0; 64]);
                let mut reads = Vec::new();
                for i in 1..=1500 {
                    g.add(&x, &one);
                    if i % 50 == 0 {
                        reads.push((i, g.download(&x).unwrap()));
                    }
                }
                (t, reads)
            })
        })
        .collect();
    for h in threads {
        let (t, reads) = h.join().expect("a thread recording dispatches panicked");
        for (i, got) in reads {
            assert_eq!(
                got,
                vec![(t + i) as f32; 64],
                "thread {t} after {i} additions"
            );
        }
    }
}
