//! Text to token ids and back, and the chat template, from GGUF metadata or `tokenizer.json`.

use std::path::Path;

use baton_protocol::wire::TokenizerSpec;
use serde::Serialize;
use serde_json::{json, Value as Json};

use crate::error::LoadError;
use crate::gguf::{GgufFile, Value};

/// One chat message, as OpenAI and Hugging Face templates expect it.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    chat_template: Option<String>,
    bos: Option<String>,
    eos: Option<String>,
    add_bos: Option<u32>,
    /// Tokens that end a turn: the EOS token and the template's end-of-turn markers.
    pub stop_ids: Vec<u32>,
}

// Pre-tokenizer regexes of the GGUF `tokenizer.ggml.pre` families we support.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn pre_tokenizer(pre: &str) -> Option<Json> {
    let byte_level = |regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": regex});
    let split = |re: &str| json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false});
    Some(match pre {
        "default" | "gpt2" | "gpt-2" => byte_level(true),
        "smollm" | "starcoder" | "refact" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        "llama-bpe" | "llama3" | "smaug-bpe" => {
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_SPLIT), byte_level(false)]})
        }
        _ => return None,
    })
}

impl Tokenizer {
    pub fn from_gguf(g: &GgufFile) -> Result<Self, LoadError> {
        let bad = |what: String| LoadError::Tokenizer {
            path: g.path.clone(),
            what,
        };
        let model = g.get_str("tokenizer.ggml.model").unwrap_or("");
        if model != "gpt2" {
            return Err(bad(format!(
                "tokenizer model `{model}` is not supported yet (byte-level BPE, `gpt2`, is)"
            )));
        }
        let pre = g.get_str("tokenizer.ggml.pre").unwrap_or("default");
        let pre_tok = pre_tokenizer(pre)
            .ok_or_else(|| bad(format!("pre-tokenizer `{pre}` is not supported")))?;
        let tokens: Vec<&str> = g
            .require("tokenizer.ggml.tokens")?
            .as_array()
            .ok_or_else(|| bad("tokens are not a list".into()))?
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| bad("a token is not a string".into()))
            })
            .collect::<Result<_, _>>()?;
        let merges: Vec<&str> = g
            .get("tokenizer.ggml.merges")
            .and_then(Value::as_array)
            .unwrap_or(&[])
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let types: Vec<u64> = g
            .get("tokenizer.ggml.token_type")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|v| v.as_u64().unwrap_or(1)).collect())
            .unwrap_or_default();
        let vocab: serde_json::Map<String, Json> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), json!(i)))
            .collect();
        // Control (3) and user-defined (4) tokens are matched whole before BPE runs.
        let added: Vec<Json> = types
            .iter()
            .enumerate()
            .filter(|(_, t)| **t == 3 || **t == 4)
            .filter_map(|(i, t)| {
                tokens.get(i).map(|s| {
                    json!({"id": i, "content": s, "single_word": false, "lstrip": false,
                        "rstrip": false, "normalized": false, "special": *t == 3})
                })
            })
            .collect();
        let spec = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tok,
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
                "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges},
        });
        let inner: tokenizers::Tokenizer = spec
            .to_string()
            .parse()
            .map_err(|e| bad(format!("cannot build the BPE tokenizer: {e}")))?;
        let token_at = |key: &str| {
            g.get(key)
                .and_then(Value::as_u64)
                .and_then(|i| tokens.get(i as usize).map(|s| (i as u32, s.to_string())))
        };
        let bos = token_at("tokenizer.ggml.bos_token_id");
        let eos = token_at("tokenizer.ggml.eos_token_id");
        let add_bos = match g.get("tokenizer.ggml.add_bos_token") {
            Some(Value::Bool(true)) => bos.as_ref().map(|b| b.0),
            _ => None,
        };
        let mut t = Tokenizer {
            inner,
            chat_template: g.get_str("tokenizer.chat_template").map(String::from),
            bos: bos.map(|b| b.1),
            eos: eos.as_ref().map(|e| e.1.clone()),
            add_bos,
            stop_ids: eos.map(|e| vec![e.0]).unwrap_or_default(),
        };
        t.add_turn_markers();
        Ok(t)
    }

    pub fn from_hf_folder(dir: &Path) -> Result<Self, LoadError> {
        let path = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| LoadError::Tokenizer {
            path: path.clone(),
            what: e.to_string(),
        })?;
        let cfg: Json = std::fs::read_to_string(dir.join("tokenizer_config.json"))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(Json::Null);
        let token_str = |v: &Json| match v {
            Json::String(s) => Some(s.clone()),
            Json::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
            _ => None,
        };
        let eos = cfg.get("eos_token").and_then(token_str);
        let mut t = Tokenizer {
            chat_template: cfg
                .get("chat_template")
                .and_then(|c| c.as_str())
                .map(String::from),
            bos: cfg.get("bos_token").and_then(token_str),
            stop_ids: eos.iter().filter_map(|e| inner.token_to_id(e)).collect(),
            eos,
            add_bos: None,
            inner,
        };
        t.add_turn_markers();
        Ok(t)
    }

    fn add_turn_markers(&mut self) {
        for marker in [
            "<|im_end|>",
            "<|eot_id|>",
            "<|end_of_text|>",
            "</s>",
            "<|endoftext|>",
        ] {
            if let Some(id) = self.inner.token_to_id(marker) {
                if !self.stop_ids.contains(&id) {
                    self.stop_ids.push(id);
                }
            }
        }
    }

    /// Everything about the tokenizer that a client needs, to send over the wire.
    pub fn to_spec(&self) -> Result<TokenizerSpec, String> {
        Ok(TokenizerSpec {
            tokenizer_json: self.inner.to_string(false).map_err(|e| e.to_string())?,
            chat_template: self.chat_template.clone(),
            bos: self.bos.clone(),
            eos: self.eos.clone(),
            add_bos: self.add_bos,
            stop_ids: self.stop_ids.clone(),
        })
    }

    /// The tokenizer a node described with [`Tokenizer::to_spec`].
    pub fn from_spec(spec: &TokenizerSpec) -> Result<Self, String> {
        let inner: tokenizers::Tokenizer = spec
            .tokenizer_json
            .parse()
            .map_err(|e| format!("the tokenizer does not load: {e}"))?;
        Ok(Tokenizer {
            inner,
            chat_template: spec.chat_template.clone(),
            bos: spec.bos.clone(),
            eos: spec.eos.clone(),
            add_bos: spec.add_bos,
            stop_ids: spec.stop_ids.clone(),
        })
    }

    /// Token ids of `text`; special tokens written in the text are recognised.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        let enc = self.inner.encode(text, true).map_err(|e| e.to_string())?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        ids.extend(self.add_bos);
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String, String> {
        self.inner.decode(ids, false).map_err(|e| e.to_string())
    }

    pub fn token(&self, id: u32) -> String {
        self.inner.id_to_token(id).unwrap_or_default()
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn has_chat_template(&self) -> bool {
        self.chat_template.is_some()
    }

    /// Renders the model's chat template over `messages`.
    pub fn apply_chat_template(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or("the model has no chat template")?;
        let mut env = minijinja::Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_function("strftime_now", |_fmt: String| -> String { String::new() });
        env.add_template("chat", template)
            .map_err(|e| format!("the chat template does not parse: {e}"))?;
        let tmpl = env.get_template("chat").map_err(|e| e.to_string())?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos.clone().unwrap_or_default(),
            eos_token => self.eos.clone().unwrap_or_default(),
        })
        .map_err(|e| format!("the chat template failed: {e}"))
    }
}
