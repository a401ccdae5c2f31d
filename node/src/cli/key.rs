//! `cairn key generate|import|show`: the owner's Nostr key file, the one the
//! node's outbox, the web app and `cairn msg --key-file` use.
//!
//! The file is `[outbox] key_file` when it is set, else
//! `<data_dir>/owner.key` ([`OWNER_KEY_FILE_NAME`]), which the node then
//! uses as `[outbox] key_file` ([`owner_key_file`]). It holds the secret key
//! as 64 hex digits, mode 0600, written atomically.
//!
//! Invariants:
//! - The secret key never comes from the command line (argv is visible to
//!   every user of the machine): `import` reads it from standard input,
//!   without echo on a terminal ([`read_hidden_line`]).
//! - No command prints the secret key; `show` prints the npub only.
//! - An existing key file is never overwritten without `--force`, and with
//!   it the old key is kept beside it (`owner.key.replaced-<unix>`, 0600):
//!   a lost secret key loses the identity bound to it.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use cairn_bitcoin::private_file;
use nostr::Keys;

use super::support::keys::{load_keys, npub, parse_secret_key};
use crate::settings::Settings;

/// The owner's key file in the data directory, used when `[outbox]
/// key_file` is not set.
pub const OWNER_KEY_FILE_NAME: &str = "owner.key";

/// Where `cairn key` writes the owner's key: `[outbox] key_file`, else
/// `<data_dir>/owner.key`.
pub fn owner_key_path(settings: &Settings) -> PathBuf {
    settings
        .outbox
        .key_file
        .clone()
        .unwrap_or_else(|| settings.data_dir.join(OWNER_KEY_FILE_NAME))
}

/// The owner's key file the node uses: `[outbox] key_file` when set, else
/// `<data_dir>/owner.key` when it exists (created by `cairn key`); `None`:
/// the node has no owner's key.
pub fn owner_key_file(settings: &Settings) -> Option<PathBuf> {
    if let Some(configured) = &settings.outbox.key_file {
        return Some(configured.clone());
    }
    let default = settings.data_dir.join(OWNER_KEY_FILE_NAME);
    default.exists().then_some(default)
}

/// `cairn key …`
#[derive(Debug, clap::Args)]
pub struct KeyArgs {
    #[command(subcommand)]
    command: KeyCommand,
}

#[derive(Debug, clap::Subcommand)]
enum KeyCommand {
    /// Create a new owner's key and write it to the key file ([outbox]
    /// key_file, else <data_dir>/owner.key, mode 0600); prints its npub.
    Generate(KeyFileArgs),
    /// Write an existing secret key (nsec1… or 64 hex digits), read from
    /// standard input (never from the command line; not echoed on a
    /// terminal), to the key file; prints its npub.
    Import(KeyFileArgs),
    /// Print the owner's public key (npub) and where its file is; never the
    /// secret key.
    Show(LocateArgs),
}

#[derive(Debug, clap::Args)]
struct LocateArgs {
    /// TOML config file (default: ./cairn.toml if it exists).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The node's data directory (default: from the settings).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct KeyFileArgs {
    #[command(flatten)]
    locate: LocateArgs,
    /// Replace an existing key file (the old key is kept beside it as
    /// <file>.replaced-<unix time>).
    #[arg(long)]
    force: bool,
}

/// Runs `cairn key …`.
pub async fn run_key(args: KeyArgs) -> Result<()> {
    match args.command {
        KeyCommand::Generate(a) => {
            let path = key_path(&a.locate)?;
            let keys = Keys::generate();
            let replaced = write_key(&path, &keys, a.force)?;
            report_written("generated", &path, &keys, replaced.as_deref());
        }
        KeyCommand::Import(a) => {
            let path = key_path(&a.locate)?;
            let line = read_hidden_line("Secret key (nsec1… or 64 hex digits), then Enter:")?;
            let keys = parse_secret_key(&line)?;
            let replaced = write_key(&path, &keys, a.force)?;
            report_written("imported", &path, &keys, replaced.as_deref());
        }
        KeyCommand::Show(a) => {
            let path = key_path(&a)?;
            ensure!(
                path.exists(),
                "no owner's key at {} (create one with `cairn key generate` or `cairn key import`)",
                path.display()
            );
            let keys = load_keys(Some(&path))?;
            println!("{}", npub(&keys.public_key()));
            eprintln!("key file: {}", path.display());
        }
    }
    Ok(())
}

