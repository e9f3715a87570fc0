//! The container image and compose.yaml on the real Docker engine (docs/containers.md).
//! Skipped, with one printed line, only where `docker info` fails.
//!
//! The container is named `mailman` (so that `docker exec mailman stop` is
//! tested literally): these tests run one at a time. Each builds its own image
//! tag with contrib/docker/build-local.sh and removes every container, image,
//! volume and network it made, even when it fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::*;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn run(program: &str, args: &[&str], env: &[(&str, &str)]) -> Ran {
    let out = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(ROOT)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn docker(args: &[&str]) -> Ran {
    run("docker", args, &[])
}

/// One test's image, compose project and container; all removed on drop.
struct Stage {
    tag: String,
    project: String,
    _serial: MutexGuard<'static, ()>,
}

impl Stage {
    /// Fails the test where no Docker engine answers.
    fn new(test: &str) -> Stage {
        let serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        require_docker();
        let stage = Stage {
            tag: format!("mailman-test:{}-{test}", std::process::id()),
            project: format!("mailmantest{}", std::process::id()),
            _serial: serial,
        };
        stage.remove_container();
        let built = run("bash", &["contrib/docker/build-local.sh", &stage.tag], &[]);
        assert_eq!(
            built.code, 0,
            "image build failed: {}{}",
            built.stdout, built.stderr
        );
        stage
    }

    fn compose(&self, args: &[&str]) -> Ran {
        let mut all = vec!["-p", &self.project, "-f", "contrib/docker/compose.yaml"];
        all.extend_from_slice(args);
        run("docker-compose", &all, &[("MAILMAN_IMAGE", &self.tag)])
    }

    fn up(&self) {
        let r = self.compose(&["up", "-d", "--no-build"]);
        assert_eq!(r.code, 0, "compose up: {}{}", r.stdout, r.stderr);
    }

    fn remove_container(&self) {
        docker(&["rm", "-f", "-v", "mailman"]);
    }

    fn state(&self) -> String {
        let r = docker(&[
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.ExitCode}} {{.RestartCount}}",
            "mailman",
        ]);
        r.stdout.trim().to_string()
    }

    fn health(&self) -> String {
        docker(&["inspect", "-f", "{{.State.Health.Status}}", "mailman"])
            .stdout
            .trim()
            .to_string()
    }

    fn logs(&self) -> String {
        let r = docker(&["logs", "mailman"]);
        format!("{}{}", r.stdout, r.stderr)
    }

    /// Host pids of the runners, from `docker top`.
    fn runner_pids(&self) -> Vec<String> {
        let mut pids: Vec<String> = docker(&["top", "mailman", "-o", "pid,args"])
            .stdout
            .lines()
            .filter(|l| l.contains(" runner "))
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect();
        pids.sort();
        pids
    }

    fn wait_master_up(&self) {
        wait_until("the master inside the container", PATIENCE, || {
            docker(&["exec", "mailman", "status"]).code == 0 && self.runner_pids().len() == 12
        });
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        self.remove_container();
        self.compose(&["down", "-v", "--remove-orphans"]);
        docker(&["rmi", "-f", &self.tag]);
    }
}

#[test]
fn image_builds_small_and_compose_up_becomes_healthy() {
    let stage = Stage::new("up");
    let size: u64 = docker(&["image", "inspect", "-f", "{{.Size}}", &stage.tag])
        .stdout
        .trim()
        .parse()
        .unwrap();
    assert!(size <= 5 * 1000 * 1000, "image is {size} bytes");

    stage.up();
    let began = Instant::now();
    wait_until("healthy", Duration::from_secs(30), || {
        stage.health() == "healthy"
    });
    println!("healthy after {:?}", began.elapsed());

    let top = docker(&["top", "mailman", "-o", "user,pid,args"]).stdout;
    for name in [
        "archive", "bounces", "command", "in", "lmtp", "out", "pipeline", "rest", "retry", "task",
        "virgin", "digest",
    ] {
        assert!(
            top.contains(&format!("--runner {name}:0:1")),
            "{name} in {top}"
        );
    }
    // Not root: the image's mailman user.
    assert!(!top.lines().skip(1).any(|l| l.starts_with("root")), "{top}");
    let logs = stage.logs();
    assert!(logs.contains("(1) Master started"), "{logs}");
    assert!(logs.contains("[in:0] in runner started."), "{logs}");
    assert!(!logs.contains("running as root"), "{logs}");
}

