//! The data plane's plumbing: node identities, QUIC endpoints whose TLS certificates carry the
//! node's libp2p key, and framed messages on QUIC streams.

mod frame;
mod identity;
mod stream;
mod swarm_key;
mod tls;

pub use frame::{read_msg, write_msg};
pub use identity::{generate_identity, load_or_create_identity};
pub use libp2p::identity::Keypair;
pub use libp2p::PeerId;
pub use stream::{open_stream, Greeting};
pub use swarm_key::{read_swarm_key, swarm_proof, SwarmKey};
pub use tls::{connect, endpoint, peer_of};

use baton_protocol::wire::{ErrorMsg, WireError};

/// Who may talk to whom: a private swarm's key, and the peers allowed (everyone when empty).
#[derive(Clone, Debug, Default)]
pub struct Access {
    pub swarm_key: Option<SwarmKey>,
    pub allow: Vec<PeerId>,
}

impl Access {
    pub fn allows(&self, peer: &PeerId) -> bool {
        self.allow.is_empty() || self.allow.contains(peer)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{path}: {what}")]
    Identity {
        path: std::path::PathBuf,
        what: String,
    },
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("connecting to {addr}: {what}")]
    Connect { addr: String, what: String },
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("stream write: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("stream read: {0}")]
    Read(String),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("the peer proved key {got}, expected {expected}")]
    PeerMismatch { expected: String, got: String },
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("the peer answered with an error: {0:?}")]
    Remote(ErrorMsg),
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(std::time::Duration, &'static str),
    #[error("{peer} refused the session: {}", .error.message)]
    Refused { peer: Box<PeerId>, error: ErrorMsg },
    #[error("{peer} could not open the session: {error}")]
    HopFailed {
        peer: Box<PeerId>,
        error: Box<NetError>,
    },
    #[error("no node can take over blocks {0}: the swarm no longer serves them")]
    Uncovered(baton_protocol::Span),
}
