//! `baton serve` at the edges of OpenAI's API: what it does not implement is refused by name,
//! bad messages are refused, a body too large gets a 413 in OpenAI's shape, a completion
//! prompt may be token ids, and log-probabilities and logit biases are those of the model.

use baton_tests::{cases, curl, fixtures_dir, tensor_f32, ServeProcess};
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
    let server = ServeProcess::one_node(&[]);
    let user = json!([{"role": "user", "content": "Hi"}]);

    // Parameters an agent relies on are refused by name, not ignored.
    let unsupported = [
        (
            "tools",
            json!([{"type": "function", "function": {"name": "f", "parameters": {}}}]),
        ),
        ("response_format", json!({"type": "json_object"})),
        ("presence_penalty", json!(0.5)),
        ("echo", json!(true)),
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
    assert_eq!(v["choices"][0]["logprobs"], Value::Null, "{v}");
    // Log-probabilities and biases that cannot be taken are refused, naming the field.
    for (field, value) in [
        ("top_logprobs", json!(21)),
        ("logit_bias", json!({"49152": 1})),
        ("logit_bias", json!({"5": 101})),
        ("logprobs", json!("yes")),
    ] {
        let mut body = json!({"messages": user, "max_tokens": 2, "logprobs": true});
        body[field] = value;
        let (status, v) = server.post("/v1/chat/completions", &body);
        error_of(status, &v, 400, field);
    }

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

/// `log softmax(row)`, in f64.
fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().fold(f32::NEG_INFINITY, |a, b| a.max(*b)) as f64;
    let sum: f64 = row.iter().map(|v| (*v as f64 - max).exp()).sum();
    row.iter().map(|v| *v as f64 - max - sum.ln()).collect()
}

#[test]
fn logprobs_are_the_models_and_logit_bias_moves_the_choice() {
    let server = ServeProcess::one_node(&[]);
    let case = cases()
        .unwrap()
        .into_iter()
        .find(|c| c.json["case"]["text"].is_string())
        .expect("a text case among the fixtures");
    let st = fixtures_dir().join(format!("{}.safetensors", case.name));
    let want = log_softmax(&tensor_f32(&st, "prompt_last_logits").unwrap());
    let greedy = &case.all_ids[case.prompt_ids.len()..];
    let n = 6;

    // Completions: `logprobs` is the number of alternatives.
    let body = json!({"prompt": case.prompt_ids, "max_tokens": n, "temperature": 0, "logprobs": 5});
    let (status, v) = server.post("/v1/completions", &body);
    assert_eq!(status, 200, "{v}");
    let lp = &v["choices"][0]["logprobs"];
    let token_lps = lp["token_logprobs"].as_array().expect("token_logprobs");
    assert_eq!(token_lps.len(), n, "{lp}");
    assert_eq!(lp["tokens"].as_array().unwrap().len(), n);
    assert_eq!(lp["text_offset"][0], json!(0), "{lp}");
    // The first token's log-probability against the reference's full row.
    let first = token_lps[0].as_f64().unwrap();
    assert!(
        (first - want[greedy[0] as usize]).abs() < 0.05,
        "{first} vs {}",
        want[greedy[0] as usize]
    );
    let top = lp["top_logprobs"][0].as_object().unwrap();
    assert!(top.len() <= 5 && !top.is_empty(), "{lp}");

    // `logprobs: 0`: the tokens' own log-probabilities without alternatives, the same text.
    let body = json!({"prompt": case.prompt_ids, "max_tokens": n, "temperature": 0,
                      "logprobs": 0});
    let (_, plain) = server.post("/v1/completions", &body);
    assert_eq!(plain["choices"][0]["text"], v["choices"][0]["text"]);
    assert_eq!(
        plain["choices"][0]["logprobs"]["top_logprobs"][0],
        json!({})
    );

    // Chat: each token with its alternatives, likeliest first; greedy takes the likeliest.
    let user = json!([{"role": "user", "content": "Name a colour."}]);
    let body = json!({"messages": user, "max_tokens": n, "temperature": 0, "logprobs": true,
                      "top_logprobs": 20});
    let (status, v) = server.post("/v1/chat/completions", &body);
    assert_eq!(status, 200, "{v}");
    let content = v["choices"][0]["logprobs"]["content"]
        .as_array()
        .expect("content");
    assert_eq!(
        content.len() as u64,
        v["usage"]["completion_tokens"].as_u64().unwrap()
    );
    for t in content {
        let alts = t["top_logprobs"].as_array().unwrap();
        assert_eq!(alts.len(), 20, "{t}");
        let lps: Vec<f64> = alts
            .iter()
            .map(|a| a["logprob"].as_f64().unwrap())
            .collect();
        assert!(lps.windows(2).all(|w| w[0] >= w[1]), "{t}");
        assert!(
            lps.iter().map(|l| l.exp()).sum::<f64>() <= 1.0 + 1e-4,
            "{t}"
        );
        assert_eq!(t["logprob"], alts[0]["logprob"], "{t}");
        assert_eq!(t["token"], alts[0]["token"], "{t}");
    }

    // Streamed, the chunks carry the same entries between them.
    let mut body = body;
    body["stream"] = json!(true);
    let (status, text) = server.post_raw("/v1/chat/completions", &body.to_string());
    assert_eq!(status, 200, "{text}");
    let streamed: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<Value>(d).expect("a JSON chunk"))
        .filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array().cloned())
        .flatten()
        .collect();
    // The repeat reuses the first request's prompt but its last token, whose logits then come
    // from a one-token step: the same tokens, log-probabilities within rounding.
    assert_eq!(streamed.len(), content.len());
    for (s, c) in streamed.iter().zip(content) {
        let (sa, ca) = (s["top_logprobs"].as_array(), c["top_logprobs"].as_array());
        let tokens = |v: &Value| v["token"].clone();
        assert_eq!(tokens(s), tokens(c));
        assert_eq!(
            sa.unwrap().iter().map(tokens).collect::<Vec<_>>(),
            ca.unwrap().iter().map(tokens).collect::<Vec<_>>()
        );
        let lp = |v: &Value| v["logprob"].as_f64().unwrap();
        assert!((lp(s) - lp(c)).abs() < 1e-3, "{s} vs {c}");
    }

    // logit_bias: the greedy first token banned, the reference's runner-up comes instead; a
    // token pushed by +100 comes every time.
    let mut order: Vec<usize> = (0..want.len()).collect();
    order.sort_by(|a, b| want[*b].total_cmp(&want[*a]));
    assert_eq!(
        order[0], greedy[0] as usize,
        "the reference's greedy token is its likeliest"
    );
    assert!(
        want[order[1]] - want[order[2]] > 0.1,
        "no near-tie for second place"
    );
    let ids_of = |bias: Value| {
        let body = json!({"prompt": case.prompt_ids, "max_tokens": 3, "temperature": 0,
                          "logit_bias": bias, "logprobs": 1});
        let (status, v) = server.post("/v1/completions", &body);
        assert_eq!(status, 200, "{v}");
        v["choices"][0]["logprobs"]["tokens"].clone()
    };
    let banned = ids_of(json!({greedy[0].to_string(): -100}));
    let runner_up = ids_of(json!({order[1].to_string(): 100}));
    assert_eq!(
        banned[0], runner_up[0],
        "banning the favourite gives the runner-up"
    );
    let forced = ids_of(json!({"28": 100}));
    assert_eq!(forced[0], forced[1]);
    assert_eq!(forced[1], forced[2]);
    let unbiased = ids_of(json!({}));
    assert_ne!(banned[0], unbiased[0]);
}
