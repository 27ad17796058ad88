//! Opening a stream to a peer: each side says hello first (its protocol version and, in a
//! private swarm, its proof of the swarm key), and each checks the other's.

use libp2p::PeerId;

use baton_protocol::wire::{Hello, Message};

use super::{read_msg, swarm_proof, write_msg, NetError, SwarmKey};

/// Who we are on a stream: our name for logs, our peer id, the swarm's key if private.
#[derive(Clone, Debug)]
pub struct Greeting {
    pub name: String,
    pub me: PeerId,
    pub swarm_key: Option<SwarmKey>,
}

impl Greeting {
    /// Our hello to `peer`.
    pub fn hello(&self, peer: &PeerId) -> Hello {
        let mut h = Hello::new(&self.name);
        h.proof = self.swarm_key.map(|k| swarm_proof(&k, &self.me, peer));
        h
    }

    /// Whether `peer`'s hello proves it holds our swarm key (always, in an open swarm).
    pub fn accepts(&self, peer: &PeerId, hello: &Hello) -> bool {
        match &self.swarm_key {
            None => true,
            Some(k) => hello.proof == Some(swarm_proof(k, peer, &self.me)),
        }
    }
}

/// Opens a bidirectional stream on `conn` to `peer` and exchanges hellos, within `wait`.
pub async fn open_stream(
    conn: &quinn::Connection,
    peer: &PeerId,
    me: &Greeting,
    wait: std::time::Duration,
) -> Result<(quinn::SendStream, quinn::RecvStream), NetError> {
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        write_msg(&mut send, &Message::Hello(me.hello(peer))).await?;
        match read_msg(&mut recv).await? {
            Some(Message::Hello(h)) if me.accepts(peer, &h) => Ok((send, recv)),
            Some(Message::Hello(_)) => Err(NetError::Protocol(format!(
                "{peer} does not hold the swarm key"
            ))),
            Some(Message::Error(e)) => Err(NetError::Remote(e)),
            _ => Err(NetError::Protocol(format!("{peer} did not say hello"))),
        }
    };
    tokio::time::timeout(wait, exchange)
        .await
        .map_err(|_| NetError::Timeout(wait, "a hello"))?
}
