//! A node's ed25519 identity, kept in a file so that a restarted node keeps its peer id.

use std::path::Path;

use libp2p::identity::Keypair;

use super::NetError;

pub fn generate_identity() -> Keypair {
    Keypair::generate_ed25519()
}

/// Reads the key at `path` (libp2p's protobuf encoding), or makes one and writes it there,
/// readable by its owner only.
pub fn load_or_create_identity(path: &Path) -> Result<Keypair, NetError> {
    let err = |what: String| NetError::Identity {
        path: path.to_path_buf(),
        what,
    };
    if path.exists() {
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        return Keypair::from_protobuf_encoding(&bytes).map_err(|e| err(format!("not a key: {e}")));
    }
    let key = generate_identity();
    let bytes = key.to_protobuf_encoding().map_err(|e| err(e.to_string()))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    std::fs::write(path, bytes).map_err(|e| err(e.to_string()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| err(e.to_string()))?;
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_key_keeps_the_peer_id() {
        let dir = std::env::temp_dir().join(format!("baton-identity-{}", std::process::id()));
        let path = dir.join("sub/node.key");
        let first = load_or_create_identity(&path)
            .unwrap()
            .public()
            .to_peer_id();
        let again = load_or_create_identity(&path)
            .unwrap()
            .public()
            .to_peer_id();
        assert_eq!(first, again);
        std::fs::write(&path, b"not a key").unwrap();
        assert!(load_or_create_identity(&path).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
