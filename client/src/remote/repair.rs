//! Repairs of a session's route: which hops are alive, acknowledgements, forgetting a step in
//! flight, replacing a hop (failed, leaving, slow or lying) by another node serving its span.

use baton_protocol::wire::{Admit, Close, Redirect, Step, Truncate};

use super::link::{next_hop, Role};
use super::*;

impl RemoteSession {
    /// Marks hops that have stayed well above their records' claimed speed for a run of decode
    /// steps as leaving: they are moved between steps.
    pub(super) fn check_speed(&mut self, hop_us: &[u32]) {
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

    pub(super) fn names(&self, hops: &[usize]) -> String {
        let n: Vec<String> = hops
            .iter()
            .map(|&k| format!("{} ({})", self.route[k].name, self.route[k].span))
            .collect();
        n.join(", ")
    }

    pub(super) fn record(&mut self, kind: RepairKind, k: usize, old: &Hop, took: Duration) {
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

    /// The hops that do not answer a hello on a new stream in time.
    pub(super) async fn probe(&self) -> Vec<usize> {
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
    pub(super) async fn ack(&mut self, link: u64, what: &'static str) -> Result<(), NetError> {
        let deadline = tokio::time::Instant::now() + REPAIR_WAIT;
        loop {
            let (from, msg) = self
                .next_message(deadline)
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
    pub(super) async fn truncate_alive(&mut self, dead: &[usize]) -> Result<(), NetError> {
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
    pub(super) async fn replace(
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
    pub(super) async fn move_leaving(&mut self) {
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
}
