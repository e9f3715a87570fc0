//! The control commands: `start`, `stop`, `restart`, `reopen`, `status`.
//! Each decides "running" from the lock, never from a pid alone, and checks
//! a pid's identity before it signals it (SPEC 2, 3.1, 3.6).
//!
//! Not here: the master itself (`master`).

pub mod queues;

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use std::os::unix::net::UnixStream;

use serde_json::json;

use crate::cli::{QuietArgs, RestartArgs, StartArgs, StopArgs};
use crate::config::Config;
use crate::control::{self, Answer, Request};
use crate::master::spawn::READY_FD_ENV;
use crate::master::{self, EXIT_ERROR, EXIT_USAGE};
use crate::os::lock::{self, Layout, LockInfo, PidFile, Probe};
use crate::os::procinfo::{Identity, own_pidns, still_running};

pub const NOT_RUNNING: &str = "GNU Mailman is not running";
pub const ALREADY_RUNNING: &str = "GNU Mailman is already running";

/// How long `start` waits for the master to say it is up.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a command waits for a master that holds the lock but has not
/// yet written who it is (it is starting at this very moment).
const INFO_WAIT: Duration = Duration::from_secs(2);

/// LSB status codes (SPEC 2).
pub mod lsb {
    pub const RUNNING: i32 = 0;
    pub const DEAD_WITH_PID_FILE: i32 = 1;
    pub const NOT_RUNNING: i32 = 3;
    pub const UNKNOWN: i32 = 4;
}

/// The master a control command may signal, or why there is none.
#[derive(Debug)]
enum Target {
    NotRunning,
    Master(Identity),
    /// A master holds the lock but must not (or cannot) be signalled.
    Refuse(String),
}

/// Probes the lock, waiting briefly for a master that is just starting to
/// write its details.
fn probe_settled(layout: &Layout) -> Probe {
    let deadline = Instant::now() + INFO_WAIT;
    loop {
        let p = lock::probe(layout);
        match &p {
            Probe::Held(info) if info.identity().is_none() && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            _ => return p,
        }
    }
}

fn find_master(layout: &Layout) -> Target {
    match probe_settled(layout) {
        Probe::Free => Target::NotRunning,
        Probe::Unknown(e) => Target::Refuse(format!("GNU Mailman is in an unexpected state ({e})")),
        Probe::Held(info) => {
            let Some(recorded) = info.identity() else {
                return Target::Refuse(
                    "GNU Mailman is in an unexpected state (the master lock names no master)"
                        .into(),
                );
            };
            let pid = recorded.pid;
            if let (Some(theirs), Some(ours)) = (&recorded.pidns, own_pidns())
                && *theirs != ours
            {
                return Target::Refuse(format!(
                    "GNU Mailman is running in another PID namespace (master pid {pid} there); \
                     run this command inside it, e.g. `docker exec mailman stop`"
                ));
            }
            match Identity::of(pid) {
                Some(live) if live.matches(&recorded) => Target::Master(recorded),
                _ => Target::Refuse(format!(
                    "GNU Mailman is in an unexpected state (pid {pid} is not the master that holds {})",
                    layout.lock_file().display()
                )),
            }
        }
    }
}

pub fn status(config: &Config) -> i32 {
    let layout = Layout::new(&config.mailman.var_dir);
    let (line, code) = match probe_settled(&layout) {
        Probe::Unknown(e) => (
            format!("GNU Mailman is in an unexpected state ({e})"),
            lsb::UNKNOWN,
        ),
        Probe::Held(info) => {
            let pid = info.pid.or(match lock::read_pid_file(&layout) {
                Ok(PidFile::Pid(p)) => Some(p),
                _ => None,
            });
            match pid {
                Some(pid) => (
                    format!("GNU Mailman is running (master pid: {pid})"),
                    lsb::RUNNING,
                ),
                None => (
                    "GNU Mailman is running (master pid: unknown)".into(),
                    lsb::RUNNING,
                ),
            }
        }
        Probe::Free => match lock::read_pid_file(&layout) {
            Ok(PidFile::Missing) => (NOT_RUNNING.into(), lsb::NOT_RUNNING),
            Ok(PidFile::Pid(pid)) => (
                format!("GNU Mailman is stopped (stale pid: {pid})"),
                lsb::DEAD_WITH_PID_FILE,
            ),
            Err(e) => (
                format!("GNU Mailman is in an unexpected state ({e})"),
                lsb::UNKNOWN,
            ),
        },
    };
    println!("{line}");
    code
}

