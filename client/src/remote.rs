//! A generation across a route of nodes: open a session on every hop, send each step to the
//! first hop only, and receive the sampled token from the hop that holds `head`.
//!
//! The session outlives its hops. When a step goes unanswered, the client asks every hop
//! whether it is alive; the hops that do not answer are replaced by nodes serving the same
//! span. The surviving hops forget the step that was in flight, the hop before each
//! replacement replays into it the hidden states it had sent downstream (the client replays
//! the tokens when the first hop is replaced), and the step runs again: the generation goes on
//! with exactly the tokens it would have had, for one prefill of the failed span. A hop that
//! announces it is leaving is replaced the same way between two steps, with nothing to undo.

use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_node::net::{self, Greeting, Keypair, NetError, PeerId, SwarmKey};
use baton_protocol::wire::{
    Close, ErrorCode, Message, NextHop, OpenSession, Sampling, Step, TokenOut,
};
use baton_protocol::{Span, WireDtype};
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use crate::slow::{SlowHops, SLOW_STEPS};

mod check;
mod link;
mod repair;
mod settle;
mod verify;

use link::{Dialer, Link, Role};

pub use verify::{Banned, TOLERANCE};

/// One hop of a route: who, where, and which blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hop {
    pub peer_id: PeerId,
    pub addr: SocketAddr,
    pub span: Span,
    /// A name for messages.
    pub name: String,
    /// The microseconds per decode step its record claims (0: no claim); a hop that stays
    /// well above it is replaced.
    pub claimed_us: u64,
}

#[derive(Clone, Debug)]
pub struct SessionOptions {
    pub model_id: String,
    pub sampling: Sampling,
    pub wire_dtype: WireDtype,
    /// The most tokens (prompt and generated) the session holds.
    pub max_tokens: u32,
    /// How long a step may take before the session gives up on it.
    pub step_timeout: Duration,
    /// Ask the head hop for each token's log-probability.
    pub logprobs: bool,
    /// With `logprobs`: how many of the likeliest tokens to report with each token (at most
    /// `wire::MAX_TOP_LOGPROBS`).
    pub top_logprobs: u8,
    /// Added to these tokens' logits before sampling.
    pub logit_bias: Vec<(u32, f32)>,
    /// A private swarm's key.
    pub swarm_key: Option<SwarmKey>,
    /// Tokens that end a generation: the head hop does not feed them on as the next step.
    pub stop_ids: Vec<u32>,
    /// The share of steps after which the hops are checked against other nodes (0: never;
    /// see [`RemoteSession::verify_with`]).
    pub verify: f64,
    /// The prompt the session starts with, for prefix reuse: hops that kept the KV cache of
    /// an earlier session of this client whose prompt began with the same blocks start from
    /// it, and [`RemoteSession::fed`] then holds those tokens. Empty, or with `verify`
    /// (checks need every position's hidden states): nothing is reused.
    pub prompt: Vec<u32>,
}

impl SessionOptions {
    /// Greedy sessions of model `model_id` holding up to `max_tokens` tokens, with `wire_dtype`
    /// between hops and nothing else asked for: no log-probabilities, bias, stop tokens,
    /// checks or prompt to reuse, in a public swarm.
    pub fn new(model_id: impl Into<String>, wire_dtype: WireDtype, max_tokens: u32) -> Self {
        SessionOptions {
            model_id: model_id.into(),
            sampling: Sampling::default(),
            wire_dtype,
            max_tokens,
            step_timeout: crate::model::STEP_TIMEOUT,
            logprobs: false,
            top_logprobs: 0,
            logit_bias: Vec::new(),
            swarm_key: None,
            stop_ids: Vec::new(),
            verify: 0.0,
            prompt: Vec::new(),
        }
    }
}

/// Finds a node that serves `span`, other than the peers given: a replacement for a hop.
pub type FindHop = Arc<dyn Fn(Span, Vec<PeerId>) -> BoxFuture<'static, Option<Hop>> + Send + Sync>;

/// What hears about repairs of a session's route.
pub type OnEvent = Box<dyn Fn(&str) + Send + Sync>;

/// Why a hop was replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepairKind {
    /// It stopped answering.
    Failed,
    /// It said it was shutting down.
    Left,
}

