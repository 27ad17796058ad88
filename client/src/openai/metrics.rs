//! `GET /metrics` of `baton serve`: requests, tokens and latencies in Prometheus' text format,
//! under vLLM's names with the `baton:` prefix; with `--local`, also the metrics of the nodes
//! inside the process (passes, batch sizes, sessions, KV room).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use baton_node::metrics::{self, each, family, Histogram};
use baton_node::server::Server;

use super::AppState;
use crate::generate::Generation;

pub struct ServeMetrics {
    running: AtomicI64,
    waiting: AtomicI64,
    prompt_tokens: AtomicU64,
    generation_tokens: AtomicU64,
    success: AtomicU64,
    failure: AtomicU64,
    ttft: Histogram,
    itl: Histogram,
    e2e: Histogram,
}

impl Default for ServeMetrics {
    fn default() -> Self {
        ServeMetrics {
            running: AtomicI64::new(0),
            waiting: AtomicI64::new(0),
            prompt_tokens: AtomicU64::new(0),
            generation_tokens: AtomicU64::new(0),
            success: AtomicU64::new(0),
            failure: AtomicU64::new(0),
            ttft: Histogram::new(metrics::SECONDS),
            itl: Histogram::new(metrics::SECONDS),
            e2e: Histogram::new(metrics::SECONDS),
        }
    }
}

/// Counts a request as waiting for room while it lives.
pub struct Waiting(Arc<AppState>);

/// Counts a request as running while it lives.
pub struct Running(Arc<AppState>);

impl ServeMetrics {
    /// Counts a request as waiting, unless `most` already wait.
    pub fn waiting(state: &Arc<AppState>, most: usize) -> Option<Waiting> {
        let before = state.metrics.waiting.fetch_add(1, Ordering::Relaxed);
        let waiting = Waiting(state.clone());
        (before < most as i64).then_some(waiting)
    }

    pub fn running(state: &Arc<AppState>) -> Running {
        state.metrics.running.fetch_add(1, Ordering::Relaxed);
        Running(state.clone())
    }

    /// How many requests wait for room now.
    pub fn waiting_now(&self) -> i64 {
        self.waiting.load(Ordering::Relaxed)
    }

    /// A finished generation.
    pub fn done(&self, g: &Generation, total_s: f64) {
        self.success.fetch_add(1, Ordering::Relaxed);
        self.prompt_tokens
            .fetch_add(g.prompt_tokens as u64, Ordering::Relaxed);
        self.generation_tokens
            .fetch_add(g.completion_tokens() as u64, Ordering::Relaxed);
        self.ttft.observe(g.time_to_first_token.as_secs_f64());
        for gap in &g.gaps {
            self.itl.observe(gap.as_secs_f64());
        }
        self.e2e.observe(total_s);
    }

    pub fn failed(&self) {
        self.failure.fetch_add(1, Ordering::Relaxed);
    }

    fn write(&self, out: &mut String) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        let gauge = |a: &AtomicI64| a.load(Ordering::Relaxed).max(0) as f64;
        let one = |v: f64| vec![(String::new(), v)];
        let rows: [(&str, &str, &str, f64); 6] = [
            (
                "baton:num_requests_running",
                "gauge",
                "Requests generating now.",
                gauge(&self.running),
            ),
            (
                "baton:num_requests_waiting",
                "gauge",
                "Requests waiting for room on the nodes.",
                gauge(&self.waiting),
            ),
            (
                "baton:prompt_tokens_total",
                "counter",
                "Prompt tokens of finished requests.",
                get(&self.prompt_tokens),
            ),
            (
                "baton:generation_tokens_total",
                "counter",
                "Tokens generated for finished requests.",
                get(&self.generation_tokens),
            ),
            (
                "baton:request_success_total",
                "counter",
                "Requests that finished.",
                get(&self.success),
            ),
            (
                "baton:request_failure_total",
                "counter",
                "Requests that failed after they started.",
                get(&self.failure),
            ),
        ];
        for (name, kind, help, value) in rows {
            each(out, name, kind, help, &one(value));
        }
        let hists = [
            (
                &self.ttft,
                "baton:time_to_first_token_seconds",
                "Time to the first token.",
            ),
            (
                &self.itl,
                "baton:inter_token_latency_seconds",
                "Time between tokens (each request's mean, once per token).",
            ),
            (
                &self.e2e,
                "baton:e2e_request_latency_seconds",
                "Time from a request's arrival to its end.",
            ),
        ];
        for (h, name, help) in hists {
            family(out, name, "histogram", help);
            h.write(out, name, "");
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.metrics.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.metrics.running.fetch_sub(1, Ordering::Relaxed);
    }
}

pub async fn handler(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let mut out = String::new();
    state.metrics.write(&mut out);
    let nodes: Vec<&Server> = state.nodes.iter().map(|s| s.as_ref()).collect();
    if !nodes.is_empty() {
        Server::write_metrics(&mut out, &nodes);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
}
