//! A tiny Llama model in GGUF, made in memory for tests and fuzzing seeds.

use baton_node::gguf::write::{ggml_kind, Tensor};
use baton_node::gguf::Value;
use baton_shaders::cpu::quantize_row;
use baton_shaders::DType;

pub const H: usize = 64;
pub const F: usize = 96;
pub const V: usize = 64;
pub const LAYERS: usize = 2;

/// Deterministic pseudo-random values in [-0.5, 0.5).
pub fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 2654435761 + seed * 97) % 1000) as f32 / 1000.0) - 0.5)
        .collect()
}

pub fn tensor(name: &str, cols: usize, rows: usize, dtype: DType) -> Tensor {
    let v = values(cols * rows, name.len());
    Tensor {
        name: name.into(),
        dims: if rows == 1 {
            vec![cols as u64]
        } else {
            vec![cols as u64, rows as u64]
        },
        kind: ggml_kind(dtype),
        data: quantize_row(dtype, &v).expect("a format quantize_row writes"),
    }
}

pub fn tiny_tensors(dtype: DType) -> Vec<Tensor> {
    let mut t = vec![tensor("token_embd.weight", H, V, DType::Q8_0)];
    for i in 0..LAYERS {
        let n = |p: &str| format!("blk.{i}.{p}.weight");
        t.push(tensor(&n("attn_norm"), H, 1, DType::F32));
        t.push(tensor(&n("attn_q"), H, H, dtype));
        t.push(tensor(&n("attn_k"), H, H / 2, dtype));
        t.push(tensor(&n("attn_v"), H, H / 2, dtype));
        t.push(tensor(&n("attn_output"), H, H, dtype));
        t.push(tensor(&n("ffn_norm"), H, 1, DType::F32));
        t.push(tensor(&n("ffn_gate"), H, F, dtype));
        t.push(tensor(&n("ffn_up"), H, F, dtype));
        t.push(tensor(&n("ffn_down"), F, H, dtype));
    }
    t.push(tensor("output_norm.weight", H, 1, DType::F32));
    t
}

pub fn tiny_meta(arch: &str) -> Vec<(&'static str, Value)> {
    let s = |v: &str| Value::String(v.into());
    let key = |k: &'static str| k;
    vec![
        (key("general.architecture"), s(arch)),
        ("llama.embedding_length", Value::U32(H as u32)),
        ("llama.feed_forward_length", Value::U32(F as u32)),
        ("llama.block_count", Value::U32(LAYERS as u32)),
        ("llama.attention.head_count", Value::U32(4)),
        ("llama.attention.head_count_kv", Value::U32(2)),
        ("llama.context_length", Value::U32(64)),
        ("llama.vocab_size", Value::U32(V as u32)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
    ]
}
