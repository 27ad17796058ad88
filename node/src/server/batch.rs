//! Continuous batching: the steps of all of a node's sessions run together, one pass at a time.
//!
//! Steps wait in a queue; each pass takes every waiting decode step and chunks of longer ones
//! (prompts, replays) up to a budget of tokens, so a long prompt shares passes with everyone
//! else's decode steps rather than stalling them (chunked prefill). Sessions join and leave
//! between passes. A long step is cut into chunks of [`PREFILL_CHUNK`] from its start, whatever
//! shares its passes, so that each step computes exactly what it would alone.
//!
//! [`Planner`] decides what enters a pass and holds no I/O; [`Batcher`] runs passes on a thread
//! of their own and hands each finished step back to the task that queued it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, OwnedMutexGuard};
use tracing::{debug, trace, warn};

use super::session::Session;
use crate::metrics::{self, Histogram};
use crate::pass::is_decode;
use crate::runtime::{Cache, PREFILL_CHUNK};
use crate::{Logits, RunError, SpanInput};

/// Tokens of longer steps one pass takes besides its decode steps.
pub const PREFILL_BUDGET: usize = PREFILL_CHUNK;
/// The most steps one pass takes.
pub const MAX_PASS_STEPS: usize = 256;

/// What a step feeds its span, owned so that it can move to the pass thread.
pub enum Input {
    Tokens(Vec<u32>),
    Hidden(Vec<f32>),
}

impl Input {
    /// Tokens `from..from + n` of the step; `width` is the hidden size.
    fn chunk(&self, from: usize, n: usize, width: usize) -> SpanInput<'_> {
        match self {
            Input::Tokens(t) => SpanInput::Tokens(&t[from..from + n]),
            Input::Hidden(h) => SpanInput::Hidden(&h[from * width..(from + n) * width]),
        }
    }
}

/// A step handed back: the session, and the step's output (the hidden states of every token,
/// or the logits of the last) or why it failed, with the cache then as before the step.
pub struct Done {
    pub session: OwnedMutexGuard<Session>,
    pub out: Result<Vec<f32>, RunError>,
    /// The step's share of the passes it ran in: each pass's time split by tokens. What the
    /// step costs the node, whatever else shared its passes; the time it waited is not in it.
    pub compute: Duration,
}

struct Job {
    session: OwnedMutexGuard<Session>,
    input: Input,
    tokens: usize,
    /// Tokens already run.
    done: usize,
    /// The cache position before the step, to roll back to when it fails.
    start: usize,
    out: Vec<f32>,
    /// Its share of the passes so far (see [`Done::compute`]).
    compute: Duration,
    reply: oneshot::Sender<Done>,
}

/// Counts of what the passes did, for metrics.
pub struct PassStats {
    pub passes: AtomicU64,
    pub steps: AtomicU64,
    pub tokens: AtomicU64,
    /// Steps per pass.
    pub batch: Histogram,
}

impl Default for PassStats {
    fn default() -> Self {
        PassStats {
            passes: AtomicU64::new(0),
            steps: AtomicU64::new(0),
            tokens: AtomicU64::new(0),
            batch: Histogram::new(metrics::STEPS),
        }
    }
}

/// Runs passes on a thread of its own. Dropping it ends the thread once the queue is empty.
pub struct Batcher {
    queue: mpsc::Sender<Job>,
    pub stats: Arc<PassStats>,
}

impl Batcher {
    pub fn start() -> std::io::Result<Batcher> {
        let (queue, rx) = mpsc::channel();
        let stats = Arc::new(PassStats::default());
        let st = stats.clone();
        std::thread::Builder::new()
            .name("baton-pass".into())
            .spawn(move || run(rx, &st))?;
        Ok(Batcher { queue, stats })
    }

    /// Queues a step of `s` and waits for it to finish.
    pub async fn step(
        &self,
        session: OwnedMutexGuard<Session>,
        input: Input,
    ) -> Result<Done, RunError> {
        let tokens = match &input {
            Input::Tokens(t) => t.len(),
            Input::Hidden(h) => session.cache.step_tokens(&SpanInput::Hidden(h))?,
        };
        if tokens == 0 {
            return Err(RunError::Empty);
        }
        session.cache.check_room(tokens)?;
        let (reply, done) = oneshot::channel();
        let start = session.cache.pos();
        let job = Job {
            session,
            input,
            tokens,
            done: 0,
            start,
            out: Vec::new(),
            compute: Duration::ZERO,
            reply,
        };
        self.queue
            .send(job)
            .map_err(|_| RunError::Backend("the pass thread is gone".into()))?;
        done.await
            .map_err(|_| RunError::Backend("the pass thread dropped the step".into()))
    }
}

