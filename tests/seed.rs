//! The seed: Mailman's doctest "Starting and stopping Mailman"
//! (shared/seed/000_3fdbfef3f32db53a.txt), translated, plus the restart
//! (SIGUSR1) and reopen (SIGHUP) tests it says are missing.

mod common;

use std::fs;
use std::time::Duration;

use common::*;

/// The doctest's `find_master`: read master.pid and `kill(pid, 0)` within 10 s.
fn find_master(env: &Env) -> i32 {
    let mut found = None;
    wait_until("the master via master.pid", Duration::from_secs(10), || {
        found = env.pid_from_file().filter(|p| send_zero(*p));
        found.is_some()
    });
    found.unwrap_or_default()
}

fn send_zero(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok() && alive(pid)
}

#[test]
fn seed_start_and_stop() {
    // Set up: a configuration that disables all the runners.
    let env = Env::new(NO_RUNNERS);

    // Starting the daemons prints a useful message and starts the master
    // watcher process in the background.
    let start = env.run(&["start"]);
    assert_eq!(start.stdout, "Starting Mailman's master runner\n");
    assert_eq!(start.code, 0, "{}", start.stderr);

    // The process exists, and its pid is available in a run time file.
    let pid = find_master(&env);
    // The `start` that became the master (no second program start).
    assert!(cmdline(pid).ends_with(" start"), "{}", cmdline(pid));
    assert!(holds_lock(pid, &env), "{}", cmdline(pid));
    assert!(runners_of(pid).is_empty());

    // You can also stop the master watcher process from the command line,
    // which stops all the child processes too.
    let stop = env.run(&["stop"]);
    assert_eq!(stop.stdout, "Shutting down Mailman's master runner\n");
    assert_eq!(stop.code, 0, "{}", stop.stderr);

    // bury_master: the process has exited within 10 s.
    wait_until("the master to go", Duration::from_secs(10), || {
        !send_zero(pid)
    });
    assert!(!env.pid_file().exists(), "the pid file is removed on exit");
    assert!(env.log().contains("Master stopped"));
}

const THREE_RUNNERS: &str =
    "[runner.in]\nstart = true\ninstances = 2\n[runner.out]\nstart = true\n";

/// Waits until `master` has `count` runners, none of them in `before`.
fn all_replaced(master: i32, before: &[i32], count: usize) -> Vec<i32> {
    let mut now = Vec::new();
    wait_until("every runner replaced", PATIENCE, || {
        now = runners_of(master);
        now.len() == count && now.iter().all(|p| !before.contains(p))
    });
    now
}

#[test]
fn restart_replaces_every_runner() {
    let env = Env::new(&only(THREE_RUNNERS));
    let master = env.start(3);
    let before = runners_of(master);

    // `mailman restart` (through the control socket).
    let r = env.run(&["restart"]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "Restarting the Mailman runners\n"),
        "{}",
        r.stderr
    );
    // All new pids, the same count, the same master.
    let after = all_replaced(master, &before, 3);
    assert_eq!(env.pid_from_file(), Some(master));
    env.wait_log("Master watcher got a restart request.  Restarting.");

    // SIGUSR1 to the master (Mailman's interface: `kill -USR1`, `docker kill -s USR1`).
    assert!(send(master, libc::SIGUSR1));
    all_replaced(master, &after, 3);
    env.wait_log("Master watcher caught SIGUSR1.  Restarting.");
    assert_eq!(env.pid_from_file(), Some(master));
    assert!(alive(master));

    wait_until("six requested exits logged", PATIENCE, || {
        env.log().matches("why: EXIT 10").count() == 6
    });
    let log = env.log();
    assert_eq!(
        log.matches("runner caught SIGUSR1.  Stopping.").count(),
        6,
        "{log}"
    );
    assert!(!log.contains("maximum restart limit"));
    assert_eq!(env.run(&["stop"]).code, 0);
}

#[test]
fn reopen_writes_a_new_log_file_and_keeps_runners() {
    let env = Env::new(&only(THREE_RUNNERS));
    let master = env.start(3);
    // All three have their SIGHUP handler (a SIGHUP before it would end
    // a runner: that is the signal's default action).
    wait_until("every runner to start", PATIENCE, || {
        env.log().matches("runner started.").count() == 3
    });
    let before = runners_of(master);

    // logrotate: rename, then `mailman reopen` (through the control socket).
    let first = env.var.join("logs/mailman.log.1");
    fs::rename(env.log_file(), &first).unwrap();
    let r = env.run(&["reopen"]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "Reopening the Mailman runners\n"),
        "{}",
        r.stderr
    );
    // The master creates the file again and writes there; the runners got
    // SIGHUP and are the same processes.
    env.wait_log("Master watcher got a reopen request.  Re-opening log files.");
    wait_until("every runner to log the reopen", PATIENCE, || {
        env.log()
            .matches("runner caught SIGHUP.  Reopening logs.")
            .count()
            == 3
    });

    // Again with SIGHUP to the master (`kill -HUP`, `docker kill -s HUP`).
    let second = env.var.join("logs/mailman.log.2");
    fs::rename(env.log_file(), &second).unwrap();
    assert!(send(master, libc::SIGHUP));
    env.wait_log("Master watcher caught SIGHUP.  Re-opening log files.");
    wait_until("every runner to log the second reopen", PATIENCE, || {
        env.log()
            .matches("runner caught SIGHUP.  Reopening logs.")
            .count()
            == 3
    });

    assert_eq!(runners_of(master), before);
    let old = fs::read_to_string(&first).unwrap();
    assert!(old.contains("Master started"));
    assert!(!old.contains("Re-opening log files"), "{old}");
    let middle = fs::read_to_string(&second).unwrap();
    assert!(middle.contains("got a reopen request"), "{middle}");
    assert!(!middle.contains("caught SIGHUP.  Re-opening"), "{middle}");
    assert_eq!(env.run(&["stop"]).code, 0);
    assert!(env.log().contains("Master stopped"));
}
