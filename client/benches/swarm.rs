//! Decode through a three-node loopback swarm against the same model in one process, one CPU
//! thread, and the network's share of each step.
//!
//!   cargo bench -p baton-client --bench swarm [-- TOKENS ROUNDS]
//!
//! At batch 1 the hops of a pipeline work one after another, so the fair reference is one
//! process with the threads of one node. The overhead per hop is the swarm's step time less the
//! single process's, shared over the three messages of a step (hop 1 → hop 2 → hop 3, whose
//! sampled token goes to hop 1 as the next step and to the client alongside), measured step by
//! step with the compute of each step timed alone.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use baton_client::remote::{Hop, RemoteSession, SessionOptions};
use baton_node::net::{self, generate_identity};
use baton_node::server::{Server, ServerOptions};
use baton_node::{BackendChoice, Engine, Logits, ModelFile, SpanInput};
use baton_protocol::{Span, WireDtype};

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let tokens = args.first().copied().unwrap_or(128);
    let rounds = args.get(1).copied().unwrap_or(3);
    baton_node::set_threads(1).unwrap();
    let model = ModelFile::open(&baton_tests::demo_model()).unwrap();
    let load =
        |span| Engine::load(&model, span, BackendChoice::Cpu.into(), &mut |_, _| {}).unwrap();

    let mut route = Vec::new();
    let mut servers = Vec::new();
    for (a, b) in [(0, 10), (10, 20), (20, 30)] {
        let span = Span::new(a, b).unwrap();
        let options = ServerOptions {
            max_sessions: 4,
            ..ServerOptions::new(format!("bench {span}"), "bench")
        };
        let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let s = Server::bind(Arc::new(load(span)), generate_identity(), listen, options).unwrap();
        tokio::spawn(s.clone().serve());
        route.push(Hop {
            peer_id: s.peer_id(),
            addr: s.local_addr().unwrap(),
            span,
            name: format!("bench {span}"),
            claimed_us: 0,
        });
        servers.push(s);
    }
    let whole = load(Span::full(30));
    let prompt: Vec<u32> = (0..32).map(|i| (i * 7919 + 13) % 49152).collect();
    let key = generate_identity();
    let endpoint = net::endpoint(&key, "127.0.0.1:0".parse().unwrap()).unwrap();
    let options = SessionOptions::new("bench", WireDtype::F16, 1024);

    let (mut local_tps, mut swarm_tps, mut local_steps, mut swarm_steps) =
        (vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        // One process.
        let mut cache = whole.new_cache().unwrap();
        let l = cache
            .run_step(SpanInput::Tokens(&prompt), Logits::Last)
            .unwrap();
        let mut next = baton_node::sampling::argmax(&l);
        let t0 = Instant::now();
        for _ in 0..tokens {
            let s = Instant::now();
            let l = cache
                .forward(SpanInput::Tokens(&[next]), Logits::Last)
                .unwrap();
            local_steps.push(s.elapsed().as_secs_f64());
            next = baton_node::sampling::argmax(&l);
        }
        local_tps.push(tokens as f64 / t0.elapsed().as_secs_f64());

        // The swarm.
        let mut session = RemoteSession::open(&endpoint, &key, &route, &options, None)
            .await
            .unwrap();
        // The head hop feeds each token to the first hop; the client follows.
        let mut next = session.step(&prompt, tokens as u32).await.unwrap().token;
        let t0 = Instant::now();
        for i in 0..tokens {
            let s = Instant::now();
            next = match session.follow().await {
                Some(t) => t.unwrap().token,
                None => {
                    let more = (tokens - i - 1) as u32;
                    session.step(&[next], more).await.unwrap().token
                }
            };
            swarm_steps.push(s.elapsed().as_secs_f64());
        }
        swarm_tps.push(tokens as f64 / t0.elapsed().as_secs_f64());
        session.close().await;
    }
    let med = |v: &mut Vec<f64>| percentile(v, 0.5);
    let (lt, st) = (med(&mut local_tps), med(&mut swarm_tps));
    let (l50, s50) = (
        percentile(&mut local_steps, 0.5),
        percentile(&mut swarm_steps, 0.5),
    );
    let (l99, s99) = (
        percentile(&mut local_steps, 0.99),
        percentile(&mut swarm_steps, 0.99),
    );
    println!("decode, 1 thread per node, {tokens} tokens x {rounds} rounds, f16 on the wire");
    println!(
        "  one process      {lt:8.1} tok/s   step p50 {:6.3} ms  p99 {:6.3} ms",
        l50 * 1e3,
        l99 * 1e3
    );
    println!(
        "  3-node swarm     {st:8.1} tok/s   step p50 {:6.3} ms  p99 {:6.3} ms",
        s50 * 1e3,
        s99 * 1e3
    );
    println!("  ratio            {:8.3}", st / lt);
    println!(
        "  overhead per hop (3 messages a step): p50 {:.3} ms, p99 {:.3} ms",
        (s50 - l50) * 1e3 / 3.0,
        (s99 - l99) * 1e3 / 3.0
    );
    for s in servers {
        s.shutdown();
    }
}
