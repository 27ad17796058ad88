pub mod access;
pub mod chat;
pub mod generate;
pub mod serve;
pub mod source;
pub mod swarm;
