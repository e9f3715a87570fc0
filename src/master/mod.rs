//! The master watcher (SPEC 3): takes the lock, starts the runners, and then
//! handles one event at a time until it is told to stop.
//!
//! | event              | handled by              |
//! |--------------------|-------------------------|
//! | SIGCHLD            | [`Master::reap`] → [`Master::on_child_exit`] |
//! | SIGTERM/INT/QUIT   | [`Master::begin_stop`]  |
//! | SIGHUP             | [`Master::reopen`]      |
//! | SIGUSR1            | [`Master::restart_all`] |
//! | runner output      | [`Output::pump`]        |
//! | control request    | [`Master::on_request`]  |
//! | back-off / stop timer | [`Master::on_timer`] |
//!
//! The loop sleeps in `poll` on the signal pipe, the control socket and its
//! clients, and the runners' output pipes, with a timeout only when a timer
//! is due: an idle master never wakes.
//!
//! Not here: the restart rule itself (`slice`), process set-up (`spawn`).

pub mod log;
pub mod output;
pub mod slice;
pub mod spawn;

use std::fs::File;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tracing::{debug, error, info, warn};

use self::log::LogHandle;
use self::output::Output;
use self::slice::{Decision, Slice, State, Why};
use self::spawn::{READY_FD_ENV, SpawnContext};
use crate::config::{Config, OnGiveUp};
use crate::control::{self, Client, LastExit, Request, Response, SliceStatus, StatusReport};
use crate::os::lock::{self, AcquireError, Layout, MasterLock};
use crate::os::signals::{self, SignalPipe};

/// Exit status after a requested stop.
pub const EXIT_OK: i32 = 0;
/// Exit status when the master fails (start-up error, lost its log, …).
pub const EXIT_ERROR: i32 = 1;
/// Exit status when another master holds the lock, or the configuration is bad.
pub const EXIT_USAGE: i32 = 2;
/// Exit status after a runner was given up with `on_give_up = "exit"`.
pub const EXIT_GAVE_UP: i32 = 3;

/// How long SIGKILLed runners get to disappear before the master gives up
/// waiting for them (a process in uninterruptible sleep cannot be killed).
const KILL_GRACE: Duration = Duration::from_secs(3);

/// One runner to start, from `-r NAME[:SLICE:RANGE]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerSpec {
    pub name: String,
    /// `None`: every slice of the runner.
    pub slice: Option<(u32, u32)>,
}

impl RunnerSpec {
    pub fn parse(text: &str) -> Result<RunnerSpec, String> {
        let parts: Vec<&str> = text.split(':').collect();
        match parts.as_slice() {
            [name] if !name.is_empty() => Ok(RunnerSpec {
                name: name.to_string(),
                slice: None,
            }),
            [name, s, r] if !name.is_empty() => {
                let (Ok(s), Ok(r)) = (s.parse::<u32>(), r.parse::<u32>()) else {
                    return Err(format!("slice and range must be integers: {text}"));
                };
                if !r.is_power_of_two() || s >= r {
                    return Err(format!("slice must be below range, a power of 2: {text}"));
                }
                Ok(RunnerSpec {
                    name: name.to_string(),
                    slice: Some((s, r)),
                })
            }
            _ => Err(format!("Bad runner spec: {text}")),
        }
    }
}

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

/// The write end of the pipe `mailman start` waits on, if it started us.
struct StartPipe(Option<File>);

impl StartPipe {
    fn from_env() -> StartPipe {
        let fd = std::env::var(READY_FD_ENV)
            .ok()
            .and_then(|v| v.parse::<i32>().ok())
            .filter(|fd| *fd > 2);
        let Some(fd) = fd else {
            return StartPipe(None);
        };
        // Only an fd that is really open, and never passed on to a runner.
        // SAFETY: fcntl on an integer fd has no memory effects.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
            return StartPipe(None);
        }
        // SAFETY: `start` handed us this fd for our sole use.
        StartPipe(Some(unsafe { File::from_raw_fd(fd) }))
    }
    fn daemonised(&self) -> bool {
        self.0.is_some()
    }
    fn ok(&mut self) {
        if let Some(mut f) = self.0.take() {
            let _ = f.write_all(b"ready\n");
        }
    }
    fn fail(&mut self, e: &StartError) {
        match self.0.take() {
            Some(mut f) => {
                let _ = writeln!(f, "error {} {}", e.code, e.message);
            }
            None => eprintln!("{}", e.message),
        }
    }
}

