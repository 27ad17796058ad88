//! When a route hop and its checker disagree: a third node computes the position's span over
//! the whole session, the node that disagrees with it is banned, and a lying route hop is
//! replaced, with every hop cut back to the first wrong step and the steps since run again.

use baton_protocol::wire::{TokenOut, Truncate};

use super::check::{check, close_link, Checker, Seen};
use super::verify::{decide, Checked, Verdict, CHECK_WAIT};
use super::*;

impl RemoteSession {
    /// Decides between route position `k`'s hop and its checker `c`, which disagree from
    /// position `seen.bad` on; `t` is the token of the step just run. Returns the token to give
    /// the caller.
    pub(super) async fn settle(
        &mut self,
        k: usize,
        mut c: Checker,
        seen: Seen,
        t: TokenOut,
    ) -> Result<TokenOut, NetError> {
        let hop = self.route[k].clone();
        let third = match self.open_checker(k, &[c.hop.peer_id]).await {
            Ok(w) => self.whole_history(k, w).await,
            Err(_) => None,
        };
        // The third node saw the whole session: compare the audited positions only.
        let third = third.map(|(w, out)| (w, out.within(seen.from, seen.route.end())));
        let Some((mut w, third)) = third else {
            self.event(&format!(
                "{} and {} disagree on blocks {} and no third node can decide; the check is \
                 dropped",
                hop.name, c.hop.name, hop.span
            ));
            close_link(&mut c.link, c.session).await;
            return Ok(t);
        };
        let verdict = decide(
            seen.route.differs(&third).is_some(),
            seen.checker.differs(&third).is_some(),
        );
        match verdict {
            Verdict::Checker => {
                self.ban(&c.hop, seen.bad);
                close_link(&mut c.link, c.session).await;
                if let Some(v) = self.verify.as_mut() {
                    v.checkers[k] = Some(w);
                }
                Ok(t)
            }
            Verdict::Undecided => {
                self.event(&format!(
                    "{}, {} and {} all disagree on blocks {}; the check is dropped",
                    hop.name, c.hop.name, w.hop.name, hop.span
                ));
                close_link(&mut c.link, c.session).await;
                close_link(&mut w.link, w.session).await;
                Ok(t)
            }
            Verdict::RouteHop => {
                self.ban(&hop, seen.bad);
                // Both checkers hold positions past the wrong step: they start afresh.
                close_link(&mut c.link, c.session).await;
                close_link(&mut w.link, w.session).await;
                self.redo_from(k, seen.bad).await
            }
        }
    }

    /// Has `w` compute route position `k`'s span over the whole session.
    async fn whole_history(&mut self, k: usize, w: Checker) -> Option<(Checker, Checked)> {
        let last = self.seq.checked_sub(1)?;
        self.wait_taps(last, CHECK_WAIT).await.ok()?;
        let window = self.verify.as_ref()?.window(0, last, self.fed.len());
        let (pieces, _) = self.check_input(k, 0, &window)?;
        match check(w, pieces).await {
            (w, Ok(out)) => Some((w, out)),
            (mut w, Err(e)) => {
                self.event(&format!("third node {} failed: {e}", w.hop.name));
                close_link(&mut w.link, w.session).await;
                None
            }
        }
    }

    fn ban(&mut self, hop: &Hop, position: usize) {
        self.event(&format!(
            "{} ({}) computed blocks {} wrong from position {position} (two other nodes agree \
             against it): banned",
            hop.name, hop.peer_id, hop.span
        ));
        if let Some(v) = &self.verify {
            if let Ok(mut b) = v.banned.lock() {
                b.insert(hop.peer_id);
            }
        }
        let what = format!("computed blocks {} wrong", hop.span);
        crate::bans::remember(&hop.peer_id, &hop.name, &what);
    }

    /// Replaces the lying hop at route position `k`, after cutting every hop back to the step
    /// holding position `bad`; runs the steps since then again as one and returns its token.
    async fn redo_from(&mut self, k: usize, bad: usize) -> Result<TokenOut, NetError> {
        let Some(v) = self.verify.as_mut() else {
            return Err(NetError::Protocol("no verification".into()));
        };
        let (d, start) = v
            .steps
            .iter()
            .rev()
            .find(|(_, p)| *p <= bad)
            .copied()
            .unwrap_or((0, 0));
        for r in v.running.drain(..) {
            r.abort();
        }
        v.pending = None;
        v.found = None;
        let mut stale = Vec::new();
        for slot in v.checkers.iter_mut() {
            if slot.as_ref().is_some_and(|c| c.upto > start) {
                stale.extend(slot.take());
            }
        }
        v.forget_from(d);
        for mut c in stale {
            close_link(&mut c.link, c.session).await;
        }
        let msg = Message::Truncate(Truncate {
            session: self.id,
            seq: d,
        });
        for j in (0..self.links.len()).filter(|&j| j != k) {
            net::write_msg(&mut self.links[j].send, &msg).await?;
            let id = self.links[j].id;
            self.ack(id, "a cut back to the first wrong step").await?;
        }
        let redo = self.fed.split_off(start.min(self.fed.len()));
        self.seq = d;
        let liar = self.route[k].peer_id;
        self.replace(k, &[liar], &[]).await?;
        self.event(&format!(
            "running the {} token(s) since position {start} again",
            redo.len()
        ));
        let t = self.try_step(&redo, 0, true).await.map_err(|f| match f {
            Failure::Dead(d) => NetError::Protocol(format!(
                "hop(s) {} stopped answering while a wrong hop was replaced",
                self.names(&d)
            )),
            Failure::Route(e) | Failure::Fatal(e) => e,
        })?;
        self.seq += 1;
        self.fed.extend_from_slice(&redo);
        self.ran_step(d, start, &t);
        Ok(t)
    }
}
