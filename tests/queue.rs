//! Queue work of the built-in runner (docs/queues.md): slices own entries by hash,
//! handlers decide where an entry goes, a crash loses nothing, and `inject`
//! leaves nothing half-written. Real runners, real handlers (`sh`), real
//! kill -9s, real full and read-only file systems.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

/// How long a queue may take to drain on a loaded 2-core machine.
const DRAIN: Duration = Duration::from_secs(240);

/// Restart settings for runners a test kills on purpose: quick, and never
/// given up.
const CRASHY: &str = "restart_delay = \"10ms\"\nrestart_delay_max = \"50ms\"\nmax_restarts = 1000000\nsleep_time = \"50ms\"\n";

fn queue_dir(env: &Env, name: &str) -> PathBuf {
    env.var.join("queue").join(name)
}

/// File names in `dir` (empty if it does not exist).
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The base names (`<time>+<sha1>`) of the files in `dir` ending in `ext`.
fn bases(dir: &Path, ext: &str) -> Vec<String> {
    names(dir)
        .into_iter()
        .filter_map(|n| n.strip_suffix(ext).map(str::to_string))
        .collect()
}

/// `inject QUEUE FILE...`, checked; the entry names it printed.
fn inject(env: &Env, queue: &str, files: &[&Path]) -> Vec<String> {
    let mut cmd = env.cmd(&["inject", queue]);
    cmd.args(files);
    let out = cmd.output().expect("run inject");
    assert!(
        out.status.success(),
        "inject failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(printed.len(), files.len());
    printed
}

/// The slice of `range` (a power of 2) that owns the entry `name`, from
/// its hash's top bits, computed here independently of the binary.
fn owner(name: &str, range: u32) -> u32 {
    let hex = &name[name.find('+').expect("a + in the name") + 1..][..8];
    let top = u32::from_str_radix(hex, 16).expect("hex");
    if range == 1 {
        0
    } else {
        top >> (32 - range.trailing_zeros())
    }
}

/// A handler that appends `"$MAILMAN_RUNNER $MAILMAN_ENTRY"` to `record`.
fn recording_handler(record: &Path) -> String {
    format!(
        "handler = [\"/bin/sh\", \"-c\", \"cat > /dev/null; echo \\\"$MAILMAN_RUNNER $MAILMAN_ENTRY\\\" >> {}\"]\n",
        record.display()
    )
}

/// Test 1: 4 slices over 1,000 entries: each entry handled exactly once,
/// by the slice its hash says.
#[test]
fn four_slices_handle_each_entry_once_by_owner() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("record");
    let env = Env::new(&only(&format!(
        "[runner.work]\ninstances = 4\nsleep_time = \"50ms\"\n{}",
        recording_handler(&record)
    )));
    let master = env.start(4);
    let file = dir.path().join("entry");
    fs::write(&file, "Subject: hello\n\nbody\n").unwrap();
    let files = vec![file.as_path(); 1000];
    let injected: BTreeSet<String> = inject(&env, "work", &files).into_iter().collect();
    assert_eq!(injected.len(), 1000, "entry names are unique");
    wait_until("1,000 records", DRAIN, || lines(&record).len() >= 1000);
    // Let any straggler (a second handling would be a bug) show up.
    wait_until("the queue to empty", DRAIN, || {
        names(&queue_dir(&env, "work")).is_empty()
    });
    let rows = lines(&record);
    assert_eq!(rows.len(), 1000, "each entry handled once");
    let mut per_slice = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for row in &rows {
        let (runner, entry) = row.split_once(' ').expect("runner and entry");
        let slice: u32 = runner.split(':').nth(1).unwrap().parse().unwrap();
        assert_eq!(slice, owner(entry, 4), "{entry} handled by slice {slice}");
        assert!(seen.insert(entry.to_string()), "{entry} handled twice");
        *per_slice.entry(slice).or_insert(0) += 1;
    }
    assert_eq!(seen, injected);
    assert_eq!(per_slice.len(), 4, "every slice had work: {per_slice:?}");
    assert_eq!(runners_of(master).len(), 4);
    assert_eq!(env.run(&["stop"]).code, 0);
}

