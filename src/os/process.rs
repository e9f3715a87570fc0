//! A child's set-up between fork and exec, shared by the master's runners
//! and the built-in runner's handlers: own process group, a clean signal
//! mask, the parent-death signal, the original open-file limit; and raising
//! the master's own limit; where a program named without a path is.
//!
//! Not here: what to run (`master::spawn`, `queue::runner`).

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;

/// Raises this process's soft open-file limit to its hard limit (each
/// runner costs the master two pipes; 1024 would cap it near 500 runners).
/// Returns the limit as it was, for runners to get back: programs that close
/// every fd up to the limit must not see a huge one.
pub fn raise_nofile() -> Option<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls with a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        let original = lim;
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
        Some(original)
    }
}

/// This process's soft open-file limit.
pub fn nofile_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a plain system call with a valid rlimit struct.
    let r = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    (r == 0).then_some(lim.rlim_cur)
}

/// Grows this process's descriptor table at once to hold `n` descriptors
/// (as far as the open-file limit allows). Called while the process has
/// one thread: the kernel grows a table that several threads share (the
/// master's log has a thread of its own) only after an RCU grace period,
/// milliseconds here, and the master's table, two pipes a runner, would
/// otherwise double several times while its runners start (issue 19). A
/// table is never shrunk; it costs the kernel 8 bytes per descriptor.
/// Failures are ignored: it only saves time.
pub fn reserve_fds(n: usize) {
    // SAFETY: plain system calls on descriptors opened and closed here.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        let top = (n as u64).min(lim.rlim_cur.saturating_sub(1));
        let Ok(top) = libc::c_int::try_from(top) else {
            return;
        };
        // The table a process starts with holds 64.
        if top < 64 {
            return;
        }
        let fd = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return;
        }
        let high = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, top);
        if high >= 0 {
            libc::close(high);
        }
        libc::close(fd);
    }
}

/// Runs in the child between fork and exec: async-signal-safe calls only.
/// `master` is the parent the child must not outlive (for a queue entry's
/// handler, its runner).
/// The signals a runner of ours starts with blocked, when its parent asks
/// for it (see [`child_setup`]), and unblocks once its handlers are in
/// place ([`unblock_start_signals`]): sent while it starts, they wait
/// rather than kill it.
pub const START_SIGNALS: [libc::c_int; 5] = [
    libc::SIGHUP,
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGUSR1,
];

/// In a runner of ours, once its handlers are installed: lets the
/// [`START_SIGNALS`] through (any that arrived meanwhile are delivered now).
pub fn unblock_start_signals() {
    // SAFETY: plain system calls on a local, initialised signal set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in START_SIGNALS {
            libc::sigaddset(&mut set, sig);
        }
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

