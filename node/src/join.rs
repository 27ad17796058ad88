//! A node joining a swarm: choose a span, load it, measure it, serve it over QUIC and announce it
//! on the DHT, refreshing the announcement until the node stops.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use baton_protocol::experts::ExpertShard;
use baton_protocol::record::NodeRecord;
use baton_protocol::wire::ModelInfo;
use baton_protocol::{Span, PROTOCOL_VERSION};
use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;
use tracing::{info, warn};

use crate::dht::{self, Dht, DhtError, RECORD_TTL, REPUBLISH};
use crate::dispatch::ExpertPeers;
use crate::model::{model_id, ModelFile};
use crate::moe::Remote;
use crate::net::{Keypair, NetError};
use crate::runtime::{Engine, EngineOptions};
use crate::server::{Server, ServerOptions};
use crate::{Error, Logits, SpanInput};

/// `--span`: a fixed block range, or `auto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanChoice {
    Auto,
    Fixed(Span),
}

impl std::str::FromStr for SpanChoice {
    type Err = baton_protocol::SpanError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "auto" {
            Ok(SpanChoice::Auto)
        } else {
            s.parse().map(SpanChoice::Fixed)
        }
    }
}

#[derive(Clone, Debug)]
pub struct JoinOptions {
    pub model: PathBuf,
    pub span: SpanChoice,
    pub engine: EngineOptions,
    /// The control plane's TCP address; the data plane listens on the same IP.
    pub listen: Multiaddr,
    pub bootstrap: Vec<Multiaddr>,
    pub name: String,
    /// With `--span auto`: take at most this many blocks.
    pub max_blocks: Option<u32>,
    pub max_sessions: usize,
    /// The most KV tokens the node's sessions may hold together (default: what the memory
    /// left after the weights allows).
    pub max_kv_tokens: Option<usize>,
    /// Prompt tokens kept for reuse (see [`crate::server::ServerOptions::prefix_cache_tokens`]).
    pub prefix_cache_tokens: usize,
    /// Idle sessions are closed after this long.
    pub idle_timeout: std::time::Duration,
    /// A private swarm's key: peers without it are refused on both planes.
    pub swarm_key: Option<crate::net::SwarmKey>,
    /// When not empty, the only peers this node talks to.
    pub allow: Vec<crate::net::PeerId>,
    /// The data-plane address to announce instead of the one the node binds, for a node
    /// reached through port forwarding or a relay.
    pub public_addr: Option<SocketAddr>,
    /// `--experts E0..E1`: hold only these routed experts of each mixture-of-experts layer
    /// (all of them by default).
    pub experts: Option<Span>,
    /// `--experts-only`: hold the routed experts and nothing else; answer expert calls only.
    pub experts_only: bool,
    /// Fault injection for tests; the default serves honestly.
    pub faults: Faults,
}

