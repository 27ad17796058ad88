//! Continuous batching as a user meets it: eight greedy requests to `baton serve`, with prompts
//! of different lengths and staggered starts, each get exactly the text they get alone, through
//! one node and through three.

use std::time::Duration;

use baton_tests::{demo_model, NodeProcess, ServeProcess};
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
    // One inter-token latency for each token after a request's first.
    let gaps = sum(&|l| l.starts_with("baton:inter_token_latency_seconds_count"));
    assert_eq!(gaps, tokens - requests, "{metrics}");
}

#[test]
fn concurrent_requests_through_one_node_get_their_text_alone() {
    check("1");
}

#[test]
fn concurrent_requests_through_three_nodes_get_their_text_alone() {
    check("3");
}

/// Two `baton-node join` processes with `--metrics`: four `baton generate` clients at once get
/// the text each gets alone, and the nodes' metrics show the passes they shared.
#[test]
fn node_processes_batch_concurrent_clients_and_report_it() {
    let model = demo_model();
    let m = model.to_str().unwrap();
    let first = NodeProcess::start(&[
        "--model",
        m,
        "--span",
        "0..15",
        "--backend",
        "cpu",
        "--metrics",
        "127.0.0.1:0",
    ])
    .unwrap();
    let boot = first.bootstrap.clone();
    let second = NodeProcess::start(&[
        "--model",
        m,
        "--span",
        "15..30",
        "--backend",
        "cpu",
        "--bootstrap",
        &boot,
        "--metrics",
        "127.0.0.1:0",
    ])
    .unwrap();
    let generate = |prompt: &str| {
        let (ok, out, err) = baton_tests::baton(&[
            "generate",
            "--bootstrap",
            &boot,
            "--wire-dtype",
            "f32",
            "--verify",
            "0",
            "--temperature",
            "0",
            "--max-tokens",
            "24",
            "--prompt",
            prompt,
        ]);
        assert!(ok, "{err}");
        out
    };
    let prompts: Vec<String> = prompts().into_iter().take(4).collect();
    let alone: Vec<String> = prompts.iter().map(|p| generate(p)).collect();
    let together: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = prompts.iter().map(|p| s.spawn(|| generate(p))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(alone, together);
    for node in [&first, &second] {
        let url = node
            .lines
            .iter()
            .find_map(|l| l.strip_prefix("metrics: "))
            .expect("the node says where its metrics are");
        let (status, text) = baton_tests::curl(&[url]);
        assert_eq!(status, 200, "{text}");
        let value = |name: &str| -> f64 {
            text.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.rsplit(' ').next()?.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {text}"))
        };
        assert!(value("baton:node_pass_steps_total") >= 8.0 * 24.0, "{text}");
        assert!(value("baton:node_passes_total") > 0.0, "{text}");
        let (status, _) = baton_tests::curl(&[&url.replace("/metrics", "/other")]);
        assert_eq!(status, 404);
    }
}