/// What the next pass takes: indices into the waiting steps, with the tokens each runs.
///
/// Free of I/O: steps are described by their remaining tokens and whether they can share a
/// pass with the first waiting step (the same span).
pub struct Planner {
    pub prefill_budget: usize,
    pub max_steps: usize,
}

impl Default for Planner {
    fn default() -> Self {
        Planner {
            prefill_budget: PREFILL_BUDGET,
            max_steps: MAX_PASS_STEPS,
        }
    }
}

impl Planner {
    /// `waiting[i] = (tokens left, shares a pass with waiting[0])`, in arrival order. The first
    /// step always runs; then every decode-sized chunk, then longer chunks in arrival order
    /// while they fit the budget.
    pub fn plan(&self, waiting: &[(usize, bool)]) -> Vec<(usize, usize)> {
        let chunk = |left: usize| left.min(PREFILL_CHUNK);
        let mut picked: Vec<(usize, usize)> = Vec::new();
        let Some(&(first, _)) = waiting.first() else {
            return picked;
        };
        picked.push((0, chunk(first)));
        let mut prefill = if is_decode(chunk(first)) {
            0
        } else {
            chunk(first)
        };
        let others = waiting.iter().enumerate().skip(1).filter(|(_, w)| w.1);
        for (i, &(left, _)) in others.clone() {
            if is_decode(chunk(left)) && picked.len() < self.max_steps {
                picked.push((i, chunk(left)));
            }
        }
        for (i, &(left, _)) in others {
            let n = chunk(left);
            if !is_decode(n) && prefill + n <= self.prefill_budget && picked.len() < self.max_steps
            {
                picked.push((i, n));
                prefill += n;
            }
        }
        picked.sort_unstable();
        picked
    }
}

fn run(rx: mpsc::Receiver<Job>, stats: &PassStats) {
    let planner = Planner::default();
    let mut waiting: Vec<Job> = Vec::new();
    loop {
        if waiting.is_empty() {
            match rx.recv() {
                Ok(job) => waiting.push(job),
                Err(_) => return,
            }
        }
        waiting.extend(rx.try_iter());
        // A step whose task is gone is dropped before it costs a pass.
        for job in waiting.extract_if(.., |j| j.reply.is_closed()) {
            finish(job, Err(RunError::Backend("abandoned".into())));
        }
        let Some(first) = waiting.first() else {
            continue;
        };
        let shape: Vec<(usize, bool)> = waiting
            .iter()
            .map(|j| {
                (
                    j.tokens - j.done,
                    j.session.cache.same_span(&first.session.cache),
                )
            })
            .collect();
        let picked = planner.plan(&shape);
        stats.passes.fetch_add(1, Ordering::Relaxed);
        stats
            .steps
            .fetch_add(picked.len() as u64, Ordering::Relaxed);
        let tokens: usize = picked.iter().map(|p| p.1).sum();
        stats.tokens.fetch_add(tokens as u64, Ordering::Relaxed);
        stats.batch.observe(picked.len() as f64);
        trace!(
            "pass: {} steps, {tokens} tokens, {} waiting",
            picked.len(),
            waiting.len()
        );
        let started = Instant::now();
        let mut failed = pass(&mut waiting, &picked);
        let took = started.elapsed();
        for &(i, n) in &picked {
            waiting[i].compute += took.mul_f64(n as f64 / tokens.max(1) as f64);
        }
        // Finished steps (and failed ones) leave; the others wait for their next chunk.
        let mut kept = Vec::with_capacity(waiting.len());
        for (i, mut job) in waiting.drain(..).enumerate() {
            if let Some(k) = failed.iter().position(|(f, _)| *f == i) {
                finish(job, Err(failed.swap_remove(k).1));
            } else if job.done == job.tokens {
                let out = std::mem::take(&mut job.out);
                finish(job, Ok(out));
            } else {
                kept.push(job);
            }
        }
        waiting = kept;
    }
}

