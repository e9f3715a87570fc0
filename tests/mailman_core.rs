//! A drop-in master for GNU Mailman Core 3.3.10: Mailman's own Python runners
//! under our master, Mailman's own CLI against it, and the scenarios of
//! Mailman's test_master.py against our binary.
//!
//! Installs `mailman==3.3.10` (with the versions the image pins,
//! contrib/mailman-core/constraints.txt) into a virtual environment cached
//! under `target/` (about 20 s the first time); a test fails, naming what to
//! install, if that install fails. The tests run one at a time (a dozen
//! Python processes each). Also: our reading of `mailman.cfg` against what
//! Mailman itself computes from the same file.

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

/// The cached virtual environment with Mailman 3.3.10; the test fails if it
/// cannot be installed here.
fn venv() -> PathBuf {
    let venv = installed_venv();
    require(
        venv.is_some(),
        "GNU Mailman 3.3.10 from PyPI",
        "python3 -m venv target/mailman-core-3.3.10 && target/mailman-core-3.3.10/bin/pip install -c contrib/mailman-core/constraints.txt mailman==3.3.10 && cp contrib/mailman-core/constraints.txt target/mailman-core-3.3.10/.installed",
    );
    venv.unwrap_or_default()
}

fn installed_venv() -> Option<PathBuf> {
    VENV.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = root.join("target/mailman-core-3.3.10");
        // The stamp holds the constraints it was installed with.
        let pins = root.join("contrib/mailman-core/constraints.txt");
        let wanted = std::fs::read(&pins).ok()?;
        let stamp = dir.join(".installed");
        if std::fs::read(&stamp).is_ok_and(|had| had == wanted) {
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
                .args(["install", "--quiet", "--constraint"])
                .arg(&pins)
                .arg("mailman==3.3.10")
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        if !installed {
            return None;
        }
        std::fs::write(&stamp, &wanted).ok()?;
        Some(dir)
    })
    .clone()
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
    fn new(runners: &str) -> Core {
        let serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let venv = venv();
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
        Core {
            env: probe,
            venv,
            cfg,
            lmtp,
            rest,
            _serial: serial,
        }
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
    let core = Core::new("");
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
    // Mailman's own start-up can race on a fresh var dir (two runners
    // making the queue directories at once: `FileExistsError: The path
    // ... exists but is not a directory`, once in a CI run); such a runner
    // exits 1 and is restarted, and what follows counts from here.
    let crashed_at_start = core.count("[restarting]");
    let started_at_start = core.count("runner started.");
    let restarts = |json: &str| -> Vec<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        v["runners"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["restarts"].clone())
            .collect()
    };
    let restarts_at_start = restarts(&env.run(&["status", "--json"]).stdout);

    // 2. Our reopen: every runner reopens its logs and keeps its pid.
    assert_eq!(env.run(&["reopen"]).code, 0);
    core.wait_count("caught SIGHUP.  Reopening logs.", 11);
    assert_eq!(core.pids(), before);

    // 3. Our restart: every runner that honours SIGUSR1 exits 10 and comes
    // back at once, uncounted; gunicorn's rest runner takes SIGUSR1 as
    // "reopen" and keeps its pid until stop_timeout (10 s) has passed, when
    // it gets SIGTERM and is restarted too (docs/mailman-core.md). On a
    // loaded machine the eleven may take longer than that to come back.
    assert_eq!(env.run(&["restart"]).code, 0);
    core.wait_count("why: EXIT 10", 11);
    wait_until("11 new runners", SLOW, || {
        let now = core.pids();
        now.len() == 12
            && now
                .iter()
                .filter(|(n, p)| *n != "rest" && before.get(*n) != Some(p))
                .count()
                == 11
    });
    let now = core.pids();
    let escalated = || {
        env.log()
            .contains("did not restart on SIGUSR1 within 10s; sending SIGTERM")
    };
    if escalated() {
        core.wait_count("[restarting]", crashed_at_start + 12);
        assert!(env.log().contains("class: rest"), "{}", env.log());
    } else {
        assert_eq!(now["rest"], before["rest"], "rest keeps its pid");
        let n = core.count("[restarting]") - crashed_at_start;
        assert!(n == 11 || (n == 12 && escalated()), "{}", env.log());
    }
    assert!(!env.log().contains("maximum restart limit"));
    // A restart on request is not counted.
    let json = env.run(&["status", "--json"]).stdout;
    assert_eq!(restarts(&json), restarts_at_start, "{json}");

    // Every restarted runner has started (12 + 11).
    core.wait_count("runner started.", started_at_start + 11);

    // 4. kill -9 of one runner: respawned.
    let victim = now["in"] as i32;
    assert!(send(victim, 9));
    env.wait_log(&format!(
        "(pid: {victim}, why: SIGNAL 9, class: in, slice: 1/1) [restarting]"
    ));
    wait_until("a new in runner", SLOW, || {
        core.pids().get("in").is_some_and(|p| *p as i32 != victim)
    });
    let fresh = core.pids()["in"];
    // Every runner has installed its handlers again (a runner still
    // importing Python dies of SIGTERM's default action, in Mailman as
    // here): the new one has said so, and every runner is ready (the REST
    // runner finishes its imports before it accepts).
    core.wait_count(&format!("({fresh}) in runner started."), 1);
    core.wait_count("runner started.", started_at_start + 12);
    wait_until("every runner ready", SLOW, || {
        env.run(&["status", "--check"]).code == 0
    });

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
    let core = Core::new("");
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
    let core = Core::new(COMMAND_ONLY);
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

