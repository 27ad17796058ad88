//! GGUF (versions 2 and 3): the header, the metadata and the tensor directory of a memory-mapped
//! file. Every count and length is checked against the bytes that remain before anything is
//! allocated, so a corrupt file is an error, never a panic or a huge allocation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use baton_shaders::DType;
use memmap2::Mmap;

use crate::blob::Blob;

use crate::error::LoadError;

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Where a tensor lies in the file, and how it is stored.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF order: `dims[0]` is the fastest-varying (a row's length).
    pub dims: Vec<usize>,
    pub dtype: DType,
    /// Absolute byte offset in the file.
    pub offset: usize,
    pub len: usize,
}

pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: BTreeMap<String, TensorInfo>,
    pub map: Arc<Blob>,
}

/// GGML's names for the formats Baton does not run, for errors.
const GGML_NAMES: &[(u32, &str)] = &[
    (9, "Q8_1"),
    (15, "Q8_K"),
    (16, "IQ2_XXS"),
    (17, "IQ2_XS"),
    (18, "IQ3_XXS"),
    (19, "IQ1_S"),
    (21, "IQ3_S"),
    (22, "IQ2_S"),
    (24, "I8"),
    (25, "I16"),
    (26, "I32"),
    (27, "I64"),
    (28, "F64"),
    (29, "IQ1_M"),
    (34, "TQ1_0"),
    (35, "TQ2_0"),
    (39, "MXFP4"),
];

fn dtype_of(kind: u32) -> Result<DType, String> {
    DType::from_ggml_type(kind).ok_or_else(|| {
        GGML_NAMES
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, n)| n.to_string())
            .unwrap_or_else(|| format!("ggml type {kind}"))
    })
}

