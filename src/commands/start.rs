//! `start`: validate, then run the master in the foreground or as a daemon
//! that reports through a pipe once its runners are started.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::ALREADY_RUNNING;
use crate::cli::StartArgs;
use crate::config::Config;
use crate::exit::{EXIT_ERROR, EXIT_USAGE};
use crate::master;
use crate::master::spawn::READY_FD_ENV;
use crate::os::lock::Probe;

/// How long `start` waits for the master to say it is up.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// `start`. `signals` are the master's handlers, installed early by the
/// caller (used with `--foreground` only).
pub fn start(
    config: Config,
    args: &StartArgs,
    signals: Option<std::io::Result<crate::os::signals::SignalPipe>>,
) -> i32 {
    let layout = config.layout();
    if held_by_a_live_master(&layout) {
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
            // What the caller left open (a pipe, a lock file) is not the
            // daemon's: held for the master's life, it would keep a reader
            // of that pipe from its end of file, or the lock taken. Closed
            // at the exec, so that an exec error is still reported. Best
            // effort: a kernel before 5.11 has no CLOSE_RANGE_CLOEXEC.
            #[cfg(target_os = "linux")]
            libc::syscall(
                libc::SYS_close_range,
                4 as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
            );
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
                config.layout().log_file().display()
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

/// How long `start` waits for the lock of a master that is dying (killed,
/// its threads still exiting) to be released.
const DYING_WAIT: Duration = Duration::from_secs(3);

/// How long a lock held by a master that looks alive is probed again
/// before `start` calls it running (as the master itself retries its lock).
const SETTLE: Duration = Duration::from_millis(300);

/// Whether a live master holds the lock. Right after a `kill -9` of the
/// master the kernel may not yet have released its lock (the process is
/// still exiting): when the process the lock names is gone, a zombie, or
/// has SIGKILL pending, wait for the lock to be released rather than call
/// it running; and any held lock is probed again for a moment first.
fn held_by_a_live_master(layout: &crate::os::layout::Layout) -> bool {
    let start = Instant::now();
    loop {
        let Probe::Held(info) = super::probe_settled(layout) else {
            return false;
        };
        // A pid from another PID namespace (a container's) says nothing here.
        let dying = info.identity().is_some_and(|id| {
            (id.pidns.is_none() || id.pidns == crate::os::procinfo::own_pidns())
                && (!crate::os::procinfo::still_running(&id)
                    || crate::os::procinfo::kill_pending(id.pid))
        });
        let waited = start.elapsed();
        if waited >= DYING_WAIT || (!dying && waited >= SETTLE) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
