//! Nostr secret-key files in the data directory (hex, mode 0600), created on
//! first use: the NWC wallet-service key and the zapper key.

use std::path::{Path, PathBuf};

use nostr::{Keys, SecretKey};

use crate::fsutil::restrict_to_owner;

/// Failures reading or creating a key file. Never carries the key itself.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be read, written or secured.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not hold a hex secret key.
    #[error("key file {0} is not a valid secret key")]
    Invalid(PathBuf),
}

/// Reads the secret key (hex) at `path`, or generates one and writes it there
/// with mode 0600 (`create_new`: two racing starts cannot both write).
pub fn load_or_create_keys(path: &Path) -> Result<Keys, KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let sk = SecretKey::from_hex(text.trim())
                .map_err(|_| KeyFileError::Invalid(path.to_path_buf()))?;
            restrict_to_owner(path).map_err(io)?;
            Ok(Keys::new(sk))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write as _;
            let keys = Keys::generate();
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut f = opts.open(path).map_err(io)?;
            f.write_all(keys.secret_key().to_secret_hex().as_bytes())
                .and_then(|_| f.sync_all())
                .map_err(io)?;
            Ok(keys)
        }
        Err(e) => Err(io(e)),
    }
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
