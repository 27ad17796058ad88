//! The data plane of a node: sessions of its span over QUIC, chained hop to hop.
//!
//! A client opens a bidirectional stream to every hop of its route and sends `OpenSession`
//! (last hop first), telling each hop where its output goes next. It then sends each `Step` to
//! the first hop only. Every hop runs its span and pushes the hidden states (`Forward`) straight
//! to the next hop; the hop that holds `head` samples and answers the client with `Token` on the
//! client's own stream. One message per hop per step, and nothing relayed through the client.
//! While the client wants more tokens (`Step::more`), the head hop also sends each token it
//! samples straight to the first hop as the next step, so that decoding goes round the route
//! without waiting for the client; the client follows the tokens as they come.
//!
//! Anything wrong with a message gets an `Error` on the stream it came from, and the node keeps
//! serving its other streams and sessions.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_protocol::wire::{
    Ack, ErrorCode, ErrorMsg, Leaving, Message, ModelInfo, OpenSession, SessionOpened, WireError,
};
use baton_protocol::{HiddenStates, Span, PROTOCOL_VERSION};
use tokio::sync::Mutex as AsyncMutex;
use tracing::{debug, info, warn};

use crate::net::{self, Keypair, NetError, PeerId};
use crate::prefix::PrefixStore;
use crate::runtime::Engine;
use crate::sampling::Sampler;
use crate::RunError;

mod admit;
mod batch;
mod experts;
mod limits;
mod report;
mod session;
mod steps;

use admit::owned;
pub use batch::PassStats;
pub use limits::RateLimit;
use session::{Ring, Send, Session};

/// How long a peer may take to say hello on a new stream, and to take a message we send it.
const NETWORK_WAIT: Duration = Duration::from_secs(10);

/// What a node tells about itself, and what it admits.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub name: String,
    pub model_id: String,
    pub max_sessions: usize,
    /// The most KV room all sessions together may reserve, in positions of every layer of the
    /// span (a sliding-window layer's positions cost less: see [`Engine::kv_cost`]).
    pub max_kv_tokens: usize,
    /// A session with no step for this long is closed and its KV cache freed.
    pub idle_timeout: Duration,
    /// Messages per second one peer may send (a burst of twice as many is allowed).
    pub peer_rate: f64,
    /// What the node answers `GetModelInfo` with; only a span holding `embed` needs it.
    pub model_info: Option<ModelInfo>,
    /// In a private swarm: the key every peer must prove it holds.
    pub swarm_key: Option<[u8; 32]>,
    /// When set, only these peers are served.
    pub allow: Option<HashSet<PeerId>>,
    /// Fault injection for tests of hop verification: each output value (hidden states, or the
    /// head's logits) is scaled by up to this share, up or down. 0 (the default) computes
    /// honestly.
    pub fault_perturb: f32,
    /// Prefix reuse: the most prompt positions (of every layer of the span) the node keeps
    /// for later sessions of the same client to start from (see [`crate::prefix`]); 0 keeps
    /// none. Their memory is beside the sessions' KV room.
    pub prefix_cache_tokens: usize,
}

/// What [`ServerOptions::prefix_cache_tokens`] is unless set.
pub const PREFIX_CACHE_TOKENS: usize = 4096;

impl ServerOptions {
    /// Defaults for a node named `name` serving `model_id`.
    pub fn new(name: impl Into<String>, model_id: impl Into<String>) -> ServerOptions {
        ServerOptions {
            name: name.into(),
            model_id: model_id.into(),
            max_sessions: 16,
            max_kv_tokens: usize::MAX,
            idle_timeout: Duration::from_secs(300),
            peer_rate: 20_000.0,
            model_info: None,
            swarm_key: None,
            allow: None,
            fault_perturb: 0.0,
            prefix_cache_tokens: PREFIX_CACHE_TOKENS,
        }
    }
}

/// An open session, and the KV room it was admitted for (readable while it steps): the
/// [`Engine::kv_cost`] of its most tokens.
struct Slot {
    cost: usize,
    session: Arc<AsyncMutex<Session>>,
    /// Peers whose streams may send steps besides the one that opened the session.
    feeders: Vec<PeerId>,
}

