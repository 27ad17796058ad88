//! Tiny random Hugging Face folders of every architecture against transformers' logits:
//! `llama/` (bf16, three shards, untied head, RoPE θ 500,000), `qwen2/` (q/k/v biases, shards),
//! `qwen3/` (per-head q/k norms, head_dim unlike hidden/heads), `gemma3/` (an 8-token window on
//! five local layers of six, GELU, norms around attention and MLP, tied head).

mod reference;

use baton_node::{BackendChoice, EngineOptions, ModelFile};
use baton_tests::fixtures_dir;

use reference::check_folder;

const ARCHS: [&str; 4] = ["llama", "qwen2", "qwen3", "gemma3"];

/// Every folder, and its GGUF conversion by llama.cpp's `convert_hf_to_gguf.py`
/// (`hf-tiny/gguf/`, made by `convert_tiny.py`), against the folder's reference.
fn check(options: EngineOptions, tol: f32) {
    let llama = ModelFile::open(&fixtures_dir().join("hf-tiny/llama")).unwrap();
    assert!(!llama.config.tied_embeddings);
    assert_eq!(llama.config.rope.theta, 500_000.0);
    for arch in ARCHS {
        let dir = fixtures_dir().join("hf-tiny").join(arch);
        let reference = dir.join("reference.safetensors");
        check_folder(&dir, &reference, options, tol);
        let gguf = fixtures_dir().join(format!("hf-tiny/gguf/{arch}.gguf"));
        check_folder(&gguf, &reference, options, tol);
    }
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

/// A folder without an index holds its weights in `model.safetensors`; other safetensors files
/// beside it (Mistral's `consolidated.safetensors`, adapters, references) are not read.
#[test]
fn a_single_file_folder_reads_model_safetensors_only() {
    let src = fixtures_dir().join("hf-tiny/llama");
    let dir = std::env::temp_dir().join(format!("baton-hf-single-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shards: Vec<Vec<u8>> = (1..=3)
        .map(|i| std::fs::read(src.join(format!("model-0000{i}-of-00003.safetensors"))).unwrap())
        .collect();
    let parsed: Vec<_> = shards
        .iter()
        .map(|b| safetensors::SafeTensors::deserialize(b).unwrap())
        .collect();
    let tensors: Vec<(String, safetensors::tensor::TensorView)> =
        parsed.iter().flat_map(|st| st.tensors()).collect();
    safetensors::serialize_to_file(tensors, None, &dir.join("model.safetensors")).unwrap();
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    // Not weights: a reference file and a second copy of the model under other names.
    std::fs::copy(
        src.join("reference.safetensors"),
        dir.join("consolidated.safetensors"),
    )
    .unwrap();
    check_folder(
        &dir,
        &src.join("reference.safetensors"),
        BackendChoice::Cpu.into(),
        1e-3,
    );
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let err = ModelFile::open(&dir)
        .err()
        .expect("a folder without weights loads");
    assert!(err.to_string().contains("model.safetensors"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
