//! `baton-node bench`: prefill and decode speed, bandwidth and peak memory.

use std::time::Instant;

use baton_node::sampling::top_k;
use baton_node::{Cache, Engine, Logits, SpanInput};
use clap::Args;
use serde_json::json;

use super::ModelArgs;

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt length for the prefill measurement.
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Tokens generated for the decode measurement.
    #[arg(long, default_value_t = 128)]
    pub gen_tokens: usize,
    /// Sessions that decode together, one pass per step for all of them (continuous
    /// batching); decode speed is then their tokens together.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Measured runs (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One prefill of `prompt` in each of `batch` sessions, then `gen` greedy decode steps of all
/// of them in one pass each; returns (prefill s of the first session, decode s).
fn one_run(
    engine: &Engine,
    prompt: &[u32],
    gen: usize,
    batch: usize,
    vocab: usize,
) -> anyhow::Result<(f64, f64)> {
    let mut caches = Vec::with_capacity(batch);
    let mut next = Vec::with_capacity(batch);
    let mut prefill = 0.0;
    for i in 0..batch {
        let mut cache = engine.new_cache()?;
        let t0 = Instant::now();
        let mut last = Vec::new();
        cache.run_chunked(SpanInput::Tokens(prompt), Logits::Last, &mut |l| {
            last = l.to_vec()
        })?;
        if i == 0 {
            prefill = t0.elapsed().as_secs_f64();
        }
        next.push(top_k(&last[last.len() - vocab..], 1)[0].0);
        caches.push(cache);
    }
    let t1 = Instant::now();
    for _ in 0..gen {
        let inputs: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
        let inputs: Vec<SpanInput> = inputs.iter().map(|t| SpanInput::Tokens(t)).collect();
        let mut refs: Vec<&mut Cache> = caches.iter_mut().collect();
        let outs = Cache::forward_pass(&mut refs, &inputs, Logits::Last)?;
        for (n, l) in next.iter_mut().zip(outs) {
            *n = top_k(&l, 1)[0].0;
        }
    }
    Ok((prefill, t1.elapsed().as_secs_f64()))
}

pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.prompt_tokens > 0 && a.gen_tokens > 0 && a.runs > 0 && a.batch > 0,
        "counts must be positive"
    );
    let model = a.model.open()?;
    let cfg = model.config.clone();
    anyhow::ensure!(
        a.prompt_tokens + a.gen_tokens <= cfg.context,
        "--prompt-tokens + --gen-tokens exceed the model's context of {}",
        cfg.context
    );
    let engine = a.model.load(&model)?;
    // A fixed, ordinary-looking prompt: ids spread over the vocabulary.
    let prompt: Vec<u32> = (0..a.prompt_tokens)
        .map(|i| ((i * 7919 + 13) % cfg.vocab) as u32)
        .collect();
    one_run(&engine, &prompt, a.gen_tokens.min(8), a.batch, cfg.vocab)?;
    let mut pp = Vec::new();
    let mut tg = Vec::new();
    for _ in 0..a.runs {
        let (p, d) = one_run(&engine, &prompt, a.gen_tokens, a.batch, cfg.vocab)?;
        pp.push(a.prompt_tokens as f64 / p);
        tg.push((a.gen_tokens * a.batch) as f64 / d);
    }
    let (pp, tg) = (median(pp), median(tg));
    // A decode step reads every weight once, of a mixture of experts only the experts a token
    // uses; the embedding table only for its one row, unless it is also the tied head.
    let bytes = model.active_weight_bytes()
        - if cfg.tied_embeddings {
            0
        } else {
            embed_only(&model)
        };
    let bandwidth = bytes as f64 * tg / a.batch as f64;
    let peak = baton_node::system::proc_kb("/proc/self/status", "VmHWM:").unwrap_or(0);
    if a.json {
        println!(
            "{}",
            json!({
                "model": model.path, "backend": engine.describe(),
                "prompt_tokens": a.prompt_tokens, "gen_tokens": a.gen_tokens, "runs": a.runs,
                "batch": a.batch,
                "prefill_tokens_per_s": pp, "decode_tokens_per_s": tg,
                "weight_bytes_per_token": bytes, "bandwidth_bytes_per_s": bandwidth,
                "peak_rss_bytes": peak,
            })
        );
        return Ok(());
    }
    println!("model     {}", model.path.display());
    println!("backend   {}", engine.describe());
    println!(
        "prefill   {pp:>9.1} tokens/s  ({} tokens, median of {})",
        a.prompt_tokens, a.runs
    );
    println!(
        "decode    {tg:>9.1} tokens/s  ({} tokens{}, median of {})",
        a.gen_tokens,
        if a.batch > 1 {
            format!(" in each of {} sessions, all together", a.batch)
        } else {
            String::new()
        },
        a.runs
    );
    println!(
        "weights   {:>9.1} MiB read per token{}",
        bytes as f64 / (1 << 20) as f64,
        match &cfg.moe {
            Some(m) => format!(" ({} of {} experts)", m.used, m.experts),
            None => String::new(),
        }
    );
    println!("bandwidth {:>9.2} GB/s implied by decode", bandwidth / 1e9);
    println!("peak RSS  {:>9.1} MiB", peak as f64 / (1 << 20) as f64);
    Ok(())
}

/// Bytes of the input embedding table when a separate head exists: decode reads one row of it.
fn embed_only(model: &baton_node::ModelFile) -> usize {
    model
        .tensor(
            "token_embd.weight",
            &[model.config.hidden, model.config.vocab],
        )
        .map(|t| t.bytes().len())
        .unwrap_or(0)
}
