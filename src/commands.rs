//! The control commands: `start`, `stop`, `restart`, `reopen`, `status`.
//! Each decides "running" from the lock, never from a pid alone, and checks
//! a pid's identity before it signals it (SPEC 2, 3.1, 3.6).
//!
//! Not here: the master itself (`master`).

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::cli::{QuietArgs, StartArgs, StopArgs};
use crate::config::Config;
use crate::lock::{self, Layout, PidFile, Probe};
use crate::master::{self, EXIT_ERROR, EXIT_USAGE};
use crate::procinfo::{Identity, own_pidns, still_running};
use crate::spawn::READY_FD_ENV;

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

/// `restart` (SIGUSR1) and `reopen` (SIGHUP).
pub fn signal_master(config: &Config, args: &QuietArgs, sig: Signal, line: &str) -> i32 {
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
            if !args.quiet {
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

pub fn stop(config: &Config, args: &StopArgs) -> i32 {
    let layout = Layout::new(&config.mailman.var_dir);
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
        println!("Shutting down Mailman's master runner");
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
    let limit = match args.timeout {
        Some(secs) if secs.is_finite() && secs >= 0.0 => Duration::from_secs_f64(secs),
        _ => config.mailman.stop_timeout.0 + Duration::from_secs(8),
    };
    let deadline = Instant::now() + limit;
    // Gone means: the lock is free and the process has exited (it releases
    // the lock a moment before it exits).
    while Instant::now() < deadline {
        if !matches!(lock::probe(&layout), Probe::Held(_)) && !still_running(&master) {
            return 0;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    eprintln!(
        "GNU Mailman did not stop within {:.1}s (master pid {pid})",
        limit.as_secs_f64()
    );
    1
}

/// `start`. `signals` are the master's handlers, installed early by the
/// caller (used with `--foreground` only).
pub fn start(
    config: Config,
    args: &StartArgs,
    signals: Option<std::io::Result<crate::signals::SignalPipe>>,
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
