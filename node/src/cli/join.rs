//! `baton-node join`: serve a span of a model to a swarm.

use std::path::PathBuf;

use anyhow::Context;
use baton_node::join::{join, JoinOptions, SpanChoice};
use baton_node::net::{generate_identity, load_or_create_identity};
use baton_node::EngineOptions;
use clap::Args;
use libp2p::Multiaddr;

use super::ModelArgs;

#[derive(Args)]
pub struct JoinArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The blocks to serve: `A..B` (half-open; a span from 0 also serves the embedding, one to
    /// the last block the head), or `auto` to fill the least-served part of the swarm.
    #[arg(long, default_value = "auto")]
    pub span: SpanChoice,
    /// With `--span auto`: serve at most this many blocks.
    #[arg(long)]
    pub max_blocks: Option<u32>,
    /// The control plane's TCP address; the data plane (QUIC) listens on the same IP.
    #[arg(long, default_value = "/ip4/0.0.0.0/tcp/0")]
    pub listen: Multiaddr,
    /// A node of the swarm to join, as the first node printed it (…/p2p/<peer id>). Without it
    /// the node starts a new swarm.
    #[arg(long)]
    pub bootstrap: Vec<Multiaddr>,
    /// The node's key, kept so that a restarted node keeps its peer id (made if absent).
    /// Default: `~/.cache/baton/identity/NAME.key` when --name is given, else a new key for
    /// each run.
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// A name for logs and `baton swarm`; it also names the node's key file.
    #[arg(long)]
    pub name: Option<String>,
    /// Sessions held at once.
    #[arg(long, default_value_t = 16)]
    pub max_sessions: usize,
    /// Announce this data-plane address (IP:PORT) instead of the bound one, when the node is
    /// reached through port forwarding.
    #[arg(long, value_name = "IP:PORT")]
    pub public_addr: Option<std::net::SocketAddr>,
    /// The most KV tokens all sessions together may hold; a session that does not fit is
    /// refused and routed elsewhere (default: what half of the free memory holds).
    #[arg(long)]
    pub max_kv_tokens: Option<usize>,
    /// Prefix reuse: the most prompt tokens the node keeps, after their sessions end, for later
    /// sessions of the same client whose prompts begin the same way (a system prompt, the
    /// earlier turns of a chat) to start from without computing them again. Their memory is
    /// beside --max-kv-tokens. 0 keeps none.
    #[arg(long, value_name = "TOKENS", default_value_t = baton_node::server::PREFIX_CACHE_TOKENS)]
    pub prefix_cache_tokens: usize,
    /// Close a session, and free its KV cache, after this many seconds without a step.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub idle_timeout: u64,
    /// On Ctrl-C or SIGTERM, wait up to this many seconds for clients to move their sessions
    /// to other nodes before leaving.
    #[arg(long, default_value_t = 20, value_name = "SECONDS")]
    pub drain_timeout: u64,
    /// A private swarm's key file (libp2p's pnet format: `/key/swarm/psk/1.0.0/`, `/base16/`,
    /// 64 hex digits); peers without it are refused on the DHT and the data plane.
    #[arg(long, value_name = "FILE")]
    pub swarm_key: Option<PathBuf>,
    /// Talk only to this peer (repeat for several); the default is everyone.
    #[arg(long, value_name = "PEER_ID")]
    pub allow_peer: Vec<baton_node::net::PeerId>,
    /// Of a mixture-of-experts model: hold only the routed experts `E0..E1` of each
    /// mixture-of-experts layer of the span (half-open, like --span). The tokens routed to
    /// the others go to peers holding them, one message per layer and step. Best on a LAN or
    /// in a datacenter: each such layer costs a round trip to the expert peers.
    #[arg(long, value_name = "E0..E1")]
    pub experts: Option<baton_protocol::Span>,
    /// Hold the routed experts (all, or --experts) of the span's mixture-of-experts layers
    /// and nothing else: no attention, no KV cache, no sessions. The node answers other
    /// nodes' expert calls. With --span auto it takes every block.
    #[arg(long)]
    pub experts_only: bool,
    /// Serve `GET /metrics` (Prometheus' text format: passes, steps per pass, sessions, KV
    /// use) on this address, e.g. 127.0.0.1:9090. Off by default.
    #[arg(long, value_name = "IP:PORT")]
    pub metrics: Option<std::net::SocketAddr>,
}

