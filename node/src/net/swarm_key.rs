//! Private swarms: a pre-shared 32-byte key, in the file format of libp2p's pnet
//! (`/key/swarm/psk/1.0.0/`, `/base16/`, 64 hex digits), guards both planes. The DHT wraps its
//! TCP connections in pnet; on the data plane, each side's hello carries a keyed hash of both
//! peer ids that only a holder of the key can make.

use std::path::Path;

use libp2p::PeerId;

use super::NetError;

pub type SwarmKey = [u8; 32];

/// Reads a swarm key file.
pub fn read_swarm_key(path: &Path) -> Result<SwarmKey, NetError> {
    let bad = |what: &str| NetError::Identity {
        path: path.to_path_buf(),
        what: what.to_string(),
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(&e.to_string()))?;
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    if lines.next() != Some("/key/swarm/psk/1.0.0/") || lines.next() != Some("/base16/") {
        return Err(bad(
            "not a swarm key: expected /key/swarm/psk/1.0.0/ then /base16/",
        ));
    }
    let hex = lines.next().ok_or_else(|| bad("no key after /base16/"))?;
    if hex.len() != 64 || !hex.is_ascii() {
        return Err(bad("the key must be 64 hex digits"));
    }
    let mut key = [0u8; 32];
    for (i, k) in key.iter_mut().enumerate() {
        *k = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| bad("the key must be 64 hex digits"))?;
    }
    Ok(key)
}

/// What `from` shows `to` to prove it holds `key`; bound to both peers, so that it is worth
/// nothing on another connection.
pub fn swarm_proof(key: &SwarmKey, from: &PeerId, to: &PeerId) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(b"baton swarm proof");
    h.update(&from.to_bytes());
    h.update(&to.to_bytes());
    *h.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_parse_and_proofs_bind_both_peers() {
        let dir = std::env::temp_dir().join(format!("baton-psk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.key");
        std::fs::write(
            &good,
            format!("/key/swarm/psk/1.0.0/\n/base16/\n{}\n", "ab".repeat(32)),
        )
        .unwrap();
        assert_eq!(read_swarm_key(&good).unwrap(), [0xab; 32]);
        let bad = dir.join("bad.key");
        std::fs::write(&bad, "/key/swarm/psk/1.0.0/\n/base16/\nxyz\n").unwrap();
        assert!(read_swarm_key(&bad).is_err());
        let (a, b) = (PeerId::random(), PeerId::random());
        let k = [1u8; 32];
        assert_ne!(swarm_proof(&k, &a, &b), swarm_proof(&k, &b, &a));
        assert_ne!(swarm_proof(&k, &a, &b), swarm_proof(&[2u8; 32], &a, &b));
    }
}
