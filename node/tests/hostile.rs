//! Hostile peers in a swarm of honest `baton-node` processes. Beside two honest nodes, this test
//! joins the DHT as four peers of its own that announce correctly signed but lying records:
//! a model of `u32::MAX` blocks, a thousand addresses, a whole model served a million times
//! faster than anyone (at an endpoint that answers pings, sends a forged tokenizer and then
//! stalls every session it is asked to open), and a model of 31 blocks under the same id.
//! `baton generate`, `route` and `swarm` keep working, none of them crashes, and the text is
//! exactly what the honest nodes gave before the liars came.

use std::net::SocketAddr;
use std::time::Duration;

use baton_node::dht::{now_unix, sign, Dht};
use baton_node::net::{self, generate_identity, Access, Greeting, Keypair};
use baton_protocol::record::NodeRecord;
use baton_protocol::wire::{Message, ModelInfo, TokenizerSpec};
use baton_protocol::{Span, PROTOCOL_VERSION};
use baton_tests::{baton, demo_model, runtime, NodeProcess};

/// Serves a liar's data plane: hellos and pings as a node would, a forged model description,
/// and sessions that never open.
async fn serve_liar(endpoint: quinn::Endpoint, key: Keypair, model_id: String) {
    let greeting = Greeting {
        name: "liar".into(),
        me: key.public().to_peer_id(),
        swarm_key: None,
    };
    while let Some(incoming) = endpoint.accept().await {
        let (greeting, model_id) = (greeting.clone(), model_id.clone());
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            let Ok(peer) = net::peer_of(&conn) else {
                return;
            };
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let hello = Message::Hello(greeting.hello(&peer));
                let model_id = model_id.clone();
                tokio::spawn(async move {
                    while let Ok(Some(m)) = net::read_msg(&mut recv).await {
                        let answer = match m {
                            Message::Hello(_) => hello.clone(),
                            Message::GetModelInfo(_) => Message::ModelInfo(ModelInfo {
                                model_id: model_id.clone(),
                                content_hash: "forged".into(),
                                tokenizer: TokenizerSpec::default(),
                                blocks: 30,
                                vocab: 49152,
                                context: 8192,
                            }),
                            // Accept nothing, refuse nothing: stall.
                            _ => continue,
                        };
                        if net::write_msg(&mut send, &answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
    }
}

/// The tests of this file run one at a time: each starts its own swarm of processes.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn record(key: &Keypair, model_id: &str, addr: SocketAddr) -> NodeRecord {
    NodeRecord {
        peer_id: key.public().to_peer_id().to_string(),
        addrs: vec![addr.to_string()],
        model_id: model_id.into(),
        model_name: "liar".into(),
        span: Span { start: 0, end: 30 },
        blocks: 30,
        backend: "cpu".into(),
        device: "none".into(),
        memory_total: 1 << 40,
        memory_free: 1 << 40,
        tokens_per_s: 1e6,
        kv_tokens_free: 1 << 30,
        experts: None,
        protocol_version: PROTOCOL_VERSION,
        name: "liar".into(),
        expires_unix: now_unix() + 600,
    }
}

fn generate(boot: &str) -> String {
    generate_with(boot, &[]).0
}

/// `baton generate` through the swarm: its text and what it said on stderr.
fn generate_with(boot: &str, more: &[&str]) -> (String, String) {
    let mut args = vec![
        "generate",
        "--bootstrap",
        boot,
        "--max-tokens",
        "24",
        "--prompt",
        "The quick brown fox",
    ];
    args.extend(more);
    let (ok, out, err) = baton(&args);
    assert!(ok, "{err}");
    (out, err)
}

/// `baton generate` through the swarm, watched: its text and its peak memory (MiB).
fn generate_watched(boot: &str) -> (String, f64) {
    use std::io::Read;
    let mut child = std::process::Command::new(baton_tests::binary("baton"))
        .args(["generate", "--bootstrap", boot, "--max-tokens", "24"])
        .args(["--prompt", "The quick brown fox"])
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("baton runs");
    let mut stdout = child.stdout.take().expect("its output");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let mut peak = 0f64;
    while child.try_wait().expect("waiting for baton").is_none() {
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()));
        let hwm = status.ok().and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        });
        peak = peak.max(hwm.unwrap_or(0.0) / 1024.0);
        std::thread::sleep(Duration::from_millis(20));
    }
    (reader.join().expect("the reader"), peak)
}

