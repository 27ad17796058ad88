//! When a node leaves and its blocks lose their last server, a node started with `--span auto`
//! whose own blocks are served by others moves to cover them, and the model stays servable.

use std::time::{Duration, Instant};

use baton_tests::{baton, demo_model, NodeProcess};

#[test]
fn an_auto_node_moves_to_cover_the_blocks_a_departed_node_leaves() {
    let m = demo_model();
    let m = m.to_str().unwrap();
    let a = NodeProcess::start(&["--model", m, "--span", "0..15", "--name", "a"]).unwrap();
    let boot = a.bootstrap.clone();
    let b = NodeProcess::start(&[
        "--model",
        m,
        "--span",
        "15..30",
        "--name",
        "b",
        "--bootstrap",
        &boot,
    ])
    .unwrap();
    let c = NodeProcess::start(&[
        "--model",
        m,
        "--span",
        "auto",
        "--max-blocks",
        "15",
        "--name",
        "c",
        "--bootstrap",
        &boot,
    ])
    .unwrap();
    assert!(c.banner.contains("serves blocks 0..15"), "{}", c.banner);

    drop(b);
    let start = Instant::now();
    loop {
        let (ok, out, err) = baton(&["swarm", "--bootstrap", &boot]);
        assert!(ok, "{err}");
        let moved = out
            .lines()
            .any(|l| l.starts_with("c ") && l.contains("15..30"));
        if moved && out.contains("every stage is served") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "c did not move to cover blocks 15..30:\n{out}"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    eprintln!(
        "the gap was covered {:.0} s after b left",
        start.elapsed().as_secs_f64()
    );
    let (ok, out, err) = baton(&[
        "generate",
        "--bootstrap",
        &boot,
        "--prompt",
        "The capital of France is",
        "--max-tokens",
        "8",
    ]);
    assert!(ok, "{err}");
    assert!(!out.trim().is_empty());
}
