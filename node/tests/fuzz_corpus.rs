//! Replays the fuzzers' corpora (`fuzz/corpus/<target>/`) and the inputs that once crashed a
//! target (`fuzz/regressions/<target>/`) through the same entry points `cargo fuzz` runs, so
//! that every input ever found stays handled without a panic.
//!
//! `cargo test -p baton-node --test fuzz_corpus -- --ignored write_seeds` writes the hand-made
//! seeds the corpora started from.

use std::path::PathBuf;

use baton_node::fuzzing::TARGETS;
use baton_node::gguf::write::gguf_bytes;
use baton_protocol::wire::{
    ErrorCode, ErrorMsg, Forward, Hello, Message, NextHop, OpenSession, Sampling, Step, TokenOut,
};
use baton_protocol::{HiddenStates, Span, WireDtype};

mod tiny;

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

#[test]
fn every_corpus_input_is_handled() {
    for (name, target) in TARGETS {
        let mut inputs = 0;
        for dir in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(fuzz_dir().join(dir).join(name)) else {
                continue;
            };
            for entry in entries.flatten() {
                let data = std::fs::read(entry.path()).expect("a corpus file");
                target(&data);
                inputs += 1;
            }
        }
        assert!(inputs > 0, "no corpus for fuzz target {name}");
    }
}

fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let span = Span { start: 0, end: 2 };
    let messages = [
        Message::Hello(Hello::new("seed")),
        Message::OpenSession(OpenSession {
            session: 7,
            model_id: "m".into(),
            span,
            next: Some(NextHop {
                peer_id: "12D3KooW".into(),
                addr: "127.0.0.1:1".into(),
                span,
            }),
            sampling: Sampling::default(),
            wire_dtype: WireDtype::F16,
            max_tokens: 64,
            logprobs: true,
            top_logprobs: 0,
            logit_bias: Vec::new(),
            ring: None,
            stop_ids: Vec::new(),
            tap: false,
            feeders: Vec::new(),
            prefix: Vec::new(),
            prefix_tail: 0,
        }),
        Message::Step(Step {
            session: 7,
            seq: 0,
            tokens: vec![1, 2, 3],
            replay: false,
            more: 0,
        }),
        Message::Forward(Forward {
            session: 7,
            seq: 1,
            hidden: HiddenStates::encode(&[0.5; 8], 2, 4, WireDtype::Bf16),
            hop_us: vec![10, 20],
            replay: true,
            more: 0,
        }),
        Message::Token(TokenOut {
            session: 7,
            seq: 1,
            token: 5,
            logprob: Some(-0.5),
            top: Vec::new(),
            hop_us: vec![1],
            fed_on: false,
        }),
        Message::Error(ErrorMsg {
            session: 7,
            seq: 1,
            code: ErrorCode::Busy,
            message: "busy".into(),
        }),
    ];
    for (i, m) in messages.iter().enumerate() {
        out.push(("wire", format!("seed-{i}"), m.encode_body()));
    }
    let gguf = gguf_bytes(
        &tiny::tiny_meta("llama"),
        &tiny::tiny_tensors(baton_shaders::DType::Q4_1),
    );
    out.push(("gguf", "seed-tiny".into(), gguf));
    let mut st = Vec::new();
    let header =
        br#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"__metadata__":{"k":"v"}}"#;
    st.extend_from_slice(&(header.len() as u64).to_le_bytes());
    st.extend_from_slice(header);
    st.extend_from_slice(&[0u8; 16]);
    out.push(("safetensors", "seed-2x2".into(), st));
    let key = baton_node::net::generate_identity();
    let record = baton_protocol::record::NodeRecord {
        peer_id: key.public().to_peer_id().to_string(),
        addrs: vec!["127.0.0.1:4000".into()],
        model_id: "m".into(),
        model_name: "demo".into(),
        span,
        blocks: 2,
        backend: "cpu".into(),
        device: "cpu".into(),
        memory_total: 1 << 30,
        memory_free: 1 << 29,
        tokens_per_s: 100.0,
        kv_tokens_free: 1000,
        experts: None,
        protocol_version: baton_protocol::PROTOCOL_VERSION,
        name: "seed".into(),
        expires_unix: u64::MAX,
    };
    let signed = baton_node::dht::sign(&key, &record).expect("signs");
    out.push((
        "record",
        "seed-signed".into(),
        signed.encode().expect("encodes"),
    ));
    out.push((
        "record",
        "seed-inner".into(),
        record.encode().expect("encodes"),
    ));
    out
}

#[test]
#[ignore = "writes the corpora's seeds; run by hand"]
fn write_seeds() {
    for (target, name, data) in seeds() {
        let dir = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), data).unwrap();
    }
}
