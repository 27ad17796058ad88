//! Continuous batching as a user meets it: eight greedy requests to `baton serve`, with prompts
//! of different lengths and staggered starts, each get exactly the text they get alone, through
//! one node and through three.

use std::time::Duration;

use baton_tests::{demo_model, ServeProcess};
use serde_json::json;

const WORDS: &str = "the river runs past old mills and quiet farms where children play \
    in summer fields while clouds drift over distant hills and a bell rings from the square";

/// Prompts from a few tokens to a few hundred.
fn prompts() -> Vec<String> {
    let words: Vec<&str> = WORDS.split_whitespace().collect();
    [3, 40, 7, 120, 1, 15, 300, 60]
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let text: Vec<&str> = (0..n).map(|k| words[(k * 7 + i) % words.len()]).collect();
            format!("Story {i}: {}", text.join(" "))
        })
        .collect()
}

fn complete(server: &ServeProcess, prompt: &str) -> String {
    let body = json!({"prompt": prompt, "max_tokens": 24, "temperature": 0});
    let (status, v) = server.post("/v1/completions", &body);
    assert_eq!(status, 200, "{v}");
    v["choices"][0]["text"]
        .as_str()
        .expect("a text")
        .to_string()
}

fn check(nodes: &str) {
    let model = demo_model();
    let server = ServeProcess::start(&[
        "--local",
        "--nodes",
        nodes,
        "--model",
        model.to_str().unwrap(),
        "--backend",
        "cpu",
        "--wire-dtype",
        "f32",
    ]);
    let prompts = prompts();
    let alone: Vec<String> = prompts.iter().map(|p| complete(&server, p)).collect();
    let together: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let server = &server;
                s.spawn(move || {
                    std::thread::sleep(Duration::from_millis(40 * i as u64));
                    complete(server, p)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a, t, "{nodes} node(s): request {i} differs when batched");
    }
    // The requests shared passes: some passes ran more than one step.
    let (status, metrics) = baton_tests::curl(&[&format!("{}/metrics", server.url)]);
    assert_eq!(status, 200);
    let sum = |pick: &dyn Fn(&str) -> bool| -> f64 {
        metrics
            .lines()
            .filter(|l| pick(l))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let passes = sum(&|l| l.starts_with("baton:node_batch_size_count"));
    let single = sum(&|l| l.starts_with("baton:node_batch_size_bucket") && l.contains("le=\"1\""));
    eprintln!("{nodes} node(s): {passes} passes, {single} of them with one step");
    assert!(single < passes, "no pass ran two steps: {metrics}");
    let requests = sum(&|l| l.starts_with("baton:request_success_total"));
    assert_eq!(requests, 16.0, "{metrics}");
    let tokens = sum(&|l| l.starts_with("baton:generation_tokens_total"));
    assert!(tokens >= 16.0 * 20.0, "{metrics}");
}

#[test]
fn concurrent_requests_through_one_node_get_their_text_alone() {
    check("1");
}

#[test]
fn concurrent_requests_through_three_nodes_get_their_text_alone() {
    check("3");
}
