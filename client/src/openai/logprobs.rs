//! OpenAI's `logit_bias`, `logprobs` and `top_logprobs`: what a request asks, checked, and the
//! log-probabilities of a response's tokens in the shape of each endpoint.
//!
//! Log-probabilities are those of the model's distribution itself, before temperature, top-k,
//! top-p or the logit bias change it (as vLLM reports them by default).

use baton_node::tokenizer::Tokenizer;
use baton_protocol::wire::{MAX_LOGIT_BIAS, MAX_TOP_LOGPROBS};
use serde_json::{json, Map, Value};

use super::types::Kind;
use crate::generate::Chosen;
use crate::model::TokenAsk;

/// The most alternatives the completions endpoint reports per token (OpenAI's limit).
const MAX_COMPLETION_LOGPROBS: u64 = 5;

/// The largest bias, either way (OpenAI's range).
const MAX_BIAS: f64 = 100.0;

/// A request field that cannot be taken: the field, and why.
pub type Refusal = (&'static str, String);

/// What a request's `logprobs`, `top_logprobs` and `logit_bias` ask, for a model of `vocab`
/// tokens.
pub fn ask(
    kind: Kind,
    logprobs: Option<&Value>,
    top_logprobs: Option<&Value>,
    logit_bias: Option<&Value>,
    vocab: usize,
) -> Result<TokenAsk, Refusal> {
    let count = |field: &'static str, v: &Value, max: u64| {
        v.as_u64()
            .filter(|n| *n <= max)
            .map(|n| n as u8)
            .ok_or_else(|| {
                (
                    field,
                    format!("`{field}` must be an integer from 0 to {max}"),
                )
            })
    };
    let unset = |v: Option<&Value>| v.is_none_or(Value::is_null);
    let top_logprobs = match kind {
        // Chat: `logprobs` says whether, `top_logprobs` how many alternatives.
        Kind::Chat => {
            let wanted = match logprobs {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(("logprobs", "`logprobs` must be true or false".into())),
            };
            let top = match top_logprobs.filter(|v| !v.is_null()) {
                None => 0,
                Some(v) => count("top_logprobs", v, MAX_TOP_LOGPROBS as u64)?,
            };
            if top > 0 && !wanted {
                let msg = "`top_logprobs` needs `logprobs` set to true".to_string();
                return Err(("top_logprobs", msg));
            }
            wanted.then_some(top)
        }
        // Completions: `logprobs` is the number of alternatives, and asks for them at all.
        Kind::Completion => {
            if !unset(top_logprobs) {
                let msg = "`top_logprobs` is for chat completions; here `logprobs` gives the \
                           number of alternatives"
                    .to_string();
                return Err(("top_logprobs", msg));
            }
            match logprobs.filter(|v| !v.is_null()) {
                None => None,
                Some(v) => Some(count("logprobs", v, MAX_COMPLETION_LOGPROBS)?),
            }
        }
    };
    Ok(TokenAsk {
        top_logprobs,
        logit_bias: bias(logit_bias, vocab)?,
    })
}

/// `logit_bias`: an object from token ids (as strings) to a bias from -100 to 100.
fn bias(v: Option<&Value>, vocab: usize) -> Result<Vec<(u32, f32)>, Refusal> {
    let field = "logit_bias";
    let map = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(m)) => m,
        Some(_) => return Err((field, "`logit_bias` must map token ids to numbers".into())),
    };
    if map.len() > MAX_LOGIT_BIAS {
        let msg = format!(
            "`logit_bias` names {} tokens, at most {MAX_LOGIT_BIAS}",
            map.len()
        );
        return Err((field, msg));
    }
    let mut out = Vec::with_capacity(map.len());
    for (key, value) in map {
        let id = key
            .parse::<u32>()
            .ok()
            .filter(|id| (*id as usize) < vocab)
            .ok_or_else(|| {
                let msg = format!("`logit_bias` key `{key}` is not a token id below {vocab}");
                (field, msg)
            })?;
        let b = value
            .as_f64()
            .filter(|b| b.abs() <= MAX_BIAS)
            .ok_or_else(|| {
                let msg = format!("the bias of token {id} must be a number from -100 to 100");
                (field, msg)
            })?;
        out.push((id, b as f32));
    }
    out.sort_unstable_by_key(|(id, _)| *id);
    Ok(out)
}

