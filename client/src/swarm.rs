//! A thin client of a swarm: find the nodes of a model on the DHT, measure them, plan a route,
//! fetch the model's tokenizer from a node that holds `embed`, and generate along the route.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use baton_node::dht::{Dht, DhtError};
use baton_node::model::model_id;
use baton_node::net::{self, generate_identity, Keypair, NetError, PeerId};
use baton_node::tokenizer::Tokenizer;
use baton_protocol::record::NodeRecord;
use baton_protocol::wire::{GetModelInfo, Hello, Message, ModelInfo};
use libp2p::Multiaddr;

use crate::remote::{Hop, RemoteSession};
use crate::route::{plan, PlannedHop, RouteError};

#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    #[error(transparent)]
    Dht(#[from] DhtError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("no node of the swarm serves a model named {0}")]
    UnknownModel(String),
    #[error("the swarm serves several models; choose one with --model: {0}")]
    WhichModel(String),
    #[error("the swarm answered no lookup: is the bootstrap address right?")]
    Empty,
    #[error("node {0} sent a tokenizer that does not match the model id")]
    ForgedTokenizer(String),
    #[error("{0}")]
    Other(String),
}

pub struct SwarmClient {
    pub dht: Dht,
    pub key: Keypair,
    pub endpoint: quinn::Endpoint,
}

/// How long a client keeps asking a swarm it just joined before it concludes it is empty.
const FIRST_LOOKUP: Duration = Duration::from_secs(10);

fn first_addr(r: &NodeRecord) -> Option<SocketAddr> {
    r.addrs.iter().find_map(|a| a.parse().ok())
}

pub fn hop_of(r: &NodeRecord) -> Result<Hop, SwarmError> {
    Ok(Hop {
        peer_id: r
            .peer_id
            .parse()
            .map_err(|_| SwarmError::Other(format!("bad peer id {}", r.peer_id)))?,
        addr: first_addr(r)
            .ok_or_else(|| SwarmError::Other(format!("{} has no address", r.name)))?,
        span: r.span,
    })
}

impl SwarmClient {
    pub async fn connect(bootstrap: Vec<Multiaddr>) -> Result<SwarmClient, SwarmError> {
        let key = generate_identity();
        let listen: Multiaddr = "/ip4/127.0.0.1/tcp/0"
            .parse()
            .map_err(|e| SwarmError::Other(format!("{e}")))?;
        let dht = Dht::start(key.clone(), listen, bootstrap, false).await?;
        let endpoint = net::endpoint(
            &key,
            "0.0.0.0:0"
                .parse()
                .map_err(|e| SwarmError::Other(format!("{e}")))?,
        )?;
        Ok(SwarmClient { dht, key, endpoint })
    }

