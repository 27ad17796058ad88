//! A node under a flood of bad input from many connections at once — garbage, truncated and
//! oversized frames, steps out of order or for no session, lying hidden-state shapes, streams
//! without a hello — keeps serving a good client correct tokens, and its memory stays bounded.
//! Also: how many sessions a node holds before it refuses more, and its memory then.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use baton_node::net::{self, generate_identity, Greeting, PeerId};
use baton_protocol::wire::{
    Admit, Close, ErrorCode, Forward, Message, NextHop, OpenSession, Redirect, Sampling, Step,
    TokenOut, Truncate,
};
use baton_protocol::{HiddenStates, Span, WireDtype};
use baton_tests::{binary, demo_model, runtime, NodeProcess};

/// `VmHWM` (peak) and `VmRSS` of a process, in MiB.
fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (kb("VmHWM:"), kb("VmRSS:"))
}

/// The node's data-plane address and peer id, from its banner lines.
fn data_plane(node: &NodeProcess) -> (SocketAddr, PeerId) {
    let addr = node
        .lines
        .iter()
        .find_map(|l| l.strip_prefix("data plane (QUIC): "))
        .and_then(|l| l.split([',', ' ']).next())
        .and_then(|a| a.parse().ok())
        .expect("the data-plane address");
    let peer = node
        .bootstrap
        .rsplit('/')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a peer id");
    (addr, peer)
}

struct Client {
    conn: quinn::Connection,
    peer: PeerId,
    greeting: Greeting,
}

impl Client {
    async fn connect(addr: SocketAddr, peer: PeerId) -> Client {
        let key = generate_identity();
        let endpoint = net::endpoint(&key, "127.0.0.1:0".parse().unwrap()).unwrap();
        let conn = net::connect(&endpoint, &key, addr, peer).await.unwrap();
        let greeting = Greeting {
            name: "flood".into(),
            me: key.public().to_peer_id(),
            swarm_key: None,
        };
        Client {
            conn,
            peer,
            greeting,
        }
    }

    async fn stream(&self) -> Option<(quinn::SendStream, quinn::RecvStream)> {
        net::open_stream(
            &self.conn,
            &self.peer,
            &self.greeting,
            Duration::from_secs(10),
        )
        .await
        .ok()
    }
}

fn open(session: u64, max_tokens: u32) -> Message {
    Message::OpenSession(OpenSession {
        session,
        model_id: String::new(),
        span: Span::full(30),
        next: None,
        sampling: Sampling::default(),
        wire_dtype: WireDtype::F16,
        max_tokens,
        logprobs: false,
        top_logprobs: 0,
        logit_bias: Vec::new(),
        ring: None,
        stop_ids: Vec::new(),
        tap: false,
        feeders: Vec::new(),
        prefix: Vec::new(),
        prefix_tail: 0,
    })
}

