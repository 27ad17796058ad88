//! The control plane: libp2p Kademlia (under Baton's own protocol name, in server mode on nodes)
//! and identify, over TCP with noise and yamux.
//!
//! Every node stores its signed [`NodeRecord`] under `/baton/node/<peer id>` and provides the
//! keys `/baton/all` and `/baton/model/<model id>`. A lookup asks for the providers of one of
//! those keys, then for each provider's record, and keeps the records whose signature, signer
//! and expiry check out. Records live [`RECORD_TTL`] and nodes refresh them every
//! [`REPUBLISH`], so a node that leaves drops out of every view within [`RECORD_TTL`].

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baton_protocol::record::{NodeRecord, SignedRecord};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::{transport, upgrade, Transport};
use libp2p::futures::StreamExt;
use libp2p::identity::{Keypair, PublicKey};
use libp2p::kad::{
    self, store::MemoryStore, GetProvidersOk, GetRecordOk, QueryId, QueryResult, Quorum, RecordKey,
};
use libp2p::multiaddr::Protocol;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    allow_block_list, identify, noise, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm,
};

use crate::net::Access;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info};

pub const KAD_PROTOCOL: &str = "/baton/kad/1.0.0";
const IDENTIFY_PROTOCOL: &str = "/baton/id/1.0.0";
/// How long an announcement lives.
pub const RECORD_TTL: Duration = Duration::from_secs(30);
/// How often a node announces itself again.
pub const REPUBLISH: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DhtError {
    #[error("libp2p: {0}")]
    Libp2p(String),
    #[error("bootstrap address {0} does not end in /p2p/<peer id>")]
    BootstrapAddr(Multiaddr),
    #[error("the control plane stopped")]
    Stopped,
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    /// With `--allow-peer`: connections only with those peers.
    allow: Toggle<allow_block_list::Behaviour<allow_block_list::AllowedPeers>>,
    kad: kad::Behaviour<MemoryStore>,
    identify: identify::Behaviour,
}

enum Command {
    Announce(SignedRecord, String),
    Lookup(Option<String>, oneshot::Sender<Vec<NodeRecord>>),
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
}

