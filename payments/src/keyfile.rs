//! Nostr secret-key files in the data directory (hex, mode 0600), created on
//! first use: the NWC wallet-service key and the zapper key.

use std::path::{Path, PathBuf};

use cairn_bitcoin::private_file::{self, PrivateFileError};
use nostr::{Keys, SecretKey};

/// Failures reading or creating a key file. Never carries the key itself.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be read or written, or others may read it
    /// (refused, see [`cairn_bitcoin::private_file`]).
    #[error("key file {0}")]
    File(#[from] PrivateFileError),
    /// The file does not hold a hex secret key.
    #[error("key file {0} is not a valid secret key")]
    Invalid(PathBuf),
}

/// Reads the secret key (hex) at `path`, or generates one and writes it there
/// with mode 0600 (two racing starts cannot both write). A file others may
/// read is refused, the same rule as for the seed.
pub fn load_or_create_keys(path: &Path) -> Result<Keys, KeyFileError> {
    let (text, _) =
        private_file::load_or_create(path, || Keys::generate().secret_key().to_secret_hex())?;
    let sk =
        SecretKey::from_hex(text.trim()).map_err(|_| KeyFileError::Invalid(path.to_path_buf()))?;
    Ok(Keys::new(sk))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_reloaded_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        let a = load_or_create_keys(&path).unwrap();
        let b = load_or_create_keys(&path).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        std::fs::write(&path, "not hex").unwrap();
        assert!(matches!(
            load_or_create_keys(&path),
            Err(KeyFileError::Invalid(_))
        ));
    }
}