/// Test 2: 10,000 entries through in (2 slices, no handler, next = out) and
/// out (2 slices, recording), while a random runner is kill -9ed every
/// 100 ms: none is lost. At-least-once: duplicates are counted, not failed.
#[test]
fn kill_9_every_100ms_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("record");
    let env = Env::new(&only(&format!(
        "[runner.in]\ninstances = 2\nnext = \"out\"\n{CRASHY}\
         [runner.out]\ninstances = 2\n{CRASHY}{}",
        recording_handler(&record)
    )));
    let master = env.start(4);
    let file = dir.path().join("entry");
    fs::write(&file, "x".repeat(512)).unwrap();
    // 10,000 entries, in 20 batches over about 5 s, so that the queues are
    // in motion all the while the kills go on.
    let injector = {
        let (config, file) = (env.config.clone(), file.clone());
        std::thread::spawn(move || {
            let mut names = Vec::new();
            for _ in 0..20 {
                let out = Command::new(BIN)
                    .arg("-C")
                    .arg(&config)
                    .arg("inject")
                    .arg("in")
                    .args(std::iter::repeat_n(&file, 500))
                    .output()
                    .expect("run inject");
                assert!(out.status.success(), "inject failed");
                names.extend(
                    String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .map(str::to_string),
                );
                std::thread::sleep(Duration::from_millis(250));
            }
            names
        })
    };
    // Drained: nothing waits or is in hand in either queue.
    let drained = || {
        ["in", "out"].iter().all(|q| {
            names(&queue_dir(&env, q))
                .iter()
                .all(|n| !n.ends_with(".msg") && !n.ends_with(".bak"))
        })
    };
    // A kill -9 every 100 ms while entries are coming in.
    let mut kills = 0;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    while !injector.is_finished() {
        let kids = runners_of(master);
        if !kids.is_empty() {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let victim = kids[(rng % kids.len() as u64) as usize];
            if send(victim, 9) {
                kills += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let injected: BTreeSet<String> = injector.join().expect("injector").into_iter().collect();
    assert_eq!(injected.len(), 10_000);
    assert!(kills >= 30, "only {kills} kills");
    wait_until("in and out to drain", DRAIN, drained);
    wait_until("every runner back", PATIENCE, || {
        runners_of(master).len() == 4
    });

    let rows = lines(&record);
    let mut recorded = BTreeSet::new();
    let mut twice = 0;
    for row in &rows {
        let entry = row.split_once(' ').expect("runner and entry").1;
        assert!(injected.contains(entry), "recorded a stranger: {entry}");
        if !recorded.insert(entry.to_string()) {
            twice += 1;
        }
    }
    let bad: BTreeSet<String> = bases(&queue_dir(&env, "bad"), ".psv")
        .into_iter()
        .map(|b| format!("{b}.msg"))
        .collect();
    let shunted: BTreeSet<String> = bases(&queue_dir(&env, "shunt"), ".msg")
        .into_iter()
        .map(|b| format!("{b}.msg"))
        .collect();
    let lost: Vec<&String> = injected
        .iter()
        .filter(|e| !recorded.contains(*e) && !bad.contains(*e) && !shunted.contains(*e))
        .collect();
    println!(
        "kill -9s: {kills}; recorded: {} distinct, {twice} handled twice; bad: {}; shunt: {}; lost: {}",
        recorded.len(),
        bad.len(),
        shunted.len(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "{} entries lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(3)]
    );
    // No stray files: recovery counts of finished entries are gone too,
    // once every slice has started again after its last kill.
    for q in ["in", "out"] {
        let left: Vec<String> = names(&queue_dir(&env, q))
            .into_iter()
            .filter(|n| !n.ends_with(".rec"))
            .collect();
        assert!(left.is_empty(), "left in {q}: {left:?}");
    }
    assert!(
        env.log().contains("returned to the queue"),
        "no recovery seen"
    );
    assert_eq!(env.run(&["stop"]).code, 0);
}

/// Test 3: a poison entry that kills its runner is moved to bad/ on its
/// third recovery; the runner goes on with the others.
#[test]
fn poison_entry_ends_in_bad_after_three_recoveries() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("record");
    let env = Env::new(&only(&format!(
        "[runner.work]\n{CRASHY}handler = [\"/bin/sh\", \"-c\", \
         \"if grep -q POISON; then kill -9 $PPID; exec sleep 30; fi; echo $MAILMAN_ENTRY >> {}\"]\n",
        record.display()
    )));
    // Queued before the runner starts, poison first (oldest first).
    let poison = dir.path().join("poison");
    fs::write(&poison, "POISON\n").unwrap();
    let good = dir.path().join("good");
    fs::write(&good, "fine\n").unwrap();
    let poisoned = inject(&env, "work", &[&poison]).remove(0);
    let fine = inject(&env, "work", &[&good, &good, &good]);
    let master = env.start(1);
    wait_until("the three good entries", DRAIN, || {
        lines(&record).len() == 3
    });
    let mut got = lines(&record);
    got.sort();
    let mut want = fine.clone();
    want.sort();
    assert_eq!(got, want);
    let base = poisoned.strip_suffix(".msg").unwrap();
    assert_eq!(
        bases(&queue_dir(&env, "bad"), ".psv"),
        vec![base.to_string()]
    );
    assert_eq!(
        fs::read_to_string(queue_dir(&env, "bad").join(format!("{base}.psv"))).unwrap(),
        "POISON\n",
        "the entry is kept as it was"
    );
    // The handler records an entry before its runner removes it.
    wait_until("the work queue to empty", PATIENCE, || {
        names(&queue_dir(&env, "work")).is_empty()
    });
    let log = env.log();
    let crashes = log
        .lines()
        .filter(|l| l.contains("why: SIGNAL 9, class: work"))
        .count();
    assert_eq!(crashes, 3, "{log}");
    assert!(log.contains("returned to the queue (1 of 3)"));
    assert!(log.contains("returned to the queue (2 of 3)"));
    assert!(log.contains(&format!(
        "entry {poisoned} was in hand 3 times when its runner died; moved to bad"
    )));
    assert_eq!(runners_of(master).len(), 1, "the runner goes on");
    assert_eq!(env.run(&["stop"]).code, 0);
}

/// Test 4: exit 0 → removed, 75 → retry/, 1 → shunt/, a handler that does
/// not exist → shunt/ with the reason in the log.
#[test]
fn handler_exit_status_decides_where_an_entry_goes() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::new(&only(
        "[runner.work]\nsleep_time = \"50ms\"\nhandler = [\"/bin/sh\", \"-c\", \"exit $(cat)\"]\n\
         [runner.broken]\nsleep_time = \"50ms\"\nhandler = [\"/nonexistent/handler\", \"{entry}\"]\n",
    ));
    let codes: Vec<PathBuf> = ["0", "75", "1"]
        .iter()
        .map(|c| {
            let p = dir.path().join(format!("exit{c}"));
            fs::write(&p, c).unwrap();
            p
        })
        .collect();
    let refs: Vec<&Path> = codes.iter().map(PathBuf::as_path).collect();
    let [ok, retry, fail]: [String; 3] = inject(&env, "work", &refs).try_into().unwrap();
    let orphan = inject(&env, "broken", &[refs[0]]).remove(0);
    env.start(2);
    wait_until("both queues to empty", DRAIN, || {
        names(&queue_dir(&env, "work")).is_empty() && names(&queue_dir(&env, "broken")).is_empty()
    });
    assert_eq!(names(&queue_dir(&env, "retry")), vec![retry.clone()]);
    let mut shunted = vec![fail.clone(), orphan.clone()];
    shunted.sort();
    assert_eq!(names(&queue_dir(&env, "shunt")), shunted);
    assert_eq!(
        fs::read_to_string(queue_dir(&env, "retry").join(&retry)).unwrap(),
        "75"
    );
    // The runner logs where an entry went after moving it.
    env.wait_log(&format!("entry {orphan}: cannot start handler"));
    env.wait_log(&format!("entry {fail}: handler exited with 1"));
    env.wait_log(&format!("entry {retry}: handler exited with 75"));
    let log = env.log();
    assert!(!log.contains(&ok), "a handled entry is not logged: {log}");
    assert!(log.contains(&format!(
        "entry {retry}: handler exited with 75 (try again later); moved to retry"
    )));
    assert!(log.contains(&format!(
        "entry {fail}: handler exited with 1; moved to shunt"
    )));
    assert!(
        log.contains(&format!(
            "entry {orphan}: cannot start handler /nonexistent/handler: No such file or directory; moved to shunt"
        )),
        "{log}"
    );
    // The depths, as the operator sees them.
    let q = env.run(&["queues", "--json"]);
    assert_eq!(q.code, 0);
    let v: serde_json::Value = serde_json::from_str(&q.stdout).unwrap();
    let depth = |name: &str| {
        v["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["name"] == name)
            .map(|q| q["waiting"].as_u64().unwrap())
    };
    assert_eq!(depth("shunt"), Some(2));
    assert_eq!(depth("retry"), Some(1));
    assert_eq!(depth("work"), Some(0));
    assert_eq!(depth("rest"), None, "the rest runner has no queue");
    assert_eq!(env.run(&["stop"]).code, 0);
}

/// Test 5: `inject` errors are one clear line and a non-zero exit, and
/// leave nothing in the queue.
#[test]
fn inject_errors_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::new(&only("[runner.work]\n"));
    let q = queue_dir(&env, "work");

    let r = env.run(&["inject", "nosuch"]);
    assert_eq!(r.code, 2);
    assert_eq!(r.stderr.trim(), "No such queue: nosuch");
    let r = env.run(&["inject", "rest"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("the rest runner has no queue"),
        "{}",
        r.stderr
    );
    assert!(!env.var.join("queue").exists(), "nothing created");

    let missing = dir.path().join("missing");
    let r = env.run(&["inject", "work", missing.to_str().unwrap()]);
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr.trim(),
        format!(
            "cannot read {}: No such file or directory",
            missing.display()
        )
    );
    // Opens, then fails to read: the temporary file must go.
    let r = env.run(&["inject", "work", dir.path().to_str().unwrap()]);
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr.trim(),
        format!("cannot read {}: Is a directory", dir.path().display())
    );
    assert_eq!(names(&q), Vec::<String>::new());

    // A good file, then a bad one: the first is in, the second left no trace.
    let good = dir.path().join("good");
    fs::write(&good, "ok").unwrap();
    let r = env.run(&[
        "inject",
        "work",
        good.to_str().unwrap(),
        missing.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 1);
    assert_eq!(names(&q), vec![r.stdout.trim().to_string()]);
    fs::remove_file(q.join(r.stdout.trim())).unwrap();

    // A full disk and a read-only one: as root, real ones (a small tmpfs
    // mounted over the queue in a private mount namespace, listed from
    // inside it); otherwise a directory without write permission.
    let big = dir.path().join("big");
    fs::write(&big, vec![b'x'; 1 << 20]).unwrap();
    if nix::unistd::geteuid().is_root() {
        for (opts, file, reason) in [
            ("size=64k", &big, "No space left on device"),
            ("size=64k,ro", &good, "Read-only file system"),
        ] {
            let script = format!(
                "mount -t tmpfs -o {opts} tmpfs {q} || exit 99; \
                 {bin} -C {cfg} inject work {file}; rc=$?; echo \"left: $(ls -A {q})\" >&2; exit $rc",
                q = q.display(),
                bin = BIN,
                cfg = env.config.display(),
                file = file.display()
            );
            let out = Command::new("unshare")
                .args(["--mount", "sh", "-c", &script])
                .output()
                .expect("run unshare");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{opts}: {stderr}");
            let mut lines = stderr.lines();
            let first = lines.next().unwrap_or_default();
            assert!(
                first.starts_with("cannot write") && first.ends_with(reason),
                "{opts}: {stderr}"
            );
            assert_eq!(lines.next(), Some("left: "), "{opts}: {stderr}");
            assert!(out.stdout.is_empty());
        }
    } else {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&q, fs::Permissions::from_mode(0o555)).unwrap();
        let r = env.run(&["inject", "work", good.to_str().unwrap()]);
        fs::set_permissions(&q, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(r.code, 1);
        assert!(r.stderr.ends_with("Permission denied\n"), "{}", r.stderr);
    }
    assert_eq!(names(&q), Vec::<String>::new());

    // Standard input, the default source.
    let out = env
        .cmd(&["inject", "work"])
        .stdin(fs::File::open(&good).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success());
    let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(fs::read_to_string(q.join(&name)).unwrap(), "ok");
}

/// SIGUSR1, SIGINT (sent to the runner) and a stop (SIGTERM from the
/// master) while a handler runs: the entry is finished first, then the
/// runner exits with the signal's number (10 and 2 are restarted, 15 not).
#[test]
fn stop_signals_finish_the_entry_in_hand() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("record");
    let started = dir.path().join("started");
    let env = Env::new(&only(&format!(
        "[runner.work]\nsleep_time = \"50ms\"\nrestart_delay = \"10ms\"\n\
         handler = [\"/bin/sh\", \"-c\", \"touch {}; sleep 1; echo done >> {}\"]\n",
        started.display(),
        record.display()
    )));
    let master = env.start(1);
    let good = dir.path().join("good");
    fs::write(&good, "ok").unwrap();
    for (round, (sig, name, why)) in [
        (Some(10), "SIGUSR1", "EXIT 10"),
        (Some(2), "SIGINT", "EXIT 2"),
        (None, "SIGTERM", "EXIT 15"),
    ]
    .into_iter()
    .enumerate()
    {
        let _ = fs::remove_file(&started);
        let entry = inject(&env, "work", &[&good]).remove(0);
        wait_until("the handler to start", PATIENCE, || started.exists());
        match sig {
            Some(sig) => {
                let runner = runners_of(master)[0];
                assert!(send(runner, sig));
                wait_until("the runner to be replaced", PATIENCE, || {
                    runners_of(master).first().is_some_and(|p| *p != runner)
                });
            }
            None => assert_eq!(env.run(&["stop"]).code, 0),
        }
        assert_eq!(
            lines(&record).len(),
            round + 1,
            "{name}: the entry was finished"
        );
        assert!(
            names(&queue_dir(&env, "work")).is_empty(),
            "{name}: {entry} is gone"
        );
        // The master writes its log from a thread of its own: the lines may
        // follow the processes a moment later.
        env.wait_log(&format!("why: {why}, class: work"));
        let log = env.log();
        let caught = log
            .find(&format!("work runner caught {name}.  Stopping."))
            .expect("caught");
        let exiting = log[caught..].find("work runner exiting.").expect("exiting");
        assert!(
            log[caught + exiting..].contains(&format!("why: {why}, class: work")),
            "{log}"
        );
    }
}

