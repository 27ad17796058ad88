//! QUIC endpoints whose certificates carry the node's libp2p key (libp2p's TLS scheme), so that
//! a peer is who its key says, with ALPN `baton/1`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use baton_protocol::wire::ALPN;
use libp2p::identity::Keypair;
use libp2p::PeerId;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

use super::NetError;

/// How long a handshake may take: a peer that has gone away is given up on quickly.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Packets a receiver may take before it must acknowledge them at once.
const ACK_EVERY: u32 = 9;

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(5)));
    if let Ok(idle) = Duration::from_secs(30).try_into() {
        t.max_idle_timeout(Some(idle));
    }
    // A session's messages go one way on each connection, one packet per step. By default the
    // receiver acknowledges every second packet at once, which puts a packet back to the sender
    // (and, on one machine, the sender's wake-up) between the arrival of a step and its
    // computation. Asking peers to acknowledge every ninth packet moves most acknowledgements to
    // the delayed-ACK timer; bulk transfers (prompts) still get theirs at once, as the first
    // flight is larger than that.
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(quinn::VarInt::from_u32(ACK_EVERY - 1));
    t.ack_frequency_config(Some(ack));
    Arc::new(t)
}

/// An endpoint bound to `bind` that accepts connections and makes them.
pub fn endpoint(key: &Keypair, bind: SocketAddr) -> Result<quinn::Endpoint, NetError> {
    let mut tls = libp2p_tls::make_server_config(key).map_err(|e| NetError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| NetError::Tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(transport());
    Ok(quinn::Endpoint::server(server, bind)?)
}

/// Connects to `addr`, refusing it unless its certificate proves the key of `expected`.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    key: &Keypair,
    addr: SocketAddr,
    expected: PeerId,
) -> Result<quinn::Connection, NetError> {
    let fail = |what: String| NetError::Connect {
        addr: addr.to_string(),
        what,
    };
    let mut tls = libp2p_tls::make_client_config(key, Some(expected))
        .map_err(|e| NetError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| NetError::Tls(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(transport());
    let connecting = endpoint
        .connect_with(client, addr, "baton")
        .map_err(|e| fail(e.to_string()))?;
    let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| fail(format!("no answer within {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| fail(e.to_string()))?;
    let got = peer_of(&conn)?;
    if got != expected {
        return Err(NetError::PeerMismatch {
            expected: expected.to_string(),
            got: got.to_string(),
        });
    }
    Ok(conn)
}

/// The peer id that the other side's certificate proved.
pub fn peer_of(conn: &quinn::Connection) -> Result<PeerId, NetError> {
    let certs = conn
        .peer_identity()
        .and_then(|id| {
            id.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .ok_or_else(|| NetError::Tls("the peer presented no certificate".into()))?;
    let first = certs
        .first()
        .ok_or_else(|| NetError::Tls("the peer presented no certificate".into()))?;
    let cert = libp2p_tls::certificate::parse(first).map_err(|e| NetError::Tls(e.to_string()))?;
    Ok(cert.peer_id())
}
