//! `baton serve`: an OpenAI-compatible HTTP server over a swarm (or local nodes).

use std::net::SocketAddr;

use anyhow::Context;
use baton_client::openai::{router, AppState};
use clap::Args;

use super::source::SourceArgs;

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// The address to listen on (0.0.0.0 to accept other machines).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,
    /// The port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Requests that may wait for room on the nodes (their sessions are full); beyond it,
    /// requests are answered 429 at once.
    #[arg(long, default_value_t = 256)]
    pub max_queue: usize,
}

pub async fn run(a: ServeArgs) -> anyhow::Result<()> {
    let addr = SocketAddr::new(a.host, a.port);
    // Bind first, so that a taken port fails before the model loads.
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let source = a.source.connect().await?;
    let name = source.model.name.clone();
    let bound = listener.local_addr()?;
    let nodes = source
        .local
        .as_ref()
        .map(|l| l.nodes.iter().map(|n| n.server.clone()).collect())
        .unwrap_or_default();
    let state = AppState::new(source.model, nodes, a.max_queue);
    eprintln!("serving {name} at http://{bound}/v1 (OpenAI API: /v1/chat/completions, /v1/completions, /v1/models; /health, /metrics)");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .context("the HTTP server stopped")?;
    if let Some(local) = &source.local {
        local.shutdown();
    }
    Ok(())
}
