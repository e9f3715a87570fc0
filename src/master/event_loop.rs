//! One turn of the event loop: sleep in `poll` until something happens,
//! then handle it. Nothing here blocks: signals arrive through a
//! self-pipe, runner output and control clients are non-blocking.
//!
//! Not here: what an event does to a runner (`runners`), what a request
//! does (`requests`).

use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tracing::{error, info, warn};

use super::slice::{State, Why};
use super::{EXIT_OK, Master, Mode};
use crate::control::{self, Request};
use crate::os::signals;

/// What `poll` found ready.
#[derive(Debug, Default)]
struct Ready {
    /// The signal pipe has bytes to drain (the signals' flags are read at
    /// every turn all the same).
    signals: bool,
    listener: bool,
    clients: Vec<usize>,
    outputs: Vec<usize>,
    probes: Vec<usize>,
    http_listener: bool,
    http: Vec<usize>,
    helper: bool,
    lock_dir: bool,
}

/// A listener ran out of descriptors with nothing of its own to close: said
/// once per episode ([`control::AcceptPause`]).
pub(super) fn warn_out_of_fds(what: &str) {
    let limit =
        crate::os::process::nofile_limit().map_or_else(|| "unknown".to_string(), |n| n.to_string());
    tracing::warn!(
        "out of file descriptors (open-file limit {limit}): new {what} connections wait until \
         some are free"
    );
}

impl Master {
    /// Whether runner output may be read now (see `log::writer`).
    fn log_has_room(&self) -> bool {
        self.log.as_ref().is_none_or(|l| l.has_room())
    }
}

/// `poll` refuses more descriptors than the soft open-file limit (EINVAL):
/// someone lowered the running master's limit (`prlimit --pid`) under what
/// it waits on, and the loop would hear nothing, `status` and `stop`
/// included. Raises the soft limit back to the hard one; whether that was
/// enough.
fn regained_nofile(polled: usize) -> bool {
    use crate::os::process::{nofile_limit, raise_nofile};
    let polled = polled as u64;
    if nofile_limit().is_none_or(|soft| soft >= polled) {
        return false;
    }
    let _ = raise_nofile();
    let Some(now) = nofile_limit().filter(|&soft| soft >= polled) else {
        return false;
    };
    warn!(
        "the open-file limit was lowered under the running master, below the {polled} \
         descriptors it waits on; raised back to {now}"
    );
    true
}

impl Master {
    /// The event loop. Returns the exit status once every runner is gone
    /// after a stop.
    pub(super) fn run(&mut self) -> i32 {
        loop {
            if let Mode::Stopping { code, .. } = self.mode
                && self.alive() == 0
            {
                return code;
            }
            // Before sleeping: what changed this turn is recorded.
            self.keep_record();
            let ready = self.wait();
            // Whether this turn may change a slice. A turn that only reads
            // (runner output, `status`, a scrape) before the deadline `poll`
            // waited for has nothing due: the timers are left alone, and
            // the slices are not scanned for them again (~30 µs at 1,000).
            let mut changes = ready.helper || ready.lock_dir || !ready.probes.is_empty();
            // What `poll` found, by index, before anything below changes the
            // tables (a reaped runner's pipes go).
            self.pump(&ready.outputs);
            self.finish_probes(&ready.probes);
            for sig in self.signals.take(ready.signals) {
                changes = true;
                self.on_signal(sig);
            }
            if ready.helper {
                self.on_helper_answer();
            }
            if ready.lock_dir {
                self.keep_lock();
            }
            changes |= self.serve(ready.listener, &ready.clients);
            self.serve_http(ready.http_listener, &ready.http);
            let now = Instant::now();
            if changes || self.wake_at.is_some_and(|at| at <= now) {
                self.on_timer(now);
                self.slice_timer = None;
            }
        }
    }

    /// One signal, as Mailman's master reads them; any other signal whose
    /// default would end the master is only logged.
    fn on_signal(&mut self, sig: i32) {
        match sig {
            libc::SIGCHLD => self.reap(),
            libc::SIGHUP => self.reopen("caught SIGHUP"),
            libc::SIGUSR1 => {
                self.restart(None, None);
                info!("Master watcher caught SIGUSR1.  Restarting.");
            }
            libc::SIGTERM | libc::SIGINT | libc::SIGQUIT => {
                info!("Master watcher caught {}.  Exiting.", signals::name(sig));
                self.begin_stop(sig, EXIT_OK);
            }
            _ => info!(
                "Master watcher caught {}.  Ignored (it means nothing to the master).",
                signals::name(sig)
            ),
        }
    }

