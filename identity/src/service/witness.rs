//! The witness key: the node's Nostr key that signs attestations and epoch
//! events.
//!
//! It lives in [`WITNESS_KEY_FILE`] in the data directory, created with mode
//! 0600 on first start and refused (not repaired) when others may read it,
//! by the one rule of [`cairn_bitcoin::private_file`]. No error message
//! carries the key or the file's content.

use std::path::Path;

use cairn_bitcoin::private_file;
use nostr::nips::nip19::ToBech32;
use nostr::Keys;
use tracing::info;

use super::ServiceError;

/// File in the data directory holding the witness key (hex secret, mode 0600).
pub const WITNESS_KEY_FILE: &str = "witness.key";

/// Loads the witness key from `dir`, creating it (mode 0600) on first start.
pub fn load_or_create_witness_key(dir: &Path) -> Result<Keys, ServiceError> {
    let path = dir.join(WITNESS_KEY_FILE);
    let err = |reason: String| ServiceError::WitnessKey {
        path: path.clone(),
        reason,
    };
    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    let (text, origin) = private_file::load_or_create(&path, || {
        format!("{}\n", Keys::generate().secret_key().to_secret_hex())
    })
    // The messages name the file and the fix (chmod 600), never the key.
    .map_err(|e| err(e.to_string()))?;
    // The parse error could echo the file's content: keep it out.
    let keys = Keys::parse(text.trim()).map_err(|_| err("not a valid secret key".into()))?;
    if origin == private_file::Origin::Created {
        info!(witness = %keys.public_key().to_bech32().unwrap_or_default(),
            "created a new witness key");
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn witness_key_is_created_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let created = load_or_create_witness_key(dir.path()).unwrap();
        let path = dir.path().join(WITNESS_KEY_FILE);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let loaded = load_or_create_witness_key(dir.path()).unwrap();
        assert_eq!(created.public_key(), loaded.public_key());
    }

    #[cfg(unix)]
    #[test]
    fn witness_key_readable_by_others_is_refused_without_echoing_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let keys = load_or_create_witness_key(dir.path()).unwrap();
        let path = dir.path().join(WITNESS_KEY_FILE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create_witness_key(dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("chmod 600"), "{err}");
        assert!(!err.contains(&keys.secret_key().to_secret_hex()));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "not a key").unwrap();
        let err = load_or_create_witness_key(dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not a valid secret key") && !err.contains("not a key\""),
            "{err}"
        );
    }
}
