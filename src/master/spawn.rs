//! Starting one runner process: its command line from the `command`
//! template, its environment, its output pipes.
//!
//! Not here: deciding when to start (`runners`), the set-up between fork and
//! exec (`os::process`), the placeholders (`config::placeholders`).

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use super::slice::Slice;
use crate::config::placeholders::{fill, placeholders};
use crate::os::process::{EnvBase, Exec, START_SIGNALS, child_setup, forget};
use crate::os::vfork;

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
    /// The open-file limit the master started with, given back to runners
    /// (the master raised its own: see [`crate::os::process::raise_nofile`]).
    pub nofile: Option<libc::rlimit>,
    /// The cgroup runners are born in (`os::confine`), if there is one:
    /// its directory, open, and its `cgroup.procs`.
    pub cgroup: Option<(RawFd, CString)>,
    pub bases: Bases,
}

/// The environments children start from, encoded once ([`EnvBase`]): a
/// child's own variables (its spec, its `env`) are added to one of them.
#[derive(Debug, Clone)]
pub struct Bases {
    /// Ours: the master's whole environment but what it speaks to systemd
    /// with, the `MAILMAN_*` variables that say where it runs, the `--set`
    /// overrides (as `MAILMAN__…` variables).
    ours: Arc<EnvBase>,
    /// Mailman Core's: what Mailman's own master gives its runners (its
    /// `PRESERVE_ENVS`, `MAILMAN_UNDER_MASTER_CONTROL=1`, the var dir).
    mailman: Arc<EnvBase>,
}

impl Bases {
    /// A NUL byte in a path or override is `InvalidInput`.
    pub fn new(
        config_arg: &Path,
        var_dir: &Path,
        overrides: &[(String, String)],
    ) -> io::Result<Bases> {
        let under = ("MAILMAN_UNDER_MASTER_CONTROL", OsStr::new("1"));
        let var_dir = ("MAILMAN_VAR_DIR", var_dir.as_os_str());
        let mut ours = EnvBase::new(
            std::env::vars_os()
                // The master speaks to systemd; runners must not.
                .filter(|(k, _)| k != READY_FD_ENV && k != "NOTIFY_SOCKET"),
        )?;
        ours.extend([
            under,
            ("MAILMAN_CONFIG_FILE", config_arg.as_os_str()),
            var_dir,
        ])?;
        ours.extend(overrides.iter().map(|(k, v)| (k, v)))?;
        let mut mailman = EnvBase::new(
            std::env::vars_os()
                .filter(|(k, _)| k.to_str().is_some_and(|k| MAILMAN_PRESERVED.contains(&k))),
        )?;
        // As Mailman's `start` does: the runners' var dir is the master's,
        // whatever their working directory.
        mailman.extend([under, var_dir])?;
        Ok(Bases {
            ours: Arc::new(ours),
            mailman: Arc::new(mailman),
        })
    }
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
    let (argv, environment, keep) = runner_of(ctx, s);
    start(ctx, &argv, environment, keep)
}

/// Slice `s`'s runner: its command line, whose environment it gets, and
/// the descriptor it keeps: the slice's ownership lock, held while either
/// lives (os::owner).
fn runner_of<'a>(
    ctx: &SpawnContext,
    s: &'a Slice,
) -> (Vec<String>, Environment<'a>, Option<RawFd>) {
    let environment = if s.runner.mailman_core {
        Environment::Mailman { env: &s.runner.env }
    } else {
        Environment::Ours {
            spec: s.spec(),
            env: &s.runner.env,
        }
    };
    (
        expand(ctx, s),
        environment,
        s.owner.as_ref().map(|l| l.fd()),
    )
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
    keep: Option<RawFd>,
) -> io::Result<Spawned> {
    let child = Prepared::new(ctx, program, args, environment, keep)?;
    match vfork::spawn(&child.plan(ctx)) {
        Some(pid) => Ok(child.started(pid?)),
        None => child.fork(ctx),
    }
}

