//! `baton serve` at the edges of OpenAI's API: what it does not implement is refused by name,
//! bad messages are refused, a body too large gets a 413 in OpenAI's shape, and a completion
//! prompt may be token ids.

use baton_tests::{cases, curl, demo_model, ServeProcess};
use serde_json::{json, Value};

fn error_of(status: u16, v: &Value, want_status: u16, param: &str) {
    assert_eq!(status, want_status, "{v}");
    assert_eq!(v["error"]["param"], json!(param), "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
}

#[test]
fn the_api_refuses_what_it_does_not_do_and_takes_token_ids() {
    let model = demo_model();
    let server = ServeProcess::start(&[
        "--local",
        "--nodes",
        "1",
        "--model",
        model.to_str().unwrap(),
    ]);
    let user = json!([{"role": "user", "content": "Hi"}]);

    // Parameters an agent relies on are refused by name, not ignored.
    let unsupported = [
        (
            "tools",
            json!([{"type": "function", "function": {"name": "f", "parameters": {}}}]),
        ),
        ("response_format", json!({"type": "json_object"})),
        ("logit_bias", json!({"42": 100})),
        ("logprobs", json!(true)),
    ];
    for (field, value) in unsupported {
        let mut body = json!({"messages": user, "max_tokens": 2});
        body[field] = value;
        let (status, v) = server.post("/v1/chat/completions", &body);
        error_of(status, &v, 400, field);
    }
    // Left at what not setting them means, they are fine.
    let body = json!({"messages": user, "max_tokens": 2, "logprobs": false, "tools": [],
                      "presence_penalty": 0, "user": "someone"});
    let (status, v) = server.post("/v1/chat/completions", &body);
    assert_eq!(status, 200, "{v}");

    // Messages: an unknown role, and a user turn with null content.
    let body = json!({"messages": [{"role": "wizard", "content": "Hi"}]});
    let (status, v) = server.post("/v1/chat/completions", &body);
    error_of(status, &v, 400, "messages[0].role");
    let body = json!({"messages": [{"role": "system", "content": "Be brief."},
                                   {"role": "user", "content": null}]});
    let (status, v) = server.post("/v1/chat/completions", &body);
    error_of(status, &v, 400, "messages[1].content");

    // A 10 MB body: a 413 in OpenAI's shape, and the connection is not reset.
    let big = std::env::temp_dir().join(format!("baton-big-{}.json", std::process::id()));
    let filler = "a".repeat(10 << 20);
    std::fs::write(
        &big,
        format!("{{\"prompt\": \"{filler}\", \"max_tokens\": 1}}"),
    )
    .unwrap();
    let (status, text) = curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &format!("@{}", big.display()),
        &format!("{}/v1/completions", server.url),
    ]);
    std::fs::remove_file(&big).ok();
    assert_eq!(status, 413, "{text}");
    let v: Value = serde_json::from_str(&text).expect("an error in JSON");
    assert_eq!(v["error"]["code"], "request_too_large", "{v}");

    // Token ids give the text their string gives.
    let case = cases()
        .unwrap()
        .into_iter()
        .find(|c| c.json["case"]["text"].is_string())
        .expect("a text case among the fixtures");
    let text = case.json["case"]["text"].as_str().unwrap();
    let complete = |prompt: Value| {
        let body = json!({"prompt": prompt, "max_tokens": 8, "temperature": 0});
        let (status, v) = server.post("/v1/completions", &body);
        assert_eq!(status, 200, "{v}");
        assert_eq!(
            v["usage"]["prompt_tokens"],
            json!(case.prompt_ids.len()),
            "{v}"
        );
        v["choices"][0]["text"].as_str().unwrap().to_string()
    };
    let by_text = complete(json!(text));
    assert_eq!(complete(json!(case.prompt_ids)), by_text);
    assert_eq!(complete(json!([case.prompt_ids])), by_text);
    // Ids outside the vocabulary are refused.
    let body = json!({"prompt": [1, 2, 4_000_000_000u32], "max_tokens": 1});
    let (status, v) = server.post("/v1/completions", &body);
    assert_eq!(status, 400, "{v}");
}
