//! The control plane on loopback: nodes that join through one another announce signed records,
//! a client finds them all, forged records are ignored, and a node that leaves drops out within
//! the record lifetime.

use std::time::{Duration, Instant};

use baton_node::dht::{now_unix, sign, verify, Dht, RECORD_TTL, REPUBLISH};
use baton_node::net::generate_identity;
use baton_protocol::record::{NodeRecord, SignedRecord};
use baton_protocol::{Span, PROTOCOL_VERSION};

fn record(peer: &str, span: Span) -> NodeRecord {
    NodeRecord {
        peer_id: peer.into(),
        addrs: vec!["127.0.0.1:1".into()],
        model_id: "model-a".into(),
        model_name: "demo".into(),
        span,
        blocks: 30,
        backend: "cpu".into(),
        device: "test".into(),
        memory_total: 1 << 30,
        memory_free: 1 << 29,
        tokens_per_s: 100.0,
        kv_tokens_free: 10_000,
        experts: None,
        protocol_version: PROTOCOL_VERSION,
        name: format!("node {span}"),
        expires_unix: now_unix() + RECORD_TTL.as_secs(),
    }
}

#[test]
fn records_are_checked() {
    let key = generate_identity();
    let me = key.public().to_peer_id().to_string();
    let signed = sign(&key, &record(&me, Span::full(30))).unwrap();
    let bytes = signed.encode().unwrap();
    assert!(verify(&bytes, now_unix()).is_some());
    // Expired.
    assert!(verify(&bytes, now_unix() + 3600).is_none());
    // Claiming another peer id.
    let other = generate_identity().public().to_peer_id().to_string();
    let forged = sign(&key, &record(&other, Span::full(30))).unwrap();
    assert!(verify(&forged.encode().unwrap(), now_unix()).is_none());
    // A record changed after signing.
    let mut tampered = signed.clone();
    let mut r = NodeRecord::decode(&tampered.record).unwrap();
    r.span = Span::new(0, 1).unwrap();
    tampered.record = r.encode().unwrap();
    assert!(verify(&tampered.encode().unwrap(), now_unix()).is_none());
    // Garbage.
    assert!(verify(&[1, 2, 3], now_unix()).is_none());
    let junk = SignedRecord {
        record: vec![0; 10],
        public_key: vec![1; 36],
        signature: vec![],
    };
    assert!(verify(&junk.encode().unwrap(), now_unix()).is_none());
}

async fn lookup_until(
    client: &Dht,
    model: Option<&str>,
    want: usize,
    limit: Duration,
) -> Vec<NodeRecord> {
    let start = Instant::now();
    loop {
        let found = client.lookup(model).await.unwrap();
        if found.len() == want || start.elapsed() > limit {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_are_found_and_leavers_drop_out() {
    let listen = || "/ip4/127.0.0.1/tcp/0".parse().unwrap();
    let mut nodes = Vec::new();
    let mut refreshers = Vec::new();
    let mut boot = Vec::new();
    for span in [(0, 10), (10, 20), (20, 30)] {
        let key = generate_identity();
        let dht = Dht::start(
            key.clone(),
            listen(),
            boot.clone(),
            true,
            &Default::default(),
        )
        .await
        .unwrap();
        if boot.is_empty() {
            boot = dht.listen_addrs().await.unwrap();
        }
        let span = Span::new(span.0, span.1).unwrap();
        // Announce and refresh the record as a running node does, until the node leaves.
        let (d, peer) = (dht.clone(), dht.peer_id.to_string());
        refreshers.push(tokio::spawn(async move {
            loop {
                let signed = sign(&key, &record(&peer, span)).unwrap();
                if d.announce(signed, "model-a").await.is_err() {
                    return;
                }
                tokio::time::sleep(REPUBLISH).await;
            }
        }));
        nodes.push(dht);
    }
    let client = Dht::start(
        generate_identity(),
        listen(),
        boot.clone(),
        false,
        &Default::default(),
    )
    .await
    .unwrap();
    let found = lookup_until(&client, Some("model-a"), 3, Duration::from_secs(20)).await;
    let spans: Vec<Span> = found.iter().map(|r| r.span).collect();
    assert_eq!(
        spans,
        [
            Span::new(0, 10).unwrap(),
            Span::new(10, 20).unwrap(),
            Span::new(20, 30).unwrap()
        ]
    );
    assert_eq!(
        lookup_until(&client, None, 3, Duration::from_secs(10))
            .await
            .len(),
        3
    );
    assert!(client.lookup(Some("model-b")).await.unwrap().is_empty());

    // The last node leaves; it is gone from the client's view within one record lifetime.
    refreshers.pop().unwrap().abort();
    let left = nodes.pop().unwrap().peer_id.to_string();
    let start = Instant::now();
    let remaining = lookup_until(
        &client,
        Some("model-a"),
        2,
        RECORD_TTL + Duration::from_secs(10),
    )
    .await;
    assert!(remaining.iter().all(|r| r.peer_id != left), "{remaining:?}");
    assert_eq!(remaining.len(), 2);
    eprintln!("a departed node dropped out after {:?}", start.elapsed());
}
