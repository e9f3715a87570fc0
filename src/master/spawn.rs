//! Starting one runner process: its command line from the `command`
//! template, its environment, and the set-up between fork and exec (own
//! process group, clean signal mask, parent-death signal).
//!
//! Not here: deciding when to start (that is `master`).

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::master::slice::Slice;

/// The environment variable that hands the master its readiness pipe; never
/// passed on to runners.
pub const READY_FD_ENV: &str = "MAILMAN_READY_FD";

/// What every runner's command line and environment are built from.
#[derive(Debug, Clone)]
pub struct SpawnContext {
    pub bin: PathBuf,
    pub config_arg: PathBuf,
    pub var_dir: PathBuf,
    pub master_pid: i32,
    /// The master's `--set` overrides as `MAILMAN__…` variables.
    pub overrides: Vec<(String, String)>,
    /// The open-file limit the master started with, given back to runners
    /// (the master raised its own: see [`raise_nofile`]).
    pub nofile: Option<libc::rlimit>,
}

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

pub struct Spawned {
    pub pid: i32,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// The placeholders a runner's `command` and `handler` may use, with their
/// values.
pub fn placeholders(
    bin: &Path,
    config: &Path,
    var_dir: &Path,
    name: &str,
    slice: u32,
    range: u32,
) -> Vec<(&'static str, String)> {
    vec![
        ("bin", bin.to_string_lossy().into_owned()),
        ("config", config.to_string_lossy().into_owned()),
        ("var_dir", var_dir.to_string_lossy().into_owned()),
        ("name", name.to_string()),
        ("slice", slice.to_string()),
        ("range", range.to_string()),
    ]
}

/// `template` with each `{key}` of `values` replaced.
pub fn fill(template: &[String], values: &[(&str, String)]) -> Vec<String> {
    template
        .iter()
        .map(|arg| {
            values.iter().fold(arg.clone(), |acc, (key, value)| {
                acc.replace(&format!("{{{key}}}"), value)
            })
        })
        .collect()
}

/// The runner's argv: `command` with `{bin}`, `{config}`, `{var_dir}`,
/// `{name}`, `{slice}` and `{range}` replaced.
pub fn expand(ctx: &SpawnContext, s: &Slice) -> Vec<String> {
    let values = placeholders(
        &ctx.bin,
        &ctx.config_arg,
        &ctx.var_dir,
        &s.runner.name,
        s.slice,
        s.range,
    );
    fill(&s.runner.command, &values)
}

/// Forks and execs the runner. Errors include a command that cannot be run.
pub fn spawn(ctx: &SpawnContext, s: &Slice) -> io::Result<Spawned> {
    let argv = expand(ctx, s);
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| io::Error::other("empty command"))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_remove(READY_FD_ENV)
        // The master speaks to systemd; runners must not.
        .env_remove("NOTIFY_SOCKET")
        .env("MAILMAN_UNDER_MASTER_CONTROL", "1")
        .env("MAILMAN_CONFIG_FILE", &ctx.config_arg)
        .env("MAILMAN_VAR_DIR", &ctx.var_dir)
        .env("MAILMAN_RUNNER", s.spec())
        .envs(ctx.overrides.iter().map(|(k, v)| (k, v)))
        .envs(&s.runner.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let master = ctx.master_pid;
    let nofile = ctx.nofile;
    // SAFETY: child_setup makes only async-signal-safe system calls.
    unsafe {
        cmd.pre_exec(move || child_setup(master, nofile));
    }
    let mut child = cmd.spawn()?;
    let pid = child.id() as i32;
    let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(io::Error::other("runner pipes missing"));
    };
    // The master reaps with waitpid(-1); the Child handle is dropped unwaited.
    drop(child);
    Ok(Spawned {
        pid,
        stdout: out.into(),
        stderr: err.into(),
    })
}

/// Runs in the child between fork and exec: async-signal-safe calls only.
/// `master` is the parent the child must not outlive (for a queue entry's
/// handler, its runner).
pub fn child_setup(master: i32, nofile: Option<libc::rlimit>) -> io::Result<()> {
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
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
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
