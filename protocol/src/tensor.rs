//! Hidden states on the wire: `[tokens, hidden]` in f32, f16 or bf16.

use half::{bf16, f16};
use serde::{Deserialize, Serialize};

/// The element type of hidden states sent between hops. The discriminants are wire numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "u8", try_from = "u8")]
#[repr(u8)]
pub enum WireDtype {
    F32 = 0,
    F16 = 1,
    Bf16 = 2,
}

impl From<WireDtype> for u8 {
    fn from(d: WireDtype) -> u8 {
        d as u8
    }
}

impl TryFrom<u8> for WireDtype {
    type Error = String;

    fn try_from(v: u8) -> Result<Self, String> {
        match v {
            0 => Ok(WireDtype::F32),
            1 => Ok(WireDtype::F16),
            2 => Ok(WireDtype::Bf16),
            other => Err(format!("unknown wire dtype {other}")),
        }
    }
}

impl WireDtype {
    pub fn size(self) -> usize {
        match self {
            WireDtype::F32 => 4,
            WireDtype::F16 | WireDtype::Bf16 => 2,
        }
    }
}

impl std::str::FromStr for WireDtype {
    type Err = TensorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" => Ok(WireDtype::F32),
            "f16" => Ok(WireDtype::F16),
            "bf16" => Ok(WireDtype::Bf16),
            other => Err(TensorError::UnknownDtype(other.to_string())),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TensorError {
    #[error("unknown wire dtype `{0}` (expected f32, f16 or bf16)")]
    UnknownDtype(String),
    #[error("hidden states of {tokens}x{hidden} exceed the limit of {limit} elements")]
    TooLarge {
        tokens: u32,
        hidden: u32,
        limit: usize,
    },
    #[error("hidden states carry {got} bytes where {tokens}x{hidden} {dtype:?} needs {want}")]
    Length {
        tokens: u32,
        hidden: u32,
        dtype: WireDtype,
        got: usize,
        want: usize,
    },
}

/// Hidden states `[tokens, hidden]` as they travel between hops, little-endian.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HiddenStates {
    pub tokens: u32,
    pub hidden: u32,
    pub dtype: WireDtype,
    pub data: Vec<u8>,
}

impl HiddenStates {
    pub fn encode(values: &[f32], tokens: u32, hidden: u32, dtype: WireDtype) -> Self {
        debug_assert_eq!(values.len(), tokens as usize * hidden as usize);
        let mut data = Vec::with_capacity(values.len() * dtype.size());
        match dtype {
            WireDtype::F32 => values
                .iter()
                .for_each(|v| data.extend_from_slice(&v.to_le_bytes())),
            WireDtype::F16 => values
                .iter()
                .for_each(|v| data.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
            WireDtype::Bf16 => values
                .iter()
                .for_each(|v| data.extend_from_slice(&bf16::from_f32(*v).to_le_bytes())),
        }
        HiddenStates {
            tokens,
            hidden,
            dtype,
            data,
        }
    }

    /// Appends `other`'s tokens; false (and nothing appended) when the two differ in width or
    /// type, or the count would overflow.
    pub fn append(&mut self, other: &HiddenStates) -> bool {
        let Some(tokens) = self.tokens.checked_add(other.tokens) else {
            return false;
        };
        if other.hidden != self.hidden || other.dtype != self.dtype {
            return false;
        }
        self.tokens = tokens;
        self.data.extend_from_slice(&other.data);
        true
    }

    /// The first `tokens` tokens (all of them, if there are fewer).
    pub fn first(&self, tokens: u32) -> HiddenStates {
        let tokens = tokens.min(self.tokens);
        let bytes = tokens as usize * self.hidden as usize * self.dtype.size();
        HiddenStates {
            tokens,
            hidden: self.hidden,
            dtype: self.dtype,
            data: self.data[..bytes.min(self.data.len())].to_vec(),
        }
    }

    /// Decodes to f32, refusing more than `max_elements` values or a length that disagrees with
    /// the shape.
    pub fn decode(&self, max_elements: usize) -> Result<Vec<f32>, TensorError> {
        let want = (self.tokens as usize)
            .checked_mul(self.hidden as usize)
            .filter(|n| *n <= max_elements)
            .and_then(|n| n.checked_mul(self.dtype.size()))
            .ok_or(TensorError::TooLarge {
                tokens: self.tokens,
                hidden: self.hidden,
                limit: max_elements,
            })?;
        if self.data.len() != want {
            return Err(TensorError::Length {
                tokens: self.tokens,
                hidden: self.hidden,
                dtype: self.dtype,
                got: self.data.len(),
                want,
            });
        }
        let out = match self.dtype {
            WireDtype::F32 => self
                .data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            WireDtype::F16 => self
                .data
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            WireDtype::Bf16 => self
                .data
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        };
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip_within_the_dtype_precision(values in proptest::collection::vec(-1000f32..1000f32, 0..64), dt in 0u8..3) {
            let dtype = [WireDtype::F32, WireDtype::F16, WireDtype::Bf16][dt as usize];
            let h = HiddenStates::encode(&values, 1, values.len() as u32, dtype);
            let back = h.decode(1 << 20).unwrap();
            let tol = match dtype { WireDtype::F32 => 0.0, WireDtype::F16 => 1e-3, WireDtype::Bf16 => 8e-3 };
            for (a, b) in values.iter().zip(&back) {
                prop_assert!((a - b).abs() <= tol * a.abs().max(1.0));
            }
            let bytes = bincode::serde::encode_to_vec(&h, bincode::config::standard()).unwrap();
            let (h2, _): (HiddenStates, usize) = bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
            prop_assert_eq!(h2, h);
        }
    }

    #[test]
    fn refuses_bad_shapes() {
        let mut h = HiddenStates::encode(&[1.0, 2.0], 1, 2, WireDtype::F16);
        assert!(matches!(h.decode(1), Err(TensorError::TooLarge { .. })));
        h.data.pop();
        assert!(matches!(h.decode(16), Err(TensorError::Length { .. })));
        h.tokens = u32::MAX;
        h.hidden = u32::MAX;
        assert!(matches!(
            h.decode(usize::MAX),
            Err(TensorError::Length { .. }) | Err(TensorError::TooLarge { .. })
        ));
    }
}
