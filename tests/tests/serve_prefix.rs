//! `baton serve` reuses a shared system prompt: the second chat request with the same long
//! system prompt reports the reused tokens as cached, the node's metrics count them, and its
//! answer is exactly the one a server that reuses nothing gives.

use baton_tests::{curl, ServeProcess};
use serde_json::{json, Value};

const SYSTEM: &str = "You are the help desk of a small public library. You answer questions \
    about books, opening hours and events in plain words. You never invent a title the \
    library does not hold, and when you do not know an answer you say so and suggest asking \
    the staff at the front desk. Children's books are on the ground floor, novels and poetry \
    on the first, and reference works, maps and local newspapers on the second. The library \
    opens at nine and closes at six, and on Sundays it opens at noon.";

fn server(prefix_cache_tokens: &str) -> ServeProcess {
    ServeProcess::one_node(&["--prefix-cache-tokens", prefix_cache_tokens])
}

fn ask(server: &ServeProcess, question: &str) -> Value {
    let body = json!({
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": question},
        ],
        "max_tokens": 16,
        "temperature": 0,
    });
    let (status, v) = server.post("/v1/chat/completions", &body);
    assert_eq!(status, 200, "{v}");
    v
}

fn cached(v: &Value) -> u64 {
    v["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .expect("usage.prompt_tokens_details.cached_tokens")
}

/// The value of the first sample of `name` in Prometheus text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} is not in {text}"))
}

#[test]
fn a_shared_system_prompt_is_computed_once_and_changes_no_token() {
    let reusing = server("4096");
    let first = ask(&reusing, "When does the library open on Sunday?");
    assert_eq!(cached(&first), 0, "{first}");
    let second = ask(&reusing, "Where are the maps?");
    let prompt = second["usage"]["prompt_tokens"].as_u64().unwrap();
    // The system prompt is ~110 tokens: all of its whole blocks of 16 are reused.
    assert!(
        cached(&second) >= 96 && cached(&second) < prompt,
        "{second}"
    );
    let (status, text) = curl(&[&format!("{}/metrics", reusing.url)]);
    assert_eq!(status, 200);
    assert_eq!(
        metric(&text, "baton:prefix_cache_hits_total"),
        cached(&second) as f64
    );
    assert!(metric(&text, "baton:prefix_cache_tokens") > 0.0);
    drop(reusing);

    // The same question on a server that keeps nothing: the same answer, nothing cached.
    let fresh = server("0");
    let alone = ask(&fresh, "Where are the maps?");
    assert_eq!(cached(&alone), 0);
    assert_eq!(
        alone["choices"][0]["message"]["content"], second["choices"][0]["message"]["content"],
        "reused and computed prompts answer alike"
    );
    assert_eq!(
        alone["usage"]["prompt_tokens"],
        second["usage"]["prompt_tokens"]
    );
}
