//! `baton swarm` and `baton route`: what the swarm serves, and the route a generation would take.

use baton_client::route::{expert_coverage, uncovered};
use baton_client::swarm::SwarmClient;
use baton_node::inspect::runs;
use clap::Args;
use libp2p::Multiaddr;

#[derive(Args)]
pub struct SwarmArgs {
    /// A node of the swarm, as it printed itself (…/p2p/<peer id>).
    #[arg(long, required = true)]
    pub bootstrap: Vec<Multiaddr>,
    /// Only this model (its name or id).
    #[arg(long)]
    pub model: Option<String>,
    #[command(flatten)]
    pub access: super::access::AccessArgs,
}

impl SwarmArgs {
    async fn client(&self) -> anyhow::Result<SwarmClient> {
        let access = self.access.access()?;
        let key = self.access.identity()?;
        Ok(SwarmClient::connect(self.bootstrap.clone(), access, key).await?)
    }
}

fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

pub async fn swarm(a: SwarmArgs) -> anyhow::Result<()> {
    let client = a.client().await?;
    let mut nodes = client.nodes().await?;
    if let Some(m) = &a.model {
        nodes.retain(|r| &r.model_name == m || &r.model_id == m);
    }
    if nodes.is_empty() {
        println!("no nodes found (is the bootstrap address right? a private swarm also needs --swarm-key)");
        return Ok(());
    }
    let mut models: Vec<(String, String, u32)> = nodes
        .iter()
        .map(|r| (r.model_id.clone(), r.model_name.clone(), r.blocks))
        .collect();
    models.sort();
    models.dedup();
    let bans = baton_client::bans::recent();
    let banned = |peer: &str| bans.iter().any(|b| b.peer_id == peer);
    println!(
        "{:<14} {:<10} {:<12} {:<8} {:<28} {:>9} {:>10} {:>12}  peer",
        "name", "span", "experts", "model", "backend", "mem free", "tokens/s", "free KV"
    );
    for r in &nodes {
        let experts = match r.experts {
            None => "-".to_string(),
            Some(s) if s.is_all() => "all".to_string(),
            Some(s) if s.only => format!("{}..{} only", s.start, s.end),
            Some(s) => format!("{}..{}", s.start, s.end),
        };
        println!(
            "{:<14} {:<10} {:<12} {:<8} {:<28} {:>6.1} GiB {:>10.1} {:>12}  {}{}",
            r.name,
            r.span.to_string(),
            experts,
            &r.model_id[..8.min(r.model_id.len())],
            r.backend,
            gib(r.memory_free),
            r.tokens_per_s,
            r.kv_tokens_free,
            r.peer_id,
            if banned(&r.peer_id) { "  BANNED" } else { "" }
        );
    }
    for (id, name, blocks) in models {
        let recs: Vec<_> = nodes.iter().filter(|r| r.model_id == id).cloned().collect();
        println!("\nmodel {name} ({id}), {blocks} blocks:");
        let cov = baton_node::join::coverage(&recs, blocks);
        let line: Vec<String> = cov
            .iter()
            .enumerate()
            .map(|(b, c)| format!("{b}:{c}"))
            .collect();
        println!("  nodes per block: {}", line.join(" "));
        if let Some(cov) = expert_coverage(&recs, blocks) {
            // Blocks whose experts are held alike share a line: each run of experts held by
            // the same number of nodes, as `experts A-B x N`.
            let lines: Vec<String> = cov
                .iter()
                .map(|per| {
                    runs(per)
                        .iter()
                        .map(|&(a, b, n)| format!("{a}-{b} x{n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .collect();
            println!("  routed experts per block (experts A-B held by N nodes):");
            for (first, last, line) in runs(&lines) {
                println!("    blocks {first}..{}: {line}", last + 1);
            }
        }
        let missing = uncovered(&recs, blocks);
        if missing.is_empty() {
            println!("  every stage is served");
        } else {
            let m: Vec<String> = missing.iter().map(|s| s.to_string()).collect();
            println!("  UNCOVERED: {}", m.join(", "));
        }
    }
    if !bans.is_empty() {
        println!("\nbanned by clients of this machine (for a day; routes leave them out):");
        for b in &bans {
            let ago = baton_node::dht::now_unix().saturating_sub(b.at_unix);
            println!(
                "  {} ({}) {}, {} min ago",
                b.name,
                b.peer_id,
                b.what,
                ago / 60
            );
        }
    }
    Ok(())
}

pub async fn route(a: SwarmArgs) -> anyhow::Result<()> {
    let client = a.client().await?;
    let (id, route) = client.route(a.model.as_deref()).await?;
    println!("route for model {id}: {} hop(s)", route.len());
    let mut total = 0.0;
    for (i, h) in route.iter().enumerate() {
        let r = &h.record;
        total += h.expected;
        println!(
            "  {}. {:<14} blocks {:<8} rtt {:>7.2} ms  compute {:>7.2} ms/token  expected {:>7.2} ms  ({}, {})",
            i + 1,
            r.name,
            r.span.to_string(),
            h.rtt.as_secs_f64() * 1e3,
            1e3 / r.tokens_per_s.max(1e-3) as f64,
            h.expected * 1e3,
            r.backend,
            r.peer_id
        );
    }
    println!(
        "expected time per token: {:.2} ms (round trips plus compute; fewer hops win ties)",
        total * 1e3
    );
    Ok(())
}
