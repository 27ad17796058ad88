//! What a model takes, counted from its config alone, equals what its tensors hold, for every
//! architecture's fixture; and `baton-node inspect` prints DeepSeek-V3's published figures from
//! its config.

use baton_node::inspect::Sizes;
use baton_node::ModelFile;
use baton_tests::{fixtures_dir, repo_root, run_bin};

#[test]
fn parameters_from_the_config_match_the_tensors() {
    let dirs = [
        "hf-tiny/llama",
        "hf-tiny/qwen2",
        "hf-tiny/qwen3",
        "hf-tiny/gemma3",
        "hf-tiny/gguf/llama.gguf",
        "moe/mixtral",
        "moe/qwen3_moe",
        "moe/deepseek_v3",
    ];
    for d in dirs {
        let model = ModelFile::open(&fixtures_dir().join(d)).unwrap();
        let counted = Sizes::of_tensors(&model, |t| t.elements() as u64);
        let derived = Sizes::params(&model.config);
        assert_eq!(derived, counted, "{d}");
        assert!(counted.active() <= counted.total());
    }
    let model = ModelFile::open(&baton_tests::demo_model()).unwrap();
    let counted = Sizes::of_tensors(&model, |t| t.elements() as u64);
    assert_eq!(Sizes::params(&model.config), counted);
    // SmolLM2-135M.
    assert!((134_000_000..136_000_000).contains(&counted.total()));
}

#[test]
fn inspect_prints_deepseek_v3_from_its_config_alone() {
    let config = repo_root().join("testdata/configs/deepseek_v3.json");
    let path = config.to_str().unwrap();
    let (ok, out, err) = run_bin(
        "baton-node",
        &["inspect", "--model", path, "--memory", "80GB"],
    );
    assert!(ok, "{err}");
    for want in [
        "671.03B total",
        "37.55B active",
        "70272 bytes per token",
        "256 experts of",
    ] {
        assert!(out.contains(want), "`{want}` missing from:\n{out}");
    }
    let (ok, out, _) = run_bin("baton-node", &["inspect", "--model", path, "--json"]);
    assert!(ok);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["kv_bytes_per_token"], 70_272);
    let total = doc["parameters"]["total"].as_u64().unwrap();
    assert!(
        (670_000_000_000..672_000_000_000).contains(&total),
        "{total}"
    );
    // A bad size is refused clearly.
    let (ok, _, err) = run_bin(
        "baton-node",
        &["inspect", "--model", path, "--memory", "80XB"],
    );
    assert!(!ok && err.contains("unknown unit"), "{err}");
}
