//! Where everything lives under the var dir (`locks/`, `logs/`,
//! `master.pid`, …), and creating it safely.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use crate::util::io_text;

/// Where the master's files live. By default everything is under the var
/// dir (`locks/master.lck`, `master.pid`, `master.sock`, `logs/`, `queue/`);
/// a Mailman Core configuration moves the lock, pid file, logs and queues
/// where Mailman's own tools look for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub var_dir: PathBuf,
    lock_file: PathBuf,
    pid_file: PathBuf,
    socket: PathBuf,
    log_dir: PathBuf,
    queue_dir: PathBuf,
}

impl Layout {
    /// Everything under `var_dir`.
    pub fn new(var_dir: &Path) -> Layout {
        Layout {
            var_dir: var_dir.to_path_buf(),
            lock_file: var_dir.join("locks").join("master.lck"),
            pid_file: var_dir.join("master.pid"),
            socket: var_dir.join("master.sock"),
            log_dir: var_dir.join("logs"),
            queue_dir: var_dir.join("queue"),
        }
    }

    /// `self` with the lock, pid file, log and queue directories moved.
    pub fn with(
        mut self,
        lock_file: PathBuf,
        pid_file: PathBuf,
        log_dir: PathBuf,
        queue_dir: PathBuf,
    ) -> Layout {
        self.lock_file = lock_file;
        self.pid_file = pid_file;
        self.log_dir = log_dir;
        self.queue_dir = queue_dir;
        self
    }

    /// `self` with the control socket moved.
    pub fn with_socket(mut self, socket: PathBuf) -> Layout {
        self.socket = socket;
        self
    }

    pub fn lock_file(&self) -> PathBuf {
        self.lock_file.clone()
    }
    pub fn pid_file(&self) -> PathBuf {
        self.pid_file.clone()
    }
    /// The control socket.
    pub fn socket(&self) -> PathBuf {
        self.socket.clone()
    }
    pub fn log_file(&self) -> PathBuf {
        self.log_dir.join("mailman.log")
    }
    /// Where the master keeps a copy of a configuration it read from a pipe
    /// (`Config::piped`), for its runners: beside the pid file.
    pub fn config_copy(&self) -> PathBuf {
        self.pid_file.with_file_name("master.config.toml")
    }
    /// Where the queues are (`QUEUE/NAME/`).
    pub fn queue_dir(&self) -> PathBuf {
        self.queue_dir.clone()
    }

    /// Creates the var dir, the lock's and pid file's directories and the
    /// log directory (mode 0755), and refuses any of them that others may
    /// write to without the sticky bit.
    pub fn prepare(&self) -> Result<()> {
        let parent = |p: &Path| p.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut dirs = vec![self.var_dir.clone()];
        for dir in [
            parent(&self.lock_file),
            parent(&self.pid_file),
            parent(&self.socket),
            self.log_dir.clone(),
        ] {
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        for dir in dirs {
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
            // An unwritable directory is found now, with its name and the
            // real cause (a read-only file system is not a permission),
            // rather than later in a less helpful place.
            if let Err(e) = nix::unistd::access(&dir, nix::unistd::AccessFlags::W_OK) {
                let uid = nix::unistd::geteuid();
                let hint = if e == nix::errno::Errno::EACCES && !uid.is_root() {
                    let user = user_name(uid.as_raw()).unwrap_or_else(|| uid.to_string());
                    format!(
                        " (as user {user}: chown -R {user} {} to let it)",
                        self.var_dir.display()
                    )
                } else {
                    String::new()
                };
                bail!("cannot write to {}: {}{hint}", dir.display(), e.desc());
            }
        }
        Ok(())
    }
}

/// A user's name from `/etc/passwd` (no NSS: the binary is static).
fn user_name(uid: u32) -> Option<String> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_string())
    })
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
