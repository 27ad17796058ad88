//! `baton-node inspect`: what a model takes, from its file, its folder or its `config.json`
//! alone: parameters total and active per token, bytes per block and per routed expert, KV
//! cache per token, and how much of it a node of a given memory holds.

use std::path::{Path, PathBuf};

use anyhow::Context;
use baton_node::inspect::{capacity, runs, Sizes};
use baton_node::{ModelConfig, ModelFile};
use clap::Args;

#[derive(Args)]
pub struct InspectArgs {
    /// A GGUF file, a Hugging Face folder, or a `config.json` alone (bytes are then estimated
    /// at --bytes-per-weight).
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// Positions of KV cache each block keeps, for what a node holds.
    #[arg(long, default_value_t = 4096)]
    pub context: u64,
    /// The node's memory to size for, such as 24GiB or 80GB (default: this machine's).
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// Bytes per KV cache value: 2 (f16, a GPU's default) or 4 (f32, the CPU's).
    #[arg(long, default_value_t = 2)]
    pub kv_bytes: u64,
    /// Bytes per weight for a config alone (default: 1 for FP8 checkpoints, 4 for float32,
    /// else 2).
    #[arg(long)]
    pub bytes_per_weight: Option<f64>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// The config and, where there are weights, the model.
fn open(
    path: &Path,
) -> anyhow::Result<(ModelConfig, Option<ModelFile>, Option<serde_json::Value>)> {
    let config_json = if path.is_dir() {
        let has_weights = path.join("model.safetensors").exists()
            || path.join("model.safetensors.index.json").exists();
        (!has_weights).then(|| path.join("config.json"))
    } else {
        (path.extension().is_some_and(|e| e == "json")).then(|| path.to_path_buf())
    };
    match config_json {
        Some(p) => {
            let text =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            let raw = serde_json::from_str(&text).ok();
            Ok((ModelConfig::from_hf_json(&p, &text)?, None, raw))
        }
        None => {
            let model = ModelFile::open(path)?;
            Ok((model.config.clone(), Some(model), None))
        }
    }
}

/// A config's bytes per weight: its FP8 quantization, else its dtype.
fn config_bytes_per_weight(raw: Option<&serde_json::Value>) -> f64 {
    let get = |k: &str| raw.and_then(|r| r.get(k));
    let fp8 = get("quantization_config")
        .and_then(|q| q.get("quant_method"))
        .and_then(|m| m.as_str())
        == Some("fp8");
    let dtype = get("torch_dtype").or(get("dtype")).and_then(|d| d.as_str());
    match (fp8, dtype) {
        (true, _) => 1.0,
        (_, Some("float32")) => 4.0,
        _ => 2.0,
    }
}

/// `24GiB`, `80GB`, `512M`, or bytes.
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .with_context(|| format!("`{s}` is not a size"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024f64.powi(2),
        "gib" => 1024f64.powi(3),
        "tib" => 1024f64.powi(4),
        other => {
            anyhow::bail!("unknown unit `{other}` in `{s}` (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")
        }
    };
    Ok((n * mult) as u64)
}

fn count(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.2}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2} GB", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2} MB", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.2} KB", n as f64 / 1e3),
        n => format!("{n} B"),
    }
}

pub fn run(a: InspectArgs) -> anyhow::Result<()> {
    let (config, model, raw) = open(&a.model)?;
    let params = match &model {
        Some(m) => Sizes::of_tensors(m, |t| t.elements() as u64),
        None => Sizes::params(&config),
    };
    let (weight, how) = match &model {
        Some(m) => (
            Sizes::of_tensors(m, |t| t.stored_bytes() as u64),
            "from its tensors".to_string(),
        ),
        None => {
            let per = a
                .bytes_per_weight
                .unwrap_or_else(|| config_bytes_per_weight(raw.as_ref()));
            (
                params.scaled(per),
                format!("estimated from the config at {per} B per weight"),
            )
        }
    };
    let layout = config.kv_layout();
    let kv_block = layout.per_position() as u64 * a.kv_bytes;
    let kv_token = kv_block * config.layers as u64;
    let memory = match &a.memory {
        Some(s) => parse_size(s)?,
        None => baton_node::system::memory_total(),
    };
    let (fit_blocks, fit_experts) = capacity(&weight, kv_block, a.context, memory);
    let moe = config.moe.as_ref();
    if a.json {
        let doc = serde_json::json!({
            "architecture": config.arch.name(),
            "blocks": config.layers,
            "parameters": {"total": params.total(), "active": params.active()},
            "weight_bytes": {"total": weight.total(), "active": weight.active(),
                "outside_blocks": weight.outside, "how": how,
                "per_block": weight.blocks.iter().map(|b| serde_json::json!({
                    "dense": b.dense, "per_expert": b.expert, "experts": b.experts,
                })).collect::<Vec<_>>()},
            "experts": moe.map(|m| serde_json::json!({"routed": m.experts, "per_token": m.used})),
            "kv_bytes_per_token": kv_token,
            "kv_values_per_block_position": layout.per_position(),
            "node": {"memory_bytes": memory, "context": a.context,
                "whole_blocks": fit_blocks, "experts": fit_experts},
        });
        println!("{doc}");
        return Ok(());
    }
    println!(
        "{}: {} ({} blocks), bytes {how}",
        a.model.display(),
        config.arch.name(),
        config.layers
    );
    let routed = moe.map_or(String::new(), |m| {
        format!(
            " ({} of {} routed experts per MoE block)",
            m.used, m.experts
        )
    });
    println!(
        "parameters: {} total, {} active per token{routed}",
        count(params.total()),
        count(params.active())
    );
    println!(
        "weights: {} total, {} read per token; {} outside the blocks (embedding, head)",
        bytes(weight.total()),
        bytes(weight.active()),
        bytes(weight.outside)
    );
    for (first, last, b) in runs(&weight.blocks) {
        let which = if first == last {
            format!("block {first}")
        } else {
            format!("blocks {first}-{last}")
        };
        if b.experts > 0 {
            println!(
                "  {which}: {} each: {} dense + {} experts of {}",
                bytes(b.total()),
                bytes(b.dense),
                b.experts,
                bytes(b.expert)
            );
        } else {
            println!("  {which}: {} each (dense)", bytes(b.total()));
        }
    }
    let latent = if config.mla.is_some() {
        " (latent attention: one row per position and block)"
    } else {
        ""
    };
    println!(
        "KV cache: {kv_token} bytes per token at {} bytes per value, {} values per position \
         and block{latent}",
        a.kv_bytes,
        layout.per_position()
    );
    let experts = if moe.is_some() {
        format!(", or {fit_experts} routed experts serving experts only")
    } else {
        String::new()
    };
    let noun = if fit_blocks == 1 { "block" } else { "blocks" };
    println!(
        "a node of {} with {} positions of context holds {fit_blocks} whole {noun}{experts}",
        bytes(memory),
        a.context
    );
    Ok(())
}
