//! `baton serve`: an OpenAI-compatible HTTP server over a model served by a swarm.
//!
//! Every request is its own session along the swarm, so concurrent requests run concurrently
//! (pipelined through the hops). Streamed answers are server-sent events ending in
//! `data: [DONE]`, as OpenAI's are.

mod logprobs;
pub mod metrics;
mod queue;
pub mod types;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use baton_node::tokenizer::Message;
use baton_protocol::wire::Sampling;
use futures_util::stream::{self, Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tracing::{info, warn};

use baton_node::server::Server;
use metrics::ServeMetrics;

use crate::generate::{generate_remote, Chosen, Generation};
use crate::model::{PromptError, SwarmModel, TokenAsk};
use crate::route::RouteError;
use crate::stop::StopStrings;
use crate::swarm::SwarmError;
use logprobs::Render;
use types::{
    is_unset, ChatRequest, Common, CompletionRequest, Head, Kind, Prompt, Stop, Usage, UNSUPPORTED,
};

/// The roles a chat message may have.
const ROLES: &[&str] = &["system", "developer", "user", "assistant"];

pub struct AppState {
    pub model: SwarmModel,
    started: u64,
    requests: AtomicU64,
    metrics: ServeMetrics,
    /// Nodes inside this process (`--local`), whose metrics `/metrics` includes.
    nodes: Vec<Arc<Server>>,
    /// The most requests that wait for room on the nodes; more are answered 429.
    max_queue: usize,
    /// The line of requests waiting for room: its lock goes to them in turn.
    line: tokio::sync::Mutex<()>,
}

impl AppState {
    pub fn new(model: SwarmModel, nodes: Vec<Arc<Server>>, max_queue: usize) -> Arc<AppState> {
        Arc::new(AppState {
            model,
            started: now(),
            requests: AtomicU64::new(0),
            metrics: ServeMetrics::default(),
            nodes,
            max_queue,
            line: tokio::sync::Mutex::new(()),
        })
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics::handler))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "no such endpoint",
            )
        })
        // Bodies are bounded by `read_body`, which answers 413 in OpenAI's shape.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    code: Option<&'static str>,
    param: Option<String>,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            code: None,
            param: None,
            message: message.into(),
        }
    }

    /// The request field the error is about.
    fn param(mut self, param: impl Into<String>) -> ApiError {
        self.param = Some(param.into());
        self
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    fn code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

impl From<PromptError> for ApiError {
    fn from(e: PromptError) -> ApiError {
        match e {
            PromptError::TooLong { .. } => {
                ApiError::bad_request(e.to_string()).code("context_length_exceeded")
            }
            _ => ApiError::bad_request(e.to_string()),
        }
    }
}

impl From<SwarmError> for ApiError {
    fn from(e: SwarmError) -> ApiError {
        let code = match &e {
            SwarmError::Route(RouteError::Uncovered(_)) => "model_not_covered",
            SwarmError::Route(_) | SwarmError::Empty => "no_route",
            SwarmError::Busy(_) => "server_busy",
            _ => "swarm_error",
        };
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            e.to_string(),
        )
        .code(code)
    }
}

/// The most bytes a request body may have.
const MAX_BODY: usize = 4 << 20;
/// A longer body is still read, up to this many bytes, so that its client gets the 413 rather
/// than a connection reset while it is still sending.
const DRAIN_BODY: usize = 64 << 20;

/// Reads a request body of at most [`MAX_BODY`] bytes.
async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    let mut stream = body.into_data_stream();
    let (mut kept, mut seen) = (Vec::new(), 0usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::bad_request(format!("the request body was cut off: {e}")))?;
        seen = seen.saturating_add(chunk.len());
        if seen <= MAX_BODY {
            kept.extend_from_slice(&chunk);
        } else if seen > DRAIN_BODY {
            break;
        }
    }
    if seen > MAX_BODY {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request body is larger than {} MiB", MAX_BODY >> 20),
        )
        .code("request_too_large"));
    }
    Ok(Bytes::from(kept))
}

