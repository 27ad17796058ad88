//! The data plane's plumbing: node identities, QUIC endpoints whose TLS certificates carry the
//! node's libp2p key, and framed messages on QUIC streams.

mod frame;
mod identity;
mod tls;

pub use frame::{read_msg, write_msg};
pub use identity::{generate_identity, load_or_create_identity};
pub use libp2p::identity::Keypair;
pub use libp2p::PeerId;
pub use tls::{connect, endpoint, peer_of};

use baton_protocol::wire::{ErrorMsg, WireError};

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
}
