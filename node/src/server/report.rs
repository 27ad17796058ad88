//! What nodes report about themselves as metrics: their passes (continuous batching), open
//! sessions and KV room.

use std::sync::atomic::Ordering;

use super::Server;
use crate::metrics::{each, family};

impl Server {
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