/// How long a control-socket request may take to be answered.
const ASK_TIMEOUT: Duration = Duration::from_secs(10);

/// What asking the master over its socket came to.
enum Asked {
    /// Answered; the connection (a `stop` waits on it).
    Done(UnixStream),
    /// No socket: fall back to signals.
    NoSocket,
    /// The master said no, or the socket failed: the message, exit 1.
    Failed(String),
}

/// Asks the master that holds the lock. Never asks when the lock is free: a
/// socket file left by a dead master is not trusted.
fn ask(config: &Config, request: &Request) -> Asked {
    match control::ask(&config.mailman.var_dir, request, ASK_TIMEOUT) {
        Ok(Answer::NoSocket) => Asked::NoSocket,
        Ok(Answer::Reply(r, stream)) if r.ok => Asked::Done(stream),
        Ok(Answer::Reply(r, _)) => {
            Asked::Failed(r.error.unwrap_or_else(|| "the master refused".into()))
        }
        // A socket we may not use (another user's) tells nothing: signals
        // will give the real error.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Asked::NoSocket,
        Err(e) => Asked::Failed(format!("cannot talk to the master: {e}")),
    }
}

/// `restart [RUNNER[:SLICE]]`: over the socket, else SIGUSR1 (all only).
pub fn restart(config: &Config, args: &RestartArgs) -> i32 {
    let layout = Layout::new(&config.mailman.var_dir);
    let (runner, slice) = match args.runner.as_deref().map(parse_target) {
        None => (None, None),
        Some(Ok(t)) => t,
        Some(Err(e)) => {
            eprintln!("{e}");
            return 1;
        }
    };
    if !matches!(probe_settled(&layout), Probe::Held(_)) {
        return signal_master(config, args.quiet, Signal::SIGUSR1, "");
    }
    let line = match &args.runner {
        Some(r) => format!("Restarting runner {r}"),
        None => "Restarting the Mailman runners".into(),
    };
    match ask(
        config,
        &Request::Restart {
            runner: runner.clone(),
            slice,
        },
    ) {
        Asked::Done(_) => {
            if !args.quiet {
                println!("{line}");
            }
            0
        }
        Asked::Failed(e) => {
            eprintln!("{e}");
            1
        }
        Asked::NoSocket if runner.is_some() => {
            eprintln!(
                "cannot restart one runner: the master has no control socket ({})",
                control::socket_path(&layout.var_dir).display()
            );
            1
        }
        Asked::NoSocket => signal_master(config, args.quiet, Signal::SIGUSR1, &line),
    }
}

/// `RUNNER` or `RUNNER:SLICE`.
fn parse_target(text: &str) -> Result<(Option<String>, Option<u32>), String> {
    match text.split_once(':') {
        None if !text.is_empty() => Ok((Some(text.to_string()), None)),
        Some((name, n)) if !name.is_empty() => n
            .parse::<u32>()
            .map(|n| (Some(name.to_string()), Some(n)))
            .map_err(|_| format!("bad runner slice \"{text}\": expected RUNNER or RUNNER:SLICE")),
        _ => Err(format!(
            "bad runner \"{text}\": expected RUNNER or RUNNER:SLICE"
        )),
    }
}

/// `reopen`: over the socket, else SIGHUP.
pub fn reopen(config: &Config, args: &QuietArgs) -> i32 {
    let line = "Reopening the Mailman runners";
    let layout = Layout::new(&config.mailman.var_dir);
    if !matches!(probe_settled(&layout), Probe::Held(_)) {
        return signal_master(config, args.quiet, Signal::SIGHUP, line);
    }
    match ask(config, &Request::Reopen) {
        Asked::Done(_) => {
            if !args.quiet {
                println!("{line}");
            }
            0
        }
        Asked::Failed(e) => {
            eprintln!("{e}");
            1
        }
        Asked::NoSocket => signal_master(config, args.quiet, Signal::SIGHUP, line),
    }
}

