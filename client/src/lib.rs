//! baton-client: what the `baton` binary does, as a library.
//!
//! - [`generate`]: the generation loop, in one process or along a swarm session, with
//!   streaming text and stop tokens.
//! - [`remote`]: a session across a route of nodes over QUIC.
//! - [`route`]: planning the cheapest chain of spans.
//! - [`swarm`]: finding a model's nodes on the DHT and its tokenizer on a node.
//! - [`model`]: a model on a swarm as chats and servers use it: tokenizer, prompts, sessions.
//! - [`chat`]: a conversation kept across turns.
//! - [`local`]: a swarm of nodes inside this process (`--local`).
//! - [`openai`]: the OpenAI-compatible HTTP server.

// Bytes from peers and files never panic this crate: no unwrap or expect outside tests.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod bans;
pub mod chat;
pub mod generate;
pub mod local;
pub mod model;
pub mod openai;
pub mod remote;
pub mod route;
pub mod slow;
pub mod stop;
pub mod swarm;
