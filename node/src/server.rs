//! The data plane of a node: sessions of its span over QUIC, chained hop to hop.
//!
//! A client opens a bidirectional stream to every hop of its route and sends `OpenSession`
//! (last hop first), telling each hop where its output goes next. It then sends each `Step` to
//! the first hop only. Every hop runs its span and pushes the hidden states (`Forward`) straight
//! to the next hop; the hop that holds `head` samples and answers the client with `Token` on the
//! client's own stream. One message per hop per step, and nothing relayed through the client.
//!
//! Anything wrong with a message gets an `Error` on the stream it came from, and the node keeps
//! serving its other streams and sessions.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use baton_protocol::wire::{
    ErrorCode, ErrorMsg, Forward, Hello, Message, ModelInfo, NextHop, OpenSession, SessionOpened,
    TokenOut, WireError, MAX_FRAME_BYTES,
};
use baton_protocol::{HiddenStates, Span, WireDtype, PROTOCOL_VERSION};
use tokio::sync::Mutex as AsyncMutex;
use tracing::{debug, info, warn};

use crate::net::{self, Keypair, NetError, PeerId};
use crate::runtime::{Cache, Engine};
use crate::sampling::{log_prob, Sampler};
use crate::{Logits, RunError, SpanInput};

type Send = Arc<AsyncMutex<quinn::SendStream>>;

/// What a node tells about itself and how many sessions it takes.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub name: String,
    pub model_id: String,
    pub max_sessions: usize,
    /// What the node answers `GetModelInfo` with; only a span holding `embed` needs it.
    pub model_info: Option<ModelInfo>,
}

struct Session {
    cache: Cache,
    /// The number the next step must carry.
    seq: u64,
    /// The stream to the next hop, or `None` on the hop that holds `head`.
    next: Option<Send>,
    /// The client's stream, where the head hop answers.
    reply: Send,
    sampler: Sampler,
    wire: WireDtype,
    logprobs: bool,
}

pub struct Server {
    engine: Arc<Engine>,
    key: Keypair,
    endpoint: quinn::Endpoint,
    options: ServerOptions,
    sessions: Mutex<HashMap<u64, Arc<AsyncMutex<Session>>>>,
    /// Connections to next hops, shared by the sessions that go there.
    downstream: AsyncMutex<HashMap<PeerId, quinn::Connection>>,
}

fn error(session: u64, seq: u64, code: ErrorCode, message: impl Into<String>) -> ErrorMsg {
    ErrorMsg {
        session,
        seq,
        code,
        message: message.into(),
    }
}

/// The protocol's name for a failure of the runtime.
fn error_code(e: &RunError) -> ErrorCode {
    match e {
        RunError::NeedsHidden | RunError::NeedsTokens => ErrorCode::WrongSpan,
        RunError::ContextFull { .. } => ErrorCode::TooLarge,
        RunError::TokenId { .. } | RunError::HiddenShape { .. } | RunError::Empty => {
            ErrorCode::Malformed
        }
        _ => ErrorCode::Internal,
    }
}

enum StepInput {
    Tokens(Vec<u32>),
    Hidden(HiddenStates),
}

impl Server {
    /// Binds the data plane on `listen` (port 0 picks a free one).
    pub fn bind(
        engine: Arc<Engine>,
        key: Keypair,
        listen: SocketAddr,
        options: ServerOptions,
    ) -> Result<Arc<Server>, NetError> {
        let endpoint = net::endpoint(&key, listen)?;
        Ok(Arc::new(Server {
            engine,
            key,
            endpoint,
            options,
            sessions: Mutex::new(HashMap::new()),
            downstream: AsyncMutex::new(HashMap::new()),
        }))
    }

    pub fn local_addr(&self) -> Result<SocketAddr, NetError> {
        Ok(self.endpoint.local_addr()?)
    }

    pub fn peer_id(&self) -> PeerId {
        self.key.public().to_peer_id()
    }

    pub fn span(&self) -> Span {
        self.engine.span()
    }

    pub fn max_sessions(&self) -> usize {
        self.options.max_sessions
    }

