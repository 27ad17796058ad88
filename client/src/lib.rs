//! baton-client: what the `baton` binary does, as a library.
//!
//! - [`generate`]: a generation loop over a span engine that holds the whole model, with
//!   streaming text and stop tokens.
//! - [`remote`]: a session across a route of nodes over QUIC.

pub mod generate;
pub mod remote;