/// One hop replaced during a session.
#[derive(Clone, Debug)]
pub struct Repair {
    pub kind: RepairKind,
    pub span: Span,
    pub from: String,
    pub to: String,
    /// From the start of the step that met the failure to its token (for a failure), or how
    /// long the move took between two steps (for a node that left).
    pub took: Duration,
}

/// How long a step may go unanswered before the client checks that every hop is alive.
const PROBE_AFTER: Duration = Duration::from_millis(500);
/// How long a hop has to answer that check, and to acknowledge a repair.
const PROBE_WAIT: Duration = Duration::from_secs(2);
const REPAIR_WAIT: Duration = Duration::from_secs(10);

/// How a step went wrong.
enum Failure {
    /// Hops that did not answer a liveness check.
    Dead(Vec<usize>),
    /// Something a repair may fix (a stream that broke, a hop reporting its next hop gone).
    Route(NetError),
    /// Something no repair fixes (a malformed request, a full context).
    Fatal(NetError),
}

/// A step the head hop started by itself: the token it fed to the first hop, and how many
/// steps it may still start after this one.
struct FedOn {
    tokens: Vec<u32>,
    more: u32,
}

pub struct RemoteSession {
    pub id: u64,
    seq: u64,
    route: Vec<Hop>,
    /// One control stream per hop, in route order.
    links: Vec<Link>,
    dialer: Dialer,
    /// Tokens, acknowledgements and errors from every link, by link id.
    inbox: mpsc::UnboundedReceiver<(u64, Message)>,
    options: SessionOptions,
    /// Every token sent through the session so far: what its KV caches hold.
    fed: Vec<u32>,
    /// Hops that said they are leaving, to move between steps.
    leaving: Vec<usize>,
    /// The step the head hop started after the last one, if it did.
    fed_on: Option<FedOn>,
    find: Option<FindHop>,
    /// Called with a line about each repair.
    pub on_event: Option<OnEvent>,
    /// Whether generations let the head hop feed its tokens on (see [`RemoteSession::step`]);
    /// on by default.
    pub feed_on: bool,
    pub repairs: Vec<Repair>,
    slow: SlowHops,
    verify: Option<verify::Verify>,
    /// Messages taken from the inbox while waiting for taps, for the next reader.
    early: std::collections::VecDeque<(u64, Message)>,
}

fn random_id() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

impl RemoteSession {
    /// Opens the session on every hop, the last first, so that each hop finds its next hop
    /// ready when it connects to it. With `find`, failed and leaving hops are replaced.
    pub async fn open(
        endpoint: &quinn::Endpoint,
        key: &Keypair,
        route: &[Hop],
        options: &SessionOptions,
        find: Option<FindHop>,
    ) -> Result<RemoteSession, NetError> {
        if route.is_empty() {
            return Err(NetError::Protocol("an empty route".into()));
        }
        let id = random_id();
        let (tx, inbox) = mpsc::unbounded_channel();
        let mut dialer = Dialer {
            endpoint: endpoint.clone(),
            key: key.clone(),
            greeting: Greeting {
                name: "baton".into(),
                me: key.public().to_peer_id(),
                swarm_key: options.swarm_key,
            },
            tx,
            next_id: 0,
        };
        let prefix = if options.verify > 0.0 {
            Default::default()
        } else {
            baton_node::prefix::chain(&options.prompt)
        };
        let mut links = Vec::with_capacity(route.len());
        for (i, hop) in route.iter().enumerate().rev() {
            let mut role = Role::in_route(route, i, options.verify > 0.0);
            role.prefix = Some(&prefix);
            let link = dialer
                .link(id, options, hop, role)
                .await
                .map_err(|e| match e {
                    NetError::Remote(error) if error.code == ErrorCode::Busy => NetError::Refused {
                        peer: Box::new(hop.peer_id),
                        error,
                    },
                    // A refusal about the request itself is the same on every node.
                    NetError::Remote(error)
                        if matches!(error.code, ErrorCode::Malformed | ErrorCode::TooLarge) =>
                    {
                        NetError::Remote(error)
                    }
                    e => NetError::HopFailed {
                        peer: Box::new(hop.peer_id),
                        error: Box::new(e),
                    },
                })?;
            links.push(link);
        }
        links.reverse();
        let mut session = RemoteSession {
            id,
            seq: 0,
            route: route.to_vec(),
            links,
            dialer,
            inbox,
            options: options.clone(),
            fed: Vec::new(),
            leaving: Vec::new(),
            fed_on: None,
            find,
            on_event: None,
            feed_on: true,
            repairs: Vec::new(),
            slow: SlowHops::default(),
            verify: None,
            early: Default::default(),
        };
        session.settle_prefix().await?;
        Ok(session)
    }

