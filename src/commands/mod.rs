//! What each CLI command does. Every lifecycle command decides "running"
//! from the lock, never from a pid alone, and checks a pid's identity before
//! it signals it (docs/commands.md, docs/master.md).
//!
//! | room      | commands |
//! |-----------|----------|
//! | `start`   | `start` (daemonised or in the foreground) |
//! | `stop`    | `stop` |
//! | `signal`  | `restart`, `reopen` |
//! | `status`  | `status`, `status --json` |
//! | `queues`  | `inject`, `queues` |
//! | `jobs`    | `jobs`, `run-job` |
//!
//! This file holds what they share: finding the master, asking it over the
//! control socket, the LSB codes.
//!
//! Not here: the master itself (`master`), argument parsing (`cli`).

pub mod jobs;
pub mod queues;
mod signal;
mod start;
mod status;
mod stop;

pub use signal::{reopen, restart};
pub use start::start;
pub use status::{status, status_json};
pub use stop::stop;

use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::control::{self, Answer, Request};
use crate::os::lock::{self, Layout, Probe};
use crate::os::procinfo::{Identity, own_pidns};

pub const NOT_RUNNING: &str = "GNU Mailman is not running";

/// Mailman's "not running" line, then which var dir was looked at (a
/// master started with another configuration, or from another directory
/// on an older default, is elsewhere).
pub fn not_running(layout: &Layout) -> String {
    format!(
        "{NOT_RUNNING}\n(no master holds {})",
        layout.lock_file().display()
    )
}
pub const ALREADY_RUNNING: &str = "GNU Mailman is already running";

/// `status --check`: the master runs, but is starting, stopping or
/// degraded.
pub const EXIT_UNHEALTHY: i32 = 1;

/// How long a command waits for a master that holds the lock but has not
/// yet written who it is (it is starting at this very moment).
const INFO_WAIT: Duration = Duration::from_secs(2);

/// LSB status codes (docs/commands.md).
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
    // The clock is read only if waited on: a first reading costs a process
    // the lookup of the vDSO's symbols and two page faults (`status`).
    let mut deadline = None;
    loop {
        let p = lock::probe(layout);
        match &p {
            Probe::Held(info)
                if info.identity().is_none()
                    && Instant::now()
                        < *deadline.get_or_insert_with(|| Instant::now() + INFO_WAIT) =>
            {
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
            let refuse = |why: &str| {
                Target::Refuse(format!(
                    "GNU Mailman is in an unexpected state (pid {pid} {why}; not signalled)"
                ))
            };
            match Identity::of(pid) {
                Some(live) if live.matches(&recorded) => {}
                _ => {
                    return refuse(&format!(
                        "is not the master that holds {}",
                        layout.lock_file().display()
                    ));
                }
            }
            match proven_master(pid, layout) {
                Ok(()) => Target::Master(recorded),
                Err(why) => refuse(&why),
            }
        }
    }
}

/// What the lock file's content cannot prove (anyone who may write it can
/// copy another process's identity there): that `pid` is a master (`mailman
/// master`, or the `mailman start` that became one) that holds this very
/// lock, and runs as the lock file's owner. Checked on Linux (`/proc/locks`,
/// `/proc/PID`); elsewhere the identity check is all.
fn proven_master(pid: i32, layout: &Layout) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let lock = layout.lock_file();
    if crate::os::procinfo::holds_flock(pid, &lock) == Some(false) {
        return Err(format!("does not hold {}", lock.display()));
    }
    if let Ok(meta) = std::fs::symlink_metadata(&lock)
        && crate::os::procinfo::runs_as(pid, meta.uid()) == Some(false)
    {
        return Err(format!("does not run as the owner of {}", lock.display()));
    }
    if let Some(args) = crate::os::procinfo::cmdline(pid) {
        let master = args.iter().skip(1).any(|a| a == "master" || a == "start");
        let called_master = args
            .first()
            .and_then(|a| std::path::Path::new(a).file_name())
            .is_some_and(|n| n == "master" || n == "start");
        if !master && !called_master {
            return Err("is not a mailman master".into());
        }
    }
    Ok(())
}

/// How long a control-socket request may take to be answered.
const ASK_TIMEOUT: Duration = Duration::from_secs(10);

/// What asking the master over its socket came to.
enum Asked {
    /// Answered; the connection (a `stop` waits on it).
    Done(UnixStream),
    /// No socket: fall back to signals.
    NoSocket,
    /// The master said no: the message, exit 1.
    Failed(String),
    /// The socket failed (no answer in time, closed without one): the
    /// checked signal path may still reach the master; the message says
    /// why the socket did not.
    Unreachable(String),
}

/// Asks the master that holds the lock. Never asks when the lock is free: a
/// socket file left by a dead master is not trusted.
fn ask(config: &Config, request: &Request) -> Asked {
    match control::ask(&config.layout().socket(), request, ASK_TIMEOUT) {
        Ok(Answer::NoSocket) => Asked::NoSocket,
        Ok(Answer::Reply(r, stream)) if r.ok => Asked::Done(stream),
        Ok(Answer::Reply(r, _)) => {
            Asked::Failed(r.error.unwrap_or_else(|| "the master refused".into()))
        }
        // A socket we may not use (another user's) tells nothing: signals
        // will give the real error.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Asked::NoSocket,
        Err(e) => Asked::Unreachable(format!("cannot talk to the master: {e}")),
    }
}
