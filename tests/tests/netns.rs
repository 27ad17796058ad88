//! Nodes in separate network namespaces, joined by veth pairs to a bridge, with 20 ms added to
//! every data-plane datagram each way by UDP relays in this test (this kernel has no netem).
//! Generation still works, and the route prefers one node serving the whole model over three
//! hops serving thirds.
//!
//! Needs root and `ip` (iproute2), as CI has.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_tests::{baton, demo_model, NodeProcess};
use tokio::net::UdpSocket;

const DELAY: Duration = Duration::from_millis(20);

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("running ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A hub namespace holding a bridge, one namespace per node with a veth into the bridge, and a
/// veth from this (root) namespace into the bridge at 10.99.0.1. Removed when dropped.
struct Net {
    tag: String,
    nodes: usize,
}

impl Net {
    fn new(nodes: usize) -> Net {
        let tag = format!("{}", std::process::id() % 10000);
        let net = Net {
            tag: tag.clone(),
            nodes,
        };
        let hub = format!("bth{tag}");
        ip(&["netns", "add", &hub]);
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &hub, "link", "set", "br0", "up"]);
        for i in 0..=nodes {
            let (outer, inner) = (format!("bto{tag}x{i}"), format!("bti{tag}x{i}"));
            ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ]);
            ip(&["link", "set", &inner, "netns", &hub]);
            ip(&["-n", &hub, "link", "set", &inner, "master", "br0", "up"]);
            if i == 0 {
                ip(&["addr", "add", "10.99.0.1/24", "dev", &outer]);
                ip(&["link", "set", &outer, "up"]);
            } else {
                let ns = net.ns(i);
                ip(&["netns", "add", &ns]);
                ip(&["link", "set", &outer, "netns", &ns]);
                ip(&[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("10.99.0.{}/24", 10 + i),
                    "dev",
                    &outer,
                ]);
                ip(&["-n", &ns, "link", "set", &outer, "up"]);
                ip(&["-n", &ns, "link", "set", "lo", "up"]);
            }
        }
        net
    }

    fn ns(&self, i: usize) -> String {
        format!("btn{}x{i}", self.tag)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 1..=self.nodes {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(i)])
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &format!("bto{}x0", self.tag)])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &format!("bth{}", self.tag)])
            .status();
    }
}

/// A UDP relay on 10.99.0.1 that holds every datagram for `DELAY` before passing it on, both
/// ways. Its target is set once the node behind it says where its data plane is bound.
struct Relay {
    addr: SocketAddr,
    target: Arc<Mutex<Option<SocketAddr>>>,
}

async fn relay() -> Relay {
    let front = Arc::new(UdpSocket::bind("10.99.0.1:0").await.unwrap());
    let addr = front.local_addr().unwrap();
    let target: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
    let t = target.clone();
    tokio::spawn(async move {
        let mut backs: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
        let mut buf = vec![0u8; 65536];
        loop {
            let Ok((n, from)) = front.recv_from(&mut buf).await else {
                return;
            };
            let Some(to) = *t.lock().unwrap() else {
                continue;
            };
            let back = match backs.get(&from) {
                Some(b) => b.clone(),
                None => {
                    // One socket per client, so the node's answers find their way back.
                    let b = Arc::new(UdpSocket::bind("10.99.0.1:0").await.unwrap());
                    b.connect(to).await.unwrap();
                    let (b2, f2) = (b.clone(), front.clone());
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 65536];
                        while let Ok(n) = b2.recv(&mut buf).await {
                            let data = buf[..n].to_vec();
                            let f = f2.clone();
                            tokio::spawn(async move {
                                tokio::time::sleep(DELAY).await;
                                let _ = f.send_to(&data, from).await;
                            });
                        }
                    });
                    backs.insert(from, b.clone());
                    b
                }
            };
            let data = buf[..n].to_vec();
            tokio::spawn(async move {
                tokio::time::sleep(DELAY).await;
                let _ = back.send(&data).await;
            });
        }
    });
    Relay { addr, target }
}

