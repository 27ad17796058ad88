//! The demo model against the reference outputs in testdata/fixtures, on every backend:
//! tokenization and chat template, teacher-forced logits, and span composition.

use baton_node::tokenizer::Message;
use baton_node::{BackendChoice, Engine, Logits, ModelFile, SpanInput};
use baton_protocol::Span;
use baton_tests::{cases, check_case, demo_model, max_abs_diff};

fn full_logits(engine: &Engine, ids: &[u32]) -> Vec<f32> {
    let mut cache = engine.new_cache().unwrap();
    let mut out = Vec::new();
    cache
        .run_chunked(SpanInput::Tokens(ids), Logits::All, &mut |l| {
            out.extend_from_slice(l)
        })
        .unwrap();
    out
}

/// The logits of every position of `ids`, fed one token per step as generation does.
fn decoded_logits(engine: &Engine, ids: &[u32]) -> Vec<f32> {
    let mut cache = engine.new_cache().unwrap();
    let mut out = Vec::new();
    for id in ids {
        let step = SpanInput::Tokens(std::slice::from_ref(id));
        out.extend(cache.run_step(step, Logits::Last).unwrap());
    }
    out
}

fn argmax(row: &[f32]) -> u32 {
    baton_node::sampling::top_k(row, 1)[0].0
}

#[test]
fn prompt_ids_match_the_reference_tokenizer() {
    let model = ModelFile::open(&demo_model()).unwrap();
    let tok = model.tokenizer().unwrap();
    for case in cases().unwrap() {
        let c = &case.json["case"];
        let model_text = case.json["model_text"].as_str().unwrap();
        let text = if let Some(t) = c["text"].as_str() {
            t.to_string()
        } else {
            let messages: Vec<Message> = serde_json::from_value(c["messages"].clone()).unwrap();
            let text = tok.apply_chat_template(&messages, true).unwrap();
            assert_eq!(text, model_text, "{}", case.name);
            text
        };
        assert_eq!(tok.encode(&text).unwrap(), case.prompt_ids, "{}", case.name);
        assert_eq!(
            tok.decode(&case.prompt_ids).unwrap(),
            model_text,
            "{}",
            case.name
        );
    }
}

fn check_backend(choice: BackendChoice, tol: f32, decode: bool) {
    let model = ModelFile::open(&demo_model()).unwrap();
    let vocab = model.config.vocab;
    let engine = Engine::load(&model, Span::full(30), choice.into(), &mut |_, _| {}).unwrap();
    for case in cases().unwrap() {
        let logits = if decode {
            decoded_logits(&engine, &case.all_ids)
        } else {
            full_logits(&engine, &case.all_ids)
        };
        assert_eq!(logits.len(), case.all_ids.len() * vocab);
        let row = |p: usize| &logits[p * vocab..(p + 1) * vocab];
        let worst = check_case(
            &case,
            0..case.all_ids.len(),
            |p| argmax(row(p)),
            |p, id| row(p)[id as usize],
            tol,
        )
        .unwrap_or_else(|e| panic!("{}: {e}", engine.describe()));
        eprintln!(
            "{} {} ({}): worst top-5 logit difference {worst:.4}",
            engine.describe(),
            case.name,
            if decode { "decode" } else { "prefill" },
        );
    }
}

#[test]
fn cpu_matches_the_reference_logits() {
    check_backend(BackendChoice::Cpu, 0.05, false);
}

/// One token per step: on the CPU, the integer-activation kernels of decode.
#[test]
fn cpu_decode_matches_the_reference_logits() {
    check_backend(BackendChoice::Cpu, 0.05, true);
}

/// Spans [0,a), [a,b), [b,30) run one after another, passing hidden states along, give exactly
/// the whole model's logits, for a prefill chunk and for decode steps after it.
fn check_composition(choice: BackendChoice) {
    let model = ModelFile::open(&demo_model()).unwrap();
    let load = |span: Span| Engine::load(&model, span, choice.into(), &mut |_, _| {}).unwrap();
    let whole = load(Span::full(30));
    let parts: Vec<Engine> = [(0, 7), (7, 19), (19, 30)]
        .iter()
        .map(|&(a, b)| load(Span::new(a, b).unwrap()))
        .collect();
    let ids = &cases().unwrap()[0].all_ids;
    let mut wc = whole.new_cache().unwrap();
    let mut pcs: Vec<_> = parts.iter().map(|p| p.new_cache().unwrap()).collect();
    for step in [&ids[..9], &ids[9..10], &ids[10..11], &ids[11..14]] {
        let want = wc.forward(SpanInput::Tokens(step), Logits::All).unwrap();
        let mut h = pcs[0]
            .forward(SpanInput::Tokens(step), Logits::All)
            .unwrap();
        h = pcs[1].forward(SpanInput::Hidden(&h), Logits::All).unwrap();
        let got = pcs[2].forward(SpanInput::Hidden(&h), Logits::All).unwrap();
        assert_eq!(got.len(), want.len());
        let diff = max_abs_diff(&got, &want);
        assert_eq!(diff, 0.0, "{}: composed spans differ", whole.describe());
    }
    // A middle span refuses token ids; the first refuses hidden states.
    let middle = pcs[1].forward(SpanInput::Tokens(&[1]), Logits::Last);
    assert!(middle.is_err());
    let first = pcs[0].forward(SpanInput::Hidden(&[0.0; 576]), Logits::Last);
    assert!(first.is_err());
}

#[test]
fn cpu_spans_compose_exactly() {
    check_composition(BackendChoice::Cpu);
}

#[test]
fn wgpu_matches_the_reference_logits() {
    check_backend(BackendChoice::Wgpu, 0.05, false);
}

#[test]
fn wgpu_spans_compose_exactly() {
    check_composition(BackendChoice::Wgpu);
}

/// A step that fails in its second chunk (an id past the vocabulary) leaves the cache as it was:
/// the same position, and the next step gives what it gives on a fresh cache.
#[test]
fn a_failed_step_leaves_the_cache_as_before() {
    let model = ModelFile::open(&demo_model()).unwrap();
    let vocab = model.config.vocab;
    let engine = Engine::load(
        &model,
        Span::full(30),
        BackendChoice::Cpu.into(),
        &mut |_, _| {},
    )
    .unwrap();
    let ids = &cases().unwrap()[0].all_ids;
    let mut cache = engine.new_cache().unwrap();
    cache
        .run_step(SpanInput::Tokens(&ids[..5]), Logits::Last)
        .unwrap();
    let mut bad: Vec<u32> = (0..300).map(|i| ids[i % ids.len()]).collect();
    bad[290] = vocab as u32 + 7;
    let err = cache.run_step(SpanInput::Tokens(&bad), Logits::Last);
    assert!(err.is_err());
    assert_eq!(cache.pos(), 5);
    let got = cache
        .run_step(SpanInput::Tokens(&ids[5..9]), Logits::All)
        .unwrap();
    // The same steps on a cache that saw no failure.
    let mut fresh = engine.new_cache().unwrap();
    fresh
        .run_step(SpanInput::Tokens(&ids[..5]), Logits::Last)
        .unwrap();
    let want = fresh
        .run_step(SpanInput::Tokens(&ids[5..9]), Logits::All)
        .unwrap();
    assert_eq!(got.len(), 4 * vocab);
    assert_eq!(got, want);
}
