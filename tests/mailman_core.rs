//! A drop-in master for GNU Mailman Core 3.3.10: Mailman's own Python runners
//! under our master, Mailman's own CLI against it, and the scenarios of
//! Mailman's test_master.py against our binary.
//!
//! Installs `mailman==3.3.10` into a virtual environment cached under
//! `target/` (about 20 s the first time); skipped, with one printed line,
//! only if that install fails. The tests run one at a time (a dozen Python
//! processes each).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use common::*;

/// Python runners start slowly: about a second each on two cores.
const SLOW: Duration = Duration::from_secs(90);

const DEFAULT_RUNNERS: [&str; 12] = [
    "archive", "bounces", "command", "digest", "in", "lmtp", "out", "pipeline", "rest", "retry",
    "task", "virgin",
];

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
static VENV: OnceLock<Option<PathBuf>> = OnceLock::new();

/// The cached virtual environment with Mailman 3.3.10, or `None` (after
/// printing why) if it cannot be installed here.
fn venv() -> Option<PathBuf> {
    VENV.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/mailman-core-3.3.10");
        let stamp = dir.join(".installed");
        if stamp.exists() {
            return Some(dir);
        }
        let _ = std::fs::remove_dir_all(&dir);
        let created = Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg(&dir)
            .status();
        let installed = created.is_ok_and(|s| s.success())
            && Command::new(dir.join("bin/pip"))
                .args(["install", "--quiet", "mailman==3.3.10"])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        if !installed {
            println!("SKIPPED the Mailman Core tests: `pip install mailman==3.3.10` failed here");
            return None;
        }
        std::fs::write(&stamp, "").ok()?;
        Some(dir)
    })
    .clone()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(18024)
}

