//! `cairn backup --out FILE` and `cairn restore FILE --data-dir DIR`.
//!
//! A backup is a plain (uncompressed) tar archive:
//!
//! - `cairn-backup.json` first: the [`Manifest`] (format version, when,
//!   which cairn wrote it, whether secrets are in it, and every file with its
//!   size and SHA-256);
//! - then each file under its path relative to the data directory
//!   (`cairn.db`, `anchor.sqlite`, `nwc.sqlite`, `lightning/…`).
//!
//! What goes in:
//!
//! - **Every SQLite database** in the data directory (found by its file
//!   header, at any depth), as a `VACUUM INTO` snapshot taken over a
//!   connection of this process. SQLite makes that one consistent
//!   transaction even while the serving node keeps writing (WAL: the node's
//!   writers are not blocked), so a backup may be taken at any moment.
//!   Journal files (`-wal`, `-shm`, `-journal`) are never copied: the
//!   snapshot already holds what they hold.
//! - **Every other file** (the seed, keys, the admin token, other records)
//!   only with `--include-secrets`. Unknown files count as secret: a backup
//!   without the flag holds databases only, never a key by accident.
//!
//! Invariants: the archive is written to a private (0600) temporary file
//! beside `--out` and renamed into place once complete, so `--out` is never a
//! truncated archive and never readable by others; an existing `--out` is
//! refused. Restore writes only into a data directory that is missing or
//! empty, checks every file's size and hash against the manifest, writes
//! secret files with [`cairn_bitcoin::private_file::create_new`] and
//! databases restricted to the owner before their first byte, and removes
//! what it wrote when anything fails. No file's contents are ever logged.
//!
//! The event database on Postgres is not in the archive (the manifest says
//! so): back it up with `pg_dump` (docs/operations.md).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, ensure, Context as _, Result};
use cairn_bitcoin::private_file;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use sqlx::Connection as _;

use crate::settings::Settings;

/// Name of the manifest entry, the archive's first.
pub const MANIFEST_NAME: &str = "cairn-backup.json";
/// The `format` field of a manifest.
pub const FORMAT: &str = "cairn-backup";
/// The archive layout version this cairn writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Largest manifest accepted on restore (it lists files, nothing more).
const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// How long a snapshot waits for a lock the node holds (a checkpoint).
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// `cairn backup`.
#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// The archive to write (refused if it exists).
    #[arg(long)]
    pub out: PathBuf,
    /// Also archive the seed, keys, tokens and every other non-database file.
    #[arg(long)]
    pub include_secrets: bool,
    /// TOML config file, as for `cairn serve` (default: ./cairn.toml if it exists).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// The node's data directory (overrides the config).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The node's database URL (overrides the config).
    #[arg(long)]
    pub database_url: Option<String>,
}

/// `cairn restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// An archive written by `cairn backup`.
    pub file: PathBuf,
    /// The data directory to restore into: must be missing or empty.
    #[arg(long)]
    pub data_dir: PathBuf,
}

/// What an archive holds; its first entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`FORMAT_VERSION`] of the writer.
    pub version: u32,
    /// Unix seconds when the backup started.
    pub created_at: u64,
    /// The cairn version that wrote it.
    pub cairn_version: String,
    /// Whether non-database files (seed, keys, tokens) are in it.
    pub includes_secrets: bool,
    /// `sqlite` (the event database is `cairn.db` in the archive) or
    /// `postgres` (not in the archive: use `pg_dump`).
    pub event_database: String,
    /// Every file in the archive, in archive order.
    pub files: Vec<FileEntry>,
    /// Files of the data directory left out (secrets without
    /// `--include-secrets`), by relative path.
    pub skipped: Vec<String>,
}

/// One file of an archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the data directory, `/`-separated.
    pub path: String,
    /// `database` (a SQLite snapshot) or `secret` (any other file).
    pub kind: FileKind,
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256 of the contents, hex.
    pub sha256: String,
}

/// What a file in an archive is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// A SQLite database snapshot.
    Database,
    /// Any other file: restored with the secret-file rule (0600).
    Secret,
}