fn key_path(args: &LocateArgs) -> Result<PathBuf> {
    let mut settings = Settings::load(args.config.as_deref())
        .map_err(|e| anyhow!("invalid configuration: {e}"))?;
    if let Some(dir) = &args.data_dir {
        settings.data_dir.clone_from(dir);
    }
    Ok(owner_key_path(&settings))
}

fn report_written(what: &str, path: &Path, keys: &Keys, replaced: Option<&Path>) {
    println!("{}", npub(&keys.public_key()));
    eprintln!("{what} the owner's key: {} (mode 0600)", path.display());
    if let Some(old) = replaced {
        eprintln!("the previous key is kept in {}", old.display());
    }
    eprintln!(
        "the node uses it as [outbox] key_file (restart `cairn serve` to pick it up); \
         back the file up: the identity bound to it cannot be used without it"
    );
}

/// Writes `keys`' secret to `path` (0600, atomically). An existing file is
/// refused unless `force`, and then moved aside first; returns where.
pub fn write_key(path: &Path, keys: &Keys, force: bool) -> Result<Option<PathBuf>> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the directory {}", dir.display()))?;
    }
    let secret = keys.secret_key().to_secret_hex();
    if !force {
        return match private_file::create_new(path, format!("{secret}\n").as_bytes()) {
            Ok(()) => Ok(None),
            Err(private_file::PrivateFileError::Exists { .. }) => bail!(
                "{} already holds a key; nothing was changed (--force replaces it, keeping the old one beside it)",
                path.display()
            ),
            Err(e) => Err(anyhow!("writing the key file: {e}")),
        };
    }
    let replaced = if path.exists() {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".replaced-{}", nostr::Timestamp::now().as_secs()));
        let old = PathBuf::from(name);
        std::fs::rename(path, &old).with_context(|| format!("moving {} aside", path.display()))?;
        Some(old)
    } else {
        None
    };
    private_file::replace(path, format!("{secret}\n").as_bytes())
        .map_err(|e| anyhow!("writing the key file: {e}"))?;
    Ok(replaced)
}

/// Reads one line of a secret from standard input, without its line
/// ending. On a terminal the prompt goes to stderr and echo is off while
/// the line is typed (`stty -echo`; if that fails nothing is read and the
/// command stops, saying to pipe the secret in instead).
pub fn read_hidden_line(prompt: &str) -> Result<String> {
    let stdin = std::io::stdin();
    let terminal = std::io::IsTerminal::is_terminal(&stdin);
    read_secret_line(stdin.lock(), terminal, prompt, hide_terminal_input)
}

/// [`read_hidden_line`] over any input; `hide` turns echo off and returns
/// a guard that turns it back on when dropped.
fn read_secret_line<R: std::io::BufRead, G>(
    mut input: R,
    terminal: bool,
    prompt: &str,
    hide: impl FnOnce() -> Result<G>,
) -> Result<String> {
    let guard = if terminal {
        let guard = hide().context(
            "cannot turn off echo on this terminal, so nothing was read; pipe the secret in instead \
             (e.g. `… < file`)",
        )?;
        eprintln!("{prompt}");
        Some(guard)
    } else {
        None
    };
    let mut line = String::new();
    let read = input.read_line(&mut line);
    drop(guard);
    if terminal {
        // The Enter that ended the line was not echoed either.
        eprintln!();
    }
    read.context("reading standard input")?;
    Ok(strip_line_ending(&line).to_owned())
}