/// `block_start`: the child is one of our own runners, which unblocks the
/// [`START_SIGNALS`] itself once it can handle them; any other program gets
/// every signal unblocked.
///
/// `cgroup`: the `cgroup.procs` of the cgroup the child joins first (see
/// `os::confine`).
pub fn child_setup(
    master: i32,
    nofile: Option<libc::rlimit>,
    block_start: bool,
    cgroup: Option<&std::ffi::CString>,
) -> io::Result<()> {
    if let Some(procs) = cgroup {
        crate::os::confine::join(procs);
    }
    // SAFETY: plain system calls on this process; no allocation, no locks.
    unsafe {
        if let Some(lim) = nofile {
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
        // Own process group, so that a stop reaches the runner's children
        // (and, for a handler, so that its runner's stop does not).
        if libc::setpgid(0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        // Signals blocked or ignored in the master must not be in the runner.
        let mut mask: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut mask);
        if block_start {
            for sig in START_SIGNALS {
                libc::sigaddset(&mut mask, sig);
            }
        }
        libc::sigprocmask(libc::SIG_SETMASK, &mask, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        #[cfg(target_os = "linux")]
        {
            // No runner outlives the master, even a kill -9 of it. Set after
            // any uid change (which clears it), then check the master did
            // not die before it took effect.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            if libc::getppid() != master {
                libc::_exit(1);
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = master;
    }
    Ok(())
}

/// Where a bare program name (`sleep`) is found, by the `PATH` the child
/// gets: looked up once by whoever starts it (the master; a built-in runner
/// for its handlers) rather than by every child walking `PATH` with one
/// failed `execve` per directory (issue 19). Forgotten when the program is
/// not there any more.
static RESOLVED: std::sync::Mutex<Vec<(String, std::ffi::OsString, PathBuf)>> =
    std::sync::Mutex::new(Vec::new());

/// `program`'s path by `path` ([`RESOLVED`]); `None` for a path (it has a
/// `/`) or a program not found.
pub fn resolve(program: &str, path: &std::ffi::OsStr) -> Option<PathBuf> {
    if program.contains('/') || program.is_empty() {
        return None;
    }
    let mut cache = RESOLVED.lock().ok()?;
    if let Some((_, _, found)) = cache.iter().find(|(p, ps, _)| p == program && ps == path) {
        return Some(found.clone());
    }
    let found = std::env::split_paths(path)
        .filter(|d| d.is_absolute())
        .map(|d| d.join(program))
        .find(|f| {
            nix::unistd::access(f.as_path(), nix::unistd::AccessFlags::X_OK).is_ok() && f.is_file()
        })?;
    cache.push((program.to_string(), path.to_owned(), found.clone()));
    Some(found)
}

/// Drops `program`'s cached paths; whether there was one.
pub fn forget(program: &str) -> bool {
    let Ok(mut cache) = RESOLVED.lock() else {
        return false;
    };
    let before = cache.len();
    cache.retain(|(p, _, _)| p != program);
    cache.len() != before
}

/// Environment variables encoded once as `K=V` C strings, for many
/// children to start from: a process's own variables do not change while
/// it runs, so the master (and a built-in runner, for its handlers) encodes
/// them once rather than for every child (issue 19). A later variable of a
/// name already there replaces it, in its place.
#[derive(Debug, Default)]
pub struct EnvBase {
    entries: Vec<CString>,
    /// Each name's place in `entries`.
    names: HashMap<Vec<u8>, usize>,
}

impl EnvBase {
    /// A NUL byte in a name or value is `InvalidInput`.
    pub fn new<K: AsRef<OsStr>, V: AsRef<OsStr>>(
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> io::Result<EnvBase> {
        let mut base = EnvBase::default();
        base.extend(vars)?;
        Ok(base)
    }

    /// `vars` added, each replacing one of its name already there.
    pub fn extend<K: AsRef<OsStr>, V: AsRef<OsStr>>(
        &mut self,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> io::Result<()> {
        for (k, v) in vars {
            let (k, v) = (k.as_ref().as_bytes(), v.as_ref().as_bytes());
            let kv = entry(k, v)?;
            match self.names.get(k) {
                Some(&i) => self.entries[i] = kv,
                None => {
                    self.names.insert(k.to_vec(), self.entries.len());
                    self.entries.push(kv);
                }
            }
        }
        Ok(())
    }

    /// The value of variable `name`, if set.
    pub fn get(&self, name: &OsStr) -> Option<&OsStr> {
        let i = *self.names.get(name.as_bytes())?;
        let kv = self.entries.get(i)?.as_bytes();
        Some(OsStr::from_bytes(kv.get(name.len() + 1..)?))
    }
}

/// `K=V` as a C string.
fn entry(k: &[u8], v: &[u8]) -> io::Result<CString> {
    let mut kv = Vec::with_capacity(k.len() + v.len() + 2);
    kv.extend_from_slice(k);
    kv.push(b'=');
    kv.extend_from_slice(v);
    c_string(kv)
}

fn c_string(bytes: Vec<u8>) -> io::Result<CString> {
    CString::new(bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{:?} contains a NUL byte",
                String::from_utf8_lossy(&e.into_vec())
            ),
        )
    })
}

/// Where an entry of a child's environment comes from.
#[derive(Clone, Copy)]
enum Slot {
    Base(usize),
    Own(usize),
}

/// A program's command line and environment as `execve` takes them: the
/// program found by the child's `PATH` ([`resolve`]), and NULL-terminated
/// arrays pointing into strings this holds or shares (a move of it does
/// not move them).
pub struct Exec {
    pub exe: PathBuf,
    pub path: CString,
    pub argv: Vec<*const libc::c_char>,
    pub envp: Vec<*const libc::c_char>,
    /// What `argv` points into.
    _argv: Vec<CString>,
    /// What `envp` points into: the base's entries and the child's own.
    base: Arc<EnvBase>,
    own: Vec<CString>,
    slots: Vec<Slot>,
}

impl Exec {
    /// `program` (`argv[0]` as written: `ps` shows `sleep`, not its path)
    /// with `args` and the environment `base` with `own` variables added
    /// (one of a name `base` has replaces it), `program` looked for by
    /// `path` where it has no `/`. `NotFound` if it is not there; a NUL
    /// byte anywhere is `InvalidInput`.
    pub fn new<K: AsRef<OsStr>, V: AsRef<OsStr>>(
        program: &str,
        args: &[String],
        base: &Arc<EnvBase>,
        own: impl IntoIterator<Item = (K, V)>,
        path: &OsStr,
    ) -> io::Result<Exec> {
        let exe = match resolve(program, path) {
            Some(exe) => exe,
            None if program.contains('/') => PathBuf::from(program),
            None => return Err(io::Error::from_raw_os_error(libc::ENOENT)),
        };
        let argv_strings = std::iter::once(program)
            .chain(args.iter().map(String::as_str))
            .map(|a| c_string(a.as_bytes().to_vec()))
            .collect::<io::Result<Vec<_>>>()?;
        let mut slots: Vec<Slot> = (0..base.entries.len()).map(Slot::Base).collect();
        let mut own_strings = Vec::new();
        // Names `own` added beyond the base's, and their slots.
        let mut added: Vec<(Vec<u8>, usize)> = Vec::new();
        for (k, v) in own {
            let (k, v) = (k.as_ref().as_bytes(), v.as_ref().as_bytes());
            let slot = Slot::Own(own_strings.len());
            own_strings.push(entry(k, v)?);
            let at = base.names.get(k).copied().or_else(|| {
                added
                    .iter()
                    .find_map(|(name, at)| (name.as_slice() == k).then_some(*at))
            });
            match at {
                Some(at) => slots[at] = slot,
                None => {
                    added.push((k.to_vec(), slots.len()));
                    slots.push(slot);
                }
            }
        }
        let argv = argv_strings
            .iter()
            .map(|c| c.as_ptr())
            .chain([std::ptr::null()])
            .collect();
        let envp = slots
            .iter()
            .map(|&s| match s {
                Slot::Base(i) => base.entries[i].as_ptr(),
                Slot::Own(i) => own_strings[i].as_ptr(),
            })
            .chain([std::ptr::null()])
            .collect();
        Ok(Exec {
            path: c_string(exe.as_os_str().as_bytes().to_vec())?,
            exe,
            argv,
            envp,
            _argv: argv_strings,
            base: Arc::clone(base),
            own: own_strings,
            slots,
        })
    }

    /// The environment's variables, in order (for a child forked through
    /// the standard library instead).
    pub fn vars(&self) -> impl Iterator<Item = (&OsStr, &OsStr)> {
        self.slots.iter().map(|&s| {
            let kv = match s {
                Slot::Base(i) => &self.base.entries[i],
                Slot::Own(i) => &self.own[i],
            }
            .as_bytes();
            let eq = kv.iter().position(|&b| b == b'=').unwrap_or(kv.len());
            (
                OsStr::from_bytes(&kv[..eq]),
                OsStr::from_bytes(kv.get(eq + 1..).unwrap_or_default()),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envp(e: &Exec) -> Vec<String> {
        e.vars()
            .map(|(k, v)| format!("{}={}", k.to_string_lossy(), v.to_string_lossy()))
            .collect()
    }

    #[test]
    fn a_childs_own_variables_replace_the_bases_in_place() {
        let base =
            Arc::new(EnvBase::new([("A", "1"), ("PATH", "/bin"), ("B", "2"), ("A", "3")]).unwrap());
        assert_eq!(base.get("A".as_ref()), Some(OsStr::new("3")));
        assert_eq!(base.get("C".as_ref()), None);
        let own = [("B", "own"), ("C", "new"), ("C", "newer"), ("D", "")];
        let e = Exec::new("/bin/true", &[], &base, own, "/bin".as_ref()).unwrap();
        assert_eq!(envp(&e), ["A=3", "PATH=/bin", "B=own", "C=newer", "D="]);
        // The C strings `execve` gets, NULL-terminated.
        assert_eq!(e.envp.len(), 6);
        assert!(e.envp[5].is_null());
        // SAFETY: each pointer but the last is a C string `e` holds.
        let third = unsafe { std::ffi::CStr::from_ptr(e.envp[2]) };
        assert_eq!(third.to_bytes(), b"B=own");
        // The base is shared, not changed.
        let plain = Exec::new("/bin/true", &[], &base, [("X", "")], "/bin".as_ref()).unwrap();
        assert_eq!(envp(&plain), ["A=3", "PATH=/bin", "B=2", "X="]);
    }

    #[test]
    fn a_nul_byte_is_invalid_input() {
        let e = EnvBase::new([("A", "x\0y")]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let base = Arc::new(EnvBase::default());
        let Err(e) = Exec::new("/bin/true", &[], &base, [("A\0", "1")], "/bin".as_ref()) else {
            panic!("a NUL byte in a name was taken");
        };
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
