//! Small file-system helpers shared by the wallet and the event store.

use std::path::Path;

/// Restricts `path` to its owner (0600): wallet histories and payment records
/// are private. No-op on non-unix platforms.
#[cfg(unix)]
pub(crate) fn restrict_to_owner(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

#[cfg(not(unix))]
pub(crate) fn restrict_to_owner(_path: &Path) -> std::io::Result<()> {
    Ok(())
}
