//! Metrics in Prometheus' text format: counters, gauges and histograms that threads update
//! without locks, and what a node reports about its passes, sessions and KV room. Names follow
//! vLLM's where one fits, under the `baton:` prefix.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// A histogram with fixed bucket bounds.
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations at most each bound (not cumulative; summed when written).
    counts: Vec<AtomicU64>,
    count: AtomicU64,
    /// The sum of observations, in millionths.
    sum_micros: AtomicU64,
}

/// Bounds for latencies in seconds, as vLLM's time-to-first-token buckets.
pub const SECONDS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
];
/// Bounds for counts of steps in a pass.
pub const STEPS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        self.observe_n(value, 1);
    }

    /// `n` observations of `value`.
    pub fn observe_n(&self, value: f64, n: u64) {
        if let Some(i) = self.bounds.iter().position(|&b| value <= b) {
            self.counts[i].fetch_add(n, Ordering::Relaxed);
        }
        self.count.fetch_add(n, Ordering::Relaxed);
        let micros = (value.max(0.0) * 1e6) as u64;
        self.sum_micros
            .fetch_add(micros.saturating_mul(n), Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The histogram's lines under `name`, with `labels` (`a="b",c="d"` or empty).
    pub fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut below = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            below += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {below}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {count}", braces(labels));
    }
}

fn braces(labels: &str) -> String {
    if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    }
}

/// `# HELP` and `# TYPE` of a metric family.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One sample of a counter or gauge.
pub fn sample(out: &mut String, name: &str, labels: &str, value: f64) {
    let _ = writeln!(out, "{name}{} {value}", braces(labels));
}

/// A family of one counter or gauge with one sample per labelled source.
pub fn each(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    family(out, name, kind, help);
    for (labels, value) in samples {
        sample(out, name, labels, *value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_write_cumulative_buckets() {
        let h = Histogram::new(&[1.0, 2.0]);
        h.observe(0.5);
        h.observe_n(1.5, 2);
        h.observe(9.0);
        let mut out = String::new();
        h.write(&mut out, "x", "node=\"a\"");
        assert_eq!(
            out,
            "x_bucket{node=\"a\",le=\"1\"} 1\nx_bucket{node=\"a\",le=\"2\"} 3\n\
             x_bucket{node=\"a\",le=\"+Inf\"} 4\nx_sum{node=\"a\"} 12.5\nx_count{node=\"a\"} 4\n"
        );
    }
}
