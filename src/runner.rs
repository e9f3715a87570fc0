//! The built-in runner (`mailman runner --runner NAME:SLICE:RANGE`): behaves
//! toward the master like a Mailman runner (SPEC 6): start and stop messages,
//! SIGHUP keeps it running, SIGTERM/SIGINT/SIGUSR1 end it with the signal's
//! number as exit status, an unknown name exits 15.
//!
//! Not yet here: queue work (a later issue); between signals it sleeps in
//! `sleep_time` steps.

use std::io::Write;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::config::Config;
use crate::master::RunnerSpec;
use crate::signals::{self, SignalPipe};

/// Mailman's "do not restart me" exit status.
pub const EXIT_NO_RESTART: i32 = 15;

/// Writes one line to stderr (the master's log); a closed pipe is ignored.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

pub fn main(config: &Config, spec: &str) -> i32 {
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
    let name = &runner.name;
    // SIGQUIT too: the master passes its stop signal on as it is.
    let sigs = match SignalPipe::install(&[
        libc::SIGHUP,
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGUSR1,
    ]) {
        Ok(s) => s,
        Err(e) => {
            say(&format!(
                "{name} runner cannot install signal handlers: {e}"
            ));
            return 1;
        }
    };
    // Under the master, a runner whose master is gone stops (Linux also has
    // the parent-death signal; this is the portable fallback).
    let supervised = std::env::var_os("MAILMAN_UNDER_MASTER_CONTROL").is_some();
    let parent = nix::unistd::getppid();
    say(&format!("{name} runner started."));
    let step = runner.sleep_time.0.as_millis().clamp(1, i32::MAX as u128) as i32;
    loop {
        let mut fds = [PollFd::new(sigs.fd(), PollFlags::POLLIN)];
        let _ = poll(
            &mut fds,
            PollTimeout::try_from(step).unwrap_or(PollTimeout::MAX),
        );
        for sig in sigs.take() {
            if sig == libc::SIGHUP {
                say(&format!("{name} runner caught SIGHUP.  Reopening logs."));
                continue;
            }
            say(&format!(
                "{name} runner caught {}.  Stopping.",
                signals::name(sig)
            ));
            say(&format!("{name} runner exiting."));
            return sig;
        }
        if supervised && nix::unistd::getppid() != parent {
            say(&format!("{name} runner lost its master.  Exiting."));
            return EXIT_NO_RESTART;
        }
    }
}
