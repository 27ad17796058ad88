//! Checks of route hops, run alongside the generation: a checker is a session on another node
//! serving a route position's span, with a stream of its own. An audit sends it the inputs the
//! route hop had since the last check and compares what it computes with the hop's taps (or,
//! for the head, with the tokens the head sampled). Only the audit of the prompt is waited
//! for, so that no token leaves before the prompt is checked; later ones run while the
//! generation goes on, and what they find is settled between two steps.

use baton_protocol::wire::{Close, Forward, Step, TokenOut};

use super::verify::{decode, merge, Banned, Checked, Piece, Said, Verify, CHECK_WAIT};
use super::*;

/// How long a hop's taps may trail the token of their step.
const TAP_WAIT: Duration = Duration::from_secs(5);

/// A node computing one route position's span again: its link and the link's messages, its
/// own session and step numbers, and how many of the session's positions its cache holds.
pub(super) struct Checker {
    pub hop: Hop,
    pub link: Link,
    rx: mpsc::UnboundedReceiver<(u64, Message)>,
    pub session: u64,
    seq: u64,
    pub upto: usize,
}

/// A check running alongside the generation: the route position, what the route computed over
/// the window, and the task that has the checker compute it.
pub(super) struct Running {
    k: usize,
    route: Checked,
    task: tokio::task::JoinHandle<(Checker, Result<Checked, NetError>)>,
}

impl Running {
    pub fn abort(&self) {
        self.task.abort();
    }
}

/// What an audit of one position saw: from which position, the first position where the
/// route hop and its checker disagree, and what each computed.
pub(super) struct Seen {
    pub from: usize,
    pub bad: usize,
    pub route: Checked,
    pub checker: Checked,
}

/// Why no check could be opened.
pub(super) enum NoChecker {
    /// No other node serves the span.
    NoNode,
    /// The node found failed to open the check.
    Failed(String, NetError),
}

/// Sends a checker its check steps together, then reads their answers in order.
pub(super) async fn check(
    mut c: Checker,
    pieces: Vec<(usize, Piece)>,
) -> (Checker, Result<Checked, NetError>) {
    let out = run_check(&mut c, pieces).await;
    (c, out)
}

async fn run_check(c: &mut Checker, pieces: Vec<(usize, Piece)>) -> Result<Checked, NetError> {
    let first_seq = c.seq;
    for (_, piece) in &pieces {
        let msg = match piece {
            Piece::Tokens(tokens) => Message::Step(Step {
                session: c.session,
                seq: c.seq,
                tokens: tokens.clone(),
                replay: false,
                more: 0,
            }),
            Piece::Hidden(hidden) => Message::Forward(Forward {
                session: c.session,
                seq: c.seq,
                hidden: hidden.clone(),
                hop_us: Vec::new(),
                replay: false,
                more: 0,
            }),
        };
        net::write_msg(&mut c.link.send, &msg).await?;
        c.seq += 1;
    }
    let mut out = Checked {
        from: c.upto,
        ..Checked::default()
    };
    for (i, (start, piece)) in pieces.iter().enumerate() {
        let seq = first_seq + i as u64;
        let (_, msg) = tokio::time::timeout(CHECK_WAIT, c.rx.recv())
            .await
            .map_err(|_| NetError::Timeout(CHECK_WAIT, "a check of a hop"))?
            .ok_or_else(|| NetError::Protocol("the checker closed its stream".into()))?;
        match msg {
            Message::Forward(f) if f.session == c.session && f.seq == seq => {
                out.width = f.hidden.hidden as usize;
                out.hidden.extend(decode(&f.hidden)?);
            }
            Message::Token(t) if t.session == c.session && t.seq == seq => {
                out.tokens.push(Said {
                    at: *start,
                    token: t.token,
                    logprob: t.logprob,
                });
            }
            Message::Error(e) => return Err(NetError::Remote(e)),
            other => {
                return Err(NetError::Protocol(format!(
                    "a checker answered {}",
                    other.name()
                )))
            }
        }
        c.upto = start + piece.len();
    }
    Ok(out)
}

pub(super) async fn close_link(link: &mut Link, session: u64) {
    let _ = net::write_msg(&mut link.send, &Message::Close(Close { session })).await;
    let _ = link.send.finish();
}

impl RemoteSession {
    /// Turns hop checks on, with `options.verify` as the share of steps after which they run
    /// and `banned` for the nodes found lying. Called before the first step.
    pub fn verify_with(&mut self, banned: Banned) {
        if self.options.verify > 0.0 {
            self.verify = Some(Verify::new(self.options.verify, self.route.len(), banned));
        }
    }

