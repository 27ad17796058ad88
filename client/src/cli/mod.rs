//! The subcommands of `baton`.

pub mod generate;
pub mod swarm;
