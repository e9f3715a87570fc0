//! Mailman Core's runners (and `init`) forked from one preloaded Python helper
//! (`[mailman] preload`, docs/mailman-core.md, "Preloaded runners"): the
//! helper's life, the requests the master sends it, its answers.
//!
//! The helper (`helper.py`, with its code cache in `code_cache.py`: the
//! modules' compiled code in one file of the var dir for its next start)
//! imports Mailman's code once, then forks each
//! runner twice over so that the runner is adopted by the master: from then
//! on it is a runner like any other (reaped, signalled, restarted by the
//! master). Nothing here waits: a request is one datagram on a socket pair,
//! the answer (the runner's pid) comes back as another, read when `poll`
//! says so; meanwhile the slice is [`State::Forking`]. A runner may even
//! exit before its pid arrives: its exit waits in `unknown_exits`.
//!
//! If the helper dies (or hangs on a request), its unanswered requests and
//! every start until a new helper has loaded are plain spawns.
//!
//! Not here: what happens when a runner exits (`runners`), the process
//! set-up of a plain spawn (`spawn`).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::socket::MsgFlags;
use tracing::{error, info, warn};

use super::output::Output;
use super::shutdown::signal_group;
use super::slice::{State, Why};
use super::spawn;
use super::startup::EMPTY_ENV;
use super::{Master, Mode};
use wire::{Answer, HelperOptions, SEND, parse, spawn_helper};

mod wire;

/// How long a loading helper may take to load once told to go on (at once
/// when `init` is forked from it, else when `init`, which may migrate a
/// database for minutes, is over) before it is thought hung, and how long
/// a loaded one may take to answer a request (counted from when it loaded).
const LOAD_TIMEOUT: Duration = Duration::from_secs(120);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// The helper's restart back-off: doubled per death in a row, capped.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// The helper's exit status when Mailman's configuration changed.
const RELOAD: i32 = 75;
/// How long an exit with no known pid is kept for an answer to claim it.
const UNKNOWN_EXIT_KEPT: Duration = Duration::from_secs(60);

pub(super) struct Preload {
    /// The Python that runs Mailman (its `runner` program's `#!` line).
    python: PathBuf,
    /// Mailman's configuration file.
    cfg: PathBuf,
    helper: Helper,
    /// Requests sent and not answered, oldest first.
    pending: Vec<Pending>,
    next_id: u64,
    /// Helper deaths since one last loaded.
    deaths: u32,
    /// The helper was killed for not answering; its exit is awaited.
    killed: bool,
    /// A helper may read Mailman's configuration: `init` has succeeded, or
    /// there is none, or it is to be forked from the helper.
    init_over: bool,
    /// Exits reaped of children that were nobody's yet: a forked runner's
    /// exit may come before its pid.
    unknown_exits: Vec<(i32, Why, Instant)>,
}

enum Helper {
    /// Not running: started again at `retry_at` (never, while stopping).
    Down {
        retry_at: Option<Instant>,
    },
    /// Importing Mailman's code; requests wait in its socket meanwhile.
    Loading {
        pid: i32,
        sock: OwnedFd,
        /// When it was told to go on ([`Master::helper_go`]); until then it
        /// waits.
        told: Option<Instant>,
    },
    Ready {
        pid: i32,
        sock: OwnedFd,
    },
}

/// Who a request to the helper is for.
#[derive(Clone, Copy)]
enum Target {
    Slice(usize),
    /// `init`, when it is Mailman's `runner` program.
    Init,
}

struct Pending {
    id: u64,
    target: Target,
    sent: Instant,
    stdout: OwnedFd,
    stderr: OwnedFd,
}

impl Preload {
    /// `init_over`: there is no `init` to wait for.
    pub(super) fn new(python: PathBuf, cfg: PathBuf, init_over: bool) -> Preload {
        Preload {
            init_over,
            python,
            cfg,
            helper: Helper::Down {
                retry_at: Some(Instant::now()),
            },
            pending: Vec::new(),
            next_id: 1,
            deaths: 0,
            killed: false,
            unknown_exits: Vec::new(),
        }
    }

    pub(super) fn pid(&self) -> Option<i32> {
        match self.helper {
            Helper::Loading { pid, .. } | Helper::Ready { pid, .. } => Some(pid),
            Helper::Down { .. } => None,
        }
    }

