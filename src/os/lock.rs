//! The master lock and the pid file (docs/master.md, "Lock and pid file").
//!
//! The lock is an `flock` on `locks/master.lck`: the kernel drops it when the
//! master dies, so it can never go stale. Its content (pid, host, start time,
//! PID namespace, executable) is informational and lets control commands check
//! a pid before signalling it. `master.pid` is written for Mailman's tools.
//! [`LockWatch`] says when the lock's directory changes, so that a master
//! whose lock file was deleted can take it again (`master::lock_keeper`).
//!
//! Not here: deciding what to do with a probe's answer (that is `commands`).

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub use super::layout::Layout;
use crate::os::procinfo::Identity;
use crate::util::io_text;

/// What the lock file says about the master holding it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockInfo {
    pub pid: Option<i32>,
    pub host: Option<String>,
    pub start_time: Option<u64>,
    pub pidns: Option<String>,
    pub exe: Option<PathBuf>,
}

impl LockInfo {
    pub fn of_self() -> LockInfo {
        let me = Identity::of_self();
        LockInfo {
            pid: Some(std::process::id() as i32),
            host: nix::unistd::gethostname()
                .ok()
                .map(|h| h.to_string_lossy().into_owned()),
            start_time: me.as_ref().map(|m| m.start_time),
            pidns: me.as_ref().and_then(|m| m.pidns.clone()),
            exe: me.and_then(|m| m.exe),
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut line = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                out.push_str(&format!("{k}={v}\n"));
            }
        };
        line("pid", self.pid.map(|p| p.to_string()));
        line("host", self.host.clone());
        line("start_time", self.start_time.map(|t| t.to_string()));
        line("pidns", self.pidns.clone());
        line("exe", self.exe.as_ref().map(|p| p.display().to_string()));
        out
    }

    pub fn parse(text: &str) -> LockInfo {
        let mut info = LockInfo::default();
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            match k {
                "pid" => info.pid = v.parse().ok().filter(|p| *p > 0),
                "host" => info.host = Some(v.to_string()),
                "start_time" => info.start_time = v.parse().ok(),
                "pidns" => info.pidns = Some(v.to_string()),
                "exe" => info.exe = Some(PathBuf::from(v)),
                _ => {}
            }
        }
        info
    }

    /// The recorded identity, when the file holds enough to compare.
    pub fn identity(&self) -> Option<Identity> {
        Some(Identity {
            pid: self.pid?,
            start_time: self.start_time?,
            pidns: self.pidns.clone(),
            exe: self.exe.clone(),
        })
    }
}

/// The first line of the lock file, in flufl.lock's format
/// (`LOCKFILE|HOST|PID|RANDOM`), which Mailman's own `mailman status` and
/// `mailman start` read: they then see our master as running (or, after a
/// crash, stale). HOST is what Python's `socket.getfqdn()` would say.
fn flufl_line(lock_file: &Path) -> String {
    format!(
        "{}|{}|{}|{}",
        lock_file.display(),
        fqdn(),
        std::process::id(),
        crate::util::jitter(u64::MAX)
    )
}

/// Python's `socket.getfqdn()`, as far as `/etc/hosts` answers it (a static
/// binary does no DNS): the host name's address, the first `/etc/hosts`
/// line for that address, its first name with a dot, else its first name.
/// Read once per process (our lock's claim and the stale-lock check both
/// ask at start-up).
pub fn fqdn() -> &'static str {
    static FQDN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    FQDN.get_or_init(read_fqdn)
}

fn read_fqdn() -> String {
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".into());
    let hosts = fs::read_to_string("/etc/hosts").unwrap_or_default();
    let entries: Vec<Vec<&str>> = hosts
        .lines()
        .map(|l| {
            l.split('#')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect::<Vec<_>>()
        })
        .filter(|f| f.len() >= 2)
        .collect();
    let Some(addr) = entries
        .iter()
        .find(|f| f[1..].contains(&host.as_str()))
        .map(|f| f[0])
    else {
        return host;
    };
    let Some(names) = entries.iter().find(|f| f[0] == addr).map(|f| &f[1..]) else {
        return host;
    };
    names
        .iter()
        .find(|n| n.contains('.'))
        .unwrap_or(&names[0])
        .to_string()
}

/// The master's hold on the lock; released when dropped (or when the
/// process dies, however it dies).
#[derive(Debug)]
pub struct MasterLock {
    file: File,
}

impl MasterLock {
    /// Empties the lock file before a clean exit, so that Mailman's tools
    /// read "not running" rather than a stale pid. The lock is still held.
    pub fn clear(&self) {
        let _ = self.file.set_len(0);
    }

    /// Whether `path` is still the file this lock holds (not deleted,
    /// renamed away or replaced).
    pub fn is_at(&self, path: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (fs::symlink_metadata(path), self.file.metadata()) {
            (Ok(there), Ok(held)) => there.dev() == held.dev() && there.ino() == held.ino(),
            _ => false,
        }
    }

