//! The node's BIP39 seed file and the BIP86 descriptors derived from it.
//!
//! The file holds the mnemonic words on one line. It is created on first start
//! with mode 0600 (owner read/write only) and refused afterwards if anyone else
//! can read it. Neither the words nor any key derived from them ever appear in a
//! `Debug` output or an error message.

use std::fmt;
use std::path::{Path, PathBuf};

use bip39::Mnemonic;
use bitcoin::bip32::Xpriv;
use bitcoin::secp256k1::rand::{thread_rng, RngCore};
use bitcoin::{Network, NetworkKind};

use crate::private_file::{self, read_secret, PrivateFileError};

/// Name of the seed file inside the data directory.
pub const SEED_FILE_NAME: &str = "seed";

/// Entropy of a freshly generated seed: 256 bits, i.e. 24 words.
const ENTROPY_BYTES: usize = 32;

/// Seed file failures. Messages name the file, never its contents.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// Reading, creating or syncing the file failed.
    #[error("seed file {path}: {source}")]
    Io {
        /// The seed file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file exists but other users may read or write it.
    #[error("seed file {path} has mode {mode:o}; it must not be accessible to group or others (chmod 600)")]
    InsecurePermissions {
        /// The seed file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file does not hold a valid BIP39 mnemonic (wrong word, checksum or length).
    #[error("seed file {path} does not hold a valid BIP39 mnemonic")]
    Invalid {
        /// The seed file.
        path: PathBuf,
    },
    /// Deriving the master key failed (practically impossible for a valid seed).
    #[error("cannot derive the master key from the seed")]
    Derivation,
}

impl From<PrivateFileError> for SeedError {
    fn from(e: PrivateFileError) -> Self {
        match e {
            PrivateFileError::Insecure { path, mode } => Self::InsecurePermissions { path, mode },
            PrivateFileError::Io { path, source } => Self::Io { path, source },
            PrivateFileError::Exists { path } => Self::Io {
                path,
                source: std::io::ErrorKind::AlreadyExists.into(),
            },
        }
    }
}

/// The node's seed, loaded from its file.
#[derive(Clone)]
pub struct Seed {
    mnemonic: Mnemonic,
}

impl fmt::Debug for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Seed(<redacted>)")
    }
}

/// Where the seed came from on this start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedOrigin {
    /// The file already existed and was loaded.
    Loaded,
    /// No file existed: a new seed was generated and written.
    Created,
}

/// Path of the seed file in `data_dir`.
pub fn seed_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SEED_FILE_NAME)
}

impl Seed {
    /// Loads the seed file in `data_dir`, or creates one (mode 0600) when there is none.
    pub fn load_or_create(data_dir: &Path) -> Result<(Self, SeedOrigin), SeedError> {
        let path = seed_path(data_dir);
        match std::fs::metadata(&path) {
            Ok(_) => Ok((Self::load(&path)?, SeedOrigin::Loaded)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok((Self::create(&path)?, SeedOrigin::Created))
            }
            Err(source) => Err(SeedError::Io { path, source }),
        }
    }

    /// Loads an existing seed file.
    pub fn load(path: &Path) -> Result<Self, SeedError> {
        let text = read_secret(path)?.ok_or_else(|| SeedError::Io {
            path: path.to_path_buf(),
            source: std::io::ErrorKind::NotFound.into(),
        })?;
        let mnemonic = Mnemonic::parse_normalized(text.trim()).map_err(|_| SeedError::Invalid {
            path: path.to_path_buf(),
        })?;
        Ok(Self { mnemonic })
    }

    fn create(path: &Path) -> Result<Self, SeedError> {
        let mut entropy = [0u8; ENTROPY_BYTES];
        thread_rng().fill_bytes(&mut entropy);
        let mnemonic = Mnemonic::from_entropy(&entropy).map_err(|_| SeedError::Derivation)?;
        entropy.fill(0);
        let mut words = mnemonic.to_string();
        words.push('\n');
        let written = private_file::create_new(path, words.as_bytes());
        // Overwrite our copy of the words in memory whatever happened above.
        words.replace_range(.., &" ".repeat(words.len()));
        match written {
            Ok(()) => Ok(Self { mnemonic }),
            // Another process created the seed first: use that one.
            Err(PrivateFileError::Exists { .. }) => Self::load(path),
            Err(e) => Err(e.into()),
        }
    }

