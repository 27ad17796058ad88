//! Nodes on loopback for the client's tests: one per span of the demo model, and a client.

use std::net::SocketAddr;
use std::sync::Arc;

use baton_client::remote::{Hop, SessionOptions};
use baton_node::net::{self, generate_identity, Keypair};
use baton_node::server::{Server, ServerOptions};
use baton_node::{BackendChoice, Engine, ModelFile};
use baton_protocol::{Span, WireDtype};

pub const MODEL_ID: &str = "smollm2-135m-test";

/// A node serving `span` on the CPU, and the hop that names it.
pub fn start(model: &ModelFile, span: Span) -> (Arc<Server>, Hop) {
    let engine = Engine::load(model, span, BackendChoice::Cpu.into(), &mut |_, _| {}).unwrap();
    let options = ServerOptions {
        max_sessions: 8,
        ..ServerOptions::new(format!("node {span}"), MODEL_ID)
    };
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let server = Server::bind(Arc::new(engine), generate_identity(), listen, options).unwrap();
    tokio::spawn(server.clone().serve());
    let hop = Hop {
        peer_id: server.peer_id(),
        addr: server.local_addr().unwrap(),
        span,
        name: format!("node {span}"),
        claimed_us: 0,
    };
    (server, hop)
}

/// A client endpoint with an identity of its own.
pub fn client() -> (quinn::Endpoint, Keypair) {
    let key = generate_identity();
    let endpoint = net::endpoint(&key, "127.0.0.1:0".parse().unwrap()).unwrap();
    (endpoint, key)
}

/// Greedy sessions of up to 512 tokens with `wire_dtype` between hops.
pub fn options(wire_dtype: WireDtype) -> SessionOptions {
    SessionOptions::new(MODEL_ID, wire_dtype, 512)
}
