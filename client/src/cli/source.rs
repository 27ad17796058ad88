//! Where `baton chat` and `baton serve` find their model: a swarm to join (`--bootstrap`), or
//! a swarm of nodes started inside this process (`--local`, the default).

use std::path::PathBuf;

use anyhow::Context;
use baton_client::local::LocalSwarm;
use baton_client::model::SwarmModel;
use baton_client::swarm::SwarmClient;
use baton_node::{BackendChoice, EngineOptions};
use baton_protocol::WireDtype;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use libp2p::Multiaddr;

#[derive(Args)]
pub struct SourceArgs {
    /// A node of the swarm to use, as it printed itself (…/p2p/<peer id>).
    #[arg(long, conflicts_with = "local")]
    pub bootstrap: Vec<Multiaddr>,
    /// Start a swarm of nodes inside this process, on loopback, that split the model between
    /// them (the default without --bootstrap).
    #[arg(long)]
    pub local: bool,
    /// With --local: how many nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub nodes: u32,
    /// With --bootstrap: the model's name or id (default: the only one the swarm serves).
    /// With --local: a GGUF file or Hugging Face folder (default: the demo model in
    /// ~/.cache/baton).
    #[arg(long)]
    pub model: Option<String>,
    /// How hidden states travel between nodes.
    #[arg(long, default_value = "f16")]
    pub wire_dtype: WireDtype,
    /// With --bootstrap: after this share of steps, each hop's output since the last check is
    /// computed again by another node serving the same blocks; on a disagreement a third node
    /// decides, and a node found computing wrong hidden states is banned and replaced. 0 turns
    /// checks off.
    #[arg(long, value_name = "P", default_value_t = baton_client::model::DEFAULT_VERIFY, value_parser = share)]
    pub verify: f64,
    /// With --local: where the nodes compute (`auto` picks a real GPU when there is one).
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendChoice,
    /// With --local: the most prompt tokens each node keeps for later requests whose prompts
    /// begin the same way (a system prompt, the earlier turns of a chat) to start from, without
    /// computing them again. 0 turns prefix reuse off.
    #[arg(long, value_name = "TOKENS", default_value_t = baton_node::server::PREFIX_CACHE_TOKENS)]
    pub prefix_cache_tokens: usize,
    /// With --local: CPU threads (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// A Jinja chat template to use instead of the model's (as in `tokenizer_config.json`):
    /// for a base model that has none, or to override the one it has.
    #[arg(long, value_name = "FILE")]
    pub chat_template: Option<PathBuf>,
    #[command(flatten)]
    pub access: super::access::AccessArgs,
}

/// A model ready to use, and the local nodes serving it, kept alive with it.
pub struct Source {
    pub model: SwarmModel,
    pub local: Option<LocalSwarm>,
}

impl SourceArgs {
    /// Settings that must be made before any thread starts.
    pub fn prepare(&self) -> anyhow::Result<()> {
        if let Some(n) = self.threads {
            baton_node::set_threads(n)?;
        }
        Ok(())
    }

    pub async fn connect(&self) -> anyhow::Result<Source> {
        let template = match &self.chat_template {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading the chat template {}", path.display()))?,
            ),
            None => None,
        };
        let mut source = self.connect_model().await?;
        if let Some(t) = template {
            source.model.tok.set_chat_template(t);
        }
        Ok(source)
    }

    async fn connect_model(&self) -> anyhow::Result<Source> {
        if !self.bootstrap.is_empty() {
            let client = SwarmClient::connect(
                self.bootstrap.clone(),
                self.access.access()?,
                self.access.identity()?,
            )
            .await?;
            let mut model =
                SwarmModel::connect(client, self.model.as_deref(), self.wire_dtype).await?;
            model.verify = self.verify;
            return Ok(Source { model, local: None });
        }
        let path = match &self.model {
            Some(p) => PathBuf::from(p),
            None => {
                let p = baton_node::system::demo_model_path();
                anyhow::ensure!(
                    p.exists(),
                    "the demo model is not at {}: {}\n(or give --model PATH, or --bootstrap ADDR to use a swarm)",
                    p.display(),
                    baton_node::system::HOW_TO_GET_DEMO_MODEL
                );
                p
            }
        };
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {percent}%")
                .context("the progress bar's template")?
                .progress_chars("=> "),
        );
        let n = self.nodes as usize;
        bar.set_message(format!("starting {n} local nodes"));
        let engine = EngineOptions {
            backend: self.backend,
            ..Default::default()
        };
        let keep = self.prefix_cache_tokens;
        let local = LocalSwarm::start(&path, n, engine, keep, &mut |node, done, total| {
            bar.set_length((n * total) as u64);
            bar.set_position((node * total + done) as u64);
        })
        .await
        .with_context(|| format!("starting local nodes on {}", path.display()))?;
        bar.finish_and_clear();
        let client = local.client().await?;
        let mut model = SwarmModel::connect(client, None, self.wire_dtype).await?;
        // This process's own nodes: nothing to check them against.
        model.verify = 0.0;
        eprintln!(
            "{} on {} local node(s): {}",
            model.name,
            local.nodes.len(),
            local
                .nodes
                .iter()
                .map(|n| format!("{} {}", n.record.name, n.record.span))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(Source {
            model,
            local: Some(local),
        })
    }
}

/// A share between 0 and 1.
pub fn share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("{s} is not a share between 0 and 1")),
    }
}
