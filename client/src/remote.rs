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
    Admit, Close, ErrorCode, Message, NextHop, OpenSession, Redirect, Sampling, Step, TokenOut,
    Truncate,
};
use baton_protocol::{Span, WireDtype};
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use crate::slow::{SlowHops, SLOW_STEPS};

mod check;
mod settle;
mod verify;

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
    /// A private swarm's key.
    pub swarm_key: Option<SwarmKey>,
    /// Tokens that end a generation: the head hop does not feed them on as the next step.
    pub stop_ids: Vec<u32>,
    /// The share of steps after which the hops are checked against other nodes (0: never;
    /// see [`RemoteSession::verify_with`]).
    pub verify: f64,
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
/// How long a hop has to open a session (it may connect to its next hop first): a node that
/// stalls here is routed around.
const OPEN_WAIT: Duration = Duration::from_secs(10);

/// The client's stream to one hop.
struct Link {
    id: u64,
    send: quinn::SendStream,
    conn: quinn::Connection,
}

/// What a hop's session does: where its output goes (`next`; the head hop feeds the tokens it
/// samples to `ring`, the route's first hop), who else feeds it steps (`feeder`, the hop
/// before), and whether it taps its output to this client (with no `next`, only there: a
/// check).
#[derive(Clone, Copy, Default)]
struct Role<'a> {
    next: Option<&'a Hop>,
    ring: Option<&'a Hop>,
    feeder: Option<&'a Hop>,
    tap: bool,
}

impl<'a> Role<'a> {
    /// Position `k` of `route`.
    fn in_route(route: &'a [Hop], k: usize, verify: bool) -> Role<'a> {
        let last = k + 1 == route.len();
        Role {
            next: route.get(k + 1),
            ring: last.then(|| &route[0]),
            // The first hop is fed by the head hop, the others by the hop before.
            feeder: if k == 0 {
                route.last()
            } else {
                route.get(k - 1)
            },
            tap: verify && !last,
        }
    }
}

/// What opens links: the endpoint, who we are, and where the links' messages go.
struct Dialer {
    endpoint: quinn::Endpoint,
    key: Keypair,
    greeting: Greeting,
    tx: mpsc::UnboundedSender<(u64, Message)>,
    next_id: u64,
}

impl Dialer {
    /// Opens the session on `hop` in `role`.
    async fn link(
        &mut self,
        session: u64,
        options: &SessionOptions,
        hop: &Hop,
        role: Role<'_>,
    ) -> Result<Link, NetError> {
        let tx = self.tx.clone();
        self.link_to(session, options, hop, role, tx).await
    }

