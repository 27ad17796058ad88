//! The messages of the data plane and their framing.
//!
//! A frame is a little-endian `u32` body length, then the body: one byte naming the message kind
//! (explicit numbers, stable across versions) and the message encoded with bincode. The length is
//! checked against [`MAX_FRAME_BYTES`] before anything is allocated, and bincode decodes under
//! the same limit, so no length inside a message can make a peer allocate more.
//!
//! The first message each way on a connection is [`Hello`]; a peer whose version differs gets an
//! [`ErrorCode::Version`] error and the connection closes.

use serde::{Deserialize, Serialize};

use crate::experts::{ExpertCall, ExpertOut, MAX_WIRE_EXPERTS};
use crate::{HiddenStates, Span, WireDtype, PROTOCOL_VERSION};

/// The ALPN of Baton's QUIC connections.
pub const ALPN: &[u8] = b"baton/1";

/// The largest frame body a peer accepts: 64 MiB, room for a prefill chunk of hidden states.
pub const MAX_FRAME_BYTES: usize = 64 << 20;

/// Longest text field (names, messages, addresses).
pub const MAX_TEXT: usize = 4096;

/// Sampling settings, carried to the hop that holds `head`. Temperature 0 is greedy.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    pub temperature: f32,
    /// 0 keeps every token.
    pub top_k: u32,
    pub top_p: f32,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

/// Sent first, both ways.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    /// A human-readable name for logs.
    pub name: String,
    /// In a private swarm: proof that the sender holds the swarm key, bound to both peers.
    pub proof: Option<[u8; 32]>,
}

impl Hello {
    pub fn new(name: impl Into<String>) -> Self {
        Hello {
            version: PROTOCOL_VERSION,
            name: name.into(),
            proof: None,
        }
    }
}

/// Where a hop sends what its span produces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextHop {
    /// The peer id (base58 of its public key) that the next hop's TLS certificate must prove.
    pub peer_id: String,
    /// Its data-plane address, `ip:port`.
    pub addr: String,
    pub span: Span,
}

/// Client → every hop of a route: keep a KV cache for this session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpenSession {
    pub session: u64,
    /// The model the client routes for; a hop serving another refuses.
    pub model_id: String,
    /// The span the client expects this hop to run.
    pub span: Span,
    /// `None` on the hop that holds `head`.
    pub next: Option<NextHop>,
    pub sampling: Sampling,
    pub wire_dtype: WireDtype,
    /// The most tokens the session will hold.
    pub max_tokens: u32,
    /// Whether the head hop reports each token's log-probability.
    pub logprobs: bool,
    /// With `logprobs`: how many of the likeliest tokens the head hop reports with each token
    /// it samples, at most [`MAX_TOP_LOGPROBS`].
    pub top_logprobs: u8,
    /// Added to the logits of these tokens before sampling (OpenAI's `logit_bias`), at most
    /// [`MAX_LOGIT_BIAS`] entries. Log-probabilities are reported without it.
    pub logit_bias: Vec<(u32, f32)>,
    /// On the hop that holds `head`: the first hop of the route, to which it may feed each
    /// token it samples as the next step (see [`Step::more`]).
    pub ring: Option<NextHop>,
    /// Tokens that end a generation: the head hop never feeds them on.
    pub stop_ids: Vec<u32>,
    /// On a hop without `head`: send a copy of each step's output to the opener too, as a
    /// `Forward` on the stream that opened the session, so that the client can check the hop
    /// against another node serving the same span. With no `next`, the session is such a
    /// check: its output goes to the opener only.
    pub tap: bool,
    /// Peers (base58 peer ids) whose streams may send this session's steps besides the stream
    /// that opened it: the hop before (for the first hop, the head hop feeding tokens on). At
    /// most [`MAX_FEEDERS`].
    pub feeders: Vec<String>,
    /// Prefix reuse: the chained hashes of the prompt's first blocks of [`PREFIX_BLOCK`]
    /// tokens, at most [`MAX_PREFIX_BLOCKS`]; the last may be a shorter block of
    /// `prefix_tail` tokens. A hop that kept the KV cache (and what it sent downstream) of an
    /// earlier session of the same opener whose prompt began with the same blocks starts the
    /// session from it: those tokens are then step 0, already run (see
    /// [`SessionOpened::reused`]). After its first step the session's own blocks are kept for
    /// later sessions. Empty: no reuse.
    pub prefix: Vec<[u8; 16]>,
    /// Tokens of the last block of `prefix` when it is shorter than [`PREFIX_BLOCK`] (0: it is
    /// whole). Such a block matches only the same tokens at the end of a kept prompt: a prompt
    /// sent again reuses all of it but its last token.
    pub prefix_tail: u8,
}