/// A handle on the running control plane.
#[derive(Clone)]
pub struct Dht {
    pub peer_id: PeerId,
    commands: mpsc::Sender<Command>,
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Signs a record with the node's key.
pub fn sign(key: &Keypair, record: &NodeRecord) -> Result<SignedRecord, DhtError> {
    let bytes = record
        .encode()
        .map_err(|e| DhtError::Libp2p(e.to_string()))?;
    let signature = key
        .sign(&bytes)
        .map_err(|e| DhtError::Libp2p(e.to_string()))?;
    Ok(SignedRecord {
        record: bytes,
        public_key: key.public().encode_protobuf(),
        signature,
    })
}

/// Checks a signed record: the signature is the key's, the key is the record's peer id, and the
/// record has not expired. Returns the record.
pub fn verify(bytes: &[u8], now: u64) -> Option<NodeRecord> {
    let signed = SignedRecord::decode(bytes).ok()?;
    let key = PublicKey::try_decode_protobuf(&signed.public_key).ok()?;
    if !key.verify(&signed.record, &signed.signature) {
        return None;
    }
    let record = NodeRecord::decode(&signed.record).ok()?;
    (record.peer_id == key.to_peer_id().to_string() && record.is_fresh(now)).then_some(record)
}

fn node_key(peer: &PeerId) -> RecordKey {
    RecordKey::new(&format!("/baton/node/{peer}"))
}

fn provider_key(model: Option<&str>) -> RecordKey {
    match model {
        Some(m) => RecordKey::new(&format!("/baton/model/{m}")),
        None => RecordKey::new(&"/baton/all"),
    }
}

/// A lookup in progress: the providers query, then one record query per provider.
struct Lookup {
    reply: Option<oneshot::Sender<Vec<NodeRecord>>>,
    providers: HashSet<PeerId>,
    pending: HashSet<QueryId>,
    /// Whether the providers query finished and the record queries went out.
    asked_records: bool,
    found: HashMap<PeerId, NodeRecord>,
}

impl Dht {
    /// Starts the control plane listening on `listen` (a TCP multiaddr) and joins the swarm
    /// through `bootstrap` (each ending in `/p2p/<peer id>`); none starts a new swarm.
    /// Nodes run Kademlia in server mode, clients in client mode.
    pub async fn start(
        key: Keypair,
        listen: Multiaddr,
        bootstrap: Vec<Multiaddr>,
        server: bool,
        access: &Access,
    ) -> Result<Dht, DhtError> {
        let peer_id = key.public().to_peer_id();
        let err = |e: &dyn std::fmt::Display| DhtError::Libp2p(e.to_string());
        let psk = access.swarm_key.map(PreSharedKey::new);
        let allowed = access.allow.clone();
        let mut swarm: Swarm<Behaviour> = libp2p::SwarmBuilder::with_existing_identity(key.clone())
            .with_tokio()
            .with_other_transport(|key| transport(key, psk))
            .map_err(|e| err(&e))?
            .with_behaviour(|key| {
                let mut cfg = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
                cfg.set_record_ttl(Some(RECORD_TTL))
                    .set_provider_record_ttl(Some(RECORD_TTL))
                    .set_publication_interval(None)
                    .set_provider_publication_interval(Some(REPUBLISH))
                    .set_query_timeout(Duration::from_secs(10));
                let id = key.public().to_peer_id();
                let allow = (!allowed.is_empty()).then(|| {
                    let mut a =
                        allow_block_list::Behaviour::<allow_block_list::AllowedPeers>::default();
                    for p in &allowed {
                        a.allow_peer(*p);
                    }
                    a
                });
                Behaviour {
                    allow: Toggle::from(allow),
                    kad: kad::Behaviour::with_config(id, MemoryStore::new(id), cfg),
                    identify: identify::Behaviour::new(identify::Config::new(
                        IDENTIFY_PROTOCOL.into(),
                        key.public(),
                    )),
                }
            })
            .map_err(|e| err(&e))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
            .build();
        // Without server mode Kademlia answers no one on a LAN or loopback.
        swarm.behaviour_mut().kad.set_mode(Some(if server {
            kad::Mode::Server
        } else {
            kad::Mode::Client
        }));
        swarm.listen_on(listen).map_err(|e| err(&e))?;
        for addr in bootstrap {
            let Some(Protocol::P2p(peer)) = addr.iter().last() else {
                return Err(DhtError::BootstrapAddr(addr));
            };
            swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
            swarm.dial(addr).map_err(|e| err(&e))?;
        }
        let (commands, rx) = mpsc::channel(64);
        tokio::spawn(run(swarm, rx, access.clone()));
        Ok(Dht { peer_id, commands })
    }

    /// Stores the node's signed record and provides its keys.
    pub async fn announce(&self, record: SignedRecord, model_id: &str) -> Result<(), DhtError> {
        self.commands
            .send(Command::Announce(record, model_id.to_string()))
            .await
            .map_err(|_| DhtError::Stopped)
    }

    /// The fresh, correctly signed records of the nodes serving `model` (every node with `None`).
    pub async fn lookup(&self, model: Option<&str>) -> Result<Vec<NodeRecord>, DhtError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Lookup(model.map(String::from), tx))
            .await
            .map_err(|_| DhtError::Stopped)?;
        rx.await.map_err(|_| DhtError::Stopped)
    }

    /// The addresses the control plane listens on, each with `/p2p/<peer id>` appended: what
    /// other nodes pass to `--bootstrap`.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, DhtError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::ListenAddrs(tx))
            .await
            .map_err(|_| DhtError::Stopped)?;
        rx.await.map_err(|_| DhtError::Stopped)
    }
}

/// TCP, in a private swarm wrapped in pnet (an outsider's connection fails its first bytes),
/// then noise and yamux.
fn transport(
    key: &Keypair,
    psk: Option<PreSharedKey>,
) -> Result<transport::Boxed<(PeerId, StreamMuxerBox)>, Box<dyn std::error::Error + Send + Sync>> {
    let noise = noise::Config::new(key)?;
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
    Ok(match psk {
        None => tcp
            .upgrade(upgrade::Version::V1)
            .authenticate(noise)
            .multiplex(yamux::Config::default())
            .map(|(p, m), _| (p, StreamMuxerBox::new(m)))
            .boxed(),
        Some(psk) => tcp
            .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
            .upgrade(upgrade::Version::V1)
            .authenticate(noise)
            .multiplex(yamux::Config::default())
            .map(|(p, m), _| (p, StreamMuxerBox::new(m)))
            .boxed(),
    })
}