pub struct Server {
    /// The span's runtime; replaced when the node moves to another span.
    engine: std::sync::RwLock<Arc<Engine>>,
    key: Keypair,
    endpoint: quinn::Endpoint,
    options: ServerOptions,
    sessions: Mutex<HashMap<u64, Slot>>,
    /// Connections to next hops, shared by the sessions that go there.
    downstream: AsyncMutex<HashMap<PeerId, quinn::Connection>>,
    rates: Mutex<HashMap<PeerId, RateLimit>>,
    /// Set when the node is shutting down: no new sessions.
    draining: AtomicBool,
    greeting: net::Greeting,
    /// Runs the steps of all sessions, batched into passes.
    batcher: batch::Batcher,
    /// Prompts kept for reuse.
    prefixes: Arc<Mutex<PrefixStore>>,
    /// Where routed experts the span does not hold run (see [`Server::set_remote`]).
    remote: Mutex<crate::moe::Remote>,
    /// Expert calls answered, and the rows they carried.
    experts_served: (AtomicU64, AtomicU64),
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
        RunError::Experts(_) => ErrorCode::WrongSpan,
        _ => ErrorCode::Internal,
    }
}

enum StepInput {
    Tokens(Vec<u32>),
    Hidden(HiddenStates),
}

/// A step as it arrives: from the client (tokens) or the hop before (hidden states).
struct StepMsg {
    session: u64,
    seq: u64,
    input: StepInput,
    /// Compute times of the hops before this one.
    hop_us: Vec<u32>,
    replay: bool,
    /// Steps the head hop may still start by itself.
    more: u32,
}

impl Server {
    /// What this node needs to call expert peers from its own endpoint and identity.
    pub fn caller(
        &self,
        hidden: usize,
        ffn: usize,
        dht: Option<crate::dht::Dht>,
    ) -> crate::dispatch::Caller {
        crate::dispatch::Caller {
            endpoint: self.endpoint.clone(),
            key: self.key.clone(),
            greeting: self.greeting.clone(),
            model_id: self.options.model_id.clone(),
            hidden,
            ffn,
            dht,
        }
    }

    /// Binds the data plane on `listen` (port 0 picks a free one).
    pub fn bind(
        engine: Arc<Engine>,
        key: Keypair,
        listen: SocketAddr,
        options: ServerOptions,
    ) -> Result<Arc<Server>, NetError> {
        let endpoint = net::endpoint(&key, listen)?;
        let greeting = net::Greeting {
            name: options.name.clone(),
            me: key.public().to_peer_id(),
            swarm_key: options.swarm_key,
        };
        Ok(Arc::new(Server {
            greeting,
            engine: std::sync::RwLock::new(engine),
            key,
            endpoint,
            sessions: Mutex::new(HashMap::new()),
            downstream: AsyncMutex::new(HashMap::new()),
            rates: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            prefixes: Arc::new(Mutex::new(PrefixStore::new(options.prefix_cache_tokens))),
            options,
            batcher: batch::Batcher::start()?,
            remote: Mutex::new(crate::moe::Remote::default()),
            experts_served: Default::default(),
        }))
    }

