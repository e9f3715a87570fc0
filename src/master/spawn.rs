//! Starting one runner process: its command line from the `command`
//! template, its environment, its output pipes.
//!
//! Not here: deciding when to start (`runners`), the set-up between fork and
//! exec (`os::process`), the placeholders (`config::placeholders`).

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::slice::Slice;
use crate::config::placeholders::{fill, placeholders};
use crate::os::process::child_setup;

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
    /// (the master raised its own: see [`crate::os::process::raise_nofile`]).
    pub nofile: Option<libc::rlimit>,
    /// The cgroup runners join (`os::confine`), if there is one.
    pub cgroup: Option<std::ffi::CString>,
}

pub struct Spawned {
    pub pid: i32,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
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

/// Mailman's master's `PRESERVE_ENVS`: the only variables of its own that
/// it passes to Mailman's runners (locale, Python's tuning, the var dir).
const MAILMAN_PRESERVED: &[&str] = &[
    "COVERAGE_PROCESS_START",
    "LANG",
    "LANGUAGE",
    "LC_ADDRESS",
    "LC_ALL",
    "LC_COLLATE",
    "LC_CTYPE",
    "LC_IDENTIFICATION",
    "LC_MEASUREMENT",
    "LC_MESSAGES",
    "LC_MONETARY",
    "LC_NAME",
    "LC_NUMERIC",
    "LC_PAPER",
    "LC_TELEPHONE",
    "LC_TIME",
    "LOCALE_ARCHIVE",
    "MAILMAN_EXTRA_TESTING_CFG",
    "MAILMAN_VAR_DIR",
    "PYTHONASYNCIODEBUG",
    "PYTHONBREAKPOINT",
    "PYTHONDEBUG",
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONHOME",
    "PYTHONIOENCODING",
    "PYTHONMALLOC",
    "PYTHONMALLOCSTATS",
    "PYTHONNOUSERSITE",
    "PYTHONOPTIMIZE",
    "PYTHONPATH",
    "PYTHONPLATLIBDIR",
    "PYTHONPROFILEIMPORTTIME",
    "PYTHONSAFEPATH",
    "PYTHONTRACEMALLOC",
    "PYTHONUNBUFFERED",
    "PYTHONUSERBASE",
    "PYTHONVERBOSE",
    "PYTHONWARNINGS",
];

/// Whose environment a child gets.
pub enum Environment<'a> {
    /// Ours: the master's whole environment, the `MAILMAN_*` variables
    /// that say where it runs, the `--set` overrides, the runner's `env`.
    Ours {
        spec: String,
        env: &'a indexmap::IndexMap<String, String>,
    },
    /// Mailman Core's: what Mailman's own master gives its runners (its
    /// `PRESERVE_ENVS`, `MAILMAN_UNDER_MASTER_CONTROL=1`, the var dir), and
    /// the runner's `env`.
    Mailman {
        env: &'a indexmap::IndexMap<String, String>,
    },
}

/// Forks and execs the runner. Errors include a command that cannot be run.
pub fn spawn(ctx: &SpawnContext, s: &Slice) -> io::Result<Spawned> {
    let environment = if s.runner.mailman_core {
        Environment::Mailman { env: &s.runner.env }
    } else {
        Environment::Ours {
            spec: s.spec(),
            env: &s.runner.env,
        }
    };
    // The slice's ownership lock goes with its runner: held while either
    // lives (os::owner).
    let keep = s.owner.as_ref().map(|l| l.fd());
    start(ctx, &expand(ctx, s), environment, keep)
}

/// Where a bare program name (`sleep`) is found, by the `PATH` the child
/// gets: looked up once in the master rather than by every child walking
/// `PATH` with one failed `execve` per directory (issue 19). Forgotten when
/// the program is not there any more.
static RESOLVED: std::sync::Mutex<Vec<(String, std::ffi::OsString, PathBuf)>> =
    std::sync::Mutex::new(Vec::new());

