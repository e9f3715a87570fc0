//! Helpers for the integration tests: a temporary var dir and config per
//! test, the real binary, /proc inspection, deadline polling, and a drop
//! guard that kills whatever the test started, even when it fails.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_mailman");

/// A port on 127.0.0.1 free now, below the ephemeral range (32768 and up
/// here), so that no other test's outgoing connection takes it before the
/// master listens on it (as a port the kernel handed out for `:0` can be).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 600) as u16 * 20;
    loop {
        let port = 20_000 + (base - 20_000 + NEXT.fetch_add(1, Ordering::Relaxed)) % 12_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Generous: the machine may be a loaded 2-core box.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

const ALL_BUILTIN: &[&str] = &[
    "archive", "bad", "bounces", "command", "in", "lmtp", "nntp", "out", "pipeline", "rest",
    "retry", "shunt", "task", "virgin", "digest",
];

/// A config that starts nothing: every built-in runner (and the seed's `news`)
/// with `start = false`.
pub const NO_RUNNERS: &str = "\
[runner.archive]\nstart = false\n[runner.bounces]\nstart = false\n\
[runner.command]\nstart = false\n[runner.in]\nstart = false\n\
[runner.lmtp]\nstart = false\n[runner.news]\nstart = false\n\
[runner.out]\nstart = false\n[runner.pipeline]\nstart = false\n\
[runner.rest]\nstart = false\n[runner.retry]\nstart = false\n\
[runner.virgin]\nstart = false\n[runner.digest]\nstart = false\n\
[runner.task]\nstart = false\n";

/// Only the runners `runners` defines: every other built-in one is off.
pub fn only(runners: &str) -> String {
    let mut out = String::new();
    for name in ALL_BUILTIN {
        if !runners.contains(&format!("[runner.{name}]")) {
            out.push_str(&format!("[runner.{name}]\nstart = false\n"));
        }
    }
    out.push_str(runners);
    out
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub var: PathBuf,
}

pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    fn from(out: Output) -> Ran {
        Ran {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Env {
    /// A temp dir with `mailman.toml` (var_dir = `<tmp>/var`, a fast
    /// stop_timeout) followed by `extra`.
    pub fn new(extra: &str) -> Env {
        Env::with_mailman("stop_timeout = \"3s\"\n", extra)
    }

    /// Like `new`, with more keys for the `[mailman]` table.
    pub fn with_mailman(mailman_keys: &str, extra: &str) -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let var = dir.path().join("var");
        let config = dir.path().join("mailman.toml");
        let text = format!(
            "[mailman]\nvar_dir = \"{}\"\n{mailman_keys}\n[logging]\nstderr = false\n\n{extra}",
            var.display()
        );
        fs::write(&config, text).expect("write config");
        Env { dir, config, var }
    }

    /// Replaces `from` with `to` in the config file.
    pub fn edit_config(&self, from: &str, to: &str) {
        let text = fs::read_to_string(&self.config).expect("read config");
        assert!(text.contains(from), "{from:?} not in the config");
        fs::write(&self.config, text.replace(from, to)).expect("write config");
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("-C").arg(&self.config).args(args);
        c.env_remove("MAILMAN_CONFIG_FILE")
            .env_remove("MAILMAN_VAR_DIR")
            .env_remove("NOTIFY_SOCKET")
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Ran {
        Ran::from(self.cmd(args).output().expect("run mailman"))
    }

    pub fn pid_file(&self) -> PathBuf {
        self.var.join("master.pid")
    }

    pub fn log_file(&self) -> PathBuf {
        self.var.join("logs/mailman.log")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_file()).unwrap_or_default()
    }

    /// The pid in master.pid, if it holds one.
    pub fn pid_from_file(&self) -> Option<i32> {
        fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// `start -q` with the configuration read from a pipe, as bash gives
    /// it (`-C <(cat mailman.toml)`), from the test's directory; checked.
    pub fn start_from_pipe(&self) {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "exec {BIN} -C <(cat {}) start -q",
                self.config.display()
            ))
            .env_remove("MAILMAN_VAR_DIR")
            .env_remove("MAILMAN_CONFIG_FILE")
            .current_dir(self.dir.path())
            .output()
            .expect("run bash");
        let r = Ran::from(out);
        assert_eq!(r.code, 0, "start failed: {}{}", r.stdout, r.stderr);
    }

    /// `start`, checked; returns the master's pid once its runners are up
    /// (`expect` children, each past its `execve`: a child is seen before
    /// it, still with the master's command line).
    pub fn start(&self, expect: usize) -> i32 {
        let r = self.run(&["start"]);
        assert_eq!(r.code, 0, "start failed: {}{}", r.stdout, r.stderr);
        let pid = self.pid_from_file().expect("pid file after start");
        let own = cmdline(pid);
        wait_until("runners to start", PATIENCE, || {
            let runners = runners_of(pid);
            // Past its exec: not the master's command line, and not the
            // empty one /proc shows while the exec replaces it.
            runners.len() == expect
                && runners.iter().all(|&p| {
                    let line = cmdline(p);
                    !line.is_empty() && line != own
                })
        });
        pid
    }

    /// The port the master's HTTP endpoint listens on, as its log says
    /// (the last start's `Serving … on http://HOST:PORT`; read from the log,
    /// not asked over the control socket, whose connection would take one
    /// of the master's descriptors). Tests configure port 0: the master's
    /// own bind picks the port, so nothing can take it between a check and
    /// the bind (as happened once with [`free_port`]).
    pub fn http_port(&self) -> u16 {
        const SERVING: &str = "Serving /metrics, /livez and /readyz on http://";
        self.wait_log(SERVING);
        let log = self.log();
        log.lines()
            .rev()
            .find_map(|l| l.split_once(SERVING))
            .and_then(|(_, addr)| addr.trim().rsplit_once(':'))
            .and_then(|(_, p)| p.parse().ok())
            .filter(|&p: &u16| p != 0)
            .unwrap_or_else(|| panic!("no HTTP port in the log:\n{log}"))
    }

    /// What `status` prints (and `stop` on stderr) when no master runs here.
    pub fn not_running(&self) -> String {
        format!(
            "GNU Mailman is not running\n(no master holds {})\n",
            self.var.join("locks/master.lck").display()
        )
    }

    pub fn wait_log(&self, needle: &str) {
        wait_until(&format!("log line {needle:?}"), PATIENCE, || {
            self.log().contains(needle)
        });
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Kill every process this test's var dir started, master first.
        if let Some(pid) = self.pid_from_file()
            && is_master_of(pid, &self.var)
        {
            send(pid, 9);
        }
        let marker = format!("MAILMAN_VAR_DIR={}", self.var.display());
        for pid in all_pids() {
            if environ(pid).contains(&marker) {
                send(pid, 9);
            }
        }
    }
}

fn is_master_of(pid: i32, var: &Path) -> bool {
    let marker = format!("MAILMAN_VAR_DIR={}", var.display());
    (cmdline(pid).contains("master") || cmdline(pid).contains("start"))
        && (environ(pid).contains(&marker) || cmdline(pid).contains(BIN))
}

/// Sends `sig` to `pid`; true if it was delivered.
pub fn send(pid: i32, sig: i32) -> bool {
    let Ok(sig) = nix::sys::signal::Signal::try_from(sig) else {
        return false;
    };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).is_ok()
}