/// Runs the picked chunks as one pass. When the pass fails, every cache goes back to where it
/// was and each chunk runs alone, so that only a step that fails by itself fails. Returns the
/// failed steps.
fn pass(waiting: &mut [Job], picked: &[(usize, usize)]) -> Vec<(usize, RunError)> {
    let before: Vec<usize> = picked
        .iter()
        .map(|&(i, _)| waiting[i].session.cache.pos())
        .collect();
    match forward(waiting, picked) {
        Ok(()) => Vec::new(),
        Err(e) if picked.len() == 1 => {
            rollback(&mut waiting[picked[0].0], before[0]);
            vec![(picked[0].0, e)]
        }
        Err(e) => {
            debug!(
                "a pass of {} steps failed ({e}): running them one by one",
                picked.len()
            );
            for (&(i, _), &pos) in picked.iter().zip(&before) {
                rollback(&mut waiting[i], pos);
            }
            let mut failed = Vec::new();
            for (&p, &pos) in picked.iter().zip(&before) {
                if let Err(e) = forward(waiting, &[p]) {
                    rollback(&mut waiting[p.0], pos);
                    failed.push((p.0, e));
                }
            }
            failed
        }
    }
}

/// One pass over the picked chunks; appends each output to its step's.
fn forward(waiting: &mut [Job], picked: &[(usize, usize)]) -> Result<(), RunError> {
    let mut caches: Vec<&mut Cache> = Vec::with_capacity(picked.len());
    let mut inputs: Vec<SpanInput> = Vec::with_capacity(picked.len());
    let mut heads = Vec::with_capacity(picked.len());
    let mut p = picked.iter().peekable();
    for (i, job) in waiting.iter_mut().enumerate() {
        let Some(&(_, n)) = p.next_if(|(j, _)| *j == i) else {
            continue;
        };
        let width = job.session.engine.hidden();
        heads.push(job.session.engine.has_head());
        let Job {
            session,
            input,
            done,
            ..
        } = job;
        inputs.push(input.chunk(*done, n, width));
        caches.push(&mut session.cache);
    }
    let outs = Cache::forward_pass(&mut caches, &inputs, Logits::Last)?;
    drop(caches);
    drop(inputs);
    for ((&(i, n), out), head) in picked.iter().zip(outs).zip(heads) {
        let job = &mut waiting[i];
        if head {
            job.out = out;
        } else {
            job.out.extend_from_slice(&out);
        }
        job.done += n;
    }
    Ok(())
}

fn rollback(job: &mut Job, pos: usize) {
    if let Err(e) = job.session.cache.truncate(pos) {
        warn!("a session's KV cache could not be rolled back: {e}");
    }
}

/// Hands a step back; a failed one leaves the cache as it was before the step.
fn finish(mut job: Job, out: Result<Vec<f32>, RunError>) {
    if out.is_err() {
        let start = job.start;
        rollback(&mut job, start);
    }
    let _ = job.reply.send(Done {
        session: job.session,
        out,
        compute: job.compute,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_takes_every_decode_step_and_prefill_within_its_budget() {
        let planner = Planner {
            prefill_budget: 300,
            max_steps: 5,
        };
        // A 600-token prompt first, decode steps, a 100-token prompt, a step of another
        // span, and another long prompt.
        let waiting = [
            (600, true),
            (1, true),
            (100, true),
            (1, false),
            (2, true),
            (300, true),
            (1, true),
        ];
        // The first runs one chunk; every decode step of its span joins; the 100-token prompt
        // does not fit beside the first chunk; the other span waits.
        assert_eq!(
            planner.plan(&waiting),
            vec![(0, PREFILL_CHUNK), (1, 1), (4, 2), (6, 1)]
        );
        // Without the long prompt first, both prompts fit in turn up to the budget.
        assert_eq!(
            planner.plan(&waiting[1..]),
            vec![(0, 1), (1, 100), (3, 2), (5, 1)]
        );
        // The step limit holds.
        let many = [(1, true); 9];
        assert_eq!(planner.plan(&many).len(), 5);
        assert!(planner.plan(&[]).is_empty());
    }
}
