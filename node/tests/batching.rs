//! Passes over several sessions: each session's output is exactly what it gets alone, on every
//! backend, for sessions that join and leave between passes with prompts of different lengths;
//! in mixtures of experts too, where the tokens an expert sees depend on the other sessions.

use baton_node::{BackendChoice, Cache, Engine, Logits, ModelFile, SpanInput};
use baton_protocol::Span;
use baton_tests::{demo_model, fixtures_dir};

/// The greedy token of a head's logits; for a span without head, a token picked from its
/// hidden states as deterministically.
fn argmax(row: &[f32]) -> u32 {
    baton_node::sampling::top_k(row, 1)[0].0 % 49_152
}

/// Prompts of different lengths (decode-sized ones among them), cut from the demo fixtures,
/// their ids folded into a vocabulary of `vocab`.
fn prompts(n: usize, vocab: u32) -> Vec<Vec<u32>> {
    let cases = baton_tests::cases().unwrap();
    let all: Vec<u32> = cases.iter().flat_map(|c| c.all_ids.clone()).collect();
    let lens = [9, 1, 40, 3, 17, 2, 120, 5];
    (0..n)
        .map(|i| {
            let len = lens[i % lens.len()];
            let from = (i * 13) % (all.len() - len);
            all[from..from + len].iter().map(|t| t % vocab).collect()
        })
        .collect()
}

/// Greedy generation of `steps` tokens after `prompt`, one session alone: the logits of each
/// step.
fn alone(engine: &Engine, prompt: &[u32], steps: usize) -> Vec<Vec<f32>> {
    let mut cache = engine.new_cache().unwrap();
    let mut input = prompt.to_vec();
    let mut out = Vec::new();
    for _ in 0..steps {
        let mut got = Cache::forward_pass(
            &mut [&mut cache],
            &[SpanInput::Tokens(&input)],
            Logits::Last,
        )
        .unwrap();
        let logits = got.remove(0);
        input = vec![argmax(&logits)];
        out.push(logits);
    }
    out
}

/// Session `i` starts at pass `i`, and runs `steps` steps; every running session steps in
/// every pass.
fn batched(engine: &Engine, prompts: &[Vec<u32>], steps: usize) -> Vec<Vec<Vec<f32>>> {
    let n = prompts.len();
    let mut caches: Vec<Cache> = (0..n).map(|_| engine.new_cache().unwrap()).collect();
    let mut next: Vec<Vec<u32>> = prompts.to_vec();
    let mut outs: Vec<Vec<Vec<f32>>> = vec![Vec::new(); n];
    let mut largest = 0;
    for round in 0.. {
        let running: Vec<usize> = (0..n)
            .filter(|&i| round >= i && outs[i].len() < steps)
            .collect();
        if running.is_empty() && round > n {
            break;
        }
        if running.is_empty() {
            continue;
        }
        largest = largest.max(running.len());
        let inputs: Vec<SpanInput> = running
            .iter()
            .map(|&i| SpanInput::Tokens(&next[i]))
            .collect();
        let mut chosen: Vec<&mut Cache> = caches
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| running.contains(i))
            .map(|(_, c)| c)
            .collect();
        let got = Cache::forward_pass(&mut chosen, &inputs, Logits::Last).unwrap();
        drop(inputs);
        for (&i, logits) in running.iter().zip(got) {
            next[i] = vec![argmax(&logits)];
            outs[i].push(logits);
        }
    }
    assert!(largest >= 4, "at most {largest} sessions shared a pass");
    outs
}

fn check(choice: BackendChoice, span_blocks: u32, sessions: usize, steps: usize) {
    check_model(&demo_model(), choice, span_blocks, sessions, steps);
}

fn check_model(
    path: &std::path::Path,
    choice: BackendChoice,
    span_blocks: u32,
    sessions: usize,
    steps: usize,
) {
    let model = ModelFile::open(path).unwrap();
    let layers = model.config.layers as u32;
    let engine = Engine::load(
        &model,
        Span::new(0, span_blocks.min(layers)).unwrap_or(Span::full(layers)),
        choice.into(),
        &mut |_, _| {},
    )
    .unwrap();
    let prompts = prompts(sessions, model.config.vocab as u32);
    let together = batched(&engine, &prompts, steps);
    for (i, prompt) in prompts.iter().enumerate() {
        let want = alone(&engine, prompt, steps);
        for (step, (a, b)) in want.iter().zip(&together[i]).enumerate() {
            assert!(
                a == b,
                "{}: session {i} ({} prompt tokens), step {step}: batched output differs",
                engine.describe(),
                prompt.len()
            );
        }
    }
}

#[test]
fn cpu_steps_in_a_pass_compute_as_alone() {
    check(BackendChoice::Cpu, 30, 8, 8);
}

#[test]
fn wgpu_steps_in_a_pass_compute_as_alone() {
    // A span without head, to keep lavapipe's share short: its hidden states drive the test.
    check(BackendChoice::Wgpu, 12, 5, 4);
}

#[test]
fn cpu_experts_compute_each_step_as_alone() {
    for name in [
        "mixtral",
        "qwen3_moe",
        "deepseek_v2",
        "deepseek_v3",
        "deepseek_v3_fp8",
    ] {
        check_model(
            &fixtures_dir().join("moe").join(name),
            BackendChoice::Cpu,
            4,
            8,
            8,
        );
    }
}

#[test]
fn wgpu_experts_compute_each_step_as_alone() {
    for name in ["mixtral", "deepseek_v3"] {
        let path = fixtures_dir().join("moe").join(name);
        check_model(&path, BackendChoice::Wgpu, 4, 8, 6);
    }
}

/// A pass over hidden states (a span without `embed`) and over several spans' caches is
/// refused rather than run wrong.
#[test]
fn a_pass_refuses_mixed_input_and_spans() {
    let model = ModelFile::open(&demo_model()).unwrap();
    let load = |span: Span| Engine::load(&model, span, BackendChoice::Cpu.into(), &mut |_, _| {});
    let first = load(Span::new(0, 10).unwrap()).unwrap();
    let other = load(Span::new(0, 10).unwrap()).unwrap();
    let (mut a, mut b) = (first.new_cache().unwrap(), other.new_cache().unwrap());
    let two = Cache::forward_pass(
        &mut [&mut a, &mut b],
        &[SpanInput::Tokens(&[1]), SpanInput::Tokens(&[2])],
        Logits::Last,
    );
    assert!(two.is_err());
    let mut c = first.new_cache().unwrap();
    let mixed = Cache::forward_pass(
        &mut [&mut a, &mut c],
        &[SpanInput::Tokens(&[1]), SpanInput::Hidden(&[0.0; 576])],
        Logits::Last,
    );
    assert!(mixed.is_err());
}
