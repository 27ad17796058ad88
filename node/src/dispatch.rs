//! Expert parallelism, the calling side: a hop holding a span but only some of its routed
//! experts sends, at each mixture-of-experts layer, one [`ExpertCall`] per peer holding some of
//! the experts its tokens chose, carrying only the rows routed there, and waits for their
//! outputs (see [`crate::moe::remote`]).
//!
//! Peers come from the DHT: every record of the model whose span holds the block and whose
//! shard holds the expert (a record without a shard holds every expert). A call that fails or
//! times out marks its peer dead for a while, and its experts go again to another peer holding
//! them. Expert peers keep no state between calls, so nothing is replayed.
//!
//! Which peer runs which expert is decided by [`assign`], which does no I/O.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use baton_protocol::experts::{ExpertCall, ExpertOut, ExpertRows, ExpertShard};
use baton_protocol::record::NodeRecord;
use baton_protocol::wire::Message;
use baton_protocol::Span;
use tokio::sync::Mutex as AsyncMutex;
use tracing::{info, warn};

use crate::dht::{Dht, RECORD_TTL};
use crate::error::RunError;
use crate::moe::remote::{DispatchStats, Pending};
use crate::moe::RemoteExperts;
use crate::net::{self, Greeting, Keypair, NetError, PeerId};

/// How long a peer that failed a call is passed over.
const DEAD_FOR: Duration = RECORD_TTL;
/// What a call may take besides its compute: one round trip and then some.
const CALL_WAIT: Duration = Duration::from_secs(2);
/// Compute speed assumed of the slowest expert peer, for the time a large call may take.
const SLOWEST_FLOPS: f64 = 20e9;

/// A peer that holds experts of some blocks.
#[derive(Clone, Debug, PartialEq)]
pub struct ExpertPeer {
    pub peer: PeerId,
    pub addr: SocketAddr,
    pub span: Span,
    /// `None`: every expert.
    pub shard: Option<ExpertShard>,
}

impl ExpertPeer {
    fn holds(&self, block: u32, expert: u32) -> bool {
        (self.span.start..self.span.end).contains(&block)
            && self.shard.is_none_or(|s| s.holds(expert))
    }

    /// The peers of `records` other than `me`, in the records' order.
    pub fn from_records(records: &[NodeRecord], me: &PeerId) -> Vec<ExpertPeer> {
        records
            .iter()
            .filter_map(|r| {
                let peer: PeerId = r.peer_id.parse().ok()?;
                let addr = r.addrs.iter().find_map(|a| a.parse().ok())?;
                (peer != *me).then_some(ExpertPeer {
                    peer,
                    addr,
                    span: r.span,
                    shard: r.experts,
                })
            })
            .collect()
    }
}

/// Which peer runs each of `experts` (ids) of `block`: for each peer chosen, the indices into
/// `experts` it runs. Peers in `skip` are passed over. Greedy: the peer holding the most of
/// the experts still unplaced goes first (the first of `peers` on ties), so that a step touches
/// few peers. `Err` names an expert no peer holds.
pub fn assign(
    peers: &[ExpertPeer],
    skip: &HashSet<PeerId>,
    block: u32,
    experts: &[u32],
) -> Result<BTreeMap<usize, Vec<usize>>, u32> {
    let mut left: Vec<usize> = (0..experts.len()).collect();
    let mut out: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    while let Some(&first) = left.first() {
        let best = peers
            .iter()
            .enumerate()
            .filter(|(_, p)| !skip.contains(&p.peer))
            .map(|(i, p)| {
                let n = left.iter().filter(|&&x| p.holds(block, experts[x])).count();
                (i, n)
            })
            .filter(|&(_, n)| n > 0)
            .max_by_key(|&(i, n)| (n, std::cmp::Reverse(i)));
        let Some((i, _)) = best else {
            return Err(experts[first]);
        };
        let (mine, rest): (Vec<usize>, Vec<usize>) = left
            .into_iter()
            .partition(|&x| peers[i].holds(block, experts[x]));
        out.entry(i).or_default().extend(mine);
        left = rest;
    }
    Ok(out)
}

type Stream = Arc<AsyncMutex<(quinn::SendStream, quinn::RecvStream)>>;

/// The node's expert peers and its open streams to them.
pub struct ExpertPeers {
    endpoint: quinn::Endpoint,
    key: Keypair,
    greeting: Greeting,
    model_id: String,
    hidden: usize,
    /// Each expert's intermediate width, for how long a call may take.
    ffn: usize,
    dht: Option<Dht>,
    runtime: tokio::runtime::Handle,
    peers: Mutex<Vec<ExpertPeer>>,
    dead: Mutex<HashMap<PeerId, Instant>>,
    streams: AsyncMutex<HashMap<PeerId, Stream>>,
    stats: Mutex<DispatchStats>,
}

/// What a node needs to call expert peers.
pub struct Caller {
    pub endpoint: quinn::Endpoint,
    pub key: Keypair,
    pub greeting: Greeting,
    pub model_id: String,
    pub hidden: usize,
    pub ffn: usize,
    /// Where to look peers up again when no known peer holds an expert.
    pub dht: Option<Dht>,
}