/// Ways a node can be made to misbehave on purpose, for tests of what clients do about it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// See `ServerOptions::fault_perturb`.
    pub perturb: f32,
    /// Announce this decode speed instead of the measured one.
    pub claim_tokens_per_s: Option<f32>,
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    Model(#[from] Error),
    #[error(transparent)]
    Load(#[from] crate::LoadError),
    #[error(transparent)]
    Dht(#[from] DhtError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("{0}")]
    Other(String),
}

pub struct RunningNode {
    pub server: Arc<Server>,
    pub dht: Dht,
    pub record: NodeRecord,
    /// What other nodes and clients pass to `--bootstrap`.
    pub bootstrap_addrs: Vec<Multiaddr>,
    announcer: tokio::task::AbortHandle,
}

impl RunningNode {
    /// Stops refreshing the node's record: it drops out of the swarm's view within one
    /// record lifetime.
    pub fn stop_announcing(&self) {
        self.announcer.abort();
    }
}

/// How many nodes serve each block, from the records of one model.
pub fn coverage(records: &[NodeRecord], blocks: u32) -> Vec<u32> {
    let mut c = vec![0u32; blocks as usize];
    for r in records {
        for b in r.span.start..r.span.end.min(blocks) {
            c[b as usize] += 1;
        }
    }
    c
}

/// Petals' rule: the window of `n` blocks that the fewest nodes serve (the lowest total
/// coverage), the earliest on ties.
pub fn least_served_window(coverage: &[u32], n: u32) -> Span {
    let blocks = coverage.len() as u32;
    let n = n.clamp(1, blocks.max(1));
    let best = (0..=blocks - n)
        .min_by_key(|&s| {
            let w = &coverage[s as usize..(s + n) as usize];
            (w.iter().copied().max().unwrap_or(0), w.iter().sum::<u32>())
        })
        .unwrap_or(0);
    Span {
        start: best,
        end: best + n,
    }
}

/// The routed experts the node holds: `None` for a dense model; all of them unless
/// `--experts` says otherwise.
fn expert_shard(model: &ModelFile, opts: &JoinOptions) -> Result<Option<ExpertShard>, JoinError> {
    let Some(moe) = &model.config.moe else {
        if opts.experts.is_some() || opts.experts_only {
            return Err(JoinError::Other(format!(
                "{} has no mixture-of-experts layers: --experts and --experts-only do not apply",
                model.name()
            )));
        }
        return Ok(None);
    };
    let of = moe.experts as u32;
    let range = opts.experts.unwrap_or(Span { start: 0, end: of });
    let shard = ExpertShard {
        start: range.start,
        end: range.end,
        of,
        only: opts.experts_only,
    };
    if !shard.is_valid() {
        return Err(JoinError::Other(format!(
            "--experts {range}: the model's layers have experts 0..{of}"
        )));
    }
    let groups = match moe.routing {
        crate::moe::Routing::Grouped { groups, .. }
        | crate::moe::Routing::SoftmaxGroups { groups, .. } => groups as u32,
        crate::moe::Routing::Softmax { .. } => 1,
    };
    let size = of / groups.max(1);
    if groups > 1 && !(shard.start.is_multiple_of(size) && shard.end.is_multiple_of(size)) {
        warn!(
            "--experts {range} cuts a group of {size} experts: shards on group boundaries \
             bound the peers a token's experts lie on to the groups it keeps"
        );
    }
    Ok(Some(shard))
}

/// Blocks that fit in `memory` bytes with a quarter kept for KV caches and activations.
fn blocks_that_fit(model: &ModelFile, memory: u64) -> u32 {
    let per_block = (model.weight_bytes() as u64 / model.config.layers.max(1) as u64).max(1);
    ((memory / 4 * 3) / per_block).min(model.config.layers as u64) as u32
}

/// What a `--span auto` node needs to move to another span.
struct Mover {
    model: Arc<ModelFile>,
    options: EngineOptions,
}

impl Mover {
    /// If some block of the model has no server and this node's blocks are all served by
    /// others, loads the least-served window of the same size, moves the node's sessions away,
    /// and serves the new span.
    async fn rebalance(&self, dht: &Dht, server: &Arc<Server>, record: &mut NodeRecord) {
        let Some(target) = self.target(dht, record).await else {
            return;
        };
        // Nodes that see the same gap at the same moment wait different times, and look again.
        let me = record
            .peer_id
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31) + b as u64);
        tokio::time::sleep(std::time::Duration::from_millis(me % 3000)).await;
        if self.target(dht, record).await != Some(target) {
            return;
        }
        info!(
            "blocks are uncovered: moving from {} to {target}",
            record.span
        );
        let (model, options) = (self.model.clone(), self.options);
        let loaded = tokio::task::spawn_blocking(move || {
            let engine = Engine::load(&model, target, options, &mut |_, _| {})?;
            let tokens_per_s = measure(&engine)?;
            Ok::<_, Error>((engine, tokens_per_s))
        })
        .await;
        match loaded {
            Ok(Ok((engine, tokens_per_s))) => {
                server
                    .move_to(Arc::new(engine), std::time::Duration::from_secs(10))
                    .await;
                record.span = target;
                record.tokens_per_s = tokens_per_s;
                info!("now serving blocks {target}: {tokens_per_s:.1} tokens/s");
            }
            Ok(Err(e)) => warn!("cannot load blocks {target}: {e}"),
            Err(e) => warn!("cannot load blocks {target}: {e}"),
        }
    }

    /// Where to move, if anywhere.
    async fn target(&self, dht: &Dht, record: &NodeRecord) -> Option<Span> {
        let records = dht.lookup(Some(&record.model_id)).await.ok()?;
        let others: Vec<NodeRecord> = records
            .into_iter()
            .filter(|r| r.peer_id != record.peer_id)
            .collect();
        let without_me = coverage(&others, record.blocks);
        let mine = record.span.start as usize..record.span.end as usize;
        let gap = without_me
            .iter()
            .enumerate()
            .any(|(b, &c)| c == 0 && !mine.contains(&b));
        let mine_covered = without_me[mine].iter().all(|&c| c > 0);
        if !gap || !mine_covered {
            return None;
        }
        let target = least_served_window(&without_me, record.span.len());
        (target != record.span).then_some(target)
    }
}

/// KV tokens that fit in half of `memory` (the rest is for activations and everything else).
fn kv_tokens_that_fit(engine: &Engine, memory: u64) -> usize {
    let per_token = engine.kv_bytes_per_token().max(1) as u64;
    (memory / 2 / per_token).min(usize::MAX as u64) as usize
}