    /// The runtime of the span served now.
    pub fn engine(&self) -> Arc<Engine> {
        match self.engine.read() {
            Ok(e) => e.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Serves another span from now on: asks the clients of open sessions to move them (up
    /// to `grace`), then swaps the runtime. Sessions still open then are closed.
    pub async fn move_to(&self, engine: Arc<Engine>, grace: Duration) {
        self.drain(grace).await;
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.clear();
        }
        if let Ok(mut kept) = self.prefixes.lock() {
            kept.clear();
        }
        if let Ok(r) = self.remote.lock() {
            engine.set_remote(r.clone());
        }
        match self.engine.write() {
            Ok(mut e) => *e = engine,
            Err(poisoned) => *poisoned.into_inner() = engine,
        }
        self.draining.store(false, Ordering::SeqCst);
    }

    pub fn local_addr(&self) -> Result<SocketAddr, NetError> {
        Ok(self.endpoint.local_addr()?)
    }

    pub fn peer_id(&self) -> PeerId {
        self.key.public().to_peer_id()
    }

    pub fn span(&self) -> Span {
        self.engine().span()
    }

    pub fn max_sessions(&self) -> usize {
        self.options.max_sessions
    }

    /// The model's context length: the KV tokens one session may take.
    pub fn context(&self) -> usize {
        self.engine().context()
    }

    /// What the passes of this node did so far.
    pub fn pass_stats(&self) -> &PassStats {
        &self.batcher.stats
    }

    pub fn open_sessions(&self) -> usize {
        self.sessions.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// KV room still free for new sessions, in positions of every layer of the span.
    pub fn kv_tokens_free(&self) -> usize {
        self.sessions
            .lock()
            .map(|s| self.kv_free_among(&s))
            .unwrap_or(0)
    }

    /// KV room left beside `sessions` (the table, read under its lock).
    fn kv_free_among(&self, sessions: &HashMap<u64, Slot>) -> usize {
        let reserved: usize = sessions.values().map(|x| x.cost).sum();
        self.kv_capacity().saturating_sub(reserved)
    }

    /// The KV room all sessions together may reserve.
    fn kv_capacity(&self) -> usize {
        let longest = self.engine().kv_cost(self.context());
        self.options
            .max_kv_tokens
            .min(self.options.max_sessions.saturating_mul(longest))
    }

    /// Refuses a request for another model than the node serves.
    fn check_model(&self, model_id: &str, session: u64) -> Result<(), ErrorMsg> {
        if model_id == self.options.model_id {
            return Ok(());
        }
        let msg = format!("this node serves {}", self.options.model_id);
        Err(error(session, 0, ErrorCode::WrongModel, msg))
    }

    fn session(&self, id: u64) -> Option<Arc<AsyncMutex<Session>>> {
        self.sessions
            .lock()
            .ok()
            .and_then(|s| s.get(&id).map(|x| x.session.clone()))
    }

    /// Accepts connections until the endpoint closes. Idle sessions are closed meanwhile.
    pub async fn serve(self: Arc<Self>) {
        tokio::spawn(self.clone().close_idle());
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

    /// Refuses new sessions, tells the clients of open ones to move them, and waits (up to
    /// `grace`) until they have.
    pub async fn drain(&self, grace: Duration) {
        self.draining.store(true, Ordering::SeqCst);
        let open: Vec<(u64, Arc<AsyncMutex<Session>>)> = self
            .sessions
            .lock()
            .map(|s| s.iter().map(|(k, v)| (*k, v.session.clone())).collect())
            .unwrap_or_default();
        info!(
            "shutting down: asking the clients of {} session(s) to move",
            open.len()
        );
        for (id, s) in open {
            let reply = s.lock().await.reply.clone();
            Self::reply(&reply, Message::Leaving(Leaving { session: id })).await;
        }
        let start = Instant::now();
        while self.open_sessions() > 0 && start.elapsed() < grace {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left = self.open_sessions();
        if left > 0 {
            warn!("{left} session(s) did not move within {grace:?}");
        }
    }

    /// Frees sessions that have not stepped for the idle timeout.
    async fn close_idle(self: Arc<Self>) {
        let idle = self.options.idle_timeout;
        let every = (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            tokio::time::sleep(every).await;
            let Ok(mut sessions) = self.sessions.lock() else {
                return;
            };
            sessions.retain(|id, x| {
                // A session busy with a step is not idle.
                let stale = x
                    .session
                    .try_lock()
                    .is_ok_and(|s| s.last_active.elapsed() > idle);
                if stale {
                    info!("session {id:016x} closed: idle for {idle:?}");
                }
                !stale
            });
        }
    }

    async fn serve_connection(self: Arc<Self>, conn: quinn::Connection) {
        let peer = match net::peer_of(&conn) {
            Ok(p) => p,
            Err(e) => {
                warn!("refusing {}: {e}", conn.remote_address());
                return;
            }
        };
        if self
            .options
            .allow
            .as_ref()
            .is_some_and(|a| !a.contains(&peer))
        {
            warn!("refusing {peer}: not an allowed peer");
            conn.close(1u32.into(), b"not an allowed peer");
            return;
        }
        info!("connected: {peer} at {}", conn.remote_address());
        loop {
            match conn.accept_bi().await {
                Ok((send, recv)) => {
                    let me = self.clone();
                    tokio::spawn(async move { me.serve_stream(peer, send, recv).await });
                }
                Err(e) => {
                    info!("disconnected: {peer} ({e})");
                    return;
                }
            }
        }
    }

    async fn reply(send: &Send, msg: Message) {
        let mut s = send.lock().await;
        match tokio::time::timeout(NETWORK_WAIT, net::write_msg(&mut s, &msg)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!("cannot answer: {e}"),
            Err(_) => debug!("cannot answer: the peer took nothing for {NETWORK_WAIT:?}"),
        }
    }

    /// Checks the hello that begins every stream: the version, and in a private swarm the
    /// proof that the peer holds the swarm key. Answers with our own hello.
    async fn greet(
        &self,
        peer: PeerId,
        send: &Send,
        recv: &mut quinn::RecvStream,
    ) -> Result<(), ErrorMsg> {
        let first = tokio::time::timeout(NETWORK_WAIT, net::read_msg(recv)).await;
        let hello = match first {
            Ok(Ok(Some(Message::Hello(h)))) => h,
            _ => {
                return Err(error(
                    0,
                    0,
                    ErrorCode::Malformed,
                    "a stream must begin with hello",
                ))
            }
        };
        if hello.version != PROTOCOL_VERSION {
            let msg = format!(
                "protocol version {} is not {PROTOCOL_VERSION}",
                hello.version
            );
            return Err(error(0, 0, ErrorCode::Version, msg));
        }
        if !self.greeting.accepts(&peer, &hello) {
            warn!("refusing {peer}: it does not hold the swarm key");
            return Err(error(
                0,
                0,
                ErrorCode::Forbidden,
                "not a member of this swarm",
            ));
        }
        Self::reply(send, Message::Hello(self.greeting.hello(&peer))).await;
        Ok(())
    }

    async fn serve_stream(
        self: Arc<Self>,
        peer: PeerId,
        send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let send: Send = Arc::new(AsyncMutex::new(send));
        if let Err(e) = self.greet(peer, &send, &mut recv).await {
            return Self::reply(&send, Message::Error(e)).await;
        }
        let mut opened = Vec::new();
        self.serve_messages(peer, &send, &mut recv, &mut opened)
            .await;
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

    /// Whether `peer` may send another message now.
    fn admit_message(&self, peer: PeerId) -> bool {
        let Ok(mut rates) = self.rates.lock() else {
            return false;
        };
        let rate = self.options.peer_rate;
        rates
            .entry(peer)
            .or_insert_with(|| RateLimit::new(rate, 2.0 * rate))
            .take()
    }

    /// Answers the messages of one stream until it ends; `opened` collects the sessions it
    /// opened.
    async fn serve_messages(
        &self,
        peer: PeerId,
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
            if !self.admit_message(peer) {
                let e = error(0, 0, ErrorCode::Busy, "too many messages: slow down");
                Self::reply(send, Message::Error(e)).await;
                continue;
            }
            if let Err(e) = self.handle(msg, peer, send, opened).await {
                debug!("error answered: {e:?}");
                Self::reply(send, Message::Error(e)).await;
            }
        }
    }

    async fn handle(
        &self,
        msg: Message,
        peer: PeerId,
        send: &Send,
        opened: &mut Vec<u64>,
    ) -> Result<(), ErrorMsg> {
        match msg {
            Message::OpenSession(o) => {
                let id = o.session;
                self.open(o, peer, send.clone()).await?;
                opened.push(id);
                Ok(())
            }
            Message::Step(s) => {
                self.may_feed(opened, peer, s.session, s.seq)?;
                self.step(StepMsg {
                    session: s.session,
                    seq: s.seq,
                    input: StepInput::Tokens(s.tokens),
                    hop_us: Vec::new(),
                    replay: s.replay,
                    more: s.more,
                })
                .await
            }
            Message::Forward(f) => {
                self.may_feed(opened, peer, f.session, f.seq)?;
                self.step(StepMsg {
                    session: f.session,
                    seq: f.seq,
                    input: StepInput::Hidden(f.hidden),
                    hop_us: f.hop_us,
                    replay: f.replay,
                    more: f.more,
                })
                .await
            }
            Message::Truncate(t) => {
                owned(opened, t.session, t.seq)?;
                let s = self
                    .session(t.session)
                    .ok_or_else(|| unknown(t.session, t.seq))?;
                let mut s = s.lock().await;
                s.truncate(t.session, t.seq)?;
                let ack = Message::Ack(Ack {
                    session: t.session,
                    seq: s.seq,
                });
                drop(s);
                Self::reply(send, ack).await;
                Ok(())
            }
            Message::Admit(a) => {
                owned(opened, a.session, 0)?;
                let feeder: PeerId = a.peer_id.parse().map_err(|_| {
                    let msg = format!("bad peer id {}", a.peer_id);
                    error(a.session, 0, ErrorCode::Malformed, msg)
                })?;
                let seq = {
                    let mut sessions = self.sessions.lock().map_err(|_| {
                        error(
                            a.session,
                            0,
                            ErrorCode::Internal,
                            "the session table is broken",
                        )
                    })?;
                    let slot = sessions
                        .get_mut(&a.session)
                        .ok_or_else(|| unknown(a.session, 0))?;
                    slot.feeders = vec![feeder];
                    slot.session.clone()
                };
                let seq = seq.lock().await.seq;
                let ack = Message::Ack(Ack {
                    session: a.session,
                    seq,
                });
                Self::reply(send, ack).await;
                Ok(())
            }
            Message::Redirect(r) => {
                owned(opened, r.session, 0)?;
                self.redirect(r.session, &r.next, send).await
            }
            Message::Close(c) => {
                owned(opened, c.session, 0)?;
                opened.retain(|&id| id != c.session);
                if let Ok(mut s) = self.sessions.lock() {
                    if s.remove(&c.session).is_some() {
                        info!("session {:016x} closed", c.session);
                    }
                }
                Ok(())
            }
            Message::ExpertCall(c) => self.expert_call(c, send).await,
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
        }
    }
}

fn unknown(session: u64, seq: u64) -> ErrorMsg {
    error(session, seq, ErrorCode::UnknownSession, "no such session")
}
