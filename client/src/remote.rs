//! A generation across a route of nodes: open a session on every hop, send each step to the
//! first hop only, and receive the sampled token from the hop that holds `head`.

use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::time::Duration;

use baton_node::net::{self, Keypair, NetError, PeerId};
use baton_protocol::wire::{Close, Hello, Message, NextHop, OpenSession, Sampling, Step, TokenOut};
use baton_protocol::{Span, WireDtype};
use tokio::sync::mpsc;

/// One hop of a route: who, where, and which blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hop {
    pub peer_id: PeerId,
    pub addr: SocketAddr,
    pub span: Span,
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
}

pub struct RemoteSession {
    pub id: u64,
    seq: u64,
    /// One control stream per hop, in route order.
    streams: Vec<quinn::SendStream>,
    /// Tokens and errors from every hop.
    inbox: mpsc::UnboundedReceiver<Message>,
    timeout: Duration,
    /// Every token sent through the session so far: what its KV caches hold.
    fed: Vec<u32>,
    max_tokens: usize,
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
    /// ready when it connects to it.
    pub async fn open(
        endpoint: &quinn::Endpoint,
        key: &Keypair,
        route: &[Hop],
        options: &SessionOptions,
    ) -> Result<RemoteSession, NetError> {
        if route.is_empty() {
            return Err(NetError::Protocol("an empty route".into()));
        }
        let id = random_id();
        let (tx, inbox) = mpsc::unbounded_channel();
        let mut streams = Vec::with_capacity(route.len());
        for (i, hop) in route.iter().enumerate().rev() {
            let conn = net::connect(endpoint, key, hop.addr, hop.peer_id).await?;
            let (mut send, mut recv) = conn.open_bi().await?;
            net::write_msg(&mut send, &Message::Hello(Hello::new("baton"))).await?;
            expect_hello(&mut recv).await?;
            let next = route.get(i + 1).map(|n| NextHop {
                peer_id: n.peer_id.to_string(),
                addr: n.addr.to_string(),
                span: n.span,
            });
            let open = OpenSession {
                session: id,
                model_id: options.model_id.clone(),
                span: hop.span,
                next,
                sampling: options.sampling,
                wire_dtype: options.wire_dtype,
                max_tokens: options.max_tokens,
                logprobs: options.logprobs,
            };
            net::write_msg(&mut send, &Message::OpenSession(open)).await?;
            match tokio::time::timeout(options.step_timeout, net::read_msg(&mut recv)).await {
                Ok(Ok(Some(Message::SessionOpened(o)))) if o.session == id => {}
                Ok(Ok(Some(Message::Error(e)))) => return Err(NetError::Remote(e)),
                Ok(Ok(other)) => {
                    return Err(NetError::Protocol(format!(
                        "unexpected answer to open: {other:?}"
                    )))
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(NetError::Timeout(options.step_timeout, "a session to open")),
            }
            let tx = tx.clone();
            // Keep the connection alive as long as this reader runs.
            tokio::spawn(async move {
                let _conn = conn;
                while let Ok(Some(msg)) = net::read_msg(&mut recv).await {
                    if tx.send(msg).is_err() {
                        break;
                    }
                }
            });
            streams.push(send);
        }
        streams.reverse();
        Ok(RemoteSession {
            id,
            seq: 0,
            streams,
            inbox,
            timeout: options.step_timeout,
            fed: Vec::new(),
            max_tokens: options.max_tokens as usize,
        })
    }

    /// Runs `tokens` through the route and returns the token the head hop sampled after them.
    pub async fn step(&mut self, tokens: &[u32]) -> Result<TokenOut, NetError> {
        let seq = self.seq;
        let step = Step {
            session: self.id,
            seq,
            tokens: tokens.to_vec(),
        };
        net::write_msg(&mut self.streams[0], &Message::Step(step)).await?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.inbox.recv())
                .await
                .map_err(|_| NetError::Timeout(self.timeout, "a token"))?
                .ok_or_else(|| NetError::Protocol("every hop closed its stream".into()))?;
            match msg {
                Message::Token(t) if t.session == self.id && t.seq == seq => {
                    self.seq += 1;
                    self.fed.extend_from_slice(tokens);
                    return Ok(t);
                }
                Message::Error(e) => return Err(NetError::Remote(e)),
                _ => continue,
            }
        }
    }

    /// The tokens the session's caches hold, in order.
    pub fn fed(&self) -> &[u32] {
        &self.fed
    }

    /// The most tokens the session was opened for.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Frees the session on every hop.
    pub async fn close(mut self) {
        for s in &mut self.streams {
            let _ = net::write_msg(s, &Message::Close(Close { session: self.id })).await;
            let _ = s.finish();
        }
    }
}

async fn expect_hello(recv: &mut quinn::RecvStream) -> Result<(), NetError> {
    match net::read_msg(recv).await? {
        Some(Message::Hello(_)) => Ok(()),
        Some(Message::Error(e)) => Err(NetError::Remote(e)),
        _ => Err(NetError::Protocol("the node did not say hello".into())),
    }
}