/// Renders the log-probabilities of a response's tokens, chunk after chunk.
pub struct Render {
    kind: Kind,
    /// Completions: where the next token's text starts in the completion, in characters.
    offset: usize,
}

impl Render {
    pub fn new(kind: Kind) -> Render {
        Render { kind, offset: 0 }
    }

    /// The `logprobs` of a choice holding `tokens`: null when there are none.
    pub fn value(&mut self, tok: &Tokenizer, tokens: &[Chosen]) -> Value {
        if tokens.is_empty() {
            return Value::Null;
        }
        let text = |id: u32| tok.decode(&[id]).unwrap_or_default();
        let logprob = |lp: Option<f32>| lp.map_or(Value::Null, |v| json!(v));
        match self.kind {
            Kind::Chat => {
                let entry = |id: u32, lp: Option<f32>| {
                    let t = text(id);
                    // A token that is part of a character has no text of its own to show.
                    let bytes = (!t.contains('\u{fffd}')).then(|| t.as_bytes().to_vec());
                    json!({"token": t, "logprob": logprob(lp), "bytes": bytes})
                };
                let content: Vec<Value> = tokens
                    .iter()
                    .map(|c| {
                        let mut e = entry(c.id, c.logprob);
                        e["top_logprobs"] =
                            c.top.iter().map(|&(id, lp)| entry(id, Some(lp))).collect();
                        e
                    })
                    .collect();
                json!({"content": content, "refusal": null})
            }
            Kind::Completion => {
                let mut texts = Vec::with_capacity(tokens.len());
                let mut offsets = Vec::with_capacity(tokens.len());
                for c in tokens {
                    let t = text(c.id);
                    offsets.push(self.offset);
                    self.offset += t.chars().count();
                    texts.push(t);
                }
                let top: Vec<Value> = tokens
                    .iter()
                    .map(|c| {
                        let m: Map<String, Value> = c
                            .top
                            .iter()
                            .map(|&(id, lp)| (text(id), json!(lp)))
                            .collect();
                        Value::Object(m)
                    })
                    .collect();
                json!({
                    "tokens": texts,
                    "token_logprobs": tokens.iter().map(|c| logprob(c.logprob)).collect::<Vec<_>>(),
                    "top_logprobs": top,
                    "text_offset": offsets,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_read_as_each_endpoint_means_them() {
        let chat = |lp: Value, top: Value| ask(Kind::Chat, Some(&lp), Some(&top), None, 100);
        assert_eq!(chat(json!(true), json!(3)).unwrap().top_logprobs, Some(3));
        assert_eq!(
            chat(json!(true), json!(null)).unwrap().top_logprobs,
            Some(0)
        );
        assert_eq!(chat(json!(false), json!(null)).unwrap().top_logprobs, None);
        assert_eq!(chat(json!(false), json!(2)).unwrap_err().0, "top_logprobs");
        assert_eq!(chat(json!(true), json!(21)).unwrap_err().0, "top_logprobs");
        assert_eq!(chat(json!(2), json!(null)).unwrap_err().0, "logprobs");
        let completion = |lp: Value| ask(Kind::Completion, Some(&lp), None, None, 100);
        assert_eq!(completion(json!(0)).unwrap().top_logprobs, Some(0));
        assert_eq!(completion(json!(5)).unwrap().top_logprobs, Some(5));
        assert_eq!(completion(json!(6)).unwrap_err().0, "logprobs");
        assert_eq!(completion(json!(null)).unwrap().top_logprobs, None);
    }

    #[test]
    fn logit_bias_is_checked_against_the_vocabulary_and_range() {
        let b = |v: Value| ask(Kind::Chat, None, None, Some(&v), 100);
        let ok = b(json!({"42": -100, "7": 2.5})).unwrap().logit_bias;
        assert_eq!(ok, vec![(7, 2.5), (42, -100.0)]);
        for bad in [
            json!({"100": 1}),
            json!({"x": 1}),
            json!({"-1": 1}),
            json!({"3": 101}),
            json!({"3": "1"}),
            json!([1]),
        ] {
            assert_eq!(b(bad.clone()).unwrap_err().0, "logit_bias", "{bad}");
        }
        let many: Map<String, Value> = (0..=MAX_LOGIT_BIAS)
            .map(|i| (i.to_string(), json!(1)))
            .collect();
        let err = ask(Kind::Chat, None, None, Some(&Value::Object(many)), 5000).unwrap_err();
        assert!(err.1.contains("at most"), "{}", err.1);
    }
}
