//! `baton serve` called with curl, a real HTTP client, as an OpenAI SDK would call it:
//! chat and text completions streamed and not, usage counts, concurrent requests, and
//! errors in OpenAI's shape.

use baton_tests::{cases, curl, demo_model, NodeProcess, ServeProcess as Server};
use serde_json::{json, Value};

/// The `data:` payloads of a server-sent event stream.
fn events(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

/// The text of a streamed answer, its finish reason, and the usage chunk if any.
fn streamed(body: &str, chat: bool) -> (String, String, Option<Value>) {
    let ev = events(body);
    assert_eq!(ev.last().map(String::as_str), Some("[DONE]"), "{body}");
    let (mut text, mut finish, mut usage) = (String::new(), String::new(), None);
    for e in &ev[..ev.len() - 1] {
        let v: Value = serde_json::from_str(e).expect("a JSON chunk");
        assert!(v.get("error").is_none(), "{e}");
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            usage = Some(u.clone());
        }
        let Some(c) = v["choices"].get(0) else {
            continue;
        };
        let piece = if chat {
            &c["delta"]["content"]
        } else {
            &c["text"]
        };
        text.push_str(piece.as_str().unwrap_or(""));
        if let Some(f) = c["finish_reason"].as_str() {
            finish = f.to_string();
        }
    }
    (text, finish, usage)
}

fn chat_case() -> (Vec<Value>, usize) {
    let case = cases()
        .unwrap()
        .into_iter()
        .find(|c| c.json["case"]["messages"].is_array())
        .expect("a chat case among the fixtures");
    let messages = case.json["case"]["messages"].as_array().unwrap().clone();
    (messages, case.prompt_ids.len())
}

#[test]
fn local_server_speaks_openai() {
    let model = demo_model();
    let server = Server::start(&["--local", "--model", model.to_str().unwrap()]);

    let (status, models) = server.get("/v1/models");
    assert_eq!(status, 200);
    let name = models["data"][0]["id"]
        .as_str()
        .expect("a model id")
        .to_string();
    let (status, health) = server.get("/health");
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));

    // Chat, not streamed: the fixture's question, greedy.
    let (messages, prompt_tokens) = chat_case();
    let request = json!({"model": name, "messages": messages, "temperature": 0, "max_tokens": 40});
    let (status, answer) = server.post("/v1/chat/completions", &request);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["object"], "chat.completion");
    let content = answer["choices"][0]["message"]["content"]
        .as_str()
        .expect("content")
        .to_string();
    assert!(content.contains("Paris"), "{content}");
    let usage = &answer["usage"];
    assert_eq!(usage["prompt_tokens"], prompt_tokens, "{usage}");
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(
            usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
        )
    );
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");

    // The same, streamed: the same text, then a finish reason, the usage, and [DONE].
    let mut streaming = request.clone();
    streaming["stream"] = json!(true);
    streaming["stream_options"] = json!({"include_usage": true});
    let (status, body) = server.post_raw("/v1/chat/completions", &streaming.to_string());
    assert_eq!(status, 200, "{body}");
    let (text, finish, stream_usage) = streamed(&body, true);
    assert_eq!(text, content);
    assert_eq!(finish, "stop");
    // The same prompt again: all of it but its last token comes from the first request's.
    let stream_usage = stream_usage.expect("a usage chunk");
    for field in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(stream_usage[field], usage[field], "{field}");
    }
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(
        stream_usage["prompt_tokens_details"]["cached_tokens"].as_u64(),
        Some(prompt_tokens as u64 - 1),
        "{stream_usage}"
    );

    // Four at once, each its own session: each gets the answer one alone gets.
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (url, body) = (server.url.clone(), request.to_string());
            std::thread::spawn(move || {
                curl(&[
                    "-X",
                    "POST",
                    "--data-binary",
                    &body,
                    &format!("{url}/v1/chat/completions"),
                ])
            })
        })
        .collect();
    for t in threads {
        let (status, body) = t.join().unwrap();
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], content.as_str());
    }

    // Text completion with a length limit, then with a stop string, streamed.
    let (status, c) = server.post(
        "/v1/completions",
        &json!({"prompt": "Once upon a time", "max_tokens": 5, "temperature": 0}),
    );
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["choices"][0]["finish_reason"], "length");
    assert_eq!(c["usage"]["completion_tokens"], 5);
    let first = c["choices"][0]["text"].as_str().unwrap().to_string();
    let stop = first
        .split_whitespace()
        .nth(2)
        .expect("a few words")
        .to_string();
    let (status, body) = server.post_raw(
        "/v1/completions",
        &json!({"prompt": "Once upon a time", "max_tokens": 5, "temperature": 0,
                "stop": [stop], "stream": true})
        .to_string(),
    );
    assert_eq!(status, 200, "{body}");
    let (text, finish, _) = streamed(&body, false);
    assert_eq!(finish, "stop");
    assert!(
        first.starts_with(&text) && !text.contains(&stop),
        "{text:?} {first:?}"
    );

    // Errors, in OpenAI's shape.
    let (status, e) = server.post_raw("/v1/chat/completions", "{not json");
    assert_eq!(status, 400, "{e}");
    let e: Value = serde_json::from_str(&e).unwrap();
    assert_eq!(e["error"]["type"], "invalid_request_error");
    let (status, e) = server.post(
        "/v1/chat/completions",
        &json!({"model": "no-such-model", "messages": messages}),
    );
    assert_eq!(
        (status, &e["error"]["code"]),
        (404, &json!("model_not_found"))
    );
    let long = "hello ".repeat(9000);
    let (status, e) = server.post("/v1/completions", &json!({"prompt": long}));
    assert_eq!(
        (status, &e["error"]["code"]),
        (400, &json!("context_length_exceeded")),
        "{e}"
    );
    let (status, _) = server.post(
        "/v1/chat/completions",
        &json!({"messages": messages, "n": 2}),
    );
    assert_eq!(status, 400);
}

#[test]
fn a_swarm_that_stops_covering_the_model_gets_a_clear_error() {
    let m = demo_model();
    let m = m.to_str().unwrap();
    let a = NodeProcess::start(&["--model", m, "--span", "0..15", "--name", "a"]).unwrap();
    let b = NodeProcess::start(&[
        "--model",
        m,
        "--span",
        "15..30",
        "--name",
        "b",
        "--bootstrap",
        &a.bootstrap,
    ])
    .unwrap();
    let server = Server::start(&["--bootstrap", &a.bootstrap]);
    let request = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3});
    let (status, v) = server.post("/v1/chat/completions", &request);
    assert_eq!(status, 200, "{v}");
    drop(b);
    let (status, e) = server.post("/v1/chat/completions", &request);
    assert_eq!(status, 503, "{e}");
    assert_eq!(e["error"]["code"], "model_not_covered", "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("block 15"),
        "{e}"
    );
}
