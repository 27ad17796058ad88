//! Three nodes on loopback, each serving a third of the demo model over QUIC, chained hop to hop:
//! greedy generation equals the whole model in one process, and bad input gets errors while the
//! nodes keep serving.

use std::time::Duration;

use baton_client::generate::generate;
use baton_client::remote::{Hop, RemoteSession, SessionOptions};
use baton_node::net::{self, generate_identity};
use baton_node::{BackendChoice, Engine, ModelFile};
use baton_protocol::wire::{ErrorCode, Hello, Message, Sampling, Step};
use baton_protocol::{Span, WireDtype};
use baton_tests::{cases, demo_model};

mod common;
use common::{client, options, start};

async fn remote_greedy(route: &[Hop], wire: WireDtype, prompt: &[u32], n: usize) -> Vec<u32> {
    let (endpoint, key) = client();
    let mut s = RemoteSession::open(&endpoint, &key, route, &options(wire), None)
        .await
        .unwrap();
    // The head hop feeds every token on to the first hop: the client only follows.
    let mut out = vec![s.step(prompt, (n - 1) as u32).await.unwrap().token];
    while let Some(t) = s.follow().await {
        out.push(t.unwrap().token);
    }
    assert_eq!(out.len(), n, "the head hop fed on every token asked for");
    s.close().await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_generate_exactly_what_one_process_does() {
    let model = ModelFile::open(&demo_model()).unwrap();
    let nodes: Vec<_> = [(0, 10), (10, 20), (20, 30)]
        .iter()
        .map(|&(a, b)| start(&model, Span::new(a, b).unwrap()))
        .collect();
    let route: Vec<Hop> = nodes.iter().map(|n| n.1.clone()).collect();
    let tok = model.tokenizer().unwrap();
    let whole = Engine::load(
        &model,
        Span::full(30),
        BackendChoice::Cpu.into(),
        &mut |_, _| {},
    )
    .unwrap();
    for case in cases().unwrap() {
        let n = case.all_ids.len() - case.prompt_ids.len();
        // f32 on the wire: the very tokens of one process.
        let local = generate(
            &whole,
            &tok,
            &case.prompt_ids,
            n,
            Sampling::default(),
            &mut |_, _| true,
        )
        .unwrap();
        let remote = remote_greedy(&route, WireDtype::F32, &case.prompt_ids, local.ids.len()).await;
        assert_eq!(remote, local.ids, "{}: f32 wire", case.name);
        // f16 on the wire (the default): the reference's greedy continuation.
        let remote = remote_greedy(&route, WireDtype::F16, &case.prompt_ids, n).await;
        assert_eq!(
            remote,
            case.all_ids[case.prompt_ids.len()..],
            "{}: f16 wire",
            case.name
        );
    }
    // Sessions were closed: the nodes hold none.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (server, _) in &nodes {
        assert_eq!(server.open_sessions(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_peers_and_bad_messages_are_refused_and_serving_goes_on() {
    let model = ModelFile::open(&demo_model()).unwrap();
    let (_server, hop) = start(&model, Span::full(30));
    let (endpoint, key) = client();

    // A peer whose key is not the one its record names is refused.
    let impostor = generate_identity().public().to_peer_id();
    assert!(net::connect(&endpoint, &key, hop.addr, impostor)
        .await
        .is_err());

    // A good session, kept open while a second stream misbehaves on the same node.
    let route = [hop.clone()];
    let with_logprobs = SessionOptions {
        logprobs: true,
        ..options(WireDtype::F16)
    };
    let mut good = RemoteSession::open(&endpoint, &key, &route, &with_logprobs, None)
        .await
        .unwrap();
    let prompt = &cases().unwrap()[0].prompt_ids;
    let first = good.step(prompt, 0).await.unwrap().token;

    let conn = net::connect(&endpoint, &key, hop.addr, hop.peer_id)
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    net::write_msg(&mut send, &Message::Hello(Hello::new("tester")))
        .await
        .unwrap();
    assert!(matches!(
        net::read_msg(&mut recv).await.unwrap(),
        Some(Message::Hello(_))
    ));
    let code = |m: Option<Message>| match m {
        Some(Message::Error(e)) => e.code,
        other => panic!("expected an error, got {other:?}"),
    };
    // Garbage in a well-formed frame.
    send.write_all(&[5, 0, 0, 0, 99, 1, 2, 3, 4]).await.unwrap();
    assert_eq!(
        code(net::read_msg(&mut recv).await.unwrap()),
        ErrorCode::Malformed
    );
    // A step for a session that does not exist, and one for the good session from a stream
    // that neither opened it nor feeds it.
    let step = |session, seq| {
        Message::Step(Step {
            session,
            seq,
            tokens: vec![1],
            replay: false,
            more: 0,
        })
    };
    net::write_msg(&mut send, &step(12345, 0)).await.unwrap();
    assert_eq!(
        code(net::read_msg(&mut recv).await.unwrap()),
        ErrorCode::UnknownSession
    );
    net::write_msg(&mut send, &step(good.id, 1)).await.unwrap();
    assert_eq!(
        code(net::read_msg(&mut recv).await.unwrap()),
        ErrorCode::Forbidden
    );
    // An oversized frame is refused before its body is read.
    send.write_all(&(1u32 << 30).to_le_bytes()).await.unwrap();
    assert_eq!(
        code(net::read_msg(&mut recv).await.unwrap()),
        ErrorCode::TooLarge
    );

    // The good session goes on as if nothing happened.
    let second = good.step(&[first], 0).await.unwrap();
    assert_eq!(second.seq, 1);
    let lp = second
        .logprob
        .expect("the session asked for log-probabilities");
    assert!(
        lp <= 0.0 && lp > -5.0,
        "greedy token's log-probability {lp}"
    );
    let want = &cases().unwrap()[0];
    let p = want.prompt_ids.len();
    assert_eq!([first, second.token], want.all_ids[p..p + 2]);
    good.close().await;
}
