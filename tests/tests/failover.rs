//! A generation survives the middle node of its route dying (SIGKILL) or shutting down
//! (SIGTERM): a spare node serving the same span takes over, and the output is exactly that of
//! an undisturbed run. With no spare left, the client says which blocks are uncovered.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use baton_tests::{baton, binary, demo_model, NodeProcess};

const PROMPT: &str =
    "Once upon a time, in a small village at the edge of a great forest, there lived";

fn generate_args(boot: &str) -> Vec<String> {
    [
        "generate",
        "--bootstrap",
        boot,
        "--prompt",
        PROMPT,
        "--max-tokens",
        "200",
        "--stats",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Runs a generation and, once it streams, does `disturb` to the middle hop of its route.
/// Returns (success, stdout, stderr).
fn generate_disturbed(
    boot: &str,
    nodes: &mut HashMap<String, NodeProcess>,
    signal: &str,
) -> (bool, String, String, String) {
    let mut child = Command::new(binary("baton"))
        .args(generate_args(boot))
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("baton runs");
    let mut stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let (err_tx, err_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = err_tx.send(line);
        }
    });
    let (out_tx, out_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while let Ok(n @ 1..) = stdout.read(&mut buf) {
            let _ = out_tx.send(buf[..n].to_vec());
        }
    });
    let mut err_lines = Vec::new();
    let middle = loop {
        let line = err_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the route is printed");
        err_lines.push(line.clone());
        if let Some(route) = line.strip_prefix("route: ") {
            let hops: Vec<&str> = route.split(" -> ").collect();
            assert_eq!(hops.len(), 3, "{route}");
            break hops[1].split(' ').next().unwrap().to_string();
        }
    };
    let mut out = Vec::new();
    while out.len() < 40 {
        out.extend(
            out_rx
                .recv_timeout(Duration::from_secs(60))
                .expect("the answer streams"),
        );
    }
    let node = nodes.get(&middle).expect("the middle node is ours");
    let ok = Command::new("kill")
        .args([signal, &node.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(ok.success());
    let status = child.wait().expect("baton ends");
    out.extend(out_rx.iter().flatten());
    err_lines.extend(err_rx.iter());
    (
        status.success(),
        String::from_utf8_lossy(&out).into_owned(),
        err_lines.join("\n"),
        middle,
    )
}

fn start(nodes: &mut HashMap<String, NodeProcess>, name: &str, span: &str, boot: Option<&str>) {
    let m = demo_model();
    let mut args = vec![
        "--model",
        m.to_str().unwrap(),
        "--span",
        span,
        "--name",
        name,
    ];
    if let Some(b) = boot {
        args.extend(["--bootstrap", b]);
    }
    nodes.insert(name.to_string(), NodeProcess::start(&args).unwrap());
}

/// The milliseconds a repair line reports.
fn repair_ms(stderr: &str, from: &str) -> f64 {
    let line = stderr
        .lines()
        .find(|l| l.contains(&format!("moved from {from} to")))
        .unwrap_or_else(|| panic!("no repair of {from} reported:\n{stderr}"));
    line.rsplit(": ")
        .next()
        .and_then(|t| t.trim_end_matches(" ms").parse().ok())
        .unwrap_or_else(|| panic!("{line}"))
}

#[test]
fn generations_survive_a_killed_and_a_departing_node() {
    let mut nodes = HashMap::new();
    start(&mut nodes, "a", "0..10", None);
    let boot = nodes["a"].bootstrap.clone();
    for (name, span) in [("b1", "10..20"), ("b2", "10..20"), ("c", "20..30")] {
        start(&mut nodes, name, span, Some(&boot));
    }
    let (ok, reference, err) = baton(
        &generate_args(&boot)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(ok, "{err}");
    assert!(reference.len() > 200, "{reference}");

    // SIGKILL: the step in flight is repaired on the spare and run again.
    let (ok, text, err, killed) = generate_disturbed(&boot, &mut nodes, "-KILL");
    assert!(ok, "{err}");
    assert_eq!(text, reference, "{err}");
    let ms = repair_ms(&err, &killed);
    eprintln!("recovery after SIGKILL of {killed}: {ms:.0} ms");
    nodes.remove(&killed);

    // SIGTERM: the node asks its clients to move and leaves once they have.
    // A new spare beside the survivor of the two.
    start(&mut nodes, "b3", "10..20", Some(&boot));
    std::thread::sleep(Duration::from_secs(1));
    let (ok, text, err, left) = generate_disturbed(&boot, &mut nodes, "-TERM");
    assert!(ok, "{err}");
    assert_eq!(text, reference, "{err}");
    assert!(err.contains("moved between steps"), "{err}");
    let ms = repair_ms(&err, &left);
    eprintln!("move after SIGTERM of {left}: {ms:.0} ms");
    let mut node = nodes.remove(&left).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = node.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "{left} did not leave after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}");

    // No spare left: the client names the blocks nobody serves, and does not hang.
    let started = Instant::now();
    let (ok, _, err, _) = generate_disturbed(&boot, &mut nodes, "-KILL");
    assert!(!ok);
    assert!(err.contains("no node can take over blocks 10..20"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(60));
}
