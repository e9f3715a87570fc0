//! The built-in runner (`mailman runner --runner NAME:SLICE:RANGE`): behaves
//! toward the master like a Mailman runner (docs/queues.md): start and stop messages,
//! SIGHUP keeps it running, SIGTERM/SIGINT/SIGUSR1 end it, once the entry in
//! hand is finished, with the signal's number as exit status; an unknown name
//! exits 15.
//!
//! Its work is its slice of its queue (see `queue`): it returns entries a
//! dead runner left in hand, then, oldest first, claims each entry, hands it
//! to the runner's `handler` command on stdin, and by the handler's exit
//! status removes it or moves it on (`next`), to `retry/` (75) or to
//! `shunt/` (anything else). Without a handler an entry is moved straight to
//! `next`; with neither it is left where it is. When there is nothing to do
//! it waits `sleep_time` (Mailman's retry runner waits after every pass).
//!
//! Mailman's LMTP, REST and task runners have no queue; for them this
//! runner only idles.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::unistd::Pid;

use crate::config::RunnerSpec;
use crate::config::placeholders;
use crate::config::{BAD_QUEUE, Config, RETRY_QUEUE, RunnerConfig, SHUNT_QUEUE};
use crate::os::process;
use crate::os::signals::{self, SignalPipe};
use crate::queue::handler::{self, Handler};
use crate::queue::{Entry, MAX_RECOVERIES, Recovered, Switchboard};
use crate::util::io_text;

/// Mailman's "do not restart me" exit status.
pub const EXIT_NO_RESTART: i32 = 15;
/// A handler's "try again later" (sysexits' EX_TEMPFAIL).
pub const EXIT_RETRY: i32 = 75;

/// Writes one line to stderr (the master's log); a closed pipe is ignored.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The runner's signal handlers, installed before anything else (before the
/// configuration is read): until then SIGHUP, a logrotate's reopen, would
/// end a runner that is just starting.
pub fn install_signals() -> std::io::Result<SignalPipe> {
    // SIGQUIT too: the master passes its stop signal on as it is. SIGCHLD
    // wakes the wait for a handler.
    let pipe = SignalPipe::install(&[
        libc::SIGHUP,
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGCHLD,
    ]);
    // The master started us with these blocked (so that one sent while we
    // started waited); handled now, they may come.
    process::unblock_start_signals();
    pipe
}

pub fn main(config: &Config, spec: &str, sigs: std::io::Result<SignalPipe>) -> i32 {
    let spec = match RunnerSpec::parse(spec) {
        Ok(s) => s,
        Err(e) => {
            say(&e);
            return 2;
        }
    };
    let Some(runner) = config.runner(&spec.name) else {
        say(&format!("Undefined runner name: {}", spec.name));
        return EXIT_NO_RESTART;
    };
    let (slice, range) = spec.slice.unwrap_or((0, 1));
    let sigs = match sigs {
        Ok(s) => s,
        Err(e) => {
            say(&format!(
                "{} runner cannot install signal handlers: {e}",
                runner.name
            ));
            return 1;
        }
    };
    // Every placeholder but `{entry}` is the same for each entry.
    let bin = std::env::current_exe().unwrap_or_default();
    let values = placeholders::placeholders(
        &bin,
        &config.config_arg(),
        &config.mailman.var_dir,
        &runner.name,
        slice,
        range,
    );
    let mut worker = Worker {
        config,
        runner,
        handler: placeholders::fill(&runner.handler, &values),
        slice,
        range,
        sigs,
        stop: None,
        // Under the master, a runner whose master is gone stops (Linux also
        // has the parent-death signal; this is the portable fallback).
        supervised: std::env::var_os("MAILMAN_UNDER_MASTER_CONTROL").is_some(),
        parent: nix::unistd::getppid(),
        said_idle: false,
    };
    say(&format!("{} runner started.", runner.name));
    worker.run()
}

/// What became of one entry's handling.
enum Outcome {
    /// Handled: removed, or on to `next`.
    Done,
    /// The handler asked for another try later (exit 75).
    Retry,
    /// Failed, for this reason.
    Shunt(String),
}

