//! The master's life seen from the control commands: status codes, a second
//! start, a `kill -9` of the master, a pid file naming another process, a
//! var dir that cannot be used (unwritable, world-writable, a symlinked
//! pid file), and what the daemon keeps of its caller (nothing).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use common::*;

const TWO_RUNNERS: &str = "[runner.in]\nstart = true\n[runner.out]\nstart = true\n";

#[test]
fn status_codes_and_second_start() {
    let env = Env::new(&only(TWO_RUNNERS));
    let st = env.run(&["status"]);
    assert_eq!((st.code, st.stdout), (3, env.not_running()));

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
    assert_eq!((st.code, st.stdout), (3, env.not_running()));

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
    assert_eq!((stop.code, stop.stderr), (0, env.not_running()));
    for cmd in ["restart", "reopen"] {
        let r = env.run(&[cmd]);
        assert_eq!((r.code, r.stderr), (1, env.not_running()), "{cmd}");
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

/// The default var dir does not move with the working directory: `start`
/// in one directory and `stop` in another meet the same master. (As a user:
/// `~/.local/state/mailman`, or `$XDG_STATE_HOME/mailman`; as root
/// `/var/lib/mailman`, only looked at here.)
#[test]
fn the_default_var_dir_does_not_move_with_the_shell() {
    let root_default = Command::new(BIN)
        .arg("check-config")
        .env_remove("MAILMAN_CONFIG_FILE")
        .env_remove("MAILMAN_VAR_DIR")
        .current_dir("/")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&root_default.stdout);
    assert!(
        text.contains("var_dir = \"/var/lib/mailman\"") && text.contains("the built-in defaults"),
        "{text}"
    );

    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let home = dir.path().join("home");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for d in [&home, &a, &b] {
        fs::create_dir_all(d).unwrap();
        std::os::unix::fs::chown(d, Some(65534), Some(65534)).unwrap();
    }
    let as_nobody = |cwd: &std::path::Path, args: &[&str], xdg: Option<&std::path::Path>| {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env_remove("MAILMAN_CONFIG_FILE")
            .env_remove("MAILMAN_VAR_DIR")
            .env_remove("XDG_STATE_HOME")
            .env("HOME", &home)
            .current_dir(cwd)
            .stdin(std::process::Stdio::null())
            .uid(65534)
            .gid(65534);
        if let Some(x) = xdg {
            cmd.env("XDG_STATE_HOME", x);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let state = home.join(".local/state/mailman");
    let (_, shown, _) = as_nobody(&a, &["check-config"], None);
    assert!(
        shown.contains(&format!("var_dir = \"{}\"", state.display())),
        "{shown}"
    );
    let (_, shown, _) = as_nobody(&a, &["check-config"], Some(&dir.path().join("xdg")));
    assert!(
        shown.contains(&format!(
            "var_dir = \"{}\"",
            dir.path().join("xdg/mailman").display()
        )),
        "{shown}"
    );
    // The built-in runners, two fewer.
    let set = [
        "--set",
        "runner.in.start=false",
        "--set",
        "runner.out.start=false",
    ];
    let (code, out, err) = as_nobody(&a, &[&set[..], &["start"]].concat(), None);
    assert_eq!(code, 0, "{out}{err}");
    let master: i32 = fs::read_to_string(state.join("master.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let (code, out, _) = as_nobody(&b, &["status"], None);
    assert_eq!(
        (code, out),
        (
            0,
            format!("GNU Mailman is running (master pid: {master})\n")
        )
    );
    let (code, _, err) = as_nobody(&b, &["stop"], None);
    assert_eq!(code, 0, "{err}");
    assert!(!alive(master));
    // Not running: the line says where it looked.
    let (code, out, _) = as_nobody(&b, &["status"], None);
    assert_eq!(code, 3);
    assert_eq!(
        out,
        format!(
            "GNU Mailman is not running\n(no master holds {})\n",
            state.join("locks/master.lck").display()
        )
    );
}

/// A runner given up makes the master degraded: `status` says so on a
/// second line and keeps LSB's 0, `status --check` exits 1; the log has no
/// `pid: 0`.
#[test]
fn a_degraded_master_is_visible_to_status() {
    let env = Env::new(&only(
        "[runner.crash]\ncommand = [\"false\"]\nmax_restarts = 1\nrestart_delay = \"10ms\"\n\
         [runner.x]\ncommand = [\"sleep\", \"1000\"]\n",
    ));
    let master = env.start(1);
    env.wait_log("Runner crash reached maximum restart limit of 1, not restarting.");
    let st = env.run(&["status"]);
    assert_eq!(st.code, 0);
    assert_eq!(
        st.stdout,
        format!(
            "GNU Mailman is running (master pid: {master})\nGNU Mailman is degraded: runner crash:0:1 given up after 1 restarts, last EXIT 1\n"
        )
    );
    let check = env.run(&["status", "--check"]);
    assert_eq!(check.code, 1, "{}", check.stdout);
    // Restarting it brings it back (and gives it up again).
    assert_eq!(env.run(&["stop"]).code, 0);
    assert!(!env.log().contains("pid: 0"));
    assert_eq!(env.run(&["status", "--check"]).code, 3);
}

/// An unwritable var dir says why: a read-only file system as such; a
/// permission as such, with the user and the `chown` that would let it.
#[test]
fn an_unwritable_var_dir_says_why() {
    let env = Env::with_mailman(
        "stop_timeout = \"3s\"\nuser = \"nobody\"\ngroup = \"nogroup\"\n",
        &only(""),
    );
    // Exists, root's, 0755: nobody cannot write it.
    fs::create_dir_all(env.var.join("locks")).unwrap();
    fs::create_dir_all(env.var.join("logs")).unwrap();
    fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let r = env.run(&["start", "--run-as-user"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(
        r.stderr,
        format!(
            "cannot write to {}: Permission denied (as user nobody: chown -R nobody {} to let it)\n",
            env.var.display(),
            env.var.display()
        )
    );
    // A read-only file system, mounted over the var dir in a mount
    // namespace of its own.
    let script = format!(
        "mount -t tmpfs -o ro tmpfs {var} && exec {bin} -C {cfg} start",
        var = env.var.display(),
        bin = BIN,
        cfg = env.config.display()
    );
    let out = Command::new("unshare")
        .args(["--mount", "sh", "-c", &script])
        .env_remove("MAILMAN_CONFIG_FILE")
        .env_remove("MAILMAN_VAR_DIR")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    assert!(!stderr.contains("ermission denied"), "{stderr}");
}

/// The daemon keeps nothing its caller left open: a pipe `start` inherited
/// reads end-of-file once `start` has returned (the master held it for its
/// whole life, so that `$(…)`-style readers or a lock taken by a wrapper
/// waited for it).
#[cfg(target_os = "linux")]
#[test]
fn the_daemon_keeps_no_descriptor_of_its_caller() {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let env = Env::new(&only(TWO_RUNNERS));
    let (mut read, write) = std::io::pipe().unwrap();
    let w = write.as_raw_fd();
    let mut start = env.cmd(&["start"]);
    // SAFETY: dup2 is async-signal-safe; fd 7 is left open across exec.
    unsafe {
        start.pre_exec(move || {
            if libc::dup2(w, 7) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = start.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(write);
    let master = env.pid_from_file().unwrap();
    let done = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut rest = Vec::new();
        let _ = done.0.send(read.read_to_end(&mut rest).map(|_| rest.len()));
    });
    let got = done.1.recv_timeout(PATIENCE);
    let held: Vec<String> = fs::read_dir(format!("/proc/{master}/fd"))
        .unwrap()
        .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        matches!(got, Ok(Ok(0))),
        "the pipe never closed: the master holds {held:?}"
    );
    assert_eq!(env.run(&["stop"]).code, 0);
}

/// `start -C <(…)`: the daemon is the `start` that read the configuration
/// (forked, not a new program), so a configuration that can be read only
/// once (a pipe) is enough; the daemon's command line is `start`'s.
#[test]
fn start_reads_a_configuration_from_a_pipe_once() {
    let env = Env::new(&only("[runner.s]\ncommand = [\"sleep\", \"1000\"]\n"));
    env.start_from_pipe();
    let master = env.pid_from_file().unwrap();
    wait_until("the runner", PATIENCE, || runners_of(master).len() == 1);
    assert!(
        cmdline(master).ends_with(" start -q"),
        "{}",
        cmdline(master)
    );
    assert_eq!(env.run(&["status"]).code, 0);
    assert_eq!(env.run(&["stop"]).code, 0);
    wait_until("the master to stop", PATIENCE, || !alive(master));
}

/// A master started with its standard descriptors closed (a careless init
/// system, `mailman master <&- >&- 2>&-`) has them on /dev/null, as std's
/// start-up would give them (ours is `os::runtime`): the lock file or a
/// runner's pipe never lands on 0, 1 or 2.
#[test]
fn closed_standard_descriptors_are_dev_null() {
    let env = Env::new(&only(TWO_RUNNERS));
    let mut master = env.cmd(&["master"]);
    // SAFETY: close is async-signal-safe.
    unsafe {
        master.pre_exec(|| {
            for fd in 0..3 {
                libc::close(fd);
            }
            Ok(())
        });
    }
    let mut child = master.spawn().unwrap();
    let pid = child.id() as i32;
    wait_until("two runners", PATIENCE, || runners_of(pid).len() == 2);
    let std_fds: Vec<String> = (0..3)
        .map(|fd| {
            fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                .map(|p| p.display().to_string())
                .unwrap_or_else(|e| e.to_string())
        })
        .collect();
    assert!(send(pid, libc::SIGTERM));
    assert!(child.wait().unwrap().success());
    assert_eq!(std_fds, ["/dev/null"; 3]);
}

/// A lock file deleted under a running master (a cleaner of old files,
/// `rm -rf` of the locks directory) is made again and locked at once: a
/// second `start` says "already running" and leaves the runners alone, and
/// `status` and `stop` still find the master. (A second master used to
/// start, killing the first one's runners as leftovers of a dead master,
/// and `status` said "stopped".)
#[cfg(target_os = "linux")]
#[test]
fn a_deleted_lock_file_is_taken_again() {
    let env = Env::new(&only(TWO_RUNNERS));
    let master = env.start(2);
    let mut runners = runners_of(master);
    runners.sort();
    let lock = env.var.join("locks/master.lck");
    let running = format!("GNU Mailman is running (master pid: {master})\n");
    fs::remove_file(&lock).unwrap();
    wait_until("the lock to be taken again", PATIENCE, || {
        env.run(&["status"]).stdout == running
    });
    let r = env.run(&["start"]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("already running"), "{}", r.stderr);
    let mut now = runners_of(master);
    now.sort();
    assert_eq!(now, runners, "the runners were left alone");
    // The pid file, then the whole directory: both come back.
    fs::remove_file(env.pid_file()).unwrap();
    let _ = fs::remove_dir_all(env.var.join("locks"));
    wait_until("the lock and the pid file again", PATIENCE, || {
        env.pid_from_file() == Some(master) && env.run(&["status"]).stdout == running
    });
    assert!(
        env.log()
            .contains("was deleted or replaced under the running master")
    );
    assert_eq!(env.run(&["stop"]).code, 0);
    wait_until("the master to exit", PATIENCE, || !alive(master));
}

/// A lock file replaced by one that another process holds (a second master
/// that came in between): the master says so once, not at every later
/// change in the directory, and takes the lock again once it is free.
#[test]
fn a_lock_taken_by_another_is_reported_once() {
    let env = Env::new(&only(TWO_RUNNERS));
    let master = env.start(2);
    let locks = env.var.join("locks");
    let other = locks.join("other.lck");
    let held = fs::File::create(&other).unwrap();
    held.lock().unwrap();
    fs::rename(&other, locks.join("master.lck")).unwrap();
    let said = |env: &Env| env.log().matches("another master took the new one").count();
    wait_until("the master to see the lock taken", PATIENCE, || {
        said(&env) == 1
    });
    for i in 0..5 {
        let f = locks.join(format!("x{i}"));
        fs::write(&f, "").unwrap();
        fs::remove_file(&f).unwrap();
    }
    // A round trip through the loop: the deletions' events, queued before
    // the request, are handled by the time it is answered.
    let running = format!("GNU Mailman is running (master pid: {master})\n");
    assert_eq!(env.run(&["status"]).stdout, running);
    assert_eq!(said(&env), 1, "{}", env.log());
    drop(held);
    fs::remove_file(locks.join("master.lck")).unwrap();
    wait_until("the lock taken again", PATIENCE, || {
        env.log()
            .contains("was deleted or replaced under the running master")
    });
    assert_eq!(env.run(&["stop"]).code, 0);
    wait_until("the master to exit", PATIENCE, || !alive(master));
}