// ---- mailman.cfg read directly ----

/// Asks Mailman 3.3.10 itself what it computes from a mailman.cfg: its
/// paths, and the slices its master would start (`start_runners`' loop).
const ASK_MAILMAN: &str = r#"
import json, sys, warnings
warnings.simplefilter("ignore")
from importlib.resources import read_text
from zope.configuration import xmlconfig
xmlconfig.string(read_text('mailman.config', 'configure.zcml'))
from lazr.config import as_boolean
from mailman.config.config import Configuration
c = Configuration()
c.create_paths = False
c.load(sys.argv[1])
slices = []
for section in c.runner_configs:
    name = section.name[len('runner.'):]
    if not as_boolean(section.start):
        continue
    count = int(section.instances)
    slices += ['{}:{}:{}'.format(name, s, count) for s in range(count)]
paths = {k.lower(): v for k, v in c.paths.items()}
paths.update(pid_file=c.PID_FILE, lock_file=c.LOCK_FILE)
print(json.dumps({"paths": paths, "slices": slices}))
"#;

/// What a view of one configuration is made of.
#[derive(Debug, PartialEq)]
struct View {
    paths: std::collections::BTreeMap<String, String>,
    slices: Vec<String>,
}

const COMPARED: [&str; 6] = [
    "var_dir",
    "bin_dir",
    "queue_dir",
    "log_dir",
    "lock_file",
    "pid_file",
];

