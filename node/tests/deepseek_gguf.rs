//! The `deepseek_v3` fixture written as `deepseek2` GGUF files in llama.cpp's two layouts
//! reproduces transformers' logits: the older one, which keeps `attn_kv_b` whole and states the
//! per-head key and value lengths, and the one for latent attention, which splits it per head
//! into `attn_k_b` (each head's `W_UK` transposed) and `attn_v_b`, with one KV head whose
//! lengths are the cached row's and the per-head ones under `key_length_mla` and
//! `value_length_mla`. Experts stacked, the choice bias as `exp_probs_b`.

use baton_node::gguf::Value;

mod fixture_gguf;
mod reference;
use fixture_gguf::{bf16, Fixture};

const LAYERS: usize = 4;
const HEADS: usize = 4;
const NOPE: usize = 16;
const ROPE: usize = 8;
const V: usize = 16;
const KV_LORA: usize = 32;

fn meta(latent: bool) -> Vec<(&'static str, Value)> {
    let u = |v: usize| Value::U32(v as u32);
    let mut m = vec![
        ("general.architecture", Value::String("deepseek2".into())),
        ("deepseek2.embedding_length", u(64)),
        ("deepseek2.block_count", u(LAYERS)),
        ("deepseek2.feed_forward_length", u(128)),
        ("deepseek2.attention.head_count", u(HEADS)),
        (
            "deepseek2.attention.layer_norm_rms_epsilon",
            Value::F32(1e-5),
        ),
        ("deepseek2.rope.freq_base", Value::F32(10000.0)),
        ("deepseek2.rope.dimension_count", u(ROPE)),
        ("deepseek2.context_length", u(256)),
        ("deepseek2.vocab_size", u(512)),
        ("deepseek2.attention.q_lora_rank", u(48)),
        ("deepseek2.attention.kv_lora_rank", u(KV_LORA)),
        ("deepseek2.leading_dense_block_count", u(1)),
        ("deepseek2.expert_count", u(16)),
        ("deepseek2.expert_used_count", u(4)),
        ("deepseek2.expert_feed_forward_length", u(32)),
        ("deepseek2.expert_shared_count", u(1)),
        ("deepseek2.expert_weights_scale", Value::F32(2.5)),
        ("deepseek2.expert_weights_norm", Value::Bool(true)),
        ("deepseek2.expert_gating_func", u(2)),
        ("deepseek2.expert_group_count", u(4)),
        ("deepseek2.expert_group_used_count", u(2)),
    ];
    if latent {
        m.extend([
            ("deepseek2.attention.head_count_kv", u(1)),
            ("deepseek2.attention.key_length", u(KV_LORA + ROPE)),
            ("deepseek2.attention.value_length", u(KV_LORA)),
            ("deepseek2.attention.key_length_mla", u(NOPE + ROPE)),
            ("deepseek2.attention.value_length_mla", u(V)),
        ]);
    } else {
        m.extend([
            ("deepseek2.attention.head_count_kv", u(HEADS)),
            ("deepseek2.attention.key_length", u(NOPE + ROPE)),
            ("deepseek2.attention.value_length", u(V)),
        ]);
    }
    m
}

/// bf16 `[rows, cols]` (row-major) transposed.
fn transpose(data: &[u8], rows: usize, cols: usize) -> Vec<u8> {
    let mut out = vec![0u8; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            let (from, to) = (2 * (r * cols + c), 2 * (c * rows + r));
            out[to..to + 2].copy_from_slice(&data[from..from + 2]);
        }
    }
    out
}

#[test]
fn a_deepseek2_gguf_with_attn_kv_b_reproduces_the_reference() {
    let f = Fixture::open("deepseek_v3");
    let mut tensors = f.mapped(|n| !n.contains(".mlp.experts."));
    tensors.extend(f.stacked_experts(1..LAYERS, 16));
    f.check("deepseek2-kv-b", &meta(false), &tensors);
}

#[test]
fn a_deepseek2_gguf_with_attn_k_b_and_attn_v_b_reproduces_the_reference() {
    let f = Fixture::open("deepseek_v3");
    let mut tensors = f.mapped(|n| !n.contains(".mlp.experts.") && !n.contains("kv_b_proj"));
    tensors.extend(f.stacked_experts(1..LAYERS, 16));
    for i in 0..LAYERS {
        let (_, kv_b) = f.get(&format!("model.layers.{i}.self_attn.kv_b_proj.weight"));
        let row = 2 * KV_LORA;
        let (mut k_b, mut v_b) = (Vec::new(), Vec::new());
        for h in 0..HEADS {
            let at = h * (NOPE + V) * row;
            k_b.extend(transpose(&kv_b[at..at + NOPE * row], NOPE, KV_LORA));
            v_b.extend_from_slice(&kv_b[at + NOPE * row..at + (NOPE + V) * row]);
        }
        let dims = |a: usize, b: usize| vec![a as u64, b as u64, HEADS as u64];
        tensors.push(bf16(
            format!("blk.{i}.attn_k_b.weight"),
            (dims(NOPE, KV_LORA), k_b),
        ));
        tensors.push(bf16(
            format!("blk.{i}.attn_v_b.weight"),
            (dims(KV_LORA, V), v_b),
        ));
    }
    f.check("deepseek2-k-b", &meta(true), &tensors);
}
