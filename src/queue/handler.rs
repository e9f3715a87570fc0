//! Starting a queue entry's handler, and learning how it ended. Where the
//! system allows it, a vfork-style clone (`os::vfork`, as the master starts
//! a runner: the runner's memory is neither copied nor made copy-on-write);
//! elsewhere a fork with the same set-up (`os::process::child_setup`).
//! Either way the handler gets the entry on its stdin, the runner's stdout
//! and stderr, its own process group (a stop aimed at the runner's group
//! lets it finish), the parent-death signal (it dies with its runner),
//! every signal unblocked and at its default, and the runner's environment
//! with `env` added.
//!
//! Not here: what the runner does with the entry afterwards (`runner`).

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus};
use std::sync::Arc;

use crate::os::{process, vfork};

/// A handler started.
pub enum Handler {
    Cloned(i32),
    Forked(Child),
}

impl Handler {
    /// How it ended, if it has (it is reaped then).
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        let pid = match self {
            Handler::Forked(child) => return child.try_wait(),
            Handler::Cloned(pid) => *pid,
        };
        let mut status = 0;
        loop {
            // SAFETY: a wait for our own child, by its pid.
            match unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } {
                0 => return Ok(None),
                r if r == pid => return Ok(Some(ExitStatus::from_raw(status))),
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
    }
}

/// Starts `program` with `args`, `env` added to the runner's environment,
/// `stdin` as its stdin.
pub fn start(
    program: &str,
    args: &[String],
    env: &[(&str, &OsStr)],
    stdin: File,
) -> io::Result<Handler> {
    let cloned = match outputs() {
        Some(out) => match clone(program, args, env, &stdin, out) {
            // Gone since it was found: looked for once more.
            Some(Err(e)) if e.kind() == io::ErrorKind::NotFound && process::forget(program) => {
                clone(program, args, env, &stdin, out)
            }
            other => other,
        },
        None => None,
    };
    match cloned {
        Some(started) => started.map(Handler::Cloned),
        None => fork(program, args, env, stdin),
    }
}

/// The runner's stdout and stderr, copied above descriptor 2 once (a
/// clone's plan takes its child's 0, 1 and 2 from there). `None` if either
/// is closed: the handler is forked, and inherits them as they are.
fn outputs() -> Option<&'static [OwnedFd; 2]> {
    static OUT: std::sync::OnceLock<Option<[OwnedFd; 2]>> = std::sync::OnceLock::new();
    OUT.get_or_init(|| Some([above_stdio(1)?, above_stdio(2)?]))
        .as_ref()
}

/// A close-on-exec copy of `fd` at 3 or above.
fn above_stdio(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: duplicates a descriptor; a failure (`fd` closed) is -1.
    let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    // SAFETY: a new descriptor of our own.
    (copy >= 3).then(|| unsafe { OwnedFd::from_raw_fd(copy) })
}

/// The runner's own environment, which every handler starts from, encoded
/// once (it does not change while the runner runs).
fn base() -> io::Result<&'static Arc<process::EnvBase>> {
    static BASE: std::sync::OnceLock<Arc<process::EnvBase>> = std::sync::OnceLock::new();
    if let Some(base) = BASE.get() {
        return Ok(base);
    }
    let base = Arc::new(process::EnvBase::new(std::env::vars_os())?);
    Ok(BASE.get_or_init(|| base))
}

/// The handler cloned (`os::vfork::spawn`); `None` where this system does
/// not clone so.
fn clone(
    program: &str,
    args: &[String],
    env: &[(&str, &OsStr)],
    stdin: &File,
    out: &[OwnedFd; 2],
) -> Option<io::Result<i32>> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/bin:/usr/bin".into());
    let exec = match base()
        .and_then(|base| process::Exec::new(program, args, base, env.iter().copied(), &path))
    {
        Ok(exec) => exec,
        Err(e) => return Some(Err(e)),
    };
    // The entry as 3 or above, for the plan; kept open until the clone
    // has exec'd.
    let moved = match stdin.as_raw_fd() {
        fd if fd < 3 => match above_stdio(fd) {
            Some(copy) => Some(copy),
            None => return Some(Err(io::Error::last_os_error())),
        },
        _ => None,
    };
    let input = moved.as_ref().map_or(stdin.as_raw_fd(), |m| m.as_raw_fd());
    vfork::spawn(&vfork::Plan {
        path: &exec.path,
        argv: &exec.argv,
        envp: &exec.envp,
        stdio: [input, out[0].as_raw_fd(), out[1].as_raw_fd()],
        keep: None,
        master: std::process::id() as i32,
        nofile: None,
        blocked: &[],
        cgroup: None,
    })
}

/// The handler forked, `std`'s way, with the same set-up.
fn fork(
    program: &str,
    args: &[String],
    env: &[(&str, &OsStr)],
    stdin: File,
) -> io::Result<Handler> {
    let mut cmd = Command::new(program);
    cmd.args(args).envs(env.iter().copied()).stdin(stdin);
    let me = std::process::id() as i32;
    // SAFETY: child_setup makes only async-signal-safe system calls.
    unsafe {
        cmd.pre_exec(move || process::child_setup(me, None, false, None));
    }
    cmd.spawn().map(Handler::Forked)
}
