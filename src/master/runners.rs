//! The runners' side of the master: what happens when a runner exits (the
//! restart rule applied and logged), starting one, and the restart and
//! reopen requests that reach every runner.
//!
//! Not here: the rule itself (`slice`, pure), the process set-up (`spawn`).

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tracing::{debug, error, info, warn};

use super::output::Output;
use super::shutdown::signal_group;
use super::slice::{self, Decision, RestartAsked, Slice, State, Why};
use super::{EXIT_GAVE_UP, Master, Mode, spawn};
use crate::config::OnGiveUp;

impl Master {
    /// What happens when a child exits: its last output is logged, then the
    /// restart rule decides about the runner (or `init` goes on to the
    /// runners); anything else was an orphan we only reaped.
    pub(super) fn on_runner_exit(&mut self, pid: i32, why: Why) {
        let now = Instant::now();
        // Its last words, and its pipes closed if nobody else holds them (a
        // child it left behind may).
        self.outputs.retain_mut(|o| o.pid != pid || !o.drain(false));
        if self.init.as_ref().is_some_and(|i| i.pid == Some(pid)) {
            return self.on_init_exit(why);
        }
        if let Some(idx) = self.jobs.iter().position(|j| j.pid() == Some(pid)) {
            return self.on_job_exit(idx, why);
        }
        if self.preload.as_ref().and_then(|p| p.pid()) == Some(pid) {
            return self.on_helper_exit(why);
        }
        let Some(idx) = self.slices.iter().position(|s| s.pid() == Some(pid)) else {
            debug!("reaped pid {pid} ({why}), not a runner");
            if let Some(p) = &mut self.preload {
                p.note_unknown_exit(pid, why, now);
            }
            return;
        };
        self.record_stale = true;
        let since = match self.slices[idx].state {
            State::Running { since, .. } => since,
            _ => now,
        };
        self.decide(idx, Some(pid), why, now.saturating_duration_since(since));
    }

    /// Applies the restart rule to an exit (or, with no pid, a failed
    /// start) and logs it as Mailman does.
    pub(super) fn decide(&mut self, idx: usize, pid: Option<i32>, why: Why, uptime: Duration) {
        // Starting counts as running here: a runner that crashes while the
        // others are still being started is restarted like any other.
        let restartable = self.restartable && !matches!(self.mode, Mode::Stopping { .. });
        let s = &mut self.slices[idx];
        let decision = s.on_exit(why, uptime, restartable, slice::jitter);
        s.note_exit(Instant::now());
        if let Some(pid) = pid {
            info!(
                "Master detected subprocess exit (pid: {pid}, why: {why}, class: {}, slice: {}/{}){}",
                s.runner.name,
                s.slice + 1,
                s.range,
                if decision.restarts() {
                    " [restarting]"
                } else {
                    ""
                }
            );
        }
        match decision {
            // Due now, started at the end of this turn of the loop: never
            // from inside the reaping, and never more than a batch a turn.
            Decision::RestartNow => {
                s.state = State::BackingOff {
                    until: Instant::now(),
                }
            }
            Decision::RestartAfter(delay) => {
                debug!("restarting {} in {} ms", s.spec(), delay.as_millis());
                s.state = State::BackingOff {
                    until: Instant::now() + delay,
                };
            }
            Decision::Leave => {
                s.state = State::Stopped;
                // Another master may run it now.
                s.owner = None;
            }
            Decision::GiveUp => {
                s.state = State::Failed;
                s.owner = None;
                info!(
                    "Runner {} reached maximum restart limit of {}, not restarting.",
                    s.runner.name, s.runner.max_restarts
                );
                self.notifier.send(&format!(
                    "STATUS=Runner {} reached maximum restart limit",
                    s.runner.name
                ));
                if self.config.mailman.on_give_up == OnGiveUp::Exit {
                    warn!("on_give_up = \"exit\": stopping the master");
                    self.begin_stop(libc::SIGTERM, EXIT_GAVE_UP);
                }
            }
        }
    }

