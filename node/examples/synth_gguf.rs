//! Writes a Llama-shaped GGUF with pseudo-random weights (linear layers in Q4_1, the embedding
//! in Q8_0), for measuring speed on shapes larger than the demo model's:
//!
//!     cargo run --release --example synth_gguf -- OUT.gguf [HIDDEN LAYERS FFN HEADS KV_HEADS VOCAB]
//!
//! The default is the shape of a 1B-parameter Llama (2048, 16, 8192, 32, 8, 32000).

use baton_node::gguf::write::{ggml_kind, gguf_bytes, Tensor};
use baton_node::gguf::Value;
use baton_shaders::cpu::quantize_row;
use baton_shaders::DType;

fn tensor(name: String, cols: usize, rows: usize, dtype: DType, seed: u64) -> Tensor {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let scale = 1.0 / (cols as f32).sqrt();
    let values: Vec<f32> = (0..cols * rows)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
        })
        .collect();
    let values = if dtype == DType::F32 && rows == 1 {
        vec![1.0; cols]
    } else {
        values
    };
    Tensor {
        name,
        dims: if rows == 1 {
            vec![cols as u64]
        } else {
            vec![cols as u64, rows as u64]
        },
        kind: ggml_kind(dtype),
        data: quantize_row(dtype, &values).expect("a format quantize_row writes"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = args
        .first()
        .expect("usage: synth_gguf OUT.gguf [HIDDEN LAYERS FFN HEADS KV_HEADS VOCAB]");
    let num =
        |i: usize, default: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (h, layers, ffn, heads, kv_heads, vocab) = (
        num(1, 2048),
        num(2, 16),
        num(3, 8192),
        num(4, 32),
        num(5, 8),
        num(6, 32000),
    );
    let kv = h / heads * kv_heads;
    let mut t = vec![tensor("token_embd.weight".into(), h, vocab, DType::Q8_0, 1)];
    for i in 0..layers {
        let n = |p: &str| format!("blk.{i}.{p}.weight");
        let s = 100 + i as u64 * 10;
        t.push(tensor(n("attn_norm"), h, 1, DType::F32, s));
        t.push(tensor(n("attn_q"), h, h, DType::Q4_1, s + 1));
        t.push(tensor(n("attn_k"), h, kv, DType::Q4_1, s + 2));
        t.push(tensor(n("attn_v"), h, kv, DType::Q4_1, s + 3));
        t.push(tensor(n("attn_output"), h, h, DType::Q4_1, s + 4));
        t.push(tensor(n("ffn_norm"), h, 1, DType::F32, s + 5));
        t.push(tensor(n("ffn_gate"), h, ffn, DType::Q4_1, s + 6));
        t.push(tensor(n("ffn_up"), h, ffn, DType::Q4_1, s + 7));
        t.push(tensor(n("ffn_down"), ffn, h, DType::Q4_1, s + 8));
    }
    t.push(tensor("output_norm.weight".into(), h, 1, DType::F32, 9));
    let u = |v: usize| Value::U32(v as u32);
    let meta = vec![
        ("general.architecture", Value::String("llama".into())),
        (
            "general.name",
            Value::String(format!("synthetic-{h}x{layers}")),
        ),
        ("llama.embedding_length", u(h)),
        ("llama.feed_forward_length", u(ffn)),
        ("llama.block_count", u(layers)),
        ("llama.attention.head_count", u(heads)),
        ("llama.attention.head_count_kv", u(kv_heads)),
        ("llama.context_length", u(4096)),
        ("llama.vocab_size", u(vocab)),
        ("llama.rope.freq_base", Value::F32(500000.0)),
    ];
    std::fs::write(out, gguf_bytes(&meta, &t)).expect("writing the file");
    println!("wrote {out}");
}
