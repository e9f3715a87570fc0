//! Mailman Core's runners forked from one preloaded Python helper
//! (`[mailman] preload`, docs/mailman-core.md, "Preloaded runners"): the
//! helper's life, the requests the master sends it, its answers.
//!
//! The helper (`preload.py`) imports Mailman's code once, then forks each
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

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::socket::{ControlMessage, MsgFlags};
use tracing::{error, info, warn};

use super::output::Output;
use super::shutdown::signal_group;
use super::slice::{State, Why};
use super::spawn::{self, Environment};
use super::{Master, Mode};

/// The helper's code, handed over in its environment (not left in a file).
const SCRIPT: &str = include_str!("preload.py");
const SCRIPT_ENV: &str = "MAILMAN_PRELOAD_SCRIPT";
/// Set (to 1) when the helper offers its memory to same-page merging
/// (`merge_pages`); the helper takes it out of its environment.
const MERGE_ENV: &str = "MAILMAN_PRELOAD_MERGE";
/// The helper's command line: its script comes from the environment.
const BOOT: &str = "import os; exec(os.environ.pop('MAILMAN_PRELOAD_SCRIPT'))";

/// How the master sends to the helper: never waiting (a helper that does
/// not read is one that hangs; the timeouts deal with it). A helper gone
/// is EPIPE, not a signal: the master ignores SIGPIPE.
const SEND: MsgFlags = MsgFlags::MSG_DONTWAIT;
/// How long a loading helper may take to load once told to go on (when
/// `init` is over: that may migrate a database for minutes) before it is
/// thought hung, and how long a loaded one may take to answer a request.
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
    /// Mailman is initialised (`init` has succeeded, or there is none): a
    /// helper may read its configuration.
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
        /// When it was told to go on (`init` over); until then it waits.
        told: Option<Instant>,
    },
    Ready {
        pid: i32,
        sock: OwnedFd,
    },
}

struct Pending {
    id: u64,
    idx: usize,
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

/// One answer from the helper.
enum Answer {
    Ready,
    Forked { id: u64, pid: i32 },
    Failed { id: u64, text: String },
}

fn parse(datagram: &[u8]) -> Option<Answer> {
    let text = std::str::from_utf8(datagram).ok()?;
    if text == "ready" {
        return Some(Answer::Ready);
    }
    let (id, rest) = text.split_once(' ')?;
    let id = id.parse().ok()?;
    match rest.strip_prefix("error ") {
        Some(text) => Some(Answer::Failed {
            id,
            text: text.to_string(),
        }),
        None => Some(Answer::Forked {
            id,
            pid: rest.parse().ok().filter(|p| *p > 1)?,
        }),
    }
}

impl Master {
    /// Starts the helper (at start-up, and again after it died).
    pub(super) fn start_helper(&mut self) {
        let Some(preload) = &mut self.preload else {
            return;
        };
        let merge = self.config.mailman.merge_pages;
        match spawn_helper(&self.ctx, &preload.python, &preload.cfg, merge) {
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
                // Mailman is initialised (`init`) before the helper reads
                // its configuration: both would create its directories.
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

    /// Tells a loading helper that `init` is over: it may read Mailman's
    /// configuration now. Its time to load counts from here (`init` may
    /// migrate a database for minutes).
    pub(super) fn helper_go(&mut self) {
        let Some(p) = &mut self.preload else {
            return;
        };
        p.init_over = true;
        if let Helper::Loading { sock, told, .. } = &mut p.helper {
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
        let id = preload.next_id;
        let request = serde_json::json!({
            "id": id,
            "argv": spawn::expand(&self.ctx, s),
            "env": s.runner.env,
        });
        let sent = spawn::pipes().and_then(|pipes| {
            let null = spawn::dev_null()?;
            let mut fds = vec![null.as_raw_fd(), pipes[1].as_raw_fd(), pipes[3].as_raw_fd()];
            fds.extend(s.owner.as_ref().map(|l| l.fd()));
            let bytes = request.to_string().into_bytes();
            nix::sys::socket::sendmsg::<()>(
                sock,
                &[IoSlice::new(&bytes)],
                &[ControlMessage::ScmRights(&fds)],
                SEND,
                None,
            )?;
            Ok(pipes)
        });
        match sent {
            Ok([out_r, _, err_r, _]) => {
                preload.next_id += 1;
                let now = Instant::now();
                preload.pending.push(Pending {
                    id,
                    idx,
                    sent: now,
                    stdout: out_r,
                    stderr: err_r,
                });
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
                    info!("Preload helper (pid {pid}) is ready: runners are forked from it");
                    Helper::Ready { pid, sock }
                }
                other => other,
            };
    }

    /// Runner `id` is forked as `pid`: a running runner from now on.
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
        self.now_running(p.idx, pid, p.sent, [p.stdout, p.stderr]);
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
        warn!(
            "the preload helper could not start runner {}: {text}; starting it without",
            self.slices[p.idx].spec()
        );
        self.without_helper(p.idx);
    }

    /// A slice the helper did not fork: started plainly, unless the master
    /// is stopping.
    fn without_helper(&mut self, idx: usize) {
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
        let orphans: Vec<usize> = preload.pending.drain(..).map(|p| p.idx).collect();
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
        for idx in orphans {
            self.without_helper(idx);
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

/// Starts `python` on the helper's script, with Mailman's runners'
/// environment; returns it and the master's end of its socket.
fn spawn_helper(
    ctx: &spawn::SpawnContext,
    python: &std::path::Path,
    cfg: &std::path::Path,
    merge_pages: bool,
) -> std::io::Result<(spawn::Spawned, OwnedFd)> {
    let (ours, theirs) = socket_pair()?;
    let argv = [
        python.to_string_lossy().into_owned(),
        "-c".into(),
        BOOT.into(),
        theirs.as_raw_fd().to_string(),
        ctx.master_pid.to_string(),
        cfg.to_string_lossy().into_owned(),
    ];
    let mut env = indexmap::IndexMap::new();
    env.insert(SCRIPT_ENV.to_string(), SCRIPT.to_string());
    if merge_pages {
        // Before Linux 6.7 the master's setting does not cross `execve`.
        env.insert(MERGE_ENV.to_string(), "1".to_string());
    }
    let sp = spawn::start(
        ctx,
        &argv,
        Environment::Mailman { env: &env },
        Some(theirs.as_raw_fd()),
    )?;
    Ok((sp, ours))
}

/// A datagram socket pair, both ends close-on-exec, the master's end
/// non-blocking.
#[cfg(target_os = "linux")]
fn socket_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    nix::fcntl::fcntl(
        &ours,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    Ok((ours, theirs))
}

#[cfg(not(target_os = "linux"))]
fn socket_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "preloading runners needs Linux",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_strictly() {
        assert!(matches!(parse(b"ready"), Some(Answer::Ready)));
        assert!(matches!(
            parse(b"7 1234"),
            Some(Answer::Forked { id: 7, pid: 1234 })
        ));
        assert!(matches!(
            parse(b"7 error fork: no memory"),
            Some(Answer::Failed { id: 7, .. })
        ));
        for bad in [&b"7"[..], b"x 12", b"7 1", b"7 -5", b"7 12x", b"\xff"] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn the_helper_is_retried_ever_later() {
        assert_eq!(retry_delay(1), Duration::from_secs(1));
        assert_eq!(retry_delay(3), Duration::from_secs(4));
        assert_eq!(retry_delay(40), RETRY_MAX);
    }
}
