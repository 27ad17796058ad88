//! Small GGUF files made here: a good one loads and runs in every stored format, and each kind
//! of broken file gets its own clear error naming the file, never a panic.

use std::path::{Path, PathBuf};

use baton_node::gguf::write::gguf_bytes;
use baton_node::gguf::Value;
use baton_node::{BackendChoice, Engine, Error, LoadError, Logits, ModelFile, SpanInput};
use baton_protocol::Span;
use baton_shaders::DType;

mod tiny;
use tiny::{tensor, tiny_meta, tiny_tensors, H, V};

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("baton-load-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A copy of the fixture folder `name` to break, in a directory of its own.
fn fixture_copy(name: &str, tag: &str) -> PathBuf {
    let dir = tmpdir(tag);
    for f in std::fs::read_dir(baton_tests::fixtures_dir().join(name)).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
    }
    dir
}

fn load(path: &Path) -> Result<Engine, Error> {
    let model = ModelFile::open(path)?;
    let span = Span::full(model.config.layers as u32);
    Engine::load(&model, span, BackendChoice::Cpu.into(), &mut |_, _| {})
}

#[test]
fn a_good_file_loads_and_runs_in_every_format() {
    let dir = tmpdir("good");
    let mut reference: Option<Vec<f32>> = None;
    for dtype in [
        DType::F32,
        DType::F16,
        DType::Bf16,
        DType::Q8_0,
        DType::Q4_1,
    ] {
        let p = write(
            &dir,
            "m.gguf",
            &gguf_bytes(&tiny_meta("llama"), &tiny_tensors(dtype)),
        );
        let engine = load(&p).unwrap();
        let mut cache = engine.new_cache().unwrap();
        let out = cache
            .forward(SpanInput::Tokens(&[1, 5, 9]), Logits::All)
            .unwrap();
        assert_eq!(out.len(), 3 * V);
        assert!(out.iter().all(|v| v.is_finite()));
        // Every format stores the same values, to its precision: the logits agree loosely.
        match &reference {
            None => reference = Some(out),
            Some(r) => {
                let d = r
                    .iter()
                    .zip(&out)
                    .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(d < 0.5, "{dtype:?} strays {d} from f32");
            }
        }
    }
    // Tokens outside the vocabulary and a context overflow are errors, not panics.
    let engine = load(&dir.join("m.gguf")).unwrap();
    let mut cache = engine.new_cache().unwrap();
    assert!(cache
        .forward(SpanInput::Tokens(&[V as u32]), Logits::Last)
        .is_err());
    let long = vec![1u32; 65];
    assert!(cache
        .forward(SpanInput::Tokens(&long), Logits::Last)
        .is_err());
    // A step too long for the context is refused whole: the cache is left as it was.
    cache
        .forward(SpanInput::Tokens(&[1, 2]), Logits::Last)
        .unwrap();
    let too_long = vec![1u32; 63];
    let step = cache.run_step(SpanInput::Tokens(&too_long), Logits::Last);
    assert!(step.is_err());
    assert_eq!(cache.pos(), 2);
}

fn expect_load_error(path: &Path, check: impl Fn(&LoadError) -> bool) {
    expect_error_naming(path, path, check)
}

/// Loading `path` fails with an error that `check` accepts and that names `culprit`.
fn expect_error_naming(path: &Path, culprit: &Path, check: impl Fn(&LoadError) -> bool) {
    match load(path) {
        Err(Error::Load(e)) => {
            assert!(check(&e), "unexpected error: {e}");
            let msg = e.to_string();
            let name = culprit.display().to_string();
            assert!(msg.contains(&name), "`{msg}` does not name {name}");
        }
        Err(e) => panic!("unexpected error kind: {e}"),
        Ok(_) => panic!("{} loaded", path.display()),
    }
}

