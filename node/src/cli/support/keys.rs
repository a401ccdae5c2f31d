//! The user's secret key (from a file refused when others can read it, or
//! from `CAIRN_NSEC`; never printed, logged, or quoted in errors) and the
//! text forms of public keys.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use cairn_bitcoin::private_file;
use nostr::nips::nip19::{FromBech32, ToBech32};
use nostr::{Keys, PublicKey, SecretKey};

/// Environment variable holding the user's secret key when no key file is given.
pub const NSEC_ENV: &str = "CAIRN_NSEC";

/// Where the user's secret key comes from.
#[derive(Debug, Clone, clap::Args)]
pub struct KeyArgs {
    /// File holding your secret key (nsec1… or 64 hex digits), mode 0600.
    /// Without it, the key is read from the CAIRN_NSEC environment variable.
    #[arg(long, visible_alias = "nsec-file", value_name = "FILE")]
    pub key_file: Option<PathBuf>,
}

/// Loads the user's secret key from `key_file`, or from `CAIRN_NSEC` when no
/// file is given. The file must not be readable by group or others.
pub fn load_keys(key_file: Option<&Path>) -> Result<Keys> {
    let text = match key_file {
        Some(path) => private_file::read_secret(path)
            .map_err(|e| anyhow!("key file {e}"))?
            .ok_or_else(|| anyhow!("key file {} does not exist", path.display()))?,
        None => std::env::var(NSEC_ENV)
            .map_err(|_| anyhow!("no secret key: pass --key-file FILE or set {NSEC_ENV}"))?,
    };
    parse_secret_key(&text)
}

/// Parses `nsec1…` or 64 hex digits. Errors never quote the input.
pub fn parse_secret_key(text: &str) -> Result<Keys> {
    let text = text.trim();
    let secret = if text.starts_with("nsec1") {
        SecretKey::from_bech32(text).ok()
    } else {
        SecretKey::from_hex(text).ok()
    };
    secret
        .map(Keys::new)
        .ok_or_else(|| anyhow!("the secret key is not an nsec1… or 64-hex-digit key"))
}

pub(crate) fn parse_public_key(s: &str) -> Result<PublicKey> {
    PublicKey::from_bech32(s)
        .or_else(|_| PublicKey::from_hex(s))
        .map_err(|_| anyhow!("`{s}` is not an npub or a 64-hex-digit public key"))
}

/// `npub1…` of `key` (hex if encoding fails).
pub fn npub(key: &PublicKey) -> String {
    key.to_bech32().unwrap_or_else(|_| key.to_hex())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_keys_parse_and_errors_do_not_echo_them() {
        let keys = Keys::generate();
        let hex = keys.secret_key().to_secret_hex();
        let nsec = keys.secret_key().to_bech32().unwrap();
        assert_eq!(
            parse_secret_key(&format!("{hex}\n")).unwrap().public_key(),
            keys.public_key()
        );
        assert_eq!(
            parse_secret_key(&nsec).unwrap().public_key(),
            keys.public_key()
        );
        let bad = format!("{}zz", &hex[..62]);
        let err = parse_secret_key(&bad).unwrap_err().to_string();
        assert!(!err.contains(&hex[..62]), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn key_file_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nsec");
        let keys = Keys::generate();
        std::fs::write(&path, keys.secret_key().to_secret_hex()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_keys(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("readable by others"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            load_keys(Some(&path)).unwrap().public_key(),
            keys.public_key()
        );
    }
}
