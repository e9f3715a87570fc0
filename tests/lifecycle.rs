//! The master's life seen from the control commands: status codes, a second
//! start, a `kill -9` of the master, a pid file naming another process, and
//! a var dir that cannot be used (unwritable, world-writable, a symlinked
//! pid file).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::time::Duration;

use common::*;

const TWO_RUNNERS: &str = "[runner.in]\nstart = true\n[runner.out]\nstart = true\n";

#[test]
fn status_codes_and_second_start() {
    let env = Env::new(&only(TWO_RUNNERS));
    let st = env.run(&["status"]);
    assert_eq!(
        (st.code, st.stdout.as_str()),
        (3, "GNU Mailman is not running\n")
    );

    let master = env.start(2);
    let st = env.run(&["status"]);
    assert_eq!(st.code, 0);
    assert_eq!(
        st.stdout,
        format!("GNU Mailman is running (master pid: {master})\n")
    );

    let again = env.run(&["start"]);
    assert_eq!(again.code, 2);
    assert_eq!(again.stderr, "GNU Mailman is already running\n");
    assert_eq!(again.stdout, "");
    // --force changes nothing about a live master.
    assert_eq!(env.run(&["start", "--force"]).code, 2);
    // A second master started directly fails as well, and leaves ours alone.
    let direct = env.run(&["master"]);
    assert_eq!(
        (direct.code, direct.stderr.as_str()),
        (2, "GNU Mailman is already running\n")
    );
    assert_eq!(env.pid_from_file(), Some(master));

    assert_eq!(env.run(&["stop"]).code, 0);
    let st = env.run(&["status"]);
    assert_eq!(
        (st.code, st.stdout.as_str()),
        (3, "GNU Mailman is not running\n")
    );

    // A pid file left behind (here: written by hand) is a dead master's.
    fs::write(env.pid_file(), "4194000\n").unwrap();
    let st = env.run(&["status"]);
    assert_eq!(
        (st.code, st.stdout.as_str()),
        (1, "GNU Mailman is stopped (stale pid: 4194000)\n")
    );

    // Cannot tell: a pid file that holds no pid, or a lock file that is a symlink.
    fs::write(env.pid_file(), "garbage\n").unwrap();
    assert_unknown(&env);
    fs::remove_file(env.pid_file()).unwrap();
    let lock = env.var.join("locks/master.lck");
    fs::remove_file(&lock).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", &lock).unwrap();
    assert_unknown(&env);
}

/// `status` says "cannot tell": exit 4 and Mailman's message.
fn assert_unknown(env: &Env) {
    let st = env.run(&["status"]);
    assert_eq!(st.code, 4, "{}", st.stdout);
    let prefix = "GNU Mailman is in an unexpected state (";
    assert!(st.stdout.starts_with(prefix), "{}", st.stdout);
}

