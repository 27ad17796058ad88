//! The work on a session's steps: running a span and passing its output on, connecting to the
//! next hop, and moving the output to a new next hop when the old one failed or left.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use baton_protocol::wire::{
    Ack, ErrorCode, ErrorMsg, Forward, Message, NextHop, Step, TokenOut, MAX_FRAME_BYTES,
};
use baton_protocol::HiddenStates;
use tokio::sync::Mutex as AsyncMutex;
use tracing::{debug, info};

use super::batch::Input;
use super::session::Session;
use super::{error, error_code, unknown, Send, Server, StepInput, StepMsg, NETWORK_WAIT};
use crate::net::{self, NetError, PeerId};
use crate::sampling::log_probs;

impl Server {
    /// Opens a stream to the next hop for a session; errors the next hop answers are passed on
    /// to the client.
    pub(super) async fn connect_next(
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
        if self
            .options
            .allow
            .as_ref()
            .is_some_and(|a| !a.contains(&peer))
        {
            return Err(NetError::Protocol(format!("{peer} is not an allowed peer")));
        }
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
        let (send, mut recv) = net::open_stream(&conn, &peer, &self.greeting, NETWORK_WAIT).await?;
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

    /// Sends a session's output to a new next hop, after replaying into it all that went to the
    /// old one: the new hop rebuilds its cache with one prefill of its span.
    pub(super) async fn redirect(
        &self,
        id: u64,
        next: &NextHop,
        send: &Send,
    ) -> Result<(), ErrorMsg> {
        let session = self.session(id).ok_or_else(|| unknown(id, 0))?;
        let mut s = session.lock().await;
        let fail = |code, msg: String| error(id, s.seq, code, msg);
        if s.next.is_none() {
            // The head hop's output goes to the client; what changes is the first hop it feeds
            // tokens to, which the client rebuilt from the tokens itself.
            let seq = s.seq;
            let Some(ring) = s.ring.as_mut() else {
                let msg = "this hop holds head".to_string();
                return Err(error(id, seq, ErrorCode::WrongSpan, msg));
            };
            ring.first = next.clone();
            ring.send = None;
            let ack = Message::Ack(Ack {
                session: id,
                seq: s.seq,
            });
            drop(s);
            Self::reply(send, ack).await;
            return Ok(());
        }
        let stream = self
            .connect_next(id, next, s.reply.clone())
            .await
            .map_err(|e| {
                fail(
                    ErrorCode::Downstream,
                    format!("next hop {}: {e}", next.addr),
                )
            })?;
        let started = Instant::now();
        let mut tokens = 0;
        for (seq, hidden) in s.replay(MAX_FRAME_BYTES / 2) {
            tokens += hidden.tokens;
            let msg = Message::Forward(Forward {
                session: id,
                seq,
                hidden,
                hop_us: Vec::new(),
                replay: true,
                more: 0,
            });
            let mut out = stream.lock().await;
            tokio::time::timeout(NETWORK_WAIT, net::write_msg(&mut out, &msg))
                .await
                .map_err(|_| {
                    fail(
                        ErrorCode::Downstream,
                        "the new next hop took nothing".into(),
                    )
                })?
                .map_err(|e| fail(ErrorCode::Downstream, e.to_string()))?;
        }
        info!(
            "session {id:016x} moved to {} ({tokens} tokens replayed in {:?})",
            next.addr,
            started.elapsed()
        );
        s.next = Some(stream);
        let ack = Message::Ack(Ack {
            session: id,
            seq: s.seq,
        });
        drop(s);
        Self::reply(send, ack).await;
        Ok(())
    }

    pub(super) async fn step(&self, m: StepMsg) -> Result<(), ErrorMsg> {
        let (id, seq) = (m.session, m.seq);
        let fail = |code, msg: String| error(id, seq, code, msg);
        let session = self.session(id).ok_or_else(|| unknown(id, seq))?;
        let s = session.lock_owned().await;
        // A replay catches a new hop up to step `seq`; anything else comes in order.
        let in_order = if m.replay { seq >= s.seq } else { seq == s.seq };
        if !in_order {
            return Err(fail(
                ErrorCode::OutOfOrder,
                format!("expected step {}", s.seq),
            ));
        }
        let engine = s.engine.clone();
        let hidden = engine.hidden();
        let input = match m.input {
            StepInput::Tokens(t) => Input::Tokens(t),
            StepInput::Hidden(h) => {
                if h.hidden as usize != hidden {
                    let msg = format!("hidden states must be {hidden} wide");
                    return Err(fail(ErrorCode::Malformed, msg));
                }
                let values = h
                    .decode(MAX_FRAME_BYTES / 2)
                    .map_err(|e| fail(ErrorCode::Malformed, e.to_string()))?;
                Input::Hidden(values)
            }
        };
        let tokens_in = match &input {
            Input::Tokens(t) => t.len(),
            Input::Hidden(h) => h.len() / hidden.max(1),
        };
        if s.cache.pos() + tokens_in > s.max_tokens {
            let msg = format!("the session was opened for {} tokens", s.max_tokens);
            return Err(fail(ErrorCode::TooLarge, msg));
        }
        let started = Instant::now();
        let done = self
            .batcher
            .step(s, input)
            .await
            .map_err(|e| fail(error_code(&e), e.to_string()))?;
        let mut s = done.session;
        let mut out = done.out.map_err(|e| fail(error_code(&e), e.to_string()))?;
        if s.perturb != 0.0 {
            perturb(&mut out, s.perturb);
        }
        debug!(
            "session {id:016x} step {seq}: done in {:?}, its share of the passes {:?}",
            started.elapsed(),
            done.compute
        );
        // What the step cost this node, not how long it waited or shared its passes: a node
        // serving many sessions is judged against its claim by the share (`client/src/slow.rs`).
        let mut hop_us = m.hop_us;
        hop_us.push(done.compute.as_micros().min(u32::MAX as u128) as u32);
        let sent = (s.next.is_some() || s.tap && !engine.has_head()).then(|| {
            let tokens = (out.len() / hidden) as u32;
            HiddenStates::encode(&out, tokens, hidden as u32, s.wire)
        });
        let passed_on = s.next.is_some();
        s.ran(seq, sent.clone().filter(|_| passed_on));
        if s.keep_due() {
            self.keep_prefix(id);
        }
        if m.replay {
            let ack = Message::Ack(Ack {
                session: id,
                seq: s.seq,
            });
            let reply = s.reply.clone();
            drop(s);
            Self::reply(&reply, ack).await;
            return Ok(());
        }
        match (&s.next, sent) {
            (next, Some(hidden)) => {
                let msg = Message::Forward(Forward {
                    session: id,
                    seq,
                    hidden,
                    hop_us,
                    replay: false,
                    more: m.more,
                });
                if let Some(next) = next {
                    let mut next = next.lock().await;
                    // A next hop that takes nothing is handled as gone: the client repairs the
                    // route.
                    tokio::time::timeout(NETWORK_WAIT, net::write_msg(&mut next, &msg))
                        .await
                        .map_err(|_| {
                            fail(ErrorCode::Downstream, "the next hop takes nothing".into())
                        })?
                        .map_err(|e| fail(ErrorCode::Downstream, e.to_string()))?;
                }
                if s.tap {
                    let reply = s.reply.clone();
                    drop(s);
                    Self::reply(&reply, msg).await;
                }
                Ok(())
            }
            _ => {
                let token = s.sampler.sample_at(&out, seq);
                let (logprob, top) = match s.logprobs {
                    true => {
                        let (lp, top) = log_probs(&out, token, s.top_logprobs);
                        (Some(lp), top)
                    }
                    false => (None, Vec::new()),
                };
                let fed_on = match m.more.checked_sub(1) {
                    Some(more) => self.feed_on(&mut s, id, seq + 1, token, more).await,
                    None => false,
                };
                let msg = Message::Token(TokenOut {
                    session: id,
                    seq,
                    token,
                    logprob,
                    top,
                    hop_us,
                    fed_on,
                });
                let reply = s.reply.clone();
                drop(s);
                Self::reply(&reply, msg).await;
                Ok(())
            }
        }
    }
}

impl Server {
    /// Keeps the prompt blocks of session `id` for later sessions (see [`crate::prefix`]),
    /// once the step that holds the session now has answered: the copy does not delay it.
    fn keep_prefix(&self, id: u64) {
        let (Some(session), store) = (self.session(id), self.prefixes.clone()) else {
            return;
        };
        tokio::spawn(async move {
            let mut s = session.lock().await;
            if !s.keep_due() {
                return;
            }
            let Some((owner, chain)) = s.keep.take() else {
                return;
            };
            // A hop that passes hidden states on keeps what it sent, to rebuild a next hop
            // from.
            let sent = match (s.engine.has_head(), s.all_sent()) {
                (true, _) => None,
                (false, Some(h)) => Some(h),
                (false, None) => return,
            };
            if let Ok(mut store) = store.lock() {
                store.keep(owner, s.wire, &chain, &s.cache, sent.as_ref());
            };
        });
    }

