//! `mailman`: GNU Mailman 3's master watcher and its control commands in one
//! static binary. This file only dispatches. The tree is the architecture:
//!
//! | subsystem   | for |
//! |-------------|-----|
//! | `cli`       | the command line (clap definitions; parsing only) |
//! | `config/`   | the one validated `Config`: TOML, environment and `--set` layers |
//! | `master/`   | the master watcher: start-up, the event loop, slices, spawning, output, log |
//! | `control/`  | the control socket: protocol, client, server |
//! | `commands/` | what each CLI command does |
//! | `queue/`    | queue directories and the built-in runner |
//! | `os/`       | lock and pid file, process identity, signals, sd_notify, user switching |
//! | `exit`, `util` | exit statuses; small helpers |
//!
//! Dependencies point one way: `commands` and `master` use `control`,
//! `config`, `os`; `queue` uses `config` and `os`; `config` and `os` use
//! nothing of ours but `util`.
//!
//! The entry point is C's `main`, not Rust's: see `os::runtime`.

#![cfg_attr(not(test), no_main)]

mod cli;
mod commands;
mod config;
mod control;
mod exit;
mod master;
mod os;
mod queue;
mod util;

use clap::Parser;

use cli::{Cli, Command};
use config::Config;
use config::RunnerSpec;
use exit::EXIT_USAGE;

/// The heap: musl's own allocator maps and unmaps a group of pages for
/// almost every size class as it fills and empties (a 12-runner start made
/// 230 `mmap`/`munmap` pairs more than with glibc's, 20 % slower); Doug
/// Lea's allocator, as glibc's descends from it, keeps what it freed.
#[cfg(all(not(test), target_env = "musl"))]
#[global_allocator]
static HEAP: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

/// The process's entry point (`#![no_main]`): std's start-up is
/// `os::runtime::init`; the command line is taken from `argv`.
#[cfg(not(test))]
#[unsafe(no_mangle)]
extern "C" fn main(argc: libc::c_int, argv: *const *const libc::c_char) -> libc::c_int {
    // SAFETY: C's `main` gets `argc` pointers to NUL-terminated strings,
    // which live as long as the process.
    start(unsafe { os::runtime::args(argc, argv) })
}

/// Under `cargo test` the test harness is `main`; the program's own entry
/// is kept (and all it calls, in use).
#[cfg(test)]
fn main() {
    start(std::env::args_os().collect());
}

fn start(args: Vec<std::ffi::OsString>) -> ! {
    os::runtime::init();
    let code = run(args);
    std::process::exit(code);
}

fn run(args: Vec<std::ffi::OsString>) -> i32 {
    let args = cli::multicall(args);
    let cli = match cli::quick(&args).map_or_else(|| Cli::try_parse_from(args), Ok) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_USAGE } else { 0 };
        }
    };
    // Commands that need no configuration.
    match &cli.command {
        Command::Completions { shell } => {
            cli::print_completions(*shell);
            return 0;
        }
        Command::Man { dir } => {
            return match cli::print_man(dir.as_deref()) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("cannot write the man page: {e}");
                    1
                }
            };
        }
        _ => {}
    }
    let becomes_master = match &cli.command {
        Command::Master(_) => true,
        Command::Start(args) => args.foreground,
        _ => false,
    };
    // The master's handlers go in first of all (see master::install_signals),
    // and so do a runner's.
    let mut signals = becomes_master.then(master::install_signals);
    let mut runner_signals =
        matches!(cli.command, Command::Runner(_)).then(queue::runner::install_signals);
    let starts_runners = matches!(
        cli.command,
        Command::Master(_) | Command::Start(_) | Command::CheckConfig
    );
    // `status` needs only where the master's files are (issue 19), and
    // never forks or starts a thread.
    if let Command::Status(args) = &cli.command {
        return status_command(cli.config.as_deref(), &cli.set, args);
    }
    protect_heap_across_fork();
    let config = match Config::discover(cli.config.as_deref(), &cli.set).and_then(|c| {
        if starts_runners {
            c.check_runnable().map(|()| c)
        } else {
            Ok(c)
        }
    }) {
        Ok(c) => c,
        Err(e) if matches!(cli.command, Command::Master(_)) => {
            return master::fail_early(EXIT_USAGE, &e.to_string());
        }
        Err(e) => {
            eprintln!("{e}");
            return EXIT_USAGE;
        }
    };

    match cli.command {
        Command::Start(args) => commands::start(config, &args, signals.take()),
        Command::Stop(args) => commands::stop(&config, &args),
        Command::Restart(args) => commands::restart(&config, &args),
        Command::Reopen(args) => commands::reopen(&config, &args),
        Command::Status(args) => status_command(cli.config.as_deref(), &cli.set, &args),
        Command::Master(args) => {
            let mut only = Vec::new();
            for text in &args.runners {
                match RunnerSpec::parse(text) {
                    Ok(spec) => only.push(spec),
                    Err(e) => {
                        eprintln!("{e}");
                        return EXIT_USAGE;
                    }
                }
            }
            let opts = master::Options {
                no_restart: args.no_restart,
                only,
                verbose: args.verbose,
                run_as_user: args.run_as_user,
            };
            let signals = signals.take().unwrap_or_else(master::install_signals);
            master::main(config, opts, signals)
        }
        Command::Runner(args) => {
            let sigs = runner_signals
                .take()
                .unwrap_or_else(queue::runner::install_signals);
            queue::runner::main(&config, &args.runner, sigs)
        }
        Command::Inject(args) => commands::queues::inject(&config, &args.queue, &args.files),
        Command::Queues(args) => commands::queues::queues(&config, args.json),
        Command::Jobs(args) => commands::jobs::jobs(&config, args.json),
        Command::RunJob { name } => commands::jobs::run_job(&config, &name),
        Command::CheckConfig => {
            print!("{}", config.to_toml());
            0
        }
        Command::Completions { .. } | Command::Man { .. } => 0,
    }
}

/// Registers dlmalloc's `pthread_atfork` handlers, which hold the heap's
/// lock across a `fork` so that a child forked while another thread
/// allocates does not inherit the lock held (the master's spawns clone
/// without `fork`, and their children do not allocate; but `start` forks
/// its daemon, and the fallback spawn and the built-in runner's handlers
/// fork through `std`). Every command but `status`, which never forks or
/// starts a thread and so is spared musl's first `malloc` (its own heap,
/// set up by `pthread_atfork`: a `brk` and four page faults).
fn protect_heap_across_fork() {
    // SAFETY: dlmalloc asks for this before any allocation, because the
    // call takes the heap's lock: here no thread but this one exists yet
    // (none is started before a command runs) and this one holds no lock,
    // so taking it cannot wait or deadlock, and no `fork` has been made
    // that the handlers would have had to cover.
    #[cfg(all(not(test), target_env = "musl"))]
    unsafe {
        dlmalloc::enable_alloc_after_fork();
    }
}

/// `status`, from the configuration's `[mailman]` table alone
/// (`config::locate`).
fn status_command(
    config: Option<&std::path::Path>,
    sets: &[String],
    args: &cli::StatusArgs,
) -> i32 {
    match Config::locate(config, sets) {
        Ok(located) if args.json => commands::status_json(located),
        Ok(located) => commands::status(located, args.check),
        // LSB's terms: it cannot tell.
        Err(e) => {
            eprintln!("{e}");
            commands::lsb::UNKNOWN
        }
    }
}