/// With the built-in defaults, an entry flows in → pipeline → out (no
/// handlers) and waits in out, which has neither a handler nor a next
/// queue, and says so.
#[test]
fn default_flow_ends_waiting_in_out() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::new(&only(
        "[runner.in]\nsleep_time = \"50ms\"\n[runner.pipeline]\nsleep_time = \"50ms\"\n\
         [runner.out]\nsleep_time = \"50ms\"\n",
    ));
    env.start(3);
    let msg = dir.path().join("msg");
    fs::write(&msg, "Subject: hi\n\nhello\n").unwrap();
    let name = inject(&env, "in", &[&msg]).remove(0);
    wait_until("the entry to reach out", PATIENCE, || {
        names(&queue_dir(&env, "out")) == vec![name.clone()]
    });
    env.wait_log("out runner has no handler and no next queue: 1 entry waits in");
    assert_eq!(
        fs::read_to_string(queue_dir(&env, "out").join(&name)).unwrap(),
        "Subject: hi\n\nhello\n"
    );
    assert!(names(&queue_dir(&env, "in")).is_empty());
    assert!(names(&queue_dir(&env, "pipeline")).is_empty());
    let q = env.run(&["queues"]);
    assert!(
        q.stdout
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["out", "1", "0"]),
        "{}",
        q.stdout
    );
    assert_eq!(env.run(&["stop"]).code, 0);
}

