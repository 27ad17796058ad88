//! What nodes report about themselves as metrics: their passes (continuous batching), open
//! sessions and KV room.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::debug;

use super::Server;
use crate::metrics::{each, family};

/// The most bytes of a metrics request read before it is answered.
const MAX_REQUEST: usize = 8 << 10;

impl Server {
    /// Answers `GET /metrics` with the node's metrics on every connection to `listener`, and
    /// 404 to anything else (HTTP/1.1, one request per connection).
    pub async fn serve_metrics(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (mut conn, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    debug!("metrics: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let me = self.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; MAX_REQUEST];
                let mut len = 0;
                let read = async {
                    while len < buf.len() && !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf[len..]).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => len += n,
                        }
                    }
                };
                if tokio::time::timeout(Duration::from_secs(5), read)
                    .await
                    .is_err()
                {
                    return;
                }
                let head = String::from_utf8_lossy(&buf[..len]);
                let (status, body) = if head.starts_with("GET /metrics ") {
                    let mut out = String::new();
                    Server::write_metrics(&mut out, &[&me]);
                    ("200 OK", out)
                } else {
                    (
                        "404 Not Found",
                        "only GET /metrics is served here\n".to_string(),
                    )
                };
                let reply = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                if let Err(e) = conn.write_all(reply.as_bytes()).await {
                    debug!("metrics for {peer}: {e}");
                }
            });
        }
    }

    /// The metrics of `nodes`, each sample labelled `node="<name>"`, in Prometheus' text
    /// format.
    pub fn write_metrics(out: &mut String, nodes: &[&Server]) {
        let label = |s: &Server| format!("node=\"{}\"", s.options.name.replace('"', "'"));
        let per = |f: &dyn Fn(&Server) -> f64| -> Vec<(String, f64)> {
            nodes.iter().map(|s| (label(s), f(s))).collect()
        };
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
        each(
            out,
            "baton:node_passes_total",
            "counter",
            "Forward passes the node ran over its span.",
            &per(&|s| load(&s.batcher.stats.passes)),
        );
        each(
            out,
            "baton:node_pass_steps_total",
            "counter",
            "Session steps (or chunks of long ones) the passes ran.",
            &per(&|s| load(&s.batcher.stats.steps)),
        );
        each(
            out,
            "baton:node_pass_tokens_total",
            "counter",
            "Tokens the passes ran.",
            &per(&|s| load(&s.batcher.stats.tokens)),
        );
        family(
            out,
            "baton:node_batch_size",
            "histogram",
            "Session steps per forward pass.",
        );
        for s in nodes {
            s.batcher
                .stats
                .batch
                .write(out, "baton:node_batch_size", &label(s));
        }
        each(
            out,
            "baton:node_sessions",
            "gauge",
            "Sessions open on the node.",
            &per(&|s| s.open_sessions() as f64),
        );
        let prefixes = |f: &dyn Fn(&crate::prefix::PrefixStore) -> u64| {
            per(&|s| s.prefixes.lock().map_or(0.0, |p| f(&p) as f64))
        };
        each(
            out,
            "baton:prefix_cache_queries_total",
            "counter",
            "Prompt tokens sessions asked to reuse from earlier sessions' prompts.",
            &prefixes(&|p| p.queried),
        );
        each(
            out,
            "baton:prefix_cache_hits_total",
            "counter",
            "Prompt tokens sessions reused from earlier sessions' prompts.",
            &prefixes(&|p| p.hits),
        );
        each(
            out,
            "baton:prefix_cache_tokens",
            "gauge",
            "Prompt positions the node keeps for reuse.",
            &prefixes(&|p| p.tokens() as u64),
        );
        each(
            out,
            "baton:expert_calls_served_total",
            "counter",
            "Expert calls this node answered for other nodes' mixture-of-experts layers.",
            &per(&|s| s.experts_served().0 as f64),
        );
        each(
            out,
            "baton:expert_rows_served_total",
            "counter",
            "Token rows those expert calls carried.",
            &per(&|s| s.experts_served().1 as f64),
        );
        let dispatch =
            |f: &dyn Fn(crate::moe::remote::DispatchStats) -> f64| per(&|s| f(s.dispatch_stats()));
        each(
            out,
            "baton:expert_dispatch_layers_total",
            "counter",
            "Mixture-of-experts layers whose rows went to expert peers.",
            &dispatch(&|d| d.calls as f64),
        );
        each(
            out,
            "baton:expert_dispatch_messages_total",
            "counter",
            "Messages sent to expert peers.",
            &dispatch(&|d| d.messages as f64),
        );
        each(
            out,
            "baton:expert_dispatch_failures_total",
            "counter",
            "Messages to expert peers that failed or timed out; their experts went to another peer.",
            &dispatch(&|d| d.failed as f64),
        );
        each(
            out,
            "baton:expert_dispatch_seconds_total",
            "counter",
            "Seconds mixture-of-experts layers waited for their expert peers.",
            &dispatch(&|d| d.seconds),
        );
        each(
            out,
            "baton:kv_cache_usage_perc",
            "gauge",
            "Share of the node's KV room that open sessions reserve (0 to 1).",
            &per(&|s| {
                let cap = s.kv_capacity().max(1) as f64;
                1.0 - s.kv_tokens_free() as f64 / cap
            }),
        );
    }
}
