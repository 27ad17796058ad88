//! A model on disk: a GGUF file or a Hugging Face folder, memory-mapped, with its config and a
//! directory of tensors under GGUF's names. Nothing is read until a span asks for it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use baton_shaders::{DType, QTensor, QuantError};
use memmap2::Mmap;

use crate::blob::Blob;

use crate::arch::ModelConfig;
use crate::error::LoadError;
use crate::fp8::Fp8Source;
use crate::gguf::GgufFile;
use crate::tokenizer::Tokenizer;

/// A model's id: a hash committing to its tokenizer, to the content of its weights and to its
/// block count, so that two different files never share one, and a client can check the
/// tokenizer and the block count a node sends it.
pub fn model_id(
    tokenizer: &baton_protocol::wire::TokenizerSpec,
    content_hash: &str,
    blocks: u32,
) -> String {
    let mut h = blake3::Hasher::new();
    h.update(blake3::hash(&tokenizer.canonical_bytes()).as_bytes());
    h.update(content_hash.as_bytes());
    h.update(&blocks.to_le_bytes());
    h.finalize().to_hex()[..32].to_string()
}

/// A tensor inside a memory-mapped file, in its stored format.
#[derive(Clone)]
pub struct TensorRef {
    pub name: String,
    pub dtype: DType,
    /// Fastest-varying first, as GGUF writes them: a matrix is `[cols, rows]`.
    pub dims: Vec<usize>,
    map: Arc<Blob>,
    offset: usize,
    len: usize,
    /// FP8 blocks packed on first read: then `offset` and `len` lie in the packed bytes.
    fp8: Option<Arc<Fp8Source>>,
}

impl TensorRef {
    pub fn bytes(&self) -> &[u8] {
        match &self.fp8 {
            Some(source) => &source.bytes()[self.offset..self.offset + self.len],
            None => &self.map[self.offset..self.offset + self.len],
        }
    }

    /// A weight of FP8 blocks (`dtype`) packed from `source` when first read, `len` bytes.
    pub(crate) fn packed_fp8(
        name: String,
        dtype: DType,
        dims: Vec<usize>,
        source: Arc<Fp8Source>,
        len: usize,
    ) -> TensorRef {
        TensorRef {
            name,
            dtype,
            dims,
            map: Arc::new(Blob::Owned(Vec::new())),
            offset: 0,
            len,
            fp8: Some(source),
        }
    }

    pub(crate) fn is_packed_fp8(&self) -> bool {
        self.fp8.is_some()
    }

    pub fn cols(&self) -> usize {
        self.dims[0]
    }

    /// The number of values.
    pub fn elements(&self) -> usize {
        self.dims.iter().product()
    }

    /// Bytes in its stored format.
    pub fn stored_bytes(&self) -> usize {
        self.len
    }

    pub fn rows(&self) -> usize {
        self.dims[1..].iter().product()
    }