/// Tokens per hashed block of a prompt (see [`OpenSession::prefix`]).
pub const PREFIX_BLOCK: usize = 16;

/// The most prompt blocks a session names for reuse: 131,072 tokens.
pub const MAX_PREFIX_BLOCKS: usize = 8192;

/// The most feeders a session names.
pub const MAX_FEEDERS: usize = 4;

/// The most alternatives a token is reported with (OpenAI's limit for `top_logprobs`).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// The most tokens a session's logit bias names.
pub const MAX_LOGIT_BIAS: usize = 1024;

/// Client → hop: from now on, the session's steps come from `peer_id` (a new hop before it),
/// instead of the feeders it was opened with. Answered with `Ack`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Admit {
    pub session: u64,
    pub peer_id: String,
}

/// Hop → client: the session is open.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionOpened {
    pub session: u64,
    /// Tokens of the prompt the hop took from an earlier session (0 for none): it holds them
    /// as step 0, and the next step is 1.
    pub reused: u32,
}

/// Client → first hop: run these tokens (a prompt chunk, or one generated token).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub session: u64,
    /// Steps of a session are numbered 0, 1, 2, …; a step out of order is refused.
    pub seq: u64,
    pub tokens: Vec<u32>,
    /// Rebuilding a replacement hop's cache after a failure: run the tokens, forward and
    /// sample nothing, and answer `Ack`. `seq` is then the last step the tokens belong to.
    pub replay: bool,
    /// How many further steps the head hop may start by itself: it sends the token it samples
    /// to the client and, as step `seq + 1` with `more - 1`, straight to the first hop, so that
    /// the next step does not wait for the client. A head hop sends such steps too.
    pub more: u32,
}

/// Hop → next hop: the hidden states a span produced for a step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Forward {
    pub session: u64,
    pub seq: u64,
    pub hidden: HiddenStates,
    /// How long each hop so far took to compute this step, in microseconds, in route order:
    /// where a hop ran it in passes with other sessions' steps, its share of those passes.
    pub hop_us: Vec<u32>,
    /// As in [`Step`]: hidden states replayed into a replacement, up to step `seq`.
    pub replay: bool,
    /// As in [`Step`], passed on to the head hop.
    pub more: u32,
}

/// Client → hop: forget steps `seq` and later (a step that was in flight when a hop failed),
/// so that the step can be run again along the repaired route. Answered with `Ack`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Truncate {
    pub session: u64,
    pub seq: u64,
}

/// Client → hop: send this session's output to `next` from now on, after replaying into it
/// everything sent downstream so far. Answered with `Ack` once the replay is on its way. Sent to
/// the hop that holds `head`, it names a new first hop to feed tokens to, with nothing to replay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Redirect {
    pub session: u64,
    pub next: NextHop,
}

/// Hop → client: a `Truncate`, `Redirect` or replay is done; `seq` is the session's next step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    pub session: u64,
    pub seq: u64,
}

/// Hop → client: this node is shutting down; move the session elsewhere.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Leaving {
    pub session: u64,
}

/// The most stop tokens a session names.
pub const MAX_STOP_IDS: usize = 64;

/// The most hops whose times a step carries.
pub const MAX_HOPS: usize = 256;

/// Head hop → client: the token sampled at the end of a step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenOut {
    pub session: u64,
    pub seq: u64,
    pub token: u32,
    /// Its log-probability under the unmodified distribution, when the session asked for it
    /// (a softmax over the vocabulary costs the head hop time on every step).
    pub logprob: Option<f32>,
    /// The session's `top_logprobs` likeliest tokens with their log-probabilities, likeliest
    /// first (ties by id), under the same distribution as `logprob`.
    pub top: Vec<(u32, f32)>,
    /// How long each hop took to compute this step, in microseconds, in route order (as in
    /// [`Forward::hop_us`]).
    pub hop_us: Vec<u32>,
    /// Whether the head hop also sent the token to the first hop as step `seq + 1`.
    pub fed_on: bool,
}

/// Why a request failed. The numbers are part of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "u16", try_from = "u16")]
pub enum ErrorCode {
    Version = 1,
    Malformed = 2,
    TooLarge = 3,
    UnknownSession = 4,
    OutOfOrder = 5,
    WrongSpan = 6,
    WrongModel = 7,
    Busy = 8,
    Downstream = 9,
    Internal = 10,
    /// The peer is not a member of this private swarm, or not allowed.
    Forbidden = 11,
}

