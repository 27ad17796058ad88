//! `baton-node`: serve a span of a model, and measure and check the runtime that does it.

mod cli;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "baton-node",
    version,
    about = "Run a span of a language model's layers for a Baton swarm",
    long_about = "baton-node loads a model (a GGUF file or a Hugging Face folder) and runs it, or a \
contiguous span of its layers, on the CPU or a GPU through wgpu.\n\n\
Start with `baton-node info` to see the backends this machine has, then `baton-node eval` to \
check a model's output and `baton-node bench` to measure its speed.",
    after_help = "Examples:\n  baton-node info\n  baton-node eval --model SmolLM2-135M-Instruct.Q4_1.gguf --text \"The quick brown fox\"\n  baton-node bench --model SmolLM2-135M-Instruct.Q4_1.gguf --threads 2"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a model teacher-forced over a prompt and print the top-k next tokens at every position.
    Eval(cli::eval::EvalArgs),
    /// Measure prefill and decode speed, the bandwidth it implies, and peak memory.
    Bench(cli::bench::BenchArgs),
    /// List the compute backends and devices found on this machine.
    Info(cli::info::InfoArgs),
    /// Print what a model takes: parameters, bytes per block and per expert, KV cache per
    /// token, and how much of it a node of a given memory holds (a config.json alone will do).
    Inspect(cli::inspect::InspectArgs),
    /// Join a swarm (or start one) and serve a span of a model's blocks to it.
    Join(Box<cli::join::JoinArgs>),
}

fn main() {
    baton_node::quiet_gpu_probe();
    let cli = Cli::parse();
    // A serving node says what it does; the one-shot commands keep quiet.
    let level = match cli.command {
        Command::Join(_) => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Eval(a) => cli::eval::run(a),
        Command::Bench(a) => cli::bench::run(a),
        Command::Info(a) => cli::info::run(a),
        Command::Inspect(a) => cli::inspect::run(a),
        Command::Join(a) => cli::join::run(*a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