#[test]
fn lying_records_and_a_stalling_node_change_nothing() {
    let _one_at_a_time = serial();
    let m = demo_model();
    let m = m.to_str().unwrap();
    let a = NodeProcess::start(&["--model", m, "--span", "0..15", "--name", "a"]).unwrap();
    let boot = a.bootstrap.clone();
    let _b = NodeProcess::start(&[
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
    let model_id = a.model_id();
    let honest = generate(&boot);

    let rt = runtime();
    let _liars = rt.block_on(async {
        let access = Access {
            swarm_key: None,
            allow: Vec::new(),
        };
        let mut dhts = Vec::new();
        for lie in 0..4 {
            let key = generate_identity();
            let endpoint = net::endpoint(&key, "127.0.0.1:0".parse().unwrap()).unwrap();
            let addr = endpoint.local_addr().unwrap();
            tokio::spawn(serve_liar(endpoint, key.clone(), model_id.clone()));
            let mut r = record(&key, &model_id, addr);
            match lie {
                0 => r.blocks = u32::MAX,
                1 => {
                    r.addrs = (0..1000)
                        .map(|i| format!("10.0.{}.{}:1", i / 250, i % 250))
                        .collect()
                }
                2 => {}
                _ => {
                    r.blocks = 31;
                    r.span = Span { start: 15, end: 31 };
                }
            }
            let dht = Dht::start(
                key.clone(),
                "/ip4/127.0.0.1/tcp/0".parse().unwrap(),
                vec![boot.parse().unwrap()],
                true,
                &access,
            )
            .await
            .unwrap();
            dht.announce(sign(&key, &r).unwrap(), &model_id)
                .await
                .unwrap();
            dhts.push(dht);
        }
        // Let the records spread.
        tokio::time::sleep(Duration::from_secs(3)).await;
        dhts
    });

    let (ok, out, err) = baton(&["swarm", "--bootstrap", &boot]);
    assert!(ok, "baton swarm: {err}");
    assert!(
        out.contains("liar"),
        "the stalling liar's record is valid: {out}"
    );
    let (ok, out, err) = baton(&["route", "--bootstrap", &boot]);
    assert!(ok, "baton route: {err}");
    eprintln!("route with liars present:\n{out}");
    let started = std::time::Instant::now();
    let (text, peak) = generate_watched(&boot);
    eprintln!(
        "generation through the swarm with liars: {:.1} s, client peak memory {peak:.0} MiB",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(text, honest);
    assert!(peak < 1024.0, "the client peaked at {peak} MiB");
    drop(rt);
}

/// A node that serves its span but scales its outputs by up to 30% (and claims a speed that
/// puts it on the route): with checks on (the default), the client finds it at the prompt's
/// check, a third node confirms, the liar is banned and replaced, and the text is exactly what
/// honest nodes give.
#[test]
fn a_node_computing_wrong_hidden_states_is_caught_banned_and_replaced() {
    let _one_at_a_time = serial();
    let m = demo_model();
    let m = m.to_str().unwrap();
    let a = NodeProcess::start(&["--model", m, "--span", "0..15", "--name", "a"]).unwrap();
    let boot = a.bootstrap.clone();
    let honest_node = |name: &str| {
        NodeProcess::start(&[
            "--model",
            m,
            "--span",
            "15..30",
            "--name",
            name,
            "--threads",
            "1",
            "--bootstrap",
            &boot,
        ])
        .unwrap()
    };
    let _b = honest_node("b");
    let honest = generate(&boot);
    // The liar also claims to be fast, so that routes take it.
    let _liar = NodeProcess::start_with(
        &[
            ("BATON_FAULT_PERTURB", "0.3"),
            ("BATON_FAULT_CLAIM", "5000"),
        ],
        &[
            "--model",
            m,
            "--span",
            "15..30",
            "--name",
            "liar",
            "--bootstrap",
            &boot,
        ],
    )
    .unwrap();
    let _d = honest_node("d");
    std::thread::sleep(Duration::from_secs(2));

    // Without checks, a route through the liar gives other text.
    let (unchecked, err) = generate_with(&boot, &["--verify", "0", "--stats"]);
    assert!(
        err.lines()
            .any(|l| l.starts_with("route:") && l.contains("liar")),
        "the route does not take the liar:\n{err}"
    );
    assert_ne!(unchecked, honest, "the liar's perturbation changes nothing");
    let started = std::time::Instant::now();
    let (checked, err) = generate_with(&boot, &["--stats"]);
    eprintln!(
        "with checks ({:.1} s):\n{err}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(checked, honest);
    assert!(
        err.lines()
            .any(|l| l.contains("liar") && l.contains("banned")),
        "the liar was not banned:\n{err}"
    );
    // `baton swarm` marks it, and later clients leave it out.
    let (ok, out, err) = baton(&["swarm", "--bootstrap", &boot]);
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("liar") && l.contains("BANNED")),
        "{out}"
    );
    let (again, err) = generate_with(&boot, &["--stats"]);
    assert_eq!(again, honest);
    assert!(
        !err.contains("-> liar"),
        "a later client routed through the liar:\n{err}"
    );
}