fn bound_addr(node: &NodeProcess) -> SocketAddr {
    let line = node
        .lines
        .iter()
        .find(|l| l.starts_with("data plane"))
        .expect("data plane line");
    let bound = line
        .split("bound on ")
        .nth(1)
        .unwrap()
        .trim_end_matches(')');
    bound.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_namespaces_prefer_one_whole_node_over_three_hops() {
    let model = demo_model();
    let m = model.to_str().unwrap().to_string();
    let net = Net::new(4);
    let spans = ["0..10", "10..20", "20..30", "0..30"];
    let names = ["a", "b", "c", "whole"];
    let mut nodes = Vec::new();
    let mut boot = String::new();
    for i in 0..4 {
        let r = relay().await;
        let listen = format!("/ip4/10.99.0.{}/tcp/0", 11 + i);
        let public = r.addr.to_string();
        let mut args = vec![
            "--model",
            &m,
            "--span",
            spans[i],
            "--name",
            names[i],
            "--public-addr",
            &public,
        ];
        if !boot.is_empty() {
            args.extend(["--bootstrap", &boot]);
        }
        let ns = net.ns(i + 1);
        let args: Vec<&str> = args.iter().map(|s| &**s).collect();
        let node = tokio::task::block_in_place(|| NodeProcess::start_in(Some(&ns), &listen, &args))
            .unwrap();
        *r.target.lock().unwrap() = Some(bound_addr(&node));
        if boot.is_empty() {
            boot = node.bootstrap.clone();
        }
        nodes.push((node, r));
    }
    let run = |args: Vec<String>| {
        tokio::task::block_in_place(|| {
            let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
            baton(&a)
        })
    };
    // Wait until every node is announced.
    for _ in 0..30 {
        let (_, out, _) = run(vec!["swarm".into(), "--bootstrap".into(), boot.clone()]);
        if names.iter().all(|n| out.contains(&format!("{n} "))) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (ok, out, err) = run(vec!["route".into(), "--bootstrap".into(), boot.clone()]);
    assert!(ok, "{err}");
    assert!(out.contains("1 hop(s)") && out.contains("whole"), "{out}");
    // Each round trip crosses two relays' worth of delay.
    assert!(out.contains("rtt"), "{out}");
    let chat = |b: &str| {
        vec![
            "generate",
            "--bootstrap",
            b,
            "--chat",
            "--prompt",
            "What is the capital of France?",
            "--max-tokens",
            "12",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>()
    };
    let (ok, out, err) = run(chat(&boot));
    assert!(ok && out.contains("Paris"), "{out} {err}");

    // Without the whole node, the three thirds carry the generation.
    let (whole, _) = nodes.pop().unwrap();
    drop(whole);
    let mut routed = String::new();
    for _ in 0..40 {
        let (_, out, _) = run(vec!["route".into(), "--bootstrap".into(), boot.clone()]);
        if out.contains("3 hop(s)") {
            routed = out;
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        routed.contains("3 hop(s)"),
        "the thirds were never routed: {routed}"
    );
    let (ok, out, err) = run(chat(&boot));
    assert!(ok && out.contains("Paris"), "{out} {err}");

    // What the head hop's feeding tokens to the first hop saves when every link is slow: a
    // step crosses three links instead of four. Printed (timings are no test), and both ways
    // must give the same text.
    let mut texts = Vec::new();
    for how in ["", "--client-steps"] {
        let mut args = vec![
            "generate",
            "--bootstrap",
            &boot,
            "--prompt",
            "Once upon a time",
            "--max-tokens",
            "32",
            "--stats",
        ];
        if !how.is_empty() {
            args.push(how);
        }
        let (ok, out, err) = run(args.into_iter().map(String::from).collect());
        assert!(ok, "{err}");
        let stats: Vec<&str> = err
            .lines()
            .filter(|l| l.contains("decode") || l.starts_with("per token"))
            .collect();
        println!("three hops over delayed links {how}: {}", stats.join(" | "));
        texts.push(out);
    }
    assert_eq!(texts[0], texts[1]);
    drop(nodes);
    drop(net);
}
