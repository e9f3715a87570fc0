//! `restart` and `reopen`: over the control socket, else SIGUSR1 / SIGHUP
//! to the master after an identity check.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{Asked, Target, ask, find_master, not_running, probe_settled};
use crate::cli::{QuietArgs, RestartArgs};
use crate::config::Config;
use crate::control::Request;
use crate::os::lock::Probe;

/// `restart [RUNNER[:SLICE]]`: over the socket, else SIGUSR1 (all only).
pub fn restart(config: &Config, args: &RestartArgs) -> i32 {
    let layout = config.layout();
    let (runner, slice) = match args.runner.as_deref().map(parse_target) {
        None => (None, None),
        Some(Ok(t)) => t,
        Some(Err(e)) => {
            eprintln!("{e}");
            return 1;
        }
    };
    if !matches!(probe_settled(&layout), Probe::Held(_)) {
        return signal_master(config, args.quiet, Signal::SIGUSR1, "");
    }
    let line = match &args.runner {
        Some(r) => format!("Restarting runner {r}"),
        None => "Restarting the Mailman runners".into(),
    };
    match ask(
        config,
        &Request::Restart {
            runner: runner.clone(),
            slice,
        },
    ) {
        Asked::Done(_) => {
            if !args.quiet {
                println!("{line}");
            }
            0
        }
        Asked::Failed(e) => {
            eprintln!("{e}");
            1
        }
        // One runner has no signal of its own.
        Asked::Unreachable(e) if runner.is_some() => {
            eprintln!("{e}");
            1
        }
        Asked::Unreachable(_) => signal_master(config, args.quiet, Signal::SIGUSR1, &line),
        Asked::NoSocket if runner.is_some() => {
            eprintln!(
                "cannot restart one runner: the master has no control socket ({})",
                layout.socket().display()
            );
            1
        }
        Asked::NoSocket => signal_master(config, args.quiet, Signal::SIGUSR1, &line),
    }
}

/// `RUNNER` or `RUNNER:SLICE`.
fn parse_target(text: &str) -> Result<(Option<String>, Option<u32>), String> {
    match text.split_once(':') {
        None if !text.is_empty() => Ok((Some(text.to_string()), None)),
        Some((name, n)) if !name.is_empty() => n
            .parse::<u32>()
            .map(|n| (Some(name.to_string()), Some(n)))
            .map_err(|_| format!("bad runner slice \"{text}\": expected RUNNER or RUNNER:SLICE")),
        _ => Err(format!(
            "bad runner \"{text}\": expected RUNNER or RUNNER:SLICE"
        )),
    }
}

/// `reopen`: over the socket, else SIGHUP.
pub fn reopen(config: &Config, args: &QuietArgs) -> i32 {
    let line = "Reopening the Mailman runners";
    let layout = config.layout();
    if !matches!(probe_settled(&layout), Probe::Held(_)) {
        return signal_master(config, args.quiet, Signal::SIGHUP, line);
    }
    match ask(config, &Request::Reopen) {
        Asked::Done(_) => {
            if !args.quiet {
                println!("{line}");
            }
            0
        }
        Asked::Failed(e) => {
            eprintln!("{e}");
            1
        }
        Asked::NoSocket | Asked::Unreachable(_) => {
            signal_master(config, args.quiet, Signal::SIGHUP, line)
        }
    }
}

/// The signal path of `restart` and `reopen`, after an identity check.
fn signal_master(config: &Config, quiet: bool, sig: Signal, line: &str) -> i32 {
    let layout = config.layout();
    match find_master(&layout) {
        Target::NotRunning => {
            eprintln!("{}", not_running(&layout));
            1
        }
        Target::Refuse(msg) => {
            eprintln!("{msg}");
            1
        }
        Target::Master(master) => {
            if !quiet {
                println!("{line}");
            }
            let pid = master.pid;
            match kill(Pid::from_raw(pid), sig) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("cannot signal the master (pid {pid}): {}", e.desc());
                    1
                }
            }
        }
    }
}
