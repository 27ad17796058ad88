//! Who a client is and whom it talks to: a private swarm's key, the nodes it may use, and a
//! kept identity for nodes that admit only listed peers.

use std::path::PathBuf;

use baton_node::net::{load_or_create_identity, read_swarm_key, Access, Keypair, PeerId};
use clap::Args;

#[derive(Args, Clone, Debug, Default)]
pub struct AccessArgs {
    /// A private swarm's key file, the one its nodes were started with.
    #[arg(long, value_name = "FILE")]
    pub swarm_key: Option<PathBuf>,
    /// Use only this node (repeat for several); the default is every node of the swarm.
    #[arg(long, value_name = "PEER_ID")]
    pub allow_peer: Vec<PeerId>,
    /// This client's key (made if absent), for nodes that admit only listed peers
    /// (`baton-node join --allow-peer`); the default is a new key each run.
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
}

impl AccessArgs {
    pub fn access(&self) -> anyhow::Result<Access> {
        Ok(Access {
            swarm_key: self.swarm_key.as_deref().map(read_swarm_key).transpose()?,
            allow: self.allow_peer.clone(),
        })
    }

    pub fn identity(&self) -> anyhow::Result<Option<Keypair>> {
        Ok(self
            .identity
            .as_deref()
            .map(load_or_create_identity)
            .transpose()?)
    }
}