/// Parses a JSON body ourselves, so that bad JSON gets OpenAI's error shape.
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid: {e}")))
}

/// A request's settings, checked.
struct Params {
    sampling: Sampling,
    ask: TokenAsk,
    max_tokens: Option<usize>,
    stops: Vec<String>,
    stream: bool,
    include_usage: bool,
}

fn params(state: &AppState, c: Common, kind: Kind) -> Result<Params, ApiError> {
    let model = &state.model;
    if let Some(m) = &c.model {
        if m != &model.name && m != &model.id {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!(
                    "the model `{m}` does not exist; this server serves `{}`",
                    model.name
                ),
            )
            .code("model_not_found"));
        }
    }
    if let Some(field) = UNSUPPORTED
        .iter()
        .find(|f| c.rest.get(**f).is_some_and(|v| !is_unset(v)))
    {
        return Err(
            ApiError::bad_request(format!("`{field}` is not supported by this server"))
                .param(*field)
                .code("unsupported_parameter"),
        );
    }
    let ask = logprobs::ask(
        kind,
        c.logprobs.as_ref(),
        c.top_logprobs.as_ref(),
        c.logit_bias.as_ref(),
        model.info.vocab as usize,
    )
    .map_err(|(field, msg)| ApiError::bad_request(msg).param(field))?;
    if c.n.is_some_and(|n| n != 1) {
        return Err(ApiError::bad_request("only n=1 is supported"));
    }
    let temperature = c.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::bad_request("temperature must be between 0 and 2"));
    }
    let top_p = c.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::bad_request("top_p must be in (0, 1]"));
    }
    let stops = Stop::list(c.stop);
    if stops.len() > 4 {
        return Err(ApiError::bad_request("at most 4 stop strings"));
    }
    // Without a seed, each request samples differently, as OpenAI's do.
    let seed = c
        .seed
        .unwrap_or_else(|| now() ^ state.requests.load(Ordering::Relaxed).wrapping_mul(0x9e37));
    Ok(Params {
        sampling: Sampling {
            temperature,
            top_k: 0,
            top_p,
            seed,
        },
        ask,
        max_tokens: c.max_completion_tokens.or(c.max_tokens).map(|n| n as usize),
        stops,
        stream: c.stream,
        include_usage: c.stream_options.is_some_and(|o| o.include_usage),
    })
}

async fn chat(State(state): State<Arc<AppState>>, body: Body) -> Result<Response, ApiError> {
    let req: ChatRequest = parse(&read_body(body).await?)?;
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.into_iter().enumerate() {
        if !ROLES.contains(&m.role.as_str()) {
            let msg = format!(
                "messages[{i}].role `{}` is not one of {}",
                m.role,
                ROLES.join(", ")
            );
            return Err(ApiError::bad_request(msg).param(format!("messages[{i}].role")));
        }
        let content = match m.content {
            Some(c) => c.text().map_err(ApiError::bad_request)?,
            // An assistant turn may leave its content out; the others say something.
            None if m.role == "assistant" => String::new(),
            None => {
                let msg = format!("messages[{i}].content must not be null for {}", m.role);
                return Err(ApiError::bad_request(msg).param(format!("messages[{i}].content")));
            }
        };
        messages.push(Message {
            role: m.role,
            content,
        });
    }
    if messages.is_empty() {
        return Err(ApiError::bad_request("messages must not be empty"));
    }
    let p = params(&state, req.common, Kind::Chat)?;
    let prompt = state.model.chat_prompt(&messages)?;
    run(state, Kind::Chat, prompt, p).await
}

