//! Waiting for room. A request that the nodes refuse for lack of room (not of coverage) waits
//! in line, first come first served, as vLLM's and llama-server's queues do: at most
//! `--max-queue` requests wait, and one more is answered 429 with the reason.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use baton_protocol::wire::Sampling;

use super::metrics::{ServeMetrics, Waiting};
use super::{ApiError, AppState};
use crate::model::TokenAsk;
use crate::remote::RemoteSession;
use crate::swarm::SwarmError;

/// How long a request waits for room on the nodes before it is answered 503.
const QUEUE_WAIT: Duration = Duration::from_secs(300);

/// The first and the longest pause between two tries of the request at the head of the line.
const FIRST_PAUSE: Duration = Duration::from_millis(10);
const LONGEST_PAUSE: Duration = Duration::from_millis(200);

/// Opens a session of `tokens` tokens starting with `prompt` for a request that arrived at
/// `arrived`. While others wait, a newcomer goes behind them rather than take the room that
/// frees for the first; the request at the head of the line tries again and again, backing
/// off, until it gets room.
pub(super) async fn open_in_turn(
    state: &Arc<AppState>,
    sampling: Sampling,
    tokens: usize,
    ask: &TokenAsk,
    prompt: &[u32],
    arrived: Instant,
) -> Result<RemoteSession, ApiError> {
    let deadline = arrived + QUEUE_WAIT;
    let mut queued: Option<Waiting> = None;
    let mut turn = None;
    let mut pause = FIRST_PAUSE;
    loop {
        if turn.is_none() && (queued.is_some() || state.metrics.waiting_now() > 0) {
            if queued.is_none() {
                queued = Some(enqueue(state, "others already wait for room")?);
            }
            let lock = tokio::time::timeout_at(deadline.into(), state.line.lock());
            match lock.await {
                Ok(guard) => turn = Some(guard),
                Err(_) => return Err(waited_too_long().into()),
            }
        }
        match state
            .model
            .open(sampling, tokens, ask.clone(), prompt)
            .await
        {
            Ok(s) => return Ok(s),
            Err(SwarmError::Busy(_)) if Instant::now() >= deadline => {
                return Err(waited_too_long().into())
            }
            Err(SwarmError::Busy(why)) => {
                if queued.is_none() {
                    queued = Some(enqueue(state, &why)?);
                }
                if turn.is_some() {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(LONGEST_PAUSE);
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Counts the request as waiting, or answers 429 when the line is full.
fn enqueue(state: &Arc<AppState>, why: &str) -> Result<Waiting, ApiError> {
    ServeMetrics::waiting(state, state.max_queue).ok_or_else(|| {
        let msg = format!(
            "{why}; {} requests already wait for room, try again later",
            state.max_queue
        );
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, "server_error", msg).code("queue_full")
    })
}

fn waited_too_long() -> SwarmError {
    SwarmError::Busy(format!(
        "no room on the nodes within {} s",
        QUEUE_WAIT.as_secs()
    ))
}
