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
    /// Validate the configuration and print the effective one.
    CheckConfig,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `mailman man > mailman.1`.
    Man,
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

/// Writes the man page to stdout.
pub fn print_man() -> std::io::Result<()> {
    use clap::CommandFactory;
    clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())
}

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

    #[test]
    fn definitions_are_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
