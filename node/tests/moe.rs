//! Mixture-of-experts folders (`fixtures/moe/`, tiny random checkpoints) against transformers'
//! logits: `mixtral/` (8 experts, top-2, renormalised softmax router) and `qwen3_moe/` (q/k
//! norms, head_dim 16, 8 experts top-2, `norm_topk_prob`). Batched with other sessions, a
//! session's logits stay exactly those it gets alone.

mod reference;

use baton_node::moe::Routing;
use baton_node::{BackendChoice, EngineOptions, ModelFile};
use baton_tests::fixtures_dir;

use reference::check_folder;

const MODELS: [&str; 2] = ["mixtral", "qwen3_moe"];

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
