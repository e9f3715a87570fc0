//! The Mailman Core image (contrib/mailman-core) and stack (compose.yaml) on
//! the real Docker engine: a message sent by LMTP to a list reaches its
//! subscriber through GNU Mailman 3.3.10's own runners under our master, again
//! after a restart and after `docker kill` + `docker start`; Mailman's CLI and
//! ours agree; `docker stop` ends every runner on its own; `docker logs` has
//! Mailman's lines tagged with their runner; two slices of `in` and `out` run.
//!
//! The image is built by contrib/mailman-core/build.sh under its fixed tag
//! (the base image and the wheel directory are cached across runs); each test
//! brings up its own compose project and takes it down with its volumes.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use common::*;

const IMAGE: &str = "mailman-core:local";
/// Mailman's Python runners start slowly, the more so on a loaded machine.
const SLOW: Duration = Duration::from_secs(240);

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
static BUILT: OnceLock<Result<(), String>> = OnceLock::new();

/// Through Mailman's REST API (inside the container): a domain, a list that
/// accepts posts from anyone, and a subscriber; or those read back; or one
/// message by LMTP.
const FLOW: &str = r#"
import base64, json, smtplib, sys, urllib.request
AUTH = "Basic " + base64.b64encode(b"restadmin:restpass").decode()
def rest(method, path, data=None):
    req = urllib.request.Request("http://127.0.0.1:8001/3.1" + path, method=method,
        data=None if data is None else json.dumps(data).encode(),
        headers={"Authorization": AUTH, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.status
if sys.argv[1] == "setup":
    rest("POST", "/domains", {"mail_host": "example.com"})
    rest("POST", "/lists", {"fqdn_listname": "test@example.com"})
    rest("POST", "/members", {"list_id": "test.example.com", "subscriber": "anne@example.org",
         "pre_verified": True, "pre_confirmed": True, "pre_approved": True})
    rest("PATCH", "/lists/test.example.com/config", {"default_nonmember_action": "accept"})
elif sys.argv[1] == "read":
    # What Postorius reads: each collection answers (an error status raises).
    def get(path):
        req = urllib.request.Request("http://127.0.0.1:8001/3.1" + path,
            headers={"Authorization": AUTH})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.load(r)
    assert [e["fqdn_listname"] for e in get("/lists")["entries"]] == ["test@example.com"]
    assert [e["mail_host"] for e in get("/domains")["entries"]] == ["example.com"]
    roster = get("/lists/test.example.com/roster/member")["entries"]
    assert [e["email"] for e in roster] == ["anne@example.org"], roster
    assert "anne@example.org" in [e["email"] for e in get("/members")["entries"]]
    assert get("/users")["total_size"] >= 1
else:
    n = sys.argv[2]
    msg = ("From: bart@example.org\r\nTo: test@example.com\r\nSubject: hello %s\r\n"
           "Message-ID: <m%s@example.org>\r\n\r\nbody %s\r\n" % (n, n, n))
    lmtp = smtplib.LMTP("127.0.0.1", 8024)
    refused = lmtp.sendmail("bart@example.org", ["test@example.com"], msg)
    lmtp.quit()
    sys.exit(1 if refused else 0)
"#;

fn run(program: &str, args: &[&str], env: &[(&str, &str)]) -> Ran {
    let out = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
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

/// The image, built once per test run (a cache hit after the first time).
fn build() {
    let built = BUILT.get_or_init(|| {
        let r = run("bash", &["contrib/mailman-core/build.sh", IMAGE], &[]);
        if r.code == 0 {
            Ok(())
        } else {
            Err(format!("{}{}", r.stdout, r.stderr))
        }
    });
    if let Err(e) = built {
        panic!("the Mailman Core image cannot be built: {e}");
    }
}

/// One test's compose project: Mailman Core and the SMTP sink.
struct Stack {
    project: String,
    core: String,
    smtp: String,
    files: Vec<String>,
    _serial: MutexGuard<'static, ()>,
}

impl Stack {
    /// `overrides`: more compose files (absolute paths).
    fn up(test: &str, overrides: &[&Path]) -> Stack {
        let serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        require_docker();
        build();
        let id = format!("{}{}", std::process::id(), test);
        let mut files = vec!["compose.yaml".to_string()];
        files.extend(overrides.iter().map(|p| p.display().to_string()));
        let stack = Stack {
            project: format!("mmcore{id}"),
            core: format!("mmcore-{id}"),
            smtp: format!("mmsmtp-{id}"),
            files,
            _serial: serial,
        };
        let r = stack.compose(&["up", "-d", "--no-build"]);
        assert_eq!(r.code, 0, "compose up: {}{}", r.stdout, r.stderr);
        stack
    }

    fn compose(&self, args: &[&str]) -> Ran {
        let mut all = vec!["-p", self.project.as_str()];
        for f in &self.files {
            all.extend(["-f", f.as_str()]);
        }
        all.extend_from_slice(args);
        run(
            "docker-compose",
            &all,
            &[
                ("MAILMAN_CORE_IMAGE", IMAGE),
                ("MAILMAN_CORE_CONTAINER", &self.core),
                ("MAILMAN_SMTP_CONTAINER", &self.smtp),
                // Any free host port: the tests talk to the containers
                // through `docker exec`.
                ("MAILMAN_REST_PORT", "127.0.0.1:"),
                ("MAILMAN_LMTP_PORT", "127.0.0.1:"),
                ("MAILMAN_METRICS_PORT", "127.0.0.1:"),
            ],
        )
    }

    /// A command inside the Mailman Core container.
    fn exec(&self, args: &[&str]) -> Ran {
        let mut all = vec!["exec", self.core.as_str()];
        all.extend_from_slice(args);
        docker(&all)
    }

    /// Through the REST API, a domain, a list and a subscriber (see
    /// [`FLOW`]), then those read back (SQLAlchemy 2.1 broke three of
    /// Mailman's collections).
    fn set_up_list(&self) {
        let setup = self.flow(&["setup"]);
        assert_eq!(setup.code, 0, "REST set-up: {}", setup.stderr);
        let read = self.flow(&["read"]);
        assert_eq!(read.code, 0, "REST reads: {}", read.stderr);
    }

    /// The flow script (see [`FLOW`]) inside the container.
    fn flow(&self, args: &[&str]) -> Ran {
        let mut child = Command::new("docker")
            .args(["exec", "-i", &self.core, "python3", "-"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(FLOW.as_bytes()).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        Ran {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn health(&self) -> String {
        docker(&["inspect", "-f", "{{.State.Health.Status}}", &self.core])
            .stdout
            .trim()
            .to_string()
    }

    fn wait_healthy(&self, what: &str) {
        let deadline = Instant::now() + SLOW;
        while self.health() != "healthy" {
            assert!(
                Instant::now() < deadline,
                "{what}: not healthy after {SLOW:?} ({}); status: {}\nlogs:\n{}",
                self.health(),
                self.exec(&["mailmanctl", "status"]).stdout,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Whether the sink has the list's copy of message `n` for anne.
    fn delivered(&self, n: usize) -> bool {
        let pattern = format!("^Subject: \\[Test\\] hello {n}$");
        let found = docker(&[
            "exec",
            &self.smtp,
            "grep",
            "-rlx",
            &pattern,
            "/var/lib/mailman/sink",
        ]);
        found.code == 0
            && found.stdout.lines().any(|f| {
                docker(&[
                    "exec",
                    &self.smtp,
                    "grep",
                    "-qx",
                    "X-RcptTo: anne@example.org",
                    f,
                ])
                .code
                    == 0
            })
    }

    /// Sends message `n` and waits until the sink has it.
    fn send_and_receive(&self, n: usize) {
        let deadline = Instant::now() + SLOW;
        loop {
            let sent = self.flow(&["send", &n.to_string()]);
            if sent.code == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "cannot send {n}: {}",
                sent.stderr
            );
            std::thread::sleep(Duration::from_secs(1));
        }
        wait_until(&format!("message {n} at the sink"), SLOW, || {
            self.delivered(n)
        });
    }

    /// `mailmanctl restart`, then waits until each of the twelve runners
    /// is a new process and every one is ready.
    fn restart_every_runner(&self) {
        let before = self.pids();
        let r = self.exec(&["mailmanctl", "restart"]);
        assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
        wait_until("every runner replaced", SLOW, || {
            let now = self.pids();
            now.len() == 12 && now.iter().all(|(k, p)| before.get(k) != Some(p))
        });
        wait_until("every runner ready again", SLOW, || {
            self.exec(&["mailmanctl", "status", "--check"]).code == 0
        });
    }

    fn logs(&self) -> String {
        let r = docker(&["logs", &self.core]);
        format!("{}{}", r.stdout, r.stderr)
    }

    /// Runner name → pid, from our `status --json`.
    fn pids(&self) -> std::collections::BTreeMap<String, i64> {
        let out = self.exec(&["mailmanctl", "status", "--json"]).stdout;
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        v["runners"]
            .as_array()
            .map(|rs| {
                rs.iter()
                    .filter_map(|r| {
                        let spec = format!("{}:{}", r["name"].as_str()?, r["slice"].as_i64()?);
                        Some((spec, r["pid"].as_i64()?))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.compose(&["down", "-v", "--remove-orphans"]);
    }
}

#[test]
fn a_message_travels_through_mailman_core_under_our_master() {
    let stack = Stack::up("one", &[]);
    stack.wait_healthy("first start");
    stack.set_up_list();
    stack.send_and_receive(1);

    // Mailman's own CLI and ours agree.
    let ours = stack.exec(&["mailmanctl", "status"]);
    let theirs = stack.exec(&["mailman", "status"]);
    assert_eq!(ours.stdout, "GNU Mailman is running (master pid: 1)\n");
    assert_eq!(theirs.stdout, ours.stdout, "{}", theirs.stderr);

    // The endpoint, published by compose: ready, and Mailman's twelve
    // runners and its queues in the metrics.
    let port = docker(&["port", &stack.core, "9410"]);
    let addr = port.stdout.lines().next().unwrap_or("").trim().to_string();
    assert!(
        addr.starts_with("127.0.0.1:"),
        "docker port: {}",
        port.stdout
    );
    let fetch = |path: &str| -> (String, String) {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut s, &mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        (head.to_string(), body.to_string())
    };
    let (head, body) = fetch("/readyz");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}\n{body}");
    let (_, metrics) = fetch("/metrics");
    let up = metrics
        .lines()
        .filter(|l| l.starts_with("mailman_runner_up{") && l.ends_with(" 1.0"))
        .count();
    assert_eq!(up, 12, "{metrics}");
    for series in [
        r#"mailman_queue_entries{queue="out",state="waiting"}"#,
        r#"mailman_queue_entries{queue="shunt",state="shunt"}"#,
        r#"mailman_runner_stalled{runner="retry",slice="0"} 0"#,
        r#"mailman_runner_ready{runner="lmtp",slice="0"} 1"#,
    ] {
        assert!(metrics.contains(series), "{series} not in\n{metrics}");
    }

    // Mailman's periodic commands are jobs out of the box, run by
    // Mailman's own CLI in the image; run-job runs one now.
    let jobs = stack.exec(&["mailmanctl", "jobs"]);
    for name in ["digests ", "notify "] {
        assert!(
            jobs.stdout
                .lines()
                .any(|l| l.starts_with(name) && l.contains("@daily")),
            "{}{}",
            jobs.stdout,
            jobs.stderr
        );
    }
    for job in ["digests", "notify"] {
        let r = stack.exec(&["mailmanctl", "run-job", job]);
        assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    }
    let outcome = |job: &str| -> String {
        let v: serde_json::Value =
            serde_json::from_str(&stack.exec(&["mailmanctl", "jobs", "--json"]).stdout)
                .unwrap_or_default();
        v["jobs"]
            .as_array()
            .and_then(|a| a.iter().find(|j| j["name"] == job))
            .map(|j| j["last_outcome"].to_string())
            .unwrap_or_default()
    };
    wait_until("digests and notify to have run", SLOW, || {
        !outcome("digests").contains("null") && !outcome("notify").contains("null")
    });
    assert_eq!(outcome("digests"), "\"success\"", "{}", stack.logs());
    assert_eq!(outcome("notify"), "\"success\"", "{}", stack.logs());

    // A restart through our CLI replaces every runner, REST's included
    // (gunicorn takes SIGUSR1 as "reopen logs": it gets SIGTERM after
    // stop_timeout), and mail flows again once they are ready.
    assert_eq!(stack.pids().len(), 12, "{:?}", stack.pids());
    stack.restart_every_runner();
    stack.send_and_receive(2);

    // docker kill, then docker start: back healthy, no --force, mail flows.
    assert_eq!(docker(&["kill", &stack.core]).code, 0);
    // The restart policy (on-failure) may have started it already; then
    // this start does nothing. Either way the health check starts over.
    docker(&["start", &stack.core]);
    stack.wait_healthy("after docker kill + docker start");
    stack.send_and_receive(3);

    // docker stop: well inside 10 s, every runner ending on its own.
    let since = stack.logs().len();
    let t0 = Instant::now();
    assert_eq!(docker(&["stop", &stack.core]).code, 0);
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(10), "docker stop took {took:?}");
    let logs = stack.logs();
    let last = &logs[since.min(logs.len())..];
    assert!(last.contains("Master stopped"), "{last}");
    assert!(
        !last.contains("SIGKILL"),
        "a runner needed SIGKILL:\n{last}"
    );
    let exits: Vec<&str> = last
        .lines()
        .filter(|l| l.contains("Master detected subprocess exit"))
        .collect();
    assert_eq!(exits.len(), 12, "{last}");
    assert!(
        exits
            .iter()
            .all(|l| l.contains("why: EXIT 15") || l.contains("why: EXIT 0, class: rest")),
        "{last}"
    );
    let exit = docker(&["inspect", "-f", "{{.State.ExitCode}}", &stack.core]);
    assert_eq!(exit.stdout.trim(), "0");
    // Mailman's own log lines, tagged with their runner.
    for line in [
        "[in:0] in runner started.",
        "[out:0] out runner started.",
        "[lmtp:0] lmtp runner started.",
    ] {
        assert!(logs.contains(line), "{line} not in docker logs:\n{logs}");
    }
    assert!(logs.contains("[in:0] ACCEPT: <m1@example.org>"), "{logs}");
}

#[test]
fn two_slices_of_in_and_out_run_and_mail_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("mailman.cfg");
    let image_cfg = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/mailman-core/mailman.cfg"),
    )
    .unwrap();
    std::fs::write(
        &cfg,
        format!("{image_cfg}\n[runner.in]\ninstances: 2\n\n[runner.out]\ninstances: 2\n"),
    )
    .unwrap();
    let over = dir.path().join("override.yaml");
    std::fs::write(
        &over,
        format!(
            "services:\n  mailman-core:\n    volumes:\n      - {}:/etc/mailman.cfg:ro\n",
            cfg.display()
        ),
    )
    .unwrap();
    let stack = Stack::up("two", &[&over]);
    stack.wait_healthy("first start");
    let pids = stack.pids();
    for slice in ["in:0", "in:1", "out:0", "out:1"] {
        assert!(pids.contains_key(slice), "{slice} runs: {pids:?}");
    }
    assert_eq!(pids.len(), 14, "{pids:?}");
    stack.set_up_list();
    for n in 1..=6 {
        stack.send_and_receive(n);
    }
}

/// The preload helper's `immortalize`, run by the image's Python on
/// Mailman's modules: what it reached is immortal; what it was told to
/// leave mortal keeps its count, is freed when let go, and a socket among
/// them is closed then.
const IMMORTAL_CHECK: &str = r#"
import gc, os, socket, sys, weakref
src = open("/t/helper.py").read()
ns = {"__name__": "helper"}
exec(compile(src[: src.rindex("\nmain()")], "helper.py", "exec"), ns)
gc.disable()
import mailman.config, mailman.core.initialize
class Held: pass
held = Held()
a, b = socket.socketpair()
gone = []
watch = weakref.ref(held, lambda r: gone.append(1))
before = (sys.getrefcount(held), sys.getrefcount(a))
said = ns["immortalize"](held, a)
assert said.endswith("s") and int(said.split()[0]) > 10000, said
assert (sys.getrefcount(held), sys.getrefcount(a)) == before, before
assert sys.getrefcount(mailman.config) >= 2**31
assert sys.getrefcount(mailman.core.initialize.initialize_1) >= 2**31
assert sys.getrefcount(mailman.core.initialize.initialize_1.__code__) >= 2**31
del held
assert gone == [1], "a mortal object was not freed"
fd = a.fileno()
del a
try:
    os.fstat(fd)
    raise SystemExit("a mortal socket was not closed")
except OSError:
    pass
print("ok:", said)
"#;

#[test]
fn the_helpers_immortal_objects_and_the_ones_left_mortal() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    require_docker();
    build();
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(
        root.join("src/master/preload/helper.py"),
        dir.path().join("helper.py"),
    )
    .unwrap();
    std::fs::write(dir.path().join("check.py"), IMMORTAL_CHECK).unwrap();
    let mount = format!("{}:/t:ro", dir.path().display());
    let r = docker(&[
        "run",
        "--rm",
        "-u",
        "0",
        "-v",
        &mount,
        "--entrypoint",
        "python3",
        IMAGE,
        "/t/check.py",
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("objects made immortal in "),
        "{}",
        r.stdout
    );
}

/// A compose override in `dir` that turns `[mailman] preload` on through
/// the environment, with `more` variables beside it.
fn preload_override(dir: &Path, more: &[(&str, &str)]) -> std::path::PathBuf {
    let mut text = String::from(
        "services:\n  mailman-core:\n    environment:\n      MAILMAN__MAILMAN__PRELOAD: \"true\"\n",
    );
    for (key, value) in more {
        text += &format!("      {key}: \"{value}\"\n");
    }
    let over = dir.join("override.yaml");
    std::fs::write(&over, text).unwrap();
    over
}

/// The runners' own memory (`Private_Clean` + `Private_Dirty` of each
/// one's `smaps_rollup`, kB) once a list is set up and a message has gone
/// through, preloaded, with `immortal_objects` as given; and the log.
fn runners_private_kib(test: &str, immortal: bool) -> (u64, String) {
    let dir = tempfile::tempdir().unwrap();
    let immortal = immortal.to_string();
    let over = preload_override(
        dir.path(),
        &[("MAILMAN__MAILMAN__IMMORTAL_OBJECTS", immortal.as_str())],
    );
    let stack = Stack::up(test, &[&over]);
    stack.wait_healthy("start");
    stack.set_up_list();
    stack.send_and_receive(1);
    let pids = stack.pids();
    assert_eq!(pids.len(), 12, "{pids:?}");
    let mut total = 0;
    for (spec, pid) in &pids {
        let rollup = stack
            .exec(&["cat", &format!("/proc/{pid}/smaps_rollup")])
            .stdout;
        let kib = |key: &str| -> u64 {
            rollup
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or_else(|| panic!("{spec}: no {key} in {rollup}"))
        };
        total += kib("Private_Clean:") + kib("Private_Dirty:");
    }
    (total, stack.logs())
}

#[test]
fn preloaded_objects_made_immortal_keep_runners_pages_shared() {
    // Left mortal (`immortal_objects = false`): nothing said, nothing done.
    let (mortal, logs) = runners_private_kib("mortal", false);
    assert!(
        !logs.contains("made immortal") && !logs.contains("left mortal"),
        "{logs}"
    );
    // Immortal (the default): the runners copy far fewer of the helper's
    // pages (measured: about half as much memory of their own).
    let (immortal, logs) = runners_private_kib("immortal", true);
    assert!(logs.contains(" objects made immortal in "), "{logs}");
    eprintln!("the runners' own memory: {immortal} kB immortal, {mortal} kB mortal");
    assert!(
        immortal * 4 < mortal * 3,
        "the runners' own memory: {immortal} kB with immortal objects, {mortal} kB without"
    );
}

/// `[mailman] preload` in the image (set through the environment): every
/// runner is forked from the preload helper, mail flows; a runner killed
/// comes back from the helper; the helper killed comes back, runners
/// meanwhile starting without it; a restart replaces every runner; a stop
/// ends everything with no SIGKILL.
#[test]
fn preloaded_runners_carry_mail_and_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let over = preload_override(dir.path(), &[]);
    let stack = Stack::up("pre", &[&over]);
    stack.wait_healthy("first start");
    let logs = stack.logs();
    assert!(
        logs.contains("is ready: runners are forked from it"),
        "{logs}"
    );
    // The image's Python (3.12) can make what the helper loaded immortal.
    assert!(logs.contains(" objects made immortal in "), "{logs}");
    // Forked, not exec'd: a runner's command line is the helper's.
    let forked = |pid: i64| {
        stack
            .exec(&["cat", &format!("/proc/{pid}/cmdline")])
            .stdout
            .contains("MAILMAN_PRELOAD_SCRIPT")
    };
    let parent = |pid: i64| {
        let stat = stack.exec(&["cat", &format!("/proc/{pid}/stat")]).stdout;
        let after = stat.rsplit_once(") ").map_or("", |(_, a)| a).to_string();
        let fields: Vec<&str> = after.split_whitespace().collect();
        (
            fields.get(1).and_then(|f| f.parse::<i64>().ok()),
            fields.get(2).and_then(|f| f.parse::<i64>().ok()),
        )
    };
    let before = stack.pids();
    assert_eq!(before.len(), 12, "{before:?}");
    for (spec, &pid) in &before {
        assert!(
            forked(pid),
            "{spec} (pid {pid}) was not forked by the helper"
        );
        // The master's child (PID 1 here), in a process group of its own.
        assert_eq!(parent(pid), (Some(1), Some(pid)), "{spec}");
    }
    stack.set_up_list();
    stack.send_and_receive(1);

    // kill -9 in the container (it has no `kill` program).
    let kill = |pid: i64| {
        let r = stack.exec(&["sh", "-c", &format!("kill -9 {pid}")]);
        assert_eq!(r.code, 0, "kill -9 {pid}: {}", r.stderr);
    };
    // kill -9 of slice `spec`'s runner; its successor's pid.
    let respawned = |spec: &str| -> i64 {
        let victim = stack.pids()[spec];
        kill(victim);
        wait_until(&format!("a new {spec} runner"), SLOW, || {
            stack.pids().get(spec).is_some_and(|p| *p != victim)
        });
        stack.pids()[spec]
    };

    // kill -9 of a runner: back, from the helper.
    assert!(forked(respawned("in:0")));
    stack.send_and_receive(2);

    // kill -9 of the helper: a new one loads; a runner that exits
    // meanwhile starts without it; mail flows.
    let helper = |logs: &str| -> Vec<i64> {
        logs.lines()
            .filter_map(|l| l.split("Preload helper started (pid ").nth(1))
            .filter_map(|r| r.split(')').next()?.parse().ok())
            .collect()
    };
    let first = helper(&stack.logs());
    assert_eq!(first.len(), 1, "{}", stack.logs());
    kill(first[0]);
    wait_until("the helper's exit seen", SLOW, || {
        stack
            .logs()
            .contains("exited (SIGNAL 9); runners start without it")
    });
    // It is started again a second later at the earliest, then loads for
    // seconds: a runner that exits now (restarted after 100 ms) cannot wait.
    let plain = respawned("out:0");
    assert!(!forked(plain), "out:0 (pid {plain}) waited for the helper");
    assert_eq!(parent(plain), (Some(1), Some(plain)));
    wait_until("the helper back and ready", SLOW, || {
        let logs = stack.logs();
        helper(&logs).len() == 2
            && logs.matches("is ready: runners are forked from it").count() == 2
    });
    stack.send_and_receive(3);

    // A restart replaces every runner, each forked by the new helper.
    stack.restart_every_runner();
    for (spec, pid) in stack.pids() {
        assert!(
            forked(pid),
            "{spec} (pid {pid}) was not forked by the helper"
        );
    }
    stack.send_and_receive(4);

    // docker stop: the runners and the helper end on their own.
    let since = stack.logs().len();
    assert_eq!(docker(&["stop", &stack.core]).code, 0);
    let logs = stack.logs();
    let last = &logs[since.min(logs.len())..];
    assert!(last.contains("Master stopped"), "{last}");
    assert!(!last.contains("SIGKILL"), "{last}");
    let exit = docker(&["inspect", "-f", "{{.State.ExitCode}}", &stack.core]);
    assert_eq!(exit.stdout.trim(), "0");
}
