//! `baton-node eval`: teacher-forced logits over a prompt.

use std::path::PathBuf;

use anyhow::{bail, Context};
use baton_node::sampling::{log_prob, top_k};
use baton_node::tokenizer::Message;
use baton_node::{Logits, SpanInput};
use clap::Args;
use serde_json::json;

use super::ModelArgs;

#[derive(Args)]
#[command(group = clap::ArgGroup::new("input").required(true).args(["text", "chat_json", "ids"]))]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Plain text to tokenize (no chat template).
    #[arg(long)]
    pub text: Option<String>,
    /// A JSON file holding a list of {"role", "content"} messages; the model's chat template is
    /// applied with the generation prompt.
    #[arg(long, value_name = "FILE")]
    pub chat_json: Option<PathBuf>,
    /// Token ids, comma-separated: 1,2,3.
    #[arg(long, value_delimiter = ',')]
    pub ids: Option<Vec<u32>>,
    /// How many of the most likely next tokens to print at each position.
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also print the perplexity of the sequence.
    #[arg(long)]
    pub perplexity: bool,
}

pub fn run(a: EvalArgs) -> anyhow::Result<()> {
    let model = a.model.open()?;
    let (ids, text) = match (&a.ids, &a.text, &a.chat_json) {
        (Some(ids), _, _) => (ids.clone(), None),
        (None, Some(text), _) => {
            let tok = model.tokenizer()?;
            (
                tok.encode(text).map_err(anyhow::Error::msg)?,
                Some(text.clone()),
            )
        }
        (None, None, Some(file)) => {
            let raw = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            let messages: Vec<Message> = serde_json::from_str(&raw).with_context(|| {
                format!(
                    "{}: expected a JSON list of {{\"role\", \"content\"}}",
                    file.display()
                )
            })?;
            let tok = model.tokenizer()?;
            let text = tok
                .apply_chat_template(&messages, true)
                .map_err(anyhow::Error::msg)?;
            (tok.encode(&text).map_err(anyhow::Error::msg)?, Some(text))
        }
        _ => bail!("give one of --text, --chat-json or --ids"),
    };
    if ids.is_empty() {
        bail!("the input has no tokens");
    }
    let engine = a.model.load(&model)?;
    let tokenizer = model.tokenizer().ok();
    let vocab = model.config.vocab;
    let mut cache = engine.new_cache()?;
    let mut positions = Vec::with_capacity(ids.len());
    let mut nll = 0f64;
    let mut pos = 0usize;
    cache.run_chunked(SpanInput::Tokens(&ids), Logits::All, &mut |logits| {
        for row in logits.chunks_exact(vocab) {
            if let Some(next) = ids.get(pos + 1) {
                nll -= log_prob(row, *next as usize) as f64;
            }
            positions.push(top_k(row, a.top_k));
            pos += 1;
        }
    })?;
    let ppl = (ids.len() > 1).then(|| (nll / (ids.len() - 1) as f64).exp());
    let show = |id: u32| tokenizer.as_ref().map(|t| t.token(id)).unwrap_or_default();
    if a.json {
        let doc = json!({
            "model": model.path,
            "backend": engine.describe(),
            "text": text,
            "prompt_ids": ids,
            "positions": positions.iter().enumerate().map(|(p, top)| json!({
                "pos": p,
                "token": ids[p],
                "top_ids": top.iter().map(|t| t.0).collect::<Vec<_>>(),
                "top_logits": top.iter().map(|t| t.1).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "perplexity": if a.perplexity { ppl } else { None },
        });
        println!("{doc}");
        return Ok(());
    }
    println!("{} tokens, backend {}", ids.len(), engine.describe());
    println!(
        "{:>5}  {:>6}  {:<16}  top-{} next (id:logit)",
        "pos", "id", "token", a.top_k
    );
    for (p, top) in positions.iter().enumerate() {
        let tops: Vec<String> = top
            .iter()
            .map(|(id, l)| format!("{id}:{l:.3} {:?}", show(*id)))
            .collect();
        println!(
            "{p:>5}  {:>6}  {:<16}  {}",
            ids[p],
            format!("{:?}", show(ids[p])),
            tops.join("  ")
        );
    }
    if a.perplexity {
        match ppl {
            Some(p) => println!("perplexity: {p:.4}"),
            None => println!("perplexity: undefined for a single token"),
        }
    }
    Ok(())
}
