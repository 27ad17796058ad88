//! Tokenizers built from GGUF metadata against llama.cpp's reference tokenizations: the
//! `models/ggml-vocab-*.gguf` vocabularies with their `.inp` texts and `.out` ids, from the
//! llama.cpp source that `make vocab` unpacks into the cache (`$BATON_LLAMA_CPP` to point
//! elsewhere).

use std::path::PathBuf;

use baton_node::gguf::GgufFile;
use baton_node::tokenizer::Tokenizer;

fn models_dir() -> PathBuf {
    let root = std::env::var_os("BATON_LLAMA_CPP")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("BATON_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/baton")
                });
            cache.join("llama.cpp")
        });
    let dir = root.join("models");
    assert!(
        dir.join("ggml-vocab-llama-spm.gguf").exists(),
        "llama.cpp's vocabularies are not in {}: run `make vocab` (or set BATON_LLAMA_CPP)",
        dir.display()
    );
    dir
}

/// Every case of `name` tokenizes to llama.cpp's ids.
fn check(name: &str) {
    let dir = models_dir();
    let path = dir.join(format!("ggml-vocab-{name}.gguf"));
    let tok = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let inp = std::fs::read_to_string(dir.join(format!("ggml-vocab-{name}.gguf.inp"))).unwrap();
    let out = std::fs::read_to_string(dir.join(format!("ggml-vocab-{name}.gguf.out"))).unwrap();
    let texts: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    let texts = &texts[..texts.len() - 1];
    let want: Vec<Vec<u32>> = out
        .lines()
        .map(|l| l.split_whitespace().map(|x| x.parse().unwrap()).collect())
        .collect();
    assert_eq!(texts.len(), want.len(), "{name}: cases");
    let mut failed = Vec::new();
    for (text, want) in texts.iter().zip(&want) {
        let got = tok.encode_plain(text).unwrap();
        if &got != want {
            failed.push(format!("{text:?}: {got:?} vs llama.cpp {want:?}"));
        }
    }
    assert!(failed.is_empty(), "{name}:\n{}", failed.join("\n"));
}

#[test]
fn sentencepiece_llama() {
    check("llama-spm");
}

#[test]
fn sentencepiece_phi3() {
    check("phi-3");
}

#[test]
fn bpe_llama3() {
    check("llama-bpe");
}

#[test]
fn bpe_qwen2() {
    check("qwen2");
}

#[test]
fn bpe_gpt2() {
    check("gpt-2");
}

#[test]
fn bpe_starcoder_and_refact() {
    check("starcoder");
    check("refact");
}

/// Vocabularies of kinds Baton does not build are refused with the reason, never mistokenized.
#[test]
fn unsupported_kinds_are_refused() {
    let dir = models_dir();
    for name in ["bert-bge", "falcon", "deepseek-llm", "command-r"] {
        let path = dir.join(format!("ggml-vocab-{name}.gguf"));
        let err = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap())
            .err()
            .unwrap_or_else(|| panic!("{name} built a tokenizer"));
        assert!(err.to_string().contains("not supported"), "{name}: {err}");
    }
}
