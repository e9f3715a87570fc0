//! `start`: validate, then run the master in the foreground or as a daemon
//! that reports through a pipe once its runners are started.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::wait::WaitStatus;
use nix::unistd::ForkResult;

use super::ALREADY_RUNNING;
use crate::cli::StartArgs;
use crate::config::Config;
use crate::exit::{EXIT_ERROR, EXIT_USAGE};
use crate::master;
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
    match daemonise(config, args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cannot start the master: {e}");
            EXIT_ERROR
        }
    }
}

/// Forks the master: the child goes on as the daemon (a new session,
/// stdin, stdout and stderr on /dev/null, nothing else of the caller's
/// open but the write end of a pipe), with the configuration already read
/// and checked; this process waits until it writes `ready` or its error
/// there. No second program start: the master is this one, under the
/// command line it was given (`ps` shows `mailman start`).
fn daemonise(config: Config, args: &StartArgs) -> anyhow::Result<i32> {
    // pipe2 is not on macOS; `start` is single-threaded, so pipe + fcntl
    // cannot leak the fds into another fork.
    let (read, write): (OwnedFd, OwnedFd) = nix::unistd::pipe()?;
    for fd in [&read, &write] {
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )?;
    }
    let log_file = config.layout().log_file();
    // SAFETY: `start` has started no thread (nothing before this point
    // does), so the child is a whole copy of this process and may go on
    // running Rust code, allocating included.
    let child = match unsafe { nix::unistd::fork() }? {
        ForkResult::Child => {
            drop(read);
            let opts = master::Options {
                run_as_user: args.run_as_user,
                ..Default::default()
            };
            std::process::exit(become_daemon(config, opts, write));
        }
        ForkResult::Parent { child } => child,
    };
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
                log_file.display()
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
    let status = match nix::sys::wait::waitpid(child, None) {
        Ok(WaitStatus::Exited(_, code)) => format!("exit status: {code}"),
        Ok(WaitStatus::Signaled(_, sig, _)) => format!("killed by {sig}"),
        Ok(other) => format!("{other:?}"),
        Err(e) => e.desc().to_string(),
    };
    eprintln!("the master exited during start-up ({status})");
    Ok(EXIT_ERROR)
}

/// In the forked child: what a daemon has (a session of its own, stdio on
/// /dev/null, none of the caller's descriptors), then the master's
/// handlers (their self-pipe must not be among what is closed), then the
/// master, which reports down `ready`.
fn become_daemon(config: Config, opts: master::Options, ready: OwnedFd) -> i32 {
    if let Err(e) = detach(&ready) {
        let mut f = std::fs::File::from(ready);
        let _ = writeln!(f, "error {EXIT_ERROR} cannot start the master: {e}");
        return EXIT_ERROR;
    }
    let signals = master::install_signals();
    master::main_daemon(config, opts, signals, ready)
}

/// A new session; stdin, stdout and stderr on /dev/null; every other
/// descriptor but `keep` closed: what the caller left open (a pipe, a lock
/// file), held for the master's life, would keep a reader of that pipe
/// from its end of file, or the lock taken.
fn detach(keep: &OwnedFd) -> anyhow::Result<()> {
    nix::unistd::setsid().map_err(|e| anyhow::anyhow!("setsid: {}", e.desc()))?;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| anyhow::anyhow!("/dev/null: {e}"))?;
    for target in 0..3 {
        // SAFETY: dup2 onto the standard descriptors, which nothing in
        // this process holds as an owned handle.
        if unsafe { libc::dup2(null.as_raw_fd(), target) } < 0 {
            let e = std::io::Error::last_os_error();
            anyhow::bail!("/dev/null as descriptor {target}: {e}");
        }
    }
    drop(null);
    #[cfg(target_os = "linux")]
    {
        let k = keep.as_raw_fd() as libc::c_uint;
        for (first, last) in [(3, k.saturating_sub(1)), (k + 1, libc::c_uint::MAX)] {
            if first <= last {
                // SAFETY: closes descriptors nothing in this process owns: it
                // holds only `keep` and 0, 1, 2 (`start` opened nothing else
                // that is still open). Best effort: a kernel before 5.9 has
                // no close_range, and they stay.
                unsafe {
                    libc::syscall(libc::SYS_close_range, first, last, 0 as libc::c_uint);
                }
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = keep;
    Ok(())
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
