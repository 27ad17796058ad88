//! Gemma 3 270M as a user runs it: `baton generate` continues a prompt greedily exactly as the
//! reference does; three `baton-node join` processes serving it in thirds give exactly the
//! tokens of one process (`--wire-dtype f32`); and chatting with this base model, which has no
//! chat template, is refused with the way out.

use baton_tests::{baton, cases_in, gemma_model, repo_root, NodeProcess};

#[test]
fn greedy_continuation_matches_the_reference_alone_and_in_thirds() {
    let model = gemma_model();
    let m = model.to_str().unwrap();
    let cases = cases_in(&repo_root().join("testdata/fixtures/gemma3")).unwrap();
    let case = cases.iter().find(|c| c.name == "g_plain").unwrap();
    let prompt = case.json["case"]["text"].as_str().unwrap();
    let want = case.json["greedy_text"].as_str().unwrap();
    let n = (case.all_ids.len() - case.prompt_ids.len()).to_string();

    let (ok, alone, err) = baton(&[
        "generate",
        "--model",
        m,
        "--backend",
        "cpu",
        "--prompt",
        prompt,
        "--max-tokens",
        &n,
    ]);
    assert!(ok, "{err}");
    assert_eq!(alone.trim_end_matches('\n'), want);

    let first = NodeProcess::start(&["--model", m, "--span", "0..6", "--backend", "cpu"]).unwrap();
    let boot = first.bootstrap.clone();
    let _rest: Vec<NodeProcess> = ["6..12", "12..18"]
        .iter()
        .map(|span| {
            NodeProcess::start(&[
                "--model",
                m,
                "--span",
                span,
                "--backend",
                "cpu",
                "--bootstrap",
                &boot,
            ])
            .unwrap()
        })
        .collect();
    let (ok, thirds, err) = baton(&[
        "generate",
        "--bootstrap",
        &boot,
        "--wire-dtype",
        "f32",
        "--prompt",
        prompt,
        "--max-tokens",
        &n,
    ]);
    assert!(ok, "{err}");
    assert_eq!(thirds, alone);
}

#[test]
fn chat_without_a_template_says_what_to_do() {
    let model = gemma_model();
    let (ok, _, err) = baton(&[
        "chat",
        "--local",
        "--nodes",
        "1",
        "--backend",
        "cpu",
        "--model",
        model.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("no chat template") && err.contains("--chat-template"),
        "{err}"
    );
}