/// Runs `cairn backup`; prints what it wrote.
pub async fn run_backup(args: BackupArgs) -> Result<()> {
    let mut settings = Settings::load(args.config.as_deref()).context("invalid configuration")?;
    if let Some(dir) = args.data_dir {
        settings.data_dir = dir;
    }
    if let Some(url) = args.database_url {
        settings.database_url = Some(url);
    }
    let manifest = backup(&settings, &args.out, args.include_secrets).await?;
    let total: u64 = manifest.files.iter().map(|f| f.bytes).sum();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "wrote {} ({} files, {total} bytes{})",
        args.out.display(),
        manifest.files.len(),
        if manifest.includes_secrets {
            ", secrets included: keep it private"
        } else {
            ""
        }
    )?;
    if !manifest.skipped.is_empty() {
        writeln!(
            out,
            "left out (no --include-secrets): {}",
            manifest.skipped.join(", ")
        )?;
    }
    if manifest.event_database == "postgres" {
        writeln!(
            out,
            "the event database is on Postgres and is not in the archive: back it up with pg_dump \
             (see docs/operations.md)"
        )?;
    }
    Ok(())
}

/// Runs `cairn restore`; prints what it restored.
pub async fn run_restore(args: RestoreArgs) -> Result<()> {
    let manifest = restore(&args.file, &args.data_dir)?;
    writeln!(
        std::io::stdout().lock(),
        "{}",
        restore_summary(&manifest, &args.data_dir)
    )?;
    Ok(())
}

/// What `cairn restore` tells the operator: how much it restored and, when
/// the archive holds no secrets, which files of the node are missing (by
/// name only: their contents were never in the archive).
pub fn restore_summary(manifest: &Manifest, data_dir: &Path) -> String {
    let mut out = format!(
        "restored {} files into {}",
        manifest.files.len(),
        data_dir.display()
    );
    if !manifest.includes_secrets {
        out.push_str(
            "\nthe backup holds no secrets: the node will create a new seed and keys (a new \
             witness key, new wallets) unless you put the old ones back",
        );
        if !manifest.skipped.is_empty() {
            out.push_str(&format!(
                "\nmissing (left out of the backup): {}",
                manifest.skipped.join(", ")
            ));
        }
    }
    if manifest.event_database == "postgres" {
        out.push_str(
            "\nthe event database was on Postgres: restore it with pg_restore and point \
             database_url at it",
        );
    }
    out
}

/// Writes a backup of the node described by `settings` to `out`.
pub async fn backup(settings: &Settings, out: &Path, include_secrets: bool) -> Result<Manifest> {
    let data_dir = &settings.data_dir;
    ensure!(
        data_dir.is_dir(),
        "data directory {} does not exist",
        data_dir.display()
    );
    ensure!(!out.exists(), "{} already exists", out.display());
    let event_database = if settings.database_url().starts_with("sqlite:") {
        "sqlite"
    } else {
        "postgres"
    };
    let created_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());

    // Snapshots go to a private scratch directory beside the archive (same
    // file system as `out`, not necessarily the data directory's).
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let scratch = Scratch::create(parent)?;

    let mut files = Vec::new();
    let mut skipped = Vec::new();
    let mut sources = Vec::new();
    for rel in walk(data_dir)? {
        let path = data_dir.join(&rel);
        let name = rel_name(&rel)?;
        if is_scratch(&name) {
            continue;
        }
        if is_sqlite(&path)? {
            let snapshot = scratch.path().join(format!("{}.db", files.len()));
            vacuum_into(&path, &snapshot)
                .await
                .with_context(|| format!("cannot snapshot {}", path.display()))?;
            sources.push(snapshot);
            files.push((name, FileKind::Database));
        } else if include_secrets {
            sources.push(path);
            files.push((name, FileKind::Secret));
        } else {
            skipped.push(name);
        }
    }
    let mut entries = Vec::with_capacity(files.len());
    for ((name, kind), source) in files.iter().zip(&sources) {
        let (bytes, sha256) = hash_file(source)?;
        entries.push(FileEntry {
            path: name.clone(),
            kind: *kind,
            bytes,
            sha256,
        });
    }
    let manifest = Manifest {
        format: FORMAT.to_owned(),
        version: FORMAT_VERSION,
        created_at,
        cairn_version: env!("CARGO_PKG_VERSION").to_owned(),
        includes_secrets: include_secrets,
        event_database: event_database.to_owned(),
        files: entries,
        skipped,
    };

    let partial = scratch.path().join("archive.tar");
    let file = create_private(&partial)?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    let json = serde_json::to_vec_pretty(&manifest)?;
    append(
        &mut tar,
        MANIFEST_NAME,
        &mut json.as_slice(),
        json.len() as u64,
    )?;
    for (entry, source) in manifest.files.iter().zip(&sources) {
        let mut f =
            File::open(source).with_context(|| format!("cannot read {}", source.display()))?;
        append(&mut tar, &entry.path, &mut f, entry.bytes)?;
    }
    let file = tar
        .into_inner()
        .context("cannot finish the archive")?
        .into_inner()
        .map_err(|e| e.into_error())
        .context("cannot write the archive")?;
    file.sync_all().context("cannot sync the archive")?;
    drop(file);
    // A hard link fails if `out` appeared meanwhile: never overwrite.
    std::fs::hard_link(&partial, out)
        .with_context(|| format!("cannot create {}", out.display()))?;
    Ok(manifest)
}

