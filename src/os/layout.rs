//! Where everything lives under the var dir (`locks/`, `logs/`,
//! `master.pid`, …), and creating it safely.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use crate::util::io_text;

/// Where everything lives under the var dir.
#[derive(Debug, Clone)]
pub struct Layout {
    pub var_dir: PathBuf,
}

impl Layout {
    pub fn new(var_dir: &Path) -> Layout {
        Layout {
            var_dir: var_dir.to_path_buf(),
        }
    }
    pub fn locks_dir(&self) -> PathBuf {
        self.var_dir.join("locks")
    }
    pub fn lock_file(&self) -> PathBuf {
        self.locks_dir().join("master.lck")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.var_dir.join("master.pid")
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.var_dir.join("logs")
    }
    pub fn log_file(&self) -> PathBuf {
        self.logs_dir().join("mailman.log")
    }

    /// Creates the var dir and its `locks/` and `logs/` (mode 0755), and
    /// refuses any of them that others may write to without the sticky bit.
    pub fn prepare(&self) -> Result<()> {
        for dir in [self.var_dir.clone(), self.locks_dir(), self.logs_dir()] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&dir)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {}", dir.display(), io_text(&e)))?;
            let meta = fs::metadata(&dir)
                .map_err(|e| anyhow::anyhow!("cannot use {}: {}", dir.display(), io_text(&e)))?;
            if !meta.is_dir() {
                bail!("cannot use {}: not a directory", dir.display());
            }
            let mode = meta.permissions().mode();
            if mode & 0o002 != 0 && mode & 0o1000 == 0 {
                bail!(
                    "refusing to use {}: it is writable by every user (mode {:o}); chmod o-w it",
                    dir.display(),
                    mode & 0o7777
                );
            }
            // An unwritable directory is found now, with its name, rather
            // than later in a less helpful place.
            if nix::unistd::access(&dir, nix::unistd::AccessFlags::W_OK).is_err() {
                bail!("cannot write to {}: permission denied", dir.display());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn world_writable_var_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let err = Layout::new(dir.path()).prepare().unwrap_err().to_string();
        assert!(err.contains("writable by every user"), "{err}");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o1777)).unwrap();
        Layout::new(dir.path()).prepare().unwrap();
    }
}
