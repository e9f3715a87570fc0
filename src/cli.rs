//! Command-line definitions (clap). Parsing only: nothing here acts.
//!
//! Multi-call: invoked as `start`, `stop`, `restart`, `reopen`, `status` or
//! `master` (a symlink), the binary acts as that subcommand.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "mailman",
    version,
    about = "GNU Mailman 3's master watcher and its control commands"
)]
pub struct Cli {
    /// Configuration file (else $MAILMAN_CONFIG_FILE, ./mailman.toml,
    /// ~/.mailman.toml, /etc/mailman.toml, /etc/mailman3/mailman.toml, or the
    /// built-in defaults).
    #[arg(short = 'C', long = "config", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override one setting, e.g. `--set mailman.stop_timeout=10s` or
    /// `--set runner.in.instances=4`; wins over the file and the environment
    /// (`MAILMAN__SECTION__KEY=value`). May be repeated.
    #[arg(long = "set", global = true, value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the Mailman master and runner processes.
    Start(StartArgs),
    /// Stop the Mailman master and runner processes.
    Stop(StopArgs),
    /// Stop and restart the Mailman runner subprocesses (all, or one).
    Restart(RestartArgs),
    /// Signal the Mailman processes to re-open their log files.
    Reopen(QuietArgs),
    /// Show whether the master is running (LSB exit codes: 0, 1, 3, 4).
    Status(StatusArgs),
    /// Run the master watcher in the foreground (what `start` runs, and what
    /// a container runs).
    Master(MasterArgs),
    /// Run the built-in runner (started by the master).
    Runner(RunnerArgs),
    /// Add entries to a queue, from files or standard input; prints each
    /// entry's name.
    Inject(InjectArgs),
    /// Show how many entries wait in each queue, and how many are in hand.
    Queues(QueuesArgs),
    /// List the scheduled jobs: next run, last run, last outcome.
    Jobs(QueuesArgs),
    /// Run a scheduled job now, through the master (its `overlap` applies).
    RunJob {
        /// The job (`[job.NAME]`).
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Validate the configuration and print the effective one.
    CheckConfig,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `mailman man > mailman.1`; with
    /// `--dir`, write it and one page per command (mailman-start.1, …) there.
    Man {
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// Writes the completion script for `shell` to stdout.
pub fn print_completions(shell: clap_complete::Shell) {
    use clap::CommandFactory;
    clap_complete::generate(
        shell,
        &mut Cli::command(),
        "mailman",
        &mut std::io::stdout(),
    );
}

/// Writes the man page to stdout, or every page (mailman.1 and one per
/// command) to `dir`.
pub fn print_man(dir: Option<&Path>) -> std::io::Result<()> {
    use clap::CommandFactory;
    match dir {
        None => render_main_page(&mut std::io::stdout()),
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            clap_mangen::generate_to(Cli::command(), dir)?;
            let mut page = std::fs::File::create(dir.join("mailman.1"))?;
            render_main_page(&mut page)
        }
    }
}

/// mailman(1): clap's sections, then what clap does not know: exit status,
/// environment, files.
fn render_main_page(w: &mut dyn std::io::Write) -> std::io::Result<()> {
    use clap::CommandFactory;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let man = clap_mangen::Man::new(cmd);
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    man.render_options_section(w)?;
    man.render_subcommands_section(w)?;
    w.write_all(MAN_EXTRA.as_bytes())?;
    man.render_version_section(w)
}

/// The sections of mailman(1) that clap has no words for (roff).
const MAN_EXTRA: &str = r#".SH "EXIT STATUS"
.TP
\fBstart\fR
0 started (its runners are up); 1 the master failed to start (its error is printed); 2 already running, or a bad configuration.
.TP
\fBstop\fR
0 stopped, or not running; 1 not stopped in time, or refused (a pid that is not proven the master's).
.TP
\fBrestart\fR, \fBreopen\fR
0 done; 1 not running, or an unknown runner or slice.
.TP
\fBstatus\fR
LSB: 0 running (also when degraded: a second line says what is wrong); 1 dead with a pid file left; 3 not running; 4 cannot tell (a bad configuration too). With \fB\-\-check\fR: 0 healthy; 1 running but starting, stopping or degraded; 3 not running; 4 cannot tell.
.TP
\fBmaster\fR
0 after a requested stop; 1 a start-up error; 2 already running, or a bad configuration; 3 a runner was given up with on_give_up = "exit".
.TP
\fBinject\fR, \fBqueues\fR
0 done; 1 an unreadable file, an unwritable queue, a missing var dir; 2 an unknown queue.
.TP
\fBjobs\fR
0 listed (with or without a master).
.TP
\fBrun\-job\fR
0 started (or queued by its overlap); 1 not running, an unknown job, or skipped by its overlap.
.TP
\fBcheck\-config\fR
0 valid; 2 a bad configuration (one line: FILE:LINE:COL: what is wrong).
.SH ENVIRONMENT
.TP
\fBMAILMAN_CONFIG_FILE\fR
The configuration file when \fB\-C\fR is not given (TOML, or a GNU Mailman Core mailman.cfg if its name ends in .cfg).
.TP
\fBMAILMAN_VAR_DIR\fR
The var dir, over the configuration's.
.TP
\fBMAILMAN__\fR\fISECTION\fR\fB__\fR\fIKEY\fR
Any configuration key, e.g. MAILMAN__MAILMAN__STOP_TIMEOUT=10s, MAILMAN__RUNNER__IN__INSTANCES=2; \fB\-\-set\fR wins over it.
.TP
\fBNOTIFY_SOCKET\fR
systemd's readiness socket: the master sends READY=1, STOPPING=1 and STATUS= there.
.TP
\fBMAILMAN_CONFINE\fR
record: confine runners by a record of their pids rather than a cgroup.
.SH FILES
.TP
\fI./mailman.toml\fR, \fI~/.mailman.toml\fR, \fI/etc/mailman.toml\fR, \fI/etc/mailman3/mailman.toml\fR
The configuration, the first found; then Mailman Core's \fI./mailman.cfg\fR, \fI~/.mailman.cfg\fR, \fI/etc/mailman.cfg\fR, \fI/etc/mailman3/mailman.cfg\fR.
.TP
\fIVAR_DIR\fR
/var/lib/mailman for root, else $XDG_STATE_HOME/mailman or ~/.local/state/mailman, unless the configuration says otherwise.
.TP
\fIVAR_DIR/locks/master.lck\fR
The master's lock (flock): held while a master runs.
.TP
\fIVAR_DIR/master.pid\fR
The master's pid, for Mailman's tools.
.TP
\fIVAR_DIR/master.sock\fR
The control socket (mode 0600).
.TP
\fIVAR_DIR/logs/mailman.log\fR
The log.
.TP
\fIVAR_DIR/queue/\fR
The queues.
.TP
\fIVAR_DIR/jobs/NAME.json\fR
A scheduled job's last run (for catch_up across restarts).
"#;

#[derive(Debug, Args)]
pub struct StartArgs {
    /// Accepted for compatibility; never needed (the lock cannot go stale).
    #[arg(short, long)]
    pub force: bool,
    /// As root, run as the configured user and group.
    #[arg(short = 'u', long)]
    pub run_as_user: bool,
    /// Do not print the status line.
    #[arg(short, long)]
    pub quiet: bool,
    /// Run the master in the foreground (for PID 1 in a container).
    #[arg(long)]
    pub foreground: bool,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    /// Do not print the status line.
    #[arg(short, long)]
    pub quiet: bool,
    /// Return once the master was signalled, without waiting for it to exit.
    #[arg(long)]
    pub no_wait: bool,
    /// Wait at most this many seconds (default: stop_timeout + 8).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
}

#[derive(Debug, Args)]
pub struct RestartArgs {
    /// Do not print the status line.
    #[arg(short, long)]
    pub quiet: bool,
    /// Restart only this runner, or one slice of it (needs the control socket).
    #[arg(value_name = "RUNNER[:SLICE]")]
    pub runner: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the master's and every runner's state as JSON.
    #[arg(long, conflicts_with = "check")]
    pub json: bool,
    /// Health check: exit 0 only if the master runs and nothing is wrong
    /// (1: running but starting, stopping or degraded; 3: not running;
    /// 4: cannot tell).
    #[arg(long)]
    pub check: bool,
}

#[derive(Debug, Args)]
pub struct QuietArgs {
    /// Do not print the status line.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct MasterArgs {
    /// Don't restart the runners when they exit (for debugging).
    #[arg(short = 'n', long)]
    pub no_restart: bool,
    /// Accepted for compatibility; never needed.
    #[arg(short, long)]
    pub force: bool,
    /// Start only this runner, or one slice of it; may be repeated.
    #[arg(short = 'r', long = "runners", value_name = "NAME[:SLICE:RANGE]")]
    pub runners: Vec<String>,
    /// Log to stderr too.
    #[arg(short, long)]
    pub verbose: bool,
    /// As root, run as the configured user and group.
    #[arg(short = 'u', long)]
    pub run_as_user: bool,
}

#[derive(Debug, Args)]
pub struct RunnerArgs {
    /// The runner to be: NAME:SLICE:RANGE (or NAME).
    #[arg(short = 'r', long = "runner", value_name = "NAME:SLICE:RANGE")]
    pub runner: String,
}

#[derive(Debug, Args)]
pub struct InjectArgs {
    /// The queue (a runner's name, e.g. `in`).
    #[arg(value_name = "QUEUE")]
    pub queue: String,
    /// The files to enqueue, one entry each (`-` or none: standard input).
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct QueuesArgs {
    /// Print the depths as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The command lines a health check and a start script write, read without
/// building clap's whole command tree (issue 19: building it is about a
/// fifth of `status`'s page faults, and 0.16 ms of a 12-runner `start`):
/// `-C FILE` (`--config FILE`, `--config=FILE`) anywhere, then `status`
/// with `--check` or `--json`, or `start` with any of its own flags, each
/// spelt alone (`-q`, not `-qf`) and at most once. Anything else, `--help`
/// and every mistake included, is clap's: `None`.
pub fn quick(args: &[OsString]) -> Option<Cli> {
    let mut config = None;
    let mut command = None;
    let mut rest = args.iter().skip(1);
    while let Some(arg) = rest.next() {
        let arg = arg.to_str()?;
        let value = match arg {
            "-C" | "--config" => Some(rest.next()?.clone()),
            a => a.strip_prefix("--config=").map(OsString::from),
        };
        if let Some(v) = value {
            let plain = v
                .to_str()
                .is_none_or(|v| !v.is_empty() && !v.starts_with('-'));
            if config.is_some() || !plain {
                return None;
            }
            config = Some(PathBuf::from(v));
            continue;
        }
        match (&mut command, arg) {
            (None, "status") => {
                command = Some(Command::Status(StatusArgs {
                    json: false,
                    check: false,
                }))
            }
            (None, "start") => {
                command = Some(Command::Start(StartArgs {
                    force: false,
                    run_as_user: false,
                    quiet: false,
                    foreground: false,
                }))
            }
            // `--check` and `--json` conflict, and neither repeats.
            (Some(Command::Status(s)), _) if s.check || s.json => return None,
            (Some(Command::Status(s)), "--check") => s.check = true,
            (Some(Command::Status(s)), "--json") => s.json = true,
            (Some(Command::Start(s)), flag) => {
                let set = match flag {
                    "-f" | "--force" => &mut s.force,
                    "-u" | "--run-as-user" => &mut s.run_as_user,
                    "-q" | "--quiet" => &mut s.quiet,
                    "--foreground" => &mut s.foreground,
                    _ => return None,
                };
                if *set {
                    return None;
                }
                *set = true;
            }
            _ => return None,
        }
    }
    Some(Cli {
        config,
        set: Vec::new(),
        command: command?,
    })
}

/// Names the binary answers to as a subcommand (multi-call).
const CALL_NAMES: &[&str] = &["start", "stop", "restart", "reopen", "status", "master"];

/// Rewrites `stop -q` (argv[0] = stop) into `mailman stop -q`.
pub fn multicall(mut args: Vec<OsString>) -> Vec<OsString> {
    let name = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .map(str::to_string);
    if let Some(name) = name.filter(|n| CALL_NAMES.contains(&n.as_str())) {
        args[0] = "mailman".into();
        args.insert(1, name.into());
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multicall_names() {
        let got = multicall(vec!["/usr/local/bin/stop".into(), "-q".into()]);
        assert_eq!(
            got,
            vec![OsString::from("mailman"), "stop".into(), "-q".into()]
        );
        let same = multicall(vec!["mailman".into(), "status".into()]);
        assert_eq!(same.len(), 2);
    }

    /// Whatever the quick reading takes, clap reads the same; what clap
    /// would refuse or read otherwise, it leaves to clap.
    #[test]
    fn quick_is_claps() {
        let words = [
            "status",
            "start",
            "--check",
            "--json",
            "-q",
            "--quiet",
            "-f",
            "-u",
            "--run-as-user",
            "--foreground",
            "-qf",
            "-C",
            "--config=",
            "--config=f",
            "f",
            "",
            "--set",
            "-h",
            "--",
            "stop",
        ];
        // Every line of up to four words: 168,421 of them.
        let mut lines: Vec<Vec<&str>> = vec![vec![]];
        let mut last = lines.clone();
        for _ in 0..4 {
            let longer: Vec<Vec<&str>> = last
                .iter()
                .flat_map(|l| {
                    words.iter().map(move |w| {
                        let mut l = l.clone();
                        l.push(w);
                        l
                    })
                })
                .collect();
            lines.extend(longer.iter().cloned());
            last = longer;
        }
        assert_eq!(lines.len(), 168_421);
        let (mut status, mut start) = (0, 0);
        for line in &lines {
            let args = argv(line);
            let Some(quick) = quick(&args) else {
                continue;
            };
            match quick.command {
                Command::Status(_) => status += 1,
                Command::Start(_) => start += 1,
                _ => panic!("{line:?}: {quick:?}"),
            }
            let cli = Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{line:?}: {e}"));
            assert_eq!(format!("{quick:?}"), format!("{cli:?}"), "{line:?}");
        }
        // It does take what a health check and a start script write.
        for line in [
            &["status"][..],
            &["-C", "f", "status", "--check"],
            &["status", "--config=f", "--json"],
            &["--config", "f", "status"],
            &["-C", "f", "start", "-q"],
            &["start", "--foreground", "-C", "f"],
            &["start", "-u", "--quiet", "-f"],
        ] {
            assert!(quick(&argv(line)).is_some(), "{line:?}");
        }
        assert!(status > 20 && start > 200, "{status} {start}");
    }

    fn argv(line: &[&str]) -> Vec<OsString> {
        std::iter::once("mailman")
            .chain(line.iter().copied())
            .map(OsString::from)
            .collect()
    }

    #[test]
    fn definitions_are_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