/// Restores `archive` into `data_dir` (missing or empty), returning its manifest.
pub fn restore(archive: &Path, data_dir: &Path) -> Result<Manifest> {
    if data_dir.exists() {
        let mut entries = std::fs::read_dir(data_dir)
            .with_context(|| format!("cannot read {}", data_dir.display()))?;
        ensure!(
            entries.next().is_none(),
            "{} is not empty: restore only into a new or empty data directory",
            data_dir.display()
        );
    }
    let created = !data_dir.exists();
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    restrict_dir(data_dir)?;
    let result = unpack(archive, data_dir);
    if result.is_err() {
        // The directory was empty: everything in it now is ours.
        if let Ok(entries) = std::fs::read_dir(data_dir) {
            for entry in entries.flatten() {
                let p = entry.path();
                let _ = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }
        if created {
            let _ = std::fs::remove_dir(data_dir);
        }
    }
    result
}

fn unpack(archive: &Path, data_dir: &Path) -> Result<Manifest> {
    let file = File::open(archive).with_context(|| format!("cannot open {}", archive.display()))?;
    let mut tar = tar::Archive::new(std::io::BufReader::new(file));
    let mut entries = tar.entries().context("not a tar archive")?;
    let mut first = entries
        .next()
        .context("the archive is empty")?
        .context("not a tar archive")?;
    ensure!(
        first.path()?.as_ref() == Path::new(MANIFEST_NAME),
        "not a cairn backup (its first entry is not {MANIFEST_NAME})"
    );
    ensure!(
        first.size() <= MAX_MANIFEST_BYTES,
        "the manifest is larger than {MAX_MANIFEST_BYTES} bytes"
    );
    let mut json = Vec::new();
    first.read_to_end(&mut json)?;
    let manifest: Manifest =
        serde_json::from_slice(&json).context("the backup's manifest is not valid")?;
    ensure!(manifest.format == FORMAT, "not a cairn backup");
    ensure!(
        manifest.version == FORMAT_VERSION,
        "backup format version {} is not one this cairn reads ({FORMAT_VERSION})",
        manifest.version
    );
    let mut expected = manifest.files.iter();
    for entry in entries {
        let mut entry = entry.context("the archive is damaged")?;
        let path = entry.path()?.into_owned();
        let want = expected.next().with_context(|| {
            format!(
                "{} is in the archive but not in its manifest",
                path.display()
            )
        })?;
        ensure!(
            path == Path::new(&want.path),
            "the archive's files are not the manifest's ({} instead of {})",
            path.display(),
            want.path
        );
        let target = data_dir.join(safe_relative(&want.path)?);
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            restrict_dir(dir)?;
        }
        let (bytes, sha256) = match want.kind {
            FileKind::Secret => {
                ensure!(
                    entry.size() <= MAX_MANIFEST_BYTES,
                    "{} is too large for a key file",
                    want.path
                );
                let mut contents = Vec::new();
                entry.read_to_end(&mut contents)?;
                private_file::create_new(&target, &contents)?;
                (
                    contents.len() as u64,
                    hex::encode(Sha256::digest(&contents)),
                )
            }
            FileKind::Database => {
                let mut f = create_private(&target)?;
                let copied = copy_hashing(&mut entry, &mut f)?;
                f.sync_all()?;
                copied
            }
        };
        ensure!(
            bytes == want.bytes && sha256 == want.sha256,
            "{} does not match the manifest (damaged archive)",
            want.path
        );
    }
    if let Some(missing) = expected.next() {
        bail!("the archive ends before {} (truncated)", missing.path);
    }
    Ok(manifest)
}

