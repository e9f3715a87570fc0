//! Operating the master: the control socket (across PID namespaces, per-runner
//! restart, `status --json`, refusal of other users, stale socket files), and
//! logrotate without loss.

mod common;

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const TWO: &str = "[runner.in]\nstart = true\ninstances = 2\n[runner.out]\nstart = true\n";

#[test]
fn a_master_in_another_pid_namespace_is_driven_through_the_socket() {
    let env = Env::new(&only(TWO));
    let bystander = Witness::spawn(env.dir.path());
    let w = bystander.pid();

    // Inside a new PID namespace, make the master's pid there equal the
    // witness's pid out here (ns_last_pid: the next pid is that plus one).
    let script = format!(
        "echo {} > /proc/sys/kernel/ns_last_pid; {BIN} -C {} master & wait",
        w - 1,
        env.config.display()
    );
    let mut ns = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "sh", "-c", &script])
        .env("MAILMAN_VAR_DIR", &env.var)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut last = String::new();
    wait_until("the master in its namespace", PATIENCE, || {
        last = env.run(&["status"]).stdout;
        last == format!("GNU Mailman is running (master pid: {w})\n")
            || last.starts_with("GNU Mailman is running")
    });
    assert_eq!(last, format!("GNU Mailman is running (master pid: {w})\n"));
    // The pid file follows the lock by a moment.
    wait_until("the pid file", PATIENCE, || env.pid_from_file().is_some());
    assert_eq!(
        env.pid_from_file(),
        Some(w),
        "inner pid equals the witness's"
    );
    env.wait_log("[out:0] out runner started.");
    let runner_pids = || -> Vec<i64> {
        let json = env.run(&["status", "--json"]).stdout;
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v["runners"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["pid"].as_i64())
            .collect()
    };
    let before = runner_pids();
    assert_eq!(before.len(), 3);

    let r = env.run(&["restart"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    wait_until("new runners", PATIENCE, || {
        let now = runner_pids();
        now.len() == 3 && now.iter().all(|p| !before.contains(p))
    });
    assert_eq!(env.run(&["reopen"]).code, 0);
    env.wait_log("Master watcher got a reopen request.");

    let r = env.run(&["stop"]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "Shutting down Mailman's master runner\n"),
        "{}",
        r.stderr
    );
    assert_eq!(env.run(&["status"]).code, 3);
    assert!(ns.wait().unwrap().success());

    // The process out here with the master's inner pid heard nothing.
    assert!(alive(w));
    assert_eq!(bystander.heard(), ["ready"]);
}

#[test]
fn restart_one_runner_or_one_slice() {
    let env = Env::new(&only(TWO));
    let master = env.start(3);
    env.wait_log("[out:0] out runner started.");
    // By slice, once each runner is past its exec (a child is seen with
    // the master's command line first).
    let pids = || -> HashMap<String, i32> {
        runners_of(master)
            .into_iter()
            .map(|p| (cmdline(p).rsplit(' ').next().unwrap_or("").to_string(), p))
            .filter(|(spec, _)| ["in:0:2", "in:1:2", "out:0:1"].contains(&spec.as_str()))
            .collect()
    };
    let before = pids();
    assert_eq!(before.len(), 3, "{before:?}");

    let r = env.run(&["restart", "in"]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "Restarting runner in\n"),
        "{}",
        r.stderr
    );
    wait_until("both in slices replaced", PATIENCE, || {
        let now = pids();
        now.len() == 3
            && now.get("in:0:2") != before.get("in:0:2")
            && now.get("in:1:2") != before.get("in:1:2")
    });
    assert_eq!(pids()["out:0:1"], before["out:0:1"], "out keeps its pid");

    let mid = pids();
    assert_eq!(env.run(&["restart", "in:1"]).code, 0);
    wait_until("slice 1 replaced", PATIENCE, || {
        let now = pids();
        now.len() == 3 && now.get("in:1:2") != mid.get("in:1:2")
    });
    assert_eq!(pids()["in:0:2"], mid["in:0:2"]);
    assert_eq!(pids()["out:0:1"], mid["out:0:1"]);

    let r = env.run(&["restart", "nosuch"]);
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr,
        "no runner named \"nosuch\" runs under this master\n"
    );
    let r = env.run(&["restart", "in:7"]);
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (1, "runner \"in\" has no slice 7\n")
    );
    let r = env.run(&["restart", "in:x"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("expected RUNNER or RUNNER:SLICE"),
        "{}",
        r.stderr
    );
    assert!(!env.log().contains("maximum restart limit"));
    assert_eq!(env.run(&["stop"]).code, 0);
}