/// Installs the master's signal handlers. Call it before anything else
/// (before the configuration is even read): as PID 1, a signal that arrives
/// with no handler installed is dropped by the kernel.
pub fn install_signals() -> std::io::Result<SignalPipe> {
    SignalPipe::install(&[
        libc::SIGCHLD,
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGHUP,
        libc::SIGUSR1,
    ])
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
    let mut ready = StartPipe::from_env();
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
    match Master::start(config, opts, signals, ready.daemonised()) {
        Ok(mut master) => {
            ready.ok();
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

/// What `poll` found ready.
#[derive(Debug, Default)]
struct Ready {
    listener: bool,
    clients: Vec<usize>,
    outputs: Vec<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
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
    outputs: Vec<Output>,
    signals: SignalPipe,
    mode: Mode,
    restartable: bool,
    /// Runner process groups ever started, for the final sweep.
    groups: Vec<i32>,
    /// The control socket, unless it could not be bound (signals still work).
    control: Option<control::Server>,
    clients: Vec<Client>,
    started: Instant,
    notifier: crate::os::notify::Notifier,
    log: Option<LogHandle>,
    lock: MasterLock,
}

impl Master {
    /// SPEC 3.6 in order: subreaper, user, var dir, log, lock, pid file,
    /// runners. Returns once every runner has been started.
    fn start(
        config: Config,
        opts: Options,
        signals: SignalPipe,
        daemonised: bool,
    ) -> Result<Master, StartError> {
        #[cfg(target_os = "linux")]
        if std::process::id() != 1 {
            // Orphaned grandchildren come to us, and we reap them.
            let _ = nix::sys::prctl::set_child_subreaper(true);
        }
        let slices =
            select_slices(&config, &opts.only).map_err(|e| StartError::new(EXIT_USAGE, e))?;
        let nofile = spawn::raise_nofile();
        let root = nix::unistd::geteuid().is_root();
        if opts.run_as_user && root {
            crate::os::user::switch_to(&config.mailman.user, &config.mailman.group)
                .map_err(|e| StartError::new(EXIT_ERROR, e))?;
        }
        let layout = Layout::new(&config.mailman.var_dir);
        layout
            .prepare()
            .map_err(|e| StartError::new(EXIT_ERROR, e))?;

        let log_file = (config.logging.file || daemonised).then(|| layout.log_file());
        let to_stderr = !daemonised && (config.logging.stderr || opts.verbose);
        let log = log::init(&config.logging, log_file.as_deref(), to_stderr)
            .map_err(|e| StartError::new(EXIT_ERROR, e))?;

        let lock = lock::acquire(&layout).map_err(|e| match e {
            AcquireError::Held => StartError::new(EXIT_USAGE, e),
            AcquireError::Io { .. } => StartError::new(EXIT_ERROR, e),
        })?;
        lock::write_pid_file(&layout).map_err(|e| StartError::new(EXIT_ERROR, e))?;
        let control = match control::Server::bind(&layout.var_dir) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!("{e}; control commands will use signals");
                None
            }
        };
        // As Mailman: the master and its runners work in the var dir (and
        // do not pin the caller's directory).
        let _ = std::env::set_current_dir(&layout.var_dir);
        info!("Master started");
        if root && !opts.run_as_user {
            warn!(
                "running as root; use --run-as-user to run as \"{}\"",
                config.mailman.user
            );
        }

        let ctx = SpawnContext {
            // Resolved once, now: by path, so that after a package upgrade
            // replaces the file, runners start the new binary.
            bin: std::env::current_exe().unwrap_or_else(|_| "mailman".into()),
            config_arg: config.config_arg(),
            var_dir: layout.var_dir.clone(),
            master_pid: std::process::id() as i32,
            overrides: config
                .sets
                .iter()
                .filter_map(|s| crate::config::set_as_env(s))
                .collect(),
            nofile,
        };
        let mut master = Master {
            config,
            layout,
            ctx,
            slices,
            outputs: Vec::new(),
            signals,
            mode: Mode::Running,
            restartable: !opts.no_restart,
            groups: Vec::new(),
            control,
            clients: Vec::new(),
            started: Instant::now(),
            notifier: crate::os::notify::Notifier::from_env(),
            log: Some(log),
            lock,
        };
        for idx in 0..master.slices.len() {
            master.launch(idx);
        }
        master.notifier.send(&format!(
            "READY=1\nSTATUS={} runners running\nMAINPID={}",
            master.running(),
            std::process::id()
        ));
        Ok(master)
    }

    /// The event loop. Returns the exit status once every runner is gone
    /// after a stop.
    fn run(&mut self) -> i32 {
        loop {
            if let Mode::Stopping { code, .. } = self.mode
                && self.running() == 0
            {
                return code;
            }
            let ready = self.wait();
            for sig in self.signals.take() {
                match sig {
                    libc::SIGCHLD => self.reap(),
                    libc::SIGHUP => self.reopen("caught SIGHUP"),
                    libc::SIGUSR1 => {
                        self.restart(None, None);
                        info!("Master watcher caught SIGUSR1.  Restarting.");
                    }
                    _ => {
                        info!("Master watcher caught {}.  Exiting.", signals::name(sig));
                        self.begin_stop(sig, EXIT_OK);
                    }
                }
            }
            self.pump(&ready.outputs);
            self.serve(ready.listener, &ready.clients);
            self.on_timer(Instant::now());
        }
    }

    /// Sleeps until a signal, a control connection or request, runner
    /// output, or the next timer. Says what is ready.
    fn wait(&mut self) -> Ready {
        let timeout = match self.next_deadline() {
            None => PollTimeout::NONE,
            Some(at) => {
                let ms = at.saturating_duration_since(Instant::now()).as_millis();
                // Round up so that we do not wake just before the deadline.
                PollTimeout::try_from((ms + 1).min(i32::MAX as u128) as i32)
                    .unwrap_or(PollTimeout::MAX)
            }
        };
        // Layout: [signals, listener?, clients…, outputs…].
        let mut fds = Vec::with_capacity(2 + self.clients.len() + self.outputs.len());
        fds.push(PollFd::new(self.signals.fd(), PollFlags::POLLIN));
        let listening = self
            .control
            .as_ref()
            .map(|c| fds.push(PollFd::new(c.fd(), PollFlags::POLLIN)))
            .is_some();
        let first_client = fds.len();
        for c in &self.clients {
            fds.push(PollFd::new(c.fd(), PollFlags::POLLIN));
        }
        let first_output = fds.len();
        for o in &self.outputs {
            fds.push(PollFd::new(o.fd(), PollFlags::POLLIN));
        }
        let mut ready = Ready::default();
        match poll(&mut fds, timeout) {
            Ok(_) => {
                let hit = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
                ready.listener = listening && hit(&fds[1]);
                ready.clients = (first_client..first_output)
                    .filter(|&i| hit(&fds[i]))
                    .map(|i| i - first_client)
                    .collect();
                ready.outputs = (first_output..fds.len())
                    .filter(|&i| hit(&fds[i]))
                    .map(|i| i - first_output)
                    .collect();
            }
            Err(Errno::EINTR) => {}
            Err(e) => {
                error!("poll failed: {}", e.desc());
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        ready
    }

    /// Control socket: new connections, then requests from ready clients.
    fn serve(&mut self, listener: bool, ready: &[usize]) {
        let mut gone = Vec::new();
        for &i in ready {
            match self.clients[i].read_request() {
                Ok(Some(request)) => {
                    let response = self.on_request(&request);
                    let client = &mut self.clients[i];
                    client.reply(&response);
                    client.waits_for_stop = request == Request::Stop && response.ok;
                }
                Ok(None) => {}
                Err(_) => gone.push(i),
            }
        }
        for i in gone.into_iter().rev() {
            self.clients.swap_remove(i);
        }
        if listener && let Some(server) = &self.control {
            server.accept(&mut self.clients);
        }
    }

    /// What a control request does: the same as the matching signal, plus
    /// what signals cannot say (one runner, a status report).
    fn on_request(&mut self, request: &Request) -> Response {
        match request {
            Request::Status => Response {
                status: Some(self.report()),
                ..Response::ok()
            },
            Request::Stop => {
                if self.mode == Mode::Running {
                    info!("Master watcher got a stop request.  Exiting.");
                    self.begin_stop(libc::SIGTERM, EXIT_OK);
                }
                Response::ok()
            }
            Request::Reopen => {
                self.reopen("got a reopen request");
                Response::ok()
            }
            Request::Restart { runner, slice } => {
                if self.mode != Mode::Running {
                    return Response::error("the master is stopping");
                }
                if let Some(name) = runner {
                    if !self.slices.iter().any(|s| &s.runner.name == name) {
                        return Response::error(format!(
                            "no runner named \"{name}\" runs under this master"
                        ));
                    }
                    if let Some(n) = slice
                        && !self
                            .slices
                            .iter()
                            .any(|s| &s.runner.name == name && s.slice == *n)
                    {
                        return Response::error(format!("runner \"{name}\" has no slice {n}"));
                    }
                }
                self.restart(runner.as_deref(), *slice);
                match runner {
                    Some(name) => info!(
                        "Master watcher got a restart request for {name}{}.",
                        slice.map_or(String::new(), |n| format!(":{n}"))
                    ),
                    None => info!("Master watcher got a restart request.  Restarting."),
                }
                Response::ok()
            }
        }
    }

    /// The slice table as `status --json` shows it.
    fn report(&self) -> StatusReport {
        let now = Instant::now();
        let runners = self
            .slices
            .iter()
            .map(|s| {
                let (state, pid, uptime, retry) = match s.state {
                    State::Running { pid, since } => (
                        "running",
                        Some(pid),
                        Some(now.saturating_duration_since(since).as_secs_f64()),
                        None,
                    ),
                    State::BackingOff { until } => (
                        "backing-off",
                        None,
                        None,
                        Some(until.saturating_duration_since(now).as_secs_f64()),
                    ),
                    State::Failed => ("failed", None, None, None),
                    State::Stopped => ("stopped", None, None, None),
                };
                let usage = pid.and_then(crate::os::procinfo::usage);
                SliceStatus {
                    name: s.runner.name.clone(),
                    slice: s.slice,
                    range: s.range,
                    state: state.into(),
                    pid,
                    restarts: s.restarts,
                    total_restarts: s.total_restarts,
                    last_exit: s.last_exit.map(|w| match w {
                        Why::Exit(n) => LastExit::Exit(n),
                        Why::Signal(n) => LastExit::Signal(n),
                    }),
                    uptime_secs: uptime,
                    restart_in_secs: retry,
                    rss_bytes: usage.map(|u| u.rss_bytes),
                    cpu_secs: usage.map(|u| u.cpu_secs),
                }
            })
            .collect();
        StatusReport {
            master: control::MasterStatus {
                pid: std::process::id() as i32,
                version: env!("CARGO_PKG_VERSION").into(),
                uptime_secs: now.saturating_duration_since(self.started).as_secs_f64(),
                state: if self.mode == Mode::Running {
                    "running"
                } else {
                    "stopping"
                }
                .into(),
            },
            runners,
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        match self.mode {
            Mode::Stopping { deadline, .. } => Some(deadline),
            Mode::Running => self
                .slices
                .iter()
                .filter_map(|s| match s.state {
                    State::BackingOff { until } => Some(until),
                    _ => None,
                })
                .min(),
        }
    }

    fn pump(&mut self, readable: &[usize]) {
        // Indices are into `outputs` as polled; removal waits until the end.
        let mut closed = Vec::new();
        for &i in readable {
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
    fn reap(&mut self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => {
                    self.on_child_exit(pid.as_raw(), Why::Exit(code))
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    self.on_child_exit(pid.as_raw(), Why::Signal(sig as i32))
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

    fn on_child_exit(&mut self, pid: i32, why: Why) {
        let now = Instant::now();
        let Some(idx) = self.slices.iter().position(|s| s.pid() == Some(pid)) else {
            debug!("reaped pid {pid} ({why}), not a runner");
            return;
        };
        // Its last words first, then the exit line.
        for o in self.outputs.iter_mut().filter(|o| o.pid == pid) {
            o.drain(false);
        }
        let since = match self.slices[idx].state {
            State::Running { since, .. } => since,
            _ => now,
        };
        self.decide(idx, pid, why, now.saturating_duration_since(since));
    }

    /// Applies the restart rule to an exit (or a failed start) and logs it
    /// as Mailman does.
    fn decide(&mut self, idx: usize, pid: i32, why: Why, uptime: Duration) {
        let restartable = self.restartable && self.mode == Mode::Running;
        let s = &mut self.slices[idx];
        let decision = s.on_exit(why, uptime, restartable, slice::jitter);
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
        match decision {
            Decision::RestartNow => self.launch(idx),
            Decision::RestartAfter(delay) => {
                debug!("restarting {} in {} ms", s.spec(), delay.as_millis());
                s.state = State::BackingOff {
                    until: Instant::now() + delay,
                };
            }
            Decision::Leave => s.state = State::Stopped,
            Decision::GiveUp => {
                s.state = State::Failed;
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

    /// Starts slice `idx` now. A runner that cannot even be started counts
    /// as one that exited with 127 at once.
    fn launch(&mut self, idx: usize) {
        match spawn::spawn(&self.ctx, &self.slices[idx]) {
            Ok(sp) => {
                let s = &mut self.slices[idx];
                debug!("[{}] {}", sp.pid, s.spec());
                s.state = State::Running {
                    pid: sp.pid,
                    since: Instant::now(),
                };
                if !self.groups.contains(&sp.pid) {
                    self.groups.push(sp.pid);
                }
                for (fd, stream) in [(sp.stdout, "stdout"), (sp.stderr, "stderr")] {
                    match Output::new(fd, &s.runner.name, s.slice, sp.pid, stream) {
                        Ok(o) => self.outputs.push(o),
                        Err(e) => warn!("cannot capture {stream} of {}: {e}", s.spec()),
                    }
                }
            }
            Err(e) => {
                let s = &self.slices[idx];
                error!(
                    "Cannot start runner {}: {}: {}",
                    s.spec(),
                    s.runner.command.first().map_or("", String::as_str),
                    crate::util::io_text(&e)
                );
                self.slices[idx].state = State::Stopped;
                self.decide(idx, 0, Why::Exit(127), Duration::ZERO);
            }
        }
    }

    fn running(&self) -> usize {
        self.slices.iter().filter(|s| s.pid().is_some()).count()
    }

    /// SIGTERM/SIGINT/SIGQUIT (or a give-up): signal every runner's process
    /// group, then wait for them until `stop_timeout`.
    fn begin_stop(&mut self, sig: i32, code: i32) {
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
        for s in &mut self.slices {
            match s.state {
                State::Running { pid, .. } => signal_group(pid, signal),
                State::BackingOff { .. } => s.state = State::Stopped,
                _ => {}
            }
        }
    }

    /// SIGHUP (or a reopen request): reopen our log, pass SIGHUP on to every
    /// runner.
    fn reopen(&mut self, how: &str) {
        if let Some(log) = &self.log
            && let Err(e) = log.reopen()
        {
            error!("cannot reopen {}: {}", self.layout.log_file().display(), e);
        }
        for pid in self.slices.iter().filter_map(Slice::pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGHUP);
        }
        info!("Master watcher {how}.  Re-opening log files.");
    }

    /// SIGUSR1 (or a restart request, maybe for one runner or slice): each
    /// running runner gets SIGUSR1 and is restarted as it exits; runners
    /// waiting, given up or stopped start again at once with their count
    /// reset.
    fn restart(&mut self, runner: Option<&str>, slice: Option<u32>) {
        if self.mode != Mode::Running {
            return;
        }
        for idx in 0..self.slices.len() {
            let s = &self.slices[idx];
            if runner.is_some_and(|n| n != s.runner.name) || slice.is_some_and(|n| n != s.slice) {
                continue;
            }
            match self.slices[idx].state {
                State::Running { pid, .. } => {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGUSR1);
                }
                _ if self.restartable => {
                    self.slices[idx].restarts = 0;
                    self.launch(idx);
                }
                _ => {}
            }
        }
    }

    fn on_timer(&mut self, now: Instant) {
        match self.mode {
            Mode::Running => {
                for idx in 0..self.slices.len() {
                    if let State::BackingOff { until } = self.slices[idx].state
                        && until <= now
                    {
                        self.launch(idx);
                    }
                }
            }
            Mode::Stopping {
                deadline,
                killed,
                code,
            } if now >= deadline => {
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
                    return;
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
                self.mode = Mode::Stopping {
                    deadline: now + KILL_GRACE,
                    killed: true,
                    code,
                };
            }
            Mode::Stopping { .. } => {}
        }
    }

    /// After the loop: sweep what is left, remove the pid file, release the
    /// lock, flush the log (SPEC 3.5).
    fn finish(mut self, code: i32) -> i32 {
        // A runner's children that outlived it in its process group.
        for &pgid in &self.groups {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
        // Orphans adopted as subreaper (a handler's background child, a
        // runner's helper whose runner died): nothing that ran under this
        // master outlives it. Never its own process group.
        let own = nix::unistd::getpgrp().as_raw();
        let left: Vec<(i32, i32)> = crate::os::procinfo::live_children()
            .into_iter()
            .filter(|(pid, _)| !self.slices.iter().any(|s| s.pid() == Some(*pid)))
            .collect();
        if !left.is_empty() {
            let pids: Vec<String> = left.iter().map(|(p, _)| p.to_string()).collect();
            warn!(
                "Killing processes left behind by runners: {}",
                pids.join(", ")
            );
        }
        for (pid, pgid) in left {
            if pgid != own {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        self.reap();
        for o in &mut self.outputs {
            o.drain(true);
        }
        lock::remove_pid_file(&self.layout);
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
fn signal_group(pid: i32, sig: Signal) {
    if killpg(Pid::from_raw(pid), sig).is_err() {
        let _ = kill(Pid::from_raw(pid), sig);
    }
}

/// The slices to supervise: every started runner's instances, or those `-r`
/// names.
fn select_slices(config: &Config, only: &[RunnerSpec]) -> Result<Vec<Slice>, String> {
    let mut slices = Vec::new();
    if only.is_empty() {
        for r in config.runners.iter().filter(|r| r.start) {
            for s in 0..r.instances {
                slices.push(Slice::new(r.clone(), s, r.instances));
            }
        }
        return Ok(slices);
    }
    for spec in only {
        let r = config
            .runner(&spec.name)
            .ok_or_else(|| format!("Undefined runner name: {}", spec.name))?;
        match spec.slice {
            Some((s, range)) => slices.push(Slice::new(r.clone(), s, range)),
            None => {
                for s in 0..r.instances {
                    slices.push(Slice::new(r.clone(), s, r.instances));
                }
            }
        }
    }
    Ok(slices)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runner_specs() {
        assert_eq!(
            RunnerSpec::parse("in").unwrap(),
            RunnerSpec {
                name: "in".into(),
                slice: None
            }
        );
        assert_eq!(RunnerSpec::parse("in:1:2").unwrap().slice, Some((1, 2)));
        assert_eq!(
            RunnerSpec::parse("a:1").unwrap_err(),
            "Bad runner spec: a:1"
        );
        assert!(RunnerSpec::parse("a:b:c").unwrap_err().contains("integers"));
        assert!(RunnerSpec::parse("a:2:2").is_err());
    }

    #[test]
    fn selection_follows_start_and_instances() {
        let c = Config::from_text("[runner.in]\ninstances = 2\n", None).unwrap();
        let all = select_slices(&c, &[]).unwrap();
        assert_eq!(all.len(), 13);
        let only = select_slices(&c, &[RunnerSpec::parse("bad").unwrap()]).unwrap();
        assert_eq!(only[0].spec(), "bad:0:1");
        assert!(select_slices(&c, &[RunnerSpec::parse("nosuch").unwrap()]).is_err());
    }
}