#[test]
fn docker_exec_mailman_stop_exits_0_and_stays_stopped() {
    let stage = Stage::new("stop");
    stage.up();
    stage.wait_master_up();
    let began = Instant::now();
    let r = docker(&["exec", "mailman", "stop"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(r.stdout, "Shutting down Mailman's master runner\n");
    wait_until("the container to exit", Duration::from_secs(10), || {
        stage.state().starts_with("exited")
    });
    println!("exited after {:?}", began.elapsed());
    assert_eq!(stage.state(), "exited 0 0");
    // restart: on-failure does not bring back a requested stop.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(stage.state(), "exited 0 0");
    assert!(stage.logs().contains("Master stopped"));
}

#[test]
fn status_restart_and_reopen_inside_the_container() {
    let stage = Stage::new("ops");
    stage.up();
    stage.wait_master_up();
    let st = docker(&["exec", "mailman", "mailman", "status"]);
    assert_eq!(
        (st.code, st.stdout.as_str()),
        (0, "GNU Mailman is running (master pid: 1)\n")
    );

    let before = stage.runner_pids();
    let r = docker(&["exec", "mailman", "mailman", "restart"]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "Restarting the Mailman runners\n")
    );
    wait_until("new runner pids", PATIENCE, || {
        let now = stage.runner_pids();
        now.len() == 12 && now.iter().all(|p| !before.contains(p))
    });

    assert_eq!(docker(&["kill", "-s", "HUP", "mailman"]).code, 0);
    wait_until("the reopen in the logs", PATIENCE, || {
        stage
            .logs()
            .contains("Master watcher caught SIGHUP.  Re-opening log files.")
    });

    // Queue work as the image's user, on the built-in defaults: an entry
    // travels in → pipeline → out and waits there (the image has no shell
    // and no handler). /etc/passwd is the one file a scratch image has.
    let inj = docker(&["exec", "mailman", "mailman", "inject", "in", "/etc/passwd"]);
    assert_eq!(inj.code, 0, "{}", inj.stderr);
    let entry = inj.stdout.trim().to_string();
    assert!(entry.ends_with(".msg"), "{entry}");
    wait_until("the entry to wait in out", PATIENCE, || {
        let q = docker(&["exec", "mailman", "mailman", "queues", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&q.stdout).unwrap_or_default();
        v["queues"].as_array().is_some_and(|qs| {
            qs.iter()
                .any(|q| q["name"] == "out" && q["waiting"] == 1 && q["in_hand"] == 0)
        })
    });
    wait_until("the out runner to say the entry waits", PATIENCE, || {
        stage.logs().contains(
            "out runner has no handler and no next queue: 1 entry waits in /var/lib/mailman/queue/out",
        )
    });
    assert_eq!(stage.state(), "running 0 0");
}

#[test]
fn kill_then_start_ten_times_on_the_same_volume() {
    let stage = Stage::new("kill");
    stage.up();
    stage.wait_master_up();
    for round in 1..=10 {
        assert_eq!(docker(&["kill", "mailman"]).code, 0, "round {round}");
        wait_until("the container to die", PATIENCE, || {
            !stage.state().starts_with("running")
        });
        let r = docker(&["start", "mailman"]);
        assert_eq!(r.code, 0, "round {round}: {}", r.stderr);
        stage.wait_master_up();
        let starts = stage.logs().matches("(1) Master started").count();
        assert_eq!(starts, round + 1, "round {round}");
    }
    let logs = stage.logs();
    assert!(!logs.contains("already running"), "{logs}");
    let r = docker(&["exec", "mailman", "stop"]);
    assert_eq!(r.code, 0);
}

/// A static busybox gives the shell-less image a runner that ignores SIGTERM.
fn busybox() -> PathBuf {
    let found = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    require(
        found.is_some(),
        "a static busybox",
        "apt-get install busybox-static",
    );
    found.unwrap_or_default()
}

#[test]
fn docker_stop_with_a_runner_that_ignores_sigterm() {
    let busybox = busybox();
    let stage = Stage::new("term");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mailman.toml");
    std::fs::write(
        &config,
        r#"[mailman]
var_dir = "/var/lib/mailman"
stop_timeout = "5s"
[runner.stubborn]
command = ["/bin/busybox", "sh", "-c", "trap '' TERM; while true; do /bin/busybox sleep 1; done"]
"#,
    )
    .unwrap();
    set_readable(dir.path(), &config);
    let cfg_mount = format!("{}:/etc/mailman3/mailman.toml:ro", config.display());
    let bb_mount = format!("{}:/bin/busybox:ro", busybox.display());
    let r = docker(&[
        "run", "-d", "--name", "mailman", "-v", &cfg_mount, "-v", &bb_mount, &stage.tag,
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    wait_until("the runners and the stubborn one", PATIENCE, || {
        let top = docker(&["top", "mailman", "-o", "pid,args"]).stdout;
        stage.runner_pids().len() == 12 && top.contains("/bin/busybox sh -c")
    });

    let began = Instant::now();
    let r = docker(&["stop", "mailman"]);
    let took = began.elapsed();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(took < Duration::from_secs(10), "docker stop took {took:?}");
    assert_eq!(stage.state(), "exited 0 0");
    let logs = stage.logs();
    assert!(logs.contains("Runner stubborn:0:1 (pid "), "{logs}");
    assert!(
        logs.contains("did not stop within 5s; sending SIGKILL"),
        "{logs}"
    );
    println!("docker stop took {took:?}");
}

fn set_readable(dir: &Path, file: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
}

#[test]
fn host_commands_against_a_bind_mounted_var_dir() {
    let stage = Stage::new("host");
    let dir = tempfile::tempdir().unwrap();
    let var = dir.path().join("var");
    std::fs::create_dir(&var).unwrap();
    nix::unistd::chown(&var, Some(8024.into()), Some(8024.into())).unwrap();
    let host_config = dir.path().join("host.toml");
    std::fs::write(
        &host_config,
        format!("[mailman]\nvar_dir = \"{}\"\n", var.display()),
    )
    .unwrap();
    let mount = format!("{}:/var/lib/mailman", var.display());
    let r = docker(&["run", "-d", "--name", "mailman", "-v", &mount, &stage.tag]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    stage.wait_master_up();

    let host = |args: &[&str]| {
        let mut all = vec!["-C", host_config.to_str().unwrap()];
        all.extend_from_slice(args);
        run(BIN, &all, &[])
    };
    // The lock crosses the container boundary.
    let st = host(&["status"]);
    assert_eq!(
        (st.code, st.stdout.as_str()),
        (0, "GNU Mailman is running (master pid: 1)\n")
    );
    let again = host(&["start"]);
    assert_eq!(
        (again.code, again.stderr.as_str()),
        (2, "GNU Mailman is already running\n")
    );

    // Through the control socket the host's commands work, and no signal
    // is sent (the pid in the pid file means this host's init here).
    let before = stage.runner_pids();
    let r = host(&["restart"]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "Restarting the Mailman runners\n"),
        "{}",
        r.stderr
    );
    wait_until("new runner pids", PATIENCE, || {
        let now = stage.runner_pids();
        now.len() == 12 && now.iter().all(|p| !before.contains(p))
    });
    assert_eq!(host(&["reopen"]).code, 0);
    wait_until("the reopen", PATIENCE, || {
        stage.logs().contains("got a reopen request")
    });
    let r = host(&["stop"]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "Shutting down Mailman's master runner\n"),
        "{}",
        r.stderr
    );
    // The lock goes as the master exits; Docker records the exit a moment
    // after.
    wait_until("the container to exit", PATIENCE, || {
        stage.state().starts_with("exited")
    });
    let state = stage.state();
    assert!(state.starts_with("exited 0"), "{state}");
    assert_eq!(host(&["status"]).code, 3, "a clean stop leaves no pid file");

    // Without the socket (removed here), the host's commands refuse and
    // name `docker exec`: they never signal the pid in the pid file.
    assert_eq!(docker(&["start", "mailman"]).code, 0);
    stage.wait_master_up();
    std::fs::remove_file(var.join("master.sock")).unwrap();
    for cmd in ["stop", "restart", "reopen"] {
        let r = host(&[cmd]);
        assert_eq!(r.code, 1, "{cmd}: {}", r.stderr);
        assert!(
            r.stderr.contains("another PID namespace"),
            "{cmd}: {}",
            r.stderr
        );
        assert!(r.stderr.contains("docker exec"), "{cmd}: {}", r.stderr);
    }
    assert_eq!(host(&["status"]).code, 0);
    assert!(stage.state().starts_with("running"), "{}", stage.state());
    assert_eq!(docker(&["exec", "mailman", "stop"]).code, 0);
    wait_until("the container to exit", Duration::from_secs(10), || {
        stage.state().starts_with("exited")
    });
    assert_eq!(host(&["status"]).code, 3, "a clean stop leaves no pid file");
}
