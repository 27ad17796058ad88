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
/// that the 262,144-wide rows of a long case are never all held at once. With `cut = (len,
/// tail)`, a case longer than `len` is cut to its first `len` tokens (a causal model's logits
/// there do not depend on what follows), prefilled returning the last row only, and checked on
/// its last `tail` positions: software GPUs are slow at long prompts and 262,144-row heads.
/// With `decode`, the checked positions go through one token per step, as generation does
/// (on the CPU, the integer-activation kernels); otherwise as one prefill.
fn check_backend(choice: BackendChoice, tol: f32, cut: Option<(usize, usize)>, decode: bool) {
    let model = ModelFile::open(&gemma_model()).unwrap();
    let vocab = model.config.vocab;
    let layers = model.config.layers as u32;
    let engine = Engine::load(&model, Span::full(layers), choice.into(), &mut |_, _| {}).unwrap();
    for case in gemma_cases() {
        let mut cache = engine.new_cache().unwrap();
        let (n, first) = match cut {
            Some((len, tail)) if case.all_ids.len() > len => (len, len - tail),
            _ => (case.all_ids.len(), 0),
        };
        if first > 0 {
            cache
                .run_step(SpanInput::Tokens(&case.all_ids[..first]), Logits::Last)
                .unwrap();
        }
        // (top-1, logits of the reference's top-5) per position from `first` on
        let mut seen: Vec<(u32, [f32; 5])> = Vec::new();
        let mut take = |chunk: &[f32]| {
            for row in chunk.chunks_exact(vocab) {
                let p = first + seen.len();
                let top = baton_node::sampling::top_k(row, 1)[0].0;
                let five = case.top5_ids[p].map(|id| row[id as usize]);
                seen.push((top, five));
            }
        };
        if decode {
            for id in &case.all_ids[first..n] {
                let step = SpanInput::Tokens(std::slice::from_ref(id));
                take(&cache.run_step(step, Logits::Last).unwrap());
            }
        } else {
            let input = SpanInput::Tokens(&case.all_ids[first..n]);
            cache.run_chunked(input, Logits::All, &mut take).unwrap();
        }
        assert_eq!(first + seen.len(), n);
        let worst = check_case(
            &case,
            first..n,
            |p| seen[p - first].0,
            |p, id| {
                let k = case.top5_ids[p].iter().position(|&t| t == id);
                // A top-1 off the reference's list is reported by `check_case` itself.
                k.map_or(f32::NAN, |k| seen[p - first].1[k])
            },
            tol,
        )
        .unwrap_or_else(|e| panic!("{}: {e}", engine.describe()));
        eprintln!(
            "{} {} ({} positions {first}..{n}): worst top-5 logit difference {worst:.4}",
            engine.describe(),
            case.name,
            if decode { "decode" } else { "prefill" },
        );
    }
}

#[test]
fn cpu_matches_the_reference_logits() {
    check_backend(BackendChoice::Cpu, 0.05, None, false);
}

/// Decode, one token per step, past the sliding window: the long case cut to 1,000 tokens and
/// its last 250 decoded, while the local layers drop the positions no query sees any more.
#[test]
fn cpu_decode_matches_the_reference_logits() {
    check_backend(BackendChoice::Cpu, 0.05, Some((1000, 250)), true);
}

/// Every position of the short cases; the long one cut to 600 tokens and checked on its last
/// 24, past the 512-token sliding window.
#[test]
fn wgpu_matches_the_reference_logits() {
    check_backend(BackendChoice::Wgpu, 0.05, Some((600, 24)), false);
}