    /// Keeps a route hop's tap; gives back every other message.
    pub(super) fn absorb(&mut self, from: u64, msg: Message) -> Option<Message> {
        if let Message::Forward(f) = &msg {
            if f.session == self.id {
                if let (Some(k), Some(v)) = (self.hop_of_link(from), self.verify.as_mut()) {
                    if let Some(t) = v.taps.get_mut(k) {
                        t.insert(f.seq, f.hidden.clone());
                    }
                    return None;
                }
            }
        }
        Some(msg)
    }

    /// Records a step that ran: its number, first position, and the token sampled after it.
    pub(super) fn ran_step(&mut self, seq: u64, first: usize, t: &TokenOut) {
        if let Some(v) = self.verify.as_mut() {
            v.steps.push((seq, first));
            v.tokens.insert(seq, (t.token, t.logprob));
        }
    }

    /// Waits (up to `wait`) until every tap of the steps up to `last` is in.
    pub(super) async fn wait_taps(&mut self, last: u64, wait: Duration) -> Result<(), NetError> {
        let deadline = tokio::time::Instant::now() + wait;
        while !self.verify.as_ref().is_none_or(|v| v.taps_in(last)) {
            let (link, msg) = tokio::time::timeout_at(deadline, self.inbox.recv())
                .await
                .map_err(|_| NetError::Timeout(wait, "a hop's tap"))?
                .ok_or_else(|| NetError::Protocol("every hop closed its stream".into()))?;
            // Anything else (the token of a step the head hop started) waits for its reader.
            if let Some(msg) = self.absorb(link, msg) {
                self.early.push_back((link, msg));
            }
        }
        Ok(())
    }

    /// The check steps that give route position `k`'s span the inputs its hop had over
    /// `window`, and what the route computed there; `None` while a tap is missing.
    pub(super) fn check_input(
        &self,
        k: usize,
        from: usize,
        window: &[(u64, usize, usize)],
    ) -> Option<(Vec<(usize, Piece)>, Checked)> {
        let v = self.verify.as_ref()?;
        let head = k + 1 == self.route.len();
        let inputs: Vec<(usize, Piece)> = if k == 0 {
            window
                .iter()
                .map(|&(_, a, b)| (a, Piece::Tokens(self.fed[a..b].to_vec())))
                .collect()
        } else {
            let outs = v.outputs(k - 1, window)?;
            window
                .iter()
                .map(|w| w.1)
                .zip(outs.into_iter().map(Piece::Hidden))
                .collect()
        };
        // The head is checked by its token after each step: one check step per step.
        let pieces = if head { inputs } else { merge(inputs) };
        let route = if head {
            v.said(from, window)
        } else {
            Checked::of(from, v.outputs(k, window)?).ok()?
        };
        Some((pieces, route))
    }

    /// Opens a check of route position `k` on another node serving its span (none of the
    /// route, the other checkers, `also` or the banned).
    pub(super) async fn open_checker(
        &mut self,
        k: usize,
        also: &[PeerId],
    ) -> Result<Checker, NoChecker> {
        let (Some(find), Some(v)) = (self.find.clone(), self.verify.as_ref()) else {
            return Err(NoChecker::NoNode);
        };
        let mut exclude: Vec<PeerId> = self.route.iter().map(|h| h.peer_id).collect();
        exclude.extend(v.checkers.iter().flatten().map(|c| c.hop.peer_id));
        exclude.extend(also);
        if let Ok(b) = v.banned.lock() {
            exclude.extend(b.iter());
        }
        let hop = find(self.route[k].span, exclude)
            .await
            .ok_or(NoChecker::NoNode)?;
        let session = random_id();
        let head = k + 1 == self.route.len();
        let (tx, rx) = mpsc::unbounded_channel();
        let link = self
            .dialer
            .link_to(
                session,
                &self.options,
                &hop,
                Role {
                    tap: !head,
                    ..Role::default()
                },
                tx,
            )
            .await
            .map_err(|e| NoChecker::Failed(hop.name.clone(), e))?;
        Ok(Checker {
            hop,
            link,
            rx,
            session,
            seq: 0,
            upto: 0,
        })
    }