    /// On the head hop: sends `token` to the route's first hop as step `seq`, allowing `more`
    /// after it. False when it does not (no first hop known, a stop token, the first hop out
    /// of reach): the client then sends the step itself.
    async fn feed_on(&self, s: &mut Session, id: u64, seq: u64, token: u32, more: u32) -> bool {
        let reply = s.reply.clone();
        let Some(ring) = s.ring.as_mut() else {
            return false;
        };
        if ring.stop_ids.contains(&token) {
            return false;
        }
        let send = match &ring.send {
            Some(send) => send.clone(),
            None => match self.connect_next(id, &ring.first, reply).await {
                Ok(send) => ring.send.insert(send).clone(),
                Err(e) => {
                    debug!("session {id:016x}: the first hop is out of reach: {e}");
                    return false;
                }
            },
        };
        let msg = Message::Step(Step {
            session: id,
            seq,
            tokens: vec![token],
            replay: false,
            more,
        });
        let mut out = send.lock().await;
        match tokio::time::timeout(NETWORK_WAIT, net::write_msg(&mut out, &msg)).await {
            Ok(Ok(())) => true,
            _ => {
                ring.send = None;
                false
            }
        }
    }
}

/// Scales each value by a factor in `1 ± share`, varying along the row (fault injection).
fn perturb(out: &mut [f32], share: f32) {
    for (i, v) in out.iter_mut().enumerate() {
        let wave = ((i as u32).wrapping_mul(2_654_435_761) >> 16) as f32 / 65_536.0;
        *v *= 1.0 + share * (2.0 * wave - 1.0);
    }
}
