//! A thin client of a swarm: find the nodes of a model on the DHT, measure them, plan a route,
//! fetch the model's tokenizer from a node that holds `embed`, and generate along the route.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_node::dht::{Dht, DhtError};
use baton_node::model::model_id;
use baton_node::net::{self, generate_identity, Access, Greeting, Keypair, NetError, PeerId};
use baton_node::tokenizer::Tokenizer;
use baton_protocol::record::NodeRecord;
use baton_protocol::wire::{GetModelInfo, Message, ModelInfo};
use libp2p::Multiaddr;
use tracing::warn;

use crate::remote::{Banned, Hop, RemoteSession};
use crate::route::{agreed_blocks, hop_records, plan, PlannedHop, RouteError};

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
    #[error("the swarm answered no lookup: is the bootstrap address right? (a private swarm also needs --swarm-key)")]
    Empty,
    #[error(
        "node {0} sent a model description (tokenizer, block count) that the model id refutes"
    )]
    ForgedTokenizer(String),
    #[error("every node that could take the session is full: {0}")]
    Busy(String),
    #[error("{0}")]
    Other(String),
}

#[derive(Clone)]
pub struct SwarmClient {
    pub dht: Dht,
    pub key: Keypair,
    pub endpoint: quinn::Endpoint,
    pub access: Access,
    greeting: Greeting,
    /// Model descriptions already checked against their ids.
    infos: Arc<std::sync::Mutex<HashMap<String, ModelInfo>>>,
    /// Peers found computing wrong outputs (by this client, or by clients of this machine in the
    /// last day): left out of routes.
    pub banned: Banned,
}

/// How long a client keeps asking a swarm it just joined before it concludes it is empty.
const FIRST_LOOKUP: Duration = Duration::from_secs(10);
/// How long a node has to answer a hello.
const PING_WAIT: Duration = Duration::from_secs(3);
/// How long a node has to send the model's description (its tokenizer: up to a few MB).
const INFO_WAIT: Duration = Duration::from_secs(30);

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
        name: r.name.clone(),
        claimed_us: crate::slow::claimed_us(r.tokens_per_s),
    })
}

impl SwarmClient {
    /// Joins the swarm's DHT as a client. `access` holds a private swarm's key and the peers
    /// this client may use (all when empty).
    pub async fn connect(
        bootstrap: Vec<Multiaddr>,
        access: Access,
        key: Option<Keypair>,
    ) -> Result<SwarmClient, SwarmError> {
        let key = key.unwrap_or_else(generate_identity);
        let listen: Multiaddr = "/ip4/127.0.0.1/tcp/0"
            .parse()
            .map_err(|e| SwarmError::Other(format!("{e}")))?;
        let dht = Dht::start(key.clone(), listen, bootstrap, false, &access).await?;
        let endpoint = net::endpoint(
            &key,
            "0.0.0.0:0"
                .parse()
                .map_err(|e| SwarmError::Other(format!("{e}")))?,
        )?;
        let greeting = Greeting {
            name: "baton".into(),
            me: key.public().to_peer_id(),
            swarm_key: access.swarm_key,
        };
        Ok(SwarmClient {
            dht,
            key,
            endpoint,
            access,
            greeting,
            infos: Arc::default(),
            // Nodes this machine's clients found lying in the last day stay out of routes.
            banned: Arc::new(std::sync::Mutex::new(
                crate::bans::recent()
                    .iter()
                    .filter_map(|b| b.peer_id.parse().ok())
                    .collect(),
            )),
        })
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
        self.rtts_within(records, Duration::from_secs(3)).await
    }

