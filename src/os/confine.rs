//! Nothing a runner starts outlives its master, even a `kill -9` of the
//! master (after which a runner's own parent-death signal ends only the
//! runner itself). Two mechanisms, the first that works:
//!
//! - **A cgroup** (Linux, cgroup v2 writable: root on a host, or a delegated
//!   subtree): one per lock file, `<cgroup2>/<our cgroup>/mailman-<hash>`.
//!   Every runner moves itself there between fork and exec, so the kernel
//!   counts every process of its tree, however it daemonises (`setsid`,
//!   double fork). A master that starts finds what a killed predecessor
//!   left in it and kills it; a master that stops kills what is left and
//!   removes the cgroup.
//! - **A record** (elsewhere): the runners' pids and start times, in a file
//!   next to the lock. A master that starts kills what is left of the
//!   recorded runners' process groups: a process in that group, started after
//!   the runner, checked again through a pidfd at the moment it is
//!   signalled. It cannot find a process that left its runner's group
//!   (`setsid`): only the cgroup can.
//!
//! Either way, what is killed is proven ours: in our cgroup, or in a group a
//! runner of ours created, born after it.

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How a master confines its runners' trees.
pub enum Confinement {
    Cgroup {
        dir: PathBuf,
        /// `dir`, open: runners are born in it (`os::vfork`).
        fd: std::os::fd::OwnedFd,
        /// `<dir>/cgroup.procs`, for the child to write "0" to (prepared
        /// before fork: nothing is allocated between fork and exec).
        procs: CString,
    },
    Record {
        file: PathBuf,
    },
}

/// A recorded runner: pid and start time (clock ticks since boot).
pub type Recorded = (i32, u64);

impl Confinement {
    /// The confinement for the master that holds `lock_file` (called with
    /// the lock held: no other master of this var dir runs).
    /// `MAILMAN_CONFINE=record` chooses the record where a cgroup would do
    /// (to see what a machine without one gets).
    pub fn new(lock_file: &Path) -> Confinement {
        let record_only = std::env::var_os("MAILMAN_CONFINE").is_some_and(|v| v == "record");
        if !record_only
            && let Some(dir) = cgroup_dir(lock_file)
            && fs::create_dir_all(&dir).is_ok()
            && let Ok(procs) = CString::new(dir.join("cgroup.procs").as_os_str().as_bytes())
            && let Ok(fd) = fs::File::open(&dir)
        {
            return Confinement::Cgroup {
                dir,
                fd: fd.into(),
                procs,
            };
        }
        let mut file = lock_file.as_os_str().to_owned();
        file.push(".runners");
        Confinement::Record {
            file: PathBuf::from(file),
        }
    }

    /// What it is, for the log.
    pub fn describe(&self) -> String {
        match self {
            Confinement::Cgroup { dir, .. } => format!("cgroup {}", dir.display()),
            Confinement::Record { file } => format!("records in {}", file.display()),
        }
    }

    /// The cgroup's directory, open, and its `cgroup.procs` (which a runner
    /// writes "0" to between fork and exec where it cannot be born in the
    /// cgroup); `None` without a cgroup.
    pub fn cgroup(&self) -> Option<(std::os::fd::RawFd, &CString)> {
        use std::os::fd::AsRawFd;
        match self {
            Confinement::Cgroup { fd, procs, .. } => Some((fd.as_raw_fd(), procs)),
            Confinement::Record { .. } => None,
        }
    }

    /// Kills what a master of this lock file left behind (one killed with
    /// `kill -9`); returns the pids killed.
    pub fn kill_leftovers(&self) -> Vec<i32> {
        match self {
            Confinement::Cgroup { dir, .. } => kill_cgroup(dir),
            Confinement::Record { file } => {
                let recorded = read_record(file);
                let killed = kill_recorded(&recorded);
                let _ = fs::remove_file(file);
                killed
            }
        }
    }

