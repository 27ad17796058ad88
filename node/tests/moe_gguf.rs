//! Tiny Mixtral GGUF files made here: experts stacked in one tensor per part
//! (`ffn_gate_exps`, `[cols, rows, experts]`, as llama.cpp's converter writes them) compute
//! exactly what the same experts in tensors of their own (`ffn_gate.{e}`, as early
//! conversions and Hugging Face folders hold them) compute, in a float and a quantized format.

use baton_node::gguf::write::{ggml_kind, gguf_bytes, Tensor};
use baton_node::gguf::Value;
use baton_node::{BackendChoice, Engine, Error, LoadError, Logits, ModelFile, SpanInput};
use baton_protocol::Span;
use baton_shaders::cpu::quantize_row;
use baton_shaders::DType;

mod tiny;
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