/// `VACUUM INTO`: one consistent snapshot of a live database.
async fn vacuum_into(db: &Path, snapshot: &Path) -> Result<()> {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .create_if_missing(false)
        .busy_timeout(BUSY_TIMEOUT);
    let mut conn = sqlx::SqliteConnection::connect_with(&options).await?;
    let target = snapshot
        .to_str()
        .context("the scratch path is not valid UTF-8")?;
    let result = sqlx::query("VACUUM INTO ?")
        .bind(target)
        .execute(&mut conn)
        .await;
    let _ = conn.close().await;
    result?;
    private_file::restrict_to_owner(snapshot)?;
    Ok(())
}

/// Regular files under `dir`, relative, sorted (symlinks are not followed).
fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let abs = dir.join(&rel);
        for entry in
            std::fs::read_dir(&abs).with_context(|| format!("cannot read {}", abs.display()))?
        {
            let entry = entry?;
            let kind = entry.file_type()?;
            let child = rel.join(entry.file_name());
            if kind.is_dir() {
                stack.push(child);
            } else if kind.is_file() {
                out.push(child);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `rel` as a `/`-separated UTF-8 archive name.
fn rel_name(rel: &Path) -> Result<String> {
    let parts: Option<Vec<&str>> = rel.components().map(|c| c.as_os_str().to_str()).collect();
    let parts = parts.with_context(|| format!("{} is not a UTF-8 path", rel.display()))?;
    Ok(parts.join("/"))
}

/// Journals and temporary files: their content is in the snapshots, or
/// nobody's yet.
fn is_scratch(name: &str) -> bool {
    name.ends_with("-wal")
        || name.ends_with("-shm")
        || name.ends_with("-journal")
        || name.contains(".tmp.")
        || name.ends_with(".log")
}

/// Whether `path` starts with SQLite's file header.
fn is_sqlite(path: &Path) -> Result<bool> {
    const HEADER: &[u8; 16] = b"SQLite format 3\0";
    let mut head = [0u8; 16];
    let mut f = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut read = 0;
    while read < head.len() {
        match f.read(&mut head[read..])? {
            0 => return Ok(false),
            n => read += n,
        }
    }
    Ok(&head == HEADER)
}

/// A manifest path as a relative path with normal components only.
fn safe_relative(name: &str) -> Result<PathBuf> {
    let path = Path::new(name);
    ensure!(
        !name.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_))),
        "refusing the archive path {name:?} (absolute or leaving the data directory)"
    );
    Ok(path.to_path_buf())
}

/// A private scratch directory beside the archive (same file system, so the
/// finished archive is linked into place), removed with what it holds when
/// dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn create(parent: &Path) -> Result<Self> {
        let dir = parent.join(format!(".cairn-backup.{}", std::process::id()));
        std::fs::create_dir(&dir)
            .with_context(|| format!("cannot create the scratch directory {}", dir.display()))?;
        let scratch = Scratch(dir);
        restrict_dir(scratch.path())?;
        Ok(scratch)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A directory that holds keys or databases: owner only (0700).
fn restrict_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict {} to its owner", dir.display()))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// A new file that only its owner may read, restricted before its first byte.
fn create_private(path: &Path) -> Result<File> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    private_file::restrict_to_owner(path)?;
    Ok(f)
}

fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    data: &mut impl Read,
    size: u64,
) -> Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(0o600);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, name, data.take(size))
        .with_context(|| format!("cannot add {name} to the archive"))
}

fn hash_file(path: &Path) -> Result<(u64, String)> {
    let mut f = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    copy_hashing(&mut f, &mut std::io::sink())
}

/// Copies `from` to `to`; returns the byte count and SHA-256 (hex).
fn copy_hashing(from: &mut impl Read, to: &mut impl Write) -> Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
    Ok((total, hex::encode(hasher.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_paths_may_not_leave_the_data_directory() {
        assert!(safe_relative("cairn.db").is_ok());
        assert!(safe_relative("lightning/ldk_node_data.sqlite").is_ok());
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "./x"] {
            assert!(safe_relative(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn journals_and_temporaries_are_not_archived() {
        for name in [
            "cairn.db-wal",
            "cairn.db-shm",
            "a.sqlite-journal",
            "seed.tmp.1.0",
            "lightning/ldk_node.log",
        ] {
            assert!(is_scratch(name), "{name}");
        }
        for name in ["cairn.db", "seed", "nwc.sqlite"] {
            assert!(!is_scratch(name), "{name}");
        }
    }
}