async fn run(mut swarm: Swarm<Behaviour>, mut rx: mpsc::Receiver<Command>, access: Access) {
    let me = *swarm.local_peer_id();
    let mut listen: Vec<Multiaddr> = Vec::new();
    let mut waiting_addrs: Vec<oneshot::Sender<Vec<Multiaddr>>> = Vec::new();
    let mut lookups: Vec<Lookup> = Vec::new();
    // Which lookup a query belongs to.
    let mut owner: HashMap<QueryId, usize> = HashMap::new();
    loop {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                None => return,
                Some(Command::Announce(record, model)) => {
                    let Ok(value) = record.encode() else { continue };
                    let kad = &mut swarm.behaviour_mut().kad;
                    let mut r = kad::Record::new(node_key(&me), value);
                    r.expires = Some(std::time::Instant::now() + RECORD_TTL);
                    if let Err(e) = kad.put_record(r, Quorum::One) {
                        debug!("storing the record: {e}");
                    }
                    for key in [provider_key(None), provider_key(Some(&model))] {
                        if let Err(e) = kad.start_providing(key) {
                            debug!("providing: {e}");
                        }
                    }
                }
                Some(Command::Lookup(model, reply)) => {
                    let q = swarm.behaviour_mut().kad.get_providers(provider_key(model.as_deref()));
                    owner.insert(q, lookups.len());
                    lookups.push(Lookup { reply: Some(reply), providers: HashSet::new(), pending: HashSet::from([q]), asked_records: false, found: HashMap::new() });
                }
                Some(Command::ListenAddrs(reply)) => {
                    if listen.is_empty() {
                        waiting_addrs.push(reply);
                    } else {
                        let _ = reply.send(with_p2p(&listen, me));
                    }
                }
            },
            event = swarm.select_next_some() => match event {
                SwarmEvent::NewListenAddr { address, .. } => {
                    info!("control plane listening on {}", address.clone().with(Protocol::P2p(me)));
                    listen.push(address);
                    for w in waiting_addrs.drain(..) {
                        let _ = w.send(with_p2p(&listen, me));
                    }
                }
                SwarmEvent::ConnectionEstablished { peer_id, .. } => debug!("control plane: connected to {peer_id}"),
                SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                    // Kademlia learns other peers' addresses only from what we tell it.
                    for addr in info.listen_addrs {
                        swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed { id, result, step, .. })) => {
                    let Some(&li) = owner.get(&id) else { continue };
                    let lookup = &mut lookups[li];
                    match result {
                        QueryResult::GetProviders(Ok(GetProvidersOk::FoundProviders { providers, .. })) => {
                            lookup.providers.extend(providers);
                        }
                        QueryResult::GetRecord(Ok(GetRecordOk::FoundRecord(peer_record))) => {
                            if let Some(r) = verify(&peer_record.record.value, now_unix()) {
                                if let Ok(p) = r.peer_id.parse::<PeerId>() {
                                    if access.allows(&p) {
                                        lookup.found.insert(p, r);
                                    }
                                }
                            }
                        }
                        _ => {}
                    }
                    if !step.last {
                        continue;
                    }
                    owner.remove(&id);
                    lookup.pending.remove(&id);
                    if !lookup.asked_records {
                        // The providers are known: ask each for its record.
                        lookup.asked_records = true;
                        let providers: Vec<PeerId> = lookup.providers.iter().copied().collect();
                        for p in providers {
                            let q = swarm.behaviour_mut().kad.get_record(node_key(&p));
                            owner.insert(q, li);
                            lookups[li].pending.insert(q);
                        }
                    }
                    let lookup = &mut lookups[li];
                    if lookup.pending.is_empty() {
                        if let Some(reply) = lookup.reply.take() {
                            let mut found: Vec<NodeRecord> = lookup.found.drain().map(|(_, r)| r).collect();
                            found.sort_by(|a, b| (a.span.start, &a.peer_id).cmp(&(b.span.start, &b.peer_id)));
                            let _ = reply.send(found);
                        }
                    }
                }
                _ => {}
            },
        }
        // Forget finished lookups once none of their queries is outstanding.
        if owner.is_empty() && lookups.iter().all(|l| l.reply.is_none()) {
            lookups.clear();
        }
    }
}

fn with_p2p(addrs: &[Multiaddr], me: PeerId) -> Vec<Multiaddr> {
    addrs
        .iter()
        .map(|a| a.clone().with(Protocol::P2p(me)))
        .collect()
}