    /// After opening: the prompt tokens every hop took from an earlier session are step 0,
    /// already run. Where the hops took different numbers, the ones that took any forget
    /// them, and the session starts from nothing.
    async fn settle_prefix(&mut self) -> Result<(), NetError> {
        let reused: Vec<u32> = self.links.iter().map(|l| l.reused).collect();
        let least = reused.iter().copied().min().unwrap_or(0);
        let most = reused.iter().copied().max().unwrap_or(0);
        if least == most && least > 0 && least as usize <= self.options.prompt.len() {
            self.fed = self.options.prompt[..least as usize].to_vec();
            self.seq = 1;
            return Ok(());
        }
        let forget = Message::Truncate(baton_protocol::wire::Truncate {
            session: self.id,
            seq: 0,
        });
        for (k, &n) in reused.iter().enumerate() {
            if n > 0 {
                net::write_msg(&mut self.links[k].send, &forget).await?;
                let id = self.links[k].id;
                self.ack(id, "forgetting a reused prefix").await?;
            }
        }
        Ok(())
    }

    /// The tokens the session's caches hold, in order.
    pub fn fed(&self) -> &[u32] {
        &self.fed
    }

    /// The most tokens the session was opened for.
    pub fn max_tokens(&self) -> usize {
        self.options.max_tokens as usize
    }

    /// The hops in use now.
    pub fn route(&self) -> &[Hop] {
        &self.route
    }

    fn event(&self, line: &str) {
        if let Some(f) = &self.on_event {
            f(line);
        }
    }

    /// The next message from any link: one set aside while waiting for taps, else the inbox's
    /// (`Err` when `until` passes first).
    async fn next_message(
        &mut self,
        until: tokio::time::Instant,
    ) -> Result<Option<(u64, Message)>, tokio::time::error::Elapsed> {
        match self.early.pop_front() {
            Some(m) => Ok(Some(m)),
            None => tokio::time::timeout_at(until, self.inbox.recv()).await,
        }
    }

    fn hop_of_link(&self, link: u64) -> Option<usize> {
        self.links.iter().position(|l| l.id == link)
    }

    /// Runs `tokens` through the route and returns the token the head hop sampled after them,
    /// repairing the route on the way if a hop fails. With `more` > 0 the head hop feeds each
    /// token it samples (but a stop token) straight to the first hop as the next step, up to
    /// `more` steps, without waiting for this client: [`RemoteSession::follow`] returns their
    /// tokens, and must be called (until it returns `None`) before the next `step`.
    pub async fn step(&mut self, tokens: &[u32], more: u32) -> Result<TokenOut, NetError> {
        if self.fed_on.is_some() {
            return Err(NetError::Protocol(
                "the head hop started a step that has not been followed".into(),
            ));
        }
        // The prompt's check is waited for before its token is given out: the head hop may
        // not run ahead of it.
        let more = if self.verify.is_some() && self.seq == 0 {
            0
        } else {
            more
        };
        self.run(tokens.to_vec(), more, true).await
    }

    /// The token of the step the head hop started by itself after the last one, if it did.
    pub async fn follow(&mut self) -> Option<Result<TokenOut, NetError>> {
        let f = self.fed_on.take()?;
        Some(self.run(f.tokens, f.more, false).await)
    }

    /// Whether the hops are running a step this client has not followed: their caches then
    /// hold more than [`RemoteSession::fed`].
    pub fn running_ahead(&self) -> bool {
        self.fed_on.is_some()
    }

