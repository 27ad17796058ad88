//! Route planning: the cheapest chain of spans that covers every stage exactly once.
//!
//! A shortest path over block boundaries: from boundary `b`, a node whose span starts at `b`
//! leads to its end. The cost of a hop is its measured round-trip time, plus the compute time of
//! its span from its record, plus a penalty when it has no KV room left; replicas of a span are
//! alternatives, and of two routes of equal cost the one with fewer hops wins.

use std::collections::HashMap;
use std::time::Duration;

use baton_protocol::record::NodeRecord;
use baton_protocol::Stage;

/// Added to a hop that reports no free KV tokens: it will likely refuse the session.
const NO_ROOM_PENALTY: f64 = 1.0;
/// Assumed for a node whose round-trip time is unknown.
const UNKNOWN_RTT: Duration = Duration::from_millis(50);

#[derive(Clone, Debug)]
pub struct PlannedHop {
    pub record: NodeRecord,
    pub rtt: Duration,
    /// Seconds a decode step spends on this hop: its round trip plus its compute.
    pub expected: f64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("no node serves the model")]
    NoNodes,
    #[error("no node serves {}", .0.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", "))]
    Uncovered(Vec<Stage>),
    #[error("every stage is served, but no chain of spans covers the model from start to end")]
    NoChain,
}

fn hop_cost(r: &NodeRecord, rtt: Duration) -> f64 {
    let compute = if r.tokens_per_s > 0.0 {
        1.0 / r.tokens_per_s as f64
    } else {
        1.0
    };
    let penalty = if r.kv_tokens_free == 0 {
        NO_ROOM_PENALTY
    } else {
        0.0
    };
    rtt.as_secs_f64() + compute + penalty
}

