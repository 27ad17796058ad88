//! What a node announces on the DHT: its model, span, hardware and room, signed with its key.
//!
//! The protocol crate only shapes the bytes; signing and checking signatures happens where the
//! keys live (`baton-node`'s `net`).

use serde::{Deserialize, Serialize};

use crate::experts::ExpertShard;
use crate::wire::MAX_TEXT;
use crate::{Span, PROTOCOL_VERSION};

/// The most bytes a signed record may take on the DHT.
pub const MAX_RECORD_BYTES: usize = 16 << 10;
/// The most blocks a model may have (the largest models today have under 200): whoever reads a
/// record may size a table by its block count.
pub const MAX_BLOCKS: u32 = 4096;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Base58 peer id; it must be the key that signed the record.
    pub peer_id: String,
    /// Data-plane (QUIC) addresses, `ip:port`.
    pub addrs: Vec<String>,
    /// Derived from the model's content: two different files never share one.
    pub model_id: String,
    /// A readable name for the model (its file or folder name).
    pub model_name: String,
    pub span: Span,
    /// Blocks in the whole model.
    pub blocks: u32,
    pub backend: String,
    pub device: String,
    pub memory_total: u64,
    pub memory_free: u64,
    /// Decode tokens per second of this node's span, measured at start.
    pub tokens_per_s: f32,
    /// KV-cache tokens it can still take.
    pub kv_tokens_free: u64,
    /// The routed experts it holds of each mixture-of-experts layer of its span; `None` for a
    /// dense model, or every expert.
    pub experts: Option<ExpertShard>,
    pub protocol_version: u32,
    pub name: String,
    /// Seconds since the Unix epoch after which the record is stale.
    pub expires_unix: u64,
}

/// A record with its signer's public key (libp2p protobuf encoding) and signature over `record`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SignedRecord {
    pub record: Vec<u8>,
    pub public_key: Vec<u8>,
    pub signature: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("record of {0} bytes exceeds {MAX_RECORD_BYTES}")]
    TooLarge(usize),
    #[error("malformed record: {0}")]
    Malformed(String),
    #[error("a text field of the record is longer than {MAX_TEXT} bytes")]
    TextTooLong,
    #[error("record speaks protocol {0}, this build speaks {PROTOCOL_VERSION}")]
    Version(u32),
    #[error("record says it holds {0}")]
    Experts(ExpertShard),
    #[error(
        "record says span {start}..{end} of a model of {blocks} blocks (at most {MAX_BLOCKS})"
    )]
    Span { start: u32, end: u32, blocks: u32 },
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_limit::<MAX_RECORD_BYTES>()
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, RecordError> {
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(RecordError::TooLarge(bytes.len()));
    }
    let (v, used) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| RecordError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(RecordError::Malformed("trailing bytes".into()));
    }
    Ok(v)
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, RecordError> {
    let bytes = bincode::serde::encode_to_vec(v, config())
        .map_err(|e| RecordError::Malformed(e.to_string()))?;
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(RecordError::TooLarge(bytes.len()));
    }
    Ok(bytes)
}

impl NodeRecord {
    pub fn encode(&self) -> Result<Vec<u8>, RecordError> {
        encode(self)
    }

    /// Decodes and checks the fields' sizes, the protocol version, and that the span is a
    /// non-empty part of a model of at most [`MAX_BLOCKS`] blocks.
    pub fn decode(bytes: &[u8]) -> Result<NodeRecord, RecordError> {
        let r: NodeRecord = decode(bytes)?;
        let texts = [
            &r.peer_id,
            &r.model_id,
            &r.model_name,
            &r.backend,
            &r.device,
            &r.name,
        ];
        if texts.iter().any(|t| t.len() > MAX_TEXT)
            || r.addrs.iter().any(|a| a.len() > MAX_TEXT)
            || r.addrs.len() > 16
        {
            return Err(RecordError::TextTooLong);
        }
        if r.protocol_version != PROTOCOL_VERSION {
            return Err(RecordError::Version(r.protocol_version));
        }
        let (start, end, blocks) = (r.span.start, r.span.end, r.blocks);
        if blocks == 0 || blocks > MAX_BLOCKS || start >= end || end > blocks {
            return Err(RecordError::Span { start, end, blocks });
        }
        if let Some(e) = r.experts.filter(|e| !e.is_valid()) {
            return Err(RecordError::Experts(e));
        }
        Ok(r)
    }

