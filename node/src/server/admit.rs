//! Opening a session (admission by KV room, the next hop, the ring) and who may touch it
//! afterwards: the stream that opened it, and the feeders it names for its steps.

use super::*;
use crate::prefix::Chain;

impl Server {
    pub(super) async fn open(
        &self,
        o: OpenSession,
        peer: PeerId,
        reply: Send,
    ) -> Result<(), ErrorMsg> {
        let fail = |code, msg: String| error(o.session, 0, code, msg);
        if self.draining.load(Ordering::SeqCst) {
            return Err(fail(ErrorCode::Busy, "the node is shutting down".into()));
        }
        self.check_model(&o.model_id, o.session)?;
        let engine = self.engine();
        let span = engine.span();
        if engine.experts_only() {
            return Err(fail(
                ErrorCode::WrongSpan,
                format!("this node serves experts of blocks {span} only"),
            ));
        }
        if o.span != span {
            return Err(fail(
                ErrorCode::WrongSpan,
                format!("this node serves blocks {span}"),
            ));
        }
        if o.max_tokens as usize > engine.context() {
            let msg = format!(
                "{} tokens exceed the context of {}",
                o.max_tokens,
                engine.context()
            );
            return Err(fail(ErrorCode::TooLarge, msg));
        }
        if let Some((id, b)) = o.logit_bias.iter().find(|(_, b)| !b.is_finite()) {
            let msg = format!("the logit bias of token {id} is {b}, not a finite number");
            return Err(fail(ErrorCode::Malformed, msg));
        }
        // A span without head passes its output on, or (a check of another hop) taps it to
        // the opener; the head hop samples.
        if engine.has_head() && (o.next.is_some() || o.tap)
            || !engine.has_head() && o.next.is_none() && !o.tap
        {
            let msg = "a next hop (or a tap) is needed exactly when the span does not hold head";
            return Err(fail(ErrorCode::WrongSpan, msg.into()));
        }
        if self.open_sessions() >= self.options.max_sessions {
            return Err(fail(ErrorCode::Busy, "no room for another session".into()));
        }
        let cost = engine.kv_cost(o.max_tokens as usize);
        let free = self.kv_tokens_free();
        if cost > free {
            let msg = format!(
                "no KV room: {} tokens asked ({cost} positions of every layer), {free} free",
                o.max_tokens
            );
            return Err(fail(ErrorCode::Busy, msg));
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
        let cache = engine
            .new_cache()
            .map_err(|e| fail(ErrorCode::Internal, e.to_string()))?;
        // A check (`tap`) computes the hop's span again from what it is fed: it reuses nothing.
        let reuse = !o.prefix.is_empty() && !o.tap && self.options.prefix_cache_tokens > 0;
        let chain = Chain {
            hashes: o.prefix.clone(),
            tail: o.prefix_tail,
        };
        let hit = match self.prefixes.lock() {
            Ok(mut store) if reuse => store.reuse(peer, o.wire_dtype, &chain, &cache),
            _ => None,
        };
        let (cache, reused) = match hit {
            Some(h) => (h.cache, Some((h.tokens, h.sent))),
            None => (cache, None),
        };
        let mut session = Session::new(
            engine,
            cache,
            next,
            reply.clone(),
            Sampler::new(o.sampling).with_bias(o.logit_bias.clone()),
            o.wire_dtype,
            o.logprobs,
            o.max_tokens as usize,
        );
        let feeders: Vec<PeerId> = o
            .feeders
            .iter()
            .map(|f| f.parse())
            .collect::<Result<_, _>>()
            .map_err(|_| fail(ErrorCode::Malformed, "a feeder is not a peer id".into()))?;
        session.tap = o.tap;
        session.top_logprobs = o.top_logprobs as usize;
        session.perturb = self.options.fault_perturb;
        if reuse {
            session.keep = Some((peer, chain));
        }
        // The reused positions are step 0, already run.
        let reused = match reused {
            Some((tokens, sent)) => {
                session.ran(0, sent);
                tokens as u32
            }
            None => 0,
        };
        if o.next.is_none() {
            session.ring = o.ring.clone().map(|first| Ring {
                first,
                send: None,
                stop_ids: o.stop_ids.clone(),
            });
        }
        // Admission again, under the lock: other sessions may have opened meanwhile.
        let admitted = match self.sessions.lock() {
            Ok(mut sessions) => {
                let free = self.kv_free_among(&sessions);
                if sessions.contains_key(&o.session) {
                    Err((ErrorCode::Malformed, "the session is already open"))
                } else if sessions.len() >= self.options.max_sessions || cost > free {
                    Err((ErrorCode::Busy, "no room for another session"))
                } else {
                    let slot = Slot {
                        cost,
                        session: Arc::new(AsyncMutex::new(session)),
                        feeders: feeders.clone(),
                    };
                    sessions.insert(o.session, slot);
                    Ok(())
                }
            }
            Err(_) => Err((ErrorCode::Internal, "the session table is broken")),
        };
        admitted.map_err(|(code, why)| fail(code, why.into()))?;
        info!("session {:016x} opened, {reused} tokens reused", o.session);
        let opened = SessionOpened {
            session: o.session,
            reused,
        };
        Self::reply(&reply, Message::SessionOpened(opened)).await;
        Ok(())
    }

    /// Steps come on the stream that opened the session, or from a peer it names as a feeder
    /// (the hop before it): no other peer that learned the session's id can inject any.
    pub(super) fn may_feed(
        &self,
        opened: &[u64],
        peer: PeerId,
        session: u64,
        seq: u64,
    ) -> Result<(), ErrorMsg> {
        if opened.contains(&session) {
            return Ok(());
        }
        let sessions = self.sessions.lock().map_err(|_| {
            error(
                session,
                seq,
                ErrorCode::Internal,
                "the session table is broken",
            )
        })?;
        match sessions.get(&session) {
            None => Err(unknown(session, seq)),
            Some(slot) if slot.feeders.contains(&peer) => Ok(()),
            Some(_) => Err(error(
                session,
                seq,
                ErrorCode::Forbidden,
                "this peer does not feed the session",
            )),
        }
    }
}

/// Truncate, Redirect, Admit and Close are the opener's: they must come on the stream that opened the
/// session (its client's link), never from another stream or peer that learned the id, such as
/// a hop of the route.
pub(super) fn owned(opened: &[u64], session: u64, seq: u64) -> Result<(), ErrorMsg> {
    if opened.contains(&session) {
        Ok(())
    } else {
        let msg = "the session was not opened on this stream";
        Err(error(session, seq, ErrorCode::Forbidden, msg))
    }
}
