//! The master watcher: takes the lock, starts the runners, and then handles
//! one event at a time until it is told to stop (docs/master.md).
//!
//! [`main`] is the whole life of the master: [`Master::start`]
//! (`startup`), [`Master::run`] (`event_loop`), [`Master::finish`]
//! (`shutdown`). The loop is a table of events:
//!
//! | event                    | handled by                                    |
//! |--------------------------|-----------------------------------------------|
//! | SIGCHLD                  | [`Master::reap`] → [`Master::on_runner_exit`] (`runners`) |
//! | SIGTERM / SIGINT / SIGQUIT | [`Master::begin_stop`] (`shutdown`)         |
//! | SIGHUP                   | [`Master::reopen`] (`runners`)                |
//! | SIGUSR1                  | [`Master::restart`] (`runners`)               |
//! | runner output            | [`output::Output::pump`]                      |
//! | control request          | [`Master::on_request`] (`requests`)           |
//! | HTTP request             | [`Master::on_http`] (`requests`)              |
//! | back-off / stop timer    | [`Master::on_timer`] (`event_loop`)           |
//! | stall timer              | [`Master::on_stall_timer`] (`stall`)          |
//! | job due / job timeout    | [`Master::on_job_timer`] (`jobs`)             |
//! | a slice's owner retry    | [`Master::on_timer`] → [`Master::claim`] (`sharing`) |
//! | the one sharing check    | [`Master::on_share_check`] (`sharing`)        |
//! | preload helper's answer  | [`Master::on_helper_answer`] (`preload`)      |
//! | preload helper's timer   | [`Master::on_helper_timer`] (`preload`)       |
//!
//! The loop sleeps in `poll` on the signal pipe, the control socket and its
//! clients, and the runners' output pipes, with a timeout only when a timer
//! is due: an idle master never wakes.
//!
//! | room         | what it holds |
//! |--------------|---------------|
//! | `startup`    | readiness pipe to `start`, taking the lock, the first runners |
//! | `lock_keeper`| taking the lock again when its file is deleted under the master |
//! | `event_loop` | `poll`, reaping, timers: one turn of the loop |
//! | `runners`    | what happens when a runner exits, starting one, restart and reopen |
//! | `requests`   | what a control or HTTP request does, and `status --json`'s report |
//! | `metrics`    | what `/metrics` says |
//! | `stall`      | reading the queues for stalled slices |
//! | `jobs`       | scheduled jobs: due times, runs, overlap, timeouts, their records |
//! | `sharing`    | slices over several masters: owning a slice, waiting for its owner |
//! | `preload`    | Mailman Core's runners forked from one preloaded Python helper |
//! | `stale_lock` | Mailman's `dbcreate.lck` left by a dead holder, broken at start-up |
//! | `shutdown`   | the stop sequence and the final sweep |
//! | `slice`      | a slice's state and the restart rule (pure) |
//! | `spawn`      | a runner's command line and process set-up |
//! | `output`     | runners' stdout/stderr into the log |
//! | `log`        | the master's log file and stderr |
//!
//! Not here: the socket's wire format (`control`), the lock file
//! (`os::lock`), the configuration (`config`).

pub mod log;
pub mod output;
pub mod slice;
pub mod spawn;

mod event_loop;
mod jobs;
mod lock_keeper;
mod metrics;
mod preload;
mod readiness;
mod requests;
mod runners;
mod sharing;
mod shutdown;
mod stale_lock;
mod stall;
mod startup;

use std::time::Instant;

use tracing::error;

use self::log::LogHandle;
use self::output::Outputs;
use self::slice::Slice;
use self::spawn::SpawnContext;
use self::startup::StartPipe;
use crate::config::{Config, RunnerSpec};
use crate::control::{self, Client};
use crate::os::lock::{Layout, LockWatch, MasterLock};
use crate::os::signals::SignalPipe;

pub use self::jobs::offline as offline_jobs;
pub use crate::exit::{EXIT_ERROR, EXIT_GAVE_UP, EXIT_OK, EXIT_USAGE};

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// False with `--no-restart`.
    pub no_restart: bool,
    /// `-r`: only these runners (even ones with `start = false`).
    pub only: Vec<RunnerSpec>,
    /// `-v`: log to stderr whatever `[logging] stderr` says.
    pub verbose: bool,
    pub run_as_user: bool,
}

/// A start-up failure: the exit status and the one line to show.
#[derive(Debug)]
pub struct StartError {
    pub code: i32,
    pub message: String,
}

impl StartError {
    fn new(code: i32, message: impl std::fmt::Display) -> StartError {
        StartError {
            code,
            message: message.to_string(),
        }
    }
}