/// One attacker: a connection that sends every kind of bad input, round after round, and
/// counts the error replies it gets.
async fn attack(addr: SocketAddr, peer: PeerId, stop: Arc<AtomicBool>, errors: Arc<AtomicUsize>) {
    let c = Client::connect(addr, peer).await;
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let Some((mut send, mut recv)) = c.stream().await else {
            continue;
        };
        let junk: Vec<u8> = (0..200).map(|i| (i * 31 + round as usize) as u8).collect();
        let mut garbage = (junk.len() as u32).to_le_bytes().to_vec();
        garbage.extend(&junk);
        let _ = send.write_all(&garbage).await;
        let session = 1000 + round;
        let bad = [
            // Out of order, and for no session.
            Message::Step(Step {
                session: round,
                seq: 3,
                tokens: vec![1, 2],
                replay: false,
                more: 0,
            }),
            // Hidden states whose shape lies about their bytes, and a huge claimed shape.
            Message::Forward(Forward {
                session: round,
                seq: 0,
                hidden: HiddenStates {
                    tokens: 1_000_000,
                    hidden: 576,
                    dtype: WireDtype::F16,
                    data: vec![0; 64],
                },
                hop_us: vec![],
                replay: false,
                more: 0,
            }),
            // A session opened with the wrong model, then a real one stepped out of order.
            open(session, 64),
            Message::Token(TokenOut {
                session,
                seq: 0,
                token: 1,
                logprob: None,
                top: Vec::new(),
                hop_us: vec![],
                fed_on: false,
            }),
        ];
        for m in &bad {
            let _ = net::write_msg(&mut send, m).await;
        }
        // A truncated frame, then an oversized one, which ends the stream.
        let _ = send.write_all(&1000u32.to_le_bytes()).await;
        let _ = send.write_all(&[1, 2, 3]).await;
        let _ = send.write_all(&u32::MAX.to_le_bytes()).await;
        let _ = send.finish();
        while let Ok(Ok(Some(m))) =
            tokio::time::timeout(Duration::from_secs(2), net::read_msg(&mut recv)).await
        {
            if matches!(m, Message::Error(_)) {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        // And a stream with no hello at all.
        if let Ok((mut s, _)) = c.conn.open_bi().await {
            let _ = s.write_all(&garbage).await;
            let _ = s.finish();
        }
    }
}

fn generate(boot: &str) -> String {
    let out = std::process::Command::new(binary("baton"))
        .args(["generate", "--bootstrap", boot, "--max-tokens", "48"])
        .args(["--prompt", "The quick brown fox"])
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .expect("baton runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_flooded_node_keeps_serving_correct_tokens_in_bounded_memory() {
    let m = demo_model();
    let node = NodeProcess::start(&[
        "--model",
        m.to_str().unwrap(),
        "--span",
        "0..30",
        "--name",
        "flooded",
    ])
    .unwrap();
    let reference = generate(&node.bootstrap);
    let (before, _) = memory_mib(node.child.id());
    let (addr, peer) = data_plane(&node);
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicUsize::new(0));
    let rt = runtime();
    let attackers: Vec<_> = (0..12)
        .map(|_| rt.spawn(attack(addr, peer, stop.clone(), errors.clone())))
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    for _ in 0..3 {
        assert_eq!(generate(&node.bootstrap), reference);
    }
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        let _ = rt.block_on(a);
    }
    let (peak, now) = memory_mib(node.child.id());
    eprintln!(
        "flood: {} error replies; node memory peak {peak:.0} MiB (before the flood {before:.0}, now {now:.0})",
        errors.load(Ordering::Relaxed)
    );
    assert!(errors.load(Ordering::Relaxed) > 100);
    assert!(peak < before + 256.0, "peak {peak} MiB from {before} MiB");
    assert_eq!(generate(&node.bootstrap), reference);
}

