//! Slices spread over several masters sharing one queue directory
//! (docs/scaling-out.md): a slice another master owns waits, and is taken
//! over when its owner dies; no part of a runner's hash space ever runs
//! under two masters at once, even with different ranges; entries flow
//! through a master kill; bad selections and layouts are refused.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

const DRAIN: Duration = Duration::from_secs(240);

/// A master with its own var dir (lock, pid file, socket, log) whose
/// queues are in `queue`, running `slices` of the runner `work`.
fn master(queue: &Path, slices: &str, extra: &str) -> Env {
    Env::with_mailman(
        &format!(
            "stop_timeout = \"3s\"\nqueue_dir = \"{}\"\nslices = [{slices}]\nowner_retry = \"200ms\"\n",
            queue.display()
        ),
        &only(&format!(
            "[runner.work]\ninstances = 4\nsleep_time = \"50ms\"\nrestart_delay = \"10ms\"\n{extra}"
        )),
    )
}

/// Every live runner of `work` of the masters with these config files:
/// (its config file, its slice `S:R`), from the processes' environments.
fn live_slices(configs: &[String]) -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    for pid in all_pids() {
        if stat(pid).is_some_and(|(state, _, _)| state == 'Z') {
            continue;
        }
        let env = environ(pid);
        let Some(spec) = env
            .iter()
            .find_map(|e| e.strip_prefix("MAILMAN_RUNNER=work:"))
        else {
            continue;
        };
        let Some(config) = env
            .iter()
            .find_map(|e| e.strip_prefix("MAILMAN_CONFIG_FILE="))
            .filter(|c| configs.iter().any(|x| x == c))
        else {
            continue;
        };
        let mut it = spec.split(':').map(|n| n.parse::<u64>().unwrap_or(0));
        let (s, r) = (it.next().unwrap_or(0), it.next().unwrap_or(1));
        out.push((config.to_string(), s, r));
    }
    out
}

/// Two runners of different masters whose shares of the hash space meet.
fn overlap(live: &[(String, u64, u64)]) -> Option<String> {
    for (i, (c1, s1, r1)) in live.iter().enumerate() {
        for (c2, s2, r2) in &live[i + 1..] {
            if c1 != c2 && s1 * r2 < (s2 + 1) * r1 && s2 * r1 < (s1 + 1) * r2 {
                return Some(format!(
                    "{c1} runs work:{s1}:{r1} while {c2} runs work:{s2}:{r2}"
                ));
            }
        }
    }
    None
}

/// Looks every 5 ms, until stopped, that no slice runs twice; records the
/// first overlap and every slice it has seen run.
struct Watchdog {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<BTreeSet<(String, u64, u64)>>>,
    thread: std::thread::JoinHandle<Option<String>>,
}

impl Watchdog {
    fn spawn(configs: Vec<String>) -> Watchdog {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let (flag, record) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            let mut first = None;
            while !flag.load(Ordering::Relaxed) {
                let live = live_slices(&configs);
                first = first.or_else(|| overlap(&live));
                record.lock().unwrap().extend(live);
                std::thread::sleep(Duration::from_millis(5));
            }
            first
        });
        Watchdog { stop, seen, thread }
    }

    /// How many of `env`'s slices it has seen run.
    fn saw(&self, env: &Env) -> usize {
        let config = env.config.display().to_string();
        let seen = self.seen.lock().unwrap();
        seen.iter().filter(|(c, _, _)| *c == config).count()
    }

    /// The first overlap it saw, if any.
    fn finish(self) -> Option<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