    /// The socket to poll for answers, while there is a helper.
    pub(super) fn fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.helper {
            Helper::Loading { sock, .. } | Helper::Ready { sock, .. } => Some(sock.as_fd()),
            Helper::Down { .. } => None,
        }
    }

    /// Whether a start goes through the helper: once it has loaded, or,
    /// for the first helper, while it loads (the runners wait for it rather
    /// than import Mailman twice over). After a death, plain spawns until
    /// the new one has loaded.
    fn usable(&self) -> Option<RawFd> {
        match &self.helper {
            Helper::Ready { sock, .. } => Some(sock.as_raw_fd()),
            Helper::Loading { sock, .. } if self.deaths == 0 => Some(sock.as_raw_fd()),
            _ => None,
        }
    }

    /// When something of the helper's is due: its restart, or the time
    /// after which it is thought hung.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        match self.helper {
            Helper::Down { retry_at } => retry_at,
            _ if self.killed => None,
            Helper::Loading { told, .. } => told.map(|t| t + LOAD_TIMEOUT),
            Helper::Ready { .. } => self.pending.first().map(|p| p.sent + ANSWER_TIMEOUT),
        }
    }

    /// Sends a request: `argv` to be run with `env` added, the output on
    /// new pipes (whose read ends the pending request keeps) and `lock` (a
    /// slice lock) held. Returns when it was sent.
    fn request(
        &mut self,
        sock: RawFd,
        target: Target,
        argv: &[String],
        env: &indexmap::IndexMap<String, String>,
        lock: Option<RawFd>,
    ) -> std::io::Result<Instant> {
        let id = self.next_id;
        let [out_r, out_w, err_r, err_w] = spawn::pipes()?;
        let null = spawn::dev_null()?;
        let mut fds = vec![null.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()];
        fds.extend(lock);
        wire::send_request(sock, id, argv, env, &fds)?;
        self.next_id += 1;
        let sent = Instant::now();
        self.pending.push(Pending {
            id,
            target,
            sent,
            stdout: out_r,
            stderr: err_r,
        });
        Ok(sent)
    }

    /// Request `id`, answered: no longer pending.
    fn take(&mut self, id: u64) -> Option<Pending> {
        let at = self.pending.iter().position(|p| p.id == id)?;
        Some(self.pending.remove(at))
    }

    /// A stop that SIGKILL did not finish: the helper is not waited for.
    pub(super) fn give_up(&mut self) {
        self.helper = Helper::Down { retry_at: None };
        self.pending.clear();
    }

    /// A reaped child no slice had: kept if an answer may still name it.
    pub(super) fn note_unknown_exit(&mut self, pid: i32, why: Why, now: Instant) {
        if self.pending.is_empty() {
            return;
        }
        self.unknown_exits
            .retain(|(_, _, at)| now.saturating_duration_since(*at) < UNKNOWN_EXIT_KEPT);
        self.unknown_exits.push((pid, why, now));
    }
}

impl Master {
    /// Starts the helper (at start-up, and again after it died).
    pub(super) fn start_helper(&mut self) {
        let Some(preload) = &mut self.preload else {
            return;
        };
        let options = HelperOptions {
            merge_pages: self.config.mailman.merge_pages,
            immortal_objects: self.config.mailman.immortal_objects,
        };
        match spawn_helper(&self.ctx, &preload.python, &preload.cfg, options) {
            Ok((sp, sock)) => {
                info!("Preload helper started (pid {})", sp.pid);
                self.record_stale = true;
                for (fd, stream) in [(sp.stdout, "stdout"), (sp.stderr, "stderr")] {
                    self.outputs
                        .push(Output::new(fd, "preload", None, sp.pid, stream));
                }
                preload.helper = Helper::Loading {
                    pid: sp.pid,
                    sock,
                    told: None,
                };
                preload.killed = false;
                // A plain `init` runs to its end before the helper reads
                // Mailman's configuration: both would create its directories.
                if preload.init_over {
                    self.helper_go();
                }
            }
            Err(e) => {
                preload.deaths += 1;
                let delay = retry_delay(preload.deaths);
                error!(
                    "cannot start the preload helper: {}; runners start without it (next try in {}s)",
                    crate::util::io_text(&e),
                    delay.as_secs()
                );
                preload.helper = Helper::Down {
                    retry_at: Some(Instant::now() + delay),
                };
            }
        }
    }

    /// Tells a loading helper that it may read Mailman's configuration now:
    /// `init` is over, or is to be forked from it. Its time to load counts
    /// from here (a plain `init` may migrate a database for minutes).
    pub(super) fn helper_go(&mut self) {
        let Some(p) = &mut self.preload else {
            return;
        };
        p.init_over = true;
        // Once: the helper reads anything after its "go" as a request.
        if let Helper::Loading {
            sock,
            told: told @ None,
            ..
        } = &mut p.helper
        {
            *told = Some(Instant::now());
            let _ = nix::sys::socket::send(sock.as_raw_fd(), b"go", SEND);
        }
    }