/// Built-in runners of a configuration read from a pipe (`-C <(…)`), which
/// they cannot read again, get the master's copy of it (mode 0600, beside
/// the pid file, gone once the master stops): an entry flows as with a
/// file. Before, each failed to read `/dev/fd/N` and was restarted for
/// ever.
#[test]
fn built_in_runners_of_a_configuration_read_from_a_pipe_work() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let env = Env::new(&only(
        "[runner.in]\nsleep_time = \"50ms\"\n[runner.pipeline]\nsleep_time = \"50ms\"\n\
         [runner.out]\nsleep_time = \"50ms\"\n",
    ));
    env.start_from_pipe();
    let copy = env.var.join("master.config.toml");
    assert_eq!(
        fs::read_to_string(&copy).unwrap(),
        fs::read_to_string(&env.config).unwrap()
    );
    assert_eq!(
        fs::metadata(&copy).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let msg = dir.path().join("msg");
    fs::write(&msg, "Subject: hi\n\nhello\n").unwrap();
    let name = inject(&env, "in", &[&msg]).remove(0);
    wait_until("the entry to reach out", PATIENCE, || {
        names(&queue_dir(&env, "out")) == vec![name.clone()]
    });
    let log = env.log();
    assert!(!log.contains("cannot read the configuration"), "{log}");
    assert!(!log.contains("Master detected subprocess exit"), "{log}");
    let master = env.pid_from_file().unwrap();
    assert_eq!(env.run(&["stop"]).code, 0);
    wait_until("the master to stop", PATIENCE, || !alive(master));
    assert!(!copy.exists());
}

