//! Every WGSL kernel against its CPU kernel on random inputs of several shapes, odd ones included.
//! Runs on any Vulkan device; lavapipe serves on machines without a GPU.

use std::sync::Arc;

use baton_shaders::cpu;
use baton_shaders::gpu::{Gpu, GpuOptions, KvFormat};
use baton_shaders::{DType, QTensor};
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

const DTYPES: [DType; 5] = [
    DType::F32,
    DType::F16,
    DType::Bf16,
    DType::Q8_0,
    DType::Q4_1,
];

fn quantized(rng: &mut StdRng, dtype: DType, rows: usize, cols: usize) -> Vec<u8> {
    let values = random(rng, rows * cols, 1.0);
    values
        .chunks(cols)
        .flat_map(|r| cpu::quantize_row(dtype, r))
        .collect()
}

#[test]
fn matmul_matches_cpu() {
    let mut rng = StdRng::seed_from_u64(11);
    // A small binding limit forces weights into several parts.
    for g in [gpu(None), gpu(Some(4096))] {
        for dtype in DTYPES {
            for (rows, cols, tokens) in [(1, 32, 1), (67, 64, 1), (33, 96, 5), (130, 160, 7)] {
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
    for g in [gpu(None), gpu(Some(2048))] {
        for dtype in DTYPES {
            let (rows, cols) = (50, 96);
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

#[test]
fn rmsnorm_rope_silu_add_match_cpu() {
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

        for interleaved in [false, true] {
            let mut want = x.clone();
            let heads = width / head_dim;
            cpu::rope(&mut want, 17, heads, head_dim, 100000.0, interleaved);
            let t = g.upload(&x);
            g.rope(&t, heads, head_dim, 17, 100000.0, interleaved);
            assert_close(&g.download(&t).unwrap(), &want, 1e-4, "rope");
        }

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
    // (heads, kv_heads, head_dim, pos0, tokens): decode, prefill, long contexts past one tile.
    for (heads, kv, hd, pos0, tokens) in [
        (9, 3, 64, 0, 1),
        (4, 2, 16, 0, 7),
        (9, 3, 64, 70, 1),
        (2, 1, 128, 130, 3),
        (3, 3, 8, 5, 66),
    ] {
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
            cpu::attention(&q, &round(&k), &round(&v), pos0, heads, kv, hd, &mut want);
            // Fill the caches in two appends, as a prefill followed by a step would.
            let words = format.words(len * kv * hd);
            let (kc, vc) = (g.zeros(words), g.zeros(words));
            let split = len / 2 * kv * hd;
            for (src, cache) in [(&k, &kc), (&v, &vc)] {
                g.kv_store(&g.upload(&src[..split]), &cache.buf, 0, format);
                g.kv_store(&g.upload(&src[split..]), &cache.buf, split, format);
            }
            let out = g
                .attention(&g.upload(&q), &kc.buf, &vc.buf, pos0, heads, kv, hd, format)
                .unwrap();
            assert_close(
                &g.download(&out).unwrap(),
                &want,
                1e-4,
                &format!("attention {format:?} h{heads} kv{kv} d{hd} p{pos0} t{tokens}"),
            );
        }
    }
}