impl ExpertPeers {
    /// Calls are made on the runtime of the calling task.
    pub fn new(c: Caller) -> Arc<ExpertPeers> {
        Arc::new(ExpertPeers {
            endpoint: c.endpoint,
            key: c.key,
            greeting: c.greeting,
            model_id: c.model_id,
            hidden: c.hidden,
            ffn: c.ffn,
            dht: c.dht,
            runtime: tokio::runtime::Handle::current(),
            peers: Mutex::new(Vec::new()),
            dead: Mutex::new(HashMap::new()),
            streams: AsyncMutex::new(HashMap::new()),
            stats: Mutex::new(DispatchStats::default()),
        })
    }

    /// Takes the peers of the model's current records, in peer id order: the DHT answers in
    /// no particular order, and a layer's experts should keep going to the same peers.
    pub fn update(&self, records: &[NodeRecord]) {
        let mut peers = ExpertPeer::from_records(records, &self.greeting.me);
        peers.sort_by_key(|p| p.peer.to_bytes());
        if let Ok(mut p) = self.peers.lock() {
            *p = peers;
        }
    }

    fn alive(&self) -> (Vec<ExpertPeer>, HashSet<PeerId>) {
        let peers = self.peers.lock().map(|p| p.clone()).unwrap_or_default();
        let dead = self
            .dead
            .lock()
            .map(|mut d| {
                d.retain(|_, t| t.elapsed() < DEAD_FOR);
                d.keys().copied().collect()
            })
            .unwrap_or_default();
        (peers, dead)
    }

    fn count(&self, f: impl FnOnce(&mut DispatchStats)) {
        if let Ok(mut s) = self.stats.lock() {
            f(&mut s);
        }
    }

    /// Runs `calls` of `block` on peers: each expert's output rows, in call order.
    async fn dispatch(
        self: Arc<Self>,
        block: u32,
        calls: Vec<ExpertRows>,
    ) -> Result<Vec<Vec<f32>>, RunError> {
        let ids: Vec<u32> = calls.iter().map(|c| c.expert).collect();
        let mut outs: Vec<Option<Vec<f32>>> = vec![None; calls.len()];
        let mut looked_up = false;
        let (mut peers, mut skip) = self.alive();
        loop {
            let left: Vec<usize> = (0..calls.len()).filter(|&i| outs[i].is_none()).collect();
            if left.is_empty() {
                return Ok(outs.into_iter().flatten().collect());
            }
            let want: Vec<u32> = left.iter().map(|&i| ids[i]).collect();
            let plan = match assign(&peers, &skip, block, &want) {
                Ok(p) => p,
                Err(e) if !looked_up && self.dht.is_some() => {
                    info!("no known peer holds expert {e} of block {block}: looking again");
                    looked_up = true;
                    self.lookup().await;
                    peers = self.alive().0;
                    continue;
                }
                Err(e) => {
                    return Err(RunError::Experts(format!(
                        "no live peer holds expert {e} of block {block}"
                    )))
                }
            };
            let sent = plan.into_iter().map(|(p, idx)| {
                let peer = peers[p].clone();
                let idx: Vec<usize> = idx.into_iter().map(|j| left[j]).collect();
                let rows: Vec<ExpertRows> = idx.iter().map(|&i| calls[i].clone()).collect();
                let me = self.clone();
                async move { (me.call_peer(&peer, block, rows).await, peer, idx) }
            });
            let answers = futures_util::future::join_all(sent).await;
            let n = answers.len() as u64;
            self.count(|s| s.messages += n);
            for (result, peer, idx) in answers {
                match result {
                    Ok(ys) => {
                        for (i, y) in idx.into_iter().zip(ys) {
                            outs[i] = Some(y);
                        }
                    }
                    Err(e) => {
                        warn!(
                            "expert peer {} failed block {block}: {e}; trying another",
                            peer.peer
                        );
                        self.count(|s| s.failed += 1);
                        skip.insert(peer.peer);
                        if let Ok(mut d) = self.dead.lock() {
                            d.insert(peer.peer, Instant::now());
                        }
                        self.streams.lock().await.remove(&peer.peer);
                    }
                }
            }
        }
    }

    async fn lookup(&self) {
        if let Some(dht) = &self.dht {
            match dht.lookup(Some(&self.model_id)).await {
                Ok(records) => self.update(&records),
                Err(e) => warn!("looking up expert peers: {e}"),
            }
        }
    }

