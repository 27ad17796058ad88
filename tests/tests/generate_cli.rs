//! `baton generate` as a user runs it: greedy output equals the reference continuation, chat
//! answers the capital question, seeds reproduce, and bad flags are refused.

use baton_tests::{baton, cases, demo_model};

fn generate(args: &[&str]) -> (bool, String, String) {
    let model = demo_model();
    let mut all = vec![
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--backend",
        "cpu",
    ];
    all.extend(args);
    baton(&all)
}

#[test]
fn greedy_generation_equals_the_reference() {
    for case in cases().unwrap() {
        let c = &case.json["case"];
        let want = case.json["greedy_text"].as_str().unwrap();
        let n = (case.all_ids.len() - case.prompt_ids.len()).to_string();
        let (ok, out, err) = match (c["text"].as_str(), c["messages"].as_array()) {
            (Some(text), _) => generate(&["--prompt", text, "--max-tokens", &n]),
            (None, Some(m)) if m.len() == 1 => {
                let prompt = m[0]["content"].as_str().unwrap();
                generate(&["--chat", "--prompt", prompt, "--max-tokens", &n])
            }
            _ => continue,
        };
        assert!(ok, "{}: {err}", case.name);
        // The reference's text includes the end-of-turn token, which generation stops at.
        let want = want.trim_end_matches("<|im_end|>");
        assert_eq!(out.trim_end_matches('\n'), want, "{}", case.name);
    }
}

#[test]
fn chat_answers_paris_and_seeds_reproduce() {
    let (ok, out, _) = generate(&["--chat", "--prompt", "What is the capital of France?"]);
    assert!(ok && out.contains("Paris"), "{out}");
    let sampled = |seed: &str| {
        generate(&[
            "--prompt",
            "Once upon a time",
            "--temperature",
            "0.9",
            "--max-tokens",
            "24",
            "--seed",
            seed,
        ])
        .1
    };
    let a = sampled("5");
    assert_eq!(a, sampled("5"));
    assert_ne!(a, sampled("6"));
    let (ok, _, err) = generate(&["--prompt", "x", "--top-p", "1.5"]);
    assert!(!ok && err.contains("--top-p"), "{err}");
}
