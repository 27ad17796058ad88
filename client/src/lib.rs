//! baton-client: what the `baton` binary does, as a library.
//!
//! - [`generate`]: a generation loop over a span engine that holds the whole model, with
//!   streaming text and stop tokens.
//! - [`remote`]: a session across a route of nodes over QUIC.
//! - [`route`]: planning the cheapest chain of spans.
//! - [`swarm`]: finding a model's nodes on the DHT and its tokenizer on a node.

pub mod generate;
pub mod remote;
pub mod route;
pub mod swarm;
