//! The web passphrase: a second way for the owner to sign in to the app
//! (besides the admin token), set with `cairn web passphrase`, which reads
//! it from standard input and stores only its scrypt hash in
//! `<data_dir>/web.passphrase` (mode 0600).
//!
//! The file is one line, `scrypt$<log_n>$<r>$<p>$<salt hex>$<hash hex>`:
//! the parameters travel with the hash, so stronger ones can be adopted
//! later without invalidating a stored passphrase. The node reads the file
//! at each sign-in, so a new passphrase takes effect without a restart.
//! Hashing runs on a blocking thread (it takes ~0.1–0.5 s and 128 MiB by
//! design) and sign-ins are rate-limited before it runs.
//!
//! Invariants:
//! - The command and the sign-in form read a passphrase by one rule,
//!   [`normalize`] (surrounding whitespace is not part of it), so what was
//!   set is what signs in.
//! - The command reads it from standard input and never echoes it on a
//!   terminal ([`crate::cli::key::read_hidden_line`]).
//! - At most [`MAX_CONCURRENT_HASHES`] scrypt checks run at once in the
//!   process (each takes 128 MiB); a sign-in beyond them is not hashed and
//!   is answered "busy, try again" ([`check`]).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use cairn_bitcoin::private_file;
use rand::RngCore as _;

use crate::settings::Settings;

/// Name of the hash file inside the data directory.
pub const PASSPHRASE_FILE_NAME: &str = "web.passphrase";
/// scrypt cost `N = 2^17`, `r = 8`, `p = 1`: OWASP's recommended minimum.
pub const LOG_N: u8 = 17;
const R: u32 = 8;
const P: u32 = 1;
/// Shortest passphrase accepted.
pub const MIN_CHARS: usize = 12;
/// Most scrypt checks at once in this process (each holds 128 MiB).
pub const MAX_CONCURRENT_HASHES: usize = 2;

/// The slots of [`MAX_CONCURRENT_HASHES`].
static HASH_SLOTS: tokio::sync::Semaphore =
    tokio::sync::Semaphore::const_new(MAX_CONCURRENT_HASHES);

/// The passphrase in `input` (a line of standard input, a form field):
/// without surrounding whitespace or line endings. The one rule the
/// command that sets it and the sign-in that checks it both apply.
pub fn normalize(input: &str) -> &str {
    input.trim()
}

/// Every scrypt slot is taken: try again in a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

/// Whether `passphrase` (already [`normalize`]d) matches `stored`, hashed on
/// a blocking thread while one of [`MAX_CONCURRENT_HASHES`] slots is held;
/// [`Busy`] without hashing when none is free.
pub async fn check(stored: String, passphrase: String) -> Result<bool, Busy> {
    check_with(&HASH_SLOTS, stored, passphrase).await
}

async fn check_with(
    slots: &'static tokio::sync::Semaphore,
    stored: String,
    passphrase: String,
) -> Result<bool, Busy> {
    let permit = slots.try_acquire().map_err(|_| Busy)?;
    let matched = tokio::task::spawn_blocking(move || {
        let matched = matches(&stored, &passphrase);
        drop(permit);
        matched
    })
    .await
    .unwrap_or(false);
    Ok(matched)
}

/// Path of the hash file in `data_dir`.
pub fn passphrase_path(data_dir: &Path) -> PathBuf {
    data_dir.join(PASSPHRASE_FILE_NAME)
}

/// The stored form of `passphrase`, with a fresh salt.
pub fn hash(passphrase: &str, log_n: u8) -> Result<String> {
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let out = derive(passphrase, &salt, log_n, R, P)?;
    Ok(format!(
        "scrypt${log_n}${R}${P}${}${}",
        hex::encode(salt),
        hex::encode(out)
    ))
}

fn derive(passphrase: &str, salt: &[u8], log_n: u8, r: u32, p: u32) -> Result<[u8; 32]> {
    let params = scrypt::Params::new(log_n, r, p, 32).map_err(|e| anyhow!("scrypt: {e}"))?;
    let mut out = [0u8; 32];
    scrypt::scrypt(passphrase.as_bytes(), salt, &params, &mut out)
        .map_err(|e| anyhow!("scrypt: {e}"))?;
    Ok(out)
}

/// Whether `passphrase` is the one `stored` (a line of the hash file) was
/// made from. A malformed line matches nothing.
pub fn matches(stored: &str, passphrase: &str) -> bool {
    let parts: Vec<&str> = stored.trim().split('$').collect();
    let [scheme, log_n, r, p, salt, expected] = parts[..] else {
        return false;
    };
    let (Ok(log_n), Ok(r), Ok(p), Ok(salt), Ok(expected)) = (
        log_n.parse::<u8>(),
        r.parse::<u32>(),
        p.parse::<u32>(),
        hex::decode(salt),
        hex::decode(expected),
    ) else {
        return false;
    };
    // Bounds keep a tampered file from making a sign-in allocate gigabytes.
    if scheme != "scrypt" || !(10..=20).contains(&log_n) || r > 32 || p > 4 {
        return false;
    }
    match derive(passphrase, &salt, log_n, r, p) {
        Ok(out) => {
            expected.len() == out.len()
                && out
                    .iter()
                    .zip(&expected)
                    .fold(0u8, |acc, (a, b)| acc | std::hint::black_box(a ^ b))
                    == 0
        }
        Err(_) => false,
    }
}