impl From<ErrorCode> for u16 {
    fn from(c: ErrorCode) -> u16 {
        c as u16
    }
}

impl TryFrom<u16> for ErrorCode {
    type Error = String;

    fn try_from(v: u16) -> Result<Self, String> {
        use ErrorCode::*;
        [
            Version,
            Malformed,
            TooLarge,
            UnknownSession,
            OutOfOrder,
            WrongSpan,
            WrongModel,
            Busy,
            Downstream,
            Internal,
            Forbidden,
        ]
        .into_iter()
        .find(|c| *c as u16 == v)
        .ok_or_else(|| format!("unknown error code {v}"))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorMsg {
    /// 0 when the error concerns no session.
    pub session: u64,
    pub seq: u64,
    pub code: ErrorCode,
    pub message: String,
}

/// Client → hop: the session is over; free its KV cache.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Close {
    pub session: u64,
}

/// Client → a hop holding `embed`: what a client needs to tokenize for the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GetModelInfo {
    pub model_id: String,
}

/// How a model turns text into ids: its tokenizer (Hugging Face `tokenizer.json`), chat template
/// and special tokens. The default is a model without one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenizerSpec {
    pub tokenizer_json: String,
    pub chat_template: Option<String>,
    pub bos: Option<String>,
    pub eos: Option<String>,
    /// The id put before every prompt, if the model wants one.
    pub add_bos: Option<u32>,
    /// Ids that end a turn.
    pub stop_ids: Vec<u32>,
}

/// Largest chat template accepted.
pub const MAX_TEMPLATE: usize = 256 << 10;

impl TokenizerSpec {
    /// The bytes a model id commits to.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(self, config()).unwrap_or_default()
    }
}

/// Hop → client: the model's tokenizer and shape. The client checks it against the model id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub model_id: String,
    /// Hash of the weights' files; the model id commits to it, to the tokenizer and to `blocks`.
    pub content_hash: String,
    pub tokenizer: TokenizerSpec,
    pub blocks: u32,
    pub vocab: u32,
    pub context: u32,
}

/// Every message of the data plane.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    Hello(Hello),
    OpenSession(OpenSession),
    SessionOpened(SessionOpened),
    Step(Step),
    Forward(Forward),
    Token(TokenOut),
    Error(ErrorMsg),
    Close(Close),
    GetModelInfo(GetModelInfo),
    ModelInfo(ModelInfo),
    Truncate(Truncate),
    Redirect(Redirect),
    Ack(Ack),
    Leaving(Leaving),
    Admit(Admit),
    ExpertCall(ExpertCall),
    ExpertOut(ExpertOut),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME_BYTES}")]
    TooLarge(usize),
    #[error("empty frame")]
    Empty,
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    #[error("malformed {kind} message: {why}")]
    Malformed { kind: &'static str, why: String },
    #[error("{field} is {len} bytes long, more than {MAX_TEXT}")]
    TextTooLong { field: &'static str, len: usize },
    #[error("{field} has {len} entries, more than {max}")]
    TooMany {
        field: &'static str,
        len: usize,
        max: usize,
    },
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_limit::<MAX_FRAME_BYTES>()
}

/// The kinds of message, each with its wire number: the one table the encoder, the decoder and
/// the names use. A number is never reused for another kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Hello = 1,
    OpenSession = 2,
    SessionOpened = 3,
    Step = 4,
    Forward = 5,
    Token = 6,
    Error = 7,
    Close = 8,
    GetModelInfo = 9,
    ModelInfo = 10,
    Truncate = 11,
    Redirect = 12,
    Ack = 13,
    Leaving = 14,
    Admit = 15,
    ExpertCall = 16,
    ExpertOut = 17,
}

impl Kind {
    pub const ALL: [Kind; 17] = [
        Kind::Hello,
        Kind::OpenSession,
        Kind::SessionOpened,
        Kind::Step,
        Kind::Forward,
        Kind::Token,
        Kind::Error,
        Kind::Close,
        Kind::GetModelInfo,
        Kind::ModelInfo,
        Kind::Truncate,
        Kind::Redirect,
        Kind::Ack,
        Kind::Leaving,
        Kind::Admit,
        Kind::ExpertCall,
        Kind::ExpertOut,
    ];