fn port_bound(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// A Mailman Core installation sharing its var dir with our master.
struct Core {
    env: Env,
    venv: PathBuf,
    cfg: PathBuf,
    lmtp: u16,
    rest: u16,
    _serial: MutexGuard<'static, ()>,
}

impl Core {
    /// `runners`: our config's runner tables (e.g. to start only `command`).
    fn new(runners: &str) -> Option<Core> {
        let serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let venv = venv()?;
        // Two distinct free ports (the kernel may hand out one twice).
        let lmtp = free_port();
        let rest = (0..100)
            .map(|_| free_port())
            .find(|p| *p != lmtp)
            .unwrap_or(lmtp + 1);
        // Our config first, so that the var dir is known.
        let probe = Env::new("");
        let dir = probe.dir.path().to_path_buf();
        let cfg = dir.join("mailman.cfg");
        let var = probe.var.clone();
        std::fs::write(
            dir.join("gunicorn.cfg"),
            "[gunicorn]\ncontrol_socket_disable = true\n",
        )
        .unwrap();
        std::fs::write(
            &cfg,
            format!(
                "[mailman]\nlayout: here\nsite_owner: postmaster@example.com\n\
                 [paths.here]\nvar_dir: {var}\n\
                 [mta]\nincoming: mailman.mta.null.NullMTA\nlmtp_port: {lmtp}\n\
                 [webservice]\nport: {rest}\nconfiguration: {gunicorn}\n",
                var = var.display(),
                gunicorn = dir.join("gunicorn.cfg").display()
            ),
        )
        .unwrap();
        let ours = format!(
            "[runner.default]\n\
             command = [\"{runner}\", \"-C\", \"{cfg}\", \"--runner={{name}}:{{slice}}:{{range}}\"]\n\
             env = {{ MAILMAN_CONFIG_FILE = \"{cfg}\" }}\n{runners}",
            runner = venv.join("bin/runner").display(),
            cfg = cfg.display()
        );
        probe.edit_config("stop_timeout = \"3s\"", "stop_timeout = \"10s\"");
        let text = std::fs::read_to_string(&probe.config).unwrap();
        std::fs::write(&probe.config, format!("{text}{ours}")).unwrap();
        Some(Core {
            env: probe,
            venv,
            cfg,
            lmtp,
            rest,
            _serial: serial,
        })
    }

    /// Mailman's own CLI (`mailman -C mailman.cfg --run-as-root ...`).
    fn mailman(&self, args: &[&str]) -> Ran {
        let out = Command::new(self.venv.join("bin/mailman"))
            .arg("-C")
            .arg(&self.cfg)
            .arg("--run-as-root")
            .args(args)
            .env_remove("MAILMAN_CONFIG_FILE")
            .output()
            .unwrap();
        Ran {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn count(&self, needle: &str) -> usize {
        self.env.log().matches(needle).count()
    }

    fn wait_count(&self, needle: &str, n: usize) {
        let deadline = std::time::Instant::now() + SLOW;
        while self.count(needle) < n {
            if std::time::Instant::now() > deadline {
                let log = self.env.log();
                let tail: Vec<&str> = log.lines().rev().take(60).collect();
                panic!(
                    "timed out waiting for {n} × {needle:?}: saw {}; log tail:\n{}",
                    self.count(needle),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runner pid by name, from `status --json`.
    fn pids(&self) -> std::collections::BTreeMap<String, i64> {
        let out = self.env.run(&["status", "--json"]).stdout;
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        v["runners"]
            .as_array()
            .map(|rs| {
                rs.iter()
                    .filter_map(|r| Some((r["name"].as_str()?.to_string(), r["pid"].as_i64()?)))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[test]
fn mailmans_runners_under_our_master() {
    let Some(core) = Core::new("") else { return };
    let env = &core.env;
    let master = env.start(12);

    // 1. Each of Mailman's default runners starts and logs so in Mailman's log.
    for name in DEFAULT_RUNNERS {
        // ") in runner started.", not "virgin runner started.".
        let needle = format!(") {name} runner started.");
        wait_until(&needle, SLOW, || env.log().contains(&needle));
    }
    wait_until("the REST port", SLOW, || port_bound(core.rest));
    wait_until("the LMTP port", SLOW, || port_bound(core.lmtp));
    let before = core.pids();
    assert_eq!(before.len(), 12, "{before:?}");

    // 2. Our reopen: every runner reopens its logs and keeps its pid.
    assert_eq!(env.run(&["reopen"]).code, 0);
    core.wait_count("caught SIGHUP.  Reopening logs.", 11);
    assert_eq!(core.pids(), before);

    // 3. Our restart: every runner that honours SIGUSR1 exits 10 and comes
    // back at once, uncounted; gunicorn's rest runner takes SIGUSR1 as
    // "reopen" and keeps its pid.
    assert_eq!(env.run(&["restart"]).code, 0);
    core.wait_count("why: EXIT 10", 11);
    wait_until("11 new runners", SLOW, || {
        let now = core.pids();
        now.len() == 12
            && now
                .iter()
                .filter(|(n, p)| before.get(*n) != Some(p))
                .count()
                == 11
    });
    let now = core.pids();
    assert_eq!(now["rest"], before["rest"], "rest keeps its pid");
    assert_eq!(core.count("[restarting]"), 11);
    assert!(!env.log().contains("maximum restart limit"));
    let json = env.run(&["status", "--json"]).stdout;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(
        v["runners"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["restarts"] == 0),
        "{json}"
    );

    // Every restarted runner has started (12 + 11).
    core.wait_count("runner started.", 23);

    // 4. kill -9 of one runner: respawned.
    let victim = now["in"] as i32;
    assert!(send(victim, 9));
    env.wait_log(&format!(
        "(pid: {victim}, why: SIGNAL 9, class: in, slice: 1/1) [restarting]"
    ));
    wait_until("a new in runner", SLOW, || {
        core.pids().get("in").is_some_and(|p| *p as i32 != victim)
    });
    // Every runner has installed its handlers again: a runner still
    // importing Python dies of SIGTERM's default action, in Mailman as here.
    core.wait_count("runner started.", 24);

    // Stop: the runners exit 15 (rest: 0, gunicorn's clean exit), none is
    // restarted, the master exits 0, nothing is left, no port stays bound.
    let restarts_before_stop = core.count("[restarting]");
    let r = env.run(&["stop"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!alive(master));
    let log = env.log();
    let after_stop = &log[log.rfind("Master watcher got a stop request").unwrap()..];
    assert_eq!(
        after_stop.matches("why: EXIT 15").count(),
        11,
        "{after_stop}"
    );
    assert_eq!(
        core.count("[restarting]"),
        restarts_before_stop,
        "{after_stop}"
    );
    assert!(after_stop.contains("Master stopped"));
    let marker = format!("MAILMAN_VAR_DIR={}", env.var.display());
    let left: Vec<i32> = all_pids()
        .into_iter()
        .filter(|p| alive(*p) && environ(*p).contains(&marker))
        .collect();
    assert!(left.is_empty(), "left running: {left:?}");
    assert!(
        !port_bound(core.rest) && !port_bound(core.lmtp),
        "a port stays bound"
    );
}

#[test]
fn mailmans_own_cli_against_our_master() {
    let Some(core) = Core::new("") else { return };
    let env = &core.env;
    let master = env.start(12);
    core.wait_count("runner started.", 12);

    // Mailman's status reads our lock file (its first line is flufl.lock's).
    let st = core.mailman(&["status"]);
    assert_eq!(
        st.stdout,
        format!("GNU Mailman is running (master pid: {master})\n")
    );
    // Mailman's start refuses to start a second master beside ours.
    let again = core.mailman(&["start"]);
    assert_eq!(again.code, 2);
    assert!(
        again.stderr.contains("GNU Mailman is already running"),
        "{}",
        again.stderr
    );

    // Mailman's reopen and restart signal the pid in master.pid: ours.
    assert_eq!(core.mailman(&["reopen"]).code, 0);
    env.wait_log("Master watcher caught SIGHUP.  Re-opening log files.");
    assert_eq!(core.mailman(&["restart"]).code, 0);
    core.wait_count("why: EXIT 10", 11);
    core.wait_count("runner started.", 23);

    // 5. Mailman's own stop stops our master cleanly.
    let r = core.mailman(&["stop"]);
    assert_eq!(r.stdout, "Shutting down Mailman's master runner\n");
    wait_until("our master to stop", SLOW, || !alive(master));
    assert!(
        env.log()
            .contains("Master watcher caught SIGTERM.  Exiting.")
    );
    assert!(env.log().contains("Master stopped"));
    assert_eq!(env.run(&["status"]).code, 3);
    assert_eq!(
        core.mailman(&["status"]).stdout,
        "GNU Mailman is not running\n"
    );
}

/// Only Mailman's `command` runner, as test_master.py uses.
const COMMAND_ONLY: &str = "[runner.archive]\nstart = false\n[runner.bounces]\nstart = false\n\
[runner.digest]\nstart = false\n[runner.in]\nstart = false\n[runner.lmtp]\nstart = false\n\
[runner.out]\nstart = false\n[runner.pipeline]\nstart = false\n[runner.rest]\nstart = false\n\
[runner.retry]\nstart = false\n[runner.task]\nstart = false\n[runner.virgin]\nstart = false\n";

/// Our master in the foreground with Mailman's command runner; returns it
/// and the runner's pid. (Wait for "command runner started." before
/// signalling: Mailman's runner installs its handlers just before that.)
fn command_master(core: &Core) -> (std::process::Child, i32) {
    let child = core
        .env
        .cmd(&["master"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let master = child.id() as i32;
    wait_until("the command runner", SLOW, || runners_of(master).len() == 1);
    (child, runners_of(master)[0])
}

#[test]
fn test_master_scenarios_with_mailmans_command_runner() {
    let Some(core) = Core::new(COMMAND_ONLY) else {
        return;
    };
    let (mut child, runner) = command_master(&core);
    let master = child.id() as i32;
    core.wait_count("command runner started.", 1);

    // SIGHUP: the runner reopens its logs and lives on.
    assert!(send(master, libc::SIGHUP));
    core.wait_count("command runner caught SIGHUP.  Reopening logs.", 1);
    assert_eq!(runners_of(master), [runner]);

    // SIGUSR1: the runner is replaced.
    assert!(send(master, libc::SIGUSR1));
    core.wait_count("command runner caught SIGUSR1.  Stopping.", 1);
    wait_until("a new command runner", SLOW, || {
        runners_of(master).len() == 1 && runners_of(master) != [runner]
    });
    core.wait_count("command runner started.", 2);

    // SIGKILL of the runner: it is replaced.
    let second = runners_of(master)[0];
    assert!(send(second, libc::SIGKILL));
    wait_until("a third command runner", SLOW, || {
        runners_of(master).len() == 1 && runners_of(master) != [second]
    });
    core.wait_count("command runner started.", 3);

    // SIGTERM: the runner stops, and so does the master, with no kids left.
    let third = runners_of(master)[0];
    assert!(send(master, libc::SIGTERM));
    core.wait_count("command runner caught SIGTERM.  Stopping.", 1);
    assert!(child.wait().unwrap().success());
    assert!(!alive(third));

    // SIGINT likewise.
    let (mut child, runner) = command_master(&core);
    let master = child.id() as i32;
    core.wait_count("command runner started.", 4);
    assert!(send(master, libc::SIGINT));
    core.wait_count("command runner caught SIGINT.  Stopping.", 1);
    assert!(child.wait().unwrap().success());
    assert!(!alive(runner));
    assert!(!core.env.log().contains("maximum restart limit"));
}
