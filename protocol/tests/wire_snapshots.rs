//! The bytes of one message of every kind, pinned: a reordered field, a changed kind number or
//! a new bincode that encodes differently fails here before it reaches a peer. A deliberate
//! change of the wire goes with a new `PROTOCOL_VERSION` and new snapshots.

use baton_protocol::experts::{ExpertCall, ExpertOut, ExpertRows};
use baton_protocol::wire::*;
use baton_protocol::{HiddenStates, Span, WireDtype};

fn hop() -> NextHop {
    NextHop {
        peer_id: "12D3KooW".into(),
        addr: "10.0.0.2:7000".into(),
        span: Span { start: 3, end: 7 },
    }
}

/// One message of each kind, in kind order, with every field set.
fn examples() -> Vec<Message> {
    let sampling = Sampling {
        temperature: 0.5,
        top_k: 40,
        top_p: 0.9,
        seed: 258,
    };
    vec![
        Message::Hello(Hello {
            version: 7,
            name: "n1".into(),
            proof: Some([0xab; 32]),
        }),
        Message::OpenSession(OpenSession {
            session: 0x0102_0304_0506_0708,
            model_id: "m".into(),
            span: Span { start: 0, end: 3 },
            next: Some(hop()),
            sampling,
            wire_dtype: WireDtype::F16,
            max_tokens: 300,
            logprobs: true,
            top_logprobs: 5,
            logit_bias: vec![(7, -100.0)],
            ring: None,
            stop_ids: vec![2, 70000],
            tap: true,
            feeders: vec!["12D3KooX".into()],
            prefix: vec![[0x5a; 16]],
            prefix_tail: 5,
        }),
        Message::SessionOpened(SessionOpened {
            session: 9,
            reused: 64,
        }),
        Message::Step(Step {
            session: 9,
            seq: 1,
            tokens: vec![1, 128, 65536],
            replay: false,
            more: 31,
        }),
        Message::Forward(Forward {
            session: 9,
            seq: 2,
            hidden: HiddenStates::encode(&[1.0, -2.0], 1, 2, WireDtype::F16),
            hop_us: vec![250, 1000],
            replay: true,
            more: 0,
        }),
        Message::Token(TokenOut {
            session: 9,
            seq: 3,
            token: 42,
            logprob: Some(-0.25),
            top: vec![(42, -0.25), (3, -2.0)],
            hop_us: vec![7],
            fed_on: true,
        }),
        Message::Error(ErrorMsg {
            session: 9,
            seq: 4,
            code: ErrorCode::Forbidden,
            message: "no".into(),
        }),
        Message::Close(Close { session: 9 }),
        Message::GetModelInfo(GetModelInfo {
            model_id: "m".into(),
        }),
        Message::ModelInfo(ModelInfo {
            model_id: "m".into(),
            content_hash: "h".into(),
            tokenizer: TokenizerSpec {
                tokenizer_json: "{}".into(),
                chat_template: Some("t".into()),
                bos: None,
                eos: Some("e".into()),
                add_bos: Some(1),
                stop_ids: vec![2],
            },
            blocks: 30,
            vocab: 49152,
            context: 8192,
        }),
        Message::Truncate(Truncate { session: 9, seq: 5 }),
        Message::Redirect(Redirect {
            session: 9,
            next: hop(),
        }),
        Message::Ack(Ack { session: 9, seq: 6 }),
        Message::Leaving(Leaving { session: 9 }),
        Message::Admit(Admit {
            session: 9,
            peer_id: "12D3KooY".into(),
        }),
        Message::ExpertCall(ExpertCall {
            model_id: "m".into(),
            block: 3,
            experts: vec![ExpertRows {
                expert: 200,
                decode: 1,
                rows: HiddenStates::encode(&[1.0, -2.0], 1, 2, WireDtype::F32),
            }],
        }),
        Message::ExpertOut(ExpertOut {
            outputs: vec![HiddenStates::encode(&[0.5, 4.0], 1, 2, WireDtype::F16)],
        }),
    ]
}

const SNAPSHOTS: [&str; 17] = [
    "0107026e3101abababababababababababababababababababababababababababababababab",
    "02fd0807060504030201016d00030108313244334b6f6f570d31302e302e302e323a3730303003070000003f286666663ffb020101fb2c01010501070000c8c2000202fc70110100010108313244334b6f6f58015a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a05",
    "030940",
    "040901030180fc00000100001f",
    "05090201020104003c00c002fafbe8030100",
    "0609032a01000080be022a000080be03000000c0010701",
    "0709040b026e6f",
    "0809",
    "09016d",
    "0a016d0168027b7d01017400010165010101021efb00c0fb0020",
    "0b0905",
    "0c0908313244334b6f6f570d31302e302e302e323a373030300307",
    "0d0906",
    "0e09",
    "0f0908313244334b6f6f59",
    "10016d0301c801010200080000803f000000c0",
    "11010102010400380044",
];

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn every_kind_encodes_to_its_snapshot() {
    let examples = examples();
    assert_eq!(examples.len(), Kind::ALL.len());
    for ((m, kind), want) in examples.iter().zip(Kind::ALL).zip(SNAPSHOTS) {
        assert_eq!(m.kind(), kind);
        let body = m.encode_body();
        assert_eq!(hex(&body), want, "{}", kind.name());
        assert_eq!(Message::decode_body(&body).as_ref(), Ok(m));
    }
}

#[test]
fn kind_numbers_are_fixed_and_unknown_ones_refused() {
    let numbers: Vec<u8> = Kind::ALL.iter().map(|k| *k as u8).collect();
    assert_eq!(numbers, (1..=17).collect::<Vec<u8>>());
    for k in Kind::ALL {
        assert_eq!(Kind::from_wire(k as u8), Some(k));
    }
    for n in [0u8, 18, 200, 255] {
        assert_eq!(Kind::from_wire(n), None);
        // An unknown kind is an error, never another message, whatever follows it.
        let body = [n, 9, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(Message::decode_body(&body), Err(WireError::UnknownKind(n)));
    }
}