#[test]
fn kill_9_of_the_master_leaves_nothing_behind() {
    let env = Env::new(&only(TWO_RUNNERS));
    let master = env.start(2);
    let runners = runners_of(master);
    assert!(send(master, 9));

    // No runner outlives it (parent-death signal).
    wait_until(
        "the runners to die with the master",
        Duration::from_secs(5),
        || runners.iter().all(|p| !alive(*p)),
    );
    // The parent-death signal fires when the thread that forked the runners
    // exits; the master's other thread (the log writer) can hold the lock's
    // file a moment longer while the kernel tears the process down.
    wait_until("the lock to be free", Duration::from_secs(5), || {
        env.run(&["status"]).code != 0
    });
    let st = env.run(&["status"]);
    assert_eq!(st.code, 1, "{}", st.stdout);
    assert_eq!(
        st.stdout,
        format!("GNU Mailman is stopped (stale pid: {master})\n")
    );
    assert_eq!(env.run(&["stop"]).code, 0, "stop is idempotent");

    // A plain start works: the lock died with the master.
    let r = env.run(&["start"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let second = env.pid_from_file().unwrap();
    assert_ne!(second, master);
    wait_until("new runners", PATIENCE, || runners_of(second).len() == 2);
    assert_eq!(env.run(&["stop"]).code, 0);
}

#[test]
fn a_pid_file_naming_another_process_never_gets_a_signal() {
    let env = Env::new(&only(TWO_RUNNERS));
    let bystander = Witness::spawn(env.dir.path());
    let pid = bystander.pid();

    // No master: the pid file is stale, whatever it names.
    fs::create_dir_all(&env.var).unwrap();
    fs::write(env.pid_file(), format!("{pid}\n")).unwrap();
    let st = env.run(&["status"]);
    assert_eq!(
        (st.code, st.stdout.clone()),
        (1, format!("GNU Mailman is stopped (stale pid: {pid})\n"))
    );
    let stop = env.run(&["stop"]);
    assert_eq!(
        (stop.code, stop.stderr.as_str()),
        (0, "GNU Mailman is not running\n")
    );
    for cmd in ["restart", "reopen"] {
        let r = env.run(&[cmd]);
        assert_eq!(
            (r.code, r.stderr.as_str()),
            (1, "GNU Mailman is not running\n"),
            "{cmd}"
        );
    }

    // start succeeds (no --force) and takes the pid file over.
    let r = env.run(&["start"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let master = env.pid_from_file().unwrap();
    assert_ne!(master, pid);
    wait_until("runners", PATIENCE, || runners_of(master).len() == 2);

    // With a master running, a tampered pid file still does not redirect
    // the commands: they signal the master that holds the lock.
    fs::write(env.pid_file(), format!("{pid}\n")).unwrap();
    let before = runners_of(master);
    assert_eq!(env.run(&["reopen"]).code, 0);
    env.wait_log("Re-opening log files.");
    assert_eq!(env.run(&["restart"]).code, 0);
    wait_until("runners replaced", PATIENCE, || {
        let now = runners_of(master);
        now.len() == 2 && now.iter().all(|p| !before.contains(p))
    });
    assert_eq!(
        env.run(&["status"]).stdout,
        format!("GNU Mailman is running (master pid: {master})\n")
    );
    assert_eq!(env.run(&["stop"]).code, 0);
    assert!(!alive(master));

    // The bystander heard nothing and lives on.
    assert!(alive(pid));
    assert_eq!(bystander.heard(), ["ready"]);
}

#[test]
fn a_lock_naming_an_impostor_is_refused() {
    // A live lock whose recorded identity does not match the live pid (as
    // after pid reuse): commands refuse rather than signal.
    let env = Env::new(&only(TWO_RUNNERS));
    let master = env.start(2);
    let lock = env.var.join("locks/master.lck");
    let text = fs::read_to_string(&lock).unwrap();
    let bystander = Witness::spawn(env.dir.path());
    let pid = bystander.pid();
    // Rewrite the content in place: the master's flock stays.
    let forged = text.replace(&format!("pid={master}\n"), &format!("pid={pid}\n"));
    fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&lock)
        .unwrap();
    fs::write(&lock, forged).unwrap();
    // The socket reaches the real master whatever the lock says; without
    // it (an older master, or the file removed as here), the signal path
    // must refuse.
    fs::remove_file(env.var.join("master.sock")).unwrap();
    for cmd in ["stop", "restart", "reopen"] {
        let r = env.run(&[cmd]);
        assert_eq!(r.code, 1, "{cmd}: {}", r.stderr);
        assert!(
            r.stderr.contains(&format!("pid {pid} is not the master")),
            "{cmd}: {}",
            r.stderr
        );
    }
    assert_eq!(bystander.heard(), ["ready"]);
    assert!(alive(master));
    send(master, 15);
    wait_until("the master to stop", PATIENCE, || !alive(master));
}

#[test]
fn an_unwritable_var_dir_is_one_clear_line() {
    let env = Env::new(&only(""));
    // The config is readable by `nobody`; the var dir's parent is root's.
    fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let r = env.cmd(&["start"]).uid(65534).gid(65534).output().unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        format!("cannot create {}: Permission denied\n", env.var.display())
    );
    assert!(!env.var.exists());

    // The same in the foreground.
    let r = env.cmd(&["master"]).uid(65534).gid(65534).output().unwrap();
    assert_eq!(r.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&r.stderr),
        format!("cannot create {}: Permission denied\n", env.var.display())
    );
}

#[test]
fn a_world_writable_var_dir_is_refused() {
    let env = Env::new(&only(""));
    fs::create_dir_all(&env.var).unwrap();
    fs::set_permissions(&env.var, fs::Permissions::from_mode(0o777)).unwrap();
    let r = env.run(&["start"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("writable by every user"), "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1);
    assert!(!env.pid_file().exists());
}

#[test]
fn a_symlinked_pid_file_is_not_followed() {
    let env = Env::new(&only(""));
    fs::create_dir_all(&env.var).unwrap();
    let target = env.dir.path().join("victim");
    fs::write(&target, "precious\n").unwrap();
    std::os::unix::fs::symlink(&target, env.pid_file()).unwrap();
    let master = env.start(0);
    assert!(master > 0);
    // The symlink was replaced by a file; the target is untouched.
    assert!(
        !fs::symlink_metadata(env.pid_file())
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(fs::read_to_string(&target).unwrap(), "precious\n");
    assert_eq!(env.run(&["stop"]).code, 0);
}
