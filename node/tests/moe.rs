//! Mixture-of-experts folders (`fixtures/moe/`, tiny random checkpoints) against transformers'
//! logits: `mixtral/` (8 experts, top-2, renormalised softmax router) and `qwen3_moe/` (q/k
//! norms, head_dim 16, 8 experts top-2, `norm_topk_prob`) and `deepseek_v3/` (latent attention,
//! a dense layer then 16 experts in 4 groups with a shared expert). Batched with other sessions,
//! a session's logits stay exactly those it gets alone.

mod reference;

use baton_node::moe::Routing;
use baton_node::{BackendChoice, EngineOptions, ModelConfig, ModelFile};
use baton_tests::fixtures_dir;

use reference::check_folder;

const MODELS: [&str; 3] = ["mixtral", "qwen3_moe", "deepseek_v3"];

fn check(options: EngineOptions, tol: f32) {
    for name in MODELS {
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

/// DeepSeek-V3's published `config.json` (no weights): its cache holds 576 values per position
/// and layer, 70,272 bytes per token over 61 layers in 16 bits, and YaRN's mscale² scales its
/// softmax to 192^-½ · 1.3689² ≈ 0.1352.
#[test]
fn deepseek_v3_config_gives_its_cache_size_and_softmax_scale() {
    let text = r#"{
        "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
        "vocab_size": 129280, "hidden_size": 7168, "intermediate_size": 18432,
        "moe_intermediate_size": 2048, "num_hidden_layers": 61, "num_nextn_predict_layers": 1,
        "num_attention_heads": 128, "num_key_value_heads": 128, "n_shared_experts": 1,
        "n_routed_experts": 256, "ep_size": 1, "routed_scaling_factor": 2.5,
        "kv_lora_rank": 512, "q_lora_rank": 1536, "qk_rope_head_dim": 64, "v_head_dim": 128,
        "qk_nope_head_dim": 128, "topk_method": "noaux_tc", "n_group": 8, "topk_group": 4,
        "num_experts_per_tok": 8, "moe_layer_freq": 1, "first_k_dense_replace": 3,
        "norm_topk_prob": true, "scoring_func": "sigmoid", "hidden_act": "silu",
        "max_position_embeddings": 163840, "rms_norm_eps": 1e-06, "rope_theta": 10000,
        "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
            "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096, "type": "yarn"},
        "tie_word_embeddings": false, "attention_bias": false
    }"#;
    let c = ModelConfig::from_hf_json(std::path::Path::new("config.json"), text).unwrap();
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