    /// Starts the slices `idxs` now, together: each claimed, forked by the
    /// preload helper where it can, the others cloned side by side
    /// ([`Self::launch_plain_all`]: none waits for the one before it to
    /// exec). Returns those that could not be started and why, in slice
    /// order. Another master owning a slice is no failure: it then waits
    /// ([`State::WaitingForOwner`]).
    pub(super) fn launch_together(&mut self, idxs: &[usize]) -> Vec<(usize, LaunchError)> {
        let mut plain = Vec::new();
        let mut failed = Vec::new();
        for &idx in idxs {
            match self.claim(idx) {
                Ok(false) => {}
                Ok(true) if self.fork_from_helper(idx) => {}
                Ok(true) => plain.push(idx),
                Err(e) => failed.push((idx, e)),
            }
        }
        let results = self.launch_plain_all(&plain);
        failed.extend(
            plain
                .iter()
                .zip(results)
                .filter_map(|(&idx, r)| r.err().map(|e| (idx, e))),
        );
        failed.sort_by_key(|(idx, _)| *idx);
        failed
    }

    /// Starts slice `idx` now as a process of its own (not from the
    /// preload helper); its slice is claimed.
    pub(super) fn launch_plain(&mut self, idx: usize) -> Result<(), LaunchError> {
        let sp =
            spawn::spawn(&self.ctx, &self.slices[idx]).map_err(|e| self.launch_error(idx, &e))?;
        self.now_running(idx, sp.pid, Instant::now(), [sp.stdout, sp.stderr]);
        Ok(())
    }

    /// Starts the claimed slices `idxs` as processes of their own, side by
    /// side (`spawn::spawn_all`); per slice, as [`Self::launch_plain`] says.
    pub(super) fn launch_plain_all(&mut self, idxs: &[usize]) -> Vec<Result<(), LaunchError>> {
        let slices: Vec<&Slice> = idxs.iter().map(|&i| &self.slices[i]).collect();
        let results = spawn::spawn_all(&self.ctx, &slices);
        let now = Instant::now();
        idxs.iter()
            .zip(results)
            .map(|(&idx, r)| match r {
                Ok(sp) => {
                    self.now_running(idx, sp.pid, now, [sp.stdout, sp.stderr]);
                    Ok(())
                }
                Err(e) => Err(self.launch_error(idx, &e)),
            })
            .collect()
    }

    /// Why slice `idx`'s runner could not be started, as the log says it.
    fn launch_error(&self, idx: usize, e: &std::io::Error) -> LaunchError {
        let s = &self.slices[idx];
        LaunchError {
            message: format!(
                "Cannot start runner {}: {}: {}",
                s.spec(),
                spawn::expand(&self.ctx, s)
                    .first()
                    .map_or("", String::as_str),
                crate::util::io_text(e)
            ),
            lasting: lasting(e),
        }
    }

    /// Slice `idx` runs as `pid` since `since` (started plainly, or forked
    /// by the preload helper), its output on these pipes.
    pub(super) fn now_running(
        &mut self,
        idx: usize,
        pid: i32,
        since: Instant,
        [stdout, stderr]: [std::os::fd::OwnedFd; 2],
    ) {
        self.record_stale = true;
        self.expect_ready(idx, since);
        let s = &mut self.slices[idx];
        debug!("[{pid}] {}", s.spec());
        s.state = State::Running { pid, since };
        for (fd, stream) in [(stdout, "stdout"), (stderr, "stderr")] {
            let o = Output::new(fd, &s.runner.name, Some(s.slice), pid, stream);
            self.outputs.push(o);
        }
    }

    /// Starts the slices `idxs` again, together (back-offs over, restarts
    /// due at the same turn, a `restart` request): a runner that cannot be
    /// started counts as one that exited with 127 at once. A start-up's
    /// batches at most at a time.
    pub(super) fn relaunch_all(&mut self, idxs: &[usize]) {
        for batch in idxs.chunks(super::startup::BATCH) {
            // A failure may have given up and stopped the master.
            if self.mode != Mode::Running {
                return;
            }
            for (idx, e) in self.launch_together(batch) {
                error!("{}", e.message);
                self.slices[idx].state = State::Stopped;
                self.decide(idx, None, Why::Exit(127), Duration::ZERO);
            }
        }
    }