pub fn run(a: JoinArgs) -> anyhow::Result<()> {
    super::set_threads(a.model.threads)?;
    // One thread for the network; the steps of all sessions run on the node's pass thread
    // (continuous batching, see `server::batch`).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(serve(a))
}

async fn serve(a: JoinArgs) -> anyhow::Result<()> {
    let default_file = a.name.as_ref().map(|n| {
        baton_node::system::cache_dir()
            .join("identity")
            .join(format!("{n}.key"))
    });
    let key = match a.identity.as_ref().or(default_file.as_ref()) {
        Some(path) => load_or_create_identity(path)?,
        None => generate_identity(),
    };
    let name = a.name.clone().unwrap_or_else(|| {
        let id = key.public().to_peer_id().to_string();
        format!("node-{}", &id[id.len() - 6..])
    });
    let options = JoinOptions {
        model: a.model.model.clone(),
        span: a.span,
        engine: EngineOptions {
            backend: a.model.backend,
            kv_dtype: a.model.kv_dtype,
            ..Default::default()
        },
        listen: a.listen.clone(),
        bootstrap: a.bootstrap.clone(),
        name: name.clone(),
        max_blocks: a.max_blocks,
        max_sessions: a.max_sessions,
        public_addr: a.public_addr,
        max_kv_tokens: a.max_kv_tokens,
        prefix_cache_tokens: a.prefix_cache_tokens,
        idle_timeout: std::time::Duration::from_secs(a.idle_timeout),
        swarm_key: a
            .swarm_key
            .as_deref()
            .map(baton_node::net::read_swarm_key)
            .transpose()?,
        allow: a.allow_peer.clone(),
        experts: a.experts,
        experts_only: a.experts_only,
        faults: faults()?,
    };
    // Bind first, so that a taken port fails before the model loads.
    let metrics = match a.metrics {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for metrics"))?,
        ),
        None => None,
    };
    let bar = super::progress_bar(&a.model.model);
    let node = join(options, key, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })
    .await?;
    bar.finish_and_clear();
    let r = &node.record;
    let speed = match r.experts {
        // A node holding a shard of the experts needs its peers for a step.
        Some(s) if !s.runs_alone() => s.to_string(),
        _ => format!("{:.1} tokens/s", r.tokens_per_s),
    };
    println!(
        "{name} ({}) serves blocks {} of {} ({} blocks, model id {}) on {}, {speed}",
        r.peer_id, r.span, r.model_name, r.blocks, r.model_id, r.backend
    );
    println!(
        "data plane (QUIC): {} (bound on {})",
        r.addrs.join(", "),
        node.server.local_addr()?
    );
    if let Some(listener) = metrics {
        println!("metrics: http://{}/metrics", listener.local_addr()?);
        tokio::spawn(node.server.clone().serve_metrics(listener));
    }
    for addr in &node.bootstrap_addrs {
        println!("join this swarm with: --bootstrap {addr}");
    }
    stop_signal().await?;
    println!("{name}: shutting down; moving open sessions elsewhere");
    node.stop_announcing();
    node.server
        .drain(std::time::Duration::from_secs(a.drain_timeout))
        .await;
    node.server.shutdown();
    println!("{name}: stopped");
    Ok(())
}

/// Ctrl-C, or SIGTERM where there is one.
async fn stop_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}

/// Fault injection, for testing what clients do about a misbehaving node; never set otherwise.
/// `BATON_FAULT_PERTURB=S` makes the node compute wrong outputs (each value scaled by up to
/// S); `BATON_FAULT_CLAIM=T` makes it announce T decode tokens/s whatever it measured.
fn faults() -> anyhow::Result<baton_node::join::Faults> {
    let var = |name: &str| -> anyhow::Result<Option<f32>> {
        match std::env::var(name) {
            Err(_) => Ok(None),
            Ok(v) => {
                let x: f32 = v
                    .parse()
                    .map_err(|_| anyhow::anyhow!("{name}={v} is not a number"))?;
                tracing::warn!("{name}={x}: this node misbehaves on purpose");
                Ok(Some(x))
            }
        }
    };
    Ok(baton_node::join::Faults {
        perturb: var("BATON_FAULT_PERTURB")?.unwrap_or(0.0),
        claim_tokens_per_s: var("BATON_FAULT_CLAIM")?,
    })
}