/// Installs the master's signal handlers. Call it before anything else
/// (before the configuration is even read): as PID 1, a signal that arrives
/// with no handler installed is dropped by the kernel. Besides the signals
/// it acts on, every signal whose default action would end the master
/// silently (SIGUSR2, SIGALRM, the real-time signals, …) is caught and only
/// logged; the faults (SIGSEGV, SIGBUS, …) keep their default, and SIGKILL
/// and SIGSTOP cannot be caught.
pub fn install_signals() -> std::io::Result<SignalPipe> {
    let mut signals = vec![
        libc::SIGCHLD,
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGHUP,
        libc::SIGUSR1,
    ];
    signals.extend(crate::os::signals::TERMINATING_OTHERS);
    #[cfg(target_os = "linux")]
    signals.extend(libc::SIGRTMIN()..=libc::SIGRTMAX());
    SignalPipe::install(&signals)
}

/// Reports a failure that happened before [`main`] could run (a bad
/// configuration): to `mailman start` through its pipe if it started us,
/// else on stderr.
pub fn fail_early(code: i32, message: &str) -> i32 {
    StartPipe::from_env().fail(&StartError::new(code, message));
    code
}

/// Runs the master to the end and returns its exit status.
pub fn main(config: Config, opts: Options, signals: std::io::Result<SignalPipe>) -> i32 {
    run(config, opts, signals, StartPipe::from_env())
}

/// [`main`] for the daemon `mailman start` forks: it tells how start-up
/// went down `ready` (`ready`, or `error CODE MESSAGE`).
pub fn main_daemon(
    config: Config,
    opts: Options,
    signals: std::io::Result<SignalPipe>,
    ready: std::os::fd::OwnedFd,
) -> i32 {
    run(config, opts, signals, StartPipe::from_fd(ready))
}

fn run(
    config: Config,
    opts: Options,
    signals: std::io::Result<SignalPipe>,
    mut ready: StartPipe,
) -> i32 {
    let signals = match signals {
        Ok(s) => s,
        Err(e) => {
            ready.fail(&StartError::new(
                EXIT_ERROR,
                format!("cannot install signal handlers: {e}"),
            ));
            return EXIT_ERROR;
        }
    };
    match Master::start(config, opts, signals, &mut ready) {
        Ok(mut master) => {
            let code = master.run();
            master.finish(code)
        }
        Err(e) => {
            if e.code != EXIT_USAGE {
                error!("{}", e.message);
            }
            ready.fail(&e);
            e.code
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The `init` command runs; the runners start when it has succeeded.
    Starting,
    Running,
    /// Told to stop: runners were signalled; SIGKILL follows at `deadline`.
    Stopping {
        deadline: Instant,
        killed: bool,
        code: i32,
    },
}

struct Master {
    config: Config,
    layout: Layout,
    ctx: SpawnContext,
    slices: Vec<Slice>,
    outputs: Outputs,
    signals: SignalPipe,
    mode: Mode,
    restartable: bool,
    /// The control socket, unless it could not be bound (signals still work).
    control: Option<control::Server>,
    clients: Vec<Client>,
    /// The control socket and HTTP listeners, left unpolled for a moment
    /// after running out of descriptors.
    control_pause: control::AcceptPause,
    http_pause: control::AcceptPause,
    /// The HTTP endpoint (`[http] listen`), if configured.
    http: Option<control::Http>,
    /// Scheduled jobs (`[job.NAME]`), enabled or not.
    jobs: Vec<jobs::Job>,
    /// When to read the watched queues next (only while some runner has
    /// `stall_after` set).
    stall_check_at: Option<Instant>,
    /// Some runner of this master has stall detection on (the slices are
    /// fixed at start: asked at every `status`, not scanned for).
    watches_stalls: bool,
    /// The one look, after start, at the slices of a shared queue that
    /// this master does not run (`sharing`).
    share_check_at: Option<Instant>,
    started: Instant,
    /// What keeps the runners' trees from outliving the master.
    confine: crate::os::confine::Confinement,
    /// The runners changed since the confinement's record was written.
    record_stale: bool,
    /// Readiness connects under way.
    probes: Vec<readiness::Probe>,
    /// The `init` command, while it runs.
    init: Option<startup::Init>,
    /// The preload helper (`[mailman] preload`), if configured.
    preload: Option<preload::Preload>,
    /// How `mailman start` learns that start-up is over (once).
    ready: StartPipe,
    notifier: crate::os::notify::Notifier,
    log: Option<LogHandle>,
    lock: MasterLock,
    /// Tells when the lock file may have been deleted (`lock_keeper`).
    lock_watch: Option<LockWatch>,
    /// Why the lock could not be taken again, as last logged (`lock_keeper`).
    lock_trouble: Option<String>,
    /// `poll` failed on the last turn (its error is logged once).
    poll_failing: bool,
    /// The slices' earliest timer (`event_loop`), kept from the last scan
    /// of them; `None`: to be scanned again, something may have changed it.
    slice_timer: Option<Option<Instant>>,
    /// What the last `poll` waited for at most: until then, a turn that
    /// changed nothing has nothing due (`event_loop`).
    wake_at: Option<Instant>,
}
