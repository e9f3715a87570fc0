//! How the master supervises runners: default runners and slices, restart
//! rules with back-off and give-up, and the SIGKILL escalation on stop.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn default_runners_and_slices() {
    // Every built-in default, with two instances of `in`.
    let env = Env::new("[runner.in]\ninstances = 2\n");
    let master = env.start(13);
    let lines: Vec<String> = runners_of(master).iter().map(|p| cmdline(*p)).collect();
    for name in [
        "archive", "bounces", "command", "lmtp", "out", "pipeline", "rest", "retry", "task",
        "virgin", "digest",
    ] {
        let spec = format!("--runner {name}:0:1");
        assert_eq!(
            lines.iter().filter(|l| l.ends_with(&spec)).count(),
            1,
            "{spec} in {lines:#?}"
        );
    }
    for spec in ["--runner in:0:2", "--runner in:1:2"] {
        assert_eq!(
            lines.iter().filter(|l| l.ends_with(spec)).count(),
            1,
            "{spec} in {lines:#?}"
        );
    }
    for off in ["bad", "nntp", "shunt"] {
        assert!(
            !lines
                .iter()
                .any(|l| l.contains(&format!("--runner {off}:")))
        );
    }
    // Each runner leads its own process group and is told who it is.
    for pid in runners_of(master) {
        assert_eq!(stat(pid).map(|s| s.2), Some(pid), "own process group");
        let env_vars = environ(pid);
        assert!(env_vars.contains(&"MAILMAN_UNDER_MASTER_CONTROL=1".to_string()));
        assert!(env_vars.iter().any(|e| e.starts_with("MAILMAN_RUNNER=")));
    }
    // Runner output reaches the log tagged NAME:SLICE.
    env.wait_log("[in:1] in runner started.");
    assert_eq!(env.run(&["stop"]).code, 0);
}

/// Times (ms since the epoch) at which a test runner started, one per line.
fn starts(env: &Env, file: &str) -> Vec<u128> {
    lines(&env.var.join(file))
        .iter()
        .filter_map(|l| l.parse().ok())
        .collect()
}

const CRASHER: &str = r#"
[runner.crash]
command = ["sh", "-c", "date +%s%3N >> {var_dir}/crash.starts; exit 1"]
restart_delay = "100ms"
restart_delay_max = "10s"
max_restarts = 4
"#;

