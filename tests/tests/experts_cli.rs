//! Expert parallelism through the real binaries: the DeepSeek-V3 fixture (16 routed experts in
//! 4 groups, a dense first layer, a shared expert) served by one node holding the span with
//! experts 0..8 and two expert-only nodes holding experts 8..16. Greedy output with f32 on the
//! wire is exactly that of one process, and stays so when the expert peer in use is SIGKILLed
//! mid-generation: the hop sends the same rows to the replica.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use baton_tests::{baton, binary, fixtures_dir, NodeProcess};

const PROMPT: &str = "hello world";

fn model() -> String {
    fixtures_dir()
        .join("moe/gguf/deepseek_v3.gguf")
        .to_string_lossy()
        .into_owned()
}

fn generate_args<'a>(source: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["generate"];
    args.extend_from_slice(source);
    args.extend([
        "--prompt",
        PROMPT,
        "--max-tokens",
        "200",
        "--wire-dtype",
        "f32",
    ]);
    args
}

/// The value of the sample `name` on a node's `/metrics`.
fn metric(node: &NodeProcess, name: &str) -> f64 {
    let url = node
        .lines
        .iter()
        .find_map(|l| l.strip_prefix("metrics: http://"))
        .expect("the node prints its metrics address");
    let addr = url.trim_end_matches("/metrics");
    let mut conn = std::net::TcpStream::connect(addr).expect("metrics answer");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(conn, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut body = String::new();
    conn.read_to_string(&mut body).unwrap();
    body.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{body}"))
}

fn join(name: &str, args: &[&str], boot: Option<&str>) -> NodeProcess {
    let m = model();
    let mut all = vec![
        "--model",
        m.as_str(),
        "--name",
        name,
        "--backend",
        "cpu",
        "--metrics",
        "127.0.0.1:0",
    ];
    all.extend_from_slice(args);
    if let Some(b) = boot {
        all.extend(["--bootstrap", b]);
    }
    NodeProcess::start(&all).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn shards_a_model_cannot_have_are_refused_with_the_reason() {
    let m = model();
    let demo = baton_tests::demo_model();
    let demo = demo.to_str().unwrap();
    for (model, experts, want) in [
        (m.as_str(), "0..20", "the model's layers have experts 0..16"),
        (demo, "0..4", "has no mixture-of-experts layers"),
    ] {
        let args = [
            "join",
            "--model",
            model,
            "--experts",
            experts,
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ];
        let (ok, _, err) = baton_tests::run_bin("baton-node", &args);
        assert!(!ok && err.contains(want), "{experts} on {model}: {err}");
    }
}

#[test]
fn experts_split_over_three_nodes_generate_what_one_process_does_and_survive_a_kill() {
    let m = model();
    let (ok, reference, err) = baton(&generate_args(&["--model", &m, "--backend", "cpu"]));
    assert!(ok, "{err}");
    // "hello world" runs to the token limit on this fixture.
    assert!(reference.len() > 400, "{reference}");

    let only = ["--span", "0..4", "--experts", "8..16", "--experts-only"];
    let b = join("experts-b", &only, None);
    let boot = b.bootstrap.clone();
    let c = join("experts-c", &only, Some(&boot));
    let a = join("hop", &["--span", "0..4", "--experts", "0..8"], Some(&boot));
    assert!(
        b.banner.contains("experts 8..16 of 16 (experts only)"),
        "{}",
        b.banner
    );
    assert!(a.banner.contains("experts 0..8 of 16"), "{}", a.banner);

    // The swarm view names the shards, and the expert-only nodes are no hops of a route.
    let (ok, listing, err) = baton(&["swarm", "--bootstrap", &boot]);
    assert!(ok, "{err}");
    assert!(listing.contains("8..16 only"), "{listing}");
    assert!(
        listing.contains("blocks 0..4: 0-7 x1, 8-15 x2"),
        "{listing}"
    );
    let (ok, route, err) = baton(&["route", "--bootstrap", &boot]);
    assert!(ok, "{err}");
    assert!(
        route.contains("1 hop(s)") && route.contains("hop "),
        "{route}"
    );

    let (ok, text, err) = baton(&generate_args(&["--bootstrap", &boot]));
    assert!(ok, "{err}");
    assert_eq!(text, reference, "{err}");
    let calls = "baton:expert_calls_served_total";
    let served = metric(&b, calls) + metric(&c, calls);
    // Three of the four layers are mixtures of experts; most steps route to experts 8..16.
    assert!(served > 100.0, "expert peers answered {served} calls");
    assert_eq!(metric(&a, "baton:expert_dispatch_failures_total"), 0.0);

    // Again, and SIGKILL the expert peer in use once the answer streams.
    let mut child = Command::new(binary("baton"))
        .args(generate_args(&["--bootstrap", &boot]))
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("baton runs");
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok(n @ 1..) = stdout.read(&mut buf) {
            let _ = tx.send(buf[..n].to_vec());
        }
    });
    let mut out = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the answer streams");
    let (b_before, c_before) = (metric(&b, calls), metric(&c, calls));
    let (mut in_use, spare) = if b_before >= c_before { (b, c) } else { (c, b) };
    let spare_before = metric(&spare, calls);
    in_use.child.kill().expect("SIGKILL");
    let _ = in_use.child.wait();
    let status = child.wait().expect("baton ends");
    out.extend(rx.iter().flatten());
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&out), reference, "{err}");
    assert!(
        metric(&a, "baton:expert_dispatch_failures_total") >= 1.0,
        "the hop never noticed the dead peer: the generation ended before the kill"
    );
    assert!(
        metric(&spare, calls) > spare_before,
        "the replica took no calls"
    );
    let layers = metric(&a, "baton:expert_dispatch_layers_total");
    let waited = metric(&a, "baton:expert_dispatch_seconds_total");
    eprintln!(
        "{layers} dispatched layers waited {:.3} ms each on average (one of them on the kill)",
        waited * 1e3 / layers.max(1.0)
    );
}
