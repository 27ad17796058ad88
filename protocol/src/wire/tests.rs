use super::*;
use crate::experts::ExpertRows;
use proptest::prelude::*;

fn dtype() -> impl Strategy<Value = WireDtype> {
    prop_oneof![
        Just(WireDtype::F32),
        Just(WireDtype::F16),
        Just(WireDtype::Bf16)
    ]
}

fn span() -> impl Strategy<Value = Span> {
    (0u32..100, 1u32..100).prop_map(|(a, n)| Span {
        start: a,
        end: a + n,
    })
}

fn message() -> impl Strategy<Value = Message> {
    let text = "[a-zA-Z0-9 .:/]{0,40}";
    let sampling = (0f32..2.0, 0u32..100, 0f32..1.0, any::<u64>()).prop_map(
        |(temperature, top_k, top_p, seed)| Sampling {
            temperature,
            top_k,
            top_p,
            seed,
        },
    );
    let next = || {
        proptest::option::of(
            (text, text, span()).prop_map(|(peer_id, addr, span)| NextHop {
                peer_id,
                addr,
                span,
            }),
        )
    };
    prop_oneof![
        (any::<u32>(), text, proptest::option::of(any::<[u8; 32]>())).prop_map(
            |(version, name, proof)| Message::Hello(Hello {
                version,
                name,
                proof
            })
        ),
        (
            any::<u64>(),
            text,
            span(),
            next(),
            sampling,
            dtype(),
            any::<u32>(),
            any::<bool>(),
            next(),
            proptest::collection::vec(any::<u32>(), 0..4),
            any::<bool>(),
            (
                proptest::collection::vec(text, 0..3),
                (
                    0u8..=20,
                    proptest::collection::vec((any::<u32>(), -100f32..100.0), 0..4),
                    proptest::collection::vec(any::<[u8; 16]>(), 0..3),
                    0u8..16
                )
            )
        )
            .prop_map(
                |(
                    session,
                    model_id,
                    span,
                    next,
                    sampling,
                    wire_dtype,
                    max_tokens,
                    logprobs,
                    ring,
                    stop_ids,
                    tap,
                    (feeders, (top_logprobs, logit_bias, prefix, prefix_tail)),
                )| {
                    Message::OpenSession(OpenSession {
                        session,
                        model_id,
                        span,
                        next,
                        sampling,
                        wire_dtype,
                        max_tokens,
                        logprobs,
                        top_logprobs,
                        logit_bias,
                        ring,
                        stop_ids,
                        tap,
                        feeders,
                        prefix,
                        prefix_tail,
                    })
                }
            ),
        (any::<u64>(), any::<u32>()).prop_map(|(session, reused)| Message::SessionOpened(
            SessionOpened { session, reused }
        )),
        (
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(any::<u32>(), 0..50),
            any::<bool>(),
            any::<u32>()
        )
            .prop_map(|(session, seq, tokens, replay, more)| Message::Step(Step {
                session,
                seq,
                tokens,
                replay,
                more
            })),
        (
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(-10f32..10.0, 0..64),
            dtype(),
            proptest::collection::vec(any::<u32>(), 0..8),
            any::<bool>(),
            any::<u32>()
        )
            .prop_map(|(session, seq, v, d, hop_us, replay, more)| {
                Message::Forward(Forward {
                    session,
                    seq,
                    hidden: HiddenStates::encode(&v, 1, v.len() as u32, d),
                    hop_us,
                    replay,
                    more,
                })
            }),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            proptest::option::of(-20f32..0.0),
            proptest::collection::vec((any::<u32>(), -20f32..0.0), 0..20),
            proptest::collection::vec(any::<u32>(), 0..8),
            any::<bool>()
        )
            .prop_map(|(session, seq, token, logprob, top, hop_us, fed_on)| {
                Message::Token(TokenOut {
                    session,
                    seq,
                    token,
                    logprob,
                    top,
                    hop_us,
                    fed_on,
                })
            }),
        (any::<u64>(), any::<u64>(), 1u16..=11, text).prop_map(|(session, seq, c, message)| {
            Message::Error(ErrorMsg {
                session,
                seq,
                code: ErrorCode::try_from(c).unwrap(),
                message,
            })
        }),
        any::<u64>().prop_map(|session| Message::Close(Close { session })),
        text.prop_map(|model_id| Message::GetModelInfo(GetModelInfo { model_id })),
        (
            text,
            text,
            proptest::option::of(text),
            proptest::collection::vec(any::<u32>(), 0..4),
            any::<u32>()
        )
            .prop_map(|(model_id, json, template, stop_ids, blocks)| {
                Message::ModelInfo(ModelInfo {
                    model_id,
                    content_hash: "ab".into(),
                    tokenizer: TokenizerSpec {
                        tokenizer_json: json,
                        chat_template: template,
                        bos: None,
                        eos: Some("</s>".into()),
                        add_bos: None,
                        stop_ids,
                    },
                    blocks,
                    vocab: 7,
                    context: 9,
                })
            }),
        (any::<u64>(), any::<u64>())
            .prop_map(|(session, seq)| Message::Truncate(Truncate { session, seq })),
        (any::<u64>(), text, text, span()).prop_map(|(session, peer_id, addr, span)| {
            Message::Redirect(Redirect {
                session,
                next: NextHop {
                    peer_id,
                    addr,
                    span,
                },
            })
        }),
        (any::<u64>(), any::<u64>()).prop_map(|(session, seq)| Message::Ack(Ack { session, seq })),
        any::<u64>().prop_map(|session| Message::Leaving(Leaving { session })),
        (any::<u64>(), text)
            .prop_map(|(session, peer_id)| Message::Admit(Admit { session, peer_id })),
        (
            text,
            any::<u32>(),
            proptest::collection::vec((any::<u32>(), 0u32..4, 1u32..4, dtype()), 0..4)
        )
            .prop_map(|(model_id, block, experts)| {
                let experts = experts
                    .into_iter()
                    .map(|(expert, decode, n, d)| {
                        let v: Vec<f32> = (0..n * 3).map(|i| i as f32 * 0.5).collect();
                        ExpertRows {
                            expert,
                            decode,
                            rows: HiddenStates::encode(&v, n, 3, d),
                        }
                    })
                    .collect();
                Message::ExpertCall(ExpertCall {
                    model_id,
                    block,
                    experts,
                })
            }),
        (proptest::collection::vec(-4f32..4.0, 0..12), dtype()).prop_map(|(v, d)| {
            let outputs = vec![HiddenStates::encode(&v, 1, v.len() as u32, d); 2];
            Message::ExpertOut(ExpertOut { outputs })
        }),
    ]
}