struct Worker<'a> {
    config: &'a Config,
    runner: &'a RunnerConfig,
    /// The runner's `handler`, placeholders filled but `{entry}`.
    handler: Vec<String>,
    slice: u32,
    range: u32,
    sigs: SignalPipe,
    /// The stop signal caught, if any: acted on between entries.
    stop: Option<i32>,
    supervised: bool,
    parent: Pid,
    /// Whether "entries wait, no handler and no next" was logged.
    said_idle: bool,
}

impl Worker<'_> {
    fn run(&mut self) -> i32 {
        let name = &self.runner.name;
        let board = if self.runner.has_queue() {
            match self.open() {
                Ok(b) => Some(b),
                Err(e) => {
                    say(&format!("{name} runner: {e:#}"));
                    return 1;
                }
            }
        } else {
            None
        };
        loop {
            self.check_signals();
            if let Some(sig) = self.stop {
                say(&format!("{name} runner exiting."));
                return sig;
            }
            if self.orphaned() {
                say(&format!("{name} runner lost its master.  Exiting."));
                return EXIT_NO_RESTART;
            }
            let worked = match &board {
                Some(b) => match self.pass(b) {
                    Ok(worked) => worked,
                    Err(code) => return code,
                },
                None => false,
            };
            if !worked || *name == RETRY_QUEUE {
                self.pause(self.runner.sleep_time.0);
            }
        }
    }

    /// Opens this slice's queue and returns what a dead runner left in hand.
    fn open(&self) -> anyhow::Result<Switchboard> {
        let r = self.runner;
        let mut targets = vec![RETRY_QUEUE, SHUNT_QUEUE, BAD_QUEUE];
        targets.extend(r.next.as_deref());
        targets.retain(|q| *q != r.name);
        let root = self.config.layout().queue_dir();
        let board = Switchboard::open(&root, &r.name, self.slice, self.range, &targets)?;
        for done in board.recover()? {
            match done {
                Recovered::Returned(e, n) => say(&format!(
                    "{} runner: entry {} was in hand when its runner died; returned to the queue ({n} of {MAX_RECOVERIES})",
                    r.name,
                    e.file_name()
                )),
                Recovered::ToBad(e) => say(&format!(
                    "{} runner: entry {} was in hand {MAX_RECOVERIES} times when its runner died; moved to {BAD_QUEUE}",
                    r.name,
                    e.file_name()
                )),
            }
        }
        Ok(board)
    }

    /// One pass over the waiting entries. `Ok(false)`: there was nothing it
    /// could do. `Err(code)`: exit with `code`.
    fn pass(&mut self, board: &Switchboard) -> Result<bool, i32> {
        let name = &self.runner.name;
        let batch = match board.waiting() {
            Ok(b) => b,
            Err(e) => {
                say(&format!(
                    "{name} runner: cannot read {}: {}",
                    board.dir().display(),
                    io_text(&e)
                ));
                return Ok(false);
            }
        };
        if batch.is_empty() {
            return Ok(false);
        }
        if self.runner.handler.is_empty() && self.runner.next.is_none() {
            if !self.said_idle {
                say(&format!(
                    "{name} runner has no handler and no next queue: {} in {}",
                    match batch.len() {
                        1 => "1 entry waits".to_string(),
                        n => format!("{n} entries wait"),
                    },
                    board.dir().display()
                ));
                self.said_idle = true;
            }
            return Ok(false);
        }
        for e in &batch {
            self.check_signals();
            if self.stop.is_some() || self.orphaned() {
                break;
            }
            self.process(board, e)?;
        }
        Ok(true)
    }

    /// Claims, handles and finishes one entry. A failure to move it leaves
    /// it in hand for the next start to return, and ends this runner.
    fn process(&mut self, board: &Switchboard, e: &Entry) -> Result<(), i32> {
        let name = &self.runner.name;
        match board.claim(e) {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(err) => {
                say(&format!(
                    "{name} runner: cannot claim entry {}: {}",
                    e.file_name(),
                    io_text(&err)
                ));
                return Err(1);
            }
        }
        let outcome = if self.runner.handler.is_empty() {
            Outcome::Done
        } else {
            self.handle(board, e)
        };
        let (to, why) = match outcome {
            Outcome::Done => (self.runner.next.as_deref(), None),
            Outcome::Retry => (
                Some(RETRY_QUEUE),
                Some(format!(
                    "handler exited with {EXIT_RETRY} (try again later)"
                )),
            ),
            Outcome::Shunt(why) => (Some(SHUNT_QUEUE), Some(why)),
        };
        if let Err(err) = board.finish(e, to) {
            say(&format!(
                "{name} runner: cannot {} entry {}: {}; it stays in hand until this runner restarts",
                to.map_or_else(|| "remove".to_string(), |q| format!("move to {q}")),
                e.file_name(),
                io_text(&err)
            ));
            return Err(1);
        }
        if let (Some(why), Some(q)) = (why, to) {
            say(&format!(
                "{name} runner: entry {}: {why}; moved to {q}",
                e.file_name()
            ));
        }
        Ok(())
    }

    /// Runs the handler on the claimed entry and waits for it, catching
    /// signals meanwhile (a stop waits for the entry to be finished).
    fn handle(&mut self, board: &Switchboard, e: &Entry) -> Outcome {
        let file = board.in_hand(e);
        let entry = file.to_string_lossy();
        let argv: Vec<String> = self
            .handler
            .iter()
            .map(|a| a.replace("{entry}", &entry))
            .collect();
        let Some((program, args)) = argv.split_first() else {
            return Outcome::Shunt("no handler".into());
        };
        let stdin = match File::open(&file) {
            Ok(f) => f,
            Err(err) => return Outcome::Shunt(format!("cannot open the entry: {}", io_text(&err))),
        };
        let name = e.file_name();
        let env = [
            ("MAILMAN_QUEUE", self.runner.name.as_ref()),
            ("MAILMAN_ENTRY", name.as_ref()),
            ("MAILMAN_ENTRY_FILE", file.as_os_str()),
        ];
        let mut child = match handler::start(program, args, &env, stdin) {
            Ok(c) => c,
            Err(err) => {
                return Outcome::Shunt(format!(
                    "cannot start handler {program}: {}",
                    io_text(&err)
                ));
            }
        };
        match self.wait_for(&mut child) {
            Ok(status) => match (status.code(), status.signal()) {
                (Some(0), _) => Outcome::Done,
                (Some(EXIT_RETRY), _) => Outcome::Retry,
                (Some(code), _) => Outcome::Shunt(format!("handler exited with {code}")),
                (None, Some(sig)) => {
                    Outcome::Shunt(format!("handler killed by {}", signals::name(sig)))
                }
                _ => Outcome::Shunt(format!("handler ended with {status}")),
            },
            Err(err) => Outcome::Shunt(format!("cannot wait for handler: {}", io_text(&err))),
        }
    }

    fn wait_for(&mut self, child: &mut Handler) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            // SIGCHLD wakes this; the timeout is a safety net.
            self.pause(Duration::from_secs(1));
        }
    }

    /// Sleeps up to `d`, or until a signal arrives.
    fn pause(&mut self, d: Duration) {
        let ms = d.as_millis().clamp(1, i32::MAX as u128) as i32;
        let mut fds = [PollFd::new(self.sigs.fd(), PollFlags::POLLIN)];
        let _ = poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        );
        self.check_signals();
    }

    /// Logs and records the signals that arrived.
    fn check_signals(&mut self) {
        let name = &self.runner.name;
        for sig in self.sigs.take(true) {
            match sig {
                libc::SIGCHLD => {}
                libc::SIGHUP => say(&format!("{name} runner caught SIGHUP.  Reopening logs.")),
                _ if self.stop.is_none() => {
                    say(&format!(
                        "{name} runner caught {}.  Stopping.",
                        signals::name(sig)
                    ));
                    self.stop = Some(sig);
                }
                _ => {}
            }
        }
    }

    fn orphaned(&self) -> bool {
        self.supervised && nix::unistd::getppid() != self.parent
    }
}