fn mailmans_view(venv: &Path, cfg: &Path, cwd: &Path, var_dir: Option<&str>) -> View {
    let mut cmd = Command::new(venv.join("bin/python3"));
    cmd.arg("-c").arg(ASK_MAILMAN).arg(cfg).current_dir(cwd);
    match var_dir {
        Some(v) => cmd.env("MAILMAN_VAR_DIR", v),
        None => cmd.env_remove("MAILMAN_VAR_DIR"),
    };
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    View {
        paths: COMPARED
            .iter()
            .map(|k| {
                (
                    k.to_string(),
                    v["paths"][k].as_str().unwrap_or("").to_string(),
                )
            })
            .collect(),
        slices: v["slices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect(),
    }
}

fn our_view(venv: &Path, cfg: &Path, cwd: &Path, var_dir: Option<&str>) -> View {
    let path = format!(
        "{}:{}",
        venv.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new(BIN);
    cmd.arg("-C")
        .arg(cfg)
        .arg("check-config")
        .current_dir(cwd)
        .env("PATH", path)
        .env_remove("MAILMAN_CONFIG_FILE");
    match var_dir {
        Some(v) => cmd.env("MAILMAN_VAR_DIR", v),
        None => cmd.env_remove("MAILMAN_VAR_DIR"),
    };
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut paths = std::collections::BTreeMap::new();
    for line in text.lines() {
        if let Some((k, v)) = line.strip_prefix("#   ").and_then(|l| l.split_once(" = "))
            && COMPARED.contains(&k)
        {
            paths.insert(k.to_string(), v.to_string());
        }
    }
    let table: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(
        table["mailman"]["var_dir"].as_str(),
        paths.get("var_dir").map(String::as_str),
        "the var dir we run is Mailman's"
    );
    let mut slices = Vec::new();
    for (name, r) in table["runner"].as_table().unwrap() {
        if r["start"].as_bool() == Some(true) {
            let n = r["instances"].as_integer().unwrap();
            slices.extend((0..n).map(|s| format!("{name}:{s}:{n}")));
            assert_eq!(
                r["command"][0].as_str().map(PathBuf::from),
                Some(PathBuf::from(&paths["bin_dir"]).join("runner")),
                "{name} runs Mailman's runner program"
            );
        }
    }
    View { paths, slices }
}

/// Our runner set and paths equal what Mailman 3.3.10 computes itself, for
/// configurations that exercise its defaults, instances, start, classes,
/// layouts, `$` interpolation, `[meta] extends`, `[DEFAULT]` and
/// `MAILMAN_VAR_DIR`.
#[test]
fn our_runners_and_paths_are_mailmans_own() {
    let venv = venv();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let cases: Vec<(&str, String, Option<&str>)> = vec![
        ("defaults", "[mailman]\nsite_owner: a@example.com\n".into(), None),
        (
            "instances",
            "[runner.in]\ninstances: 4\n[runner.out]\ninstances: 4\n[runner.bounces]\ninstances: 2\n"
                .into(),
            None,
        ),
        (
            "start",
            "[runner.archive]\nstart: no\n[runner.digest]\nstart: off\n[runner.rest]\nstart: False\n\
             [runner.nntp]\nstart: yes\n[runner.task]\nstart: disabled\n"
                .into(),
            None,
        ),
        (
            "classes",
            "[runner.archive]\nclass: mailman.runners.digest.DigestRunner\n\
             [runner.extra]\nclass: mailman.runners.command.CommandRunner\ninstances: 2\n\
             [runner.idle]\nclass: mailman.runners.fake.BadRunner\nstart: no\n"
                .into(),
            None,
        ),
        (
            "layout",
            format!("[mailman]\nlayout: site\n[paths.site]\nvar_dir: {d}/site-var\nqueue_dir: {d}/spool\n"),
            None,
        ),
        (
            "interpolation",
            "[mailman]\nlayout: deep\n[paths.deep]\nvar_dir: $cwd/../deep\nlog_dir: ${var_dir}/../log\n\
             lock_dir: $var_dir/l\nlock_file: $lock_dir/m.lck\npid_file: $data_dir/m.pid\n\
             data_dir: $var_dir/d\nbin_dir: $argv\n"
                .into(),
            None,
        ),
        (
            "extends",
            "[meta]\nextends: base.cfg\n[runner.in]\ninstances: 2\n".into(),
            None,
        ),
        (
            "fhs-queue",
            format!("[mailman]\nlayout: fhs\n[paths.fhs]\nbin_dir: $argv\nvar_dir: {d}/fhs\nqueue_dir: {d}/fhs-spool\nlog_dir: {d}/log\nlock_dir: {d}/lock\npid_file: {d}/run/m.pid\n"),
            None,
        ),
        ("env", "[mailman]\nlayout: here\n".into(), Some("/srv/from-env")),
    ];
    // What `extends` extends: the dev layout ($cfg_file/../..), and
    // [DEFAULT] keys that reach only this file's sections.
    std::fs::write(
        dir.path().join("base.cfg"),
        "[mailman]\nlayout: dev\n[DEFAULT]\nstart: no\n[runner.bounces]\n[runner.task]\n",
    )
    .unwrap();
    for (name, text, var_dir) in &cases {
        let cwd = dir.path().join(name);
        std::fs::create_dir_all(&cwd).unwrap();
        let cfg = dir.path().join(format!("{name}.cfg"));
        std::fs::write(&cfg, text).unwrap();
        let theirs = mailmans_view(&venv, &cfg, &cwd, *var_dir);
        let ours = our_view(&venv, &cfg, &cwd, *var_dir);
        assert_eq!(ours, theirs, "case {name}:\n{text}");
    }
}

/// A broken mailman.cfg is one line naming the file and line, exit 2, and
/// nothing is started or created.
#[test]
fn a_broken_mailman_cfg_is_one_line_and_nothing_starts() {
    let venv = venv();
    let dir = tempfile::tempdir().unwrap();
    let var = dir.path().join("var");
    let here = format!("[paths.here]\nvar_dir: {}\n", var.display());
    let cases = [
        (
            "syntax",
            format!("{here}[mailman]\nlayout here\n"),
            4,
            "not a section",
        ),
        (
            "layout",
            format!("{here}[mailman]\nlayout: nowhere\n"),
            4,
            "No path configuration found: paths.nowhere",
        ),
        (
            "bin_dir",
            format!("{here}bin_dir: {}\n", dir.path().display()),
            3,
            "has no runner program",
        ),
        (
            "instances",
            format!("{here}[runner.out]\ninstances: 3\n"),
            4,
            "Runner \"out\", not a power of 2: 3",
        ),
        (
            "boolean",
            format!("{here}[runner.out]\nstart: maybe\n"),
            4,
            "Invalid boolean value: maybe",
        ),
        ("header", "layout: here\n".into(), 1, "no section headers"),
    ];
    let path = format!(
        "{}:{}",
        venv.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for (name, text, line, message) in cases {
        let cfg = dir.path().join(format!("{name}.cfg"));
        std::fs::write(&cfg, &text).unwrap();
        for args in [&["start"][..], &["master"], &["check-config"]] {
            let out = Command::new(BIN)
                .arg("-C")
                .arg(&cfg)
                .args(args)
                .env("PATH", &path)
                .env_remove("MAILMAN_CONFIG_FILE")
                .env_remove("MAILMAN_VAR_DIR")
                .stdin(Stdio::null())
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{name} {args:?}: {stderr}");
            assert_eq!(
                stderr.lines().count(),
                1,
                "{name} {args:?}: one line: {stderr}"
            );
            let prefix = format!("{}:{line}: ", cfg.display());
            assert!(
                stderr.starts_with(&prefix) && stderr.contains(message),
                "{name} {args:?}: {stderr:?} should start with {prefix:?} and say {message:?}"
            );
            assert!(out.stdout.is_empty(), "{name} {args:?}: nothing on stdout");
            assert!(!var.exists(), "{name} {args:?}: nothing was created");
        }
    }
}

/// A `mailman.cfg` in `env`'s directory: Mailman's own runners with
/// `env.var` as their var dir, LMTP and REST on two free ports (returned).
fn mailman_cfg_in(env: &Env) -> (PathBuf, u16, u16) {
    let dir = env.dir.path();
    let lmtp = free_port();
    let rest = (0..100)
        .map(|_| free_port())
        .find(|p| *p != lmtp)
        .unwrap_or(lmtp + 1);
    std::fs::write(
        dir.join("gunicorn.cfg"),
        "[gunicorn]\ncontrol_socket_disable = true\n",
    )
    .unwrap();
    let cfg = dir.join("mailman.cfg");
    std::fs::write(
        &cfg,
        format!(
            "[mailman]\nlayout: here\nsite_owner: postmaster@example.com\n\
             [paths.here]\nvar_dir: {var}\n\
             [mta]\nincoming: mailman.mta.null.NullMTA\nlmtp_port: {lmtp}\n\
             [webservice]\nport: {rest}\nconfiguration: {dir}/gunicorn.cfg\n",
            var = env.var.display(),
            dir = dir.display()
        ),
    )
    .unwrap();
    (cfg, lmtp, rest)
}

/// Our CLI with `-C config`, in `dir`, Mailman's `venv` first on `PATH`.
fn our_cli(config: &Path, venv: &Path, dir: &Path, args: &[&str]) -> Ran {
    let path = format!(
        "{}:{}",
        venv.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(BIN)
        .arg("-C")
        .arg(config)
        .args(args)
        .env("PATH", &path)
        .env_remove("MAILMAN_CONFIG_FILE")
        .env_remove("MAILMAN_VAR_DIR")
        .env_remove("NOTIFY_SOCKET")
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A TOML file in `env`'s directory: Mailman's runners (a `mailman.cfg` of
/// their own) preloaded, with `extra` lines in `[mailman]`.
fn preloaded_config(env: &Env, extra: &str) -> PathBuf {
    let (cfg, _, _) = mailman_cfg_in(env);
    let toml = env.dir.path().join("preload.toml");
    std::fs::write(
        &toml,
        format!(
            "[mailman]\nmailman_cfg = \"{}\"\npreload = true\nstop_timeout = \"10s\"\n{extra}",
            cfg.display()
        ),
    )
    .unwrap();
    toml
}

/// Each runner's name and pid, as `status --json` gives them.
fn runner_pids(status_json: &str) -> std::collections::BTreeMap<String, i32> {
    let v: serde_json::Value = serde_json::from_str(status_json).unwrap_or_default();
    v["runners"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .filter_map(|r| Some((r["name"].as_str()?.into(), r["pid"].as_i64()? as i32)))
                .collect()
        })
        .unwrap_or_default()
}

/// `-C mailman.cfg` alone runs Mailman's own runners as Mailman's master
/// would: Mailman initialised once first, then every runner; health waits
/// for the LMTP and REST runners to accept connections (again after a
/// restart); Mailman's own CLI agrees with ours.
#[test]
fn a_bare_mailman_cfg_runs_mailmans_own_runners() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let venv = venv();
    // For its temporary dir and its drop guard (it kills what runs with
    // MAILMAN_VAR_DIR=<its var>); its TOML config is not used.
    let env = Env::new("");
    let dir = env.dir.path();
    let (cfg, lmtp, rest) = mailman_cfg_in(&env);
    let ours = |args: &[&str]| our_cli(&cfg, &venv, dir, args);
    let mailman = |args: &[&str]| {
        let out = Command::new(venv.join("bin/mailman"))
            .arg("-C")
            .arg(&cfg)
            .arg("--run-as-root")
            .args(args)
            .env_remove("MAILMAN_CONFIG_FILE")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let started = ours(&["start"]);
    assert_eq!(started.code, 0, "{}{}", started.stdout, started.stderr);
    let master = env.pid_from_file().expect("Mailman's master.pid");
    wait_until("every runner to be ready", SLOW, || {
        ours(&["status", "--check"]).code == 0
    });
    assert!(port_bound(lmtp) && port_bound(rest));
    let log = env.log();
    let init = log
        .find("Initialising: ")
        .expect("Mailman initialised first");
    let first = log.find("runner started.").unwrap_or(usize::MAX);
    assert!(log.contains("Initialised ("), "{log}");
    assert!(init < first, "init ran before the runners: {log}");
    let report: serde_json::Value =
        serde_json::from_str(&ours(&["status", "--json"]).stdout).unwrap();
    let runners = report["runners"].as_array().unwrap();
    assert_eq!(runners.len(), 12);
    assert!(
        runners
            .iter()
            .all(|r| r["state"] == "running" && r["ready"] == true),
        "{report}"
    );
    assert_eq!(
        mailman(&["status"]),
        format!("GNU Mailman is running (master pid: {master})\n")
    );
    assert_eq!(ours(&["status"]).stdout, mailman(&["status"]));

    // Right after a restart the LMTP runner is not ready, and health says so.
    let lmtp_pid = |report: &serde_json::Value| {
        report["runners"]
            .as_array()
            .and_then(|rs| rs.iter().find(|r| r["name"] == "lmtp"))
            .and_then(|r| r["pid"].as_i64())
    };
    let before = lmtp_pid(&report);
    assert_eq!(ours(&["restart"]).code, 0);
    wait_until("a new LMTP runner", SLOW, || {
        let now: serde_json::Value =
            serde_json::from_str(&ours(&["status", "--json"]).stdout).unwrap_or_default();
        lmtp_pid(&now).is_some_and(|p| Some(p) != before)
    });
    let check = ours(&["status", "--check"]);
    assert_eq!(check.code, 1, "{}", check.stdout);
    assert!(
        check.stdout.contains("runner lmtp:0:1 not ready yet"),
        "{}",
        check.stdout
    );
    wait_until("every runner ready again", SLOW, || {
        ours(&["status", "--check"]).code == 0
    });
    assert!(port_bound(lmtp));

    assert_eq!(ours(&["stop"]).code, 0);
    assert_eq!(mailman(&["status"]), "GNU Mailman is not running\n");
    assert!(!alive(master));
}

/// A runner stopped while it initialised can die holding Mailman's
/// database-creation lock (`locks/dbcreate.lck`, a hard link to its claim
/// `dbcreate.lck|HOST|PID|RANDOM`); Mailman waits such a lock out until its
/// lifetime ends. The master breaks it at start-up when the claim names
/// this host and a pid no process has: here a lock whose lifetime ends in
/// an hour does not hold up `init` and the runners.
#[test]
fn a_lock_left_by_a_dead_holder_does_not_hold_up_the_start() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let venv = venv();
    let env = Env::new("");
    let dir = env.dir.path();
    let (cfg, _, _) = mailman_cfg_in(&env);
    let ours = |args: &[&str]| our_cli(&cfg, &venv, dir, args);
    let locks = env.var.join("locks");
    std::fs::create_dir_all(&locks).unwrap();
    let mut gone = Command::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    let lock = locks.join("dbcreate.lck");
    let claim = format!("{}|{host}|{pid}|4242", lock.display());
    std::fs::write(&claim, &claim).unwrap();
    std::fs::hard_link(&claim, &lock).unwrap();
    // flufl.lock reads a lock's end of life from its modification time.
    let later = std::time::SystemTime::now() + Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&lock)
        .unwrap()
        .set_modified(later)
        .unwrap();

    let started = ours(&["start"]);
    assert_eq!(started.code, 0, "{}{}", started.stdout, started.stderr);
    wait_until("every runner to be ready", SLOW, || {
        ours(&["status", "--check"]).code == 0
    });
    let log = env.log();
    let removed = format!(
        "Removed Mailman's lock {}: its holder (pid {pid}) is gone",
        lock.display()
    );
    let at = log.find(&removed).expect("the stale lock broken");
    assert!(
        log.find("Initialising: ").is_some_and(|i| at < i),
        "before init: {log}"
    );
    assert!(!Path::new(&claim).exists());
    assert_eq!(ours(&["stop"]).code, 0);
}

/// Which slice of a queue a Mailman entry belongs to, as `queues --json`
/// counts them (and stall detection uses), against Mailman 3.3.10's own
/// `Switchboard.get_files` on the same directory: a few hundred random
/// digests, and the slice boundaries themselves and their neighbours
/// (where Mailman's floating-point bounds make one digest belong to two
/// slices).
#[test]
fn mailman_entry_slices_are_mailmans_own() {
    let venv = venv();
    let env = Env::new("[runner.in]\ninstances = 1\n");
    let queue = env.var.join("queue/in");
    std::fs::create_dir_all(&queue).unwrap();
    let script = r#"
import os, random, sys
from mailman.core.switchboard import Switchboard
queue = sys.argv[1]
random.seed(20261202)
digests = set(random.getrandbits(160) for _ in range(300))
top = 1 << 160
for n in (2, 4, 8, 16):
    for s in range(1, n):
        b = top * s // n
        digests.update((b - 1, b, b + 1))
digests.update((0, 1, top - 1))
for i, d in enumerate(sorted(digests)):
    name = "%d.%06d+%040x.pck" % (1700000000 + i, i, d)
    open(os.path.join(queue, name), "w").close()
for n in (1, 2, 4, 8, 16):
    counts = [len(Switchboard("in", queue, s if n > 1 else None, n).get_files()) for s in range(n)]
    print(n, " ".join(map(str, counts)))
"#;
    let out = Command::new(venv.join("bin/python"))
        .args(["-c", script])
        .arg(&queue)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mailmans = String::from_utf8(out.stdout).unwrap();
    let mut ours = String::new();
    for n in [1, 2, 4, 8, 16] {
        let set = format!("runner.in.instances={n}");
        let r = env.run(&["--set", &set, "queues", "--json"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        let q = v["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["name"] == "in")
            .unwrap();
        let counts: Vec<String> = q["slices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["waiting"].to_string())
            .collect();
        ours.push_str(&format!("{n} {}\n", counts.join(" ")));
    }
    assert_eq!(ours, mailmans);
    // Boundary digests were counted twice, as Mailman does.
    assert!(mailmans.lines().nth(1).is_some_and(|l| {
        let total: usize = l
            .split(' ')
            .skip(1)
            .map(|c| c.parse::<usize>().unwrap())
            .sum();
        total > 300 + 24 + 3
    }));
}

/// `[mailman] preload`: Mailman's runners forked from one helper that has
/// imported Mailman and read its configuration; each is the master's child
/// in a group of its own, logs as itself, and is supervised as any runner.
/// A change to mailman.cfg makes the helper step down (the runner asked for
/// meanwhile starts without it) and a new one read it. A stop leaves nothing.
#[test]
fn preloaded_runners_are_mailmans_own_under_our_master() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let venv = venv();
    let env = Env::new("");
    let dir = env.dir.path();
    let toml = preloaded_config(&env, "");
    let cfg = dir.join("mailman.cfg");
    let ours = |args: &[&str]| our_cli(&toml, &venv, dir, args);
    let pids = || runner_pids(&ours(&["status", "--json"]).stdout);
    let forked = |pid: i32| cmdline(pid).contains("MAILMAN_PRELOAD_SCRIPT");
    // The helper works in the var dir, and searches for modules as the
    // `runner` program does: not in its working directory.
    std::fs::create_dir_all(&env.var).unwrap();
    std::fs::write(env.var.join("mailman.py"), "raise SystemExit('shadowed')\n").unwrap();
    let started = ours(&["start"]);
    assert_eq!(started.code, 0, "{}{}", started.stdout, started.stderr);
    let master = env.pid_from_file().expect("master.pid");
    wait_until("every runner to be ready", SLOW, || {
        ours(&["status", "--check"]).code == 0
    });
    let log = env.log();
    let ready = log
        .find("is ready: runners are forked from it")
        .expect("the helper loaded");
    // `init` (Mailman's `runner --list`), on this fresh var dir, forked from
    // the helper once it had loaded and read the configuration (making
    // Mailman's directories); the runners only after it succeeded.
    assert_eq!(log.matches("Initialising: ").count(), 1, "{log}");
    assert!(
        log.contains("--list (forked from the preload helper)"),
        "{log}"
    );
    let initialised = log.find("Initialised (").expect("init succeeded");
    let first = log.find(" runner started.").expect("a runner started");
    assert!(ready < initialised && initialised < first, "{log}");
    // What each runner would do for itself before its first query was done
    // once: the SQLite driver loaded, the schema migrations read; and the
    // modules that need the configuration (the REST API's) imported.
    let loaded = log[..ready]
        .lines()
        .rfind(|l| l.contains("preloaded "))
        .unwrap_or_default();
    assert!(
        loaded.contains("the database driver (sqlite3") && loaded.contains(" schema migrations"),
        "{log}"
    );
    let configured = loaded
        .split_once(" modules (")
        .and_then(|(_, rest)| rest.split_once(" once configured)"))
        .and_then(|(n, _)| n.parse::<u32>().ok());
    assert!(configured.is_some_and(|n| n > 0), "{loaded}");
    assert!(!log.contains("each runner does it itself"), "{log}");
    // A fresh var dir has no code cache: the helper writes one.
    assert!(
        loaded.contains("modules cached for the next start"),
        "{loaded}"
    );
    assert!(env.var.join("preload.cache").is_file());
    // What it loaded is made immortal where its Python can (3.12, 3.13),
    // and the log says which.
    let version = std::process::Command::new(venv.join("bin/python3"))
        .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if version == "3.12" || version == "3.13" {
        assert!(loaded.contains(" objects made immortal in "), "{loaded}");
    } else {
        let mortal = format!(
            "objects left mortal (immortal ones need CPython 3.12 or 3.13; this is Python {version})"
        );
        assert!(loaded.contains(&mortal), "{loaded}");
    }
    let before = pids();
    assert_eq!(before.len(), 12, "{before:?}");
    for (name, &pid) in &before {
        assert!(forked(pid), "{name} (pid {pid}): {}", cmdline(pid));
        // The master knows a runner's pid before the helper's intermediate
        // child has exited; the runner says it started only once the master
        // is its parent (`runner` in helper.py), so that is waited for first.
        let needle = format!("({pid}) {name} runner started.");
        wait_until(&needle, SLOW, || env.log().contains(&needle));
        assert_eq!(stat(pid).map(|s| (s.1, s.2)), Some((master, pid)), "{name}");
        // Mailman's runners' environment, as a plain spawn gives it.
        assert!(environ(pid).contains(&"MAILMAN_UNDER_MASTER_CONTROL=1".to_string()));
    }

    // kill -9: back, from the helper, logged as itself.
    let victim = before["command"];
    assert!(send(victim, 9));
    wait_until("a new command runner", SLOW, || {
        pids().get("command").is_some_and(|p| *p != victim)
    });
    let fresh = pids()["command"];
    assert!(forked(fresh));
    let needle = format!("({fresh}) command runner started.");
    wait_until(&needle, SLOW, || env.log().contains(&needle));

    // mailman.cfg changes: the next runner asked for starts without the
    // helper, which makes way for one that reads the file again.
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{text}# changed\n")).unwrap();
    let victim = fresh;
    assert!(send(victim, 9));
    wait_until("a new command runner", SLOW, || {
        pids().get("command").is_some_and(|p| *p != victim)
    });
    let plain = pids()["command"];
    assert!(!forked(plain), "{}", cmdline(plain));
    wait_until("a new helper, ready", SLOW, || {
        env.log()
            .matches("is ready: runners are forked from it")
            .count()
            == 2
    });
    assert!(
        env.log()
            .contains("saw Mailman's configuration change: starting a new one"),
        "{}",
        env.log()
    );
    // The new helper read its modules' code from the first one's cache,
    // which held every module it imported (nothing more to cache).
    let log = env.log();
    let second = log
        .lines()
        .filter(|l| l.contains("[preload] preloaded "))
        .nth(1)
        .unwrap_or_default();
    assert!(
        second.contains(" modules from the code cache")
            && !second.contains("cached for the next start"),
        "{second}\n{log}"
    );
    let victim = pids()["archive"];
    assert!(send(victim, 9));
    wait_until("a new archive runner", SLOW, || {
        pids().get("archive").is_some_and(|p| *p != victim)
    });
    assert!(forked(pids()["archive"]));

    // Stop: every runner and the helper end; nothing is left.
    let r = ours(&["stop"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!alive(master));
    let log = env.log();
    let after = &log[log.rfind("Master watcher got a stop request").unwrap_or(0)..];
    assert!(!after.contains("SIGKILL"), "{after}");
    let marker = format!("MAILMAN_VAR_DIR={}", env.var.display());
    let left: Vec<i32> = all_pids()
        .into_iter()
        .filter(|p| alive(*p) && environ(*p).contains(&marker))
        .collect();
    assert!(left.is_empty(), "left running: {left:?}");
}

/// `init` waits for the preload helper to fork it; a helper that dies
/// before it could (killed as it loads) does not hold up the start: `init`
/// runs as a process of its own, and the next helper reads Mailman's
/// configuration only after it has succeeded.
#[test]
fn preloaded_init_runs_without_a_helper_that_died() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let venv = venv();
    let env = Env::new("");
    let dir = env.dir.path();
    let toml = preloaded_config(&env, "");
    let ours = |args: &[&str]| our_cli(&toml, &venv, dir, args);
    let start = std::thread::spawn({
        let (toml, venv, dir) = (toml.clone(), venv.clone(), dir.to_path_buf());
        move || our_cli(&toml, &venv, &dir, &["start"])
    });
    // The helper's pid, as soon as it is logged: it takes seconds to load.
    let mut helper = 0;
    wait_until("the helper to start", SLOW, || {
        let log = env.log();
        helper = log
            .split_once("Preload helper started (pid ")
            .and_then(|(_, rest)| rest.split_once(')'))
            .and_then(|(pid, _)| pid.parse().ok())
            .unwrap_or(0);
        helper > 0
    });
    assert!(send(helper, 9));
    let started = start.join().unwrap();
    assert_eq!(started.code, 0, "{}{}", started.stdout, started.stderr);
    wait_until("every runner to be ready", SLOW, || {
        ours(&["status", "--check"]).code == 0
    });
    // The runners started plainly may all be ready before the next helper
    // has loaded (it waits for `init`, then takes seconds).
    wait_until("the next helper to be ready", SLOW, || {
        env.log().contains("is ready: runners are forked from it")
    });
    let log = env.log();
    let died = log
        .find(&format!("Preload helper (pid {helper}) exited"))
        .expect("the helper's death logged");
    let plain = log[died..]
        .find("Initialising: ")
        .map(|i| i + died)
        .expect("init run plainly after the helper died");
    assert!(
        !log[plain..]
            .lines()
            .next()
            .unwrap_or_default()
            .contains("forked"),
        "{log}"
    );
    let initialised = log.find("Initialised (").expect("init succeeded");
    let loaded = log
        .find("is ready: runners are forked from it")
        .expect("a new helper");
    let configured = log.rfind("preloaded ").expect("the new helper's load");
    assert!(
        plain < initialised && initialised < configured && configured < loaded,
        "{log}"
    );
    assert!(!log.contains("FileExistsError"), "{log}");
    let r = ours(&["stop"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

/// The host's same-page merging, on for one test and put back as it was.
struct KsmOn {
    run: String,
    pages: String,
}

const KSM: &str = "/sys/kernel/mm/ksm";

impl KsmOn {
    fn new() -> KsmOn {
        let read = |f: &str| std::fs::read_to_string(format!("{KSM}/{f}"));
        let (run, pages) = (read("run"), read("pages_to_scan"));
        require(
            run.is_ok() && pages.is_ok() && nix::unistd::geteuid().is_root(),
            "the kernel's same-page merging (/sys/kernel/mm/ksm, CONFIG_KSM) and root to turn it on",
            "run the tests as root on such a kernel",
        );
        let on = KsmOn {
            run: run.unwrap(),
            pages: pages.unwrap(),
        };
        // Ten times the default scan rate: merged within seconds, not minutes.
        std::fs::write(format!("{KSM}/pages_to_scan"), "1000").unwrap();
        std::fs::write(format!("{KSM}/run"), "1").unwrap();
        on
    }
}

impl Drop for KsmOn {
    fn drop(&mut self) {
        let _ = std::fs::write(format!("{KSM}/run"), self.run.trim());
        let _ = std::fs::write(format!("{KSM}/pages_to_scan"), self.pages.trim());
    }
}

/// One field of /proc/PID/smaps_rollup or /proc/PID/ksm_stat.
fn proc_field(pid: i32, file: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// `merge_pages = true` with preloaded runners: the helper's memory, and so
/// every runner's, is offered to the kernel's same-page merging; with the
/// host's KSM on, identical pages (reference counts that went up and back
/// down, the same objects made the same way in each runner) are merged, and
/// the runners' PSS falls by a fifth or more.
#[test]
fn preloaded_runners_identical_pages_are_merged() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let venv = venv();
    let env = Env::new("");
    let dir = env.dir.path();
    let toml = preloaded_config(&env, "merge_pages = true\n");
    let ours = |args: &[&str]| our_cli(&toml, &venv, dir, args);
    let pids = || -> Vec<i32> {
        runner_pids(&ours(&["status", "--json"]).stdout)
            .into_values()
            .collect()
    };
    let started = ours(&["start"]);
    assert_eq!(started.code, 0, "{}{}", started.stdout, started.stderr);
    wait_until("every runner to be ready", SLOW, || {
        ours(&["status", "--check"]).code == 0
    });
    let runners = pids();
    assert_eq!(runners.len(), 12, "{runners:?}");
    for pid in &runners {
        let needle = format!("({pid}) ");
        wait_until("the runner started", SLOW, || {
            env.log()
                .lines()
                .any(|l| l.contains(&needle) && l.contains("runner started."))
        });
    }
    let log = env.log();
    assert!(
        log.contains("offered to the kernel's same-page merging"),
        "{log}"
    );
    assert!(
        log.contains(", memory offered to same-page merging"),
        "{log}"
    );
    let merge_any = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/ksm_stat"))
            .is_ok_and(|s| s.contains("ksm_merge_any: yes"))
    };
    assert!(runners.iter().all(|&p| merge_any(p)), "{runners:?}");
    let pss = || -> u64 {
        runners
            .iter()
            .map(|&p| proc_field(p, "smaps_rollup", "Pss:"))
            .sum()
    };
    let before = pss();

    let _ksm = KsmOn::new();
    // Every runner has at least 1 MiB merged (256 pages)…
    wait_until("every runner's pages merged", SLOW, || {
        runners
            .iter()
            .all(|&p| proc_field(p, "ksm_stat", "ksm_merging_pages") >= 256)
    });
    // …and together they hold a fifth less.
    wait_until("the runners' PSS to fall", SLOW, || pss() * 5 <= before * 4);
    assert_eq!(pids(), runners, "no runner was restarted meanwhile");
    let r = ours(&["stop"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

/// The preload helper's code cache (docs/mailman-core.md): garbage in its
/// place is replaced by a cache the next helper reads; a cache that cannot
/// be written (a directory in its place) is said in the helper's log line
/// and nothing is left behind; either way every runner starts from the
/// helper.
#[test]
fn a_preload_code_cache_that_is_garbage_or_cannot_be_written() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let venv = venv();
    let env = Env::new("");
    let dir = env.dir.path();
    let toml = preloaded_config(&env, "");
    let ours = |args: &[&str]| our_cli(&toml, &venv, dir, args);
    let cache = env.var.join("preload.cache");
    let run = |expect: &str| {
        let started = ours(&["start"]);
        assert_eq!(started.code, 0, "{}{}", started.stdout, started.stderr);
        wait_until("every runner to be ready", SLOW, || {
            ours(&["status", "--check"]).code == 0
        });
        let log = env.log();
        let line = log
            .lines()
            .rfind(|l| l.contains("[preload] preloaded "))
            .unwrap_or_default();
        assert!(line.contains(expect), "{line}\n{log}");
        let line = line.to_string();
        let pids = runner_pids(&ours(&["status", "--json"]).stdout);
        assert_eq!(pids.len(), 12, "{pids:?}");
        for (name, &pid) in &pids {
            assert!(cmdline(pid).contains("MAILMAN_PRELOAD_SCRIPT"), "{name}");
        }
        assert_eq!(ours(&["stop"]).code, 0);
        line
    };
    std::fs::create_dir_all(&env.var).unwrap();
    std::fs::write(&cache, "garbage").unwrap();
    run("modules cached for the next start");
    assert!(std::fs::metadata(&cache).unwrap().len() > 100_000);
    // Every module came from it: nothing more to cache.
    let line = run("modules from the code cache");
    assert!(!line.contains("cached for the next start"), "{line}");
    std::fs::remove_file(&cache).unwrap();
    std::fs::create_dir(&cache).unwrap();
    run("no code cache written (IsADirectoryError");
    let left: Vec<String> = std::fs::read_dir(&env.var)
        .unwrap()
        .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