/// A handler's background child outlives the handler (the master adopts it
/// as subreaper), but not the master: a stop kills it and says so.
#[test]
fn a_stop_leaves_no_handler_orphans_behind() {
    let dir = tempfile::tempdir().unwrap();
    let bg = dir.path().join("bg");
    let env = Env::new(&only(&format!(
        "[runner.work]\nsleep_time = \"50ms\"\n\
         handler = [\"/bin/sh\", \"-c\", \"sleep 300 </dev/null >/dev/null 2>&1 & echo $! > {}\"]\n",
        bg.display()
    )));
    let master = env.start(1);
    let good = dir.path().join("good");
    fs::write(&good, "ok").unwrap();
    inject(&env, "work", &[&good]);
    wait_until("the handler's background child", PATIENCE, || {
        fs::read_to_string(&bg).is_ok_and(|t| t.ends_with('\n'))
    });
    let orphan: i32 = fs::read_to_string(&bg).unwrap().trim().parse().unwrap();
    wait_until("the master to adopt it", PATIENCE, || {
        stat(orphan).is_some_and(|(_, ppid, _)| ppid == master)
    });
    assert_eq!(env.run(&["stop"]).code, 0);
    wait_until("the orphan to be gone", PATIENCE, || !alive(orphan));
    assert!(
        env.log().contains(&format!(
            "Killing processes left behind by runners: {orphan}"
        )),
        "{}",
        env.log()
    );
}

/// `queues` on a var dir that does not exist is an error naming it, not a
/// table of empty queues (a mistyped `var_dir` looked exactly like that).
#[test]
fn queues_on_a_missing_var_dir_is_an_error() {
    let env = Env::new("");
    assert!(!env.var.exists());
    let r = env.run(&["queues"]);
    assert_eq!(r.code, 1);
    assert_eq!(r.stdout, "");
    assert_eq!(
        r.stderr,
        format!(
            "cannot read the queues: var dir {}: No such file or directory\n",
            env.var.display()
        )
    );
}