    /// Runs a step, sent by this client or (`send` false) started by the head hop.
    async fn run(
        &mut self,
        tokens: Vec<u32>,
        more: u32,
        mut send: bool,
    ) -> Result<TokenOut, NetError> {
        let started = Instant::now();
        let mut repaired: Vec<(usize, Hop)> = Vec::new();
        for attempt in 0.. {
            let failure = match self.try_step(&tokens, more, send).await {
                Ok(mut t) => {
                    let (done, first) = (self.seq, self.fed.len());
                    self.seq += 1;
                    self.fed.extend_from_slice(&tokens);
                    self.ran_step(done, first, &t);
                    if tokens.len() == 1 {
                        self.check_speed(&t.hop_us);
                    }
                    for (k, old) in repaired {
                        self.record(RepairKind::Failed, k, &old, started.elapsed());
                    }
                    let chain = more.checked_sub(1).filter(|_| t.fed_on);
                    if let Some(more) = chain {
                        self.fed_on = Some(FedOn {
                            tokens: vec![t.token],
                            more,
                        });
                    }
                    t = self.audit_point(t, chain.is_none()).await?;
                    // Between two steps of this client's: the time to move leaving hops.
                    if chain.is_none() {
                        self.move_leaving().await;
                    }
                    return Ok(t);
                }
                Err(Failure::Fatal(e)) => return Err(e),
                Err(f) => f,
            };
            let dead = match failure {
                Failure::Dead(d) => d,
                Failure::Route(e) => {
                    let d = self.probe().await;
                    if d.is_empty() {
                        return Err(e);
                    }
                    d
                }
                Failure::Fatal(_) => unreachable!("returned above"),
            };
            if self.find.is_none() || attempt >= 3 {
                return Err(NetError::Protocol(format!(
                    "hop(s) {} stopped answering",
                    self.names(&dead)
                )));
            }
            self.event(&format!(
                "{} stopped answering at step {}; repairing the route",
                self.names(&dead),
                self.seq
            ));
            self.truncate_alive(&dead).await?;
            if let Some(v) = self.verify.as_mut() {
                v.forget_from(self.seq);
            }
            for &k in &dead {
                let old = self.route[k].clone();
                self.replace(k, &[old.peer_id], &dead).await?;
                repaired.push((k, old));
            }
            // The hops forgot the step: this client sends it again.
            send = true;
        }
        unreachable!("the loop returns")
    }

    async fn try_step(
        &mut self,
        tokens: &[u32],
        more: u32,
        send: bool,
    ) -> Result<TokenOut, Failure> {
        let seq = self.seq;
        if send {
            let step = Message::Step(Step {
                session: self.id,
                seq,
                tokens: tokens.to_vec(),
                replay: false,
                more,
            });
            net::write_msg(&mut self.links[0].send, &step)
                .await
                .map_err(Failure::Route)?;
        }
        let start = tokio::time::Instant::now();
        let deadline = start + self.options.step_timeout;
        let mut probed = false;
        loop {
            let until = if probed {
                deadline
            } else {
                deadline.min(start + PROBE_AFTER)
            };
            let (link, msg) = match self.next_message(until).await {
                Ok(Some((link, msg))) => match self.absorb(link, msg) {
                    Some(msg) => (link, msg),
                    None => continue,
                },
                Ok(None) => {
                    return Err(Failure::Route(NetError::Protocol(
                        "every hop closed its stream".into(),
                    )))
                }
                Err(_) if !probed => {
                    probed = true;
                    let dead = self.probe().await;
                    if !dead.is_empty() {
                        return Err(Failure::Dead(dead));
                    }
                    continue;
                }
                Err(_) => {
                    let t = self.options.step_timeout;
                    return Err(Failure::Fatal(NetError::Timeout(t, "a token")));
                }
            };
            // Messages from hops no longer in the route are stale.
            let Some(hop) = self.hop_of_link(link) else {
                continue;
            };
            match msg {
                Message::Token(t) if t.session == self.id && t.seq == seq => return Ok(t),
                Message::Leaving(l) if l.session == self.id => {
                    if !self.leaving.contains(&hop) {
                        self.leaving.push(hop);
                    }
                }
                Message::Error(e) if e.code == ErrorCode::Downstream => {
                    return Err(Failure::Route(NetError::Remote(e)))
                }
                Message::Error(e) if e.seq == seq || e.session == 0 || e.session == self.id => {
                    return Err(Failure::Fatal(NetError::Remote(e)))
                }
                _ => continue,
            }
        }
    }

    /// Frees the session on every hop, and closes the connections it opened, so that the
    /// hops learn at once even if this process exits right after.
    pub async fn close(mut self) {
        if let Some(v) = self.verify.as_mut() {
            for r in v.running.drain(..) {
                r.abort();
            }
            for c in v.checkers.iter_mut().flatten() {
                check::close_link(&mut c.link, c.session).await;
            }
        }
        for l in &mut self.links {
            let _ = net::write_msg(&mut l.send, &Message::Close(Close { session: self.id })).await;
            let _ = l.send.finish();
            l.conn.close(0u32.into(), b"session over");
        }
    }
}