/// Starts a batch of runners (start-up's, restarts due together): each
/// cloned before any has exec'd, sharing our memory
/// (`os::vfork::spawn_all`), so that on two cores the first exec while the
/// next are cloned. Per slice, as [`spawn`] says. One alone is started as
/// [`spawn`] starts it (no batch mapping to make: a respawn's path).
pub fn spawn_all(ctx: &SpawnContext, slices: &[&Slice]) -> Vec<io::Result<Spawned>> {
    if let [one] = slices {
        return vec![spawn(ctx, one)];
    }
    let children: Vec<io::Result<Prepared>> = slices
        .iter()
        .map(|s| {
            let (argv, environment, keep) = runner_of(ctx, s);
            let (program, args) = argv
                .split_first()
                .ok_or_else(|| io::Error::other("empty command"))?;
            Prepared::new(ctx, program, args, &environment, keep)
        })
        .collect();
    let plans: Vec<_> = children
        .iter()
        .filter_map(|c| c.as_ref().ok().map(|c| c.plan(ctx)))
        .collect();
    let mut results = vfork::spawn_all(&plans).into_iter();
    drop(plans);
    let mut out = Vec::with_capacity(slices.len());
    for (child, s) in children.into_iter().zip(slices) {
        let child = match child {
            Ok(child) => child,
            Err(e) => {
                out.push(Err(e));
                continue;
            }
        };
        out.push(match results.next().flatten() {
            Some(Ok(pid)) => Ok(child.started(pid)),
            // Gone since it was found: as `start` does, one more look.
            Some(Err(e)) if e.kind() == io::ErrorKind::NotFound && forget(&child.program) => {
                drop(child);
                spawn(ctx, s)
            }
            Some(Err(e)) => Err(e),
            None => child.fork(ctx),
        });
    }
    out
}

/// A child ready to be cloned: its program found, its command line and
/// environment as the C library takes them, its output pipes made.
struct Prepared {
    program: String,
    args: Vec<String>,
    /// Our own runner (see `START_SIGNALS`).
    ours: bool,
    exec: Exec,
    keep: Option<RawFd>,
    /// `[stdout read, stdout write, stderr read, stderr write]`.
    pipes: [OwnedFd; 4],
}

impl Prepared {
    fn new(
        ctx: &SpawnContext,
        program: &str,
        args: &[String],
        environment: &Environment,
        keep: Option<RawFd>,
    ) -> io::Result<Prepared> {
        // Every child's stdin, opened once: its failure is this child's.
        dev_null()?;
        let (base, own) = environment_of(ctx, environment);
        // The PATH the child will have: the runner's own, else ours
        // (Mailman's environment has none: its programs are absolute), else
        // the C library's default, as `execvp` would search.
        let path = own
            .iter()
            .rev()
            .find(|(k, _)| *k == "PATH")
            .map(|(_, v)| v.to_os_string())
            .or_else(|| base.get("PATH".as_ref()).map(OsStr::to_os_string))
            .or_else(|| std::env::var_os("PATH"))
            .unwrap_or_else(|| OsString::from("/bin:/usr/bin"));
        let exec = Exec::new(program, args, base, own, &path)?;
        // Our own runner starts with its stop/restart/reopen signals blocked
        // and unblocks them once it handles them: one that arrives while it
        // starts waits instead of killing it.
        let ours = Path::new(program) == ctx.bin && args.first().is_some_and(|a| a == "runner");
        Ok(Prepared {
            program: program.to_string(),
            args: args.to_vec(),
            ours,
            exec,
            keep,
            pipes: pipes()?,
        })
    }

    fn plan<'a>(&'a self, ctx: &'a SpawnContext) -> vfork::Plan<'a> {
        let blocked: &[libc::c_int] = if self.ours { &START_SIGNALS } else { &[] };
        // Opened by `new`; -1 would be refused as a malformed plan.
        let null = dev_null().map_or(-1, |n| n.as_raw_fd());
        vfork::Plan {
            path: &self.exec.path,
            argv: &self.exec.argv,
            envp: &self.exec.envp,
            stdio: [null, self.pipes[1].as_raw_fd(), self.pipes[3].as_raw_fd()],
            keep: self.keep,
            master: ctx.master_pid,
            nofile: ctx.nofile,
            blocked,
            cgroup: ctx
                .cgroup
                .as_ref()
                .map(|(fd, procs)| (*fd, procs.as_c_str())),
        }
    }

    /// Started as `pid`: the child's ends of its pipes closed here.
    fn started(self, pid: i32) -> Spawned {
        let [stdout, _, stderr, _] = self.pipes;
        Spawned {
            pid,
            stdout,
            stderr,
        }
    }

