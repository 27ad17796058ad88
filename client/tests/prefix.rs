//! Prefix reuse across a route of three nodes on loopback: a prompt sent again, and one that
//! begins like an earlier one, start from what every hop kept and generate exactly the tokens
//! they generate from nothing; a hop that dies afterwards is rebuilt from what the hop before it
//! kept; another client reuses nothing.

use std::sync::Arc;

use baton_client::generate::generate;
use baton_client::remote::{FindHop, Hop, RemoteSession, SessionOptions};
use baton_node::server::Server;
use baton_node::{BackendChoice, Engine, ModelFile};
use baton_protocol::wire::{Sampling, PREFIX_BLOCK};
use baton_protocol::{Span, WireDtype};
use baton_tests::demo_model;

mod common;
use common::{client, start};

const SYSTEM: &str =
    "You are a careful assistant for a small public library. You answer questions \
    about books, opening hours and events in plain words, you never invent a title that the \
    library does not hold, and when you do not know an answer you say so and suggest asking \
    the staff at the front desk. Children's books are on the ground floor, novels and poetry \
    on the first, and reference works, maps and local newspapers on the second.\n\n";

fn options(prompt: &[u32]) -> SessionOptions {
    SessionOptions {
        prompt: prompt.to_vec(),
        ..common::options(WireDtype::F32)
    }
}

/// Greedy tokens, one client step each: the rest of the prompt, then each token.
async fn greedy(s: &mut RemoteSession, rest: &[u32], n: usize) -> Vec<u32> {
    let mut out = vec![s.step(rest, 0).await.unwrap().token];
    while out.len() < n {
        out.push(s.step(&[*out.last().unwrap()], 0).await.unwrap().token);
    }
    out
}

/// The prefix-cache hits a node's metrics report, in tokens.
fn hits(server: &Server) -> u64 {
    let mut out = String::new();
    Server::write_metrics(&mut out, &[server]);
    let line = out
        .lines()
        .find(|l| l.starts_with("baton:prefix_cache_hits_total{"))
        .expect("the metric is written");
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shared_prompt_prefix_is_reused_on_every_hop_and_changes_no_token() {
    let model = ModelFile::open(&demo_model()).unwrap();
    let nodes: Vec<_> = [(0, 10), (10, 20), (20, 30)]
        .iter()
        .map(|&(a, b)| start(&model, Span::new(a, b).unwrap()))
        .collect();
    let (_spare, spare_hop) = start(&model, Span::new(10, 20).unwrap());
    let route: Vec<Hop> = nodes.iter().map(|n| n.1.clone()).collect();
    let whole = Engine::load(
        &model,
        Span::full(30),
        BackendChoice::Cpu.into(),
        &mut |_, _| {},
    )
    .unwrap();
    let tok = model.tokenizer().unwrap();
    let a = tok
        .encode(&format!(
            "{SYSTEM}Question: when does the library open on Sunday?\nAnswer:"
        ))
        .unwrap();
    let b = tok
        .encode(&format!(
            "{SYSTEM}Question: do you lend board games?\nAnswer:"
        ))
        .unwrap();
    let shared = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let blocks = |len: usize| (len - 1) / PREFIX_BLOCK;
    let reusable = (shared / PREFIX_BLOCK)
        .min(blocks(a.len()))
        .min(blocks(b.len()))
        * PREFIX_BLOCK;
    assert!(reusable >= 2 * PREFIX_BLOCK, "{shared} tokens shared");
    let n = 10;
    let want = generate(&whole, &tok, &b, n, Sampling::default(), &mut |_, _| true).unwrap();

    // The first session computes everything; every hop keeps its prompt's blocks.
    let (endpoint, key) = client();
    let mut s = RemoteSession::open(&endpoint, &key, &route, &options(&a), None)
        .await
        .unwrap();
    assert!(s.fed().is_empty());
    let first = greedy(&mut s, &a, 3).await;
    s.close().await;
    assert!(nodes.iter().all(|(server, _)| hits(server) == 0));

    // The same prompt again: all of it but its last token is reused, with the same tokens.
    let mut s = RemoteSession::open(&endpoint, &key, &route, &options(&a), None)
        .await
        .unwrap();
    assert_eq!(s.fed(), &a[..a.len() - 1]);
    assert_eq!(greedy(&mut s, &a[a.len() - 1..], 3).await, first);
    s.close().await;
    let again = (a.len() - 1) as u64;

    // The second starts from them on every hop, and a spare may replace a hop.
    let spare = spare_hop.clone();
    let find: FindHop = Arc::new(move |span, _| {
        let spare = spare.clone();
        Box::pin(async move { (span == spare.span).then_some(spare) })
    });
    let mut s = RemoteSession::open(&endpoint, &key, &route, &options(&b), Some(find))
        .await
        .unwrap();
    assert_eq!(s.fed(), &b[..reusable]);
    for (server, _) in &nodes {
        assert_eq!(hits(server), again + reusable as u64, "{}", server.span());
    }
    let mut got = greedy(&mut s, &b[reusable..], 4).await;
    // The middle hop dies: the spare is rebuilt from what the first hop sent, the reused
    // positions included, and the generation goes on with the same tokens.
    nodes[1].0.shutdown();
    while got.len() < n {
        got.push(s.step(&[*got.last().unwrap()], 0).await.unwrap().token);
    }
    assert_eq!(
        s.route()[1].peer_id,
        spare_hop.peer_id,
        "the hop was replaced"
    );
    assert_eq!(got, want.ids, "reused prefix, then a replaced hop");
    s.close().await;

    // Another client reuses nothing of this one's prompts.
    let (endpoint, key) = client();
    let live: Vec<Hop> = vec![route[0].clone(), spare_hop.clone(), route[2].clone()];
    let mut s = RemoteSession::open(&endpoint, &key, &live, &options(&b), None)
        .await
        .unwrap();
    assert!(s.fed().is_empty());
    assert_eq!(greedy(&mut s, &b, n).await, want.ids, "from nothing");
    s.close().await;
}
