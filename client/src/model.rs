//! A model served by a swarm, as a chat or an HTTP server uses it: its id, tokenizer and
//! context, and a route that is planned again when a session cannot be opened along it.

use std::sync::Mutex;
use std::time::Duration;

use baton_node::net::NetError;
use baton_node::tokenizer::{Message, Tokenizer};
use baton_protocol::wire::{ModelInfo, Sampling};
use baton_protocol::WireDtype;

use crate::remote::{RemoteSession, SessionOptions};
use crate::route::PlannedHop;
use crate::swarm::{hop_of, SwarmClient, SwarmError};

/// What a request asks of each token besides how to sample it.
#[derive(Clone, Debug, Default)]
pub struct TokenAsk {
    /// Report each token's log-probability, with this many of the likeliest tokens.
    pub top_logprobs: Option<u8>,
    /// Added to these tokens' logits before sampling.
    pub logit_bias: Vec<(u32, f32)>,
}

/// How long a step may take before a session gives up on it.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(60);

pub struct SwarmModel {
    pub client: SwarmClient,
    /// The model id (content hash) and the name nodes announce.
    pub id: String,
    pub name: String,
    pub info: ModelInfo,
    pub tok: Tokenizer,
    pub wire_dtype: WireDtype,
    /// The share of steps after which the route's hops are checked against other nodes.
    pub verify: f64,
    route: Mutex<Vec<PlannedHop>>,
}

/// Hops are checked after one step in this many by default (`--verify`).
pub const DEFAULT_VERIFY: f64 = 0.1;

#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("{0}")]
    Template(String),
    #[error("the prompt has no tokens")]
    Empty,
    #[error("the prompt's {tokens} tokens do not fit the model's context of {context}")]
    TooLong { tokens: usize, context: usize },
}

impl SwarmModel {
    /// Finds the model `name` (or the only one served), plans a route, and fetches the
    /// tokenizer from the hop that holds `embed`.
    pub async fn connect(
        client: SwarmClient,
        name: Option<&str>,
        wire_dtype: WireDtype,
    ) -> Result<SwarmModel, SwarmError> {
        let (id, route) = client.route(name).await?;
        let first = route
            .first()
            .ok_or_else(|| SwarmError::Other("an empty route".into()))?;
        let model_name = first.record.model_name.clone();
        let (info, tok) = client.tokenizer(&hop_of(&first.record)?, &id).await?;
        Ok(SwarmModel {
            client,
            id,
            name: model_name,
            info,
            tok,
            wire_dtype,
            verify: DEFAULT_VERIFY,
            route: Mutex::new(route),
        })
    }

    pub fn context(&self) -> usize {
        self.info.context as usize
    }

    /// The route new sessions take.
    pub fn route(&self) -> Vec<PlannedHop> {
        self.route.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Opens a session for `tokens` tokens (prompt and generation) that starts with `prompt`:
    /// the hops start from what they kept of an earlier prompt that began the same way, if
    /// they did ([`RemoteSession::fed`] holds those tokens; the rest is to be sent). When the
    /// route in hand fails, the route is planned again from the live records, around the
    /// nodes that refused the session for lack of room; four tries in all.
    pub async fn open(
        &self,
        sampling: Sampling,
        tokens: usize,
        ask: TokenAsk,
        prompt: &[u32],
    ) -> Result<RemoteSession, SwarmError> {
        let options = SessionOptions {
            model_id: self.id.clone(),
            sampling,
            wire_dtype: self.wire_dtype,
            max_tokens: tokens.min(self.context()) as u32,
            step_timeout: STEP_TIMEOUT,
            logprobs: ask.top_logprobs.is_some(),
            top_logprobs: ask.top_logprobs.unwrap_or(0),
            logit_bias: ask.logit_bias,
            swarm_key: self.client.access.swarm_key,
            stop_ids: self.tok.stop_ids.clone(),
            verify: self.verify,
            prompt: prompt.to_vec(),
        };
        let mut route = self.route();
        let mut avoid = Vec::new();
        let mut tries = 0;
        // The last refusal for lack of room: without a route around the full nodes, the
        // request may wait for room rather than fail (see `SwarmError::Busy`).
        let mut full = None;
        loop {
            tries += 1;
            match self.client.open(&route, &options).await {
                Ok(s) => return Ok(s),
                Err(SwarmError::Net(NetError::Remote(e))) if !retryable(&e) => {
                    return Err(SwarmError::Net(NetError::Remote(e)))
                }
                // A node with no room for the session, or one that failed to open it (it did not
                // answer, or answered nonsense): route around it.
                Err(SwarmError::Net(NetError::Refused { peer, error })) if tries < 4 => {
                    if error.code == baton_protocol::wire::ErrorCode::Busy {
                        full = Some(format!("{peer}: {}", error.message));
                    }
                    avoid.push(*peer);
                }
                Err(SwarmError::Net(NetError::HopFailed { peer, .. })) if tries < 4 => {
                    avoid.push(*peer);
                }
                Err(e) if tries >= 4 => return Err(full.map_or(e, SwarmError::Busy)),
                Err(_) => {}
            }
            route = match self.client.route_avoiding(Some(&self.id), &avoid).await {
                Ok(r) => r.1,
                Err(e) => return Err(full.map_or(e, SwarmError::Busy)),
            };
            if avoid.is_empty() {
                if let Ok(mut r) = self.route.lock() {
                    *r = route.clone();
                }
            }
        }
    }

    /// The ids of a chat's prompt: the messages through the model's chat template, ready for
    /// the assistant's answer, checked against the context.
    pub fn chat_prompt(&self, messages: &[Message]) -> Result<Vec<u32>, PromptError> {
        let text = self
            .tok
            .apply_chat_template(messages, true)
            .map_err(PromptError::Template)?;
        self.text_prompt(&text)
    }

    /// The ids of a plain text prompt, checked against the context.
    pub fn text_prompt(&self, text: &str) -> Result<Vec<u32>, PromptError> {
        let ids = self.tok.encode(text).map_err(PromptError::Template)?;
        self.id_prompt(ids)
    }

    /// A prompt given as token ids, checked against the vocabulary and the context.
    pub fn id_prompt(&self, ids: Vec<u32>) -> Result<Vec<u32>, PromptError> {
        let vocab = self.tok.vocab_size();
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(PromptError::Template(format!(
                "token id {id} is not in the vocabulary of {vocab}"
            )));
        }
        if ids.is_empty() {
            return Err(PromptError::Empty);
        }
        if ids.len() >= self.context() {
            return Err(PromptError::TooLong {
                tokens: ids.len(),
                context: self.context(),
            });
        }
        Ok(ids)
    }
}

/// Whether a node's refusal may go away on another route (a full or departing node), rather
/// than being about the request itself.
fn retryable(e: &baton_protocol::wire::ErrorMsg) -> bool {
    use baton_protocol::wire::ErrorCode;
    !matches!(e.code, ErrorCode::Malformed | ErrorCode::TooLarge)
}
