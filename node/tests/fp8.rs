//! FP8 checkpoints as DeepSeek-V3 ships them: linear weights in `float8_e4m3fn` beside
//! `weight_scale_inv`, one f32 scale per 128 × 128 tile. A tiny Llama folder written that way
//! computes what the same weights, dequantized into an f32 folder, compute, on the CPU and on
//! wgpu; broken pairings and other quantization schemes get clear errors.

use std::path::{Path, PathBuf};

use baton_node::{
    BackendChoice, Engine, EngineOptions, Error, KvDtype, LoadError, Logits, ModelFile, SpanInput,
};
use baton_protocol::Span;
use baton_shaders::fp8::{e4m3, to_e4m3};
use baton_tests::max_abs_diff;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

// Only its deterministic values.
#[allow(dead_code)]
mod tiny;
use tiny::values;

const HIDDEN: usize = 128;
const FFN: usize = 256;
const VOCAB: usize = 256;
const LAYERS: usize = 2;
const TILE: usize = 128;

fn config(fp8: bool) -> String {
    let quant = if fp8 {
        r#""quantization_config": {"quant_method": "fp8", "fmt": "e4m3",
            "activation_scheme": "dynamic", "weight_block_size": [128, 128]},"#
    } else {
        ""
    };
    format!(
        r#"{{"model_type": "llama", "vocab_size": {VOCAB}, "hidden_size": {HIDDEN},
        "intermediate_size": {FFN}, "num_hidden_layers": {LAYERS}, "num_attention_heads": 2,
        "num_key_value_heads": 1, "head_dim": 64, "rms_norm_eps": 1e-5,
        "max_position_embeddings": 256, {quant} "tie_word_embeddings": false}}"#
    )
}

/// A weight `[rows, cols]` as E4M3 bytes and per-tile scales, and the values they stand for.
fn quantize(rows: usize, cols: usize, seed: usize) -> (Vec<u8>, Vec<f32>, Vec<f32>) {
    let w: Vec<f32> = values(rows * cols, seed).iter().map(|v| v * 0.2).collect();
    let (tr, tc) = (rows.div_ceil(TILE), cols / TILE);
    let mut scales = vec![0f32; tr * tc];
    for (i, v) in w.iter().enumerate() {
        let s = &mut scales[(i / cols / TILE) * tc + (i % cols) / TILE];
        *s = s.max(v.abs() / 448.0);
    }
    let scale = |i: usize| scales[(i / cols / TILE) * tc + (i % cols) / TILE];
    let q: Vec<u8> = w
        .iter()
        .enumerate()
        .map(|(i, v)| to_e4m3(v / scale(i)))
        .collect();
    let deq = q
        .iter()
        .enumerate()
        .map(|(i, &b)| e4m3(b) * scale(i))
        .collect();
    (q, scales, deq)
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes the tiny Llama into `dir`: linear weights in FP8 with their scales, or their values
/// in f32.
fn write(dir: &Path, fp8: bool) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config(fp8)).unwrap();
    let mut data: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut plain = |name: String, shape: Vec<usize>, v: Vec<f32>| {
        data.push((name, Dtype::F32, shape, f32_bytes(&v)));
    };
    plain(
        "model.embed_tokens.weight".into(),
        vec![VOCAB, HIDDEN],
        values(VOCAB * HIDDEN, 1),
    );
    plain(
        "lm_head.weight".into(),
        vec![VOCAB, HIDDEN],
        values(VOCAB * HIDDEN, 2),
    );
    plain("model.norm.weight".into(), vec![HIDDEN], vec![1.0; HIDDEN]);
    let mut linear = Vec::new();
    for i in 0..LAYERS {
        let l = |p: &str| format!("model.layers.{i}.{p}");
        for p in ["input_layernorm", "post_attention_layernorm"] {
            plain(l(&format!("{p}.weight")), vec![HIDDEN], vec![1.0; HIDDEN]);
        }
        for (p, rows, cols) in [
            ("self_attn.q_proj", 128, HIDDEN),
            ("self_attn.k_proj", 64, HIDDEN),
            ("self_attn.v_proj", 64, HIDDEN),
            ("self_attn.o_proj", HIDDEN, 128),
            ("mlp.gate_proj", FFN, HIDDEN),
            ("mlp.up_proj", FFN, HIDDEN),
            ("mlp.down_proj", HIDDEN, FFN),
        ] {
            linear.push((l(p), rows, cols));
        }
    }
    for (seed, (name, rows, cols)) in linear.into_iter().enumerate() {
        let (q, scales, deq) = quantize(rows, cols, seed + 10);
        let weight = format!("{name}.weight");
        if fp8 {
            data.push((weight, Dtype::F8_E4M3, vec![rows, cols], q));
            let tiles = vec![rows.div_ceil(TILE), cols / TILE];
            data.push((
                format!("{name}.weight_scale_inv"),
                Dtype::F32,
                tiles,
                f32_bytes(&scales),
            ));
        } else {
            data.push((weight, Dtype::F32, vec![rows, cols], f32_bytes(&deq)));
        }
    }
    let views: Vec<(String, TensorView)> = data
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