    /// Sleeps until a signal, a control connection or request, runner
    /// output, or the next timer. Says what is ready.
    fn wait(&mut self) -> Ready {
        self.wake_at = self.next_deadline();
        let timeout = match self.wake_at {
            None => PollTimeout::NONE,
            Some(at) => {
                let ms = at.saturating_duration_since(Instant::now()).as_millis();
                // Round up so that we do not wake just before the deadline.
                PollTimeout::try_from((ms + 1).min(i32::MAX as u128) as i32)
                    .unwrap_or(PollTimeout::MAX)
            }
        };
        // Layout: [signals, helper?, lock dir?, listener?, clients…, outputs…,
        // probes…, http…].
        let mut fds = Vec::with_capacity(3 + self.clients.len() + self.outputs.len());
        fds.push(PollFd::new(self.signals.fd(), PollFlags::POLLIN));
        let helper = self
            .preload
            .as_ref()
            .and_then(|p| p.fd())
            .map(|fd| fds.push(PollFd::new(fd, PollFlags::POLLIN)))
            .is_some();
        let at_lock_dir = fds.len();
        let lock_dir = self
            .lock_watch
            .as_ref()
            .map(|w| fds.push(PollFd::new(w.fd(), PollFlags::POLLIN)))
            .is_some();
        // A listener resting (out of descriptors) stays in the table, asking
        // for nothing.
        let now = Instant::now();
        let accepting = |pause: &control::AcceptPause| {
            if pause.resting(now) {
                PollFlags::empty()
            } else {
                PollFlags::POLLIN
            }
        };
        let at_listener = fds.len();
        let listening = self
            .control
            .as_ref()
            .map(|c| fds.push(PollFd::new(c.fd(), accepting(&self.control_pause))))
            .is_some();
        let first_client = fds.len();
        for c in &self.clients {
            let want = if c.wants_to_write() {
                PollFlags::POLLOUT
            } else {
                PollFlags::POLLIN
            };
            fds.push(PollFd::new(c.fd(), want));
        }
        // While the log's queue is full, runners' pipes are left unread
        // (a runner that floods waits on its own pipe) and the writer's wake
        // pipe is polled instead.
        let room = self.log_has_room();
        let first_output = fds.len();
        let output_set = self.outputs.set_fd();
        if room {
            match output_set {
                Some(set) => fds.push(PollFd::new(set, PollFlags::POLLIN)),
                None => {
                    for o in self.outputs.iter() {
                        fds.push(PollFd::new(o.fd(), PollFlags::POLLIN));
                    }
                }
            }
        } else if let Some(log) = &self.log {
            fds.push(PollFd::new(log.wake_fd(), PollFlags::POLLIN));
        }
        let first_probe = fds.len();
        for p in &self.probes {
            fds.push(PollFd::new(p.fd(), PollFlags::POLLOUT));
        }
        let first_http = fds.len();
        if let Some(h) = &self.http {
            fds.push(PollFd::new(h.listener_fd(), accepting(&self.http_pause)));
            for (fd, writing) in h.client_fds() {
                let want = if writing {
                    PollFlags::POLLOUT
                } else {
                    PollFlags::POLLIN
                };
                fds.push(PollFd::new(fd, want));
            }
        }
        let mut ready = Ready::default();
        let result = poll(&mut fds, timeout);
        if result.is_ok() {
            self.poll_failing = false;
        }
        match result {
            Ok(_) => {
                let hit = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
                ready.signals = hit(&fds[0]);
                ready.helper = helper && hit(&fds[1]);
                ready.lock_dir = lock_dir && hit(&fds[at_lock_dir]);
                ready.listener = listening && hit(&fds[at_listener]);
                ready.clients = (first_client..first_output)
                    .filter(|&i| hit(&fds[i]))
                    .map(|i| i - first_client)
                    .collect();
                if room && output_set.is_some() {
                    if hit(&fds[first_output]) {
                        ready.outputs = self.outputs.ready();
                    }
                } else if room {
                    ready.outputs = (first_output..first_probe)
                        .filter(|&i| hit(&fds[i]))
                        .map(|i| i - first_output)
                        .collect();
                } else if let Some(log) = &self.log
                    && first_probe > first_output
                    && hit(&fds[first_output])
                {
                    log.woken();
                }
                ready.probes = (first_probe..first_http)
                    .filter(|&i| hit(&fds[i]))
                    .map(|i| i - first_probe)
                    .collect();
                if self.http.is_some() {
                    ready.http_listener = hit(&fds[first_http]);
                    ready.http = (first_http + 1..fds.len())
                        .filter(|&i| hit(&fds[i]))
                        .map(|i| i - first_http - 1)
                        .collect();
                }
            }
            Err(Errno::EINTR) => ready.signals = true,
            Err(Errno::EINVAL) if regained_nofile(fds.len()) => {}
            Err(e) => {
                ready.signals = true;
                // Once per episode: the loop retries every 100 ms.
                if !std::mem::replace(&mut self.poll_failing, true) {
                    error!("poll failed: {}; retrying every 100 ms", e.desc());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        ready
    }

    /// Control socket: new connections, then requests from ready clients.
    /// Whether a request may have changed a slice (any but a question).
    fn serve(&mut self, listener: bool, ready: &[usize]) -> bool {
        let mut changes = false;
        let mut gone = Vec::new();
        for &i in ready {
            match self.clients[i].next_request() {
                Ok(Some(request)) => {
                    changes |=
                        !matches!(request, Request::Status | Request::Health | Request::Jobs);
                    let response = self.on_request(&request);
                    let client = &mut self.clients[i];
                    client.reply(&response);
                    client.waits_for_stop = request == Request::Stop && response.ok;
                    // A client that asked its last (a `status`) goes in
                    // this turn, not in the one its exit would wake.
                    if client.finished() {
                        gone.push(i);
                    }
                }
                Ok(None) => {}
                Err(_) => gone.push(i),
            }
        }
        for i in gone.into_iter().rev() {
            self.clients.swap_remove(i);
        }
        if listener && let Some(server) = &self.control {
            let accepted = server.accept(&mut self.clients);
            if self.control_pause.record(accepted.ran_out, Instant::now()) {
                warn_out_of_fds("control");
            }
            // A newcomer has usually sent its request already (it writes
            // as it connects): answered in this turn, not the next. The
            // others' reads find nothing and cost a system call each.
            if accepted.any {
                let all: Vec<usize> = (0..self.clients.len()).collect();
                changes |= self.serve(false, &all);
            }
        }
        changes
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        let http = self.http.as_ref().and_then(|h| h.next_deadline());
        let own = match self.mode {
            Mode::Stopping { deadline, .. } => Some(deadline),
            // Slices still to start: at once, after this turn.
            Mode::Starting if self.init.is_none() => Some(Instant::now()),
            Mode::Starting => None,
            Mode::Running => self
                .slice_timer()
                .into_iter()
                .chain(self.hanging_probe())
                .chain(self.stall_check_at)
                .chain(self.share_check_at)
                .chain(self.next_job_deadline())
                .min(),
        };
        // While stopping, the stop's deadline covers the helper too.
        let helper = match self.mode {
            Mode::Stopping { .. } => None,
            _ => self.preload.as_ref().and_then(|p| p.next_deadline()),
        };
        let now = Instant::now();
        let pauses = [&self.control_pause, &self.http_pause].map(|p| p.deadline(now));
        own.into_iter()
            .chain(helper)
            .chain(http)
            .chain(pauses.into_iter().flatten())
            .min()
    }

    /// The slices' earliest timer: a back-off, a retry for an owner's
    /// lock, a restart's deadline, a readiness probe. Scanned only when a
    /// turn may have changed one ([`Master::run`]).
    fn slice_timer(&mut self) -> Option<Instant> {
        if let Some(at) = self.slice_timer {
            return at;
        }
        let at = self
            .slices
            .iter()
            .filter_map(|s| match s.state {
                State::BackingOff { until } => Some(until),
                State::WaitingForOwner { retry_at } => Some(retry_at),
                State::Running { .. } => {
                    let probe = s.probe_at.filter(|_| !s.ready);
                    s.restart_asked
                        .map(|r| r.deadline)
                        .into_iter()
                        .chain(probe)
                        .min()
                }
                _ => None,
            })
            .min();
        self.slice_timer = Some(at);
        at
    }

    fn pump(&mut self, readable: &[usize]) {
        // Indices are into `outputs` as polled; removal waits until the end.
        let mut closed = Vec::new();
        for &i in readable {
            if !self.log_has_room() {
                break; // the rest stays readable for a later turn
            }
            if !self.outputs[i].pump() {
                closed.push(i);
            }
        }
        for i in closed.into_iter().rev() {
            self.outputs.swap_remove(i);
        }
    }

    /// SIGCHLD: reap every exited child (runners and adopted orphans alike)
    /// until none is left; one signal may stand for many exits.
    pub(super) fn reap(&mut self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => {
                    self.on_runner_exit(pid.as_raw(), Why::Exit(code))
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    self.on_runner_exit(pid.as_raw(), Why::Signal(sig as i32))
                }
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(e) => {
                    error!("waitpid failed: {}", e.desc());
                    return;
                }
            }
        }
    }

    /// A timer is due: back-offs that are over start their runner again;
    /// while stopping, the deadline escalates the stop.
    fn on_timer(&mut self, now: Instant) {
        match self.mode {
            Mode::Running => {
                // A batch a turn: a thousand runners due at once (or crashing
                // at once) never keep the loop from signals and requests.
                // Those due together are started together.
                let mut due = Vec::new();
                for idx in 0..self.slices.len() {
                    let s = &self.slices[idx];
                    match s.state {
                        State::BackingOff { until: at }
                        | State::WaitingForOwner { retry_at: at }
                            if at <= now && due.len() < super::startup::BATCH =>
                        {
                            due.push(idx)
                        }
                        State::Running { .. }
                            if s.restart_asked.is_some_and(|r| r.deadline <= now) =>
                        {
                            self.escalate_restart(idx, now)
                        }
                        _ => {}
                    }
                }
                self.relaunch_all(&due);
                self.start_probes(now);
                self.on_stall_timer(now);
                self.on_job_timer(now);
                self.on_share_check(now);
                self.on_helper_timer(now);
            }
            Mode::Stopping { deadline, .. } if now >= deadline => self.on_stop_deadline(now),
            Mode::Starting => {
                self.on_helper_timer(now);
                if self.init.is_none() {
                    self.launch_batch();
                }
            }
            Mode::Stopping { .. } => {}
        }
    }
}
