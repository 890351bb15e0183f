//! Copies the sidecar's own executable into the shared volume, so that the
//! engine container can run it as its preStop hook whatever its image holds.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// File name of the installed copy.
pub const INSTALLED_NAME: &str = "quiesce-sidecar";

/// Installs the running executable as `dir/quiesce-sidecar`, atomically: the
/// engine either sees no file or a complete one, never a partial copy.
pub fn install_self(dir: &Path) -> io::Result<PathBuf> {
    let source = std::env::current_exe()?;
    std::fs::create_dir_all(dir)?;
    let target = dir.join(INSTALLED_NAME);
    let staging = dir.join(format!(".{INSTALLED_NAME}.{}.tmp", std::process::id()));
    let copy = || -> io::Result<()> {
        std::fs::copy(&source, &staging)?;
        // Readable and executable by the engine's user, writable by nobody else.
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o755))?;
        std::fs::File::open(&staging)?.sync_all()?;
        std::fs::rename(&staging, &target)
    };
    copy().inspect_err(|_| {
        let _ = std::fs::remove_file(&staging);
    })?;
    Ok(target)
}