    /// Called after every step (`t` its token; `in_control`: the head hop started no step of
    /// its own): starts the audit that is due once its taps are in, and settles what finished
    /// checks found. After the prompt the audit is waited for. Returns the token to give the
    /// caller: `t`, or after a lying hop was replaced, the token of the steps run again.
    pub(super) async fn audit_point(
        &mut self,
        t: TokenOut,
        in_control: bool,
    ) -> Result<TokenOut, NetError> {
        let Some(v) = self.verify.as_mut() else {
            return Ok(t);
        };
        let done = self.seq.saturating_sub(1);
        let overdue = if v.due(done) {
            v.pending.replace(done)
        } else {
            None
        };
        if let Some(overdue) = overdue {
            self.taps_due(overdue).await;
        }
        let prompt = done == 0;
        if let Some(last) = self.verify.as_ref().and_then(|v| v.pending) {
            if prompt {
                self.taps_due(last).await;
            }
            if self.verify.as_ref().is_some_and(|v| v.taps_in(last)) {
                self.start_checks(last).await;
                if let Some(v) = self.verify.as_mut() {
                    v.pending = None;
                }
            }
        }
        self.collect(prompt).await;
        if in_control {
            if let Some((k, c, seen)) = self.verify.as_mut().and_then(|v| v.found.take()) {
                return self.settle(k, c, seen, t).await;
            }
        }
        Ok(t)
    }

    /// Waits for the taps of the steps up to `last` (the prompt's, or an audit's that has not
    /// started by the next one); hops that still send none are moved, and what their taps
    /// would check goes unchecked.
    async fn taps_due(&mut self, last: u64) {
        if self.wait_taps(last, TAP_WAIT).await.is_ok() {
            return;
        }
        let Some(v) = self.verify.as_ref() else {
            return;
        };
        for j in v.missing_taps(last) {
            self.event(&format!(
                "{} sends no copies of its output; its blocks go unchecked and it is moved",
                self.names(&[j])
            ));
            if let Some(v) = self.verify.as_mut() {
                v.unchecked[j] = true;
                v.unchecked[j + 1] = true;
            }
            if !self.leaving.contains(&j) {
                self.leaving.push(j);
            }
        }
    }

    /// Starts a check of every position with none running, over the steps since its last one
    /// up to step `last`.
    async fn start_checks(&mut self, last: u64) {
        let greedy = self.options.sampling.temperature <= 0.0;
        for k in 0..self.route.len() {
            let head = k + 1 == self.route.len();
            let Some(v) = self.verify.as_mut() else {
                return;
            };
            if v.unchecked[k] || head && !greedy || v.running.iter().any(|r| r.k == k) {
                continue;
            }
            let c = match v.checkers[k].take() {
                Some(c) => c,
                None => match self.open_checker(k, &[]).await {
                    Ok(c) => c,
                    Err(NoChecker::NoNode) => {
                        self.event(&format!(
                            "no other node serves blocks {}: they go unchecked",
                            self.route[k].span
                        ));
                        if let Some(v) = self.verify.as_mut() {
                            v.unchecked[k] = true;
                        }
                        continue;
                    }
                    // Tried again at the next audit.
                    Err(NoChecker::Failed(name, e)) => {
                        self.event(&format!("{name} could not check blocks: {e}"));
                        continue;
                    }
                },
            };
            let Some(v) = self.verify.as_ref() else {
                return;
            };
            let window = v.window(c.upto, last, self.fed.len());
            let input = self.check_input(k, c.upto, &window);
            let Some(v) = self.verify.as_mut() else {
                return;
            };
            match input {
                Some((pieces, route)) if !pieces.is_empty() => {
                    let task = tokio::spawn(check(c, pieces));
                    v.running.push(Running { k, route, task });
                }
                _ => v.checkers[k] = Some(c),
            }
        }
    }

    /// Takes the results of finished checks (of all, waiting, with `wait`): agreeing checkers
    /// go back to their positions, the first disagreement is kept to settle.
    async fn collect(&mut self, wait: bool) {
        let Some(v) = self.verify.as_mut() else {
            return;
        };
        let (done, left): (Vec<Running>, Vec<Running>) = std::mem::take(&mut v.running)
            .into_iter()
            .partition(|r| wait || r.task.is_finished());
        v.running = left;
        for r in done {
            let outcome = r.task.await;
            let Some(v) = self.verify.as_mut() else {
                return;
            };
            match outcome {
                Ok((c, Ok(out))) => match r.route.differs(&out) {
                    None => v.checkers[r.k] = Some(c),
                    Some(bad) if v.found.is_none() => {
                        let seen = Seen {
                            from: r.route.from,
                            bad,
                            route: r.route,
                            checker: out,
                        };
                        v.found = Some((r.k, c, seen));
                    }
                    Some(_) => {
                        let mut c = c;
                        close_link(&mut c.link, c.session).await;
                    }
                },
                Ok((mut c, Err(e))) => {
                    let name = c.hop.name.clone();
                    close_link(&mut c.link, c.session).await;
                    self.event(&format!("checker {name} failed ({e}); dropped"));
                }
                Err(e) => self.event(&format!("a check stopped: {e}")),
            }
        }
    }
}