/// A bounds-checked reader over the header bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn corrupt(&self, what: impl Into<String>) -> LoadError {
        LoadError::Corrupt {
            path: self.path.to_path_buf(),
            what: what.into(),
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], LoadError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| {
                self.corrupt(format!(
                    "{what} runs past the end of the file at byte {}",
                    self.pos
                ))
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, LoadError> {
        Ok(self.take(1, "a value")?[0])
    }
    fn u16(&mut self) -> Result<u16, LoadError> {
        let b = self.take(2, "a value")?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, LoadError> {
        let b = self.take(4, "a value")?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, LoadError> {
        let b = self.take(8, "a value")?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A count of items each at least `min_size` bytes long, checked against what remains.
    fn count(&mut self, min_size: usize, what: &str) -> Result<usize, LoadError> {
        let n = self.u64()?;
        let left = (self.buf.len() - self.pos) as u64;
        if n.saturating_mul(min_size as u64) > left {
            return Err(self.corrupt(format!("{what} claims {n} items, more than the file holds")));
        }
        Ok(n as usize)
    }

    fn string(&mut self) -> Result<String, LoadError> {
        let n = self.count(1, "a string")?;
        let b = self.take(n, "a string")?;
        String::from_utf8(b.to_vec()).map_err(|_| self.corrupt("a string is not UTF-8"))
    }

    fn value(&mut self, kind: u32, depth: u32) -> Result<Value, LoadError> {
        Ok(match kind {
            0 => Value::U8(self.u8()?),
            1 => Value::I8(self.u8()? as i8),
            2 => Value::U16(self.u16()?),
            3 => Value::I16(self.u16()? as i16),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(self.u32()? as i32),
            6 => Value::F32(f32::from_bits(self.u32()?)),
            7 => Value::Bool(self.u8()? != 0),
            8 => Value::String(self.string()?),
            9 => {
                if depth > 2 {
                    return Err(self.corrupt("arrays nested too deeply"));
                }
                let inner = self.u32()?;
                let n = self.count(1, "an array")?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(inner, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(self.u64()? as i64),
            12 => Value::F64(f64::from_bits(self.u64()?)),
            other => return Err(self.corrupt(format!("unknown metadata type {other}"))),
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        let io = |source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the map is read-only; a file changed underneath a running node is outside
        // what we can defend against, as for every memory-mapped loader.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Self::parse(path, Arc::new(Blob::Mapped(map)))
    }

    /// Parses a GGUF file held in memory; `path` only names it in errors.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self, LoadError> {
        Self::parse(path, Arc::new(Blob::Owned(bytes)))
    }

    fn parse(path: &Path, map: Arc<Blob>) -> Result<Self, LoadError> {
        let mut r = Reader {
            buf: &map[..],
            pos: 0,
            path,
        };
        if r.buf.len() < 4 || &r.buf[..4] != b"GGUF" {
            return Err(LoadError::NotGguf {
                path: path.to_path_buf(),
            });
        }
        r.pos = 4;
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(LoadError::GgufVersion {
                path: path.to_path_buf(),
                version,
            });
        }
        let n_tensors = r.count(24, "the tensor count")?;
        let n_kv = r.count(12, "the metadata count")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string()?;
            let kind = r.u32()?;
            let value = r.value(kind, 0)?;
            metadata.insert(key, value);
        }
        let mut infos = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = r.string()?;
            let n_dims = r.u32()? as usize;
            if n_dims == 0 || n_dims > 4 {
                return Err(r.corrupt(format!("tensor `{name}` has {n_dims} dimensions")));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                dims.push(r.u64()?);
            }
            let kind = r.u32()?;
            let offset = r.u64()?;
            infos.push((name, dims, kind, offset));
        }
        let align = metadata
            .get("general.alignment")
            .and_then(Value::as_u64)
            .unwrap_or(32)
            .max(1) as usize;
        let data_start = r.pos.div_ceil(align) * align;
        let mut tensors = BTreeMap::new();
        for (name, dims, kind, offset) in infos {
            let dtype = dtype_of(kind).map_err(|kind| LoadError::QuantType {
                path: path.to_path_buf(),
                tensor: name.clone(),
                kind,
            })?;
            let oob = || LoadError::OutOfBounds {
                path: path.to_path_buf(),
                tensor: name.clone(),
            };
            let dims: Vec<usize> = dims
                .iter()
                .map(|d| usize::try_from(*d).map_err(|_| oob()))
                .collect::<Result<_, _>>()?;
            let cols = dims[0];
            let rows = dims[1..]
                .iter()
                .try_fold(1usize, |a, d| a.checked_mul(*d))
                .ok_or_else(oob)?;
            let row_bytes = dtype.row_bytes(cols).map_err(|e| LoadError::Corrupt {
                path: path.to_path_buf(),
                what: format!("tensor `{name}`: {e}"),
            })?;
            let len = row_bytes.checked_mul(rows).ok_or_else(oob)?;
            let start = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(data_start))
                .ok_or_else(oob)?;
            if start.checked_add(len).is_none_or(|end| end > map.len()) {
                return Err(oob());
            }
            tensors.insert(
                name.clone(),
                TensorInfo {
                    name,
                    dims,
                    dtype,
                    offset: start,
                    len,
                },
            );
        }
        Ok(GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            map,
        })
    }

    /// The values of a one-row tensor (a small table such as `rope_freqs.weight`) as f32, or
    /// `None` when the file has no such tensor.
    pub fn vector_f32(&self, name: &str) -> Option<Vec<f32>> {
        let t = self.tensors.get(name)?;
        let n: usize = t.dims.iter().product();
        let bytes = &self.map[t.offset..t.offset + t.len];
        let mut out = vec![0f32; n];
        baton_shaders::cpu::dequantize_row(t.dtype, bytes, &mut out);
        Some(out)
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn require(&self, key: &str) -> Result<&Value, LoadError> {
        self.get(key).ok_or_else(|| LoadError::MissingKey {
            path: self.path.clone(),
            key: key.to_string(),
        })
    }

    pub fn get_u64(&self, key: &str) -> Result<u64, LoadError> {
        self.require(key)?
            .as_u64()
            .ok_or_else(|| LoadError::Config {
                path: self.path.clone(),
                what: format!("`{key}` is not an integer"),
            })
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }
}

/// Writes a GGUF v3 file: the tests make small models and broken files with it.
pub mod write {
    use super::Value;
    use baton_shaders::DType;

    /// GGML's number for a format.
    pub fn ggml_kind(d: DType) -> u32 {
        d.ggml_type()
    }

    pub struct Tensor {
        pub name: String,
        pub dims: Vec<u64>,
        pub kind: u32,
        pub data: Vec<u8>,
    }

    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    fn kind_of(v: &Value) -> u32 {
        match v {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    fn put_value(out: &mut Vec<u8>, v: &Value) {
        match v {
            Value::U8(x) => out.push(*x),
            Value::I8(x) => out.push(*x as u8),
            Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::Bool(x) => out.push(*x as u8),
            Value::String(s) => put_str(out, s),
            Value::Array(items) => {
                let inner = items.first().map(kind_of).unwrap_or(4);
                out.extend_from_slice(&inner.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                items.iter().for_each(|i| put_value(out, i));
            }
            Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        }
    }

    pub fn gguf_bytes(metadata: &[(&str, Value)], tensors: &[Tensor]) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (k, v) in metadata {
            put_str(&mut out, k);
            out.extend_from_slice(&kind_of(v).to_le_bytes());
            put_value(&mut out, v);
        }
        let mut offset = 0u64;
        for t in tensors {
            put_str(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            t.dims
                .iter()
                .for_each(|d| out.extend_from_slice(&d.to_le_bytes()));
            out.extend_from_slice(&t.kind.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offset += (t.data.len() as u64).div_ceil(32) * 32;
        }
        out.resize(out.len().div_ceil(32) * 32, 0);
        for t in tensors {
            out.extend_from_slice(&t.data);
            out.resize(out.len().div_ceil(32) * 32, 0);
        }
        out
    }
}