pub fn all_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// (state, ppid, pgid) from /proc/PID/stat.
pub fn stat(pid: i32) -> Option<(char, i32, i32)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    let pgid = f.next()?.parse().ok()?;
    Some((state, ppid, pgid))
}

/// Alive and not a zombie.
pub fn alive(pid: i32) -> bool {
    matches!(stat(pid), Some((s, _, _)) if s != 'Z')
}

/// No thread of it is left running: what it held (its lock, its files) is
/// given back. A process whose first thread is a zombie may still have
/// others exiting, and its files are closed by the last one (closing an
/// inotify descriptor, say, waits for the kernel).
pub fn all_threads_gone(pid: i32) -> bool {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    tasks.filter_map(|t| t.ok()).all(|t| {
        fs::read_to_string(t.path().join("stat")).map_or(true, |s| {
            s.rfind(')')
                .and_then(|i| s[i + 2..].chars().next())
                .is_none_or(|state| state == 'Z' || state == 'X')
        })
    })
}

/// Whether `pid` holds `env`'s master lock (an flock, in /proc/locks).
pub fn holds_lock(pid: i32, env: &Env) -> bool {
    use std::os::unix::fs::MetadataExt;
    let ino = fs::metadata(env.var.join("locks").join("master.lck"))
        .unwrap()
        .ino();
    fs::read_to_string("/proc/locks").unwrap().lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 5
            && f[1] == "FLOCK"
            && f[4] == pid.to_string()
            && f[5].rsplit(':').next() == Some(&ino.to_string())
    })
}

pub fn cmdline(pid: i32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .replace('\0', " ")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

pub fn environ(pid: i32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/environ"))
        .map(|b| {
            b.split(|c| *c == 0)
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Live (non-zombie) children of `pid`, sorted.
pub fn runners_of(pid: i32) -> Vec<i32> {
    let mut kids: Vec<i32> = all_pids()
        .into_iter()
        .filter(|p| matches!(stat(*p), Some((s, ppid, _)) if ppid == pid && s != 'Z'))
        .collect();
    kids.sort();
    kids
}

/// Zombie children of `pid`.
pub fn zombies_of(pid: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|p| matches!(stat(*p), Some(('Z', ppid, _)) if ppid == pid))
        .collect()
}

/// Every live process in process group `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|p| matches!(stat(*p), Some((s, _, g)) if g == pgid && s != 'Z'))
        .collect()
}

/// Lines of a file written by a test runner (one per start).
pub fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// A bystander process that records every signal it gets (one name per line
/// after `ready`) in a file; killed on drop, even when a test fails.
pub struct Witness {
    child: std::process::Child,
    pub record: PathBuf,
}

impl Witness {
    pub fn spawn(dir: &Path) -> Witness {
        let record = dir.join("witness.log");
        let script = format!(
            "for s in HUP TERM USR1 INT QUIT; do trap \"echo $s >> {f}\" $s; done; \
             echo ready >> {f}; while true; do sleep 0.05; done",
            f = record.display()
        );
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the witness");
        let w = Witness { child, record };
        wait_until("the witness to be ready", PATIENCE, || {
            w.heard() == ["ready"]
        });
        w
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// `["ready"]` as long as no signal arrived.
    pub fn heard(&self) -> Vec<String> {
        lines(&self.record)
    }
}

impl Drop for Witness {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fails the test, naming what to install, when `ok` is false: a test whose
/// requirement is missing never passes by skipping (`.ci/run` installs
/// every requirement; tests/README.md lists them).
pub fn require(ok: bool, what: &str, install: &str) {
    assert!(
        ok,
        "this test needs {what}, which is missing here: {install} (see tests/README.md)"
    );
}

/// A Docker engine that answers, and docker-compose.
pub fn require_docker() {
    let answers = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    require(
        answers("docker", &["info"]),
        "a Docker engine that answers `docker info`",
        "install Docker Engine and start its daemon",
    );
    require(
        answers("docker-compose", &["version"]),
        "docker-compose",
        "apt-get install docker-compose",
    );
}
