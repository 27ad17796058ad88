//! The client's links: a stream to each hop (or checker) on which the session is opened, and
//! whose messages go to the session.

use super::*;

/// How long a hop has to open a session (it may connect to its next hop first): a node that
/// stalls here is routed around.
const OPEN_WAIT: Duration = Duration::from_secs(10);

/// The client's stream to one hop.
pub(super) struct Link {
    pub id: u64,
    pub send: quinn::SendStream,
    pub conn: quinn::Connection,
    /// Prompt tokens the hop took from an earlier session when it opened this one.
    pub reused: u32,
}

/// What a hop's session does: where its output goes (`next`; the head hop feeds the tokens it
/// samples to `ring`, the route's first hop), who else feeds it steps (`feeder`, the hop
/// before), and whether it taps its output to this client (with no `next`, only there: a
/// check).
#[derive(Clone, Copy, Default)]
pub(super) struct Role<'a> {
    pub next: Option<&'a Hop>,
    pub ring: Option<&'a Hop>,
    pub feeder: Option<&'a Hop>,
    pub tap: bool,
    /// The prompt's block hashes, for prefix reuse (see `OpenSession::prefix`).
    pub prefix: Option<&'a baton_node::prefix::Chain>,
}

impl<'a> Role<'a> {
    /// Position `k` of `route`.
    pub fn in_route(route: &'a [Hop], k: usize, verify: bool) -> Role<'a> {
        let last = k + 1 == route.len();
        Role {
            next: route.get(k + 1),
            ring: last.then(|| &route[0]),
            // The first hop is fed by the head hop, the others by the hop before.
            feeder: if k == 0 {
                route.last()
            } else {
                route.get(k - 1)
            },
            tap: verify && !last,
            prefix: None,
        }
    }
}

/// What opens links: the endpoint, who we are, and where the links' messages go.
pub(super) struct Dialer {
    pub endpoint: quinn::Endpoint,
    pub key: Keypair,
    pub greeting: Greeting,
    pub tx: mpsc::UnboundedSender<(u64, Message)>,
    pub next_id: u64,
}

impl Dialer {
    /// Opens the session on `hop` in `role`.
    pub async fn link(
        &mut self,
        session: u64,
        options: &SessionOptions,
        hop: &Hop,
        role: Role<'_>,
    ) -> Result<Link, NetError> {
        let tx = self.tx.clone();
        self.link_to(session, options, hop, role, tx).await
    }

    /// As [`Dialer::link`], with the link's messages going to `tx`.
    pub async fn link_to(
        &mut self,
        session: u64,
        options: &SessionOptions,
        hop: &Hop,
        role: Role<'_>,
        tx: mpsc::UnboundedSender<(u64, Message)>,
    ) -> Result<Link, NetError> {
        let conn = net::connect(&self.endpoint, &self.key, hop.addr, hop.peer_id).await?;
        let (mut send, mut recv) =
            net::open_stream(&conn, &hop.peer_id, &self.greeting, REPAIR_WAIT).await?;
        let open = OpenSession {
            session,
            model_id: options.model_id.clone(),
            span: hop.span,
            next: role.next.map(next_hop),
            sampling: options.sampling,
            wire_dtype: options.wire_dtype,
            max_tokens: options.max_tokens,
            // The head's log-probabilities let checks see a perturbed head.
            logprobs: options.logprobs || options.verify > 0.0,
            top_logprobs: options.top_logprobs,
            logit_bias: options.logit_bias.clone(),
            ring: role.ring.map(next_hop),
            stop_ids: options.stop_ids.clone(),
            tap: role.tap,
            feeders: role
                .feeder
                .map(|h| h.peer_id.to_string())
                .into_iter()
                .collect(),
            prefix: role.prefix.map(|c| c.hashes.clone()).unwrap_or_default(),
            prefix_tail: role.prefix.map_or(0, |c| c.tail),
        };
        net::write_msg(&mut send, &Message::OpenSession(open)).await?;
        let wait = options.step_timeout.min(OPEN_WAIT);
        let reused = match tokio::time::timeout(wait, net::read_msg(&mut recv)).await {
            Ok(Ok(Some(Message::SessionOpened(o)))) if o.session == session => o.reused,
            Ok(Ok(Some(Message::Error(e)))) => return Err(NetError::Remote(e)),
            Ok(Ok(other)) => {
                return Err(NetError::Protocol(format!(
                    "unexpected answer to open: {other:?}"
                )))
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(NetError::Timeout(wait, "a session to open")),
        };
        let id = self.next_id;
        self.next_id += 1;
        tokio::spawn(async move {
            while let Ok(Some(msg)) = net::read_msg(&mut recv).await {
                if tx.send((id, msg)).is_err() {
                    break;
                }
            }
        });
        Ok(Link {
            id,
            send,
            conn,
            reused,
        })
    }
}

pub(super) fn next_hop(h: &Hop) -> NextHop {
    NextHop {
        peer_id: h.peer_id.to_string(),
        addr: h.addr.to_string(),
        span: h.span,
    }
}
