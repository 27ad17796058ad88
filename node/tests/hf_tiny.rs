//! A Hugging Face folder (bf16, three shards, untied head, RoPE θ 500,000) against its reference.

use baton_node::{BackendChoice, Engine, Logits, ModelFile, SpanInput};
use baton_protocol::Span;
use baton_tests::{fixtures_dir, tensor_f32};

fn check(choice: BackendChoice, tol: f32) {
    let dir = fixtures_dir().join("hf-tiny/llama");
    let model = ModelFile::open(&dir).unwrap();
    assert!(!model.config.tied_embeddings);
    assert_eq!(model.config.rope_theta, 500_000.0);
    let reference = dir.join("reference.safetensors");
    let ids: Vec<u32> = tensor_f32(&reference, "ids")
        .unwrap()
        .iter()
        .map(|x| *x as u32)
        .collect();
    let want = tensor_f32(&reference, "logits").unwrap();
    let span = Span::full(model.config.layers as u32);
    let engine = Engine::load(&model, span, choice, &mut |_, _| {}).unwrap();
    let mut cache = engine.new_cache().unwrap();
    // Prefill in two pieces, then decode the rest one by one: every path of the runtime.
    let mut got = Vec::new();
    for part in [&ids[..20], &ids[20..30]] {
        got.extend(
            engine
                .forward(&mut cache, SpanInput::Tokens(part), Logits::All)
                .unwrap(),
        );
    }
    for id in &ids[30..] {
        got.extend(
            engine
                .forward(&mut cache, SpanInput::Tokens(&[*id]), Logits::Last)
                .unwrap(),
        );
    }
    assert_eq!(got.len(), want.len());
    let worst = got
        .iter()
        .zip(&want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    eprintln!("{}: worst logit difference {worst:e}", engine.describe());
    assert!(
        worst < tol,
        "{}: logits differ by {worst}",
        engine.describe()
    );
}

#[test]
fn cpu_reproduces_the_reference() {
    check(BackendChoice::Cpu, 1e-3);
}

#[test]
fn wgpu_reproduces_the_reference() {
    check(BackendChoice::Wgpu, 1e-2);
}
