//! Reading logits: the top-k of a row, log-softmax, perplexity.

/// The `k` largest entries of `row`, largest first, as (id, logit).
pub fn top_k(row: &[f32], k: usize) -> Vec<(u32, f32)> {
    let k = k.min(row.len());
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    for (i, &v) in row.iter().enumerate() {
        if best.len() < k || v > best[best.len() - 1].1 {
            let at = best.partition_point(|(_, b)| *b >= v);
            best.insert(at, (i as u32, v));
            best.truncate(k);
        }
    }
    best
}

/// `log softmax(row)[id]`.
pub fn log_prob(row: &[f32], id: usize) -> f32 {
    let max = row.iter().fold(f32::NEG_INFINITY, |a, b| a.max(*b));
    let sum: f64 = row.iter().map(|v| ((v - max) as f64).exp()).sum();
    (row[id] - max) - sum.ln() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_and_breaks_ties_by_index() {
        let row = [0.5, 3.0, -1.0, 3.0, 2.0];
        assert_eq!(top_k(&row, 3), vec![(1, 3.0), (3, 3.0), (4, 2.0)]);
        assert_eq!(top_k(&row, 10).len(), 5);
    }

    #[test]
    fn log_prob_of_uniform_row() {
        let row = [1.0f32; 4];
        assert!((log_prob(&row, 2) - (0.25f32).ln()).abs() < 1e-6);
    }
}