/// The stored hash, when a passphrase is set (a file others can read is
/// refused, and logged).
pub fn load(data_dir: &Path) -> Option<String> {
    match private_file::read_secret(&passphrase_path(data_dir)) {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(error = %e, "web: the passphrase file is not used");
            None
        }
    }
}

/// `cairn web …`
#[derive(Debug, clap::Args)]
pub struct WebArgs {
    #[command(subcommand)]
    command: WebCommand,
}

#[derive(Debug, clap::Subcommand)]
enum WebCommand {
    /// Set the passphrase that signs you in to the node's web app (besides
    /// the admin token). Reads it from standard input (the first line);
    /// stores only its scrypt hash in <data_dir>/web.passphrase (0600).
    Passphrase(PassphraseArgs),
}

#[derive(Debug, clap::Args)]
struct PassphraseArgs {
    /// TOML config file (default: ./cairn.toml if it exists).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The node's data directory (default: from the settings).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Remove the passphrase: only the admin token signs in.
    #[arg(long)]
    remove: bool,
}

/// Runs `cairn web …`.
pub async fn run_web(args: WebArgs) -> Result<()> {
    match args.command {
        WebCommand::Passphrase(a) => set_passphrase(a),
    }
}

fn set_passphrase(args: PassphraseArgs) -> Result<()> {
    let data_dir = match args.data_dir {
        Some(d) => d,
        None => {
            Settings::load(args.config.as_deref())
                .map_err(|e| anyhow!("invalid configuration: {e}"))?
                .data_dir
        }
    };
    let path = passphrase_path(&data_dir);
    if args.remove {
        match std::fs::remove_file(&path) {
            Ok(()) => println!(
                "removed {}: only the admin token signs in now",
                path.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => println!("no passphrase was set"),
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
        return Ok(());
    }
    ensure!(
        data_dir.is_dir(),
        "the data directory {} does not exist (start the node once, or pass --data-dir)",
        data_dir.display()
    );
    let line = crate::cli::key::read_hidden_line(&format!(
        "Passphrase (at least {MIN_CHARS} characters; not shown as you type), then Enter:"
    ))
    .context("reading the passphrase from standard input")?;
    let passphrase = normalize(&line);
    if passphrase.chars().count() < MIN_CHARS {
        bail!("the passphrase is shorter than {MIN_CHARS} characters; nothing was changed");
    }
    let stored = hash(passphrase, LOG_N)?;
    private_file::replace(&path, format!("{stored}\n").as_bytes())
        .map_err(|e| anyhow!("writing the passphrase file: {e}"))?;
    println!(
        "passphrase set ({}); sign in at /app/login on the node",
        path.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_matches_its_passphrase_only() {
        let stored = hash("correct horse battery", 10).unwrap();
        assert!(stored.starts_with("scrypt$10$8$1$"), "{stored}");
        assert!(!stored.contains("correct"));
        assert!(matches(&stored, "correct horse battery"));
        assert!(!matches(&stored, "correct horse batterz"));
        assert!(!matches(&stored, ""));
        let again = hash("correct horse battery", 10).unwrap();
        assert_ne!(stored, again, "a fresh salt each time");
        assert!(!matches("scrypt$30$8$1$00$00", "x"), "absurd cost refused");
        assert!(!matches("garbage", "x"));
    }

    #[test]
    fn the_command_and_the_sign_in_read_a_passphrase_alike() {
        let typed = "  correct horse battery \r\n";
        let stored = hash(normalize(typed), 10).unwrap();
        for form in [
            "correct horse battery",
            " correct horse battery\t",
            "correct horse battery\n",
        ] {
            assert!(matches(&stored, normalize(form)), "{form:?}");
        }
        assert!(!matches(&stored, normalize("correct  horse battery")));
        assert_eq!(normalize(" \n "), "", "blank is empty");
    }

    #[tokio::test]
    async fn scrypt_checks_beyond_the_cap_are_refused_busy_without_hashing() {
        static SLOTS: tokio::sync::Semaphore =
            tokio::sync::Semaphore::const_new(MAX_CONCURRENT_HASHES);
        let stored = hash("correct horse battery", 10).unwrap();
        let held: Vec<_> = (0..MAX_CONCURRENT_HASHES)
            .map(|_| SLOTS.try_acquire().unwrap())
            .collect();
        assert_eq!(
            check_with(&SLOTS, stored.clone(), "correct horse battery".into()).await,
            Err(Busy)
        );
        drop(held);
        assert_eq!(
            check_with(&SLOTS, stored.clone(), "correct horse battery".into()).await,
            Ok(true)
        );
        assert_eq!(
            check_with(&SLOTS, stored, "wrong horse battery".into()).await,
            Ok(false)
        );
        assert_eq!(
            SLOTS.available_permits(),
            MAX_CONCURRENT_HASHES,
            "slots come back"
        );
        assert_eq!(MAX_CONCURRENT_HASHES, 2);
    }
}
