//! `baton`: the client.

mod cli;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "baton",
    version,
    about = "Baton's client: generate text with a model served by a swarm of baton-node peers",
    long_about = "baton finds the nodes that serve a model on the swarm's DHT, plans a route \
across them and streams a generation along it, or runs a model on this machine.\n\n\
Start a swarm with `baton-node join`, then point baton at one of its nodes with --bootstrap.",
    after_help = "Examples:\n  baton swarm --bootstrap /ip4/127.0.0.1/tcp/4001/p2p/12D3KooW...\n  baton generate --bootstrap /ip4/127.0.0.1/tcp/4001/p2p/12D3KooW... --chat --prompt \"What is the capital of France?\"\n  baton generate --model SmolLM2-135M-Instruct.Q4_1.gguf --prompt \"Once upon a time\""
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a completion of a prompt and stream it to stdout, along a swarm (--bootstrap)
    /// or on this machine (--model PATH).
    Generate(cli::generate::GenerateArgs),
    /// List the nodes of a swarm and how many serve each stage of each model.
    Swarm(cli::swarm::SwarmArgs),
    /// Show the route a generation would take, with each hop's round trip and expected time.
    Route(cli::swarm::SwarmArgs),
    /// Chat with a model in the terminal, along a swarm (--bootstrap) or on nodes started in
    /// this process (--local, the default).
    Chat(cli::chat::ChatArgs),
    /// Serve an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions,
    /// /v1/models) over a swarm (--bootstrap) or local nodes (--local, the default).
    Serve(cli::serve::ServeArgs),
}

fn main() {
    baton_node::quiet_gpu_probe();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(a) if a.bootstrap.is_empty() => cli::generate::run_local(a),
        Command::Generate(a) => block_on(cli::generate::run_remote(a)),
        Command::Swarm(a) => block_on(cli::swarm::swarm(a)),
        Command::Route(a) => block_on(cli::swarm::route(a)),
        Command::Chat(a) => a
            .source
            .prepare()
            .and_then(|_| block_on_threads(cli::chat::run(a))),
        Command::Serve(a) => a
            .source
            .prepare()
            .and_then(|_| block_on_threads(cli::serve::run(a))),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// A runtime for local nodes and concurrent requests: nodes compute on a worker thread while
/// others keep the network going.
fn block_on_threads(
    f: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(f)
}

fn block_on(f: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(f)
}