    /// The tensor as a matrix, its bytes checked against its shape.
    pub fn matrix(&self) -> Result<QTensor<'_>, QuantError> {
        QTensor::new(self.dtype, self.rows(), self.cols(), self.bytes())
    }

    /// Rows `start..start + n` of a matrix, without a copy; `None` past its rows.
    pub fn row_range(&self, start: usize, n: usize) -> Option<TensorRef> {
        let m = self.matrix().ok()?;
        if self.dims.len() != 2 || start.checked_add(n).is_none_or(|end| end > m.rows) {
            return None;
        }
        let rb = m.row_bytes();
        Some(TensorRef {
            name: format!("{}[{start}..{}]", self.name, start + n),
            dtype: self.dtype,
            dims: vec![self.dims[0], n],
            map: self.map.clone(),
            offset: self.offset + start * rb,
            len: n * rb,
            fp8: self.fp8.clone(),
        })
    }

    /// The transpose of a matrix, held in memory: in the same format for f32, f16 and bf16
    /// (each value moves unchanged), else dequantized to f32.
    pub fn transposed(&self) -> Result<TensorRef, QuantError> {
        let m = self.matrix()?;
        let (rows, cols) = (m.rows, m.cols);
        let size = match self.dtype {
            DType::F32 => 4,
            DType::F16 | DType::Bf16 => 2,
            _ => 0,
        };
        let (dtype, bytes) = if size > 0 {
            let src = self.bytes();
            let mut out = vec![0u8; src.len()];
            for r in 0..rows {
                for c in 0..cols {
                    let (from, to) = ((r * cols + c) * size, (c * rows + r) * size);
                    out[to..to + size].copy_from_slice(&src[from..from + size]);
                }
            }
            (self.dtype, out)
        } else {
            let values = self.to_f32()?;
            let mut out = Vec::with_capacity(values.len() * 4);
            for c in 0..cols {
                for r in 0..rows {
                    out.extend_from_slice(&values[r * cols + c].to_le_bytes());
                }
            }
            (DType::F32, out)
        };
        Ok(TensorRef {
            name: format!("{}ᵀ", self.name),
            dtype,
            dims: vec![rows, cols],
            len: bytes.len(),
            map: Arc::new(Blob::Owned(bytes)),
            offset: 0,
            fp8: None,
        })
    }

    /// Part `i` of `n` equal parts along the slowest dimension: one expert of a GGUF tensor
    /// that stacks them (`[cols, rows, experts]`).
    pub(crate) fn part(&self, i: usize, n: usize) -> Option<TensorRef> {
        let (&last, inner) = self.dims.split_last()?;
        if last != n || i >= n || !self.len.is_multiple_of(n) {
            return None;
        }
        let len = self.len / n;
        Some(TensorRef {
            name: format!("{}[{i}]", self.name),
            dtype: self.dtype,
            dims: inner.to_vec(),
            map: self.map.clone(),
            offset: self.offset + i * len,
            len,
            fp8: self.fp8.clone(),
        })
    }

    /// Values of a small f32/f16/bf16 tensor (a norm's weight) as f32.
    pub fn to_f32(&self) -> Result<Vec<f32>, QuantError> {
        let m = self.matrix()?;
        let mut out = vec![0f32; m.rows * m.cols];
        for (r, dst) in out.chunks_exact_mut(m.cols.max(1)).enumerate() {
            baton_shaders::cpu::dequantize_row(m.dtype, m.row(r), dst);
        }
        Ok(out)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Gguf,
    HuggingFace,
}

pub struct ModelFile {
    pub path: PathBuf,
    pub format: Format,
    pub config: ModelConfig,
    tensors: HashMap<String, TensorRef>,
    gguf: Option<GgufFile>,
}

