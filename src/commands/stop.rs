//! `stop`: over the control socket (which says when the runners are gone),
//! else SIGTERM after an identity check; then wait until the master is gone.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{Asked, Target, ask, find_master, not_running, probe_settled};
use crate::cli::StopArgs;
use crate::config::Config;
use crate::control::{self, Request};
use crate::os::lock::{self, Layout, LockInfo, Probe};
use crate::os::procinfo::{Identity, own_pidns, still_running};

/// Whether the lock's master is PID 1 of this very PID namespace (we run
/// inside its container: it takes us down when it exits).
fn is_our_pid1(info: &LockInfo) -> bool {
    info.pid == Some(1) && info.pidns.is_some() && info.pidns == own_pidns()
}

pub fn stop(config: &Config, args: &StopArgs) -> i32 {
    let layout = config.layout();
    let info = match probe_settled(&layout) {
        Probe::Free => {
            eprintln!("{}", not_running(&layout));
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
    let mut deadline = Instant::now() + limit;
    let line = "Shutting down Mailman's master runner";
    // The socket first: it works across PID namespaces and tells us when
    // the runners are gone.
    let mut socket_error = None;
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
        // No answer on the socket (a master out of descriptors takes no
        // connection): SIGTERM after the identity check, with the whole
        // limit to stop in.
        Asked::Unreachable(e) => {
            socket_error = Some(e);
            deadline = Instant::now() + limit;
        }
    }
    let master = match find_master(&layout) {
        Target::NotRunning => {
            eprintln!("{}", not_running(&layout));
            return 0;
        }
        Target::Refuse(msg) => {
            match socket_error {
                Some(e) => eprintln!("{e}; {msg}"),
                None => eprintln!("{msg}"),
            }
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
