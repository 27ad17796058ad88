//! `--local`: a swarm of nodes inside this process, on loopback, that split a model between
//! them. They run the same QUIC and DHT code as nodes on separate machines.

use std::path::Path;
use std::time::{Duration, Instant};

use baton_node::join::{join, JoinError, JoinOptions, RunningNode, SpanChoice};
use baton_node::net::generate_identity;
use baton_node::EngineOptions;
use baton_protocol::Span;
use libp2p::Multiaddr;

use crate::swarm::{SwarmClient, SwarmError};

pub struct LocalSwarm {
    pub nodes: Vec<RunningNode>,
    /// Where a client joins it.
    pub bootstrap: Vec<Multiaddr>,
}

/// `n` contiguous spans that split `blocks` as evenly as they can (the first ones take the
/// remainder).
pub fn even_spans(blocks: u32, n: u32) -> Vec<Span> {
    let n = n.clamp(1, blocks.max(1));
    let (base, extra) = (blocks / n, blocks % n);
    let mut start = 0;
    (0..n)
        .map(|i| {
            let len = base + u32::from(i < extra);
            let span = Span {
                start,
                end: start + len,
            };
            start += len;
            span
        })
        .collect()
}

impl LocalSwarm {
    /// Starts `n` nodes serving even spans of `model`, each keeping up to
    /// `prefix_cache_tokens` prompt tokens for reuse; `progress(node, done, total)` follows the
    /// loading of each.
    pub async fn start(
        model: &Path,
        n: usize,
        engine: EngineOptions,
        prefix_cache_tokens: usize,
        progress: &mut dyn FnMut(usize, usize, usize),
    ) -> Result<LocalSwarm, JoinError> {
        let file = baton_node::ModelFile::open(model)?;
        let spans = even_spans(file.config.layers as u32, n as u32);
        drop(file);
        let listen: Multiaddr = "/ip4/127.0.0.1/tcp/0"
            .parse()
            .map_err(|e| JoinError::Other(format!("{e}")))?;
        let mut nodes: Vec<RunningNode> = Vec::with_capacity(spans.len());
        let mut bootstrap = Vec::new();
        for (i, span) in spans.into_iter().enumerate() {
            let options = JoinOptions {
                model: model.to_path_buf(),
                span: SpanChoice::Fixed(span),
                engine,
                listen: listen.clone(),
                bootstrap: bootstrap.clone(),
                name: format!("local-{}", i + 1),
                max_blocks: None,
                max_sessions: 64,
                public_addr: None,
                max_kv_tokens: None,
                prefix_cache_tokens,
                idle_timeout: std::time::Duration::from_secs(300),
                swarm_key: None,
                allow: Vec::new(),
                experts: None,
                experts_only: false,
                faults: Default::default(),
            };
            let node = join(options, generate_identity(), &mut |d, t| progress(i, d, t)).await?;
            if bootstrap.is_empty() {
                bootstrap = node.bootstrap_addrs.clone();
            }
            nodes.push(node);
        }
        Ok(LocalSwarm { nodes, bootstrap })
    }

    /// A client of this swarm, once it sees every node's record.
    pub async fn client(&self) -> Result<SwarmClient, SwarmError> {
        let client = SwarmClient::connect(self.bootstrap.clone(), Default::default(), None).await?;
        let start = Instant::now();
        while client.dht.lookup(None).await?.len() < self.nodes.len() {
            if start.elapsed() > Duration::from_secs(20) {
                return Err(SwarmError::Other(
                    "the local nodes did not all appear on the DHT".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(client)
    }

    /// Stops every node.
    pub fn shutdown(&self) {
        for n in &self.nodes {
            n.server.shutdown();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_spans_cover_every_block_once() {
        let s = even_spans(30, 3);
        assert_eq!(
            s,
            vec![
                Span { start: 0, end: 10 },
                Span { start: 10, end: 20 },
                Span { start: 20, end: 30 }
            ]
        );
        let s = even_spans(30, 4);
        assert_eq!(
            s.iter().map(|s| s.end - s.start).collect::<Vec<_>>(),
            [8, 8, 7, 7]
        );
        assert_eq!(s.last().map(|s| s.end), Some(30));
        assert_eq!(even_spans(2, 5).len(), 2);
    }
}
