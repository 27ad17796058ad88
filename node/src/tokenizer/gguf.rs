//! Tokenizers from GGUF metadata, built as Hugging Face `tokenizers` specs:
//!
//! - `gpt2`: byte-level BPE with the merges the file lists and the pre-tokenizer its
//!   `tokenizer.ggml.pre` names (Llama 3, Qwen2, GPT-2, SmolLM);
//! - `llama`: SentencePiece vocabularies with scores (Llama 2, Mistral, Gemma): BPE over
//!   `▁`-marked text whose merges rank pairs by the score of the piece they make, with byte
//!   fallback, as transformers converts such files.

use std::collections::HashMap;

use serde_json::{json, Value as Json};

use crate::error::LoadError;
use crate::gguf::{GgufFile, Value};

// Pre-tokenizer regexes of the GGUF `tokenizer.ggml.pre` families we support.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn pre_tokenizer(pre: &str) -> Option<Json> {
    let byte_level = |regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": regex});
    let split = |re: &str| json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false});
    Some(match pre {
        "default" | "gpt2" | "gpt-2" => byte_level(true),
        "smollm" | "starcoder" | "refact" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        "llama-bpe" | "llama3" | "smaug-bpe" => {
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_SPLIT), byte_level(false)]})
        }
        "qwen2" => {
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2_SPLIT), byte_level(false)]})
        }
        _ => return None,
    })
}

/// What [`build`] reads off a file.
pub(super) struct Built {
    pub inner: tokenizers::Tokenizer,
    pub bos: Option<(u32, String)>,
    pub eos: Option<(u32, String)>,
    pub add_bos: Option<u32>,
    /// The end-of-sequence, end-of-turn and end-of-message ids the metadata names.
    pub stop_ids: Vec<u32>,
}

pub(super) fn build(g: &GgufFile) -> Result<Built, LoadError> {
    let bad = |what: String| LoadError::Tokenizer {
        path: g.path.clone(),
        what,
    };
    let tokens: Vec<&str> = g
        .require("tokenizer.ggml.tokens")?
        .as_array()
        .ok_or_else(|| bad("tokens are not a list".into()))?
        .iter()
        .map(|v| {
            v.as_str()
                .ok_or_else(|| bad("a token is not a string".into()))
        })
        .collect::<Result<_, _>>()?;
    let types: Vec<u64> = g
        .get("tokenizer.ggml.token_type")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|v| v.as_u64().unwrap_or(1)).collect())
        .unwrap_or_default();
    // Control (3) and user-defined (4) tokens are matched whole before the model runs.
    let mut added: Vec<Json> = types
        .iter()
        .enumerate()
        .filter(|(_, t)| **t == 3 || **t == 4)
        .filter_map(|(i, t)| {
            tokens.get(i).map(|s| {
                json!({"id": i, "content": s, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": *t == 3})
            })
        })
        .collect();
    let token_at = |key: &str| {
        g.get(key)
            .and_then(Value::as_u64)
            .and_then(|i| tokens.get(i as usize).map(|s| (i as u32, s.to_string())))
    };
    let flag = |key: &str| match g.get(key) {
        Some(Value::Bool(b)) => Some(*b),
        _ => None,
    };
    let kind = g.get_str("tokenizer.ggml.model").unwrap_or("");
    let (normalizer, pre_tok, decoder, model) = match kind {
        "gpt2" => {
            let pre = g.get_str("tokenizer.ggml.pre").unwrap_or("default");
            let pre_tok = pre_tokenizer(pre).ok_or_else(|| {
                bad(format!(
                    "pre-tokenizer `{pre}` is not supported (default, gpt2, smollm, llama-bpe, \
                     qwen2 are)"
                ))
            })?;
            let merges: Vec<&str> = g
                .get("tokenizer.ggml.merges")
                .and_then(Value::as_array)
                .unwrap_or(&[])
                .iter()
                .filter_map(Value::as_str)
                .collect();
            // Llama 3 takes a pre-token that is a whole word of the vocabulary as it is.
            let ignore_merges = matches!(pre, "llama-bpe" | "llama3" | "smaug-bpe");
            let model = json!({"type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
                "byte_fallback": false, "ignore_merges": ignore_merges,
                "vocab": vocab_map(&tokens), "merges": merges});
            let decoder = json!({"type": "ByteLevel", "add_prefix_space": true,
                "trim_offsets": true, "use_regex": true});
            (Json::Null, pre_tok, decoder, model)
        }
        "llama" => {
            let scores: Vec<f32> = g
                .require("tokenizer.ggml.scores")?
                .as_array()
                .ok_or_else(|| bad("scores are not a list".into()))?
                .iter()
                .map(|v| v.as_f64().unwrap_or(0.0) as f32)
                .collect();
            if scores.len() != tokens.len() {
                return Err(bad(format!(
                    "{} scores for {} tokens",
                    scores.len(),
                    tokens.len()
                )));
            }
            let prefix = flag("tokenizer.ggml.add_space_prefix").unwrap_or(true);
            let unk = token_at("tokenizer.ggml.unknown_token_id").map(|u| u.1);
            // Gemma's vocabulary lists runs of spaces, which llama.cpp's converter wrote with
            // spaces and the original with `▁`; its scores are ranks with placeholders in them,
            // so its merges follow the order of the vocabulary.
            let gemma = tokens
                .iter()
                .any(|t| t.contains(' ') && t.trim().is_empty());
            let spelled: Vec<String> = tokens
                .iter()
                .map(|t| {
                    if gemma && t.contains(' ') && t.trim().is_empty() {
                        "▁".repeat(t.chars().count())
                    } else {
                        t.to_string()
                    }
                })
                .collect();
            let spelled: Vec<&str> = spelled.iter().map(String::as_str).collect();
            let rank: Vec<f32> = if gemma {
                (0..tokens.len()).map(|i| -(i as f32)).collect()
            } else {
                scores.clone()
            };
            // Spaces become `▁`; SentencePiece (and llama.cpp) put one before the text too,
            // even before text that starts with a space.
            let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"});
            let normalizer = if prefix && !gemma {
                json!({"type": "Sequence", "normalizers": [
                    {"type": "Prepend", "prepend": "▁"}, replace]})
            } else {
                replace
            };
            let pre_tok = Json::Null;
            let mut decoders = vec![
                json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
                json!({"type": "ByteFallback"}),
                json!({"type": "Fuse"}),
            ];
            if prefix {
                decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
            }
            let model = json!({"type": "BPE", "dropout": null, "unk_token": unk,
                "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
                "byte_fallback": true, "ignore_merges": false, "vocab": vocab_map(&spelled),
                "merges": spm_merges(&spelled, &scores, &rank)});
            let decoder = json!({"type": "Sequence", "decoders": decoders});
            // Only control tokens are matched whole; user-defined ones go through the merges.
            added.retain(|a| a["special"] == json!(true));
            (normalizer, pre_tok, decoder, model)
        }
        other => {
            return Err(bad(format!(
                "tokenizer model `{other}` is not supported (gpt2: byte-level BPE, llama: \
                 SentencePiece are)"
            )))
        }
    };
    let spec = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tok,
        "post_processor": null,
        "decoder": decoder,
        "model": model,
    });
    let inner: tokenizers::Tokenizer = spec
        .to_string()
        .parse()
        .map_err(|e| bad(format!("cannot build the tokenizer: {e}")))?;
    let bos = token_at("tokenizer.ggml.bos_token_id");
    let eos = token_at("tokenizer.ggml.eos_token_id");
    let add_bos = match flag("tokenizer.ggml.add_bos_token") {
        Some(true) => bos.as_ref().map(|b| b.0),
        // SentencePiece models put BOS first unless the file says otherwise.
        None if kind == "llama" => bos.as_ref().map(|b| b.0),
        _ => None,
    };
    let mut stop_ids: Vec<u32> = Vec::new();
    for key in [
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.eom_token_id",
    ] {
        if let Some((id, _)) = token_at(key) {
            if !stop_ids.contains(&id) {
                stop_ids.push(id);
            }
        }
    }
    Ok(Built {
        inner,
        bos,
        eos,
        add_bos,
        stop_ids,
    })
}

