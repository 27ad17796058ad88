//! `baton-node` from the command line, as a user runs it: `eval` answers the fixtures' cases,
//! `--help` and `info` work, and bad input gets a clear error and a failing exit status.

use baton_tests::{baton, cases, check_case, demo_model, fixtures_dir, run_bin};
use serde_json::Value;

fn run(args: &[&str]) -> (bool, String, String) {
    run_bin("baton-node", args)
}

#[test]
fn eval_answers_every_fixture_from_the_command_line() {
    let model = demo_model();
    let model = model.to_str().unwrap();
    let dir = std::env::temp_dir().join(format!("baton-eval-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for case in cases().unwrap() {
        // The prompt as a user gives it: text, or chat messages in a file.
        let c = &case.json["case"];
        let input: Vec<String> = match c["text"].as_str() {
            Some(t) => vec!["--text".into(), t.into()],
            None => {
                let f = dir.join(format!("{}.json", case.name));
                std::fs::write(&f, c["messages"].to_string()).unwrap();
                vec!["--chat-json".into(), f.to_str().unwrap().into()]
            }
        };
        let mut args = vec!["eval", "--model", model, "--backend", "cpu", "--json"];
        args.extend(input.iter().map(String::as_str));
        let (ok, stdout, stderr) = run(&args);
        assert!(ok, "{}: {stderr}", case.name);
        let doc: Value = serde_json::from_str(&stdout).unwrap();
        let ids: Vec<u32> = serde_json::from_value(doc["prompt_ids"].clone()).unwrap();
        assert_eq!(ids, case.prompt_ids, "{}: prompt ids", case.name);

        // Teacher-forced over prompt and continuation, with enough of the top to find the
        // reference's five.
        let all: Vec<String> = case.all_ids.iter().map(u32::to_string).collect();
        let all = all.join(",");
        let args = [
            "eval",
            "--model",
            model,
            "--backend",
            "cpu",
            "--json",
            "--top-k",
            "10",
            "--perplexity",
            "--ids",
            &all,
        ];
        let (ok, stdout, stderr) = run(&args);
        assert!(ok, "{}: {stderr}", case.name);
        let doc: Value = serde_json::from_str(&stdout).unwrap();
        let pos = doc["positions"].as_array().unwrap();
        assert_eq!(pos.len(), case.all_ids.len());
        let top = |p: usize| -> Vec<(u32, f32)> {
            let ids = pos[p]["top_ids"].as_array().unwrap();
            let logits = pos[p]["top_logits"].as_array().unwrap();
            ids.iter()
                .zip(logits)
                .map(|(i, l)| (i.as_u64().unwrap() as u32, l.as_f64().unwrap() as f32))
                .collect()
        };
        let logit_of = |p: usize, id: u32| {
            top(p)
                .iter()
                .find(|(i, _)| *i == id)
                .map(|(_, l)| *l)
                .unwrap_or(f32::NEG_INFINITY)
        };
        check_case(
            &case,
            0..case.all_ids.len(),
            |p| top(p)[0].0,
            logit_of,
            0.05,
        )
        .unwrap();
        let ppl = doc["perplexity"].as_f64().unwrap();
        assert!(
            ppl.is_finite() && ppl > 1.0,
            "{}: perplexity {ppl}",
            case.name
        );
    }
}

#[test]
fn help_info_and_errors() {
    let (ok, out, _) = run(&["--help"]);
    assert!(ok && out.contains("eval") && out.contains("bench") && out.contains("info"));
    let (ok, out, _) = run(&["eval", "--help"]);
    assert!(ok && out.contains("--chat-json") && out.contains("--perplexity"));
    let (ok, out, _) = run(&["info"]);
    assert!(ok && out.contains("cpu"), "{out}");

    let (ok, _, err) = run(&["eval", "--model", "/nonexistent/model.gguf", "--ids", "1,2"]);
    assert!(!ok && err.contains("/nonexistent/model.gguf"), "{err}");
    // A folder that is no model: the error names what is missing.
    let dir = fixtures_dir();
    let (ok, _, err) = run(&["eval", "--model", dir.to_str().unwrap(), "--ids", "1"]);
    assert!(!ok && err.contains("config.json"), "{err}");
    // Ids outside the vocabulary are refused, not a crash.
    let model = demo_model();
    let (ok, _, err) = run(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--backend",
        "cpu",
        "--ids",
        "1,99999999",
    ]);
    assert!(!ok && err.contains("99999999"), "{err}");
    // A backend left out of the build says so.
    let model = model.to_str().unwrap();
    let (ok, _, err) = run(&["eval", "--model", model, "--backend", "cuda", "--ids", "1"]);
    assert!(!ok && err.contains("no cuda backend"), "{err}");

    let (ok, out, _) = baton(&["--help"]);
    assert!(
        ok && out.contains("generate") && out.contains("swarm"),
        "{out}"
    );
}