/// The signal path of `restart` and `reopen`, after an identity check.
fn signal_master(config: &Config, quiet: bool, sig: Signal, line: &str) -> i32 {
    let layout = Layout::new(&config.mailman.var_dir);
    match find_master(&layout) {
        Target::NotRunning => {
            eprintln!("{NOT_RUNNING}");
            1
        }
        Target::Refuse(msg) => {
            eprintln!("{msg}");
            1
        }
        Target::Master(master) => {
            if !quiet {
                println!("{line}");
            }
            let pid = master.pid;
            match kill(Pid::from_raw(pid), sig) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("cannot signal the master (pid {pid}): {}", e.desc());
                    1
                }
            }
        }
    }
}

/// `status --json`: the master's own report over the socket when it runs.
pub fn status_json(config: &Config) -> i32 {
    let layout = Layout::new(&config.mailman.var_dir);
    let (value, code) = match probe_settled(&layout) {
        Probe::Unknown(e) => (
            json!({"running": null, "state": "unknown", "detail": e}),
            lsb::UNKNOWN,
        ),
        Probe::Free => match lock::read_pid_file(&layout) {
            Ok(PidFile::Missing) => (
                json!({"running": false, "state": "not running"}),
                lsb::NOT_RUNNING,
            ),
            Ok(PidFile::Pid(pid)) => (
                json!({"running": false, "state": "stopped", "stale_pid": pid}),
                lsb::DEAD_WITH_PID_FILE,
            ),
            Err(e) => (
                json!({"running": null, "state": "unknown", "detail": e.to_string()}),
                lsb::UNKNOWN,
            ),
        },
        Probe::Held(info) => match control::ask(&layout.var_dir, &Request::Status, ASK_TIMEOUT) {
            Ok(Answer::Reply(r, _)) if r.status.is_some() => {
                let mut v = serde_json::to_value(r.status).unwrap_or_default();
                v["running"] = json!(true);
                v["state"] = json!("running");
                (v, lsb::RUNNING)
            }
            other => {
                let detail = match other {
                    Ok(Answer::Reply(r, _)) => r.error.unwrap_or_default(),
                    Ok(Answer::NoSocket) => "the master has no control socket".into(),
                    Err(e) => e.to_string(),
                };
                (
                    json!({"running": true, "state": "running", "master": {"pid": info.pid}, "runners": null, "detail": detail}),
                    lsb::RUNNING,
                )
            }
        },
    };
    println!("{value}");
    code
}

/// Whether the lock's master is PID 1 of this very PID namespace (we run
/// inside its container: it takes us down when it exits).
fn is_our_pid1(info: &LockInfo) -> bool {
    info.pid == Some(1) && info.pidns.is_some() && info.pidns == own_pidns()
}

pub fn stop(config: &Config, args: &StopArgs) -> i32 {
    let layout = Layout::new(&config.mailman.var_dir);
    let info = match probe_settled(&layout) {
        Probe::Free => {
            eprintln!("{NOT_RUNNING}");
            return 0;
        }
        Probe::Unknown(e) => {
            eprintln!("GNU Mailman is in an unexpected state ({e})");
            return 1;
        }
        Probe::Held(info) => info,
    };
    let limit = match args.timeout {
        Some(secs) if secs.is_finite() && secs >= 0.0 => Duration::from_secs_f64(secs),
        _ => config.mailman.stop_timeout.0 + Duration::from_secs(8),
    };
    let deadline = Instant::now() + limit;
    let line = "Shutting down Mailman's master runner";
    // The socket first: it works across PID namespaces and tells us when
    // the runners are gone.
    match ask(config, &Request::Stop) {
        Asked::Done(stream) => {
            if !args.quiet {
                println!("{line}");
            }
            if args.no_wait {
                return 0;
            }
            let closed =
                control::wait_closed(stream, deadline.saturating_duration_since(Instant::now()));
            if closed && is_our_pid1(&info) {
                // It exits right after; waiting would get us killed with it.
                return 0;
            }
            let recorded = info
                .identity()
                .filter(|r| r.pidns.is_none() || r.pidns == own_pidns());
            return wait_gone(&layout, recorded.as_ref(), deadline, limit);
        }
        Asked::Failed(e) => {
            eprintln!("{e}");
            return 1;
        }
        Asked::NoSocket => {}
    }
    let master = match find_master(&layout) {
        Target::NotRunning => {
            eprintln!("{NOT_RUNNING}");
            return 0;
        }
        Target::Refuse(msg) => {
            eprintln!("{msg}");
            return 1;
        }
        Target::Master(master) => master,
    };
    let pid = master.pid;
    if !args.quiet {
        println!("{line}");
    }
    match kill(Pid::from_raw(pid), Signal::SIGTERM) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => {
            eprintln!("cannot signal the master (pid {pid}): {}", e.desc());
            return 1;
        }
    }
    // A master that is PID 1 of our own namespace (`docker exec mailman
    // stop`) takes this process down with it when it exits: waiting would
    // only turn a clean stop into a SIGKILLed command.
    if args.no_wait || pid == 1 {
        return 0;
    }
    wait_gone(&layout, Some(&master), deadline, limit)
}

