//! A model folder or file against transformers' logits for fixed ids
//! (`reference.safetensors`: `ids` and `logits`), through every path of the runtime.

use baton_node::{BackendChoice, Engine, EngineOptions, KvDtype, Logits, ModelFile, SpanInput};
use baton_protocol::Span;
use baton_tests::{max_abs_diff, tensor_f32};

/// Prefills the first 30 ids in two pieces, then decodes the rest one by one, and asserts
/// that every position's logits lie within `tol` of the reference's.
pub fn check_folder(
    dir: &std::path::Path,
    reference: &std::path::Path,
    options: EngineOptions,
    tol: f32,
) {
    let model = ModelFile::open(dir).unwrap();
    let reference = reference.to_path_buf();
    let ids: Vec<u32> = tensor_f32(&reference, "ids")
        .unwrap()
        .iter()
        .map(|x| *x as u32)
        .collect();
    let want = tensor_f32(&reference, "logits").unwrap();
    let span = Span::full(model.config.layers as u32);
    let engine = Engine::load(&model, span, options, &mut |_, _| {}).unwrap();
    let mut cache = engine.new_cache().unwrap();
    // Prefill in two pieces, then decode the rest one by one: every path of the runtime.
    let mut got = Vec::new();
    for part in [&ids[..20], &ids[20..30]] {
        got.extend(cache.forward(SpanInput::Tokens(part), Logits::All).unwrap());
    }
    for id in &ids[30..] {
        got.extend(
            cache
                .forward(SpanInput::Tokens(&[*id]), Logits::Last)
                .unwrap(),
        );
    }
    assert_eq!(got.len(), want.len());
    let worst = max_abs_diff(&got, &want);
    eprintln!(
        "{} {}: worst logit difference {worst:e}",
        dir.display(),
        engine.describe()
    );
    assert!(
        worst < tol,
        "{} {}: logits differ by {worst}",
        dir.display(),
        engine.describe()
    );
}

/// The wgpu runs and their tolerances: with an f32 KV cache the GPU is as close as the CPU;
/// the default f16 cache stays within 1e-2. (Not every test binary that checks references runs
/// wgpu.)
#[allow(dead_code)]
pub fn wgpu_runs() -> [(EngineOptions, f32); 2] {
    [(KvDtype::F32, 1e-3), (KvDtype::F16, 1e-2)].map(|(kv_dtype, tol)| {
        let backend = BackendChoice::Wgpu;
        (
            EngineOptions {
                backend,
                kv_dtype,
                ..Default::default()
            },
            tol,
        )
    })
}