    /// Round trips measured at once, giving each node `limit` to answer.
    async fn rtts_within(
        &self,
        records: &[NodeRecord],
        limit: Duration,
    ) -> HashMap<String, Duration> {
        let pings = records.iter().map(|r| async move {
            let hop = hop_of(r).ok()?;
            let rtt = tokio::time::timeout(limit, self.ping(&hop))
                .await
                .ok()?
                .ok()?;
            Some((r.peer_id.clone(), rtt))
        });
        futures_util::future::join_all(pings)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// The time a hello takes there and back on a fresh stream, after the handshake: what one
    /// message of a step costs on the way to this node.
    async fn ping(&self, hop: &Hop) -> Result<Duration, NetError> {
        let conn = net::connect(&self.endpoint, &self.key, hop.addr, hop.peer_id).await?;
        let mut best = Duration::MAX;
        for _ in 0..3 {
            let t0 = Instant::now();
            let (mut send, _recv) =
                net::open_stream(&conn, &hop.peer_id, &self.greeting, PING_WAIT).await?;
            best = best.min(t0.elapsed());
            let _ = send.finish();
        }
        Ok(best)
    }

    /// Plans a route for the model: nodes that do not answer are left out.
    pub async fn route(&self, name: Option<&str>) -> Result<(String, Vec<PlannedHop>), SwarmError> {
        self.route_avoiding(name, &[]).await
    }

    /// Plans a route that avoids `avoid` (nodes that refused a session).
    pub async fn route_avoiding(
        &self,
        name: Option<&str>,
        avoid: &[PeerId],
    ) -> Result<(String, Vec<PlannedHop>), SwarmError> {
        let (id, mut records) = self.model_nodes(name).await?;
        let avoid: Vec<String> = avoid.iter().map(|p| p.to_string()).collect();
        records.retain(|r| !avoid.contains(&r.peer_id) && !self.is_banned(&r.peer_id));
        let records = hop_records(records);
        let rtt = self.rtts(&records).await;
        let reachable: Vec<NodeRecord> = records
            .into_iter()
            .filter(|r| rtt.contains_key(&r.peer_id))
            .collect();
        // The model's block count comes from a node serving embed, whose answer the model id
        // commits to; records that say otherwise are left out.
        let blocks = match self.model_info(&id, &reachable, &rtt).await? {
            Some(info) => info.blocks,
            // With no node serving embed, the records' majority plans a route that says so.
            None => agreed_blocks(&reachable),
        };
        let agreeing: Vec<NodeRecord> = reachable
            .into_iter()
            .filter(|r| r.blocks == blocks)
            .collect();
        Ok((id, plan(&agreeing, blocks, &rtt)?))
    }

    /// Model `id`'s description, from the nearest of `records` serving embed whose answer the
    /// id confirms (cached for the client's lifetime); `None` when no record serves embed.
    /// Nodes whose answer the id refutes are passed over.
    async fn model_info(
        &self,
        id: &str,
        records: &[NodeRecord],
        rtt: &HashMap<String, Duration>,
    ) -> Result<Option<ModelInfo>, SwarmError> {
        if let Some(info) = self.infos.lock().ok().and_then(|m| m.get(id).cloned()) {
            return Ok(Some(info));
        }
        let mut embed: Vec<&NodeRecord> = records.iter().filter(|r| r.span.start == 0).collect();
        embed.sort_by_key(|r| rtt.get(&r.peer_id).copied().unwrap_or(Duration::MAX));
        let mut last = None;
        for r in embed {
            match self.fetch_info(&hop_of(r)?, id).await {
                Ok(info) => {
                    if let Ok(mut m) = self.infos.lock() {
                        m.insert(id.to_string(), info.clone());
                    }
                    return Ok(Some(info));
                }
                Err(e) => {
                    warn!("{}: {e}", r.name);
                    last = Some(e);
                }
            }
        }
        last.map_or(Ok(None), Err)
    }

    /// The tokenizer of model `id`, from a node that holds `embed`, checked against the id.
    pub async fn tokenizer(
        &self,
        hop: &Hop,
        id: &str,
    ) -> Result<(ModelInfo, Tokenizer), SwarmError> {
        let cached = self.infos.lock().ok().and_then(|m| m.get(id).cloned());
        let info = match cached {
            Some(info) => info,
            None => self.fetch_info(hop, id).await?,
        };
        let tok = Tokenizer::from_spec(&info.tokenizer).map_err(SwarmError::Other)?;
        Ok((info, tok))
    }

    /// Model `id`'s description from `hop`, checked against the id.
    async fn fetch_info(&self, hop: &Hop, id: &str) -> Result<ModelInfo, SwarmError> {
        let conn = net::connect(&self.endpoint, &self.key, hop.addr, hop.peer_id).await?;
        let (mut send, mut recv) =
            net::open_stream(&conn, &hop.peer_id, &self.greeting, PING_WAIT).await?;
        net::write_msg(
            &mut send,
            &Message::GetModelInfo(GetModelInfo {
                model_id: id.into(),
            }),
        )
        .await?;
        let answer = async {
            loop {
                match net::read_msg(&mut recv).await? {
                    Some(Message::Hello(_)) => continue,
                    Some(Message::ModelInfo(info)) => return Ok(info),
                    Some(Message::Error(e)) => return Err(NetError::Remote(e).into()),
                    other => {
                        return Err(SwarmError::Other(format!("unexpected answer: {other:?}")))
                    }
                }
            }
        };
        // A node that never answers does not stall the client.
        let info = tokio::time::timeout(INFO_WAIT, answer)
            .await
            .map_err(|_| SwarmError::Other(format!("{} sent no model description", hop.name)))??;
        let _ = send.finish();
        if info.model_id != id || model_id(&info.tokenizer, &info.content_hash, info.blocks) != id {
            return Err(SwarmError::ForgedTokenizer(hop.peer_id.to_string()));
        }
        Ok(info)
    }

    /// Opens a generation session along a planned route; it replaces hops that fail or leave
    /// with other nodes of the swarm serving the same span.
    pub async fn open(
        &self,
        route: &[PlannedHop],
        options: &crate::remote::SessionOptions,
    ) -> Result<RemoteSession, SwarmError> {
        let hops: Vec<Hop> = route
            .iter()
            .map(|h| hop_of(&h.record))
            .collect::<Result<_, _>>()?;
        let (me, model) = (self.clone(), options.model_id.clone());
        let find: crate::remote::FindHop = Arc::new(move |span, exclude| {
            let (me, model) = (me.clone(), model.clone());
            Box::pin(async move { me.replacement(&model, span, &exclude).await })
        });
        let mut session =
            RemoteSession::open(&self.endpoint, &self.key, &hops, options, Some(find)).await?;
        session.verify_with(self.banned.clone());
        Ok(session)
    }

    /// Whether `peer` was found computing wrong hidden states.
    pub fn is_banned(&self, peer: &str) -> bool {
        self.banned
            .lock()
            .map(|b| b.iter().any(|p| p.to_string() == peer))
            .unwrap_or(false)
    }

    /// The reachable node serving exactly `span` of `model` (none of `exclude`) with the
    /// lowest round trip plus compute time.
    pub async fn replacement(
        &self,
        model: &str,
        span: baton_protocol::Span,
        exclude: &[PeerId],
    ) -> Option<Hop> {
        let excluded: Vec<String> = exclude.iter().map(|p| p.to_string()).collect();
        let candidates: Vec<NodeRecord> = hop_records(self.dht.lookup(Some(model)).await.ok()?)
            .into_iter()
            .filter(|r| r.span == span && !excluded.contains(&r.peer_id))
            .filter(|r| !self.is_banned(&r.peer_id))
            .collect();
        // A repair waits on this: a node that does not answer within a second is no candidate.
        let rtt = self.rtts_within(&candidates, Duration::from_secs(1)).await;
        candidates
            .iter()
            .filter_map(|r| {
                let t = rtt.get(&r.peer_id)?.as_secs_f64() + 1.0 / r.tokens_per_s.max(1e-3) as f64;
                Some((t, r))
            })
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .and_then(|(_, r)| hop_of(r).ok())
    }

    /// Lets the data plane's goodbyes reach the nodes before the process exits.
    pub async fn finish(&self) {
        self.endpoint.close(0u32.into(), b"client done");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }

    pub fn peer_id(&self) -> PeerId {
        self.dht.peer_id
    }
}