/// Waits until the lock is free and (when we can see it) the master process
/// has exited: it releases the lock a moment before it exits.
fn wait_gone(
    layout: &Layout,
    master: Option<&Identity>,
    deadline: Instant,
    limit: Duration,
) -> i32 {
    while Instant::now() < deadline {
        if !matches!(lock::probe(layout), Probe::Held(_)) && !master.is_some_and(still_running) {
            return 0;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    eprintln!(
        "GNU Mailman did not stop within {:.1}s",
        limit.as_secs_f64()
    );
    1
}

/// `start`. `signals` are the master's handlers, installed early by the
/// caller (used with `--foreground` only).
pub fn start(
    config: Config,
    args: &StartArgs,
    signals: Option<std::io::Result<crate::os::signals::SignalPipe>>,
) -> i32 {
    let layout = Layout::new(&config.mailman.var_dir);
    if let Probe::Held(_) = lock::probe(&layout) {
        eprintln!("{ALREADY_RUNNING}");
        return EXIT_USAGE;
    }
    if !args.quiet {
        println!("Starting Mailman's master runner");
    }
    let opts = master::Options {
        run_as_user: args.run_as_user,
        ..Default::default()
    };
    if args.foreground {
        let signals = signals.unwrap_or_else(master::install_signals);
        return master::main(config, opts, signals);
    }
    match daemonise(&config, args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cannot start the master: {e}");
            EXIT_ERROR
        }
    }
}

/// Starts `mailman master` in a new session, with stdin/stdout/stderr on
/// /dev/null and the write end of a pipe as fd 3, and waits until the master
/// writes `ready` or its error there.
fn daemonise(config: &Config, args: &StartArgs) -> anyhow::Result<i32> {
    // pipe2 is not on macOS; `start` is single-threaded, so pipe + fcntl
    // cannot leak the fds into another fork.
    let (read, write): (OwnedFd, OwnedFd) = nix::unistd::pipe()?;
    for fd in [&read, &write] {
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )?;
    }
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("master");
    if let Some(src) = &config.source {
        cmd.arg("-C").arg(src);
    }
    if args.run_as_user {
        cmd.arg("--run-as-user");
    }
    for set in &config.sets {
        cmd.arg("--set").arg(set);
    }
    cmd.env(READY_FD_ENV, "3")
        .env("MAILMAN_VAR_DIR", &config.mailman.var_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let wfd = write.as_raw_fd();
    // SAFETY: setsid, dup2 and fcntl are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if wfd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0);
            } else if libc::dup2(wfd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    drop(write);

    let mut answer = Vec::new();
    let mut file = std::fs::File::from(read);
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            eprintln!(
                "the master did not report within {}s; see {}",
                START_TIMEOUT.as_secs(),
                Layout::new(&config.mailman.var_dir).log_file().display()
            );
            return Ok(EXIT_ERROR);
        }
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        let mut fds = [PollFd::new(
            std::os::fd::AsFd::as_fd(&file),
            PollFlags::POLLIN,
        )];
        match poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => anyhow::bail!("poll: {}", e.desc()),
        }
        let mut buf = [0u8; 4096];
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    let line = text.lines().next().unwrap_or("");
    if line == "ready" {
        return Ok(0);
    }
    if let Some(rest) = line.strip_prefix("error ") {
        let (code, message) = rest.split_once(' ').unwrap_or(("1", rest));
        eprintln!("{message}");
        return Ok(match code.parse::<i32>() {
            Ok(EXIT_USAGE) => EXIT_USAGE,
            _ => EXIT_ERROR,
        });
    }
    let status = child
        .wait()
        .map(|s| s.to_string())
        .unwrap_or_else(|e| e.to_string());
    eprintln!("the master exited during start-up ({status})");
    Ok(EXIT_ERROR)
}
