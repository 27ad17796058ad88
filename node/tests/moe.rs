//! Mixture-of-experts folders (`fixtures/moe/`, tiny random checkpoints) against transformers'
//! logits: `mixtral/` (8 experts, top-2, renormalised softmax router) and `qwen3_moe/` (q/k
//! norms, head_dim 16, 8 experts top-2, `norm_topk_prob`), `deepseek_v2/` (latent attention with
//! a full query projection, group-limited softmax routing), `deepseek_v3/` (latent attention, a
//! dense layer then 16 experts in 4 groups with a shared expert) and `deepseek_v3_fp8/` (its
//! weights in FP8 with 128 × 128 scale tiles, YaRN with mscale, a non-zero choice bias).
//! Their GGUF conversions by llama.cpp's converter give the same logits. Batched with other
//! sessions, a session's logits stay exactly those it gets alone.

mod reference;

use baton_node::moe::Routing;
use baton_node::{
    BackendChoice, Engine, EngineOptions, KvDtype, Logits, ModelConfig, ModelFile, SpanInput,
};
use baton_protocol::Span;
use baton_tests::fixtures_dir;

use reference::check_folder;

const MODELS: [&str; 5] = [
    "mixtral",
    "qwen3_moe",
    "deepseek_v2",
    "deepseek_v3",
    "deepseek_v3_fp8",
];

/// FP8 versions of `mixtral/` and `deepseek_v3/`, whose small dimensions leave partial tiles:
/// blocks of 32, and f32 for DeepSeek's rows of 48.
const FP8: [&str; 2] = ["mixtral_fp8", "deepseek_v3_partial_fp8"];

/// Each folder, and its conversion by llama.cpp's `convert_hf_to_gguf.py`
/// (`hf-tiny/convert_tiny.py`), against the folder's reference.
fn check(options: EngineOptions, tol: f32) {
    for name in MODELS {
        let dir = fixtures_dir().join("moe").join(name);
        let reference = dir.join("reference.safetensors");
        check_folder(&dir, &reference, options, tol);
        let gguf = fixtures_dir().join(format!("moe/gguf/{name}.gguf"));
        check_folder(&gguf, &reference, options, tol);
    }
    for name in FP8 {
        let dir = fixtures_dir().join("moe").join(name);
        check_folder(&dir, &dir.join("reference.safetensors"), options, tol);
    }
}

#[test]
fn configs_describe_the_experts() {
    let m = ModelFile::open(&fixtures_dir().join("moe/mixtral")).unwrap();
    let moe = m.config.moe.clone().unwrap();
    assert_eq!((moe.experts, moe.used, moe.ffn), (8, 2, 128));
    assert_eq!(moe.routing, Routing::Softmax { renorm: true });
    assert!(moe.dense.is_empty());
    let q = ModelFile::open(&fixtures_dir().join("moe/qwen3_moe")).unwrap();
    let moe = q.config.moe.clone().unwrap();
    assert_eq!((moe.experts, moe.used, moe.ffn), (8, 2, 64));
    assert_eq!(q.config.head_dim, 16);
    let d = ModelFile::open(&fixtures_dir().join("moe/deepseek_v3")).unwrap();
    let moe = d.config.moe.clone().unwrap();
    assert_eq!(
        (moe.experts, moe.used, moe.ffn, moe.shared),
        (16, 4, 32, 32)
    );
    assert_eq!(moe.dense, [0]);
    let Routing::Grouped {
        groups,
        keep,
        renorm,
        scale,
    } = moe.routing
    else {
        panic!("{:?}", moe.routing)
    };
    assert_eq!((groups, keep, renorm, scale), (4, 2, true, 2.5));
    // The cache keeps the latent (32) and the RoPE part (8) of each position: one row.
    let layout = d.config.kv_layout();
    assert_eq!((layout.width, layout.values), (40, false));
    let mla = d.config.mla.clone().unwrap();
    assert!((mla.scale - 24f32.powf(-0.5)).abs() < 1e-7);
    // What a node admits by and announces: (kv_lora + rope) × layers × bytes per value.
    let span = Span::full(4);
    let cpu = Engine::load(&d, span, BackendChoice::Cpu.into(), &mut |_, _| {}).unwrap();
    assert_eq!(cpu.kv_bytes_per_token(), (32 + 8) * 4 * 4);
    let f16 = EngineOptions {
        backend: BackendChoice::Wgpu,
        kv_dtype: KvDtype::F16,
        ..Default::default()
    };
    let gpu = Engine::load(&d, span, f16, &mut |_, _| {}).unwrap();
    assert_eq!(gpu.kv_bytes_per_token(), (32 + 8) * 4 * 2);
}

