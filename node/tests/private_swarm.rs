//! A private swarm keeps outsiders out on both planes: a peer without the swarm key (or with
//! another) finds nothing on the DHT and is refused on the data plane, and `--allow-peer`
//! refuses everyone not listed.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_node::dht::{now_unix, sign, Dht, RECORD_TTL};
use baton_node::net::{self, generate_identity, Access, Greeting, NetError};
use baton_node::server::{Server, ServerOptions};
use baton_node::{BackendChoice, Engine, ModelFile};
use baton_protocol::record::NodeRecord;
use baton_protocol::wire::ErrorCode;
use baton_protocol::{Span, PROTOCOL_VERSION};
use baton_tests::demo_model;

const KEY: [u8; 32] = [7; 32];

fn access(key: Option<[u8; 32]>) -> Access {
    Access {
        swarm_key: key,
        allow: Vec::new(),
    }
}

async fn found_by(boot: &[libp2p::Multiaddr], key: Option<[u8; 32]>, wait: Duration) -> usize {
    let listen = "/ip4/127.0.0.1/tcp/0".parse().unwrap();
    let client = Dht::start(
        generate_identity(),
        listen,
        boot.to_vec(),
        false,
        &access(key),
    )
    .await
    .unwrap();
    let start = Instant::now();
    loop {
        let n = client.lookup(Some("model-p")).await.unwrap().len();
        if n > 0 || start.elapsed() > wait {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dht_of_a_private_swarm_is_closed_to_outsiders() {
    let key = generate_identity();
    let listen = "/ip4/127.0.0.1/tcp/0".parse().unwrap();
    let node = Dht::start(key.clone(), listen, Vec::new(), true, &access(Some(KEY)))
        .await
        .unwrap();
    let boot = node.listen_addrs().await.unwrap();
    let record = NodeRecord {
        peer_id: node.peer_id.to_string(),
        addrs: vec!["127.0.0.1:1".into()],
        model_id: "model-p".into(),
        model_name: "private".into(),
        span: Span::full(30),
        blocks: 30,
        backend: "cpu".into(),
        device: "test".into(),
        memory_total: 1,
        memory_free: 1,
        tokens_per_s: 1.0,
        kv_tokens_free: 1,
        experts: None,
        protocol_version: PROTOCOL_VERSION,
        name: "private".into(),
        expires_unix: now_unix() + RECORD_TTL.as_secs(),
    };
    node.announce(sign(&key, &record).unwrap(), "model-p")
        .await
        .unwrap();
    let wait = Duration::from_secs(5);
    assert_eq!(found_by(&boot, Some(KEY), Duration::from_secs(20)).await, 1);
    assert_eq!(found_by(&boot, None, wait).await, 0);
    assert_eq!(found_by(&boot, Some([8; 32]), wait).await, 0);
}

/// Connects to `peer` as `me` and exchanges hellos, proving `key` if given.
async fn hello_as(
    me: libp2p::identity::Keypair,
    addr: SocketAddr,
    peer: libp2p::PeerId,
    key: Option<[u8; 32]>,
) -> Result<(), NetError> {
    let endpoint = net::endpoint(&me, "127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = net::connect(&endpoint, &me, addr, peer).await?;
    let greeting = Greeting {
        name: "tester".into(),
        me: me.public().to_peer_id(),
        swarm_key: key,
    };
    net::open_stream(&conn, &peer, &greeting, Duration::from_secs(5))
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_plane_refuses_peers_without_the_key_or_not_allowed() {
    let model = ModelFile::open(&demo_model()).unwrap();
    let engine = Engine::load(
        &model,
        Span::new(0, 1).unwrap(),
        BackendChoice::Cpu.into(),
        &mut |_, _| {},
    )
    .unwrap();
    let engine = Arc::new(engine);
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let server = Server::bind(
        engine.clone(),
        generate_identity(),
        listen,
        ServerOptions {
            swarm_key: Some(KEY),
            ..ServerOptions::new("private", "m")
        },
    )
    .unwrap();
    tokio::spawn(server.clone().serve());
    let (addr, peer) = (server.local_addr().unwrap(), server.peer_id());

    let hello = |key| hello_as(generate_identity(), addr, peer, key);
    hello(Some(KEY)).await.unwrap();
    for key in [None, Some([8; 32])] {
        match hello(key).await {
            Err(NetError::Remote(e)) => assert_eq!(e.code, ErrorCode::Forbidden),
            other => panic!("an outsider was let in: {other:?}"),
        }
    }

    // A node that serves only listed peers drops everyone else's connection.
    let friend = generate_identity();
    let picky = Server::bind(
        engine,
        generate_identity(),
        listen,
        ServerOptions {
            allow: Some(HashSet::from([friend.public().to_peer_id()])),
            ..ServerOptions::new("picky", "m")
        },
    )
    .unwrap();
    tokio::spawn(picky.clone().serve());
    let (addr, peer) = (picky.local_addr().unwrap(), picky.peer_id());
    let try_as = |me| hello_as(me, addr, peer, None);
    try_as(friend).await.unwrap();
    assert!(try_as(generate_identity()).await.is_err());
}
