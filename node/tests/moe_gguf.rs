//! Tiny Mixtral GGUF files made here: experts stacked in one tensor per part
//! (`ffn_gate_exps`, `[cols, rows, experts]`, as llama.cpp's converter writes them) compute
//! exactly what the same experts in tensors of their own (`ffn_gate.{e}`, as early
//! conversions and Hugging Face folders hold them) compute, in a float and a quantized format.
//! And the Qwen3-MoE fixture written as a `qwen3moe` GGUF with stacked experts reproduces
//! transformers' logits.

use baton_node::gguf::write::{ggml_kind, gguf_bytes, Tensor};
use baton_node::gguf::Value;
use baton_node::{BackendChoice, Engine, Error, LoadError, Logits, ModelFile, SpanInput};
use baton_protocol::Span;
use baton_shaders::cpu::quantize_row;
use baton_shaders::DType;

mod fixture_gguf;
mod reference;
mod tiny;
use fixture_gguf::Fixture;
use tiny::{tensor, tiny_meta, tiny_tensors, values, F, H, LAYERS};

const EXPERTS: usize = 4;

/// Expert `e`'s part `part` (`[cols, rows]`), with values of its own.
fn expert_data(
    part: &str,
    layer: usize,
    e: usize,
    cols: usize,
    rows: usize,
    dtype: DType,
) -> Vec<u8> {
    let v = values(cols * rows, 31 * layer + 7 * e + part.len());
    quantize_row(dtype, &v).expect("a format quantize_row writes")
}

/// A tiny Llama whose MLPs are mixtures of `EXPERTS` experts, stacked or one tensor each;
/// `order` lists which expert's weights each stacked slot holds, and the metadata declares
/// `declared` experts.
fn mixtral(dtype: DType, stacked: bool, order: [usize; EXPERTS], declared: usize) -> Vec<u8> {
    let mut tensors: Vec<Tensor> = tiny_tensors(dtype)
        .into_iter()
        .filter(|t| {
            !["ffn_gate.", "ffn_up.", "ffn_down."]
                .iter()
                .any(|p| t.name.contains(p))
        })
        .collect();
    for layer in 0..LAYERS {
        tensors.push(tensor(
            &format!("blk.{layer}.ffn_gate_inp.weight"),
            H,
            EXPERTS,
            DType::F32,
        ));
        for (part, cols, rows) in [("ffn_gate", H, F), ("ffn_up", H, F), ("ffn_down", F, H)] {
            let data = |e: usize| expert_data(part, layer, e, cols, rows, dtype);
            if stacked {
                tensors.push(Tensor {
                    name: format!("blk.{layer}.{part}_exps.weight"),
                    dims: vec![cols as u64, rows as u64, EXPERTS as u64],
                    kind: ggml_kind(dtype),
                    data: order.iter().flat_map(|&e| data(e)).collect(),
                });
            } else {
                for e in 0..EXPERTS {
                    tensors.push(Tensor {
                        name: format!("blk.{layer}.{part}.{e}.weight"),
                        dims: vec![cols as u64, rows as u64],
                        kind: ggml_kind(dtype),
                        data: data(e),
                    });
                }
            }
        }
    }
    let mut meta = tiny_meta("llama");
    meta.push(("llama.expert_count", Value::U32(declared as u32)));
    meta.push(("llama.expert_used_count", Value::U32(2)));
    gguf_bytes(&meta, &tensors)
}

fn logits(bytes: Vec<u8>) -> Vec<f32> {
    let model = ModelFile::from_gguf_bytes(std::path::Path::new("mixtral.gguf"), bytes).unwrap();
    let moe = model.config.moe.clone().expect("a mixture of experts");
    assert_eq!((moe.experts, moe.used, moe.ffn), (EXPERTS, 2, F));
    let span = Span::full(model.config.layers as u32);
    let engine = Engine::load(&model, span, BackendChoice::Cpu.into(), &mut |_, _| {}).unwrap();
    let mut cache = engine.new_cache().unwrap();
    let ids: Vec<u32> = (0..40).map(|i| (i * 7 + 3) % 64).collect();
    let mut out = cache
        .forward(SpanInput::Tokens(&ids[..30]), Logits::All)
        .unwrap();
    for id in &ids[30..] {
        out.extend(
            cache
                .forward(SpanInput::Tokens(&[*id]), Logits::Last)
                .unwrap(),
        );
    }
    assert!(out.iter().all(|v| v.is_finite()));
    out
}

#[test]
fn stacked_experts_compute_as_experts_of_their_own() {
    for dtype in [DType::F16, DType::Q8_0] {
        let own = logits(mixtral(dtype, false, [0, 1, 2, 3], EXPERTS));
        let stacked = logits(mixtral(dtype, true, [0, 1, 2, 3], EXPERTS));
        assert!(
            own == stacked,
            "{dtype:?}: stacked experts compute otherwise"
        );
        // The experts differ: slots holding other experts' weights change the logits.
        let swapped = logits(mixtral(dtype, true, [1, 0, 3, 2], EXPERTS));
        assert!(own != swapped, "{dtype:?}: every expert computes the same");
    }
}

/// Metadata declaring more experts than the stacked tensors hold is refused with the shape
/// it found, not read past.
#[test]
fn a_stacked_tensor_of_other_experts_is_refused() {
    let bytes = mixtral(DType::F16, true, [0, 1, 2, 3], EXPERTS + 1);
    let model = ModelFile::from_gguf_bytes(std::path::Path::new("five.gguf"), bytes).unwrap();
    let span = Span::full(model.config.layers as u32);
    match Engine::load(&model, span, BackendChoice::Cpu.into(), &mut |_, _| {}) {
        Err(Error::Load(LoadError::Shape { tensor, .. })) => {
            assert!(tensor.starts_with("blk.0.ffn_"), "{tensor}")
        }
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("five experts loaded from tensors of four"),
    }
}

/// The `qwen3_moe` fixture's weights as a `qwen3moe` GGUF, as llama.cpp's converter lays it out:
/// bf16 bytes unchanged (Qwen's q and k rows are not permuted), the experts of each part
/// stacked in expert order (`[cols, rows, experts]`), the router as `ffn_gate_inp`.
#[test]
fn a_qwen3moe_gguf_with_stacked_experts_reproduces_the_reference() {
    let f = Fixture::open("qwen3_moe");
    let (layers, experts) = (4, 8);
    let mut tensors = f.mapped(|n| !n.contains(".mlp.experts."));
    tensors.extend(f.stacked_experts(0..layers, experts));
    let u = |v: u32| Value::U32(v);
    let meta = vec![
        ("general.architecture", Value::String("qwen3moe".into())),
        ("qwen3moe.embedding_length", u(64)),
        ("qwen3moe.block_count", u(layers as u32)),
        ("qwen3moe.feed_forward_length", u(128)),
        ("qwen3moe.attention.head_count", u(4)),
        ("qwen3moe.attention.head_count_kv", u(2)),
        ("qwen3moe.attention.key_length", u(16)),
        ("qwen3moe.attention.value_length", u(16)),
        (
            "qwen3moe.attention.layer_norm_rms_epsilon",
            Value::F32(1e-5),
        ),
        ("qwen3moe.rope.freq_base", Value::F32(10000.0)),
        ("qwen3moe.context_length", u(256)),
        ("qwen3moe.vocab_size", u(512)),
        ("qwen3moe.expert_count", u(experts as u32)),
        ("qwen3moe.expert_used_count", u(2)),
        ("qwen3moe.expert_feed_forward_length", u(64)),
    ];
    f.check("qwen3moe", &meta, &tensors);
}