#[test]
fn cpu_reproduces_the_reference() {
    check(BackendChoice::Cpu.into(), 1e-3);
}

#[test]
fn wgpu_reproduces_the_reference() {
    for (options, tol) in reference::wgpu_runs() {
        check(options, tol);
    }
}

/// DeepSeek-V3's published `config.json` (`testdata/configs/`, no weights): its cache holds 576 values per position
/// and layer, 70,272 bytes per token over 61 layers in 16 bits, and YaRN's mscale² scales its
/// softmax to 192^-½ · 1.3689² ≈ 0.1352.
#[test]
fn deepseek_v3_config_gives_its_cache_size_and_softmax_scale() {
    let path = baton_tests::repo_root().join("testdata/configs/deepseek_v3.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let c = ModelConfig::from_hf_json(&path, &text).unwrap();
    let layout = c.kv_layout();
    assert_eq!((layout.width, layout.values), (576, false));
    assert_eq!(layout.per_position() * c.layers * 2, 70_272);
    let mla = c.mla.clone().unwrap();
    assert!((mla.scale - 0.1352).abs() < 1e-4, "{}", mla.scale);
    let moe = c.moe.clone().unwrap();
    assert_eq!(moe.dense, [0, 1, 2]);
    assert_eq!((moe.experts, moe.used, moe.shared), (256, 8, 2048));
    // The two magnitude corrections cancel in RoPE itself.
    let (_, factor) = c.rope.inv_freq();
    assert!((factor - 1.0).abs() < 1e-6);
}

/// A long DeepSeek session's KV cache grows by its latent rows alone, (kv_lora + rope) values
/// per token and layer, on the CPU and on wgpu: what it has allocated lies between that and
/// twice that (vectors and buffers grow by doubling), where keys and values of every head
/// would take four times it.
#[test]
fn a_long_deepseek_session_holds_latent_rows_only() {
    let d = ModelFile::open(&fixtures_dir().join("moe/deepseek_v3")).unwrap();
    let wgpu = EngineOptions {
        backend: BackendChoice::Wgpu,
        kv_dtype: KvDtype::F16,
        ..Default::default()
    };
    // (32 + 8) values per layer, 4 layers, f32 on the CPU and f16 on wgpu.
    for (options, per_token) in [(BackendChoice::Cpu.into(), 640), (wgpu, 320)] {
        let engine = Engine::load(&d, Span::full(4), options, &mut |_, _| {}).unwrap();
        let mut cache = engine.new_cache().unwrap();
        // Up to the fixture's context of 256.
        let ids: Vec<u32> = (0..250).map(|i| (i * 7 % 512) as u32).collect();
        for chunk in ids[..200].chunks(100) {
            cache
                .forward(SpanInput::Tokens(chunk), Logits::Last)
                .unwrap();
        }
        for id in &ids[200..] {
            cache
                .forward(SpanInput::Tokens(&[*id]), Logits::Last)
                .unwrap();
        }
        let (held, tokens) = (cache.kv_allocated(), cache.pos());
        assert_eq!(tokens, 250);
        assert!(
            (tokens * per_token..=2 * tokens * per_token).contains(&held),
            "{held} bytes for {tokens} tokens of {per_token}"
        );
    }
}