#[test]
fn crashing_runner_backs_off_then_is_given_up() {
    let env = Env::new(&only(CRASHER));
    let r = env.run(&["start"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    env.wait_log("Runner crash reached maximum restart limit of 4, not restarting.");

    // One start and four restarts, each after a longer delay: 100 ms doubling,
    // with at most 20 % jitter below.
    let t = starts(&env, "crash.starts");
    assert_eq!(t.len(), 5, "{t:?}");
    for (i, pair) in t.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        let floor = 80 * (1 << i);
        assert!(
            gap >= floor,
            "gap {i} was {gap} ms, expected at least {floor}: {t:?}"
        );
    }
    let log = env.log();
    assert_eq!(
        log.matches("why: EXIT 1, class: crash, slice: 1/1) [restarting]")
            .count(),
        4,
        "{log}"
    );
    assert_eq!(
        log.matches("why: EXIT 1, class: crash, slice: 1/1)\n")
            .count(),
        1,
        "{log}"
    );

    // The master is still up and does not start it again.
    let st = env.run(&["status"]);
    assert_eq!(st.code, 0, "{}", st.stdout);
    assert_eq!(starts(&env, "crash.starts").len(), 5);
    assert_eq!(env.run(&["stop"]).code, 0);
}

/// Back-off timers fall due while another runner's output keeps the loop
/// busy with turns that change nothing (which do not look at the timers
/// before the deadline the loop waited for): each restart still comes.
#[test]
fn restarts_come_while_another_runner_talks() {
    let env = Env::new(&only(
        r#"
[runner.chatty]
command = ["sh", "-c", "while :; do echo chatter; sleep 0.01; done"]
[runner.crash]
command = ["sh", "-c", "date +%s%3N >> {var_dir}/crash.starts; exit 1"]
restart_delay = "200ms"
restart_delay_max = "200ms"
max_restarts = 3
"#,
    ));
    let r = env.run(&["start"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    env.wait_log("Runner crash reached maximum restart limit of 3, not restarting.");
    let t = starts(&env, "crash.starts");
    assert_eq!(t.len(), 4, "{t:?}");
    for pair in t.windows(2) {
        assert!(pair[1] - pair[0] >= 160, "{t:?}");
    }
    assert!(env.log().contains("[chatty:0] chatter"));
    assert_eq!(env.run(&["stop"]).code, 0);
}

#[test]
fn exit_15_is_not_restarted() {
    let env = Env::new(&only(
        r#"
[runner.quitter]
command = ["sh", "-c", "date +%s%3N >> {var_dir}/quit.starts; exit 15"]
restart_delay = "10ms"
"#,
    ));
    assert_eq!(env.run(&["start"]).code, 0);
    env.wait_log("why: EXIT 15, class: quitter, slice: 1/1)");
    let master = env.pid_from_file().unwrap();
    // Proving an absence takes a wait: fifty restart delays.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(starts(&env, "quit.starts").len(), 1);
    assert!(!env.log().contains("[restarting]"));
    assert!(alive(master));
    assert_eq!(env.run(&["stop"]).code, 0);
}

#[test]
fn requested_restarts_are_not_counted() {
    // max_restarts = 1: three counted exits would give it up.
    let env = Env::new(&only("[runner.in]\nstart = true\nmax_restarts = 1\n"));
    let master = env.start(1);
    for round in 1..=4 {
        let before = runners_of(master);
        assert_eq!(env.run(&["restart"]).code, 0);
        wait_until("a new runner", PATIENCE, || {
            let now = runners_of(master);
            now.len() == 1 && now != before
        });
        wait_until("the restart to be logged", PATIENCE, || {
            env.log().matches("why: EXIT 10, class: in").count() == round
        });
    }
    let log = env.log();
    assert!(!log.contains("maximum restart limit"), "{log}");
    // A counted crash after all that is still restarted: nothing was counted.
    let pid = runners_of(master)[0];
    send(pid, 9);
    env.wait_log(&format!(
        "(pid: {pid}, why: SIGNAL 9, class: in, slice: 1/1) [restarting]"
    ));
    wait_until("the killed runner to be replaced", PATIENCE, || {
        let now = runners_of(master);
        now.len() == 1 && now[0] != pid
    });
    assert_eq!(env.run(&["stop"]).code, 0);
}

#[test]
fn a_runner_that_ignores_sigterm_is_killed_after_stop_timeout() {
    let env = Env::with_mailman(
        "stop_timeout = \"1s\"\n",
        &only(
            r#"
[runner.stubborn]
command = ["sh", "-c", "trap '' TERM; sleep 1000 & while true; do sleep 0.05; done"]
[runner.in]
start = true
"#,
        ),
    );
    let master = env.start(2);
    // A child is seen before it has exec'd: wait for its command line.
    let mut stubborn = 0;
    wait_until("the stubborn runner", PATIENCE, || {
        stubborn = runners_of(master)
            .into_iter()
            .find(|p| cmdline(*p).starts_with("sh -c"))
            .unwrap_or(0);
        stubborn != 0
    });
    wait_until("its background child", PATIENCE, || {
        group_members(stubborn).len() >= 2
    });
    let group = group_members(stubborn);
    let everyone: Vec<i32> = runners_of(master)
        .into_iter()
        .chain(group.clone())
        .collect();

    let began = Instant::now();
    let r = env.run(&["stop"]);
    let took = began.elapsed();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        took < Duration::from_secs(2),
        "stop took {took:?} with stop_timeout 1s"
    );
    assert!(
        took >= Duration::from_millis(900),
        "stop took only {took:?}: no timeout waited"
    );
    assert!(!alive(master));
    for pid in everyone {
        assert!(
            !alive(pid),
            "pid {pid} ({}) survived the stop",
            cmdline(pid)
        );
    }
    let log = env.log();
    assert!(log.contains("Runner stubborn:0:1 (pid "), "{log}");
    assert!(
        log.contains("did not stop within 1s; sending SIGKILL"),
        "{log}"
    );
    assert!(log.contains("why: SIGNAL 9, class: stubborn"), "{log}");
    assert!(log.contains("why: EXIT 15, class: in"), "{log}");
}

#[test]
fn on_give_up_exit_stops_the_master_with_status_3() {
    let env = Env::with_mailman(
        "stop_timeout = \"3s\"\non_give_up = \"exit\"\n",
        &only(
            r#"
[runner.crash]
command = ["sh", "-c", "exit 1"]
restart_delay = "10ms"
max_restarts = 2
[runner.in]
start = true
"#,
        ),
    );
    let out = env.cmd(&["master"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = env.log();
    assert!(
        log.contains("Runner crash reached maximum restart limit of 2, not restarting."),
        "{log}"
    );
    assert!(
        log.contains("why: EXIT 15, class: in"),
        "the others were stopped: {log}"
    );
    assert!(log.contains("Master stopped"), "{log}");
    assert!(!env.pid_file().exists());
    assert_eq!(env.run(&["status"]).code, 3);
}

#[test]
fn a_stop_in_the_middle_of_a_restart_stops_everything() {
    // Mailman 3.3.10 can miss a runner forked during a restart and hang on
    // stop; here the slice table decides who is alive.
    let env = Env::new(&only(
        "[runner.in]\nstart = true\ninstances = 4\n[runner.out]\nstart = true\ninstances = 4\n",
    ));
    for _ in 0..5 {
        let master = env.start(8);
        let r = env.cmd(&["restart"]).status().unwrap();
        assert!(r.success());
        let stop = env.run(&["stop"]);
        assert_eq!(stop.code, 0, "{}", stop.stderr);
        assert!(!alive(master));
        let marker = format!("MAILMAN_VAR_DIR={}", env.var.display());
        let left: Vec<i32> = all_pids()
            .into_iter()
            .filter(|p| alive(*p) && environ(*p).contains(&marker))
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}

#[test]
fn orphans_come_to_the_master_and_do_not_outlive_it() {
    // The runner leaves an orphan (its subshell exits at once); as a child
    // subreaper the master adopts it, and the stop sweeps it.
    let env = Env::new(&only(
        r#"
[runner.leaver]
command = ["sh", "-c", "(sleep 1000 &); trap 'exit 0' TERM; while true; do sleep 0.05; done"]
"#,
    ));
    let master = env.start(2);
    // Seen as the master's child maybe before it has exec'd `sleep`.
    let mut orphan = 0;
    wait_until("the orphan re-parented to the master", PATIENCE, || {
        orphan = runners_of(master)
            .into_iter()
            .find(|p| cmdline(*p) == "sleep 1000")
            .unwrap_or(0);
        orphan != 0
    });
    assert_eq!(env.run(&["stop"]).code, 0);
    assert!(!alive(orphan), "the orphan survived the stop");
    assert!(!alive(master));
}

#[test]
fn runners_restart_after_the_binary_is_replaced() {
    // A package upgrade replaces the executable while the master runs:
    // runner (re)starts use the new file at the same path.
    let env = Env::new(&only("[runner.in]\nstart = true\n"));
    let bin = env.dir.path().join("mailman");
    std::fs::copy(BIN, &bin).unwrap();
    let out = std::process::Command::new(&bin)
        .args(["-C", env.config.to_str().unwrap(), "start"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let master = env.pid_from_file().unwrap();
    wait_until("the runner", PATIENCE, || runners_of(master).len() == 1);
    // Replace it as package managers do: a new file renamed over the old.
    let fresh = env.dir.path().join("mailman.new");
    std::fs::copy(BIN, &fresh).unwrap();
    std::fs::rename(&fresh, &bin).unwrap();
    let old = runners_of(master)[0];
    send(old, 9);
    wait_until("a new runner", PATIENCE, || {
        let now = runners_of(master);
        now.len() == 1 && now[0] != old && alive(now[0])
    });
    env.wait_log("[in:0] in runner started.");
    env.wait_log(&format!(
        "(pid: {old}, why: SIGNAL 9, class: in, slice: 1/1) [restarting]"
    ));
    assert!(!env.log().contains("Cannot start runner"), "{}", env.log());
    // The master still runs the old (now deleted) file; the new runner runs
    // the new one.
    let exe = |pid: i32| std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert!(
        exe(master).to_string_lossy().ends_with(" (deleted)"),
        "{:?}",
        exe(master)
    );
    // A child seen between its fork and its exec still shows the master's
    // (old) file: wait for its exec.
    let new = runners_of(master)[0];
    wait_until("the new runner to run the new binary", PATIENCE, || {
        std::fs::read_link(format!("/proc/{new}/exe")).is_ok_and(|p| p == bin)
    });
    assert_eq!(env.run(&["stop"]).code, 0);
}

#[test]
fn many_runners_past_a_low_open_file_limit() {
    // 256 runners need 512 pipes in the master: more than a soft limit of
    // 256. The master raises its own limit and gives runners the original.
    let env = Env::new(&only(
        "[runner.many]\ninstances = 256\ncommand = [\"sleep\", \"1000\"]\n",
    ));
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -Sn 256 && exec {BIN} -C {} start",
            env.config.display()
        ))
        .env_remove("MAILMAN_CONFIG_FILE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let master = env.pid_from_file().unwrap();
    wait_until("256 runners", PATIENCE, || runners_of(master).len() == 256);
    assert!(!env.log().contains("Cannot start runner"));
    let soft = |pid: i32| -> String {
        std::fs::read_to_string(format!("/proc/{pid}/limits"))
            .unwrap()
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .map(|l| l.split_whitespace().nth(3).unwrap_or("").to_string())
            .unwrap()
    };
    assert_ne!(soft(master), "256", "the master raised its limit");
    assert_eq!(
        soft(runners_of(master)[0]),
        "256",
        "runners get the original"
    );
    assert_eq!(env.run(&["stop"]).code, 0);
    assert!(runners_of(master).is_empty());
}

/// The master's descriptor table is grown once, before its log's thread
/// starts, to hold two pipes per runner and more: a table shared by two
/// threads grows only after an RCU grace period, which the start of
/// hundreds of runners would otherwise wait for several times
/// (BENCHMARKS.md, issue 19). The kernel sizes tables in powers of two: 64
/// runners need ~150 descriptors (a table of 256), the reserve is 256 (a
/// table of 512). `start` is run with a fresh, small table (a process
/// inherits the size of its parent's).
#[test]
#[cfg(target_os = "linux")]
fn the_descriptor_table_is_grown_before_runners_start() {
    let env = Env::new(&only(
        "[runner.many]\ninstances = 64\ncommand = [\"sleep\", \"1000\"]\n",
    ));
    let mut cmd = env.cmd(&["start"]);
    // SAFETY: one system call between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            if libc::syscall(
                libc::SYS_close_range,
                3,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_UNSHARE,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    assert!(cmd.status().unwrap().success());
    let master = env.pid_from_file().unwrap();
    wait_until("64 runners", PATIENCE, || runners_of(master).len() == 64);
    let status = std::fs::read_to_string(format!("/proc/{master}/status")).unwrap();
    let size: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("FDSize:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("FDSize in /proc/PID/status");
    let open = std::fs::read_dir(format!("/proc/{master}/fd"))
        .unwrap()
        .count();
    assert!(
        open <= 256,
        "{open} descriptors: the test needs at most 256"
    );
    assert!(size > 2 * 64 + 128, "FDSize {size}");
    assert_eq!(env.run(&["stop"]).code, 0);
}

/// A SIGSEGV sent to the built-in runner ends it at once, as it would end
/// any program (Rust's runtime used to swallow the first one).
#[test]
fn the_first_sigsegv_ends_a_built_in_runner() {
    let env = Env::new(&only("[runner.in]\nstart = true\n"));
    let master = env.start(1);
    env.wait_log("in runner started.");
    let runner = runners_of(master)[0];
    assert!(send(runner, libc::SIGSEGV));
    env.wait_log(&format!("(pid: {runner}, why: SIGNAL 11, class: in"));
    assert_eq!(env.run(&["stop"]).code, 0);
}

/// Each runner's environment is the master's, the variables that say where
/// it runs, and its own `env`, which wins over the master's: one entry per
/// name, and one runner's `env` is not another's (the master's part is
/// encoded once and shared by every child).
#[test]
fn a_runners_env_wins_over_the_masters_and_stays_its_own() {
    let env = Env::new(&only(
        "[runner.a]\ncommand = [\"sleep\", \"1000\"]\n\
         env = { SHARED = \"a\", PATH = \"/nowhere:/usr/bin:/bin\", ONLY_A = \"1\" }\n\
         [runner.b]\ncommand = [\"sleep\", \"1000\"]\ninstances = 2\n",
    ));
    let r = env
        .cmd(&["start"])
        .env("SHARED", "master")
        .env("KEPT", "master")
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let master = env.pid_from_file().unwrap();
    wait_until("three runners past exec", PATIENCE, || {
        let rs = runners_of(master);
        rs.len() == 3 && rs.iter().all(|&p| cmdline(p) == "sleep 1000")
    });
    let path = std::env::var("PATH").unwrap();
    for pid in runners_of(master) {
        let vars = environ(pid);
        let value = |name: &str| -> Vec<String> {
            vars.iter()
                .filter_map(|v| v.strip_prefix(&format!("{name}=")))
                .map(str::to_string)
                .collect()
        };
        let mut names: Vec<&str> = vars.iter().filter_map(|v| v.split('=').next()).collect();
        names.sort();
        let before = names.len();
        names.dedup();
        assert_eq!(names.len(), before, "one entry per name: {vars:?}");
        assert_eq!(value("KEPT"), ["master"]);
        assert_eq!(value("MAILMAN_UNDER_MASTER_CONTROL"), ["1"]);
        let spec = &value("MAILMAN_RUNNER")[0];
        if spec == "a:0:1" {
            assert_eq!(value("SHARED"), ["a"]);
            assert_eq!(value("PATH"), ["/nowhere:/usr/bin:/bin"]);
            assert_eq!(value("ONLY_A"), ["1"]);
        } else {
            assert!(spec == "b:0:2" || spec == "b:1:2", "{spec}");
            assert_eq!(value("SHARED"), ["master"]);
            assert_eq!(value("PATH"), [path.as_str()]);
            assert!(value("ONLY_A").is_empty(), "{vars:?}");
        }
    }
    assert_eq!(env.run(&["stop"]).code, 0);
}