/// `line` without its trailing `\n` or `\r\n`.
pub fn strip_line_ending(line: &str) -> &str {
    line.strip_suffix('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .unwrap_or(line)
}

/// Echo is turned back on when this is dropped.
struct EchoOff;

impl Drop for EchoOff {
    fn drop(&mut self) {
        let _ = stty("echo");
    }
}

fn stty(arg: &str) -> Result<()> {
    let status = std::process::Command::new("stty")
        .arg(arg)
        .stdin(std::process::Stdio::inherit())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .context("running stty")?;
    ensure!(status.success(), "stty {arg} failed");
    Ok(())
}

fn hide_terminal_input() -> Result<EchoOff> {
    stty("-echo")?;
    Ok(EchoOff)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn a_terminal_secret_is_read_with_echo_off_and_echo_comes_back() {
        let state = Cell::new("echo");
        struct Restore<'a>(&'a Cell<&'static str>);
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                self.0.set("echo");
            }
        }
        struct Watch<'a> {
            state: &'a Cell<&'static str>,
            seen: &'a Cell<&'static str>,
            inner: &'a [u8],
        }
        impl std::io::Read for Watch<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                self.seen.set(self.state.get());
                self.inner.read(buf)
            }
        }
        let seen = Cell::new("");
        let input = std::io::BufReader::new(Watch {
            state: &state,
            seen: &seen,
            inner: b"correct horse battery\r\n",
        });
        let line = read_secret_line(input, true, "prompt", || {
            state.set("no echo");
            Ok(Restore(&state))
        })
        .unwrap();
        assert_eq!(line, "correct horse battery");
        assert_eq!(
            seen.get(),
            "no echo",
            "echo was off while the line was read"
        );
        assert_eq!(state.get(), "echo", "and back on afterwards");
        // A terminal whose echo cannot be turned off: nothing is read.
        let err = read_secret_line(&b"secret\n"[..], true, "prompt", || -> Result<()> {
            bail!("no tty")
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("pipe the secret in"), "{err:#}");
        // Piped input: no echo to turn off.
        let line = read_secret_line(&b"piped  \n"[..], false, "prompt", || -> Result<()> {
            panic!("not a terminal")
        })
        .unwrap();
        assert_eq!(line, "piped  ");
    }

    #[test]
    fn the_key_file_is_private_never_overwritten_silently_and_found_by_the_node() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings {
            data_dir: dir.path().to_path_buf(),
            ..Settings::default()
        };
        assert_eq!(owner_key_file(&settings), None, "no file, no key");
        let path = owner_key_path(&settings);
        assert_eq!(path, dir.path().join("owner.key"));
        let first = Keys::generate();
        assert_eq!(write_key(&path, &first, false).unwrap(), None);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(owner_key_file(&settings), Some(path.clone()));
        assert_eq!(
            load_keys(Some(&path)).unwrap().public_key(),
            first.public_key()
        );
        let second = Keys::generate();
        let err = write_key(&path, &second, false).unwrap_err().to_string();
        assert!(err.contains("already holds a key"), "{err}");
        assert!(
            !err.contains(&first.secret_key().to_secret_hex()),
            "no secret in errors"
        );
        let old = write_key(&path, &second, true).unwrap().unwrap();
        assert_eq!(
            load_keys(Some(&old)).unwrap().public_key(),
            first.public_key()
        );
        assert_eq!(
            load_keys(Some(&path)).unwrap().public_key(),
            second.public_key()
        );
        // `[outbox] key_file`, when set, is the file.
        settings.outbox.key_file = Some(dir.path().join("elsewhere.nsec"));
        assert_eq!(owner_key_path(&settings), dir.path().join("elsewhere.nsec"));
        assert_eq!(
            owner_key_file(&settings),
            Some(dir.path().join("elsewhere.nsec"))
        );
    }
}
