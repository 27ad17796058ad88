//! `baton chat`: an interactive chat with a model on a swarm (or on local nodes).

use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use baton_client::chat::Chat;
use baton_client::generate::{Chosen, Generation, StopReason};
use baton_client::model::SwarmModel;
use baton_protocol::wire::Sampling;
use clap::Args;
use tokio::sync::mpsc;

use super::source::SourceArgs;

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// A system message that starts the conversation.
    #[arg(long)]
    pub system: Option<String>,
    /// 0 is greedy; higher is more random.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Sample from the most likely tokens whose probabilities sum to this.
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// The most tokens of one answer.
    #[arg(long, default_value_t = 1024)]
    pub max_tokens: usize,
    /// Random seed: the same seed and conversation give the same answers (default: random).
    #[arg(long)]
    pub seed: Option<u64>,
}

const HELP: &str =
    "/reset forgets the conversation, /route shows the hops (and banned nodes), /stats the last \
answer's speed, /quit leaves; Ctrl-C stops an answer";

/// Where output goes: a terminal gets text as it streams; a pipe gets one answer per line.
struct Out {
    tty: bool,
}

impl Out {
    fn piece(&self, text: &str) {
        let mut out = std::io::stdout();
        if self.tty {
            let _ = out.write_all(text.as_bytes());
        } else {
            let _ = out.write_all(text.replace(['\n', '\r'], " ").as_bytes());
        }
        let _ = out.flush();
    }

    fn line(&self, text: &str) {
        if self.tty {
            println!("{text}");
        } else {
            println!("{}", text.replace(['\n', '\r'], " "));
        }
    }

    fn prompt(&self) {
        if self.tty {
            print!("> ");
            let _ = std::io::stdout().flush();
        }
    }
}

/// Reads stdin on its own thread, one line at a time, so that Ctrl-C can be awaited beside it.
fn lines() -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

pub async fn run(a: ChatArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.temperature >= 0.0, "--temperature must be 0 or more");
    anyhow::ensure!(a.top_p > 0.0 && a.top_p <= 1.0, "--top-p must be in (0, 1]");
    // Ctrl-C while loading leaves; from then on it stops an answer.
    let source = tokio::select! {
        s = a.source.connect() => s?,
        _ = tokio::signal::ctrl_c() => return Ok(()),
    };
    let model = &source.model;
    anyhow::ensure!(
        model.tok.has_chat_template(),
        "{}: {}",
        model.name,
        baton_node::tokenizer::NO_TEMPLATE
    );
    let out = Out {
        tty: std::io::stdin().is_terminal(),
    };
    if out.tty {
        eprintln!("chatting with {} ({HELP})", model.name);
    }
    let sampling = Sampling {
        temperature: a.temperature,
        top_k: 0,
        top_p: a.top_p,
        seed: a.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
        }),
    };
    let mut chat = Chat::new(a.system.clone());
    let mut input = lines();
    loop {
        out.prompt();
        let line = tokio::select! {
            line = input.recv() => line,
            _ = tokio::signal::ctrl_c() => None,
        };
        let Some(line) = line else {
            if out.tty {
                println!();
            }
            break;
        };
        let line = line.trim();
        match line {
            "" => continue,
            "/quit" | "/exit" => break,
            "/reset" => {
                chat.reset();
                out.line("(the conversation is forgotten)");
                continue;
            }
            "/route" => {
                out.line(&route(model));
                continue;
            }
            "/stats" => {
                out.line(&stats(model, chat.last.as_ref()));
                continue;
            }
            "/help" => {
                out.line(HELP);
                continue;
            }
            l if l.starts_with('/') => {
                out.line(&format!("unknown command {l}: {HELP}"));
                continue;
            }
            _ => {}
        }
        let shown = Mutex::new(String::new());
        let mut on_text = |piece: &str, _: &[Chosen]| {
            out.piece(piece);
            if let Ok(mut s) = shown.lock() {
                s.push_str(piece);
            }
            true
        };
        let result = tokio::select! {
            r = chat.reply(model, line, sampling, a.max_tokens, &mut on_text) => Some(r),
            _ = tokio::signal::ctrl_c() => None,
        };
        match result {
            Some(Ok(g)) => {
                println!();
                if g.stop == StopReason::Length && out.tty {
                    eprintln!("(the answer reached --max-tokens {})", a.max_tokens);
                }
            }
            Some(Err(e)) => {
                println!();
                eprintln!("error: {e}");
            }
            None => {
                println!();
                if out.tty {
                    eprintln!("(stopped)");
                }
                let text = shown.lock().map(|s| s.clone()).unwrap_or_default();
                chat.interrupted(line, &text);
            }
        }
    }
    chat.close().await;
    model.client.finish().await;
    if let Some(local) = &source.local {
        local.shutdown();
    }
    Ok(())
}

fn route(model: &SwarmModel) -> String {
    let hops: Vec<String> = model
        .route()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            format!(
                "{}. {} blocks {} at {} (rtt {:.2} ms, {})",
                i + 1,
                h.record.name,
                h.record.span,
                h.record.addrs.first().map_or("?", |a| a.as_str()),
                h.rtt.as_secs_f64() * 1e3,
                h.record.backend
            )
        })
        .collect();
    let banned: Vec<String> = model
        .client
        .banned
        .lock()
        .map(|b| b.iter().map(|p| p.to_string()).collect())
        .unwrap_or_default();
    let banned = if banned.is_empty() {
        String::new()
    } else {
        format!(
            "; banned for computing wrong hidden states: {}",
            banned.join(", ")
        )
    };
    format!("route of {}: {}{banned}", model.name, hops.join("; "))
}

fn stats(model: &SwarmModel, last: Option<&Generation>) -> String {
    let Some(g) = last else {
        return "no answer yet".into();
    };
    let mut s = format!(
        "last answer: {} prompt tokens sent, {} generated; first token after {:.0} ms; {:.1} tokens/s",
        g.prompt_tokens,
        g.completion_tokens(),
        g.time_to_first_token.as_secs_f64() * 1e3,
        g.decode_tokens_per_s()
    );
    let names: Vec<String> = model
        .route()
        .iter()
        .map(|h| format!("{} {}", h.record.name, h.record.span))
        .collect();
    if let Some(b) = g.breakdown(&names) {
        s.push_str("; ");
        s.push_str(&b);
    }
    s
}
