//! Who a pid is: start time, PID namespace and executable, so that a control
//! command can tell the master from an unrelated process that reuses its pid.
//!
//! Linux reads `/proc`; elsewhere `sysinfo` gives start time (whole seconds)
//! and executable, and there is no PID namespace to compare.

use std::path::PathBuf;

/// A process's identity as recorded in the lock file and compared before any
/// signal is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub pid: i32,
    /// Linux: clock ticks since boot (field 22 of `/proc/PID/stat`);
    /// elsewhere: seconds since the epoch.
    pub start_time: u64,
    /// `pid:[INODE]` as `readlink /proc/PID/ns/pid` gives it; `None` where
    /// there are no PID namespaces or it cannot be read.
    pub pidns: Option<String>,
    pub exe: Option<PathBuf>,
}

impl Identity {
    pub fn of_self() -> Option<Identity> {
        Identity::of(std::process::id() as i32)
    }

    /// The identity of a live process, or `None` if there is no such process
    /// (or it cannot be inspected).
    #[cfg(target_os = "linux")]
    pub fn of(pid: i32) -> Option<Identity> {
        if pid <= 0 {
            return None;
        }
        let start_time = Stat::read(pid)?.start_time()?;
        let link = |what: &str| std::fs::read_link(format!("/proc/{pid}/{what}")).ok();
        let exe = link("exe").map(|p| {
            let s = p.to_string_lossy();
            match s.strip_suffix(" (deleted)") {
                Some(live) => PathBuf::from(live),
                None => p,
            }
        });
        Some(Identity {
            pid,
            start_time,
            pidns: link("ns/pid").map(|p| p.to_string_lossy().into_owned()),
            exe,
        })
    }

    #[cfg(not(target_os = "linux"))]
    pub fn of(pid: i32) -> Option<Identity> {
        use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};
        if pid <= 0 {
            return None;
        }
        let mut sys = System::new();
        let p = Pid::from_u32(pid as u32);
        sys.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[p]),
            true,
            ProcessRefreshKind::nothing().with_exe(sysinfo::UpdateKind::Always),
        );
        let proc_ = sys.process(p)?;
        Some(Identity {
            pid,
            start_time: proc_.start_time(),
            pidns: None,
            exe: proc_.exe().map(|p| p.to_path_buf()),
        })
    }

    /// Whether the live process `self` is the one `recorded` describes. Parts
    /// that either side could not read are not compared; pid and start time
    /// always are.
    pub fn matches(&self, recorded: &Identity) -> bool {
        fn opt_eq<T: PartialEq>(a: &Option<T>, b: &Option<T>) -> bool {
            match (a, b) {
                (Some(x), Some(y)) => x == y,
                _ => true,
            }
        }
        self.pid == recorded.pid
            && self.start_time == recorded.start_time
            && opt_eq(&self.pidns, &recorded.pidns)
            && opt_eq(&self.exe, &recorded.exe)
    }
}

/// `/proc/PID/stat`, from field 3 (the state) on: the command name before
/// it may hold spaces and parentheses, so fields resume after the last ')'.
#[cfg(target_os = "linux")]
pub struct Stat(Vec<String>);

#[cfg(target_os = "linux")]
impl Stat {
    pub fn read(pid: i32) -> Option<Stat> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &text[text.rfind(')')? + 1..];
        Some(Stat(rest.split_whitespace().map(str::to_string).collect()))
    }

    /// Field `n` as proc(5) numbers them (3 and up), as a number.
    pub fn number(&self, n: usize) -> Option<u64> {
        self.0.get(n.checked_sub(3)?)?.parse().ok()
    }

    /// Exited (a zombie, or dead): gone for our purposes.
    pub fn exited(&self) -> bool {
        self.0.first().is_none_or(|s| s == "Z" || s == "X")
    }

    pub fn ppid(&self) -> Option<u64> {
        self.number(4)
    }

    /// Clock ticks since boot.
    pub fn start_time(&self) -> Option<u64> {
        self.number(22)
    }
}

/// Every process in `/proc` (this PID namespace), with its stat line.
#[cfg(target_os = "linux")]
pub fn processes() -> impl Iterator<Item = (i32, Stat)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, Stat::read(pid)?)))
}

/// This process's live children, with their process groups: at the end of
/// the master, the orphans it adopted as subreaper (a runner's or handler's
/// children whose parent died). Not on other systems (no subreaper there).
///
/// Read from each of our threads' `children` list where the kernel has
/// them (a few small files), else from a scan of `/proc` (every process's
/// stat: tens of milliseconds on a busy host, at every stop).
pub fn live_children() -> Vec<(i32, i32)> {
    #[cfg(target_os = "linux")]
    {
        if let Some(kids) = children_lists() {
            return kids
                .into_iter()
                .filter_map(|pid| {
                    let st = Stat::read(pid)?;
                    (!st.exited()).then_some((pid, st.number(5)? as i32))
                })
                .collect();
        }
        let me = u64::from(std::process::id());
        processes()
            .filter(|(_, st)| !st.exited() && st.ppid() == Some(me))
            .filter_map(|(pid, st)| Some((pid, st.number(5)? as i32)))
            .collect()
    }
    #[cfg(not(target_os = "linux"))]
    {
        Vec::new()
    }
}