/// Truncate, Redirect, Admit, Close and steps of a session from another peer, or from another
/// stream of the same peer, are refused, and the session steps on unharmed. Any stream once
/// could end, rewind or feed anyone's session by its id.
#[test]
fn only_the_stream_that_opened_a_session_controls_it() {
    let m = demo_model();
    let node = NodeProcess::start(&[
        "--model",
        m.to_str().unwrap(),
        "--span",
        "0..30",
        "--name",
        "owned",
    ])
    .unwrap();
    let (addr, peer) = data_plane(&node);
    let rt = runtime();
    rt.block_on(async {
        let owner = Client::connect(addr, peer).await;
        let (mut send, mut recv) = owner.stream().await.expect("a stream");
        let Message::OpenSession(mut o) = open(7, 64) else {
            unreachable!()
        };
        o.model_id = node.model_id();
        net::write_msg(&mut send, &Message::OpenSession(o))
            .await
            .unwrap();
        let opened = net::read_msg(&mut recv).await.unwrap();
        assert!(
            matches!(opened, Some(Message::SessionOpened(_))),
            "{opened:?}"
        );
        let step = |seq: u64, tokens: Vec<u32>| {
            Message::Step(Step {
                session: 7,
                seq,
                tokens,
                replay: false,
                more: 0,
            })
        };
        net::write_msg(&mut send, &step(0, vec![1, 2, 3]))
            .await
            .unwrap();
        let first = net::read_msg(&mut recv).await.unwrap();
        assert!(matches!(first, Some(Message::Token(_))), "{first:?}");

        let stranger = Client::connect(addr, peer).await;
        let hostile = [
            Message::Truncate(Truncate { session: 7, seq: 0 }),
            Message::Redirect(Redirect {
                session: 7,
                next: NextHop {
                    peer_id: stranger.greeting.me.to_string(),
                    addr: "127.0.0.1:9".into(),
                    span: Span::full(30),
                },
            }),
            Message::Close(Close { session: 7 }),
            Message::Admit(Admit {
                session: 7,
                peer_id: stranger.greeting.me.to_string(),
            }),
            // A step injected by anyone but the opener or a feeder it named.
            step(1, vec![9]),
        ];
        for from in [&stranger, &owner] {
            let (mut s, mut r) = from.stream().await.expect("a stream");
            for m in &hostile {
                net::write_msg(&mut s, m).await.unwrap();
                match net::read_msg(&mut r).await.unwrap() {
                    Some(Message::Error(e)) => assert_eq!(e.code, ErrorCode::Forbidden, "{m:?}"),
                    other => panic!("{m:?} was answered {other:?}"),
                }
            }
        }
        // The session is whole: its next step runs.
        net::write_msg(&mut send, &step(1, vec![4])).await.unwrap();
        let next = net::read_msg(&mut recv).await.unwrap();
        assert!(matches!(next, Some(Message::Token(_))), "{next:?}");
    });
}

#[test]
fn a_node_refuses_sessions_beyond_its_kv_room_with_a_reason() {
    let m = demo_model();
    let node = NodeProcess::start(&[
        "--model",
        m.to_str().unwrap(),
        "--span",
        "0..30",
        "--name",
        "full",
        "--max-sessions",
        "64",
        "--max-kv-tokens",
        "8192",
    ])
    .unwrap();
    let (addr, peer) = data_plane(&node);
    let rt = runtime();
    let (held, refusal) = rt.block_on(async {
        let c = Client::connect(addr, peer).await;
        let model_id = node.model_id();
        let mut streams = Vec::new();
        for session in 1u64.. {
            let (mut send, mut recv) = c.stream().await.expect("a stream");
            let Message::OpenSession(mut o) = open(session, 512) else {
                unreachable!()
            };
            o.model_id = model_id.clone();
            net::write_msg(&mut send, &Message::OpenSession(o))
                .await
                .unwrap();
            match net::read_msg(&mut recv).await.unwrap() {
                Some(Message::SessionOpened(_)) => {}
                Some(Message::Error(e)) => return (session - 1, e),
                other => panic!("{other:?}"),
            }
            // Fill the session's cache with a 400-token prompt.
            let step = Message::Step(Step {
                session,
                seq: 0,
                tokens: (0..400).map(|i| (i * 37 % 5000) as u32).collect(),
                replay: false,
                more: 0,
            });
            net::write_msg(&mut send, &step).await.unwrap();
            let answer = net::read_msg(&mut recv).await.unwrap();
            assert!(matches!(answer, Some(Message::Token(_))), "{answer:?}");
            streams.push((send, recv));
        }
        unreachable!()
    });
    let (_, rss) = memory_mib(node.child.id());
    eprintln!(
        "admission: {held} sessions of 512 KV tokens held (400 used each), then refused: {:?}; node memory {rss:.0} MiB",
        refusal.message
    );
    assert_eq!(held, 16);
    assert_eq!(refusal.code, ErrorCode::Busy);
    assert!(refusal.message.contains("KV"), "{}", refusal.message);
}
