//! Start-up, in order: subreaper, user, var dir, log, lock, pid file,
//! control socket, runners (docs/master.md, "Start-up and readiness"); and
//! the pipe through which `mailman start` learns how it went.
//!
//! Not here: what a runner's process looks like (`spawn`).

use std::fs::File;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::log;
use super::output::{Output, Outputs};
use super::slice::Slice;
use super::slice::{State, Why};
use super::spawn::{self, Bases, Environment, READY_FD_ENV, SpawnContext};
use super::{EXIT_ERROR, EXIT_USAGE, Master, Mode, Options, StartError};
use crate::config::{Config, RunnerSpec};
use crate::control;
use crate::os::confine::Confinement;
use crate::os::lock::{self, AcquireError};
use crate::os::process;
use crate::os::signals::SignalPipe;

/// The write end of the pipe `mailman start` waits on, if it started us.
#[derive(Default)]
pub(super) struct StartPipe(Option<File>);

impl StartPipe {
    pub(super) fn from_env() -> StartPipe {
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
    pub(super) fn from_fd(fd: std::os::fd::OwnedFd) -> StartPipe {
        StartPipe(Some(File::from(fd)))
    }
    pub(super) fn daemonised(&self) -> bool {
        self.0.is_some()
    }
    pub(super) fn ok(&mut self) {
        if let Some(mut f) = self.0.take() {
            let _ = f.write_all(b"ready\n");
        }
    }
    pub(super) fn fail(&mut self, e: &StartError) {
        match self.0.take() {
            Some(mut f) => {
                let _ = writeln!(f, "error {} {}", e.code, e.message);
            }
            None => eprintln!("{}", e.message),
        }
    }
}

impl Master {
    /// Start-up in order (docs/master.md): subreaper, user, var dir, log,
    /// lock, pid file, control socket, then `init` or the runners. Returns
    /// once that last step is under way; `ready` is told when it is over.
    pub(super) fn start(
        config: Config,
        opts: Options,
        signals: SignalPipe,
        ready: &mut StartPipe,
    ) -> Result<Master, StartError> {
        let daemonised = ready.daemonised();
        #[cfg(target_os = "linux")]
        if std::process::id() != 1 {
            // Orphaned grandchildren come to us, and we reap them.
            let _ = nix::sys::prctl::set_child_subreaper(true);
        }
        let mut slices =
            select_slices(&config, &opts.only).map_err(|e| StartError::new(EXIT_USAGE, e))?;
        let nofile = process::raise_nofile();
        // Before the log's thread: two pipes a runner, the four pipe ends
        // and failure pipe of each child of a start-up batch, and room for
        // the rest (control clients, jobs, the preload helper).
        process::reserve_fds(2 * slices.len() + 5 * BATCH + 128);
        crate::os::vfork::prepare(slices.len(), BATCH);
        let root = nix::unistd::geteuid().is_root();
        if opts.run_as_user && root {
            crate::os::user::switch_to(&config.mailman.user, &config.mailman.group)
                .map_err(|e| StartError::new(EXIT_ERROR, e))?;
        }
        let layout = config.layout();
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
        let lock_watch = lock::LockWatch::new(&layout.lock_file());
        // Before the pid file: a port that cannot be had leaves nothing.
        let http = match &config.http.listen {
            Some(addr) => {
                let h =
                    crate::control::Http::bind(addr).map_err(|e| StartError::new(EXIT_ERROR, e))?;
                info!("Serving /metrics, /livez and /readyz on http://{}", h.local);
                Some(h)
            }
            None => None,
        };
        lock::write_pid_file(&layout).map_err(|e| StartError::new(EXIT_ERROR, e))?;
        let config_arg = match &config.piped {
            Some(text) => keep_piped(&layout, text).inspect_err(|_| {
                lock::remove_pid_file(&layout);
            })?,
            None => config.config_arg(),
        };
        let overrides: Vec<_> = config
            .sets
            .iter()
            .filter_map(|s| crate::config::set_as_env(s))
            .collect();
        let bases = Bases::new(&config_arg, &layout.var_dir, &overrides).map_err(|e| {
            lock::remove_pid_file(&layout);
            StartError::new(EXIT_ERROR, anyhow::anyhow!("the runners' environment: {e}"))
        })?;
        // Whatever a master of this var dir killed with -9 left behind.
        let confine = Confinement::new(&layout.lock_file());
        let left = confine.kill_leftovers();
        if !left.is_empty() {
            let pids: Vec<String> = left.iter().map(i32::to_string).collect();
            warn!(
                "Killed {} processes left behind by a master that did not stop cleanly ({}): {}",
                left.len(),
                confine.describe(),
                pids.join(", ")
            );
        }
        let control = match control::Server::bind(&layout.socket()) {
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
        if config.mailman.merge_pages {
            offer_to_merge();
        }

        super::readiness::resolve_all(&mut slices);
        let ctx = SpawnContext {
            // Resolved once, now: by path, so that after a package upgrade
            // replaces the file, runners start the new binary.
            bin: std::env::current_exe().unwrap_or_else(|_| "mailman".into()),
            config_arg,
            var_dir: layout.var_dir.clone(),
            master_pid: std::process::id() as i32,
            nofile,
            cgroup: confine.cgroup().map(|(fd, procs)| (fd, procs.clone())),
            bases,
        };
        let watches_stalls = slices.iter().any(|s| s.runner.stall_threshold().is_some());
        let mut master = Master {
            config,
            layout,
            ctx,
            slices,
            watches_stalls,
            outputs: Outputs::new(),
            signals,
            mode: Mode::Starting,
            restartable: !opts.no_restart,
            control,
            clients: Vec::new(),
            control_pause: Default::default(),
            http_pause: Default::default(),
            http,
            jobs: Vec::new(),
            stall_check_at: None,
            slice_timer: None,
            wake_at: None,
            share_check_at: None,
            started: Instant::now(),
            init: None,
            preload: None,
            confine,
            record_stale: false,
            probes: Vec::new(),
            ready: std::mem::take(ready),
            notifier: crate::os::notify::Notifier::from_env(),
            log: Some(log),
            lock_watch,
            lock_trouble: None,
            poll_failing: false,
            lock,
        };
        let dir = master.layout.var_dir.join("jobs");
        master.jobs = master
            .config
            .jobs
            .iter()
            .map(|c| super::jobs::Job::new(c.clone(), &dir))
            .collect();
        // Loading Mailman's code while `init` runs.
        master.preload = master
            .config
            .preload_python()
            .zip(master.config.mailman.mailman_cfg.clone())
            .map(|(python, cfg)| {
                let init_over = master.config.mailman.init.is_empty();
                super::preload::Preload::new(python, cfg, init_over)
            });
        master.start_helper();
        if let Some(core) = &master.config.core {
            let dir = core.lock_dir();
            if let Some(pid) = super::stale_lock::break_stale(&dir).lock {
                info!(
                    "Removed Mailman's lock {}: its holder (pid {pid}) is gone",
                    dir.join("dbcreate.lck").display()
                );
            }
        }
        master.begin_start();
        Ok(master)
    }

    /// Runs `init` if there is one (the runners start when it has
    /// succeeded: [`Master::on_init_exit`]), else starts the runners.
    /// Mailman's own `runner` program as `init` is forked from the preload
    /// helper, if there is one, once it has loaded Mailman's code.
    fn begin_start(&mut self) {
        let argv = self.config.mailman.init.clone();
        if argv.is_empty() {
            return self.launch_all();
        }
        let runner_program = self.config.core.as_ref().map(|c| c.runner_program());
        if runner_program.is_some_and(|p| p.as_os_str() == argv[0].as_str())
            && self.init_from_helper(&argv)
        {
            info!(
                "Initialising: {} (forked from the preload helper)",
                argv.join(" ")
            );
            self.init = Some(Init { pid: None, argv });
            return;
        }
        self.init_plainly(argv);
    }

    /// Runs `init` as a process of its own.
    pub(super) fn init_plainly(&mut self, argv: Vec<String>) {
        let environment = if self.config.core.is_some() {
            Environment::Mailman { env: &EMPTY_ENV }
        } else {
            Environment::Ours {
                spec: "init".into(),
                env: &EMPTY_ENV,
            }
        };
        match spawn::start(&self.ctx, &argv, environment, None) {
            Ok(sp) => {
                info!("Initialising: {}", argv.join(" "));
                self.init_output(&argv, sp.pid, [sp.stdout, sp.stderr]);
                self.init = Some(Init {
                    pid: Some(sp.pid),
                    argv,
                });
            }
            Err(e) => self.fail_start(format!(
                "cannot run init {}: {}",
                argv[0],
                crate::util::io_text(&e)
            )),
        }
    }

    /// `init`'s output, logged under its name (`pid` is init's).
    pub(super) fn init_output(
        &mut self,
        argv: &[String],
        pid: i32,
        fds: [std::os::fd::OwnedFd; 2],
    ) {
        // Mailman's `runner --list` prints its runners.
        let core_default = self.config.core.is_some() && argv.last().is_some_and(|a| a == "--list");
        for (fd, stream) in fds.into_iter().zip(["stdout", "stderr"]) {
            let o = Output::new(fd, "init", None, pid, stream);
            let quiet = core_default && stream == "stdout";
            self.outputs.push(if quiet { o.quiet() } else { o });
        }
    }

    /// `init` ended: the runners start if it succeeded; start-up fails if
    /// not. During a stop it only goes.
    pub(super) fn on_init_exit(&mut self, why: Why) {
        let Some(init) = self.init.take() else {
            return;
        };
        if self.mode != Mode::Starting {
            return;
        }
        if why == Why::Exit(0) {
            info!("Initialised ({})", init.argv.join(" "));
            self.helper_go();
            return self.launch_all();
        }
        let how = match why {
            Why::Exit(n) => format!("exited with {n}"),
            Why::Signal(n) => format!("was killed by {}", crate::os::signals::name(n)),
        };
        self.fail_start(format!(
            "init {} {how}; its output is in the log",
            init.argv.join(" ")
        ));
    }

    /// Start-up's last step: every slice is to be started, a batch per
    /// turn of the event loop ([`Master::launch_batch`]).
    fn launch_all(&mut self) {
        for s in &mut self.slices {
            s.state = State::Pending;
        }
        self.launch_batch();
    }

    /// Starts up to [`BATCH`] pending slices; once none is left, start-up
    /// is over. A runner whose program cannot be run at all (missing, not
    /// executable) fails the start-up, and the runners started before it
    /// are stopped: that is a configuration error, not a crash to retry. A
    /// passing failure (a busy file, no memory) is a crash like any other.
    pub(super) fn launch_batch(&mut self) {
        let mut pending =
            (0..self.slices.len()).filter(|&i| self.slices[i].state == State::Pending);
        let batch: Vec<usize> = pending.by_ref().take(BATCH).collect();
        // If so, the loop turns, then comes back here.
        let more = pending.next().is_some();
        for (idx, e) in self.launch_together(&batch) {
            if e.lasting {
                return self.fail_start(e.message);
            }
            error!("{}", e.message);
            self.slices[idx].state = State::Stopped;
            self.decide(idx, None, Why::Exit(127), Duration::ZERO);
        }
        if more {
            return;
        }
        self.mode = Mode::Running;
        if self.watches_stalls() {
            self.stall_check_at = Some(Instant::now() + self.stall_period());
        }
        self.schedule_jobs();
        self.check_sharing();
        self.ready.ok();
        self.notifier.send(&format!(
            "READY=1\nSTATUS={} runners running\nMAINPID={}",
            self.running(),
            std::process::id()
        ));
        // Start-up's code and heap are not the running master's.
        crate::os::memory::trim();
    }

    /// Start-up failed: logged, told to `mailman start` (or stderr), and
    /// whatever was started is stopped; the master exits 1.
    fn fail_start(&mut self, message: String) {
        error!("{message}");
        self.ready.fail(&StartError::new(EXIT_ERROR, &message));
        self.begin_stop(libc::SIGTERM, EXIT_ERROR);
    }
}

/// A configuration read from a pipe (`-C <(envsubst < …)`), which no runner
/// can read again, kept for them (`{config}`, `MAILMAN_CONFIG_FILE`): a
/// copy beside the pid file, readable by the runners' user alone, removed
/// when the master stops.
fn keep_piped(
    layout: &crate::os::layout::Layout,
    text: &str,
) -> Result<std::path::PathBuf, StartError> {
    let path = layout.config_copy();
    crate::util::replace_file(&path, text.as_bytes(), 0o600).map_err(|e| {
        StartError::new(
            EXIT_ERROR,
            format!(
                "cannot keep the configuration read from a pipe in {}: {}",
                path.display(),
                crate::util::io_text(&e)
            ),
        )
    })?;
    Ok(path)
}

/// Slices started per turn of the event loop at start-up. A batch's
/// children are cloned without waiting for each other, then the master
/// waits until every one has exec'd, and the wait is long (two cores busy
/// with the children's own start-up): 128 starts 100 runners in one batch
/// (12 ms against 35 with 64, BENCHMARKS.md) and 1,000 no slower, while the
/// loop still turns every few tens of milliseconds.
pub(super) const BATCH: usize = 128;

/// The `init` command while it runs.
pub(super) struct Init {
    /// `None` while the preload helper forks it.
    pub(super) pid: Option<i32>,
    pub(super) argv: Vec<String>,
}

pub(super) static EMPTY_ENV: std::sync::LazyLock<indexmap::IndexMap<String, String>> =
    std::sync::LazyLock::new(indexmap::IndexMap::new);

/// The slices to supervise: every started runner's instances, or those `-r`
/// names, else those `[mailman] slices` names; never one part of a
/// runner's hash space twice.
fn select_slices(config: &Config, only: &[RunnerSpec]) -> Result<Vec<Slice>, String> {
    let mut slices = Vec::new();
    let from_config;
    let only = if only.is_empty() {
        from_config = config
            .mailman
            .slices
            .iter()
            .map(|t| RunnerSpec::parse(t))
            .collect::<Result<Vec<_>, _>>()?;
        &from_config[..]
    } else {
        only
    };
    crate::config::no_overlap(only)?;
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

/// `merge_pages`: the master's memory, and so every process it starts,
/// offered to the kernel's same-page merging; said in the log, with whether
/// the host merges anything.
fn offer_to_merge() {
    use crate::os::memory::Merging;
    match crate::os::memory::offer_to_merge() {
        Ok(Merging::Running) => info!(
            "Runners' memory is offered to the kernel's same-page merging (KSM runs on this host)"
        ),
        Ok(Merging::Stopped) => warn!(
            "Runners' memory is offered to the kernel's same-page merging, but KSM does not run \
             on this host (/sys/kernel/mm/ksm/run is not 1): nothing is merged until it does"
        ),
        Err(e) => warn!(
            "merge_pages: cannot offer memory to the kernel's same-page merging \
             (prctl PR_SET_MEMORY_MERGE: {e}); runners run without it"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RunnerSpec;

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