    /// Where `os::vfork` cannot clone (another architecture, a seccomp
    /// profile that refuses it): a fork through the standard library, with
    /// the same environment, descriptors and set-up.
    fn fork(self, ctx: &SpawnContext) -> io::Result<Spawned> {
        let [out_r, out_w, err_r, err_w] = self.pipes;
        let mut cmd = Command::new(&self.exec.exe);
        cmd.arg0(&self.program)
            .args(&self.args)
            .env_clear()
            .envs(self.exec.vars())
            .stdin(Stdio::from(dev_null()?.try_clone()?))
            .stdout(Stdio::from(out_w))
            .stderr(Stdio::from(err_w));
        let master = ctx.master_pid;
        let nofile = ctx.nofile;
        let cgroup = ctx.cgroup.as_ref().map(|(_, procs)| procs.clone());
        let (ours, keep) = (self.ours, self.keep);
        // SAFETY: fcntl and child_setup are async-signal-safe system calls;
        // `keep` is an fd the master holds open while the child is created.
        unsafe {
            cmd.pre_exec(move || {
                // As os::vfork's child: nothing else of ours goes with it.
                // Marked close-on-exec rather than closed (the standard
                // library's own pipe for exec errors is among them). Linux
                // 5.11 and later.
                #[cfg(target_os = "linux")]
                libc::syscall(
                    libc::SYS_close_range,
                    3,
                    libc::c_uint::MAX,
                    libc::CLOSE_RANGE_CLOEXEC,
                );
                if let Some(fd) = keep
                    && libc::fcntl(fd, libc::F_SETFD, 0) == -1
                {
                    return Err(io::Error::last_os_error());
                }
                child_setup(master, nofile, ours, cgroup.as_ref())
            });
        }
        let child = cmd.spawn()?;
        // The master reaps with waitpid(-1); the Child handle is dropped
        // unwaited.
        Ok(Spawned {
            pid: child.id() as i32,
            stdout: out_r,
            stderr: err_r,
        })
    }
}

/// The child's environment: the base it starts from, and its own
/// variables, which replace the base's of the same name (and a later one of
/// its own an earlier one).
fn environment_of<'a>(
    ctx: &'a SpawnContext,
    environment: &'a Environment,
) -> (&'a Arc<EnvBase>, Vec<(&'a str, &'a OsStr)>) {
    let vars = |env: &'a indexmap::IndexMap<String, String>| {
        env.iter().map(|(k, v)| (k.as_str(), OsStr::new(v)))
    };
    match environment {
        Environment::Ours { spec, env } => (
            &ctx.bases.ours,
            std::iter::once(("MAILMAN_RUNNER", OsStr::new(spec)))
                .chain(vars(env))
                .collect(),
        ),
        Environment::Mailman { env } => (&ctx.bases.mailman, vars(env).collect()),
    }
}

/// Two pipes for a child's output: `[stdout read, stdout write, stderr
/// read, stderr write]`, as [`pipe`] makes them.
pub(super) fn pipes() -> io::Result<[OwnedFd; 4]> {
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    Ok([out_r, out_w, err_r, err_w])
}

/// A pipe for a child's output: the master's end non-blocking from the
/// start, both close-on-exec, neither among 0, 1 and 2.
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    #[cfg(target_os = "linux")]
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // No pipe2 (macOS): the event loop's thread is the only one that forks.
    #[cfg(not(target_os = "linux"))]
    let (r, w) = {
        let (r, w) = nix::unistd::pipe()?;
        for fd in [&r, &w] {
            nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )?;
        }
        (r, w)
    };
    nix::fcntl::fcntl(
        &r,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    Ok((above_stdio(r)?, above_stdio(w)?))
}

/// `fd`, moved to 3 or above if it is one of 0, 1, 2 (a master started with
/// those closed): a child's `dup2` onto them must not clobber it.
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    let moved = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))?;
    // SAFETY: a new descriptor F_DUPFD_CLOEXEC just made, owned by nobody.
    Ok(unsafe { OwnedFd::from_raw_fd(moved) })
}

/// `/dev/null`, opened once, for every child's stdin.
pub(super) fn dev_null() -> io::Result<&'static OwnedFd> {
    static NULL: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();
    if let Some(fd) = NULL.get() {
        return Ok(fd);
    }
    let file = std::fs::File::open("/dev/null")
        .map_err(|e| io::Error::new(e.kind(), format!("/dev/null: {e}")))?;
    let fd = above_stdio(file.into())?;
    Ok(NULL.get_or_init(|| fd))
}
