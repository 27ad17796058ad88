//! `baton`: the client.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "baton",
    version,
    about = "Baton's client: generate text with a model spread across a swarm of baton-node peers",
    long_about = "baton finds the nodes that serve a model, builds a route across them and \
streams a generation along it.\n\nFor now the client runs a model on this machine; use \
`baton-node eval` and `baton-node bench` to check and measure it."
)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
    println!("baton: see `baton --help`");
}