fn resolve(program: &str, path: &std::ffi::OsStr) -> Option<PathBuf> {
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
fn forget(program: &str) -> bool {
    let Ok(mut cache) = RESOLVED.lock() else {
        return false;
    };
    let before = cache.len();
    cache.retain(|(p, _, _)| p != program);
    cache.len() != before
}

/// Forks and execs `argv` as a child of the master: its own process group,
/// the parent-death signal, output on two pipes; `keep`, if any, is a
/// descriptor of the master's the child inherits (all others are
/// close-on-exec).
pub fn start(
    ctx: &SpawnContext,
    argv: &[String],
    environment: Environment,
    keep: Option<std::os::fd::RawFd>,
) -> io::Result<Spawned> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| io::Error::other("empty command"))?;
    match start_once(ctx, program, args, &environment, keep) {
        // A program found once and gone since: look again (once; one never
        // found is not tried twice).
        Err(e) if e.kind() == io::ErrorKind::NotFound && forget(program) => {
            start_once(ctx, program, args, &environment, keep)
        }
        other => other,
    }
}

fn start_once(
    ctx: &SpawnContext,
    program: &str,
    args: &[String],
    environment: &Environment,
    keep: Option<std::os::fd::RawFd>,
) -> io::Result<Spawned> {
    // The PATH the child will have: the runner's own, else ours (Mailman's
    // environment has none: its programs are absolute).
    let env_path = match environment {
        Environment::Ours { env, .. } | Environment::Mailman { env } => env.get("PATH"),
    };
    let path = env_path
        .map(std::ffi::OsString::from)
        .or_else(|| std::env::var_os("PATH"))
        .unwrap_or_default();
    let mut cmd = match resolve(program, &path) {
        Some(found) => {
            let mut c = Command::new(found);
            // argv[0] as written: `ps` shows `sleep`, not its path.
            c.arg0(program);
            c
        }
        None => Command::new(program),
    };
    cmd.args(args);
    match environment {
        Environment::Ours { spec, env } => {
            cmd.env_remove(READY_FD_ENV)
                // The master speaks to systemd; runners must not.
                .env_remove("NOTIFY_SOCKET")
                .env("MAILMAN_UNDER_MASTER_CONTROL", "1")
                .env("MAILMAN_CONFIG_FILE", &ctx.config_arg)
                .env("MAILMAN_VAR_DIR", &ctx.var_dir)
                .env("MAILMAN_RUNNER", spec)
                .envs(ctx.overrides.iter().map(|(k, v)| (k, v)))
                .envs(env.iter());
        }
        Environment::Mailman { env } => {
            cmd.env_clear()
                .envs(
                    std::env::vars_os().filter(|(k, _)| {
                        k.to_str().is_some_and(|k| MAILMAN_PRESERVED.contains(&k))
                    }),
                )
                .env("MAILMAN_UNDER_MASTER_CONTROL", "1")
                // As Mailman's `start` does: the runners' var dir is the
                // master's, whatever their working directory.
                .env("MAILMAN_VAR_DIR", &ctx.var_dir)
                .envs(env.iter());
        }
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let master = ctx.master_pid;
    let nofile = ctx.nofile;
    // Our own runner starts with its stop/restart/reopen signals blocked and
    // unblocks them once it handles them: one that arrives while it starts
    // waits instead of killing it.
    let ours = Path::new(program) == ctx.bin && args.first().is_some_and(|a| a == "runner");
    let cgroup = ctx.cgroup.clone();
    // SAFETY: fcntl and child_setup are async-signal-safe system calls;
    // `keep` is an fd the master holds open while the child is created.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = keep
                && libc::fcntl(fd, libc::F_SETFD, 0) == -1
            {
                return Err(io::Error::last_os_error());
            }
            child_setup(master, nofile, ours, cgroup.as_ref())
        });
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
