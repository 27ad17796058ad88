//! `baton serve` at capacity: 64 streams fill the node's sessions; further requests wait in a
//! bounded queue, first come first served, and beyond it are answered 429 with the reason; when
//! the clients drop at once, their sessions free at once and every following request is
//! answered.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use baton_tests::{demo_model, ServeProcess};
use serde_json::json;

/// The value of an unlabelled sample in `/metrics`.
fn metric(server: &ServeProcess, name: &str) -> f64 {
    let (_, text) = baton_tests::curl(&[&format!("{}/metrics", server.url)]);
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(180), "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A streaming completion by a curl process, to be killed as a client that goes away.
fn stream(server: &ServeProcess, i: usize) -> Child {
    let body = json!({"prompt": format!("Request {i}: once upon a time"), "max_tokens": 2000,
                      "temperature": 0, "stream": true});
    Command::new("curl")
        .args([
            "-sS",
            "-N",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
        ])
        .arg(body.to_string())
        .arg(format!("{}/v1/completions", server.url))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("curl starts")
}

#[test]
fn full_nodes_queue_requests_and_dropped_clients_free_their_sessions() {
    let model = demo_model();
    let server = ServeProcess::start(&[
        "--local",
        "--nodes",
        "1",
        "--backend",
        "cpu",
        "--max-queue",
        "3",
        "--model",
        model.to_str().unwrap(),
    ]);
    let mut clients: Vec<Child> = (0..64).map(|i| stream(&server, i)).collect();
    wait_for("64 streams run", || {
        metric(&server, "baton:num_requests_running") == 64.0
    });

    // Three more wait for room, one after the other; the one after them is refused at once,
    // with the reason.
    let small = json!({"prompt": "The sky is", "max_tokens": 3, "temperature": 0});
    std::thread::scope(|s| {
        let queued: Vec<_> = (0..3)
            .map(|i| {
                let q = s.spawn(|| {
                    let answer = server.post("/v1/completions", &small);
                    (answer, Instant::now())
                });
                wait_for("the request waits", || {
                    metric(&server, "baton:num_requests_waiting") == (i + 1) as f64
                });
                q
            })
            .collect();
        let (status, v) = server.post("/v1/completions", &small);
        assert_eq!(status, 429, "{v}");
        assert_eq!(v["error"]["code"], "queue_full", "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("room"),
            "{v}"
        );

        // One client goes away: its room goes to the first in line, whose session then frees
        // for the second, and so on: first come, first served.
        clients[0].kill().ok();
        let answered: Vec<Instant> = queued
            .into_iter()
            .map(|q| {
                let ((status, v), at) = q.join().unwrap();
                assert_eq!(status, 200, "{v}");
                at
            })
            .collect();
        assert!(
            answered.windows(2).all(|w| w[0] < w[1]),
            "the waiting requests were answered out of turn"
        );
    });

    // All other clients go away at once: every later request is answered.
    let dropped = Instant::now();
    for c in &mut clients {
        c.kill().ok();
    }
    let (status, v) = server.post("/v1/completions", &small);
    assert_eq!(status, 200, "{v}");
    eprintln!("answered {:?} after the drop", dropped.elapsed());
    for c in &mut clients {
        c.wait().ok();
    }
    for _ in 0..8 {
        let (status, v) = server.post("/v1/completions", &small);
        assert_eq!(status, 200, "{v}");
    }
    wait_for("the dropped streams end", || {
        metric(&server, "baton:num_requests_running") == 0.0
    });
}
