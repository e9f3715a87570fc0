//! Mailman's database-creation lock (`<lock_dir>/dbcreate.lck`), left
//! behind by a process that died holding it, broken at start-up.
//!
//! Mailman takes this lock (flufl.lock) around its database set-up in every
//! runner and in `init`. A runner stopped while it initialises (a `docker
//! stop` seconds after a start) is killed before Mailman has installed its
//! signal handlers, and one that held the lock leaves it: the lock file is a
//! hard link to the holder's claim file `dbcreate.lck|HOST|PID|RANDOM`,
//! whose text is its own path. The next start's `init` and runners then wait
//! until the lock's lifetime has run out (15 s and more). flufl.lock calls a
//! lock *stale* when its claim names this host and a pid that no process
//! has; it waits out such a lock, and the master breaks it instead, before
//! `init` and the runners start, with the same test. "This host" is the
//! node name, or the name flufl.lock writes (Python's `socket.getfqdn()`,
//! which the master reads from `/etc/hosts`: `os::lock::fqdn`). Claim files
//! of dead processes (left the same way) go too.
//!
//! Not for: any other lock of Mailman's (those of lists, of the master), or a
//! claim naming another host (a var dir shared between hosts), or a live pid.

use std::io::Read;
use std::path::Path;

/// The lock's file name in Mailman's lock directory.
const LOCK: &str = "dbcreate.lck";

/// What was removed: the lock (with the pid that held it), if it was
/// stale, and how many claim files of dead processes.
#[derive(Debug, Default, PartialEq)]
pub struct Broken {
    pub lock: Option<i32>,
    pub claims: usize,
}

/// Removes `lock_dir`'s `dbcreate.lck` if it is stale, and the claim files
/// of dead processes on this host. Errors (an unreadable directory, a file
/// that cannot be removed) leave things as they are: Mailman then waits out
/// the lock, as it would without us.
pub fn break_stale(lock_dir: &Path) -> Broken {
    let mut broken = Broken::default();
    let Ok(node) = nix::unistd::gethostname() else {
        return broken;
    };
    let Some(node) = node.to_str() else {
        return broken;
    };
    let host = [node, crate::os::lock::fqdn()];
    let host = &host[..];
    let lock = lock_dir.join(LOCK);
    if let Some(pid) = read_claim(&lock).and_then(|claim| dead_holder(&claim, &lock, host)) {
        // Read again just before: a live process may have taken it since.
        let still = read_claim(&lock).and_then(|claim| dead_holder(&claim, &lock, host));
        if still == Some(pid) && std::fs::remove_file(&lock).is_ok() {
            broken.lock = Some(pid);
        }
    }
    let Ok(entries) = std::fs::read_dir(lock_dir) else {
        return broken;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let is_claim = name
            .to_str()
            .is_some_and(|n| n.starts_with("dbcreate.lck|"));
        if is_claim
            && dead_holder(&path.to_string_lossy(), &lock, host).is_some()
            && std::fs::remove_file(&path).is_ok()
        {
            broken.claims += 1;
        }
    }
    broken
}

/// The claim a lock file names (its text), if it is a regular file that can
/// be read. Opened without blocking and without following a symbolic link:
/// a FIFO or a device put in its place is not read (its open would wait for
/// a writer, or do what the device does), and start-up goes on.
fn read_claim(lock: &Path) -> Option<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY)
        .open(lock)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    file.take(4096).read_to_string(&mut text).ok()?;
    Some(text.trim().to_string())
}

/// The pid of `claim` (`LOCK|HOST|PID|RANDOM`) if it is a claim of `lock` by
/// a process of this host that no longer exists.
fn dead_holder(claim: &str, lock: &Path, host: &[&str]) -> Option<i32> {
    let mut parts = claim.split('|');
    let (file, their_host, pid, random) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || Path::new(file) != lock || !host.contains(&their_host) {
        return None;
    }
    random.parse::<u64>().ok()?;
    let pid: i32 = pid.parse().ok().filter(|p| *p > 0)?;
    // Signal 0: nothing is sent; ESRCH means no process has this pid.
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Err(nix::errno::Errno::ESRCH) => Some(pid),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn dead_pid() -> i32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        pid
    }

    fn claim(dir: &Path, host: &str, pid: i32) -> PathBuf {
        let lock = dir.join(LOCK);
        let name = format!("{}|{host}|{pid}|12345", lock.display());
        std::fs::write(&name, &name).unwrap();
        PathBuf::from(name)
    }

    fn host() -> String {
        nix::unistd::gethostname().unwrap().into_string().unwrap()
    }

    #[test]
    fn a_lock_held_by_a_dead_process_of_this_host_is_broken() {
        let dir = tempfile::tempdir().unwrap();
        let pid = dead_pid();
        let held = claim(dir.path(), &host(), pid);
        std::fs::hard_link(&held, dir.path().join(LOCK)).unwrap();
        let litter = claim(dir.path(), &host(), dead_pid());
        let b = break_stale(dir.path());
        assert_eq!(
            b,
            Broken {
                lock: Some(pid),
                claims: 2
            }
        );
        assert!(!dir.path().join(LOCK).exists());
        assert!(!held.exists() && !litter.exists());
    }

    #[test]
    fn a_live_holder_another_host_or_a_strange_file_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let live = claim(dir.path(), &host(), std::process::id() as i32);
        std::fs::hard_link(&live, dir.path().join(LOCK)).unwrap();
        let other = claim(dir.path(), "elsewhere.example", dead_pid());
        let odd = dir.path().join("dbcreate.lck|not a claim");
        std::fs::write(&odd, "").unwrap();
        assert_eq!(break_stale(dir.path()), Broken::default());
        assert!(dir.path().join(LOCK).exists() && live.exists() && other.exists() && odd.exists());
        // Another host's lock, its holder's pid gone here: not ours to judge.
        std::fs::remove_file(dir.path().join(LOCK)).unwrap();
        std::fs::hard_link(&other, dir.path().join(LOCK)).unwrap();
        assert_eq!(break_stale(dir.path()), Broken::default());
        assert!(dir.path().join(LOCK).exists());
    }

    /// flufl.lock names the host as Python's `socket.getfqdn()` does, which
    /// is not always the node name (on the project's VM: `localhost`
    /// against `vm`).
    #[test]
    fn a_claim_naming_the_host_as_python_does_is_this_host_s() {
        let dir = tempfile::tempdir().unwrap();
        let pid = dead_pid();
        let held = claim(dir.path(), crate::os::lock::fqdn(), pid);
        std::fs::hard_link(&held, dir.path().join(LOCK)).unwrap();
        assert_eq!(break_stale(dir.path()).lock, Some(pid));
        assert!(!dir.path().join(LOCK).exists());
    }

    #[test]
    fn a_fifo_in_the_lock_s_place_is_not_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join(LOCK);
        nix::unistd::mkfifo(&lock, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let path = dir.path().to_path_buf();
        std::thread::spawn(move || tx.send(break_stale(&path)));
        // Without a non-blocking open this waits for a writer that never comes.
        let broken = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("break_stale waited on a FIFO");
        assert_eq!(broken, Broken::default());
        assert!(lock.exists());
    }

    #[test]
    fn no_lock_directory_is_nothing_to_do() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(break_stale(&dir.path().join("missing")), Broken::default());
    }
}