    /// As [`Dialer::link`], with the link's messages going to `tx`.
    async fn link_to(
        &mut self,
        session: u64,
        options: &SessionOptions,
        hop: &Hop,
        role: Role<'_>,
        tx: mpsc::UnboundedSender<(u64, Message)>,
    ) -> Result<Link, NetError> {
        let conn = net::connect(&self.endpoint, &self.key, hop.addr, hop.peer_id).await?;
        let (mut send, mut recv) =
            net::open_stream(&conn, &hop.peer_id, &self.greeting, REPAIR_WAIT).await?;
        let open = OpenSession {
            session,
            model_id: options.model_id.clone(),
            span: hop.span,
            next: role.next.map(next_hop),
            sampling: options.sampling,
            wire_dtype: options.wire_dtype,
            max_tokens: options.max_tokens,
            // The head's log-probabilities let checks see a perturbed head.
            logprobs: options.logprobs || options.verify > 0.0,
            ring: role.ring.map(next_hop),
            stop_ids: options.stop_ids.clone(),
            tap: role.tap,
            feeders: role
                .feeder
                .map(|h| h.peer_id.to_string())
                .into_iter()
                .collect(),
        };
        net::write_msg(&mut send, &Message::OpenSession(open)).await?;
        let wait = options.step_timeout.min(OPEN_WAIT);
        match tokio::time::timeout(wait, net::read_msg(&mut recv)).await {
            Ok(Ok(Some(Message::SessionOpened(o)))) if o.session == session => {}
            Ok(Ok(Some(Message::Error(e)))) => return Err(NetError::Remote(e)),
            Ok(Ok(other)) => {
                return Err(NetError::Protocol(format!(
                    "unexpected answer to open: {other:?}"
                )))
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(NetError::Timeout(wait, "a session to open")),
        }
        let id = self.next_id;
        self.next_id += 1;
        tokio::spawn(async move {
            while let Ok(Some(msg)) = net::read_msg(&mut recv).await {
                if tx.send((id, msg)).is_err() {
                    break;
                }
            }
        });
        Ok(Link { id, send, conn })
    }
}

fn next_hop(h: &Hop) -> NextHop {
    NextHop {
        peer_id: h.peer_id.to_string(),
        addr: h.addr.to_string(),
        span: h.span,
    }
}

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
        let mut links = Vec::with_capacity(route.len());
        for (i, hop) in route.iter().enumerate().rev() {
            let role = Role::in_route(route, i, options.verify > 0.0);
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
        Ok(RemoteSession {
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
        })
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

    /// Marks hops that have stayed well above their records' claimed speed for a run of decode
    /// steps as leaving: they are moved between steps.
    fn check_speed(&mut self, hop_us: &[u32]) {
        let claimed: Vec<u64> = self.route.iter().map(|h| h.claimed_us).collect();
        for k in self.slow.observe(&claimed, hop_us) {
            if self.find.is_none() || self.leaving.contains(&k) {
                continue;
            }
            self.event(&format!(
                "{} took {:.1} ms per step for {SLOW_STEPS} steps, against {:.1} ms its record \
                 claims; moving its blocks",
                self.names(&[k]),
                hop_us.get(k).copied().unwrap_or(0) as f64 / 1e3,
                claimed[k] as f64 / 1e3
            ));
            self.leaving.push(k);
        }
    }

    fn names(&self, hops: &[usize]) -> String {
        let n: Vec<String> = hops
            .iter()
            .map(|&k| format!("{} ({})", self.route[k].name, self.route[k].span))
            .collect();
        n.join(", ")
    }

    fn record(&mut self, kind: RepairKind, k: usize, old: &Hop, took: Duration) {
        let new = &self.route[k];
        let r = Repair {
            kind,
            span: old.span,
            from: old.name.clone(),
            to: new.name.clone(),
            took,
        };
        self.event(&format!(
            "blocks {} moved from {} to {} ({}): {:.0} ms",
            r.span,
            r.from,
            r.to,
            match kind {
                RepairKind::Failed => "it failed; the step was repaired and run again",
                RepairKind::Left => "it is shutting down; moved between steps",
            },
            took.as_secs_f64() * 1e3
        ));
        self.repairs.push(r);
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
            let (link, msg) = match tokio::time::timeout_at(until, self.inbox.recv()).await {
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

    /// The hops that do not answer a hello on a new stream in time.
    async fn probe(&self) -> Vec<usize> {
        let checks = self.links.iter().zip(&self.route).map(|(l, h)| {
            let greeting = &self.dialer.greeting;
            async move {
                l.conn.close_reason().is_none()
                    && net::open_stream(&l.conn, &h.peer_id, greeting, PROBE_WAIT)
                        .await
                        .is_ok()
            }
        });
        let alive = futures_util::future::join_all(checks).await;
        (0..alive.len()).filter(|&k| !alive[k]).collect()
    }

    /// Waits for an `Ack` of this session from `link`.
    async fn ack(&mut self, link: u64, what: &'static str) -> Result<(), NetError> {
        let deadline = tokio::time::Instant::now() + REPAIR_WAIT;
        loop {
            let (from, msg) = tokio::time::timeout_at(deadline, self.inbox.recv())
                .await
                .map_err(|_| NetError::Timeout(REPAIR_WAIT, what))?
                .ok_or_else(|| NetError::Protocol("every hop closed its stream".into()))?;
            let Some(msg) = self.absorb(from, msg) else {
                continue;
            };
            match msg {
                Message::Ack(a) if from == link && a.session == self.id => return Ok(()),
                Message::Error(e) if from == link => return Err(NetError::Remote(e)),
                Message::Leaving(l) if l.session == self.id => {
                    if let Some(k) = self.hop_of_link(from).filter(|k| !self.leaving.contains(k)) {
                        self.leaving.push(k);
                    }
                }
                _ => continue,
            }
        }
    }

    /// Makes every hop but `dead` forget the step in flight.
    async fn truncate_alive(&mut self, dead: &[usize]) -> Result<(), NetError> {
        let msg = Message::Truncate(Truncate {
            session: self.id,
            seq: self.seq,
        });
        for k in 0..self.links.len() {
            if !dead.contains(&k) {
                net::write_msg(&mut self.links[k].send, &msg).await?;
                let id = self.links[k].id;
                self.ack(id, "a truncation").await?;
            }
        }
        Ok(())
    }

    /// Replaces hop `k` by another node serving its span (none of `exclude`), rebuilding the
    /// newcomer's cache from what the hop before it sent (or from the tokens, for the first).
    /// A new first hop is named to the head hop, and the hop the newcomer feeds is told to
    /// take its steps, unless they are among `dead` (they learn it when they are replaced in
    /// turn).
    async fn replace(
        &mut self,
        k: usize,
        exclude: &[PeerId],
        dead: &[usize],
    ) -> Result<(), NetError> {
        let head_alive = !dead.contains(&(self.links.len() - 1));
        let span = self.route[k].span;
        let mut exclude = exclude.to_vec();
        exclude.extend(self.leaving.iter().map(|&h| self.route[h].peer_id));
        let find = self
            .find
            .clone()
            .ok_or_else(|| NetError::Protocol("this session cannot repair its route".into()))?;
        let new = find(span, exclude).await.ok_or(NetError::Uncovered(span))?;
        let mut route = self.route.clone();
        route[k] = new.clone();
        let role = Role::in_route(&route, k, self.options.verify > 0.0);
        let link = self.dialer.link(self.id, &self.options, &new, role).await?;
        let mut link = Some(link);
        if k == 0 {
            let l = link.as_mut().ok_or(NetError::Uncovered(span))?;
            if self.seq > 0 {
                let replay = Message::Step(Step {
                    session: self.id,
                    seq: self.seq - 1,
                    tokens: self.fed.clone(),
                    replay: true,
                    more: 0,
                });
                net::write_msg(&mut l.send, &replay).await?;
                let id = l.id;
                self.ack(id, "the replay of the tokens").await?;
            }
            // The head hop feeds its tokens to the new first hop (a one-hop route's new hop
            // feeds itself).
            let last = self.links.len() - 1;
            if last > 0 && head_alive {
                let redirect = Message::Redirect(Redirect {
                    session: self.id,
                    next: next_hop(&new),
                });
                net::write_msg(&mut self.links[last].send, &redirect).await?;
                let id = self.links[last].id;
                self.ack(id, "a new first hop for the head hop").await?;
            }
        } else {
            let redirect = Message::Redirect(Redirect {
                session: self.id,
                next: next_hop(&new),
            });
            net::write_msg(&mut self.links[k - 1].send, &redirect).await?;
            let id = self.links[k - 1].id;
            self.ack(id, "a redirection").await?;
        }
        // The hop the newcomer feeds takes its steps from now on (the first hop, for a new head
        // hop); one that is down as well learns it when it is replaced in turn.
        let fed = if k + 1 < self.links.len() { k + 1 } else { 0 };
        if fed != k && !dead.contains(&fed) {
            let admit = Message::Admit(Admit {
                session: self.id,
                peer_id: new.peer_id.to_string(),
            });
            net::write_msg(&mut self.links[fed].send, &admit).await?;
            let id = self.links[fed].id;
            self.ack(id, "a new hop before").await?;
        }
        let mut old = match link.take() {
            Some(l) => std::mem::replace(&mut self.links[k], l),
            None => return Err(NetError::Uncovered(span)),
        };
        self.route[k] = new;
        self.leaving.retain(|&h| h != k);
        self.slow.reset(k);
        let _ = net::write_msg(&mut old.send, &Message::Close(Close { session: self.id })).await;
        let _ = old.send.finish();
        Ok(())
    }

    /// Moves the hops that said they are leaving, between two steps.
    async fn move_leaving(&mut self) {
        while let Some(&k) = self.leaving.first() {
            let started = Instant::now();
            let old = self.route[k].clone();
            match self.replace(k, &[old.peer_id], &[]).await {
                Ok(()) => self.record(RepairKind::Left, k, &old, started.elapsed()),
                Err(e) => {
                    self.event(&format!(
                        "{} is leaving but cannot be replaced: {e}",
                        old.name
                    ));
                    self.leaving.retain(|&h| h != k);
                }
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