fn states(env: &Env) -> Vec<(String, String)> {
    let v: serde_json::Value =
        serde_json::from_str(&env.run(&["status", "--json"]).stdout).unwrap_or_default();
    v["runners"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    (
                        format!(
                            "{}:{}:{}",
                            r["name"].as_str().unwrap_or(""),
                            r["slice"],
                            r["range"]
                        ),
                        r["state"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_slice_runs_under_one_master_and_is_taken_over_when_it_dies() {
    let shared = tempfile::tempdir().unwrap();
    let queue = shared.path().join("queue");
    let record = shared.path().join("record");
    let handler = format!(
        "handler = [\"/bin/sh\", \"-c\", \"cat > /dev/null; echo \\\"$MAILMAN_ENTRY\\\" >> {}\"]\n",
        record.display()
    );
    // A runs the whole space in halves, B in quarters: every slice of B
    // meets one of A's.
    let a = master(&queue, "\"work:0:2\", \"work:1:2\"", &handler);
    let b = master(
        &queue,
        "\"work:0:4\", \"work:1:4\", \"work:2:4\", \"work:3:4\"",
        &handler,
    );
    let dog = Watchdog::spawn(
        [&a, &b]
            .iter()
            .map(|e| e.config.display().to_string())
            .collect(),
    );
    let pa = a.start(2);
    assert_eq!(b.run(&["start"]).code, 0);
    wait_until("B's four slices to wait for A", PATIENCE, || {
        let s = states(&b);
        s.len() == 4 && s.iter().all(|(_, st)| st == "waiting-for-owner")
    });
    // Who owns them, in status --json and the log.
    let v: serde_json::Value = serde_json::from_str(&b.run(&["status", "--json"]).stdout).unwrap();
    let owner = v["runners"][1]["owner"].as_str().unwrap_or("").to_string();
    assert!(
        owner.starts_with("work:0:2 held by host ") && owner.contains(&format!("pid {pa}, since ")),
        "{v}"
    );
    b.wait_log("Slice work:1:4 is another master's (work:0:2 held by host ");
    // A standby is healthy: nothing is wrong with it.
    assert_eq!(b.run(&["status", "--check"]).code, 0);

    // Entries flow; A dies mid-flow (kill -9: its runners get the
    // parent-death signal); B takes every slice over and finishes.
    let entry = shared.path().join("entry");
    fs::write(&entry, "Subject: x\n\nbody\n").unwrap();
    let mut cmd = a.cmd(&["inject", "work"]);
    cmd.args(vec![&entry; 400]);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let injected: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(injected.len(), 400);
    wait_until("A to handle some", DRAIN, || lines(&record).len() >= 20);
    // The watchdog has looked while A ran (however slow the machine).
    wait_until("the watchdog to see A's two slices", PATIENCE, || {
        dog.saw(&a) == 2
    });
    assert!(send(pa, 9));
    wait_until("B to run all four slices", PATIENCE, || {
        let s = states(&b);
        s.len() == 4 && s.iter().all(|(_, st)| st == "running")
    });
    wait_until("the watchdog to see B's four slices", PATIENCE, || {
        dog.saw(&b) == 4
    });
    b.wait_log("Slice work:0:4 is free now: taking it over (before: work:0:2 held by host ");
    wait_until("every entry handled", DRAIN, || {
        let seen: BTreeSet<String> = lines(&record).into_iter().collect();
        injected.is_subset(&seen)
    });

    // A comes back: now A waits, for B.
    let r = a.run(&["start"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    wait_until("A's slices to wait for B", PATIENCE, || {
        let s = states(&a);
        s.len() == 2 && s.iter().all(|(_, st)| st == "waiting-for-owner")
    });
    // B stops: A takes over within owner_retry.
    assert_eq!(b.run(&["stop"]).code, 0);
    wait_until("A to run again", PATIENCE, || {
        let s = states(&a);
        s.len() == 2 && s.iter().all(|(_, st)| st == "running")
    });
    assert_eq!(a.run(&["stop"]).code, 0);
    assert_eq!(dog.finish(), None, "one slice ran twice");
}

#[test]
fn the_runner_keeps_its_slice_lock() {
    // The lock is held through the runner's own descriptor too, so it
    // outlives a master that dies before its runner does.
    let shared = tempfile::tempdir().unwrap();
    let queue = shared.path().join("queue");
    let a = master(&queue, "\"work:1:4\"", "");
    let pa = a.start(1);
    let runner = runners_of(pa)[0];
    let lock = queue.join(".owners/work.lock");
    let held = |pid: i32| {
        fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| {
                d.filter_map(|e| fs::read_link(e.ok()?.path()).ok())
                    .any(|p| p == lock)
            })
            .unwrap_or(false)
    };
    // Part of work's slices on a queue no other host can see: said.
    a.wait_log("which other hosts cannot share, and this master runs only part of work's slices");
    assert!(held(pa), "the master holds {}", lock.display());
    // Twelve owner_retry (200 ms) after its start: nobody runs the other
    // three quarters of work here.
    a.wait_log("no master owns work:0:4, work:2:4, work:3:4 in ");
    assert!(held(runner), "its runner holds {} too", lock.display());
    let note = fs::read_to_string(queue.join(".owners/work.1.4.owner")).unwrap();
    assert!(note.contains(&format!("pid {pa}, since ")), "{note}");
    assert_eq!(a.run(&["stop"]).code, 0);
    assert!(!queue.join(".owners/work.1.4.owner").exists());
}

#[test]
fn bad_selections_and_layouts_are_refused() {
    let shared = tempfile::tempdir().unwrap();
    let queue = shared.path().join("queue");
    // Overlapping slices on one master, in the file.
    let env = master(&queue, "\"work:0:2\", \"work:1:4\"", "");
    let r = env.run(&["check-config"]);
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert!(
        r.stderr
            .ends_with("slices: work:0:2 and work:1:4 overlap: one slice would run twice\n")
            && r.stderr.starts_with(&format!("{}:", env.config.display())),
        "{}",
        r.stderr
    );
    assert_eq!(r.stderr.lines().count(), 1);
    // A slice outside its range; a runner that is not there.
    for (slices, says) in [
        (
            "\"work:4:4\"",
            "slices: slice must be below range, a power of 2: work:4:4",
        ),
        (
            "\"work:0:3\"",
            "slices: slice must be below range, a power of 2: work:0:3",
        ),
        ("\"nope:0:2\"", "slices: Undefined runner name: nope"),
    ] {
        let env = master(&queue, slices, "");
        let r = env.run(&["start"]);
        assert_eq!(r.code, 2, "{slices}: {}", r.stderr);
        assert!(r.stderr.contains(says), "{slices}: {}", r.stderr);
        assert!(!env.var.join("master.pid").exists());
    }
    // A retry that would spin, or never come.
    for (bad, says) in [("0s", "0s"), ("2h", "7200s")] {
        let env = Env::with_mailman(
            &format!(
                "queue_dir = \"{}\"\nowner_retry = \"{bad}\"\n",
                queue.display()
            ),
            &only(""),
        );
        let r = env.run(&["check-config"]);
        assert_eq!(r.code, 2);
        assert!(
            r.stderr.contains(&format!(
                "owner_retry must be between 100ms and 1h, not {says}"
            )),
            "{}",
            r.stderr
        );
    }
    // On the command line: master -r, overlapping.
    let env = master(&queue, "", "");
    let r = env.run(&["master", "-r", "work:0:2", "-r", "work"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("work:0:2 and work overlap: one slice would run twice"),
        "{}",
        r.stderr
    );
    // The master's own files inside the shared queue directory.
    let env = Env::with_mailman(
        &format!(
            "queue_dir = \"{}\"\nrun_dir = \"{}\"\n",
            queue.display(),
            queue.join("run").display()
        ),
        &only(""),
    );
    let r = env.run(&["start"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("run_dir ") && r.stderr.contains(" is inside queue_dir "),
        "{}",
        r.stderr
    );
}

#[test]
fn run_dir_holds_the_masters_own_files() {
    let local = tempfile::tempdir().unwrap();
    let env = Env::with_mailman(
        &format!("run_dir = \"{}\"\n", local.path().display()),
        &only("[runner.work]\nsleep_time = \"50ms\"\n"),
    );
    let r = env.run(&["start"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for f in [
        "master.pid",
        "master.sock",
        "locks/master.lck",
        "logs/mailman.log",
    ] {
        assert!(local.path().join(f).exists(), "{f} not in run_dir");
        assert!(!env.var.join(f).exists(), "{f} in the var dir");
    }
    // The queues stay in the var dir; commands find the master.
    wait_until("the runner's queue", PATIENCE, || {
        env.var.join("queue/work").is_dir()
    });
    let r = env.run(&["status"]);
    assert!(
        r.stdout.starts_with("GNU Mailman is running"),
        "{}",
        r.stdout
    );
    assert_eq!(env.run(&["stop"]).code, 0);
}

#[test]
fn slice_locks_are_on_only_where_the_queue_may_be_shared() {
    // One master with its own queue: no lock, no note.
    let env = Env::new(&only("[runner.work]\nsleep_time = \"50ms\"\n"));
    env.start(1);
    assert!(!env.var.join("queue/.owners").exists());
    assert_eq!(env.run(&["stop"]).code, 0);
    // `slices` from the environment says it may be shared: locked.
    let env = Env::new(&only("[runner.work]\nsleep_time = \"50ms\"\n"));
    let r = env
        .cmd(&["start"])
        .env("MAILMAN__MAILMAN__SLICES", "[\"work\"]")
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    wait_until("the slice's lock", PATIENCE, || {
        env.var.join("queue/.owners/work.0.1.owner").exists()
    });
    assert_eq!(env.run(&["stop"]).code, 0);
}