    /// Takes the lock again at the layout's path after the file it held
    /// was deleted or replaced (the directories are made again if need be):
    /// while the held file is unreachable, a second master could take a new
    /// one and run beside this one. `Ok(false)`: the file is still the one
    /// held, nothing done; `Held` if another master took the new one first.
    pub fn retake(&mut self, layout: &Layout) -> Result<bool, AcquireError> {
        if self.is_at(&layout.lock_file()) {
            return Ok(false);
        }
        if let Some(dir) = layout.lock_file().parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(|e| AcquireError::Io {
                    path: dir.display().to_string(),
                    text: io_text(&e),
                })?;
        }
        // The old file goes (and its lock with it) once the new one is held.
        // No retry: the event loop calls this.
        *self = acquire_within(layout, Duration::ZERO)?;
        Ok(true)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    #[error("GNU Mailman is already running")]
    Held,
    #[error("cannot lock {path}: {text}")]
    Io { path: String, text: String },
}

fn open_nofollow(path: &Path, write: bool) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    if write {
        opts.write(true).create(true).mode(0o600);
    }
    opts.open(path)
}

/// Takes the master lock with a non-blocking try, retried for a short moment
/// so that a control command probing at that instant cannot make it fail.
pub fn acquire(layout: &Layout) -> Result<MasterLock, AcquireError> {
    acquire_within(layout, Duration::from_millis(300))
}

fn acquire_within(layout: &Layout, patience: Duration) -> Result<MasterLock, AcquireError> {
    let path = layout.lock_file();
    let io_err = |e: io::Error| AcquireError::Io {
        path: path.display().to_string(),
        text: io_text(&e),
    };
    let mut file = open_nofollow(&path, true).map_err(io_err)?;
    let deadline = Instant::now() + patience;
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(TryLockError::WouldBlock) => return Err(AcquireError::Held),
            Err(TryLockError::Error(e)) => return Err(io_err(e)),
        }
    }
    let info = format!("{}\n{}", flufl_line(&path), LockInfo::of_self().render());
    file.set_len(0)
        .and_then(|()| file.write_all(info.as_bytes()))
        .map_err(io_err)?;
    Ok(MasterLock { file })
}

/// Tells when the lock file's directory loses or gains an entry, or goes:
/// what may have taken the master's lock file away (on Linux, inotify: one
/// descriptor to poll, which never wakes an idle master; elsewhere, none).
pub struct LockWatch {
    #[cfg(target_os = "linux")]
    inotify: nix::sys::inotify::Inotify,
    #[cfg(target_os = "linux")]
    dir: PathBuf,
    #[cfg(not(target_os = "linux"))]
    never: std::convert::Infallible,
}

#[cfg(target_os = "linux")]
impl LockWatch {
    const EVENTS: nix::sys::inotify::AddWatchFlags =
        nix::sys::inotify::AddWatchFlags::from_bits_truncate(
            libc::IN_DELETE
                | libc::IN_MOVED_FROM
                | libc::IN_MOVED_TO
                | libc::IN_DELETE_SELF
                | libc::IN_MOVE_SELF,
        );

    /// A watch on `lock_file`'s directory; `None` if it cannot be had.
    pub fn new(lock_file: &Path) -> Option<LockWatch> {
        use nix::sys::inotify::{InitFlags, Inotify};
        let dir = lock_file.parent()?.to_path_buf();
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok()?;
        inotify.add_watch(&dir, Self::EVENTS).ok()?;
        Some(LockWatch { inotify, dir })
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.inotify)
    }

    /// Reads what happened (the caller then checks the lock: events say
    /// only that something changed).
    pub fn drain(&self) {
        while matches!(self.inotify.read_events(), Ok(e) if !e.is_empty()) {}
    }

    /// Watches the directory again (once it is made anew; a watch on one
    /// that is already watched changes nothing).
    pub fn rewatch(&self) {
        let _ = self.inotify.add_watch(&self.dir, Self::EVENTS);
    }
}

#[cfg(not(target_os = "linux"))]
impl LockWatch {
    pub fn new(_lock_file: &Path) -> Option<LockWatch> {
        None
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self.never {}
    }

    pub fn drain(&self) {}

    pub fn rewatch(&self) {}
}

/// What a control command learns from the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Nobody holds the lock (or there is no lock file).
    Free,
    /// A master holds it; what it wrote there.
    Held(LockInfo),
    /// The lock cannot be tested (permissions, I/O error).
    Unknown(String),
}

