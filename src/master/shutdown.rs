//! Stopping: the stop signal to every runner's process group, SIGKILL after
//! `stop_timeout`, then the final sweep, the pid file, the lock and the log
//! (docs/master.md, "Stopping").
//!
//! Not here: deciding to stop (a signal in `event_loop`, a request in
//! `requests`, a give-up in `runners`).

use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tracing::{debug, error, info, warn};

use super::slice::State;
use super::{Master, Mode};
use crate::os::lock;
use crate::os::signals;

/// How long SIGKILLed runners get to disappear before the master gives up
/// waiting for them (a process in uninterruptible sleep cannot be killed).
const KILL_GRACE: Duration = Duration::from_secs(3);

impl Master {
    /// SIGTERM/SIGINT/SIGQUIT (or a give-up): signal every runner's process
    /// group, then wait for them until `stop_timeout`.
    pub(super) fn begin_stop(&mut self, sig: i32, code: i32) {
        if let Mode::Stopping { .. } = self.mode {
            debug!("already stopping; {} ignored", signals::name(sig));
            return;
        }
        self.restartable = false;
        self.notifier
            .send("STOPPING=1\nSTATUS=Stopping the runners");
        self.mode = Mode::Stopping {
            deadline: Instant::now() + self.config.mailman.stop_timeout.0,
            killed: false,
            code,
        };
        let signal = Signal::try_from(sig).unwrap_or(Signal::SIGTERM);
        if let Some(pid) = self.init.as_ref().and_then(|i| i.pid) {
            signal_group(pid, signal);
        }
        for s in &mut self.slices {
            match s.state {
                State::Running { pid, .. } => signal_group(pid, signal),
                State::BackingOff { .. } | State::WaitingForOwner { .. } => {
                    s.state = State::Stopped
                }
                _ => {}
            }
        }
        self.stop_jobs(signal);
        // Slices it is forking come back as runners, and are signalled then.
        self.stop_helper(signal);
    }

    /// The stop deadline passed: SIGKILL to every runner still there, then,
    /// after [`KILL_GRACE`], give up on those a SIGKILL did not end.
    pub(super) fn on_stop_deadline(&mut self, now: Instant) {
        let Mode::Stopping { killed, code, .. } = self.mode else {
            return;
        };
        if killed {
            let left: Vec<String> = self
                .slices
                .iter()
                .filter_map(|s| s.pid().map(|p| format!("{} (pid {p})", s.spec())))
                .collect();
            error!(
                "runners still alive after SIGKILL, giving up on them: {}",
                left.join(", ")
            );
            for s in &mut self.slices {
                s.state = State::Stopped;
            }
            for j in &mut self.jobs {
                j.run = None;
            }
            self.init = None;
            if let Some(p) = &mut self.preload {
                p.give_up();
            }
            return;
        }
        if let Some(pid) = self.init.as_ref().and_then(|i| i.pid) {
            warn!(
                "init (pid {pid}) did not stop within {}; sending SIGKILL",
                self.config.mailman.stop_timeout
            );
            signal_group(pid, Signal::SIGKILL);
        }
        for s in &self.slices {
            if let Some(pid) = s.pid() {
                warn!(
                    "Runner {} (pid {pid}) did not stop within {}; sending SIGKILL",
                    s.spec(),
                    self.config.mailman.stop_timeout
                );
                signal_group(pid, Signal::SIGKILL);
            }
        }
        self.kill_jobs();
        self.stop_helper(Signal::SIGKILL);
        self.mode = Mode::Stopping {
            deadline: now + KILL_GRACE,
            killed: true,
            code,
        };
    }

    /// After the loop: sweep what is left, remove the pid file, release the
    /// lock, flush the log (docs/master.md, "Stopping").
    pub(super) fn finish(mut self, code: i32) -> i32 {
        // Closed now, not among the last descriptors at exit: closing an
        // inotify descriptor can wait for the kernel (0.1 ms usually, up to
        // 20 ms measured here), and the lock, released at exit, should be
        // the last thing to go.
        drop(self.lock_watch.take());
        self.sweep();
        self.confine.close();
        for o in self.outputs.iter_mut() {
            o.drain(true);
        }
        lock::remove_pid_file(&self.layout);
        if self.ctx.config_arg == self.layout.config_copy() {
            let _ = std::fs::remove_file(&self.ctx.config_arg);
        }
        self.lock.clear();
        if let Some(server) = self.control.take() {
            server.remove();
        }
        info!("Master stopped");
        // `stop` clients waiting on us learn that the runners are gone.
        self.clients.clear();
        if std::process::id() == 1 {
            // Processes that entered the namespace from outside (`docker
            // exec mailman stop`) are not ours to kill: let them finish
            // first, or the command that stopped us dies with status 137.
            wait_for_visitors(VISITOR_GRACE);
            // Then nothing may outlive us in this namespace. Reap with a
            // bound: a process stuck in the kernel cannot be killed.
            let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
            let deadline = Instant::now() + KILL_GRACE;
            while Instant::now() < deadline {
                match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                    Err(Errno::ECHILD) => break,
                    Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(5)),
                    _ => {}
                }
            }
        }
        drop(self.log.take());
        code
    }
}

impl Master {
    /// Nothing that ran under this master outlives it. What is left is our
    /// child: a runner's children and helpers come to us when their parent
    /// dies (we are their subreaper). Each child's process group gets
    /// SIGKILL, then the child, then we reap; until no child is left (a
    /// grandchild comes to us when its parent dies) or [`KILL_GRACE`] ends.
    ///
    /// Only groups that hold a child of ours are signalled, at that moment:
    /// a child not yet reaped keeps its group's id from being reused, so the
    /// signal can reach no stranger, however long the master has run (a
    /// runner's old pid may long since be an unrelated process's group).
    /// Never our own group.
    fn sweep(&mut self) {
        let own = nix::unistd::getpgrp().as_raw();
        let deadline = Instant::now() + KILL_GRACE;
        let mut said = false;
        loop {
            let left = crate::os::procinfo::live_children();
            if left.is_empty() || Instant::now() >= deadline {
                break;
            }
            if !said {
                let pids: Vec<String> = left.iter().map(|(p, _)| p.to_string()).collect();
                warn!(
                    "Killing processes left behind by runners: {}",
                    pids.join(", ")
                );
                said = true;
            }
            for (pid, pgid) in left {
                if pgid != own {
                    let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
                }
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            self.reap();
            std::thread::sleep(Duration::from_millis(5));
        }
        self.reap();
    }
}

/// How long PID 1 waits for visitors (see [`wait_for_visitors`]) at exit.
const VISITOR_GRACE: Duration = Duration::from_secs(1);

/// As PID 1: waits up to `limit` for the processes that entered this PID
/// namespace from outside (their parent is outside, so their ppid reads 0)
/// to exit.
fn wait_for_visitors(limit: Duration) {
    #[cfg(target_os = "linux")]
    {
        let visitors = || -> usize {
            crate::os::procinfo::processes()
                .filter(|(pid, s)| *pid != 1 && !s.exited() && s.ppid() == Some(0))
                .count()
        };
        let deadline = Instant::now() + limit;
        while visitors() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = limit;
}

/// Signals a runner's process group, or the runner alone if its group is
/// gone (a runner may have left it).
pub(super) fn signal_group(pid: i32, sig: Signal) {
    if killpg(Pid::from_raw(pid), sig).is_err() {
        let _ = kill(Pid::from_raw(pid), sig);
    }
}