    /// The model's context length: the KV tokens one session may take.
    pub fn context(&self) -> usize {
        self.engine.context()
    }

    pub fn open_sessions(&self) -> usize {
        self.sessions.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// Accepts connections until the endpoint closes.
    pub async fn serve(self: Arc<Self>) {
        while let Some(incoming) = self.endpoint.accept().await {
            let me = self.clone();
            tokio::spawn(async move {
                match incoming.await {
                    Ok(conn) => me.serve_connection(conn).await,
                    Err(e) => debug!("handshake failed: {e}"),
                }
            });
        }
    }

    /// Stops accepting and closes every connection.
    pub fn shutdown(&self) {
        self.endpoint.close(0u32.into(), b"shutting down");
    }

    async fn serve_connection(self: Arc<Self>, conn: quinn::Connection) {
        let peer = match net::peer_of(&conn) {
            Ok(p) => p,
            Err(e) => {
                warn!("refusing {}: {e}", conn.remote_address());
                return;
            }
        };
        info!("connected: {peer} at {}", conn.remote_address());
        loop {
            match conn.accept_bi().await {
                Ok((send, recv)) => {
                    let me = self.clone();
                    tokio::spawn(async move { me.serve_stream(send, recv).await });
                }
                Err(e) => {
                    info!("disconnected: {peer} ({e})");
                    return;
                }
            }
        }
    }

    async fn reply(send: &Send, msg: Message) {
        if let Err(e) = net::write_msg(&mut *send.lock().await, &msg).await {
            debug!("cannot answer: {e}");
        }
    }

    async fn serve_stream(self: Arc<Self>, send: quinn::SendStream, mut recv: quinn::RecvStream) {
        let send: Send = Arc::new(AsyncMutex::new(send));
        match net::read_msg(&mut recv).await {
            Ok(Some(Message::Hello(h))) if h.version == PROTOCOL_VERSION => {}
            Ok(Some(Message::Hello(h))) => {
                let msg = format!("protocol version {} is not {PROTOCOL_VERSION}", h.version);
                return Self::reply(&send, Message::Error(error(0, 0, ErrorCode::Version, msg)))
                    .await;
            }
            Ok(_) | Err(_) => {
                let msg = "a stream must begin with hello";
                return Self::reply(
                    &send,
                    Message::Error(error(0, 0, ErrorCode::Malformed, msg)),
                )
                .await;
            }
        }
        Self::reply(&send, Message::Hello(Hello::new(&self.options.name))).await;
        let mut opened = Vec::new();
        self.serve_messages(&send, &mut recv, &mut opened).await;
        // A session lives as long as the stream that opened it: when the client (or the hop
        // before) goes away, its caches are freed, and the streams to the next hops close too.
        if let Ok(mut sessions) = self.sessions.lock() {
            for id in opened {
                if sessions.remove(&id).is_some() {
                    info!("session {id:016x} closed: its stream ended");
                }
            }
        }
    }

    /// Answers the messages of one stream until it ends; `opened` collects the sessions it
    /// opened.
    async fn serve_messages(
        &self,
        send: &Send,
        recv: &mut quinn::RecvStream,
        opened: &mut Vec<u64>,
    ) {
        loop {
            let msg = match net::read_msg(recv).await {
                Ok(Some(m)) => m,
                Ok(None) => return,
                // The frame was read whole, so the stream is still in step: answer and go on.
                Err(NetError::Wire(e)) => {
                    let code = match e {
                        WireError::TooLarge(_) => ErrorCode::TooLarge,
                        _ => ErrorCode::Malformed,
                    };
                    Self::reply(send, Message::Error(error(0, 0, code, e.to_string()))).await;
                    if matches!(e, WireError::TooLarge(_)) {
                        // The oversized body was not read: the stream cannot be resynchronized.
                        return;
                    }
                    continue;
                }
                Err(e) => {
                    debug!("stream ended: {e}");
                    return;
                }
            };
            let result = match msg {
                Message::OpenSession(o) => {
                    let id = o.session;
                    let r = self.open(o, send.clone()).await;
                    if r.is_ok() {
                        opened.push(id);
                    }
                    r
                }
                Message::Step(s) => {
                    self.step(s.session, s.seq, StepInput::Tokens(s.tokens), Vec::new())
                        .await
                }
                Message::Forward(f) => {
                    self.step(f.session, f.seq, StepInput::Hidden(f.hidden), f.hop_us)
                        .await
                }
                Message::Close(c) => {
                    if let Ok(mut s) = self.sessions.lock() {
                        if s.remove(&c.session).is_some() {
                            info!("session {:016x} closed", c.session);
                        }
                    }
                    Ok(())
                }
                Message::GetModelInfo(g) => match &self.options.model_info {
                    Some(info) if info.model_id == g.model_id => {
                        Self::reply(send, Message::ModelInfo(info.clone())).await;
                        Ok(())
                    }
                    Some(_) => {
                        let msg = format!("this node serves {}", self.options.model_id);
                        Err(error(0, 0, ErrorCode::WrongModel, msg))
                    }
                    None => Err(error(
                        0,
                        0,
                        ErrorCode::WrongSpan,
                        "this node does not hold embed",
                    )),
                },
                other => Err(error(
                    0,
                    0,
                    ErrorCode::Malformed,
                    format!("unexpected {}", other.name()),
                )),
            };
            if let Err(e) = result {
                debug!("error answered: {e:?}");
                Self::reply(send, Message::Error(e)).await;
            }
        }
    }

    async fn open(&self, o: OpenSession, reply: Send) -> Result<(), ErrorMsg> {
        let fail = |code, msg: String| error(o.session, 0, code, msg);
        if o.model_id != self.options.model_id {
            return Err(fail(
                ErrorCode::WrongModel,
                format!("this node serves {}", self.options.model_id),
            ));
        }
        let span = self.engine.span();
        if o.span != span {
            return Err(fail(
                ErrorCode::WrongSpan,
                format!("this node serves blocks {span}"),
            ));
        }
        if o.max_tokens as usize > self.engine.context() {
            let msg = format!(
                "{} tokens exceed the context of {}",
                o.max_tokens,
                self.engine.context()
            );
            return Err(fail(ErrorCode::TooLarge, msg));
        }
        if self.engine.has_head() != o.next.is_none() {
            let msg = "a next hop is needed exactly when the span does not hold head";
            return Err(fail(ErrorCode::WrongSpan, msg.into()));
        }
        if self.open_sessions() >= self.options.max_sessions {
            return Err(fail(ErrorCode::Busy, "no room for another session".into()));
        }
        let next = match &o.next {
            Some(hop) => Some(
                self.connect_next(o.session, hop, reply.clone())
                    .await
                    .map_err(|e| {
                        fail(ErrorCode::Downstream, format!("next hop {}: {e}", hop.addr))
                    })?,
            ),
            None => None,
        };
        let cache = self
            .engine
            .new_cache()
            .map_err(|e| fail(ErrorCode::Internal, e.to_string()))?;
        let session = Session {
            cache,
            seq: 0,
            next,
            reply: reply.clone(),
            sampler: Sampler::new(o.sampling),
            wire: o.wire_dtype,
            logprobs: o.logprobs,
        };
        let inserted = match self.sessions.lock() {
            Ok(mut sessions) if !sessions.contains_key(&o.session) => {
                sessions.insert(o.session, Arc::new(AsyncMutex::new(session)));
                true
            }
            _ => false,
        };
        if !inserted {
            return Err(fail(
                ErrorCode::Malformed,
                "the session is already open".into(),
            ));
        }
        info!("session {:016x} opened", o.session);
        Self::reply(
            &reply,
            Message::SessionOpened(SessionOpened { session: o.session }),
        )
        .await;
        Ok(())
    }

    /// Opens a stream to the next hop for a session; errors the next hop answers are passed on
    /// to the client.
    async fn connect_next(
        &self,
        session: u64,
        hop: &NextHop,
        client: Send,
    ) -> Result<Send, NetError> {
        let addr: SocketAddr = hop
            .addr
            .parse()
            .map_err(|_| NetError::Protocol(format!("bad address {}", hop.addr)))?;
        let peer: PeerId = hop
            .peer_id
            .parse()
            .map_err(|_| NetError::Protocol(format!("bad peer id {}", hop.peer_id)))?;
        let conn = {
            let mut conns = self.downstream.lock().await;
            match conns.get(&peer).filter(|c| c.close_reason().is_none()) {
                Some(c) => c.clone(),
                None => {
                    let c = net::connect(&self.endpoint, &self.key, addr, peer).await?;
                    conns.insert(peer, c.clone());
                    c
                }
            }
        };
        let (mut send, mut recv) = conn.open_bi().await?;
        net::write_msg(&mut send, &Message::Hello(Hello::new(&self.options.name))).await?;
        match net::read_msg(&mut recv).await? {
            Some(Message::Hello(_)) => {}
            Some(Message::Error(e)) => return Err(NetError::Remote(e)),
            _ => return Err(NetError::Protocol("the next hop did not say hello".into())),
        }
        tokio::spawn(async move {
            while let Ok(Some(msg)) = net::read_msg(&mut recv).await {
                if let Message::Error(mut e) = msg {
                    e.session = session;
                    e.code = ErrorCode::Downstream;
                    Self::reply(&client, Message::Error(e)).await;
                }
            }
        });
        Ok(Arc::new(AsyncMutex::new(send)))
    }

    /// Runs one step of a session; `hop_us` holds the compute times of the hops before this one.
    async fn step(
        &self,
        id: u64,
        seq: u64,
        input: StepInput,
        mut hop_us: Vec<u32>,
    ) -> Result<(), ErrorMsg> {
        let fail = |code, msg: String| error(id, seq, code, msg);
        let session = self
            .sessions
            .lock()
            .ok()
            .and_then(|s| s.get(&id).cloned())
            .ok_or_else(|| fail(ErrorCode::UnknownSession, "no such session".into()))?;
        let mut s = session.lock().await;
        if seq != s.seq {
            return Err(fail(
                ErrorCode::OutOfOrder,
                format!("expected step {}", s.seq),
            ));
        }
        let hidden = self.engine.hidden();
        let values;
        let input = match &input {
            StepInput::Tokens(t) => SpanInput::Tokens(t),
            StepInput::Hidden(h) => {
                if h.hidden as usize != hidden {
                    let msg = format!("hidden states must be {hidden} wide");
                    return Err(fail(ErrorCode::Malformed, msg));
                }
                values = h
                    .decode(MAX_FRAME_BYTES / 2)
                    .map_err(|e| fail(ErrorCode::Malformed, e.to_string()))?;
                SpanInput::Hidden(&values)
            }
        };
        let started = std::time::Instant::now();
        let cache = &mut s.cache;
        let out = tokio::task::block_in_place(|| self.engine.run_step(cache, input, Logits::Last))
            .map_err(|e| fail(error_code(&e), e.to_string()))?;
        s.seq += 1;
        let took = started.elapsed();
        debug!("session {id:016x} step {seq}: computed in {took:?}");
        hop_us.push(took.as_micros().min(u32::MAX as u128) as u32);
        match &s.next {
            Some(next) => {
                let tokens = (out.len() / hidden) as u32;
                let msg = Message::Forward(Forward {
                    session: id,
                    seq,
                    hidden: HiddenStates::encode(&out, tokens, hidden as u32, s.wire),
                    hop_us,
                });
                net::write_msg(&mut *next.lock().await, &msg)
                    .await
                    .map_err(|e| fail(ErrorCode::Downstream, e.to_string()))
            }
            None => {
                let token = s.sampler.sample(&out);
                let logprob = s.logprobs.then(|| log_prob(&out, token as usize));
                let msg = Message::Token(TokenOut {
                    session: id,
                    seq,
                    token,
                    logprob,
                    hop_us,
                });
                let reply = s.reply.clone();
                drop(s);
                Self::reply(&reply, msg).await;
                Ok(())
            }
        }
    }
}