/// The block count most of `records` give their model (the smallest among equals); 0 without
/// records. A record that says otherwise describes another model under the same id, or lies,
/// and is left out of routes.
pub fn agreed_blocks(records: &[NodeRecord]) -> u32 {
    let mut counts: HashMap<u32, usize> = HashMap::new();
    for r in records {
        *counts.entry(r.blocks).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by_key(|&(blocks, n)| (n, std::cmp::Reverse(blocks)))
        .map_or(0, |(blocks, _)| blocks)
}

/// The stages no record serves.
pub fn uncovered(records: &[NodeRecord], blocks: u32) -> Vec<Stage> {
    let mut served = vec![false; blocks as usize];
    for r in records {
        for b in r.span.start..r.span.end.min(blocks) {
            served[b as usize] = true;
        }
    }
    let mut out = Vec::new();
    if !served.first().copied().unwrap_or(false) {
        out.push(Stage::Embed);
    }
    out.extend(
        (0..blocks)
            .filter(|b| !served[*b as usize])
            .map(Stage::Block),
    );
    if !served.last().copied().unwrap_or(false) {
        out.push(Stage::Head);
    }
    out
}

/// The records that can be hops of a route: not those of nodes serving experts only, nor
/// those holding some of their blocks' experts when the rest of the swarm does not hold the
/// others. Expert-only nodes are reached by the hops, not by the client.
pub fn hop_records(records: Vec<NodeRecord>) -> Vec<NodeRecord> {
    let holds = |r: &NodeRecord, block: u32, e: u32| {
        (r.span.start..r.span.end).contains(&block) && r.experts.is_none_or(|s| s.holds(e))
    };
    let covered = |r: &NodeRecord| match r.experts {
        None => true,
        Some(s) if s.is_all() => true,
        Some(s) => (r.span.start..r.span.end).all(|b| {
            (0..s.of)
                .filter(|&e| !s.holds(e))
                .all(|e| records.iter().any(|q| holds(q, b, e)))
        }),
    };
    let keep: Vec<bool> = records
        .iter()
        .map(|r| !r.experts.is_some_and(|s| s.only) && covered(r))
        .collect();
    records
        .into_iter()
        .zip(keep)
        .filter_map(|(r, k)| k.then_some(r))
        .collect()
}

/// How many nodes hold each routed expert of each block, for a mixture-of-experts model
/// (`None` when no record names a shard): `[block][expert]`.
pub fn expert_coverage(records: &[NodeRecord], blocks: u32) -> Option<Vec<Vec<u32>>> {
    let of = records
        .iter()
        .filter_map(|r| r.experts)
        .map(|s| s.of)
        .max()?;
    let mut c = vec![vec![0u32; of as usize]; blocks as usize];
    for r in records {
        for b in r.span.start..r.span.end.min(blocks) {
            for e in 0..of {
                if r.experts.is_none_or(|s| s.holds(e)) {
                    c[b as usize][e as usize] += 1;
                }
            }
        }
    }
    Some(c)
}

/// Plans a route over `records` (one model, `blocks` blocks) with the measured `rtt` per peer id.
pub fn plan(
    records: &[NodeRecord],
    blocks: u32,
    rtt: &HashMap<String, Duration>,
) -> Result<Vec<PlannedHop>, RouteError> {
    if records.is_empty() {
        return Err(RouteError::NoNodes);
    }
    let missing = uncovered(records, blocks);
    if !missing.is_empty() {
        return Err(RouteError::Uncovered(missing));
    }
    let n = blocks as usize;
    // best[b]: (cost, hops, the hop that arrives at b and where it came from)
    let mut best: Vec<Option<(f64, usize, usize, usize)>> = vec![None; n + 1];
    best[0] = Some((0.0, 0, usize::MAX, 0));
    for b in 0..n {
        let Some((cost, hops, _, _)) = best[b] else {
            continue;
        };
        for (i, r) in records.iter().enumerate() {
            if r.span.start as usize != b || r.span.end as usize > n || r.span.end as usize <= b {
                continue;
            }
            let e = r.span.end as usize;
            let c = cost + hop_cost(r, rtt.get(&r.peer_id).copied().unwrap_or(UNKNOWN_RTT));
            let better = match best[e] {
                None => true,
                Some((bc, bh, _, _)) => {
                    c < bc - 1e-12 || ((c - bc).abs() <= 1e-12 && hops + 1 < bh)
                }
            };
            if better {
                best[e] = Some((c, hops + 1, i, b));
            }
        }
    }
    let mut route = Vec::new();
    let mut at = n;
    while at > 0 {
        let Some((_, _, i, from)) = best[at] else {
            return Err(RouteError::NoChain);
        };
        let r = &records[i];
        let t = rtt.get(&r.peer_id).copied().unwrap_or(UNKNOWN_RTT);
        route.push(PlannedHop {
            record: r.clone(),
            rtt: t,
            expected: hop_cost(r, t),
        });
        at = from;
    }
    route.reverse();
    Ok(route)
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_protocol::{Span, PROTOCOL_VERSION};

    fn rec(peer: &str, a: u32, b: u32, tps: f32) -> NodeRecord {
        NodeRecord {
            peer_id: peer.into(),
            addrs: vec![],
            model_id: "m".into(),
            model_name: "m".into(),
            span: Span { start: a, end: b },
            blocks: 30,
            backend: "cpu".into(),
            device: "cpu".into(),
            memory_total: 0,
            memory_free: 0,
            tokens_per_s: tps,
            kv_tokens_free: 1000,
            experts: None,
            protocol_version: PROTOCOL_VERSION,
            name: peer.into(),
            expires_unix: u64::MAX,
        }
    }

    fn peers(route: &[PlannedHop]) -> Vec<&str> {
        route.iter().map(|h| h.record.peer_id.as_str()).collect()
    }

    #[test]
    fn expert_only_nodes_are_no_hops_and_shards_need_their_peers() {
        use baton_protocol::experts::ExpertShard;
        let shard = |start, end, only| {
            Some(ExpertShard {
                start,
                end,
                of: 8,
                only,
            })
        };
        let mut a = rec("a", 0, 4, 10.0);
        a.experts = shard(0, 4, false);
        let mut b = rec("b", 0, 4, 10.0);
        b.experts = shard(4, 8, true);
        let mut c = rec("c", 2, 4, 10.0);
        c.experts = shard(4, 8, true);
        let names = |rs: Vec<NodeRecord>| rs.into_iter().map(|r| r.peer_id).collect::<Vec<_>>();
        assert_eq!(names(hop_records(vec![a.clone(), b.clone()])), ["a"]);
        // Without b, blocks 0 and 1 lack experts 4..8: a cannot be a hop.
        assert!(hop_records(vec![a.clone(), c]).is_empty());
        let mut full = rec("f", 0, 4, 10.0);
        full.experts = shard(0, 8, false);
        assert_eq!(names(hop_records(vec![a.clone(), full])), ["a", "f"]);
        let cov = expert_coverage(&[a, b], 5).unwrap();
        assert_eq!(cov[0], [1, 1, 1, 1, 1, 1, 1, 1]);
        assert_eq!(cov[4], [0; 8]);
        assert!(expert_coverage(&[rec("d", 0, 4, 1.0)], 4).is_none());
    }

    #[test]
    fn prefers_fewer_hops_and_faster_replicas() {
        let rtt = HashMap::from([
            ("a".to_string(), Duration::from_millis(20)),
            ("b".into(), Duration::from_millis(20)),
            ("c".into(), Duration::from_millis(20)),
            ("w".into(), Duration::from_millis(20)),
        ]);
        // Three thirds at the speed of one whole: the whole wins (one round trip, not three).
        let recs = vec![
            rec("a", 0, 10, 300.0),
            rec("b", 10, 20, 300.0),
            rec("c", 20, 30, 300.0),
            rec("w", 0, 30, 100.0),
        ];
        assert_eq!(peers(&plan(&recs, 30, &rtt).unwrap()), ["w"]);
        // A much slower whole loses to the chain.
        let recs = vec![
            rec("a", 0, 10, 300.0),
            rec("b", 10, 20, 300.0),
            rec("c", 20, 30, 300.0),
            rec("w", 0, 30, 5.0),
        ];
        assert_eq!(peers(&plan(&recs, 30, &rtt).unwrap()), ["a", "b", "c"]);
        // Of two replicas, the faster; one without KV room is avoided.
        let mut full = rec("b", 10, 30, 500.0);
        full.kv_tokens_free = 0;
        let recs = vec![rec("a", 0, 10, 300.0), full, rec("c", 10, 30, 100.0)];
        assert_eq!(peers(&plan(&recs, 30, &rtt).unwrap()), ["a", "c"]);
    }

    #[test]
    fn reports_what_is_missing() {
        let none = HashMap::new();
        assert_eq!(plan(&[], 30, &none).unwrap_err(), RouteError::NoNodes);
        let recs = vec![rec("a", 0, 10, 1.0), rec("c", 20, 30, 1.0)];
        let err = plan(&recs, 30, &none).unwrap_err();
        assert_eq!(
            err,
            RouteError::Uncovered((10..20).map(Stage::Block).collect())
        );
        let recs = vec![rec("a", 0, 10, 1.0), rec("b", 5, 30, 1.0)];
        assert_eq!(plan(&recs, 30, &none).unwrap_err(), RouteError::NoChain);
        assert_eq!(
            uncovered(&[rec("x", 1, 29, 1.0)], 30),
            vec![Stage::Embed, Stage::Block(0), Stage::Block(29), Stage::Head]
        );
    }

    #[test]
    fn the_block_count_most_records_give_wins() {
        let mut odd = rec("liar", 0, 10, 1.0);
        odd.blocks = 4000;
        let records = vec![odd.clone(), rec("a", 0, 10, 1.0), rec("b", 10, 30, 1.0)];
        assert_eq!(agreed_blocks(&records), 30);
        assert_eq!(agreed_blocks(&[odd]), 4000);
        assert_eq!(agreed_blocks(&[]), 0);
    }
}