/// Token → id; a token listed twice keeps its first id.
fn vocab_map(tokens: &[&str]) -> serde_json::Map<String, Json> {
    let mut m = serde_json::Map::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        m.entry(t.to_string()).or_insert_with(|| json!(i));
    }
    m
}

/// BPE merges of a SentencePiece vocabulary: every split of a piece into two pieces of the
/// vocabulary, ordered by the `rank` of the piece they make (higher first), and within one piece
/// by the scores of its two halves, as transformers derives them for GGUF files.
fn spm_merges(tokens: &[&str], scores: &[f32], rank: &[f32]) -> Vec<[String; 2]> {
    // Python's `{token: value}`: the last value of a repeated token wins.
    let score: HashMap<&str, f32> = tokens.iter().copied().zip(scores.iter().copied()).collect();
    let rank: HashMap<&str, f32> = tokens.iter().copied().zip(rank.iter().copied()).collect();
    let mut seen = std::collections::HashSet::with_capacity(tokens.len());
    let mut merges: Vec<(&str, &str, f32)> = Vec::new();
    let mut local: Vec<(&str, &str, f32)> = Vec::new();
    for &piece in tokens {
        if !seen.insert(piece) {
            continue;
        }
        local.clear();
        for (i, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(i);
            if score.contains_key(l) && score.contains_key(r) {
                local.push((l, r, rank[piece]));
            }
        }
        local.sort_by(|a, b| {
            (score[b.0], score[b.1])
                .partial_cmp(&(score[a.0], score[a.1]))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        merges.extend_from_slice(&local);
    }
    merges.sort_by(|a, b| b.2.partial_cmp(&a.2).unwrap_or(std::cmp::Ordering::Equal));
    merges
        .into_iter()
        .map(|(l, r, _)| [l.to_string(), r.to_string()])
        .collect()
}
