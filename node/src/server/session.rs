//! One session on one hop: its KV cache, where its output goes, and what it needs to recover
//! from a failure — the cache position after each step (to forget a step that was in flight)
//! and the hidden states it sent downstream (to rebuild a replacement of the next hop).

use std::sync::Arc;
use std::time::Instant;

use baton_protocol::wire::{ErrorCode, ErrorMsg, NextHop};
use baton_protocol::{HiddenStates, WireDtype};
use tokio::sync::Mutex as AsyncMutex;

use crate::net::PeerId;
use crate::prefix::Chain;
use crate::runtime::{Cache, Engine};
use crate::sampling::Sampler;

pub type Send = Arc<AsyncMutex<quinn::SendStream>>;

/// On the hop that holds `head`: where it feeds the tokens it samples, so that the next step
/// starts without a round trip through the client.
pub struct Ring {
    /// The route's first hop.
    pub first: NextHop,
    /// The stream to it, opened with the first token fed.
    pub send: Option<Send>,
    /// Tokens that end a generation, never fed on.
    pub stop_ids: Vec<u32>,
}

pub struct Session {
    /// The runtime the session's cache belongs to (the node may move to another span).
    pub engine: Arc<Engine>,
    pub cache: Cache,
    /// The number the next step must carry.
    pub seq: u64,
    /// The stream to the next hop, or `None` on the hop that holds `head`.
    pub next: Option<Send>,
    /// The client's stream, where the head hop answers and every hop acknowledges.
    pub reply: Send,
    pub sampler: Sampler,
    pub wire: WireDtype,
    pub logprobs: bool,
    /// With `logprobs`: how many of the likeliest tokens come with each token.
    pub top_logprobs: usize,
    /// The KV tokens the session was admitted for.
    pub max_tokens: usize,
    /// `(step, cache position after it)` for every step, or for the last step of a replay.
    bounds: Vec<(u64, usize)>,
    /// What went to the next hop, step by step.
    sent: Vec<(u64, HiddenStates)>,
    pub last_active: Instant,
    pub ring: Option<Ring>,
    /// Whether each step's output also goes to the opener (see `OpenSession::tap`).
    pub tap: bool,
    /// See `ServerOptions::fault_perturb`.
    pub perturb: f32,
    /// The opener and the blocks of the prompt to keep for reuse once the cache holds them
    /// (see [`crate::prefix`]); dropped when the session rewinds before.
    pub keep: Option<(PeerId, Chain)>,
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        engine: Arc<Engine>,
        cache: Cache,
        next: Option<Send>,
        reply: Send,
        sampler: Sampler,
        wire: WireDtype,
        logprobs: bool,
        max_tokens: usize,
    ) -> Session {
        Session {
            engine,
            cache,
            seq: 0,
            next,
            reply,
            sampler,
            wire,
            logprobs,
            top_logprobs: 0,
            max_tokens,
            bounds: Vec::new(),
            sent: Vec::new(),
            last_active: Instant::now(),
            ring: None,
            tap: false,
            perturb: 0.0,
            keep: None,
        }
    }

    /// Records that step `seq` ran, and what it sends downstream.
    pub fn ran(&mut self, seq: u64, sent: Option<HiddenStates>) {
        self.seq = seq + 1;
        self.bounds.push((seq, self.cache.pos()));
        if let Some(h) = sent {
            self.sent.push((seq, h));
        }
        self.last_active = Instant::now();
    }

    /// Forgets step `seq` and every later one, if they ran.
    pub fn truncate(&mut self, id: u64, seq: u64) -> Result<(), ErrorMsg> {
        if seq >= self.seq {
            return Ok(());
        }
        let pos = match seq.checked_sub(1) {
            None => Some(0),
            Some(before) => self
                .bounds
                .iter()
                .find(|(s, _)| *s == before)
                .map(|(_, p)| *p),
        };
        let pos = pos.ok_or_else(|| ErrorMsg {
            session: id,
            seq,
            code: ErrorCode::OutOfOrder,
            message: format!("step {seq} does not begin at a step this hop ran"),
        })?;
        self.cache.truncate(pos).map_err(|e| ErrorMsg {
            session: id,
            seq,
            code: ErrorCode::OutOfOrder,
            message: format!("step {seq}: {e}"),
        })?;
        self.keep = None;
        self.bounds.retain(|(s, _)| *s < seq);
        self.sent.retain(|(s, _)| *s < seq);
        self.seq = seq;
        Ok(())
    }

    /// Whether the prompt blocks to keep for reuse are all in the cache now.
    pub fn keep_due(&self) -> bool {
        self.keep
            .as_ref()
            .is_some_and(|(_, chain)| self.cache.pos() >= chain.tokens())
    }

    /// Everything sent downstream so far in one piece, if it merges into one.
    pub fn all_sent(&self) -> Option<HiddenStates> {
        let mut it = self.sent.iter();
        let mut all = it.next()?.1.clone();
        it.all(|(_, h)| all.append(h)).then_some(all)
    }

    /// Everything sent downstream, merged into pieces of at most `max_bytes` each (at least
    /// one step each), each with the last step it holds: what a replacement of the next hop
    /// is rebuilt from, with one prefill of its span.
    pub fn replay(&self, max_bytes: usize) -> Vec<(u64, HiddenStates)> {
        let mut out: Vec<(u64, HiddenStates)> = Vec::new();
        for (seq, h) in &self.sent {
            match out.last_mut() {
                Some((last, merged)) if merged.data.len() + h.data.len() <= max_bytes => {
                    if merged.append(h) {
                        *last = *seq;
                        continue;
                    }
                    out.push((*seq, h.clone()));
                }
                _ => out.push((*seq, h.clone())),
            }
        }
        out
    }
}