    /// Asks the helper to fork slice `idx`'s runner, if the helper can be
    /// used: then the slice is [`State::Forking`] and `true` is returned.
    pub(super) fn fork_from_helper(&mut self, idx: usize) -> bool {
        let Some(preload) = &mut self.preload else {
            return false;
        };
        let s = &self.slices[idx];
        let Some(sock) = preload.usable().filter(|_| s.runner.mailman_core) else {
            return false;
        };
        let argv = spawn::expand(&self.ctx, s);
        let lock = s.owner.as_ref().map(|l| l.fd());
        match preload.request(sock, Target::Slice(idx), &argv, &s.runner.env, lock) {
            Ok(now) => {
                let s = &mut self.slices[idx];
                s.state = State::Forking { since: now };
                s.ready = false;
                true
            }
            Err(e) => {
                warn!(
                    "cannot ask the preload helper for runner {}: {}; starting it without",
                    s.spec(),
                    crate::util::io_text(&e)
                );
                false
            }
        }
    }

    /// Asks the helper to fork `init` (Mailman's `runner` program), if the
    /// helper can be used: it is told to go on first (to read Mailman's
    /// configuration and make its directories: nothing else does yet), and
    /// forks `init` once it has loaded; `true` is returned.
    pub(super) fn init_from_helper(&mut self, argv: &[String]) -> bool {
        let Some(sock) = self.preload.as_ref().and_then(|p| p.usable()) else {
            return false;
        };
        self.helper_go();
        let Some(preload) = &mut self.preload else {
            return false;
        };
        match preload.request(sock, Target::Init, argv, &EMPTY_ENV, None) {
            Ok(_) => true,
            Err(e) => {
                // The helper, told to go on, may be making Mailman's
                // directories as `init` does: a clash fails `init`, and so
                // the start, with its cause.
                warn!(
                    "cannot ask the preload helper for init: {}; running it without",
                    crate::util::io_text(&e)
                );
                false
            }
        }
    }