proptest! {
    #[test]
    fn every_message_round_trips(m in message()) {
        let frame = m.encode_frame().unwrap();
        let n = frame_len([frame[0], frame[1], frame[2], frame[3]]).unwrap();
        prop_assert_eq!(n, frame.len() - 4);
        prop_assert_eq!(Message::decode_body(&frame[4..]).unwrap(), m);
    }

    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = Message::decode_body(&body);
    }

    #[test]
    fn truncated_or_extended_bodies_are_refused(m in message(), cut in 1usize..16) {
        let body = m.encode_body();
        if body.len() > cut {
            prop_assert!(Message::decode_body(&body[..body.len() - cut]).is_err());
        }
        let mut longer = body.clone();
        longer.push(0);
        prop_assert!(Message::decode_body(&longer).is_err());
    }
}

#[test]
fn limits_hold() {
    assert_eq!(
        frame_len((MAX_FRAME_BYTES as u32 + 1).to_le_bytes()),
        Err(WireError::TooLarge(MAX_FRAME_BYTES + 1))
    );
    assert_eq!(frame_len([0; 4]), Err(WireError::Empty));
    assert_eq!(Message::decode_body(&[99]), Err(WireError::UnknownKind(99)));
    // A step claiming 2^40 tokens in a few bytes is refused without allocating them.
    let mut body = vec![4u8, 1, 1];
    body.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 1, 0, 0]);
    assert!(matches!(
        Message::decode_body(&body),
        Err(WireError::Malformed { .. })
    ));
    let long = Message::Hello(Hello {
        version: 1,
        name: "x".repeat(MAX_TEXT + 1),
        proof: None,
    });
    let body = long.encode_body();
    assert!(matches!(
        Message::decode_body(&body),
        Err(WireError::TextTooLong { .. })
    ));
    assert_eq!(
        ErrorCode::try_from(0),
        Err("unknown error code 0".to_string())
    );
}

#[test]
fn counts_of_log_probabilities_and_biases_are_bounded() {
    let token = |n: usize| {
        Message::Token(TokenOut {
            session: 1,
            seq: 0,
            token: 3,
            logprob: Some(-1.0),
            top: vec![(3, -1.0); n],
            hop_us: Vec::new(),
            fed_on: false,
        })
    };
    let ok = token(MAX_TOP_LOGPROBS);
    assert_eq!(Message::decode_body(&ok.encode_body()), Ok(ok));
    assert_eq!(
        Message::decode_body(&token(MAX_TOP_LOGPROBS + 1).encode_body()),
        Err(WireError::TooMany {
            field: "top",
            len: MAX_TOP_LOGPROBS + 1,
            max: MAX_TOP_LOGPROBS
        })
    );
    let open = |top_logprobs: u8, bias: usize, prefix: usize| {
        Message::OpenSession(OpenSession {
            session: 1,
            model_id: "m".into(),
            span: Span { start: 0, end: 1 },
            next: None,
            sampling: Sampling::default(),
            wire_dtype: WireDtype::F32,
            max_tokens: 8,
            logprobs: true,
            top_logprobs,
            logit_bias: vec![(1, 1.0); bias],
            ring: None,
            stop_ids: Vec::new(),
            tap: false,
            feeders: Vec::new(),
            prefix: vec![[7; 16]; prefix],
            prefix_tail: 0,
        })
    };
    let decode = |m: Message| Message::decode_body(&m.encode_body());
    assert!(decode(open(
        MAX_TOP_LOGPROBS as u8,
        MAX_LOGIT_BIAS,
        MAX_PREFIX_BLOCKS
    ))
    .is_ok());
    assert!(matches!(
        decode(open(MAX_TOP_LOGPROBS as u8 + 1, 0, 0)),
        Err(WireError::TooMany {
            field: "top_logprobs",
            ..
        })
    ));
    assert!(matches!(
        decode(open(0, MAX_LOGIT_BIAS + 1, 0)),
        Err(WireError::TooMany {
            field: "logit_bias",
            ..
        })
    ));
    assert!(matches!(
        decode(open(0, 0, MAX_PREFIX_BLOCKS + 1)),
        Err(WireError::TooMany {
            field: "prefix",
            ..
        })
    ));
}