fn tmp(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("baton-fp8-{tag}-{}", std::process::id()))
}

fn load(dir: &Path, options: EngineOptions) -> Result<Engine, Error> {
    let model = ModelFile::open(dir)?;
    Engine::load(&model, Span::full(LAYERS as u32), options, &mut |_, _| {})
}

/// Logits at every position of a prompt, then of three decode steps.
fn logits(dir: &Path, options: EngineOptions) -> Vec<f32> {
    let engine = load(dir, options).unwrap();
    let mut cache = engine.new_cache().unwrap();
    let ids: Vec<u32> = (0..20).map(|i| (i * 37 % VOCAB) as u32).collect();
    let mut out = cache.forward(SpanInput::Tokens(&ids), Logits::All).unwrap();
    for id in [5, 77, 201] {
        out.extend(
            cache
                .forward(SpanInput::Tokens(&[id]), Logits::Last)
                .unwrap(),
        );
    }
    out
}

#[test]
fn fp8_weights_compute_as_their_values() {
    let (fp8, plain) = (tmp("e4m3"), tmp("f32"));
    write(&fp8, true);
    write(&plain, false);
    let model = ModelFile::open(&fp8).unwrap();
    let q = model.tensor("blk.0.attn_q.weight", &[HIDDEN, 128]).unwrap();
    assert_eq!(q.dtype, baton_shaders::DType::Fp8E4M3);
    let want = logits(&plain, BackendChoice::Cpu.into());
    let got = logits(&fp8, BackendChoice::Cpu.into());
    let worst = max_abs_diff(&got, &want);
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    eprintln!("cpu: FP8 against f32 values, worst {worst:e} of logits up to {scale}");
    assert!(worst < 1e-4 * scale.max(1.0), "{worst}");
    let options = EngineOptions {
        backend: BackendChoice::Wgpu,
        kv_dtype: KvDtype::F32,
        ..Default::default()
    };
    let gpu = logits(&fp8, options);
    let worst = max_abs_diff(&gpu, &want);
    eprintln!("wgpu: FP8 against f32 values on the cpu, worst {worst:e}");
    assert!(worst < 1e-3 * scale.max(1.0), "{worst}");
    for d in [fp8, plain] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

fn expect_corrupt(dir: &Path, needle: &str) {
    match load(dir, BackendChoice::Cpu.into()) {
        Err(Error::Load(e @ (LoadError::Corrupt { .. } | LoadError::Config { .. }))) => {
            assert!(e.to_string().contains(needle), "`{e}` lacks `{needle}`")
        }
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("{} loaded", dir.display()),
    }
}

#[test]
fn broken_fp8_checkpoints_get_clear_errors() {
    let dir = tmp("broken");
    write(&dir, true);
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let all = st.tensors();
    // A weight without its scales.
    let scale = "model.layers.1.mlp.up_proj.weight_scale_inv";
    let views: Vec<_> = all.iter().filter(|(n, _)| n != scale).cloned().collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
    expect_corrupt(&dir, "without a `weight_scale_inv`");
    // Scales of the wrong shape: the tiles of the transpose.
    let wrong = [0u8; 8];
    let views: Vec<_> = all
        .iter()
        .map(|(n, v)| match n == scale {
            true => (
                n.clone(),
                TensorView::new(Dtype::F32, vec![1, 2], &wrong).unwrap(),
            ),
            false => (n.clone(), v.clone()),
        })
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
    expect_corrupt(&dir, "tiles of 128");
    // Another quantization scheme.
    write(&dir, true);
    let config = config(true).replace("\"fp8\"", "\"gptq\"");
    std::fs::write(dir.join("config.json"), config).unwrap();
    expect_corrupt(&dir, "quantization `gptq`");
    std::fs::remove_dir_all(&dir).unwrap();
}