    /// The kind a wire number names; `None` for a number no kind has.
    pub fn from_wire(n: u8) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| *k as u8 == n)
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Hello => "hello",
            Kind::OpenSession => "open-session",
            Kind::SessionOpened => "session-opened",
            Kind::Step => "step",
            Kind::Forward => "forward",
            Kind::Token => "token",
            Kind::Error => "error",
            Kind::Close => "close",
            Kind::GetModelInfo => "get-model-info",
            Kind::ModelInfo => "model-info",
            Kind::Truncate => "truncate",
            Kind::Redirect => "redirect",
            Kind::Ack => "ack",
            Kind::Leaving => "leaving",
            Kind::Admit => "admit",
            Kind::ExpertCall => "expert-call",
            Kind::ExpertOut => "expert-out",
        }
    }
}

impl Message {
    pub fn kind(&self) -> Kind {
        match self {
            Message::Hello(_) => Kind::Hello,
            Message::OpenSession(_) => Kind::OpenSession,
            Message::SessionOpened(_) => Kind::SessionOpened,
            Message::Step(_) => Kind::Step,
            Message::Forward(_) => Kind::Forward,
            Message::Token(_) => Kind::Token,
            Message::Error(_) => Kind::Error,
            Message::Close(_) => Kind::Close,
            Message::GetModelInfo(_) => Kind::GetModelInfo,
            Message::ModelInfo(_) => Kind::ModelInfo,
            Message::Truncate(_) => Kind::Truncate,
            Message::Redirect(_) => Kind::Redirect,
            Message::Ack(_) => Kind::Ack,
            Message::Leaving(_) => Kind::Leaving,
            Message::Admit(_) => Kind::Admit,
            Message::ExpertCall(_) => Kind::ExpertCall,
            Message::ExpertOut(_) => Kind::ExpertOut,
        }
    }

    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// The frame body: kind byte and payload.
    pub fn encode_body(&self) -> Vec<u8> {
        fn put<T: Serialize>(out: &mut Vec<u8>, m: &T) {
            // Writing our own in-memory values into a Vec cannot fail short of running out of
            // memory; an oversized message is refused when it is framed.
            let _ = bincode::serde::encode_into_std_write(m, out, config());
        }
        let mut out = vec![self.kind() as u8];
        match self {
            Message::Hello(m) => put(&mut out, m),
            Message::OpenSession(m) => put(&mut out, m),
            Message::SessionOpened(m) => put(&mut out, m),
            Message::Step(m) => put(&mut out, m),
            Message::Forward(m) => put(&mut out, m),
            Message::Token(m) => put(&mut out, m),
            Message::Error(m) => put(&mut out, m),
            Message::Close(m) => put(&mut out, m),
            Message::GetModelInfo(m) => put(&mut out, m),
            Message::ModelInfo(m) => put(&mut out, m),
            Message::Truncate(m) => put(&mut out, m),
            Message::Redirect(m) => put(&mut out, m),
            Message::Ack(m) => put(&mut out, m),
            Message::Leaving(m) => put(&mut out, m),
            Message::Admit(m) => put(&mut out, m),
            Message::ExpertCall(m) => put(&mut out, m),
            Message::ExpertOut(m) => put(&mut out, m),
        }
        out
    }

