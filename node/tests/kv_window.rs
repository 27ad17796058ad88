//! A sliding-window layer's KV cache drops the positions no query sees any more: on each
//! backend, attention over a long session through such a cache gives what attention over a
//! cache that keeps everything gives, while holding a bounded number of positions; and a
//! rewind works as far back as the cache still holds what the queries there see.

use baton_node::backend::cpu::CpuBackend;
use baton_node::backend::gpu::GpuBackend;
use baton_node::backend::kv::KvPositions;
use baton_node::backend::{Backend, KvLayout};
use baton_node::runtime::PREFILL_CHUNK;
use baton_node::RunError;
use baton_shaders::cpu::AttnShape;
use baton_shaders::gpu::{Gpu, GpuOptions, KvFormat};

const WINDOW: usize = 24;

/// Deterministic values in -1..1 for step `seed`.
fn values(seed: usize, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((seed * 7919 + i * 104_729) % 2001) as f32 / 1000.0) - 1.0)
        .collect()
}

/// Steps of a session: a prefill in chunks, then decode.
fn steps() -> Vec<usize> {
    let mut s = vec![PREFILL_CHUNK, PREFILL_CHUNK, 37];
    s.extend(std::iter::repeat_n(1, 200));
    s
}

/// Runs `steps` through a dropping and a keeping cache and returns the largest difference
/// between their outputs.
fn compare<B: Backend>(be: &B) -> f32 {
    let shape = AttnShape {
        window: WINDOW,
        ..AttnShape::new(4, 2, 16)
    };
    let (qw, kw) = (4 * 16, 2 * 16);
    let context = 4096;
    let mut dropping = be.kv_cache(KvLayout::split(kw), context, WINDOW).unwrap();
    let mut keeping = be.kv_cache(KvLayout::split(kw), context, 0).unwrap();
    let mut worst = 0f32;
    let mut pos = 0;
    for (i, n) in steps().into_iter().enumerate() {
        let q = be.upload(&values(3 * i, n * qw), qw).unwrap();
        let k = be.upload(&values(3 * i + 1, n * kw), kw).unwrap();
        let v = be.upload(&values(3 * i + 2, n * kw), kw).unwrap();
        let a = be
            .attention(&q, &k, Some(&v), &mut dropping, pos, &shape)
            .unwrap();
        let b = be
            .attention(&q, &k, Some(&v), &mut keeping, pos, &shape)
            .unwrap();
        let (a, b) = (be.download(&a).unwrap(), be.download(&b).unwrap());
        for (x, y) in a.iter().zip(&b) {
            worst = worst.max((x - y).abs());
        }
        pos += n;
    }
    // Back by one prefill chunk is possible; back to a position whose window went is not, and
    // leaves the cache as it was; back to the start always is.
    be.kv_truncate(&mut dropping, pos - PREFILL_CHUNK).unwrap();
    let far = be.kv_truncate(&mut dropping, 100);
    assert!(matches!(far, Err(RunError::RewindTooFar { .. })), "{far:?}");
    let n = 1;
    let at = pos - PREFILL_CHUNK;
    let q = be.upload(&values(1, n * qw), qw).unwrap();
    let k = be.upload(&values(2, n * kw), kw).unwrap();
    be.attention(&q, &k, Some(&k), &mut dropping, at, &shape)
        .unwrap();
    be.kv_truncate(&mut dropping, 0).unwrap();
    be.attention(&q, &k, Some(&k), &mut dropping, 0, &shape)
        .unwrap();
    worst
}

#[test]
fn cpu_drops_what_no_query_sees() {
    let worst = compare(&CpuBackend);
    assert!(worst <= 1e-6, "cpu: dropping changed attention by {worst}");
}

#[test]
fn wgpu_drops_what_no_query_sees() {
    let gpu = Gpu::new(&GpuOptions {
        allow_software: true,
        max_binding: None,
    })
    .expect("a Vulkan device (lavapipe will do)");
    for kv_format in [KvFormat::F32, KvFormat::F16] {
        let be = GpuBackend {
            gpu: gpu.clone(),
            kv_format,
        };
        let worst = compare(&be);
        assert!(
            worst <= 1e-5,
            "{kv_format:?}: dropping changed attention by {worst}"
        );
    }
}

#[test]
fn a_window_layer_holds_what_the_bound_says() {
    let most = KvPositions::most_held(WINDOW, PREFILL_CHUNK).unwrap();
    let total: usize = steps().iter().sum();
    assert!(
        most < total,
        "the session is long enough to drop ({most} < {total})"
    );
    let mut at = KvPositions::new(WINDOW);
    let mut pos = 0;
    for n in steps() {
        at.append(pos, n).unwrap();
        pos += n;
        assert!(at.len() <= most);
    }
}