#[test]
fn broken_files_get_clear_errors() {
    let dir = tmpdir("bad");
    let good = gguf_bytes(&tiny_meta("llama"), &tiny_tensors(DType::Q4_1));

    let p = write(&dir, "magic.gguf", b"NOPE not a model at all");
    expect_load_error(&p, |e| matches!(e, LoadError::NotGguf { .. }));

    for cut in [10, 100, good.len() / 2, good.len() - 10] {
        let p = write(&dir, "truncated.gguf", &good[..cut]);
        expect_load_error(&p, |e| {
            matches!(e, LoadError::Corrupt { .. } | LoadError::OutOfBounds { .. })
        });
    }

    let p = write(
        &dir,
        "arch.gguf",
        &gguf_bytes(&tiny_meta("gpt2"), &tiny_tensors(DType::Q4_1)),
    );
    expect_load_error(&p, |e| matches!(e, LoadError::Architecture { .. }));

    let mut t = tiny_tensors(DType::Q4_1);
    t[2].kind = 16; // IQ2_XXS
    let p = write(&dir, "quant.gguf", &gguf_bytes(&tiny_meta("llama"), &t));
    expect_load_error(
        &p,
        |e| matches!(e, LoadError::QuantType { kind, .. } if kind == "IQ2_XXS"),
    );

    // A tensor the architecture does not read is refused, never skipped.
    let mut t = tiny_tensors(DType::Q4_1);
    t.push(tensor("blk.0.attn_q.bias", H, 1, DType::F32));
    let p = write(&dir, "unused.gguf", &gguf_bytes(&tiny_meta("llama"), &t));
    expect_load_error(
        &p,
        |e| matches!(e, LoadError::UnusedTensor { tensor, .. } if tensor == "blk.0.attn_q.bias"),
    );

    // So is a metadata key that would change the numerics.
    let mut meta = tiny_meta("llama");
    meta.push(("llama.attn_logit_softcapping", Value::F32(50.0)));
    let p = write(
        &dir,
        "softcap.gguf",
        &gguf_bytes(&meta, &tiny_tensors(DType::Q4_1)),
    );
    expect_load_error(
        &p,
        |e| matches!(e, LoadError::Config { what, .. } if what.contains("llama.attn_logit_softcapping")),
    );
    let mut meta = tiny_meta("llama");
    meta.push(("llama.rope.scaling.type", Value::String("longrope".into())));
    let p = write(
        &dir,
        "rope.gguf",
        &gguf_bytes(&meta, &tiny_tensors(DType::Q4_1)),
    );
    expect_load_error(
        &p,
        |e| matches!(e, LoadError::Config { what, .. } if what.contains("longrope")),
    );

    let mut t = tiny_tensors(DType::Q4_1);
    t[2] = tensor("blk.0.attn_q.weight", H, H / 2, DType::Q4_1);
    let p = write(&dir, "shape.gguf", &gguf_bytes(&tiny_meta("llama"), &t));
    expect_load_error(
        &p,
        |e| matches!(e, LoadError::Shape { tensor, .. } if tensor == "blk.0.attn_q.weight"),
    );

    let mut t = tiny_tensors(DType::Q4_1);
    t.retain(|t| t.name != "blk.1.ffn_down.weight");
    let p = write(&dir, "missing.gguf", &gguf_bytes(&tiny_meta("llama"), &t));
    expect_load_error(
        &p,
        |e| matches!(e, LoadError::MissingTensor { tensor, .. } if tensor == "blk.1.ffn_down.weight"),
    );

    let mut meta = tiny_meta("llama");
    meta.retain(|(k, _)| *k != "llama.block_count");
    let p = write(
        &dir,
        "key.gguf",
        &gguf_bytes(&meta, &tiny_tensors(DType::Q4_1)),
    );
    expect_load_error(&p, |e| matches!(e, LoadError::MissingKey { .. }));

    // A header that claims 2^60 metadata entries must not allocate for them.
    let mut huge = good.clone();
    huge[16..24].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let p = write(&dir, "huge.gguf", &huge);
    expect_load_error(&p, |e| matches!(e, LoadError::Corrupt { .. }));

    let p = dir.join("absent.gguf");
    expect_load_error(&p, |e| matches!(e, LoadError::Io { .. }));
}

