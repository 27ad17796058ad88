//! Text to token ids and back, and the chat template, from GGUF metadata or `tokenizer.json`.

use std::path::Path;

use baton_protocol::wire::TokenizerSpec;
use serde::Serialize;
use serde_json::Value as Json;

use crate::error::LoadError;
use crate::gguf::GgufFile;

mod gguf;

/// Why a chat cannot be rendered for a model without a template.
pub const NO_TEMPLATE: &str = "the model has no chat template (a base model continues text, it \
     does not chat): give one with --chat-template FILE, or continue a prompt as it is \
     (`baton generate --prompt`, POST /v1/completions)";

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
    /// Ids, added tokens included: counted once, since the library builds its whole vocabulary
    /// map to count them (milliseconds per call, once per request).
    vocab_size: usize,
}

impl Tokenizer {
    pub fn from_gguf(g: &GgufFile) -> Result<Self, LoadError> {
        let built = gguf::build(g)?;
        let mut t = Tokenizer {
            vocab_size: built.inner.get_vocab_size(true),
            inner: built.inner,
            chat_template: g.get_str("tokenizer.chat_template").map(String::from),
            bos: built.bos.map(|b| b.1),
            eos: built.eos.as_ref().map(|e| e.1.clone()),
            add_bos: built.add_bos,
            stop_ids: built.stop_ids,
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
            vocab_size: inner.get_vocab_size(true),
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
            "<end_of_turn>",
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
            vocab_size: inner.get_vocab_size(true),
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

    /// Token ids of `text` alone, without the BOS a prompt starts with.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>, String> {
        let enc = self.inner.encode(text, false).map_err(|e| e.to_string())?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String, String> {
        self.inner.decode(ids, false).map_err(|e| e.to_string())
    }

    pub fn token(&self, id: u32) -> String {
        self.inner.id_to_token(id).unwrap_or_default()
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Uses `template` (Jinja, as in `tokenizer_config.json`) instead of the model's own.
    pub fn set_chat_template(&mut self, template: String) {
        self.chat_template = Some(template);
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
        let template = self.chat_template.as_deref().ok_or(NO_TEMPLATE)?;
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