/// Decode tokens per second of the span: a short prefill, then timed steps, of which the
/// fastest counts. Nodes started together on one machine measure while the others load; the
/// mean of a few steps then said anything from 3 to 180 ms per token for equal spans, and
/// decided routes. The fastest step is what the span takes when the node has its cores.
fn measure(engine: &Engine) -> Result<f32, Error> {
    let mut cache = engine.new_cache()?;
    let steps = 16;
    let run = |n: usize, cache: &mut crate::Cache| -> Result<(), Error> {
        if engine.has_embed() {
            let vocab = engine.vocab().clamp(1, 1000) as u32;
            let ids: Vec<u32> = (0..n as u32).map(|i| (i * 7919 + 13) % vocab).collect();
            cache.run_step(SpanInput::Tokens(&ids), Logits::Last)?;
        } else {
            let h: Vec<f32> = (0..n * engine.hidden())
                .map(|i| ((i % 17) as f32 - 8.0) * 0.01)
                .collect();
            cache.run_step(SpanInput::Hidden(&h), Logits::Last)?;
        }
        Ok(())
    };
    run(16, &mut cache)?;
    let mut fastest = f32::MAX;
    for _ in 0..steps {
        let t0 = Instant::now();
        run(1, &mut cache)?;
        fastest = fastest.min(t0.elapsed().as_secs_f32());
    }
    Ok(1.0 / fastest.max(1e-6))
}