    /// The BIP32 master key of this seed (empty BIP39 passphrase).
    pub fn master_key(&self, network: Network) -> Result<Xpriv, SeedError> {
        let kind = NetworkKind::from(network);
        let mut seed = self.mnemonic.to_seed("");
        let key = Xpriv::new_master(kind, &seed).map_err(|_| SeedError::Derivation);
        seed.fill(0);
        key
    }

    /// The BIP86 taproot descriptors (external, change) of `account`:
    /// `tr(xprv/86'/<coin>'/<account>'/0/*)` and `…/1/*`, coin type 0 on
    /// mainnet and 1 on every test network.
    ///
    /// The strings contain the private key: never log them.
    pub fn bip86_descriptors(
        &self,
        network: Network,
        account: u32,
    ) -> Result<(String, String), SeedError> {
        let xprv = self.master_key(network)?;
        let coin = coin_type(network);
        Ok((
            format!("tr({xprv}/86'/{coin}'/{account}'/0/*)"),
            format!("tr({xprv}/86'/{coin}'/{account}'/1/*)"),
        ))
    }
}

/// BIP44 coin type: 0 for Bitcoin, 1 for all test networks.
pub fn coin_type(network: Network) -> u32 {
    match network {
        Network::Bitcoin => 0,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_loaded_with_same_keys() {
        let dir = tempfile::tempdir().unwrap();
        let (a, origin) = Seed::load_or_create(dir.path()).unwrap();
        assert_eq!(origin, SeedOrigin::Created);
        let (b, origin) = Seed::load_or_create(dir.path()).unwrap();
        assert_eq!(origin, SeedOrigin::Loaded);
        assert_eq!(
            a.bip86_descriptors(Network::Regtest, 0).unwrap(),
            b.bip86_descriptors(Network::Regtest, 0).unwrap()
        );
        let text = std::fs::read_to_string(seed_path(dir.path())).unwrap();
        assert_eq!(text.split_whitespace().count(), 24);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }

    #[test]
    fn debug_and_errors_do_not_leak_words() {
        let dir = tempfile::tempdir().unwrap();
        let (seed, _) = Seed::load_or_create(dir.path()).unwrap();
        let text = std::fs::read_to_string(seed_path(dir.path())).unwrap();
        let first_word = text.split_whitespace().next().unwrap().to_string();
        assert_eq!(format!("{seed:?}"), "Seed(<redacted>)");

        // A corrupted file: the error names the file, not the words.
        let corrupted = text.replacen(&first_word, "notaword", 1);
        std::fs::write(seed_path(dir.path()), &corrupted).unwrap();
        let err = Seed::load(&seed_path(dir.path())).unwrap_err();
        let msg = format!("{err} {err:?}");
        assert!(matches!(err, SeedError::Invalid { .. }), "{msg}");
        // No two consecutive words of the mnemonic (single words can be
        // English words of the message itself, e.g. "file" or "valid").
        let words: Vec<&str> = text.split_whitespace().skip(1).collect();
        for pair in words.windows(2) {
            assert!(!msg.contains(&pair.join(" ")), "{msg}");
        }
        assert!(!msg.contains("notaword"));
    }

    #[test]
    fn coin_types() {
        assert_eq!(coin_type(Network::Bitcoin), 0);
        assert_eq!(coin_type(Network::Regtest), 1);
        assert_eq!(coin_type(Network::Testnet), 1);
        assert_eq!(coin_type(Network::Signet), 1);
    }

    #[cfg(unix)]
    #[test]
    fn world_readable_seed_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        Seed::load_or_create(dir.path()).unwrap();
        let path = seed_path(dir.path());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Seed::load_or_create(dir.path()).unwrap_err();
        assert!(
            matches!(err, SeedError::InsecurePermissions { mode: 0o644, .. }),
            "{err}"
        );
    }
}