    /// Every node's record, asking again for a while when the swarm was just joined.
    pub async fn nodes(&self) -> Result<Vec<NodeRecord>, SwarmError> {
        let start = Instant::now();
        loop {
            let found = self.dht.lookup(None).await?;
            if !found.is_empty() || start.elapsed() > FIRST_LOOKUP {
                return Ok(found);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// The records of the model named `name` (its name or its id), or of the only model served.
    pub async fn model_nodes(
        &self,
        name: Option<&str>,
    ) -> Result<(String, Vec<NodeRecord>), SwarmError> {
        let all = self.nodes().await?;
        if all.is_empty() {
            return Err(SwarmError::Empty);
        }
        let mut ids: Vec<&str> = all
            .iter()
            .filter(|r| name.is_none_or(|n| r.model_name == n || r.model_id == n))
            .map(|r| r.model_id.as_str())
            .collect();
        ids.sort();
        ids.dedup();
        let id = match (ids.as_slice(), name) {
            ([id], _) => id.to_string(),
            ([], Some(n)) => return Err(SwarmError::UnknownModel(n.to_string())),
            _ => return Err(SwarmError::WhichModel(ids.join(", "))),
        };
        let records = all.into_iter().filter(|r| r.model_id == id).collect();
        Ok((id, records))
    }

    /// Round-trip times to the nodes' data planes; unreachable nodes are left out.
    pub async fn rtts(&self, records: &[NodeRecord]) -> HashMap<String, Duration> {
        let mut out = HashMap::new();
        for r in records {
            let Ok(hop) = hop_of(r) else { continue };
            let ping = self.ping(&hop);
            if let Ok(Ok(rtt)) = tokio::time::timeout(Duration::from_secs(3), ping).await {
                out.insert(r.peer_id.clone(), rtt);
            }
        }
        out
    }

    /// The time a hello takes there and back on a fresh stream, after the handshake: what one
    /// message of a step costs on the way to this node.
    async fn ping(&self, hop: &Hop) -> Result<Duration, NetError> {
        let conn = net::connect(&self.endpoint, &self.key, hop.addr, hop.peer_id).await?;
        let mut best = Duration::MAX;
        for _ in 0..3 {
            let t0 = Instant::now();
            let (mut send, mut recv) = conn.open_bi().await?;
            net::write_msg(&mut send, &Message::Hello(Hello::new("ping"))).await?;
            match net::read_msg(&mut recv).await? {
                Some(Message::Hello(_)) => best = best.min(t0.elapsed()),
                _ => return Err(NetError::Protocol("no hello back".into())),
            }
            let _ = send.finish();
        }
        Ok(best)
    }

    /// Plans a route for the model: nodes that do not answer are left out.
    pub async fn route(&self, name: Option<&str>) -> Result<(String, Vec<PlannedHop>), SwarmError> {
        let (id, records) = self.model_nodes(name).await?;
        let rtt = self.rtts(&records).await;
        let reachable: Vec<NodeRecord> = records
            .into_iter()
            .filter(|r| rtt.contains_key(&r.peer_id))
            .collect();
        let blocks = reachable.first().map_or(0, |r| r.blocks);
        Ok((id, plan(&reachable, blocks, &rtt)?))
    }

    /// The tokenizer of model `id`, from a node that holds `embed`, checked against the id.
    pub async fn tokenizer(
        &self,
        hop: &Hop,
        id: &str,
    ) -> Result<(ModelInfo, Tokenizer), SwarmError> {
        let conn = net::connect(&self.endpoint, &self.key, hop.addr, hop.peer_id).await?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(NetError::from)?;
        net::write_msg(&mut send, &Message::Hello(Hello::new("baton"))).await?;
        net::write_msg(
            &mut send,
            &Message::GetModelInfo(GetModelInfo {
                model_id: id.into(),
            }),
        )
        .await?;
        let info = loop {
            match net::read_msg(&mut recv).await? {
                Some(Message::Hello(_)) => continue,
                Some(Message::ModelInfo(info)) => break info,
                Some(Message::Error(e)) => return Err(NetError::Remote(e).into()),
                other => return Err(SwarmError::Other(format!("unexpected answer: {other:?}"))),
            }
        };
        let _ = send.finish();
        if info.model_id != id || model_id(&info.tokenizer, &info.content_hash) != id {
            return Err(SwarmError::ForgedTokenizer(hop.peer_id.to_string()));
        }
        let tok = Tokenizer::from_spec(&info.tokenizer).map_err(SwarmError::Other)?;
        Ok((info, tok))
    }

    /// Opens a generation session along a planned route.
    pub async fn open(
        &self,
        route: &[PlannedHop],
        options: &crate::remote::SessionOptions,
    ) -> Result<RemoteSession, SwarmError> {
        let hops: Vec<Hop> = route
            .iter()
            .map(|h| hop_of(&h.record))
            .collect::<Result<_, _>>()?;
        Ok(RemoteSession::open(&self.endpoint, &self.key, &hops, options).await?)
    }

    pub fn peer_id(&self) -> PeerId {
        self.dht.peer_id
    }
}
