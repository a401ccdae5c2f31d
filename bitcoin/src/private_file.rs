//! Files that hold secrets (the seed, Nostr keys, tokens) or private records
//! (wallet histories, payment stores).
//!
//! One rule, for every such file the node keeps:
//!
//! - **Secret files** are created by [`create_new`] or [`replace`]: mode 0600
//!   from their first byte (never created readable and narrowed afterwards),
//!   synced before they count as written. When an existing secret file is read
//!   ([`read_secret`]) and group or others have *any* access to it, it is
//!   **refused**, never silently repaired: someone may already have copied it,
//!   so the operator must decide (the error says `chmod 600`).
//! - **Database files** are created by a library (SQLite) with the process
//!   umask; right after opening one, [`restrict_to_owner`] sets 0600. Their
//!   journal files inherit that mode from the database.
//!
//! Errors name the file, never its contents.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Why a private file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PrivateFileError {
    /// Reading, creating or syncing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Group or others may access the file.
    #[error("{path} is readable by others (mode {mode:o}); run chmod 600 on it")]
    Insecure {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// [`create_new`] found the file already there.
    #[error("{path} already exists")]
    Exists {
        /// The file.
        path: PathBuf,
    },
}

impl PrivateFileError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Refuses `path` when group or others have any access to it.
pub fn check_private(path: &Path) -> Result<(), PrivateFileError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|e| PrivateFileError::io(path, e))?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(PrivateFileError::Insecure {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    Ok(())
}

/// Reads a secret file: `None` when it does not exist, an error when others
/// may read it ([`check_private`]).
pub fn read_secret(path: &Path) -> Result<Option<String>, PrivateFileError> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(PrivateFileError::io(path, e)),
        Ok(_) => {}
    }
    check_private(path)?;
    std::fs::read_to_string(path)
        .map(Some)
        .map_err(|e| PrivateFileError::io(path, e))
}

/// Whether [`load_or_create`] found the file or wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The file existed and was read.
    Loaded,
    /// There was none: `generate`'s text was written (0600) and is returned.
    Created,
}

/// Reads the secret file at `path` ([`read_secret`]: refused when others may
/// read it), or, when there is none, writes `generate()` there with
/// [`create_new`] and returns it. When another process creates the file
/// first, its contents win.
pub fn load_or_create(
    path: &Path,
    generate: impl FnOnce() -> String,
) -> Result<(String, Origin), PrivateFileError> {
    if let Some(text) = read_secret(path)? {
        return Ok((text, Origin::Loaded));
    }
    let text = generate();
    match create_new(path, text.as_bytes()) {
        Ok(()) => Ok((text, Origin::Created)),
        Err(PrivateFileError::Exists { .. }) => read_secret(path)?
            .map(|t| (t, Origin::Loaded))
            .ok_or_else(|| PrivateFileError::io(path, std::io::ErrorKind::NotFound.into())),
        Err(e) => Err(e),
    }
}

/// Writes `contents` to a new file `path`, mode 0600, all or nothing: the
/// bytes go to a private temporary file first, which is then linked into
/// place only if `path` does not exist yet ([`PrivateFileError::Exists`]
/// otherwise: two racing starts cannot both write a secret). A crash never
/// leaves a truncated file at `path`.
pub fn create_new(path: &Path, contents: &[u8]) -> Result<(), PrivateFileError> {
    let tmp = write_temporary(path, contents)?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(PrivateFileError::Exists {
                path: path.to_path_buf(),
            })
        }
        Err(e) => return Err(PrivateFileError::io(path, e)),
    }
    sync_parent(path);
    Ok(())
}

/// Replaces `path` (or creates it) with `contents`, mode 0600, atomically:
/// readers see the old or the new file, never a mix.
pub fn replace(path: &Path, contents: &[u8]) -> Result<(), PrivateFileError> {
    let tmp = write_temporary(path, contents)?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(PrivateFileError::io(path, e));
    }
    sync_parent(path);
    Ok(())
}

/// Restricts a file the node created through a library (a database) to its
/// owner (0600). No-op on non-unix platforms.
pub fn restrict_to_owner(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// A synced temporary file beside `path`, private from its first byte, with a
/// name no other writer uses.
fn write_temporary(path: &Path, contents: &[u8]) -> Result<PathBuf, PrivateFileError> {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".tmp.{}.{}", std::process::id(), unique_suffix()));
    let tmp = path.with_file_name(name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = options
        .open(&tmp)
        .and_then(|mut f| f.write_all(contents).and_then(|()| f.sync_all()));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(PrivateFileError::io(path, e));
    }
    Ok(tmp)
}

fn unique_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Makes a rename or link durable; not every platform can open a directory.
fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn created_private_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        assert!(read_secret(&path).unwrap().is_none());
        create_new(&path, b"first").unwrap();
        #[cfg(unix)]
        assert_eq!(mode(&path), 0o600);
        assert!(matches!(
            create_new(&path, b"second"),
            Err(PrivateFileError::Exists { .. })
        ));
        assert_eq!(read_secret(&path).unwrap().as_deref(), Some("first"));
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        replace(&path, b"third").unwrap();
        assert_eq!(read_secret(&path).unwrap().as_deref(), Some("third"));
        #[cfg(unix)]
        assert_eq!(mode(&path), 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn readable_by_others_is_refused_not_repaired() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        create_new(&path, b"s3cr3t").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = read_secret(&path).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, PrivateFileError::Insecure { mode: 0o640, .. }),
            "{text}"
        );
        assert!(
            text.contains("chmod 600") && !text.contains("s3cr3t"),
            "{text}"
        );
        assert_eq!(mode(&path), 0o640, "the file is left as it was");
    }

    #[test]
    fn load_or_create_generates_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let (a, origin) = load_or_create(&path, || "one".into()).unwrap();
        assert_eq!((a.as_str(), origin), ("one", Origin::Created));
        let (b, origin) = load_or_create(&path, || panic!("not called")).unwrap();
        assert_eq!((b.as_str(), origin), ("one", Origin::Loaded));
    }

    #[cfg(unix)]
    #[test]
    fn databases_are_restricted_after_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        std::fs::write(&path, b"").unwrap();
        restrict_to_owner(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
    }
}
