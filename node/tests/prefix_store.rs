//! What prefix reuse stands on: a copy of a KV cache's first positions attends exactly as the
//! cache itself cut back to them, on each backend; and the store of kept prompts gives each
//! client only its own, the longest run of shared blocks, and drops the least recently used
//! beyond its budget.

use baton_node::backend::cpu::CpuBackend;
use baton_node::backend::gpu::GpuBackend;
use baton_node::backend::{Backend, KvLayout};
use baton_node::net::generate_identity;
use baton_node::prefix::{chain, PrefixStore};
use baton_node::{BackendChoice, Engine, Logits, ModelFile, SpanInput};
use baton_protocol::wire::PREFIX_BLOCK;
use baton_protocol::{Span, WireDtype};
use baton_shaders::cpu::AttnShape;
use baton_shaders::gpu::{Gpu, GpuOptions, KvFormat};
use baton_tests::demo_model;

fn values(seed: usize, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((seed * 7919 + i * 104_729) % 2001) as f32 / 1000.0) - 1.0)
        .collect()
}

/// Fills a cache with 40 positions, forks its first 32, and runs the same step at position 32
/// on the fork and on the original cut back to 32: the largest difference of their outputs.
/// A latent cache (MLA's: one KV head whose first values are the values) as well as a plain one.
fn fork_attends_as_the_original<B: Backend>(be: &B, latent: bool) -> f32 {
    let (shape, layout) = if latent {
        let shape = AttnShape {
            v_dim: 16,
            latent: true,
            ..AttnShape::new(4, 1, 24)
        };
        let layout = KvLayout {
            width: 24,
            values: false,
        };
        (shape, layout)
    } else {
        (AttnShape::new(4, 2, 16), KvLayout::split(2 * 16))
    };
    let (qw, kw) = (shape.heads * shape.head_dim, layout.width);
    let values_of = |seed: usize, n: usize| {
        layout
            .values
            .then(|| be.upload(&values(seed, n * kw), kw).unwrap())
    };
    let mut kv = be.kv_cache(layout, 256, 0).unwrap();
    for (i, (pos, n)) in [(0, 17), (17, 15), (32, 8)].into_iter().enumerate() {
        let q = be.upload(&values(3 * i, n * qw), qw).unwrap();
        let k = be.upload(&values(3 * i + 1, n * kw), kw).unwrap();
        let v = values_of(3 * i + 2, n);
        be.attention(&q, &k, v.as_ref(), &mut kv, pos, &shape)
            .unwrap();
    }
    let mut fork = be.kv_fork(&kv, 32).unwrap();
    assert!(be.kv_fork(&kv, 41).is_err(), "positions never held");
    be.kv_truncate(&mut kv, 32).unwrap();
    let q = be.upload(&values(10, 3 * qw), qw).unwrap();
    let k = be.upload(&values(11, 3 * kw), kw).unwrap();
    let v = values_of(12, 3);
    let a = be
        .attention(&q, &k, v.as_ref(), &mut fork, 32, &shape)
        .unwrap();
    let b = be
        .attention(&q, &k, v.as_ref(), &mut kv, 32, &shape)
        .unwrap();
    assert_eq!(
        be.tokens(&a) * shape.out_width(),
        be.download(&a).unwrap().len()
    );
    let (a, b) = (be.download(&a).unwrap(), be.download(&b).unwrap());
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn a_cpu_fork_attends_as_the_original() {
    for latent in [false, true] {
        assert_eq!(fork_attends_as_the_original(&CpuBackend, latent), 0.0);
    }
}

#[test]
fn a_wgpu_fork_attends_as_the_original() {
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
        for latent in [false, true] {
            let worst = fork_attends_as_the_original(&be, latent);
            assert_eq!(worst, 0.0, "{kv_format:?}, latent {latent}");
        }
    }
}

#[test]
fn the_store_keeps_each_clients_prompts_within_its_budget() {
    let model = ModelFile::open(&demo_model()).unwrap();
    let span = Span::new(0, 2).unwrap();
    let engine = Engine::load(&model, span, BackendChoice::Cpu.into(), &mut |_, _| {}).unwrap();
    let b = PREFIX_BLOCK;
    // A prompt of 4 whole blocks and a token, run through a session's cache.
    let prompt = |seed: u32| -> Vec<u32> { (0..4 * b as u32 + 1).map(|i| seed + i).collect() };
    let run = |p: &[u32]| {
        let mut c = engine.new_cache().unwrap();
        c.run_step(SpanInput::Tokens(p), Logits::Last).unwrap();
        c
    };
    let (me, other) = (
        generate_identity().public().to_peer_id(),
        generate_identity().public().to_peer_id(),
    );
    let fresh = engine.new_cache().unwrap();
    let wire = WireDtype::F16;
    // Room for two prompts of four blocks.
    let mut store = PrefixStore::new(8 * b);
    let a = prompt(100);
    store.keep(me, wire, &chain(&a), &run(&a), None);
    assert_eq!(store.tokens(), 4 * b);

    // The same first two blocks, then others: two blocks reused, and only by their client.
    let mut c = a.clone();
    c[2 * b + 3] = 7;
    let hit = store.reuse(me, wire, &chain(&c), &fresh).unwrap();
    assert_eq!((hit.tokens, hit.cache.pos()), (2 * b, 2 * b));
    assert!(store.reuse(other, wire, &chain(&c), &fresh).is_none());
    assert!(store
        .reuse(me, WireDtype::F32, &chain(&c), &fresh)
        .is_none());
    assert_eq!((store.hits, store.queried), (2 * b as u64, 12 * b as u64));

    // A prompt that extends a kept one replaces it; one already covered adds nothing.
    let mut longer = a.clone();
    longer.extend((0..2 * b as u32).map(|i| 900 + i));
    store.keep(me, wire, &chain(&longer), &run(&longer), None);
    assert_eq!(store.tokens(), 6 * b);
    store.keep(me, wire, &chain(&a), &run(&a), None);
    assert_eq!(store.tokens(), 6 * b);

    // Beyond the budget the least recently used go: keeping `d` makes room by dropping
    // `longer`; with `d` and `e` kept and `d` used since, keeping `f` drops `e`.
    let (d, e, f) = (prompt(5000), prompt(6000), prompt(7000));
    store.keep(me, wire, &chain(&d), &run(&d), None);
    assert_eq!(store.tokens(), 4 * b);
    assert!(store.reuse(me, wire, &chain(&longer), &fresh).is_none());
    store.keep(me, wire, &chain(&e), &run(&e), None);
    assert_eq!(store.tokens(), 8 * b);
    assert_eq!(
        store.reuse(me, wire, &chain(&d), &fresh).unwrap().tokens,
        4 * b
    );
    store.keep(me, wire, &chain(&f), &run(&f), None);
    assert_eq!(store.tokens(), 8 * b);
    assert!(store.reuse(me, wire, &chain(&e), &fresh).is_none());
    assert!(store.reuse(me, wire, &chain(&d), &fresh).is_some());
    assert!(store.reuse(me, wire, &chain(&f), &fresh).is_some());
    // A prompt larger than the whole budget is not kept.
    let huge: Vec<u32> = (0..9 * b as u32 + 1).collect();
    store.keep(me, wire, &chain(&huge), &run(&huge), None);
    assert_eq!(store.tokens(), 8 * b);
}