    /// The helper's socket is readable: every answer waiting there.
    pub(super) fn on_helper_answer(&mut self) {
        let Some(fd) = self
            .preload
            .as_ref()
            .and_then(|p| p.fd())
            .map(|fd| fd.as_raw_fd())
        else {
            return;
        };
        let mut buf = [0u8; 512];
        loop {
            let n = match nix::sys::socket::recv(fd, &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(0) | Err(Errno::EAGAIN) => return,
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    warn!("reading the preload helper's socket: {}", e.desc());
                    return;
                }
            };
            match parse(&buf[..n]) {
                Some(Answer::Ready) => self.helper_ready(),
                Some(Answer::Forked { id, pid }) => self.forked(id, pid),
                Some(Answer::Failed { id, text }) => self.fork_failed(id, &text),
                None => warn!(
                    "the preload helper said something unexpected: {:?}",
                    String::from_utf8_lossy(&buf[..n])
                ),
            }
        }
    }

    fn helper_ready(&mut self) {
        let Some(preload) = &mut self.preload else {
            return;
        };
        preload.helper =
            match std::mem::replace(&mut preload.helper, Helper::Down { retry_at: None }) {
                Helper::Loading { pid, sock, .. } => {
                    preload.deaths = 0;
                    // What was asked of it while it loaded: answered from now.
                    let now = Instant::now();
                    for p in &mut preload.pending {
                        p.sent = now;
                    }
                    info!("Preload helper (pid {pid}) is ready: runners are forked from it");
                    Helper::Ready { pid, sock }
                }
                other => other,
            };
    }

    /// Request `id` is forked as `pid`: a running runner (or `init`) from
    /// now on.
    fn forked(&mut self, id: u64, pid: i32) {
        let Some(preload) = &mut self.preload else {
            return;
        };
        let Some(p) = preload.take(id) else {
            return;
        };
        let exited = preload
            .unknown_exits
            .iter()
            .position(|(q, _, _)| *q == pid)
            .map(|i| preload.unknown_exits.swap_remove(i).1);
        match p.target {
            Target::Slice(idx) => self.now_running(idx, pid, p.sent, [p.stdout, p.stderr]),
            Target::Init => {
                let Some(init) = &mut self.init else {
                    return; // given up on (a stop): reaped as anyone's
                };
                init.pid = Some(pid);
                let argv = init.argv.clone();
                self.init_output(&argv, pid, [p.stdout, p.stderr]);
            }
        }
        if let Some(why) = exited {
            return self.on_runner_exit(pid, why);
        }
        // A stop came while it was being forked.
        if let Mode::Stopping { .. } = self.mode {
            signal_group(pid, Signal::SIGTERM);
        }
    }

    fn fork_failed(&mut self, id: u64, text: &str) {
        let Some(p) = self.preload.as_mut().and_then(|pre| pre.take(id)) else {
            return;
        };
        let what = match p.target {
            Target::Slice(idx) => format!("runner {}", self.slices[idx].spec()),
            Target::Init => "init".to_string(),
        };
        warn!("the preload helper could not start {what}: {text}; starting it without");
        self.without_helper(p.target);
    }

    /// What the helper did not fork: started plainly, unless the master is
    /// stopping.
    fn without_helper(&mut self, target: Target) {
        let idx = match target {
            Target::Slice(idx) => idx,
            Target::Init => return self.init_without_helper(),
        };
        if let Mode::Stopping { .. } = self.mode {
            self.slices[idx].state = State::Stopped;
            return;
        }
        self.slices[idx].state = State::Stopped;
        if let Err(e) = self.launch_plain(idx) {
            error!("{}", e.message);
            self.decide(idx, None, Why::Exit(127), Duration::ZERO);
        }
    }

    /// `init`, not forked by the helper: run as a process of its own, and a
    /// new helper waits until it has succeeded.
    fn init_without_helper(&mut self) {
        if let Some(p) = &mut self.preload {
            p.init_over = false;
        }
        let Some(init) = self.init.take() else {
            return;
        };
        if let Mode::Stopping { .. } = self.mode {
            return;
        }
        self.init_plainly(init.argv);
    }

    /// The helper exited: what it answered is read, the rest is started
    /// plainly, and it is started again after a back-off (not while
    /// stopping).
    pub(super) fn on_helper_exit(&mut self, why: Why) {
        self.on_helper_answer();
        let stopping = matches!(self.mode, Mode::Stopping { .. });
        let Some(preload) = &mut self.preload else {
            return;
        };
        let pid = preload.pid().unwrap_or_default();
        // It saw Mailman's configuration change: a new one, at once, used
        // as the first one was.
        let reload = why == Why::Exit(RELOAD);
        if !reload {
            preload.deaths += 1;
        }
        let retry = match reload {
            true => Duration::ZERO,
            false => retry_delay(preload.deaths),
        };
        preload.helper = Helper::Down {
            retry_at: (!stopping).then(|| Instant::now() + retry),
        };
        let orphans: Vec<Target> = preload.pending.drain(..).map(|p| p.target).collect();
        if reload {
            info!(
                "Preload helper (pid {pid}) saw Mailman's configuration change: starting a new one"
            );
        } else if !stopping {
            warn!(
                "Preload helper (pid {pid}) exited ({why}); runners start without it until a new one has loaded (in {}s)",
                retry.as_secs()
            );
        }
        for target in orphans {
            self.without_helper(target);
        }
    }

    /// A timer: the helper is started again, or, hung on loading or on a
    /// request, killed (its exit then does the rest).
    pub(super) fn on_helper_timer(&mut self, now: Instant) {
        let Some(preload) = &self.preload else {
            return;
        };
        match preload.next_deadline() {
            Some(at) if at <= now => {}
            _ => return,
        }
        match preload.helper {
            Helper::Down { .. } => self.start_helper(),
            Helper::Loading { pid, .. } | Helper::Ready { pid, .. } => {
                warn!("Preload helper (pid {pid}) does not answer; killing it");
                // Still our unreaped child: the pid cannot be anyone else's.
                signal_group(pid, Signal::SIGKILL);
                if let Some(p) = &mut self.preload {
                    p.killed = true; // its exit is on its way
                }
            }
        }
    }

    /// A stop: the helper (and any fork it is making) is ended; answers
    /// still come until it has exited.
    pub(super) fn stop_helper(&mut self, signal: Signal) {
        let Some(preload) = &mut self.preload else {
            return;
        };
        match preload.pid() {
            Some(pid) => signal_group(pid, signal),
            None => preload.helper = Helper::Down { retry_at: None },
        }
    }
}

/// The delay before the helper's next start after `deaths` in a row.
fn retry_delay(deaths: u32) -> Duration {
    RETRY_FIRST
        .saturating_mul(1 << deaths.saturating_sub(1).min(10))
        .min(RETRY_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_helper_is_retried_ever_later() {
        assert_eq!(retry_delay(1), Duration::from_secs(1));
        assert_eq!(retry_delay(3), Duration::from_secs(4));
        assert_eq!(retry_delay(40), RETRY_MAX);
    }
}