#[test]
fn broken_hugging_face_folders_get_clear_errors() {
    let dir = fixture_copy("hf-tiny/llama", "hf");
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let p = dir.join("config.json");
    std::fs::write(
        &p,
        config
            .replace("\"llama\"", "\"gpt_neox\"")
            .replace("LlamaForCausalLM", "GPTNeoX"),
    )
    .unwrap();
    expect_error_naming(&dir, &p, |e| matches!(e, LoadError::Architecture { .. }));
    std::fs::write(
        &p,
        config.replace("\"hidden_size\": 64", "\"hidden_size\": 32"),
    )
    .unwrap();
    expect_error_naming(&dir, &dir, |e| matches!(e, LoadError::Shape { .. }));
    std::fs::write(&p, config.replacen('{', "{\"sliding_window\": 16,", 1)).unwrap();
    expect_error_naming(
        &dir,
        &p,
        |e| matches!(e, LoadError::Config { what, .. } if what.contains("sliding_window")),
    );
    std::fs::write(&p, "{ not json").unwrap();
    expect_error_naming(&dir, &p, |e| matches!(e, LoadError::Config { .. }));
    std::fs::write(&p, &config).unwrap();
    let shard = dir.join("model-00002-of-00003.safetensors");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() / 2]).unwrap();
    expect_error_naming(&dir, &shard, |e| {
        matches!(e, LoadError::Corrupt { .. } | LoadError::OutOfBounds { .. })
    });
    std::fs::remove_file(&shard).unwrap();
    expect_error_naming(&dir, &shard, |e| matches!(e, LoadError::Io { .. }));
}

/// A mixture of experts whose config and weights disagree, or whose numbers make no sense.
#[test]
fn broken_expert_configs_get_clear_errors() {
    let dir = fixture_copy("moe/mixtral", "moe");
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let p = dir.join("config.json");
    let set = |from: &str, to: &str| {
        assert!(config.contains(from), "{from}");
        std::fs::write(&p, config.replace(from, to)).unwrap();
    };
    set("\"num_experts_per_tok\": 2", "\"num_experts_per_tok\": 9");
    expect_error_naming(
        &dir,
        &p,
        |e| matches!(e, LoadError::Config { what, .. } if what.contains("experts per token")),
    );
    set("\"num_local_experts\": 8", "\"num_local_experts\": 0");
    expect_error_naming(
        &dir,
        &p,
        |e| matches!(e, LoadError::Config { what, .. } if what.contains("experts per layer")),
    );
    // Experts 4 to 7 are weights no layer reads; a ninth expert has none.
    set("\"num_local_experts\": 8", "\"num_local_experts\": 4");
    expect_error_naming(&dir, &dir, |e| matches!(e, LoadError::UnusedTensor { .. }));
    set("\"num_local_experts\": 8", "\"num_local_experts\": 9");
    expect_error_naming(&dir, &dir, |e| matches!(e, LoadError::MissingTensor { .. }));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// DeepSeek-V3 configs whose routing groups or latent attention make no sense, or whose
/// weights are missing a part of latent attention.
#[test]
fn broken_deepseek_configs_get_clear_errors() {
    let dir = fixture_copy("moe/deepseek_v3", "deepseek");
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let p = dir.join("config.json");
    let set = |from: &str, to: &str| {
        assert!(config.contains(from), "{from}");
        std::fs::write(&p, config.replace(from, to)).unwrap();
    };
    let config_error = |needle: &'static str| move |e: &LoadError| matches!(e, LoadError::Config { what, .. } if what.contains(needle));
    set("\"n_group\": 4", "\"n_group\": 3");
    expect_error_naming(&dir, &p, config_error("groups"));
    set("\"topk_group\": 2", "\"topk_group\": 5");
    expect_error_naming(&dir, &p, config_error("from 5 of 4 groups"));
    set("\"kv_lora_rank\": 32", "\"kv_lora_rank\": 0");
    expect_error_naming(&dir, &p, config_error("MLA"));
    set("\"qk_rope_head_dim\": 8", "\"qk_rope_head_dim\": 7");
    expect_error_naming(&dir, &p, config_error("RoPE part"));
    // Without q_lora_rank the query is one projection, `attn_q`, which the folder lacks.
    set("\"q_lora_rank\": 48", "\"q_lora_rank\": null");
    expect_error_naming(&dir, &dir, |e| {
        matches!(
            e,
            LoadError::MissingTensor { .. } | LoadError::UnusedTensor { .. }
        )
    });
    std::fs::remove_dir_all(&dir).unwrap();
}