/// The pids in `/proc/self/task/*/children` (CONFIG_PROC_CHILDREN); `None`
/// where the kernel has no such file.
#[cfg(target_os = "linux")]
fn children_lists() -> Option<Vec<i32>> {
    let mut kids = Vec::new();
    let mut any = false;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            any = true;
            kids.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    any.then_some(kids)
}

/// Whether the process `recorded` describes is still running: the same pid
/// with the same start time, and not a zombie (a process that has exited but
/// not yet been reaped by its parent is gone for our purposes).
pub fn still_running(recorded: &Identity) -> bool {
    #[cfg(target_os = "linux")]
    {
        Stat::read(recorded.pid)
            .is_some_and(|s| !s.exited() && s.start_time() == Some(recorded.start_time))
    }
    #[cfg(not(target_os = "linux"))]
    {
        Identity::of(recorded.pid).is_some_and(|i| i.start_time == recorded.start_time)
    }
}

/// A process's resident memory and CPU time, for `status --json`.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub rss_bytes: u64,
    pub cpu_secs: f64,
}

#[cfg(target_os = "linux")]
pub fn usage(pid: i32) -> Option<Usage> {
    use nix::unistd::{SysconfVar, sysconf};
    let stat = Stat::read(pid)?;
    // utime 14, stime 15, rss 24.
    let field = |n: usize| stat.number(n);
    let ticks = sysconf(SysconfVar::CLK_TCK).ok()??.max(1) as f64;
    let page = sysconf(SysconfVar::PAGE_SIZE).ok()??.max(1) as u64;
    Some(Usage {
        rss_bytes: field(24)? * page,
        cpu_secs: (field(14)? + field(15)?) as f64 / ticks,
    })
}

#[cfg(not(target_os = "linux"))]
pub fn usage(pid: i32) -> Option<Usage> {
    use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};
    let mut sys = System::new();
    let p = Pid::from_u32(pid as u32);
    sys.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[p]),
        true,
        ProcessRefreshKind::nothing().with_memory().with_cpu(),
    );
    let proc_ = sys.process(p)?;
    Some(Usage {
        rss_bytes: proc_.memory(),
        cpu_secs: proc_.accumulated_cpu_time() as f64 / 1000.0,
    })
}

/// Whether process `pid` holds an exclusive `flock` on `file`, from
/// `/proc/locks` (whose pids are in this namespace); `None` where that
/// cannot be told (no `/proc/locks`: not Linux).
pub fn holds_flock(pid: i32, file: &std::path::Path) -> Option<bool> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::symlink_metadata(file).ok()?;
        let locks = std::fs::read_to_string("/proc/locks").ok()?;
        let dev = meta.dev();
        // `MAJOR:MINOR:INODE`, major and minor in hex.
        let want = format!(
            "{:02x}:{:02x}:{}",
            libc::major(dev),
            libc::minor(dev),
            meta.ino()
        );
        Some(locks.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // "1: FLOCK  ADVISORY  WRITE 4242 00:2a:131 0 EOF"; waiters are
            // listed as "1: -> FLOCK …" and do not hold it.
            f.len() >= 6
                && f[1] == "FLOCK"
                && f[3] == "WRITE"
                && f[4] == pid.to_string()
                && f[5] == want
        }))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (pid, file);
        None
    }
}

/// Whether process `pid` has SIGKILL pending (it is being killed: it will
/// be gone in a moment).
pub fn kill_pending(pid: i32) -> bool {
    #[cfg(target_os = "linux")]
    {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            return false;
        };
        let bit = 1u64 << (libc::SIGKILL - 1);
        status.lines().any(|l| {
            ["ShdPnd:", "SigPnd:"].iter().any(|k| {
                l.strip_prefix(k)
                    .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                    .is_some_and(|mask| mask & bit != 0)
            })
        })
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = pid;
        false
    }
}

/// Whether process `pid` runs as user `uid` (its real uid).
pub fn runs_as(pid: i32, uid: u32) -> Option<bool> {
    #[cfg(target_os = "linux")]
    {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let real = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))?
            .split_whitespace()
            .next()?
            .parse::<u32>()
            .ok()?;
        Some(real == uid)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (pid, uid);
        None
    }
}

/// Process `pid`'s arguments, if they can be read.
pub fn cmdline(pid: i32) -> Option<Vec<String>> {
    #[cfg(target_os = "linux")]
    {
        let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        Some(
            raw.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect(),
        )
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = pid;
        None
    }
}

/// This process's PID namespace, if the platform has them.
pub fn own_pidns() -> Option<String> {
    #[cfg(target_os = "linux")]
    {
        std::fs::read_link("/proc/self/ns/pid")
            .ok()
            .map(|p| p.to_string_lossy().into_owned())
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_identity_matches_itself_and_not_a_child() {
        let me = Identity::of_self().unwrap();
        assert!(me.matches(&me));
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let other = Identity::of(child.id() as i32).unwrap();
        let mut forged = other.clone();
        forged.pid = me.pid;
        assert!(!me.matches(&forged));
        let mut later = me.clone();
        later.start_time += 1;
        assert!(!me.matches(&later));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(Identity::of(-1).is_none());
    }
}