async fn completions(State(state): State<Arc<AppState>>, body: Body) -> Result<Response, ApiError> {
    let req: CompletionRequest = parse(&read_body(body).await?)?;
    let mut p = params(&state, req.common, Kind::Completion)?;
    // OpenAI's default for completions.
    p.max_tokens.get_or_insert(16);
    let one = || ApiError::bad_request("give one prompt per request").param("prompt");
    let prompt = match req.prompt {
        Prompt::One(t) => state.model.text_prompt(&t)?,
        Prompt::Many(mut v) if v.len() == 1 => state.model.text_prompt(&v.remove(0))?,
        Prompt::Ids(ids) => state.model.id_prompt(ids)?,
        Prompt::ManyIds(mut v) if v.len() == 1 => state.model.id_prompt(v.remove(0))?,
        Prompt::Many(_) | Prompt::ManyIds(_) => return Err(one()),
    };
    run(state, Kind::Completion, prompt, p).await
}

/// What a generation task sends to the response.
enum Out {
    /// New text, and the tokens it completes where their log-probabilities were asked for.
    Text(String, Vec<Chosen>),
    Done(Generation),
    Failed(String),
}

async fn run(
    state: Arc<AppState>,
    kind: Kind,
    prompt: Vec<u32>,
    p: Params,
) -> Result<Response, ApiError> {
    let n = state.requests.fetch_add(1, Ordering::Relaxed);
    let id = format!(
        "{}-{:x}{n:x}",
        if kind == Kind::Chat {
            "chatcmpl"
        } else {
            "cmpl"
        },
        state.started
    );
    let context = state.model.context();
    let room = context - prompt.len();
    let max_tokens = p.max_tokens.unwrap_or(room).min(room);
    if max_tokens == 0 {
        return Err(ApiError::bad_request("max_tokens must be at least 1"));
    }
    let arrived = Instant::now();
    let tokens = prompt.len() + max_tokens;
    let mut session =
        queue::open_in_turn(&state, p.sampling, tokens, &p.ask, &prompt, arrived).await?;
    let running = ServeMetrics::running(&state);
    // Whoever runs the server hears about repairs of a request's route.
    session.on_event = Some(Box::new(|line| eprintln!("{line}")));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let task_state = state.clone();
    let stops = p.stops.clone();
    let asked = p.ask.top_logprobs.is_some();
    tokio::spawn(async move {
        let mut filter = StopStrings::new(stops);
        let text_tx = tx.clone();
        // Tokens whose text the stop strings still hold back, and how many tokens were seen.
        let mut held: Vec<Chosen> = Vec::new();
        let mut seen = 0;
        let mut on_text = |piece: &str, tokens: &[Chosen]| {
            seen += tokens.len();
            if asked {
                held.extend_from_slice(tokens);
            }
            let shown = filter.push(piece);
            let open = shown.is_empty()
                || text_tx
                    .send(Out::Text(shown, std::mem::take(&mut held)))
                    .is_ok();
            open && !filter.stopped()
        };
        let tok = &task_state.model.tok;
        // The hops may have started from an earlier request's prompt: the rest is to be sent.
        let reused = session.fed().len();
        let result = generate_remote(
            &mut session,
            tok,
            &prompt[reused..],
            max_tokens,
            &mut on_text,
        )
        .await
        .map(|mut g| {
            g.prompt_tokens += reused;
            g.cached_tokens = reused;
            g
        });
        session.close().await;
        drop(running);
        let metrics = &task_state.metrics;
        let _ = match result {
            Ok(g) => {
                metrics.done(&g, arrived.elapsed().as_secs_f64());
                let mut rest = filter.finish();
                if filter.stopped() {
                    rest.clear();
                }
                // The tokens not given out yet: held back, or with no text of their own.
                if asked {
                    held.extend(g.tokens.iter().skip(seen).cloned());
                }
                if !rest.is_empty() || !held.is_empty() {
                    let _ = tx.send(Out::Text(rest, held));
                }
                tx.send(Out::Done(g))
            }
            Err(e) => {
                metrics.failed();
                warn!("generation failed: {e}");
                tx.send(Out::Failed(e.to_string()))
            }
        };
    });
    let model = state.model.name.clone();
    let created = now();
    if !p.stream {
        let mut text = String::new();
        while let Some(out) = rx.recv().await {
            match out {
                Out::Text(t, _) => text.push_str(&t),
                Out::Done(g) => {
                    log_done(&id, &g);
                    let head = Head {
                        id: &id,
                        created,
                        model: &model,
                        kind,
                    };
                    let usage = Usage::of(&g);
                    let logprobs = match asked {
                        true => Render::new(kind).value(&state.model.tok, &g.tokens),
                        false => Value::Null,
                    };
                    let finish = g.stop.finish_reason();
                    let body = head.response(&text, finish, usage, logprobs);
                    return Ok(Json(body).into_response());
                }
                Out::Failed(e) => {
                    return Err(ApiError::new(
                        StatusCode::BAD_GATEWAY,
                        "server_error",
                        format!("the swarm failed during generation: {e}"),
                    ))
                }
            }
        }
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "the generation ended without an answer",
        ));
    }
    let first = (kind == Kind::Chat).then(|| {
        let head = Head {
            id: &id,
            created,
            model: &model,
            kind,
        };
        head.role_chunk()
    });
    let include_usage = p.include_usage;
    let events = stream::unfold(Some((rx, Render::new(kind))), move |rx| {
        let (id, model) = (id.clone(), model.clone());
        let state = state.clone();
        async move {
            let (mut rx, mut render) = rx?;
            let head = Head {
                id: &id,
                created,
                model: &model,
                kind,
            };
            let items: Vec<Value> = match rx.recv().await {
                Some(Out::Text(t, tokens)) => {
                    let logprobs = render.value(&state.model.tok, &tokens);
                    vec![head.chunk(Some(&t), None, logprobs)]
                }
                Some(Out::Done(g)) => {
                    log_done(&id, &g);
                    let finish = g.stop.finish_reason();
                    let mut v = vec![head.chunk(None, Some(finish), Value::Null)];
                    if include_usage {
                        v.push(head.usage_chunk(Usage::of(&g)));
                    }
                    return Some((v, None));
                }
                Some(Out::Failed(e)) => {
                    let err = ApiError::new(StatusCode::BAD_GATEWAY, "server_error", e);
                    return Some((vec![err.body()], None));
                }
                None => return None,
            };
            Some((items, Some((rx, render))))
        }
    });
    let stream = stream::iter(first.into_iter().map(|v| vec![v]))
        .chain(events)
        .flat_map(|items| stream::iter(items.into_iter().map(|v| v.to_string())))
        .chain(stream::once(async { "[DONE]".to_string() }))
        .map(|data| Ok::<_, Infallible>(Event::default().data(data)));
    Ok(sse(stream))
}

fn sse(stream: impl Stream<Item = Result<Event, Infallible>> + Send + 'static) -> Response {
    Sse::new(stream).into_response()
}

fn log_done(id: &str, g: &Generation) {
    info!(
        "{id}: {} prompt tokens, {} completion tokens, first token after {:.0} ms, {:.1} tokens/s",
        g.prompt_tokens,
        g.completion_tokens(),
        g.time_to_first_token.as_secs_f64() * 1e3,
        g.decode_tokens_per_s()
    );
}

async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": state.model.name,
            "object": "model",
            "created": state.started,
            "owned_by": "baton",
            "root": state.model.id,
            "max_model_len": state.model.context(),
        }],
    }))
}

async fn health(State(state): State<Arc<AppState>>) -> Json<Value> {
    let route: Vec<Value> = state
        .model
        .route()
        .iter()
        .map(|h| json!({"name": h.record.name, "span": h.record.span.to_string()}))
        .collect();
    Json(json!({"status": "ok", "model": state.model.name, "route": route}))
}