    /// A whole frame: length prefix and body. Refuses a body over the limit.
    pub fn encode_frame(&self) -> Result<Vec<u8>, WireError> {
        let body = self.encode_body();
        if body.len() > MAX_FRAME_BYTES {
            return Err(WireError::TooLarge(body.len()));
        }
        let mut out = Vec::with_capacity(4 + body.len());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Decodes a frame body. Never panics, whatever the bytes.
    pub fn decode_body(body: &[u8]) -> Result<Message, WireError> {
        if body.len() > MAX_FRAME_BYTES {
            return Err(WireError::TooLarge(body.len()));
        }
        let (&kind, payload) = body.split_first().ok_or(WireError::Empty)?;
        let kind = Kind::from_wire(kind).ok_or(WireError::UnknownKind(kind))?;
        let name = kind.name();
        fn de<T: serde::de::DeserializeOwned>(
            p: &[u8],
            kind: &'static str,
        ) -> Result<T, WireError> {
            let (v, used) = bincode::serde::decode_from_slice(p, config()).map_err(|e| {
                WireError::Malformed {
                    kind,
                    why: e.to_string(),
                }
            })?;
            if used != p.len() {
                return Err(WireError::Malformed {
                    kind,
                    why: format!("{} bytes left over", p.len() - used),
                });
            }
            Ok(v)
        }
        let msg = match kind {
            Kind::Hello => Message::Hello(de(payload, name)?),
            Kind::OpenSession => Message::OpenSession(de(payload, name)?),
            Kind::SessionOpened => Message::SessionOpened(de(payload, name)?),
            Kind::Step => Message::Step(de(payload, name)?),
            Kind::Forward => Message::Forward(de(payload, name)?),
            Kind::Token => Message::Token(de(payload, name)?),
            Kind::Error => Message::Error(de(payload, name)?),
            Kind::Close => Message::Close(de(payload, name)?),
            Kind::GetModelInfo => Message::GetModelInfo(de(payload, name)?),
            Kind::ModelInfo => Message::ModelInfo(de(payload, name)?),
            Kind::Truncate => Message::Truncate(de(payload, name)?),
            Kind::Redirect => Message::Redirect(de(payload, name)?),
            Kind::Ack => Message::Ack(de(payload, name)?),
            Kind::Leaving => Message::Leaving(de(payload, name)?),
            Kind::Admit => Message::Admit(de(payload, name)?),
            Kind::ExpertCall => Message::ExpertCall(de(payload, name)?),
            Kind::ExpertOut => Message::ExpertOut(de(payload, name)?),
        };
        msg.check_text()?;
        Ok(msg)
    }

    fn check_text(&self) -> Result<(), WireError> {
        let check = |field: &'static str, s: &str| {
            if s.len() > MAX_TEXT {
                Err(WireError::TextTooLong {
                    field,
                    len: s.len(),
                })
            } else {
                Ok(())
            }
        };
        let many = |field: &'static str, len: usize, max: usize| {
            if len > max {
                Err(WireError::TooMany { field, len, max })
            } else {
                Ok(())
            }
        };
        match self {
            Message::Hello(h) => check("name", &h.name),
            Message::OpenSession(o) => {
                check("model_id", &o.model_id)?;
                for n in o.next.iter().chain(&o.ring) {
                    check("next.peer_id", &n.peer_id)?;
                    check("next.addr", &n.addr)?;
                }
                many("stop_ids", o.stop_ids.len(), MAX_STOP_IDS)?;
                many("feeders", o.feeders.len(), MAX_FEEDERS)?;
                many("logit_bias", o.logit_bias.len(), MAX_LOGIT_BIAS)?;
                many("top_logprobs", o.top_logprobs as usize, MAX_TOP_LOGPROBS)?;
                many("prefix", o.prefix.len(), MAX_PREFIX_BLOCKS)?;
                many("prefix_tail", o.prefix_tail as usize, PREFIX_BLOCK - 1)?;
                o.feeders.iter().try_for_each(|f| check("feeders", f))
            }
            Message::Token(t) => {
                many("hop_us", t.hop_us.len(), MAX_HOPS)?;
                many("top", t.top.len(), MAX_TOP_LOGPROBS)
            }
            Message::Admit(a) => check("peer_id", &a.peer_id),
            Message::Redirect(r) => {
                check("next.peer_id", &r.next.peer_id)?;
                check("next.addr", &r.next.addr)
            }
            Message::Error(e) => check("message", &e.message),
            Message::Forward(f) => many("hop_us", f.hop_us.len(), MAX_HOPS),
            Message::GetModelInfo(g) => check("model_id", &g.model_id),
            Message::ExpertCall(c) => {
                check("model_id", &c.model_id)?;
                let max = MAX_WIRE_EXPERTS as usize;
                many("experts", c.experts.len(), max)
            }
            Message::ExpertOut(o) => many("outputs", o.outputs.len(), MAX_WIRE_EXPERTS as usize),
            Message::ModelInfo(m) => {
                check("model_id", &m.model_id)?;
                check("content_hash", &m.content_hash)?;
                let t = &m.tokenizer;
                check("bos", t.bos.as_deref().unwrap_or(""))?;
                check("eos", t.eos.as_deref().unwrap_or(""))?;
                let template = t.chat_template.as_deref().unwrap_or("");
                if template.len() > MAX_TEMPLATE {
                    return Err(WireError::TextTooLong {
                        field: "chat_template",
                        len: template.len(),
                    });
                }
                many("stop_ids", t.stop_ids.len(), MAX_STOP_IDS)
            }
            _ => Ok(()),
        }
    }
}

/// Reads the length prefix of a frame and checks it before the body is read.
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, WireError> {
    let n = u32::from_le_bytes(prefix) as usize;
    if n > MAX_FRAME_BYTES {
        return Err(WireError::TooLarge(n));
    }
    if n == 0 {
        return Err(WireError::Empty);
    }
    Ok(n)
}

#[cfg(test)]
mod tests;