    /// Records the runners now running (the record only; cheap to call
    /// once per turn of the event loop when something changed).
    pub fn record(&self, runners: &[Recorded]) {
        let Confinement::Record { file } = self else {
            return;
        };
        let mut text = String::new();
        for (pid, start) in runners {
            text.push_str(&format!("{pid} {start}\n"));
        }
        let mut tmp = file.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let written = fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .and_then(|()| fs::rename(&tmp, file));
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
    }

    /// At the master's exit: what is left is killed, the cgroup removed or
    /// the record emptied.
    pub fn close(&self) {
        match self {
            Confinement::Cgroup { dir, .. } => {
                kill_cgroup(dir);
                let _ = fs::remove_dir(dir);
            }
            Confinement::Record { file } => {
                let _ = fs::remove_file(file);
            }
        }
    }
}

/// Between fork and exec, in the child: joins the cgroup whose
/// `cgroup.procs` is `procs`. Async-signal-safe (open, write, close); a
/// failure leaves the child unconfined, as without a cgroup.
pub fn join(procs: &CString) {
    // SAFETY: plain system calls on a NUL-terminated path made before fork.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd >= 0 {
            libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
        }
    }
}

/// `<cgroup2 mount>/<this process's cgroup>/mailman-<hash of lock_file>`,
/// where a cgroup v2 hierarchy is mounted (Linux).
fn cgroup_dir(lock_file: &Path) -> Option<PathBuf> {
    #[cfg(target_os = "linux")]
    {
        let mounts = fs::read_to_string("/proc/self/mountinfo").ok()?;
        let mount = mounts.lines().find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            right
                .starts_with("cgroup2 ")
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
        })?;
        let own = fs::read_to_string("/proc/self/cgroup").ok()?;
        let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
        let hash = sha1_smol::Sha1::from(lock_file.as_os_str().as_bytes())
            .digest()
            .to_string();
        Some(
            mount
                .join(path.trim_start_matches('/'))
                .join(format!("mailman-{}", &hash[..12])),
        )
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = lock_file;
        None
    }
}

/// Kills every process in the cgroup `dir` (its `cgroup.kill` where the
/// kernel has one, else each pid it lists), until it is empty or a few
/// seconds pass. Every process there is ours.
fn kill_cgroup(dir: &Path) -> Vec<i32> {
    let procs = || -> Vec<i32> {
        fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    };
    let first = procs();
    if first.is_empty() {
        return first;
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left = procs();
        if left.is_empty() || Instant::now() >= deadline {
            break;
        }
        if fs::write(dir.join("cgroup.kill"), "1").is_err() {
            for pid in &left {
                // SAFETY: a plain system call; the pid is in our cgroup.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    first
}

fn read_record(file: &Path) -> Vec<Recorded> {
    fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (pid, start) = l.split_once(' ')?;
            Some((pid.parse().ok()?, start.trim().parse().ok()?))
        })
        .collect()
}

/// Kills the members of each recorded runner's process group born after it,
/// each checked again through a pidfd just before it is signalled.
fn kill_recorded(recorded: &[Recorded]) -> Vec<i32> {
    #[cfg(target_os = "linux")]
    {
        let mut killed = Vec::new();
        for (pid, stat) in crate::os::procinfo::processes() {
            let (Some(pgid), Some(start)) = (stat.number(5), stat.start_time()) else {
                continue;
            };
            let ours = recorded
                .iter()
                .any(|(runner, born)| pgid == *runner as u64 && start >= *born);
            if ours && !stat.exited() && kill_if_same(pid, pgid, start) {
                killed.push(pid);
            }
        }
        killed
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = recorded;
        Vec::new()
    }
}

/// SIGKILL to `pid` through a pidfd, if it is still the process seen (the
/// same group and start time) once the pidfd holds it.
#[cfg(target_os = "linux")]
fn kill_if_same(pid: i32, pgid: u64, start: u64) -> bool {
    // SAFETY: plain system calls; the pidfd is closed below.
    unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32;
        if fd < 0 {
            return false;
        }
        let same = crate::os::procinfo::Stat::read(pid)
            .is_some_and(|s| s.number(5) == Some(pgid) && s.start_time() == Some(start));
        let sent = same
            && libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd,
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            ) == 0;
        libc::close(fd);
        sent
    }
}