impl ModelFile {
    /// Opens a `.gguf` file or a Hugging Face folder.
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        if path.is_dir() {
            Self::open_hf(path)
        } else {
            Self::open_gguf(path)
        }
    }

    fn open_gguf(path: &Path) -> Result<Self, LoadError> {
        Self::from_gguf(GgufFile::open(path)?)
    }

    /// A GGUF model held in memory; `path` only names it in errors.
    pub fn from_gguf_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self, LoadError> {
        Self::from_gguf(GgufFile::from_bytes(path, bytes)?)
    }

    fn from_gguf(g: GgufFile) -> Result<Self, LoadError> {
        let path = g.path.clone();
        let config = ModelConfig::from_gguf(&g)?;
        check_all_used(&config, &path, g.tensors.keys())?;
        let tensors = g
            .tensors
            .values()
            .map(|t| {
                let r = TensorRef {
                    name: t.name.clone(),
                    dtype: t.dtype,
                    dims: t.dims.clone(),
                    map: g.map.clone(),
                    offset: t.offset,
                    len: t.len,
                    fp8: None,
                };
                (t.name.clone(), r)
            })
            .collect();
        Ok(ModelFile {
            path,
            format: Format::Gguf,
            config,
            tensors,
            gguf: Some(g),
        })
    }

    fn open_hf(dir: &Path) -> Result<Self, LoadError> {
        let read = |p: PathBuf| {
            std::fs::read_to_string(&p).map_err(|source| LoadError::Io { path: p, source })
        };
        let config_path = dir.join("config.json");
        let config = ModelConfig::from_hf_json(&config_path, &read(config_path.clone())?)?;
        let shards = hf_shards(dir)?;
        let mut by_hf = HashMap::new();
        let mut shard_of = HashMap::new();
        for shard in shards {
            for t in read_safetensors(&shard)? {
                // Buffers some checkpoints save that are derived from the config.
                if t.name.ends_with("rotary_emb.inv_freq") {
                    continue;
                }
                shard_of.insert(t.name.clone(), shard.clone());
                by_hf.insert(t.name.clone(), t);
            }
        }
        crate::fp8::pair(&mut by_hf, dir)?;
        let mut tensors = HashMap::new();
        for (hf, t) in by_hf {
            let name = config
                .hf_to_gguf(&hf)
                .ok_or_else(|| LoadError::UnusedTensor {
                    path: shard_of
                        .get(&hf)
                        .cloned()
                        .unwrap_or_else(|| dir.to_path_buf()),
                    tensor: hf.clone(),
                    arch: config.arch.name(),
                })?;
            tensors.insert(name.clone(), TensorRef { name, ..t });
        }
        check_all_used(&config, dir, tensors.keys())?;
        Ok(ModelFile {
            path: dir.to_path_buf(),
            format: Format::HuggingFace,
            config,
            tensors,
            gguf: None,
        })
    }

    /// An RMSNorm's weight of `n` values as f32, shifted as the architecture stores it
    /// ([`ModelConfig::norm_shift`]).
    pub fn norm_weight(&self, name: &str, n: usize) -> Result<Vec<f32>, LoadError> {
        let shift = self.config.norm_shift;
        let t = self.tensor(name, &[n])?;
        Ok(t.to_f32()?.iter().map(|w| w + shift).collect())
    }

    pub fn tensor_names(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }

    /// A tensor by its GGUF name, checked against the shape the config implies
    /// (`[cols, rows]`, fastest first).
    pub fn tensor(&self, name: &str, want: &[usize]) -> Result<&TensorRef, LoadError> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| LoadError::MissingTensor {
                path: self.path.clone(),
                tensor: name.to_string(),
            })?;
        let mut got = t.dims.clone();
        while got.len() > want.len() && got.last() == Some(&1) {
            got.pop();
        }
        if got != want {
            return Err(LoadError::Shape {
                path: self.path.clone(),
                tensor: name.to_string(),
                got: t.dims.clone(),
                want: want.to_vec(),
            });
        }
        Ok(t)
    }

    /// Expert `e` of `experts` in block `block`, `[cols, rows]`: its own tensor
    /// (`blk.{block}.{part}.{e}.weight`, as Hugging Face folders and early GGUF conversions
    /// store experts) or its slice of the stacked `blk.{block}.{part}_exps.weight`.
    pub fn expert(
        &self,
        block: usize,
        part: &str,
        e: usize,
        experts: usize,
        want: [usize; 2],
    ) -> Result<TensorRef, LoadError> {
        let own = format!("blk.{block}.{part}.{e}.weight");
        if self.tensors.contains_key(&own) {
            return self.tensor(&own, &want).cloned();
        }
        let stacked = format!("blk.{block}.{part}_exps.weight");
        let t = self.tensor(&stacked, &[want[0], want[1], experts])?;
        t.part(e, experts).ok_or_else(|| LoadError::Shape {
            path: self.path.clone(),
            tensor: stacked,
            got: t.dims.clone(),
            want: vec![want[0], want[1], experts],
        })
    }

    /// Every tensor, under its GGUF name.
    pub fn tensors(&self) -> impl Iterator<Item = &TensorRef> {
        self.tensors.values()
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn tokenizer(&self) -> Result<Tokenizer, LoadError> {
        match &self.gguf {
            Some(g) => Tokenizer::from_gguf(g),
            None => Tokenizer::from_hf_folder(&self.path),
        }
    }

    /// Bytes of every weight, the quantity one decode step reads.
    pub fn weight_bytes(&self) -> usize {
        self.tensors.values().map(|t| t.len).sum()
    }

    /// Bytes of the weights one token's decode step reads: every weight, but of a mixture of
    /// experts only the share of the experts a token uses (`used / experts` of them).
    pub fn active_weight_bytes(&self) -> usize {
        let Some(moe) = &self.config.moe else {
            return self.weight_bytes();
        };
        self.tensors
            .values()
            .map(|t| {
                let part = t
                    .name
                    .strip_prefix("blk.")
                    .and_then(|r| r.split_once('.'))
                    .map(|(_, p)| p);
                match part {
                    Some(p) if moe.is_routed_part(p) => t.len * moe.used / moe.experts,
                    _ => t.len,
                }
            })
            .sum()
    }

    /// BLAKE3 of the bytes of the model's files (for a folder: `config.json`, then the shards
    /// in name order), hex.
    pub fn content_hash(&self) -> Result<String, LoadError> {
        let mut h = blake3::Hasher::new();
        let files = match self.format {
            Format::Gguf => vec![self.path.clone()],
            Format::HuggingFace => {
                let mut f = vec![self.path.join("config.json")];
                f.extend(hf_shards(&self.path)?);
                f
            }
        };
        for f in files {
            let file = std::fs::File::open(&f).map_err(|source| LoadError::Io {
                path: f.clone(),
                source,
            })?;
            // SAFETY: read-only map, as in `GgufFile::open`.
            let map = unsafe { Mmap::map(&file) }.map_err(|source| LoadError::Io {
                path: f.clone(),
                source,
            })?;
            h.update(&map);
        }
        Ok(h.finalize().to_hex().to_string())
    }

    /// A readable name: the file name without `.gguf`, or the folder's name.
    pub fn name(&self) -> String {
        let n = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        n.strip_suffix(".gguf").map(String::from).unwrap_or(n)
    }

    pub fn gguf(&self) -> Option<&GgufFile> {
        self.gguf.as_ref()
    }
}