    /// One call to one peer, on the stream kept open to it.
    async fn call_peer(
        &self,
        peer: &ExpertPeer,
        block: u32,
        experts: Vec<ExpertRows>,
    ) -> Result<Vec<Vec<f32>>, NetError> {
        let rows: Vec<usize> = experts.iter().map(|e| e.rows.tokens as usize).collect();
        let total: usize = rows.iter().sum();
        let flops = 6.0 * (total * self.hidden * self.ffn) as f64;
        let wait = CALL_WAIT + Duration::from_secs_f64(flops / SLOWEST_FLOPS);
        let stream = self.stream(peer).await?;
        let mut s = stream.lock().await;
        let (send, recv) = &mut *s;
        let msg = Message::ExpertCall(ExpertCall {
            model_id: self.model_id.clone(),
            block,
            experts,
        });
        let exchange = async {
            net::write_msg(send, &msg).await?;
            net::read_msg(recv).await
        };
        let answer = tokio::time::timeout(wait, exchange)
            .await
            .map_err(|_| NetError::Timeout(wait, "expert outputs"))??;
        let outputs = match answer {
            Some(Message::ExpertOut(ExpertOut { outputs })) => outputs,
            Some(Message::Error(e)) => return Err(NetError::Remote(e)),
            Some(other) => {
                return Err(NetError::Protocol(format!(
                    "{} answered an expert call with {}",
                    peer.peer,
                    other.name()
                )))
            }
            None => return Err(NetError::Protocol("the stream ended".into())),
        };
        if outputs.len() != rows.len() {
            return Err(NetError::Protocol(format!(
                "{} outputs for {} experts",
                outputs.len(),
                rows.len()
            )));
        }
        outputs
            .iter()
            .zip(&rows)
            .map(|(o, &n)| {
                if o.tokens as usize != n || o.hidden as usize != self.hidden {
                    return Err(NetError::Protocol(format!(
                        "an expert answered {}x{} for {n}x{}",
                        o.tokens, o.hidden, self.hidden
                    )));
                }
                o.decode(n * self.hidden)
                    .map_err(|e| NetError::Protocol(e.to_string()))
            })
            .collect()
    }

    /// The stream kept open to `peer`, opened if there is none. The table is not held while
    /// connecting, so that a peer slow to answer delays no call to the others.
    async fn stream(&self, peer: &ExpertPeer) -> Result<Stream, NetError> {
        if let Some(s) = self.streams.lock().await.get(&peer.peer) {
            return Ok(s.clone());
        }
        let conn = net::connect(&self.endpoint, &self.key, peer.addr, peer.peer).await?;
        let pair = net::open_stream(&conn, &peer.peer, &self.greeting, CALL_WAIT).await?;
        let s = Arc::new(AsyncMutex::new(pair));
        Ok(self
            .streams
            .lock()
            .await
            .entry(peer.peer)
            .or_insert(s)
            .clone())
    }
}

impl RemoteExperts for Arc<ExpertPeers> {
    fn call(&self, block: u32, experts: Vec<ExpertRows>) -> Pending {
        let (tx, rx) = mpsc::channel();
        let me = self.clone();
        self.runtime.spawn(async move {
            let t0 = Instant::now();
            let out = me.clone().dispatch(block, experts).await;
            let took = t0.elapsed().as_secs_f64();
            me.count(|s| {
                s.calls += 1;
                s.seconds += took;
            });
            let _ = tx.send(out);
        });
        rx
    }

    fn stats(&self) -> DispatchStats {
        self.stats.lock().map(|s| *s).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8, span: (u32, u32), shard: Option<(u32, u32)>) -> ExpertPeer {
        let key = libp2p::identity::Keypair::ed25519_from_bytes([n; 32]).unwrap();
        ExpertPeer {
            peer: key.public().to_peer_id(),
            addr: SocketAddr::from(([127, 0, 0, 1], 4000 + n as u16)),
            span: Span {
                start: span.0,
                end: span.1,
            },
            shard: shard.map(|(start, end)| ExpertShard {
                start,
                end,
                of: 8,
                only: true,
            }),
        }
    }

    #[test]
    fn experts_go_to_the_fewest_peers_and_around_dead_ones() {
        let peers = vec![
            peer(1, (0, 4), Some((4, 6))),
            peer(2, (0, 4), Some((4, 8))),
            peer(3, (2, 4), Some((4, 8))),
            peer(4, (0, 4), Some((0, 4))),
        ];
        let none = HashSet::new();
        // Experts 5 and 7 of block 1: peer 2 holds both; peer 3 lacks the block.
        let plan = assign(&peers, &none, 1, &[5, 7]).unwrap();
        assert_eq!(plan, BTreeMap::from([(1, vec![0, 1])]));
        // Peer 2 dead: 5 goes to peer 1, and 7 to nobody in block 1.
        let dead = HashSet::from([peers[1].peer]);
        assert_eq!(assign(&peers, &dead, 1, &[5, 7]), Err(7));
        // In block 3 peer 3 takes over.
        let plan = assign(&peers, &dead, 3, &[5, 7, 0]).unwrap();
        assert_eq!(plan, BTreeMap::from([(2, vec![0, 1]), (3, vec![2])]));
        // A peer without a shard holds every expert of its span.
        let full = vec![peer(5, (0, 2), None)];
        assert!(assign(&full, &none, 1, &[0, 7]).is_ok());
        assert_eq!(assign(&full, &none, 2, &[0]), Err(0));
    }
}
