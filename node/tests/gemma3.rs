//! Gemma 3 270M (Q4_K_M: Q4_K, Q6_K, Q5_0 and Q8_0 tensors, sliding-window layers, a 262,144-
//! token SentencePiece vocabulary) against transformers' reference outputs in
//! `testdata/fixtures/gemma3`, one of them longer than the 512-token window.

use baton_node::{BackendChoice, Engine, Logits, ModelFile, SpanInput};
use baton_protocol::Span;
use baton_tests::{cases_in, check_case, gemma_model, repo_root, Case};

fn gemma_cases() -> Vec<Case> {
    cases_in(&repo_root().join("testdata/fixtures/gemma3")).unwrap()
}

#[test]
fn prompt_ids_match_the_reference_tokenizer() {
    let model = ModelFile::open(&gemma_model()).unwrap();
    let tok = model.tokenizer().unwrap();
    for case in gemma_cases() {
        let text = case.json["model_text"].as_str().unwrap();
        assert_eq!(tok.encode(text).unwrap(), case.prompt_ids, "{}", case.name);
        // Decoding drops the BOS marker the encoder added.
        assert_eq!(
            tok.decode(&case.prompt_ids[1..]).unwrap(),
            text,
            "{}",
            case.name
        );
    }
}

/// Teacher-forced logits of every case, checked position by position as the chunks come, so
/// that the 262,144-wide rows of a long case are never all held at once.
fn check_backend(choice: BackendChoice, tol: f32) {
    let model = ModelFile::open(&gemma_model()).unwrap();
    let vocab = model.config.vocab;
    let layers = model.config.layers as u32;
    let engine = Engine::load(&model, Span::full(layers), choice.into(), &mut |_, _| {}).unwrap();
    for case in gemma_cases() {
        let mut cache = engine.new_cache().unwrap();
        // (top-1, logits of the reference's top-5) per position
        let mut seen: Vec<(u32, [f32; 5])> = Vec::new();
        engine
            .run_chunked(
                &mut cache,
                SpanInput::Tokens(&case.all_ids),
                Logits::All,
                &mut |chunk| {
                    for row in chunk.chunks_exact(vocab) {
                        let p = seen.len();
                        let top = baton_node::sampling::top_k(row, 1)[0].0;
                        let five = case.top5_ids[p].map(|id| row[id as usize]);
                        seen.push((top, five));
                    }
                },
            )
            .unwrap();
        assert_eq!(seen.len(), case.all_ids.len());
        let worst = check_case(
            &case,
            |p| seen[p].0,
            |p, id| {
                let k = case.top5_ids[p].iter().position(|&t| t == id);
                // A top-1 off the reference's list is reported by `check_case` itself.
                k.map_or(f32::NAN, |k| seen[p].1[k])
            },
            tol,
        )
        .unwrap_or_else(|e| panic!("{}: {e}", engine.describe()));
        eprintln!(
            "{} {} ({} tokens): worst top-5 logit difference {worst:.4}",
            engine.describe(),
            case.name,
            case.all_ids.len()
        );
    }
}

#[test]
fn cpu_matches_the_reference_logits() {
    check_backend(BackendChoice::Cpu, 0.05);
}

#[test]
fn wgpu_matches_the_reference_logits() {
    check_backend(BackendChoice::Wgpu, 0.05);
}