    /// A runner asked to restart has not exited by its deadline: SIGTERM
    /// (as a stop would), then SIGKILL. Its exit is restarted either way.
    pub(super) fn escalate_restart(&mut self, idx: usize, now: Instant) {
        let stop_timeout = self.config.mailman.stop_timeout;
        let s = &mut self.slices[idx];
        let (Some(pid), Some(asked)) = (s.pid(), s.restart_asked) else {
            return;
        };
        if asked.terminated {
            warn!(
                "Runner {} (pid {pid}) did not stop on SIGTERM within {stop_timeout}; sending SIGKILL",
                s.spec()
            );
            signal_group(pid, Signal::SIGKILL);
            s.restart_asked = Some(RestartAsked {
                deadline: now + Duration::from_secs(3600),
                terminated: true,
                counted: asked.counted,
            });
            return;
        }
        warn!(
            "Runner {} (pid {pid}) did not restart on SIGUSR1 within {stop_timeout}; sending SIGTERM",
            s.spec()
        );
        signal_group(pid, Signal::SIGTERM);
        s.restart_asked = Some(RestartAsked {
            deadline: now + stop_timeout.0,
            terminated: true,
            counted: asked.counted,
        });
    }

    /// Where runners are confined by a record (no cgroup), writes it once
    /// a turn of the loop, if the runners changed.
    pub(super) fn keep_record(&mut self) {
        if !std::mem::take(&mut self.record_stale) || self.confine.cgroup().is_some() {
            return;
        }
        let running: Vec<(i32, u64)> = self
            .slices
            .iter()
            .filter_map(|s| s.pid())
            .chain(self.jobs.iter().filter_map(|j| j.pid()))
            .chain(self.preload.as_ref().and_then(|p| p.pid()))
            .filter_map(|pid| Some((pid, crate::os::procinfo::Identity::of(pid)?.start_time)))
            .collect();
        self.confine.record(&running);
    }

    /// Live processes the master still has to see exit: runners and `init`.
    pub(super) fn alive(&self) -> usize {
        let forking = self
            .slices
            .iter()
            .filter(|s| matches!(s.state, State::Forking { .. }))
            .count();
        self.running()
            + forking
            + usize::from(self.preload.as_ref().is_some_and(|p| p.pid().is_some()))
            + usize::from(self.init.is_some())
            + self.jobs.iter().filter(|j| j.run.is_some()).count()
    }

    pub(super) fn running(&self) -> usize {
        self.slices.iter().filter(|s| s.pid().is_some()).count()
    }

    /// SIGHUP (or a reopen request): reopen our log, pass SIGHUP on to every
    /// runner.
    pub(super) fn reopen(&mut self, how: &str) {
        // The writer thread reopens the file (and logs it if it cannot).
        if let Some(log) = &self.log {
            log.reopen();
        }
        for pid in self.slices.iter().filter_map(Slice::pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGHUP);
        }
        info!("Master watcher {how}.  Re-opening log files.");
    }

    /// SIGUSR1 (or a restart request, maybe for one runner or slice): each
    /// running runner gets SIGUSR1 and is restarted as it exits, whatever
    /// its exit status (one that has not exited after `stop_timeout` gets
    /// SIGTERM, then after as long again SIGKILL: see
    /// [`Master::escalate_restart`]); runners waiting, given up or stopped
    /// start again at once with their count reset.
    pub(super) fn restart(&mut self, runner: Option<&str>, slice: Option<u32>) {
        if self.mode != Mode::Running {
            return;
        }
        let mut again = Vec::new();
        for idx in 0..self.slices.len() {
            let s = &self.slices[idx];
            if runner.is_some_and(|n| n != s.runner.name) || slice.is_some_and(|n| n != s.slice) {
                continue;
            }
            match self.slices[idx].state {
                // Being forked by the preload helper: a new runner already.
                State::Forking { .. } => {}
                State::Running { pid, .. } => {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGUSR1);
                    self.slices[idx].restart_asked = Some(RestartAsked {
                        deadline: Instant::now() + self.config.mailman.stop_timeout.0,
                        terminated: false,
                        counted: false,
                    });
                }
                _ if self.restartable => {
                    self.slices[idx].forgive();
                    again.push(idx);
                }
                _ => {}
            }
        }
        self.relaunch_all(&again);
    }
}

/// Why a runner could not be started.
pub(super) struct LaunchError {
    pub(super) message: String,
    /// The program cannot be run at all (missing, not executable, not a
    /// program), as opposed to a passing failure (busy file, no memory).
    pub(super) lasting: bool,
}

/// Whether an exec error will happen again however often it is tried.
fn lasting(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ENOENT
                | libc::EACCES
                | libc::ENOEXEC
                | libc::ENOTDIR
                | libc::ELOOP
                | libc::ENAMETOOLONG
                | libc::EPERM
                | libc::EISDIR
        )
    )
}
