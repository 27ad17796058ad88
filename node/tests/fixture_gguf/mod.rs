//! A fixture folder's bf16 weights written as a GGUF file, as llama.cpp's converter lays them
//! out, and checked against the folder's reference logits.

use std::path::PathBuf;

use baton_node::gguf::write::{ggml_kind, gguf_bytes, Tensor};
use baton_node::gguf::Value;
use baton_node::{BackendChoice, ModelConfig, ModelFile};
use baton_shaders::DType;

use crate::reference;

pub struct Fixture {
    pub dir: PathBuf,
    pub config: ModelConfig,
    bytes: Vec<u8>,
}

impl Fixture {
    /// `fixtures/moe/{name}`.
    pub fn open(name: &str) -> Self {
        let dir = baton_tests::fixtures_dir().join("moe").join(name);
        let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
        let config = ModelFile::open(&dir).unwrap().config;
        Fixture { dir, config, bytes }
    }

    pub fn names(&self) -> Vec<String> {
        let st = safetensors::SafeTensors::deserialize(&self.bytes).unwrap();
        st.names().into_iter().map(str::to_string).collect()
    }

    /// A tensor's GGUF dims (fastest first) and bf16 bytes.
    pub fn get(&self, name: &str) -> (Vec<u64>, Vec<u8>) {
        let st = safetensors::SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), safetensors::Dtype::BF16, "{name}");
        let dims = t.shape().iter().rev().map(|&d| d as u64).collect();
        (dims, t.data().to_vec())
    }

    /// The tensors `keep` passes, under the names the folder's loader gives them (checked
    /// against the same reference by `moe.rs`).
    pub fn mapped(&self, keep: impl Fn(&str) -> bool) -> Vec<Tensor> {
        self.names()
            .iter()
            .filter(|n| keep(n))
            .map(|n| bf16(self.config.hf_to_gguf(n).unwrap(), self.get(n)))
            .collect()
    }

    /// Each layer's experts stacked per part in expert order (`[cols, rows, experts]`):
    /// `ffn_{gate,up,down}_exps`.
    pub fn stacked_experts(&self, layers: std::ops::Range<usize>, experts: usize) -> Vec<Tensor> {
        let mut out = Vec::new();
        for i in layers {
            for (h, g) in [
                ("gate_proj", "ffn_gate_exps"),
                ("up_proj", "ffn_up_exps"),
                ("down_proj", "ffn_down_exps"),
            ] {
                let parts: Vec<_> = (0..experts)
                    .map(|e| self.get(&format!("model.layers.{i}.mlp.experts.{e}.{h}.weight")))
                    .collect();
                let mut dims = parts[0].0.clone();
                dims.push(experts as u64);
                let data = parts.into_iter().flat_map(|p| p.1).collect();
                out.push(bf16(format!("blk.{i}.{g}.weight"), (dims, data)));
            }
        }
        out
    }

    /// Writes the file and checks it on the CPU against the reference.
    pub fn check(&self, tag: &str, meta: &[(&str, Value)], tensors: &[Tensor]) {
        let dir = std::env::temp_dir().join(format!("baton-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{tag}.gguf"));
        std::fs::write(&path, gguf_bytes(meta, tensors)).unwrap();
        reference::check_folder(
            &path,
            &self.dir.join("reference.safetensors"),
            BackendChoice::Cpu.into(),
            1e-3,
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

pub fn bf16(name: String, (dims, data): (Vec<u64>, Vec<u8>)) -> Tensor {
    Tensor {
        name,
        dims,
        kind: ggml_kind(DType::Bf16),
        data,
    }
}
