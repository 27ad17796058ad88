//! baton-client: what the `baton` binary does, as a library.
//!
//! - [`generate`]: a generation loop over a span engine that holds the whole model, with
//!   streaming text and stop tokens.

pub mod generate;