#[test]
fn status_json_lists_every_slice() {
    let env = Env::new(&only(
        r#"
[runner.in]
start = true
instances = 2
[runner.crash]
command = ["sh", "-c", "exit 1"]
restart_delay = "10ms"
max_restarts = 1
"#,
    ));
    let r = env.run(&["status", "--json"]);
    assert_eq!(r.code, 3);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["running"], false);

    let master = env.start(2);
    env.wait_log("Runner crash reached maximum restart limit of 1, not restarting.");
    env.wait_log("[in:1] in runner started.");
    let r = env.run(&["status", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["running"], true);
    assert_eq!(v["master"]["pid"], master);
    assert_eq!(v["master"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["master"]["uptime_secs"].as_f64().unwrap() > 0.0);
    // No HTTP endpoint configured: no address shown.
    assert!(v["master"].get("http").is_none(), "{}", v["master"]);
    let runners = v["runners"].as_array().unwrap();
    assert_eq!(runners.len(), 3, "{runners:?}");
    for r in runners.iter().filter(|r| r["name"] == "in") {
        assert_eq!(r["state"], "running");
        assert_eq!(r["range"], 2);
        let pid = r["pid"].as_i64().unwrap() as i32;
        assert!(runners_of(master).contains(&pid));
        assert!(r["rss_bytes"].as_u64().unwrap() > 0);
        assert!(r["cpu_secs"].as_f64().unwrap() >= 0.0);
        assert!(r["uptime_secs"].as_f64().unwrap() >= 0.0);
        assert_eq!(r["restarts"], 0);
        assert_eq!(r["last_exit"], serde_json::Value::Null);
    }
    let crash = runners.iter().find(|r| r["name"] == "crash").unwrap();
    assert_eq!(crash["state"], "failed");
    assert_eq!(crash["pid"], serde_json::Value::Null);
    assert_eq!(crash["last_exit"], serde_json::json!({"exit": 1}));
    assert_eq!(crash["restarts"], 2);

    // A restart brings the failed runner back with its count reset.
    assert_eq!(env.run(&["restart", "crash"]).code, 0);
    wait_until("a second give-up", PATIENCE, || {
        env.log()
            .matches("reached maximum restart limit of 1")
            .count()
            == 2
    });
    assert_eq!(env.run(&["stop"]).code, 0);
}

#[test]
fn the_socket_refuses_other_users_and_a_stale_one_is_not_trusted() {
    let env = Env::new(&only(TWO));
    fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let master = env.start(3);
    let socket = env.var.join("master.sock");
    let meta = fs::symlink_metadata(&socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let as_nobody = || {
        let script = "import socket,sys\n\
            s=socket.socket(socket.AF_UNIX)\n\
            try:\n    s.connect(sys.argv[1])\n\
            except PermissionError:\n    print('EACCES'); sys.exit(0)\n\
            s.settimeout(5)\n\
            print(s.recv(4096).decode().strip())\n";
        let out = Command::new("python3")
            .args(["-c", script])
            .arg(&socket)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // The file mode keeps `nobody` out…
    assert_eq!(as_nobody(), "EACCES");
    // …and so do the peer credentials when the mode would not.
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o666)).unwrap();
    assert_eq!(
        as_nobody(),
        r#"{"ok":false,"error":"permission denied: not the master's user"}"#
    );
    assert!(alive(master));
    assert!(
        env.log()
            .contains("control socket: refused a client of uid 65534")
    );

    // kill -9 leaves the socket file; it is never trusted, and the next
    // start replaces it.
    send(master, 9);
    wait_until("the master to die", PATIENCE, || all_threads_gone(master));
    assert!(socket.exists());
    let r = env.run(&["status", "--json"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["state"], "stopped");
    assert_eq!(env.run(&["restart"]).code, 1);
    let second = env.start(3);
    assert_ne!(second, master);
    let r = env.run(&["status", "--json"]);
    assert_eq!(r.code, 0);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["master"]["pid"], second);
    assert_eq!(env.run(&["stop"]).code, 0);
    assert!(!socket.exists(), "a clean stop removes the socket");
}

/// A log directory deleted under the master (`rm -rf logs/`) is made again
/// at the next `reopen`, as logrotate's would be: what follows is in a file
/// one can read. (The log went on into the deleted file.)
#[test]
fn reopen_makes_a_deleted_log_directory_again() {
    let env = Env::new(&only(TWO));
    let master = env.start(3);
    fs::remove_dir_all(env.var.join("logs")).unwrap();
    assert_eq!(env.run(&["reopen"]).code, 0);
    assert_eq!(env.run(&["restart", "out"]).code, 0);
    env.wait_log("Master detected subprocess exit");
    assert_eq!(env.run(&["stop"]).code, 0);
    wait_until("the master to exit", PATIENCE, || !alive(master));
}

#[test]
fn logrotate_loses_and_repeats_no_line() {
    const N: u32 = 4000;
    let env = Env::new(&only(&format!(
        r#"
[runner.numbers]
instances = 2
command = ["sh", "-c", "trap '' HUP; trap 'exit 0' TERM; i=0; while [ $i -lt {N} ]; do echo n $i; i=$((i+1)); [ $((i % 40)) -eq 0 ] && sleep 0.01; done; echo finished; while true; do sleep 0.05; done"]
"#
    )));
    let master = env.start(2);
    let mut rotations = 0;
    let mut finished = 0;
    while finished + env.log().matches("finished").count() < 2 {
        rotations += 1;
        let rotated = env.var.join(format!("logs/mailman.log.{rotations}"));
        fs::rename(env.log_file(), &rotated).unwrap();
        let r = env.run(&["reopen"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        std::thread::sleep(Duration::from_millis(30));
        // Lines handed to the old file before the reopen are there by now.
        finished += fs::read_to_string(&rotated)
            .unwrap_or_default()
            .matches("finished")
            .count();
        assert!(rotations < 2000, "the runners never finished");
    }
    assert_eq!(env.run(&["stop"]).code, 0);
    assert!(!alive(master));

    let mut seen: HashMap<(u32, u32), u32> = HashMap::new();
    let mut files_with_numbers = 0;
    let mut paths: Vec<_> = (1..=rotations)
        .map(|k| env.var.join(format!("logs/mailman.log.{k}")))
        .collect();
    paths.push(env.log_file());
    for path in paths {
        let text = fs::read_to_string(&path).unwrap_or_default();
        let mut any = false;
        for line in text.lines() {
            let Some(rest) = line.split("[numbers:").nth(1) else {
                continue;
            };
            let (slice, msg) = rest.split_once("] ").unwrap();
            if let Some(n) = msg.strip_prefix("n ") {
                any = true;
                *seen
                    .entry((slice.parse().unwrap(), n.parse().unwrap()))
                    .or_default() += 1;
            }
        }
        files_with_numbers += any as u32;
    }
    assert!(
        files_with_numbers >= 3,
        "rotations did not overlap the output ({files_with_numbers} files)"
    );
    for slice in 0..2 {
        for n in 0..N {
            assert_eq!(
                seen.get(&(slice, n)).copied().unwrap_or(0),
                1,
                "slice {slice} line {n}"
            );
        }
    }
    println!("{rotations} rotations over {files_with_numbers} files");
}

/// A runner's output reaches the log line by line whatever its shape: the
/// carriage return before a newline dropped, bytes that are not UTF-8
/// replaced, a line longer than 16 KiB in pieces, a last line without a
/// newline logged once the pipe closes, stdout and stderr both tagged.
#[test]
fn a_runners_output_is_logged_line_by_line_whatever_its_shape() {
    let env = Env::new(&only(
        r#"
[runner.shapes]
command = ["sh", "-c", "printf 'crlf\\r\\n'; printf 'bad \\377 byte\\n'; head -c 20000 /dev/zero | tr '\\0' x; echo; echo to stderr >&2; printf 'partial'; exec sleep 100000 >&- 2>&-"]
"#,
    ));
    let master = env.start(1);
    env.wait_log("[shapes:0] partial");
    let log = env.log();
    // What was said, a run of x's as its length.
    let said = |stderr: bool| -> Vec<String> {
        log.lines()
            .filter_map(|l| l.split_once("[shapes:0] ").map(|(_, m)| m))
            .filter(|m| (*m == "to stderr") == stderr)
            .map(|m| match m.trim_start_matches('x') {
                "" => format!("{} x", m.len()),
                _ => m.to_string(),
            })
            .collect()
    };
    // Each pipe in order; the two pipes' lines are not ordered between them.
    assert_eq!(
        said(false),
        ["crlf", "bad \u{FFFD} byte", "16384 x", "3616 x", "partial"]
    );
    assert_eq!(said(true), ["to stderr"]);
    assert_eq!(env.run(&["stop"]).code, 0);
    assert!(!alive(master));
}

#[test]
fn systemd_readiness_over_notify_socket() {
    let env = Env::new(&only(TWO));
    let path = env.dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut child = env
        .cmd(&["master"])
        .env("NOTIFY_SOCKET", &path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let master = child.id() as i32;
    let recv = || {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let ready = recv();
    // READY=1 comes once the runners are started, not before.
    assert_eq!(runners_of(master).len(), 3, "{ready}");
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    assert!(ready.contains("STATUS=3 runners running"), "{ready}");
    assert!(ready.contains(&format!("MAINPID={master}")), "{ready}");
    for pid in runners_of(master) {
        assert!(!environ(pid).iter().any(|e| e.starts_with("NOTIFY_SOCKET=")));
    }

    assert_eq!(env.run(&["stop", "--no-wait"]).code, 0);
    let stopping = recv();
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping}");
    assert!(child.wait().unwrap().success());
}

#[test]
fn stop_timeout_and_no_wait() {
    let env = Env::with_mailman(
        "stop_timeout = \"3s\"\n",
        &only(
            r#"
[runner.stubborn]
command = ["sh", "-c", "trap '' TERM; while true; do sleep 0.05; done"]
"#,
        ),
    );
    let master = env.start(1);
    // The stubborn runner keeps the master for stop_timeout (3 s): a 0.3 s
    // wait is not enough, and says so.
    let r = env.run(&["stop", "--timeout", "0.3"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert_eq!(r.stdout, "Shutting down Mailman's master runner\n");
    assert_eq!(r.stderr, "GNU Mailman did not stop within 0.3s\n");
    assert!(alive(master));
    // It goes on stopping; a second stop just waits for it.
    let r = env.run(&["stop"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!alive(master));

    let master = env.start(1);
    let r = env.run(&["stop", "--no-wait"]);
    assert_eq!(r.code, 0);
    assert!(
        alive(master),
        "--no-wait returns before the stop_timeout has passed"
    );
    wait_until("the master to stop", PATIENCE, || !alive(master));
}

/// The systemd unit as installed: `systemd-analyze verify` finds nothing
/// wrong, and `systemd-analyze security` rates its exposure "OK" (it was
/// 9.2, "UNSAFE", before the hardening).
#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let analyze = |args: &[&str]| {
        Command::new("systemd-analyze")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
    };
    require(
        analyze(&["--version"]).is_ok_and(|o| o.status.success()),
        "systemd-analyze",
        "apt-get install systemd",
    );
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd/mailman.service"),
    )
    .unwrap()
    // Where this test's binary is, rather than where it would be installed.
    .replace("/usr/local/bin/mailman", BIN);
    let path = dir.path().join("mailman.service");
    std::fs::write(&path, unit).unwrap();
    let verify = analyze(&["verify", "--man=no", path.to_str().unwrap()]).unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&verify.stderr), "");
    let security = analyze(&["security", "--offline=true", path.to_str().unwrap()]).unwrap();
    let text = String::from_utf8_lossy(&security.stdout).into_owned();
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for mailman.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no score in: {text}"));
    assert!(score <= 2.0, "exposure {score}:\n{text}");
}
