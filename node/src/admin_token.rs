//! The admin API's bearer token: 32 random bytes as hex in
//! `<data_dir>/admin.token` (mode 0600), created on the first start with
//! payments enabled. Whoever can read that file can spend the node's money, so
//! it is treated like the seed: never logged, never echoed in responses or
//! errors, compared in constant time.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, ensure, Context, Result};
use cairn_bitcoin::private_file;
use rand::RngCore as _;

/// Name of the token file inside the data directory.
pub const ADMIN_TOKEN_FILE_NAME: &str = "admin.token";
/// Environment variable the CLI reads the token from when no file is given.
pub const ADMIN_TOKEN_ENV: &str = "CAIRN_ADMIN_TOKEN";
/// Random bytes in a token (hex-encoded in the file: 64 characters).
const TOKEN_BYTES: usize = 32;

/// The admin token. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// Path of the token file in `data_dir`.
pub fn token_path(data_dir: &Path) -> PathBuf {
    data_dir.join(ADMIN_TOKEN_FILE_NAME)
}

impl AdminToken {
    /// Wraps a token given by the user (e.g. from `CAIRN_ADMIN_TOKEN`).
    pub fn new(token: &str) -> Self {
        Self(token.trim().to_owned())
    }

    /// Loads `<data_dir>/admin.token`, or creates it (mode 0600 from its
    /// first byte) when missing.
    pub fn load_or_create(data_dir: &Path) -> Result<Self> {
        let path = token_path(data_dir);
        let (text, _) = private_file::load_or_create(&path, || {
            let mut bytes = [0u8; TOKEN_BYTES];
            rand::rngs::OsRng.fill_bytes(&mut bytes);
            let token = hex::encode(bytes);
            bytes.fill(0);
            format!("{token}\n")
        })
        .map_err(|e| anyhow!("the admin token file: {e}"))?;
        Self::from_text(&path, &text)
    }

    /// Reads an existing token file, refusing one that others may read.
    pub fn load(path: &Path) -> Result<Self> {
        let text = private_file::read_secret(path)
            .map_err(|e| anyhow!("the admin token file: {e}"))?
            .with_context(|| format!("the admin token file {} does not exist", path.display()))?;
        Self::from_text(path, &text)
    }

    fn from_text(path: &Path, text: &str) -> Result<Self> {
        let token = text.trim();
        ensure!(
            !token.is_empty(),
            "the admin token file {} is empty",
            path.display()
        );
        Ok(Self(token.to_owned()))
    }

    /// The token text, for the `Authorization` header.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `candidate` is this token, in time independent of where they
    /// differ (the length of a token is not a secret: it is always 64).
    pub fn matches(&self, candidate: &str) -> bool {
        constant_time_eq(self.0.as_bytes(), candidate.as_bytes())
    }
}

/// Compares without an early exit, so response time tells an attacker
/// nothing about how many leading bytes of a guess were right.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a
        .iter()
        .zip(b)
        .fold(0u8, |acc, (x, y)| acc | std::hint::black_box(x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let a = AdminToken::load_or_create(dir.path()).unwrap();
        assert_eq!(a.expose().len(), 2 * TOKEN_BYTES);
        assert!(a.expose().chars().all(|c| c.is_ascii_hexdigit()));
        let b = AdminToken::load_or_create(dir.path()).unwrap();
        assert_eq!(a, b, "the second start reads the same token");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(token_path(dir.path()))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(!format!("{a:?}").contains(a.expose()));
        let other = tempfile::tempdir().unwrap();
        assert_ne!(a, AdminToken::load_or_create(other.path()).unwrap());
    }

    #[cfg(unix)]
    #[test]
    fn a_token_file_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        AdminToken::load_or_create(dir.path()).unwrap();
        let path = token_path(dir.path());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = AdminToken::load(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn matching_is_exact() {
        let t = AdminToken::new("abcd");
        assert!(t.matches("abcd"));
        assert!(!t.matches("abce"));
        assert!(!t.matches("abc"));
        assert!(!t.matches("abcde"));
        assert!(!t.matches(""));
    }
}