fn listen_ip(addr: &Multiaddr) -> IpAddr {
    addr.iter()
        .find_map(|p| match p {
            Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
            Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
            _ => None,
        })
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// Joins the swarm and serves until the returned node is shut down.
pub async fn join(
    opts: JoinOptions,
    key: Keypair,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<RunningNode, JoinError> {
    let model = ModelFile::open(&opts.model)?;
    let blocks = model.config.layers as u32;
    let spec = model.tokenizer().ok().and_then(|t| t.to_spec().ok());
    let content_hash = model.content_hash()?;
    let id = model_id(&spec.clone().unwrap_or_default(), &content_hash, blocks);
    let access = crate::net::Access {
        swarm_key: opts.swarm_key,
        allow: opts.allow.clone(),
    };
    let dht = Dht::start(
        key.clone(),
        opts.listen.clone(),
        opts.bootstrap.clone(),
        true,
        &access,
    )
    .await?;
    let shard = expert_shard(&model, &opts)?;
    let span = match opts.span {
        // An expert-only node holds little of each block: all of them unless told.
        SpanChoice::Auto if opts.experts_only => Span::full(blocks),
        SpanChoice::Fixed(s) => {
            s.check(blocks).map_err(crate::LoadError::from)?;
            s
        }
        SpanChoice::Auto => {
            let fit = blocks_that_fit(&model, crate::system::memory_available()).max(1);
            let n = opts.max_blocks.map_or(fit, |m| m.min(fit)).max(1);
            let records = if opts.bootstrap.is_empty() {
                Vec::new()
            } else {
                dht.lookup(Some(&id)).await?
            };
            let span = least_served_window(&coverage(&records, blocks), n);
            info!(
                "--span auto: {n} blocks fit; {} nodes serve this model; taking {span}",
                records.len()
            );
            span
        }
    };
    let mut engine_options = opts.engine;
    engine_options.experts = shard;
    let engine = Arc::new(Engine::load(&model, span, engine_options, progress)?);
    // A span holding some experts needs its peers to run a step, and one holding experts only
    // runs none: neither is measured now.
    let measured = match shard {
        Some(s) if !s.runs_alone() => 0.0,
        _ => measure(&engine)?,
    };
    let tokens_per_s = opts.faults.claim_tokens_per_s.unwrap_or(measured);
    match shard {
        Some(s) if !s.runs_alone() => info!(
            "serving {s} in blocks {span} of {} on {}",
            model.name(),
            engine.describe()
        ),
        _ => info!(
            "serving blocks {span} of {} on {}: {tokens_per_s:.1} tokens/s",
            model.name(),
            engine.describe()
        ),
    }
    let model_info = match (&spec, engine.has_embed()) {
        (Some(spec), true) => Some(ModelInfo {
            model_id: id.clone(),
            content_hash: content_hash.clone(),
            tokenizer: spec.clone(),
            blocks,
            vocab: model.config.vocab as u32,
            context: model.config.context as u32,
        }),
        _ => None,
    };
    let server = Server::bind(
        engine.clone(),
        key.clone(),
        SocketAddr::new(listen_ip(&opts.listen), 0),
        ServerOptions {
            max_sessions: opts.max_sessions,
            // An expert-only node keeps no KV cache.
            max_kv_tokens: match opts.max_kv_tokens {
                _ if engine.experts_only() => 0,
                Some(n) => n,
                None => kv_tokens_that_fit(&engine, crate::system::memory_available()),
            },
            idle_timeout: opts.idle_timeout,
            model_info,
            swarm_key: opts.swarm_key,
            allow: (!opts.allow.is_empty()).then(|| opts.allow.iter().copied().collect()),
            fault_perturb: opts.faults.perturb,
            prefix_cache_tokens: opts.prefix_cache_tokens,
            ..ServerOptions::new(opts.name.clone(), id.clone())
        },
    )?;
    tokio::spawn(server.clone().serve());
    let peers = match (&model.config.moe, shard) {
        (Some(moe), Some(s)) if !s.only && !s.is_all() => {
            let c = server.caller(model.config.hidden, moe.ffn, Some(dht.clone()));
            let peers = ExpertPeers::new(c);
            server.set_remote(Remote(Some(Arc::new(peers.clone()))));
            Some(peers)
        }
        _ => None,
    };
    let port = server.local_addr()?.port();
    info!("data plane bound on {}", server.local_addr()?);
    let bootstrap_addrs = dht.listen_addrs().await?;
    let mut addrs: Vec<String> = match opts.public_addr {
        Some(a) => vec![a.to_string()],
        None => bootstrap_addrs
            .iter()
            .map(|a| SocketAddr::new(listen_ip(a), port).to_string())
            .collect(),
    };
    addrs.dedup();
    let record = NodeRecord {
        peer_id: dht.peer_id.to_string(),
        addrs,
        model_id: id.clone(),
        model_name: model.name(),
        span,
        blocks,
        backend: engine.describe(),
        device: if matches!(*engine, Engine::Cpu(_)) {
            crate::system::cpu_name()
        } else {
            engine.describe()
        },
        memory_total: crate::system::memory_total(),
        memory_free: crate::system::memory_available(),
        tokens_per_s,
        kv_tokens_free: server.kv_tokens_free() as u64,
        experts: shard,
        protocol_version: PROTOCOL_VERSION,
        name: opts.name.clone(),
        expires_unix: 0,
    };
    // Announce now and keep the announcement fresh; a node with `--span auto` moves to cover
    // a gap that a departed node left, when its own span stays covered without it.
    let (d, s, mut r, k) = (dht.clone(), server.clone(), record.clone(), key.clone());
    let claim = opts.faults.claim_tokens_per_s;
    let mover = (opts.span == SpanChoice::Auto).then(|| Mover {
        model: Arc::new(model),
        options: engine_options,
    });
    let announcer = tokio::spawn(async move {
        loop {
            if let Some(m) = &mover {
                m.rebalance(&d, &s, &mut r).await;
            }
            r.expires_unix = dht::now_unix() + RECORD_TTL.as_secs();
            r.memory_free = crate::system::memory_available();
            r.kv_tokens_free = s.kv_tokens_free() as u64;
            match dht::sign(&k, &r) {
                Ok(signed) => {
                    if d.announce(signed, &r.model_id).await.is_err() {
                        return;
                    }
                }
                Err(e) => warn!("cannot sign the record: {e}"),
            }
            if let Some(p) = &peers {
                if let Ok(records) = d.lookup(Some(&r.model_id)).await {
                    p.update(&records);
                }
                // A span holding some of the experts is measured once its peers answer: its
                // speed then includes their round trips, which the route planner weighs.
                if r.tokens_per_s == 0.0 && claim.is_none() {
                    let e = s.engine();
                    match tokio::task::spawn_blocking(move || measure(&e)).await {
                        Ok(Ok(tps)) => {
                            info!("with its expert peers: {tps:.1} tokens/s");
                            r.tokens_per_s = tps;
                            continue;
                        }
                        Ok(Err(e)) => info!("not measured yet: {e}"),
                        Err(e) => warn!("measuring: {e}"),
                    }
                }
            }
            tokio::time::sleep(REPUBLISH).await;
        }
    });
    Ok(RunningNode {
        server,
        dht,
        record,
        bootstrap_addrs,
        announcer: announcer.abort_handle(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_served_window_fills_gaps_first() {
        assert_eq!(
            least_served_window(&[0; 30], 15),
            Span { start: 0, end: 15 }
        );
        let mut c = vec![1; 15];
        c.extend(vec![0; 15]);
        assert_eq!(least_served_window(&c, 15), Span { start: 15, end: 30 });
        assert_eq!(least_served_window(&c, 30), Span { start: 0, end: 30 });
        assert_eq!(
            least_served_window(&[2, 2, 1, 2], 1),
            Span { start: 2, end: 3 }
        );
    }
}
