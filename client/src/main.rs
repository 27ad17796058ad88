//! `baton`: the client.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use baton_client::generate::{generate, StopReason};
use baton_node::sampling::Sampling;
use baton_node::tokenizer::Message;
use baton_node::{BackendChoice, Engine, ModelFile};
use baton_protocol::Span;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "baton",
    version,
    about = "Baton's client: generate text with a language model",
    long_about = "baton generates text with a language model. Today it runs the model on this \
machine (the same runtime a baton-node serves); routing a generation across a swarm of \
baton-node peers comes next.",
    after_help = "Example:\n  baton generate --model SmolLM2-135M-Instruct.Q4_1.gguf --chat --prompt \"What is the capital of France?\""
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a completion of a prompt and stream it to stdout.
    Generate(GenerateArgs),
}

#[derive(Args)]
struct GenerateArgs {
    /// A GGUF file or a Hugging Face folder.
    #[arg(long, value_name = "PATH")]
    model: PathBuf,
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// Treat the prompt as a user message and apply the model's chat template.
    #[arg(long)]
    chat: bool,
    /// A system message (with --chat).
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// The most tokens to generate.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// 0 is greedy; higher is more random.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Sample from the most likely tokens whose probabilities sum to this.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Sample from this many most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: u32,
    /// Random seed: the same seed gives the same text.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to compute: `auto` picks a real GPU when there is one, the CPU otherwise.
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendChoice,
    /// CPU threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Print timing to stderr at the end.
    #[arg(long)]
    stats: bool,
}

fn run_generate(a: GenerateArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.temperature >= 0.0, "--temperature must be 0 or more");
    anyhow::ensure!(a.top_p > 0.0 && a.top_p <= 1.0, "--top-p must be in (0, 1]");
    if let Some(n) = a.threads {
        baton_node::set_threads(n)?;
    }
    let model = ModelFile::open(&a.model)?;
    let tok = model.tokenizer()?;
    let text = if a.chat {
        let mut messages = Vec::new();
        if let Some(s) = &a.system {
            messages.push(Message {
                role: "system".into(),
                content: s.clone(),
            });
        }
        messages.push(Message {
            role: "user".into(),
            content: a.prompt.clone(),
        });
        tok.apply_chat_template(&messages, true)
            .map_err(anyhow::Error::msg)?
    } else {
        a.prompt.clone()
    };
    let ids = tok.encode(&text).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(!ids.is_empty(), "the prompt has no tokens");
    let span = Span::full(model.config.layers as u32);
    let engine = Engine::load(&model, span, a.backend.into(), &mut |_, _| {})?;
    let params = Sampling {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
    };
    let mut out = std::io::stdout();
    let g = generate(&engine, &tok, &ids, a.max_tokens, params, &mut |piece| {
        let _ = out.write_all(piece.as_bytes());
        let _ = out.flush();
    })
    .context("generation failed")?;
    println!();
    if a.stats {
        eprintln!(
            "{} prompt tokens, {} generated ({}), time to first token {:.0} ms, decode {:.1} tokens/s, {}",
            g.prompt_tokens,
            g.ids.len(),
            match g.stop {
                StopReason::EndOfTurn => "end of turn",
                StopReason::Length => "max tokens",
                StopReason::Context => "context full",
            },
            g.time_to_first_token.as_secs_f64() * 1e3,
            g.decode_tokens_per_s(),
            engine.describe(),
        );
    }
    Ok(())
}

fn main() {
    baton_node::quiet_gpu_probe();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(a) => run_generate(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