    pub fn is_fresh(&self, now_unix: u64) -> bool {
        now_unix < self.expires_unix
    }
}

impl SignedRecord {
    pub fn encode(&self) -> Result<Vec<u8>, RecordError> {
        encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<SignedRecord, RecordError> {
        decode(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> NodeRecord {
        NodeRecord {
            peer_id: "12D3KooW".into(),
            addrs: vec!["127.0.0.1:4000".into()],
            model_id: "m".into(),
            model_name: "demo".into(),
            span: Span { start: 0, end: 10 },
            blocks: 30,
            backend: "cpu".into(),
            device: "AMD EPYC".into(),
            memory_total: 1 << 34,
            memory_free: 1 << 33,
            tokens_per_s: 120.5,
            kv_tokens_free: 100_000,
            experts: None,
            protocol_version: PROTOCOL_VERSION,
            name: "node-a".into(),
            expires_unix: 1_000,
        }
    }

    #[test]
    fn round_trips_and_checks() {
        let r = record();
        let bytes = r.encode().unwrap();
        assert_eq!(NodeRecord::decode(&bytes).unwrap(), r);
        assert!(r.is_fresh(999) && !r.is_fresh(1000));
        let s = SignedRecord {
            record: bytes.clone(),
            public_key: vec![1, 2, 3],
            signature: vec![4; 64],
        };
        assert_eq!(SignedRecord::decode(&s.encode().unwrap()).unwrap(), s);
        assert!(NodeRecord::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut old = record();
        old.protocol_version = 0;
        assert_eq!(
            NodeRecord::decode(&old.encode().unwrap()),
            Err(RecordError::Version(0))
        );
        let mut long = record();
        long.name = "x".repeat(MAX_TEXT + 1);
        assert_eq!(
            NodeRecord::decode(&long.encode().unwrap()),
            Err(RecordError::TextTooLong)
        );
        assert!(matches!(
            SignedRecord::decode(&vec![0; MAX_RECORD_BYTES + 1]),
            Err(RecordError::TooLarge(_))
        ));
    }

    /// A record claiming a huge model, or a span outside its model, never reaches anyone who
    /// would size a table by it: `baton swarm` once aborted allocating per block of
    /// `blocks = u32::MAX`.
    #[test]
    fn absurd_block_counts_and_spans_are_refused() {
        for (start, end, blocks) in [
            (0, 10, u32::MAX),
            (0, 10, MAX_BLOCKS + 1),
            (0, 31, 30),
            (10, 10, 30),
            (u32::MAX - 1, u32::MAX, u32::MAX),
            (0, 1, 0),
        ] {
            let mut r = record();
            r.span = Span { start, end };
            r.blocks = blocks;
            assert_eq!(
                NodeRecord::decode(&r.encode().unwrap()),
                Err(RecordError::Span { start, end, blocks }),
                "{start}..{end} of {blocks}"
            );
        }
        let mut largest = record();
        largest.blocks = MAX_BLOCKS;
        largest.span = Span {
            start: 0,
            end: MAX_BLOCKS,
        };
        assert!(NodeRecord::decode(&largest.encode().unwrap()).is_ok());
        let mut shard = record();
        shard.experts = Some(ExpertShard {
            start: 3,
            end: 2,
            of: 8,
            only: false,
        });
        assert!(matches!(
            NodeRecord::decode(&shard.encode().unwrap()),
            Err(RecordError::Experts(_))
        ));
        shard.experts = Some(ExpertShard::all(8));
        assert!(NodeRecord::decode(&shard.encode().unwrap()).is_ok());
    }
}