/// Tests the lock without disturbing a master: a shared try-lock held for an
/// instant. Never creates the lock file.
pub fn probe(layout: &Layout) -> Probe {
    let path = layout.lock_file();
    let mut file = match open_nofollow(&path, false) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Probe::Free,
        Err(e) => return Probe::Unknown(format!("{}: {}", path.display(), io_text(&e))),
    };
    match file.try_lock_shared() {
        Ok(()) => {
            let _ = file.unlock();
            Probe::Free
        }
        Err(TryLockError::WouldBlock) => {
            // A few lines; anything longer is not the master's. Read in
            // one go (an empty string is grown from a 32-byte read).
            let mut text = String::with_capacity(4096);
            let _ = (&mut file).take(4096).read_to_string(&mut text);
            Probe::Held(LockInfo::parse(&text))
        }
        Err(TryLockError::Error(e)) => {
            Probe::Unknown(format!("{}: {}", path.display(), io_text(&e)))
        }
    }
}

/// Writes `master.pid` atomically: a temporary file renamed over it, so a
/// reader sees the old file or the whole new one. Not fsynced: a pid file
/// means something only while its master lives, and after a power loss it
/// is stale whatever it holds (the lock decides who runs), so a disk flush
/// would only delay the first runner (about a millisecond, issue 19).
pub fn write_pid_file(layout: &Layout) -> Result<()> {
    let path = layout.pid_file();
    // The spec says 0644.
    crate::util::replace_file(&path, format!("{}\n", std::process::id()).as_bytes(), 0o644)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {}", path.display(), io_text(&e)))
}

/// Removes `master.pid` if it still names this process.
pub fn remove_pid_file(layout: &Layout) {
    if let Ok(PidFile::Pid(pid)) = read_pid_file(layout)
        && pid == std::process::id() as i32
    {
        let _ = fs::remove_file(layout.pid_file());
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PidFile {
    Missing,
    Pid(i32),
}

/// Reads `master.pid` without following a symlink; garbage is an error.
pub fn read_pid_file(layout: &Layout) -> Result<PidFile> {
    let path = layout.pid_file();
    let mut text = String::new();
    match open_nofollow(&path, false) {
        Ok(mut f) => {
            // A pid file is a few bytes; anything huge is not ours.
            (&mut f)
                .take(64)
                .read_to_string(&mut text)
                .with_context(|| format!("{} unreadable", path.display()))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(PidFile::Missing),
        Err(e) => bail!("{} unreadable: {}", path.display(), io_text(&e)),
    }
    match text.trim().parse::<i32>() {
        Ok(pid) if pid > 0 => Ok(PidFile::Pid(pid)),
        _ => bail!("{} does not hold a pid", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn mode_of(path: &Path) -> Option<u32> {
        fs::symlink_metadata(path).ok().map(|m| m.mode() & 0o7777)
    }

    #[test]
    fn lock_is_exclusive_and_probe_sees_it() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        layout.prepare().unwrap();
        assert_eq!(probe(&layout), Probe::Free);
        let held = acquire(&layout).unwrap();
        match probe(&layout) {
            Probe::Held(info) => assert_eq!(info.pid, Some(std::process::id() as i32)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(acquire(&layout), Err(AcquireError::Held)));
        assert_eq!(mode_of(&layout.lock_file()), Some(0o600));
        drop(held);
        assert_eq!(probe(&layout), Probe::Free);
    }

    #[test]
    fn pid_file_round_trip_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        assert_eq!(read_pid_file(&layout).unwrap(), PidFile::Missing);
        write_pid_file(&layout).unwrap();
        assert_eq!(
            read_pid_file(&layout).unwrap(),
            PidFile::Pid(std::process::id() as i32)
        );
        assert_eq!(mode_of(&layout.pid_file()), Some(0o644));
        remove_pid_file(&layout);
        assert_eq!(read_pid_file(&layout).unwrap(), PidFile::Missing);
        fs::write(layout.pid_file(), "garbage\n").unwrap();
        assert!(read_pid_file(&layout).is_err());
        fs::remove_file(layout.pid_file()).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", layout.pid_file()).unwrap();
        assert!(read_pid_file(&layout).is_err());
    }

    #[test]
    fn lock_file_reads_as_flufl_and_as_ours() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        layout.prepare().unwrap();
        let held = acquire(&layout).unwrap();
        let text = fs::read_to_string(layout.lock_file()).unwrap();
        // flufl.lock splits the whole (stripped) content on '|' into 4.
        let fields: Vec<&str> = text.trim().split('|').collect();
        assert_eq!(fields.len(), 4, "{text}");
        assert_eq!(fields[0], layout.lock_file().display().to_string());
        assert_eq!(fields[2], std::process::id().to_string());
        assert_eq!(LockInfo::parse(&text), LockInfo::of_self());
        held.clear();
        assert_eq!(fs::read_to_string(layout.lock_file()).unwrap(), "");
        assert!(matches!(probe(&layout), Probe::Held(_)));
    }

    #[test]
    fn lock_info_round_trip() {
        let info = LockInfo::of_self();
        assert_eq!(LockInfo::parse(&info.render()), info);
        assert!(info.identity().is_some());
    }
}
