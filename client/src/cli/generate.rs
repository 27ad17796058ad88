//! `baton generate`: a completion, along a swarm or on this machine.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use baton_client::generate::{generate, generate_remote, Chosen, Generation, StopReason};
use baton_client::model::{SwarmModel, TokenAsk};
use baton_client::remote::Hop;
use baton_client::swarm::SwarmClient;
use baton_node::sampling::Sampling;
use baton_node::tokenizer::{Message, Tokenizer};
use baton_node::{BackendChoice, Engine, ModelFile};
use baton_protocol::{Span, WireDtype};
use clap::Args;
use libp2p::Multiaddr;

#[derive(Args)]
pub struct GenerateArgs {
    /// A node of the swarm to generate with, as it printed itself (…/p2p/<peer id>).
    #[arg(long)]
    pub bootstrap: Vec<Multiaddr>,
    /// With --bootstrap: the model's name or id (default: the only one the swarm serves).
    /// Without: a GGUF file or Hugging Face folder to run on this machine.
    #[arg(long)]
    pub model: Option<String>,
    /// The prompt.
    #[arg(long)]
    pub prompt: String,
    /// Treat the prompt as a user message and apply the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// A system message (with --chat).
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// The most tokens to generate.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// 0 is greedy; higher is more random.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Sample from the most likely tokens whose probabilities sum to this.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Sample from this many most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    pub top_k: u32,
    /// Random seed: the same seed gives the same text.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// With --bootstrap: how hidden states travel between nodes.
    #[arg(long, default_value = "f16")]
    pub wire_dtype: WireDtype,
    /// Without --bootstrap: where to compute (`auto` picks a real GPU when there is one).
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendChoice,
    /// Without --bootstrap: CPU threads (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print the route and timing to stderr.
    #[arg(long)]
    pub stats: bool,
    /// With --bootstrap: send every step from this client, rather than letting the last hop
    /// feed each token it samples straight to the first (for comparisons).
    #[arg(long)]
    pub client_steps: bool,
    /// With --bootstrap: after this share of steps, each hop's output since the last check is
    /// computed again by another node serving the same blocks; a node found computing wrong
    /// hidden states is banned and replaced. 0 turns checks off.
    #[arg(long, value_name = "P", default_value_t = baton_client::model::DEFAULT_VERIFY, value_parser = super::source::share)]
    pub verify: f64,
    #[command(flatten)]
    pub access: super::access::AccessArgs,
}

impl GenerateArgs {
    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.temperature >= 0.0, "--temperature must be 0 or more");
        anyhow::ensure!(
            self.top_p > 0.0 && self.top_p <= 1.0,
            "--top-p must be in (0, 1]"
        );
        Ok(())
    }

    fn sampling(&self) -> Sampling {
        Sampling {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
        }
    }

    /// The prompt's ids, through the chat template with --chat.
    fn prompt_ids(&self, tok: &Tokenizer) -> anyhow::Result<Vec<u32>> {
        let text = if self.chat {
            let mut messages = Vec::new();
            if let Some(s) = &self.system {
                messages.push(Message {
                    role: "system".into(),
                    content: s.clone(),
                });
            }
            messages.push(Message {
                role: "user".into(),
                content: self.prompt.clone(),
            });
            tok.apply_chat_template(&messages, true)
                .map_err(anyhow::Error::msg)?
        } else {
            self.prompt.clone()
        };
        let ids = tok.encode(&text).map_err(anyhow::Error::msg)?;
        anyhow::ensure!(!ids.is_empty(), "the prompt has no tokens");
        Ok(ids)
    }
}

fn print_piece(piece: &str, _: &[Chosen]) -> bool {
    let mut out = std::io::stdout();
    let _ = out.write_all(piece.as_bytes());
    let _ = out.flush();
    true
}

fn report(g: &Generation, stats: bool, backend: &str, hops: &[String]) {
    println!();
    if stats {
        eprintln!(
            "{} prompt tokens, {} generated ({}), time to first token {:.0} ms, decode {:.1} tokens/s, {backend}",
            g.prompt_tokens,
            g.ids.len(),
            match g.stop {
                StopReason::EndOfTurn => "end of turn",
                StopReason::Length => "max tokens",
                StopReason::Context => "context full",
                StopReason::Stopped => "stopped",
            },
            g.time_to_first_token.as_secs_f64() * 1e3,
            g.decode_tokens_per_s(),
        );
        if let Some(b) = g.breakdown(hops).filter(|_| !hops.is_empty()) {
            eprintln!("{b}");
        }
    }
}

pub fn run_local(a: GenerateArgs) -> anyhow::Result<()> {
    a.check()?;
    let path = a
        .model
        .as_deref()
        .context("give --model PATH to run on this machine, or --bootstrap ADDR to use a swarm")?;
    if let Some(n) = a.threads {
        baton_node::set_threads(n)?;
    }
    let model = ModelFile::open(Path::new(path))?;
    let tok = model.tokenizer()?;
    let ids = a.prompt_ids(&tok)?;
    let span = Span::full(model.config.layers as u32);
    let engine = Engine::load(&model, span, a.backend.into(), &mut |_, _| {})?;
    let g = generate(
        &engine,
        &tok,
        &ids,
        a.max_tokens,
        a.sampling(),
        &mut print_piece,
    )
    .context("generation failed")?;
    report(&g, a.stats, &engine.describe(), &[]);
    Ok(())
}

pub async fn run_remote(a: GenerateArgs) -> anyhow::Result<()> {
    a.check()?;
    let client = SwarmClient::connect(
        a.bootstrap.clone(),
        a.access.access()?,
        a.access.identity()?,
    )
    .await?;
    let mut model = SwarmModel::connect(client, a.model.as_deref(), a.wire_dtype).await?;
    model.verify = a.verify;
    let ids = a.prompt_ids(&model.tok)?;
    let context = model.context();
    anyhow::ensure!(
        ids.len() < context,
        "the prompt's {} tokens fill the model's context of {context}",
        ids.len()
    );
    let mut session = model
        .open(
            a.sampling(),
            ids.len() + a.max_tokens,
            TokenAsk::default(),
            &ids,
        )
        .await?;
    let hops = |route: &[Hop]| -> Vec<String> {
        route
            .iter()
            .map(|h| format!("{} {}", h.name, h.span))
            .collect()
    };
    if a.stats {
        eprintln!("route: {}", hops(session.route()).join(" -> "));
    }
    // Repairs of the route are worth telling whoever watches.
    session.on_event = Some(Box::new(|line| eprintln!("{line}")));
    session.feed_on = !a.client_steps;
    let reused = session.fed().len();
    let g = generate_remote(
        &mut session,
        &model.tok,
        &ids[reused..],
        a.max_tokens,
        &mut print_piece,
    )
    .await
    .context("generation failed")?;
    let names = hops(session.route());
    let route = format!("route: {}", names.join(" -> "));
    session.close().await;
    model.client.finish().await;
    report(&g, a.stats, &route, &names);
    Ok(())
}