fn hf_shards(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|source| LoadError::Io {
            path: index.clone(),
            source,
        })?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| LoadError::Config {
            path: index.clone(),
            what: format!("invalid index: {e}"),
        })?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| LoadError::Config {
                path: index.clone(),
                what: "no `weight_map`".into(),
            })?;
        let mut files: Vec<String> = map
            .values()
            .filter_map(|f| f.as_str().map(String::from))
            .collect();
        files.sort();
        files.dedup();
        for f in &files {
            if f.contains('/') || f.contains("..") {
                return Err(LoadError::Config {
                    path: index.clone(),
                    what: format!("shard name `{f}` leaves the folder"),
                });
            }
        }
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    // Without an index the weights are `model.safetensors`: other safetensors files in a folder
    // (Mistral's `consolidated.safetensors`, adapters, references) are not the model's weights.
    let single = dir.join("model.safetensors");
    if !single.exists() {
        return Err(LoadError::Config {
            path: dir.to_path_buf(),
            what: "no model.safetensors and no model.safetensors.index.json in the folder".into(),
        });
    }
    Ok(vec![single])
}

fn read_safetensors(path: &Path) -> Result<Vec<TensorRef>, LoadError> {
    let io = |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    // SAFETY: read-only map, as in `GgufFile::open`.
    let map = Arc::new(Blob::Mapped(unsafe { Mmap::map(&file) }.map_err(io)?));
    safetensors_tensors(path, map)
}

/// The tensors of a safetensors file held in `map`; `path` only names it in errors. Every
/// offset is checked against the file before a tensor refers to it.
pub fn safetensors_tensors(path: &Path, map: Arc<Blob>) -> Result<Vec<TensorRef>, LoadError> {
    use safetensors::{Dtype, SafeTensors};
    let (header, meta) = SafeTensors::read_metadata(&map[..]).map_err(|e| LoadError::Corrupt {
        path: path.to_path_buf(),
        what: e.to_string(),
    })?;
    let base = 8 + header;
    let mut out = Vec::new();
    for (name, info) in meta.tensors() {
        let dtype = match info.dtype {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::Bf16,
            // Raw E4M3 values, until paired with their scales (`fp8::pair`).
            Dtype::F8_E4M3 => DType::Fp8E4M3,
            other => {
                return Err(LoadError::QuantType {
                    path: path.to_path_buf(),
                    tensor: name,
                    kind: format!("{other:?}"),
                })
            }
        };
        let (a, b) = info.data_offsets;
        if a > b || base.checked_add(b).is_none_or(|end| end > map.len()) {
            return Err(LoadError::OutOfBounds {
                path: path.to_path_buf(),
                tensor: name,
            });
        }
        // safetensors lists the slowest dimension first; keep GGUF's fastest-first order.
        let mut dims: Vec<usize> = info.shape.iter().rev().copied().collect();
        if dims.is_empty() {
            dims.push(1);
        }
        let rows = dims[1..].iter().try_fold(1usize, |n, d| n.checked_mul(*d));
        let row_bytes = match dtype {
            DType::Fp8E4M3 => Ok(dims[0]),
            _ => dtype.row_bytes(dims[0]),
        };
        let want = rows.and_then(|r| row_bytes.ok()?.checked_mul(r));
        if want != Some(b - a) {
            return Err(LoadError::Corrupt {
                path: path.to_path_buf(),
                what: format!(
                    "tensor `{name}` holds {} bytes, its shape {:?} needs {want:?}",
                    b - a,
                    info.shape
                ),
            });
        }
        out.push(TensorRef {
            name,
            dtype,
            dims,
            map: map.clone(),
            offset: base + a,
            len: b - a,
            fp8: None,
        });
    }
    Ok(out)
}

/// Refuses a model with a tensor its architecture does not read: skipping it would compute
/// something other than the model.
fn check_all_used<'a>(
    config: &ModelConfig,
    path: &Path,
    names: impl Iterator<Item = &'a String>,
) -> Result<(), LoadError> {
    for name in names {
        if !config.uses_tensor(name) {
            return Err(LoadError::UnusedTensor {
                path: path.to_path_buf(),
                tensor: name.clone(),
                arch: config.arch.name(),
            });
        }
    }
    Ok(())
}
