//! What a runner starts with, whichever way the master creates it (issue
//! 19: `clone3` into the cgroup, the older `clone`, a fork): its own process
//! group, the parent-death signal, no signal blocked or ignored, the
//! open-file limit the master started with, exactly stdin (/dev/null),
//! stdout and stderr (pipes), its environment and argv[0]; and a program
//! that cannot be run is reported with its cause.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Child;

use common::*;

/// Writes what only the process itself can tell (its parent-death signal,
/// its limits) to the file named by its argument, then sleeps.
const PROBE: &str = r#"import ctypes, json, resource, sys, time
sig = ctypes.c_int()
ctypes.CDLL(None).prctl(2, ctypes.byref(sig))  # PR_GET_PDEATHSIG
with open(sys.argv[1] + ".tmp", "w") as f:
    json.dump({"pdeathsig": sig.value, "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)}, f)
import os; os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(1000)
"#;

struct Master(Child);

impl Drop for Master {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `start --foreground` with `MAILMAN_SPAWN=mode`, from a parent that
/// leaves it an untidy start: SIGUSR2 blocked, SIGPIPE ignored, an open-file
/// limit of 1000 (hard 4096), and a descriptor (9) without close-on-exec.
fn untidy_master(env: &Env, mode: &str) -> Master {
    let leak = fs::File::create(env.dir.path().join("leaked")).unwrap();
    let mut cmd = env.cmd(&["start", "--foreground"]);
    cmd.env("MAILMAN_SPAWN", mode);
    let raw = std::os::fd::AsRawFd::as_raw_fd(&leak);
    // SAFETY: plain system calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: 1000,
                rlim_max: 4096,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGUSR2);
            libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
            if libc::dup2(raw, 9) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Master(cmd.spawn().expect("start the master"))
}

fn proc_status(pid: i32, key: &str) -> String {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:\t")).map(str::to_string))
        .unwrap_or_default()
}

fn fds(pid: i32) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let target = fs::read_link(e.path()).ok()?;
            let target = target.to_string_lossy();
            let kind = if target.starts_with("pipe:") {
                "pipe".to_string()
            } else {
                target.into_owned()
            };
            Some((e.file_name().to_string_lossy().into_owned(), kind))
        })
        .collect();
    out.sort_by_key(|(fd, _)| fd.parse::<i32>().unwrap_or(-1));
    out
}

fn cgroup(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        .unwrap_or_default()
}

fn check_runners(mode: &str) {
    let env = Env::new(&only(&format!(
        "[runner.sleeper]\ncommand = [\"sleep\", \"1000\"]\nrestart_delay = \"0s\"\n\
         [runner.probe]\ncommand = [\"python3\", \"-c\", {PROBE:?}, \"{{var_dir}}/probe.json\"]\n\
         restart_delay = \"0s\"\n"
    )));
    let mut master = untidy_master(&env, mode);
    let pid = master.0.id() as i32;
    // Started with the others at start-up (a batch, cloned side by side),
    // then restarted (alone or together, as their restarts come due).
    let (sleeper, probe) = check_set_up(mode, &env, pid, &[]);
    fs::remove_file(env.var.join("probe.json")).unwrap();
    for r in [sleeper, probe] {
        send(r, libc::SIGKILL);
    }
    let (sleeper, probe) =
        check_set_up(&format!("{mode}, restarted"), &env, pid, &[sleeper, probe]);
    // The parent-death signal at work: a kill -9 of the master ends both.
    master.0.kill().unwrap();
    master.0.wait().unwrap();
    wait_until("the runners to die with the master", PATIENCE, || {
        !alive(sleeper) && !alive(probe)
    });
}

/// The checks on the master's two runners (other than `before`): the
/// sleeper's and the probe's pids.
fn check_set_up(mode: &str, env: &Env, pid: i32, before: &[i32]) -> (i32, i32) {
    let runners_now = || {
        let mut r = runners_of(pid);
        r.retain(|p| !before.contains(p));
        r
    };
    wait_until("two runners", PATIENCE, || runners_now().len() == 2);
    let probe_file = env.var.join("probe.json");
    wait_until("the probe's report", PATIENCE, || probe_file.exists());
    let runners = runners_now();
    let sleeper = *runners
        .iter()
        .find(|&&r| cmdline(r) == "sleep 1000")
        .expect("the sleeper");
    let probe = *runners.iter().find(|&&r| r != sleeper).unwrap();

    for r in [sleeper, probe] {
        let (_, ppid, pgid) = stat(r).unwrap();
        assert_eq!(
            (ppid, pgid),
            (pid, r),
            "{mode}: runner {r}'s parent and group"
        );
        // Stdin, stdout, stderr: nothing else of the master's, not even the
        // descriptor it inherited without close-on-exec.
        assert_eq!(
            fds(r)[..3],
            [
                ("0".to_string(), "/dev/null".to_string()),
                ("1".to_string(), "pipe".to_string()),
                ("2".to_string(), "pipe".to_string()),
            ],
            "{mode}: runner {r}'s descriptors"
        );
        // Python opens nothing else by itself; sleep nothing at all.
        assert_eq!(fds(r).len(), 3, "{mode}: {:?}", fds(r));
        assert_eq!(
            proc_status(r, "SigBlk"),
            "0000000000000000",
            "{mode}: {r} mask"
        );
        let env_of = environ(r);
        assert!(
            env_of.iter().any(|v| v.starts_with("MAILMAN_RUNNER=")),
            "{env_of:?}"
        );
    }
    // What the master ignores the runner ignores too (as under any
    // parent), but SIGPIPE (ignored by the master for itself, and here by
    // its parent). Python ignores SIGPIPE itself: the sleeper tells.
    let ignored = |p: i32| u64::from_str_radix(&proc_status(p, "SigIgn"), 16).unwrap();
    let sigpipe = 1 << (libc::SIGPIPE - 1);
    assert_ne!(ignored(pid) & sigpipe, 0, "the master ignores SIGPIPE");
    assert_eq!(ignored(sleeper), ignored(pid) & !sigpipe, "{mode}");
    assert_eq!(cmdline(sleeper), "sleep 1000", "{mode}: argv[0] as written");
    // Born in the master's cgroup, where it has one.
    let master_cgroup_dirs: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| p.contains("/mailman-"))
        .collect();
    if let Some(dir) = master_cgroup_dirs.first() {
        let name = dir.rsplit('/').next().unwrap();
        for r in [sleeper, probe] {
            assert!(
                cgroup(r).ends_with(name),
                "{mode}: {} not in {dir}",
                cgroup(r)
            );
        }
    }
    let report: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&probe_file).unwrap()).unwrap();
    assert_eq!(report["pdeathsig"], 9, "{mode}: {report}");
    assert_eq!(
        report["nofile"],
        serde_json::json!([1000, 4096]),
        "{mode}: the limit the master started with"
    );
    (sleeper, probe)
}

/// Writes what only a queue entry's handler can tell (its parent-death
/// signal, its stdin, its `MAILMAN_*` variables) to the file named by its
/// argument, then sleeps.
const HANDLER_PROBE: &str = r#"import ctypes, json, os, sys, time
sig = ctypes.c_int()
ctypes.CDLL(None).prctl(2, ctypes.byref(sig))  # PR_GET_PDEATHSIG
report = {"pdeathsig": sig.value, "stdin": sys.stdin.read(),
          "env": {k: v for k, v in os.environ.items() if k.startswith("MAILMAN_")}}
with open(sys.argv[1] + ".tmp", "w") as f:
    json.dump(report, f)
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(1000)
"#;

/// A built-in runner's handler, started the way `mode` says (the runner
/// inherits `MAILMAN_SPAWN`): the entry on its stdin and nothing else of
/// the runner's but its stdout and stderr, its own process group, no
/// signal blocked, the parent-death signal (a kill -9 of its runner ends
/// it), the entry's variables. (Python ignores SIGPIPE itself: the runners'
/// test tells that one.)
fn check_handler(mode: &str) {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("handler.json");
    let env = Env::new(&only(&format!(
        "[runner.work]\nhandler = [\"python3\", \"-c\", {HANDLER_PROBE:?}, \"{}\"]\n",
        report.display()
    )));
    let master = untidy_master(&env, mode);
    let pid = master.0.id() as i32;
    wait_until("the runner", PATIENCE, || runners_of(pid).len() == 1);
    let runner = runners_of(pid)[0];
    let entry = dir.path().join("entry");
    fs::write(&entry, "Subject: probe\n\nbody\n").unwrap();
    let out = env.cmd(&["inject", "work"]).arg(&entry).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
    wait_until("the handler's report", PATIENCE, || report.exists());
    let handler = runners_of(runner)[0];
    let (_, ppid, pgid) = stat(handler).unwrap();
    assert_eq!((ppid, pgid), (runner, handler), "{mode}: parent and group");
    let held = fds(handler);
    assert_eq!(held.len(), 3, "{mode}: {held:?}");
    assert!(
        held[0].0 == "0" && held[0].1.ends_with(".bak"),
        "{mode}: {held:?}"
    );
    assert_eq!(
        held[1..],
        [
            ("1".to_string(), "pipe".to_string()),
            ("2".to_string(), "pipe".to_string())
        ],
        "{mode}"
    );
    assert_eq!(proc_status(handler, "SigBlk"), "0000000000000000", "{mode}");
    let report: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(report["pdeathsig"], 9, "{mode}: {report}");
    assert_eq!(report["stdin"], "Subject: probe\n\nbody\n", "{mode}");
    assert_eq!(report["env"]["MAILMAN_QUEUE"], "work", "{mode}: {report}");
    assert_eq!(report["env"]["MAILMAN_ENTRY"], name.as_str(), "{mode}");
    let file = report["env"]["MAILMAN_ENTRY_FILE"].as_str().unwrap();
    assert!(file.ends_with(".bak"), "{mode}: {file}");
    assert_eq!(
        report["env"]["MAILMAN_RUNNER"], "work:0:1",
        "{mode}: {report}"
    );
    send(runner, libc::SIGKILL);
    wait_until("the handler to die with its runner", PATIENCE, || {
        !alive(handler)
    });
}

#[test]
fn handlers_set_up_by_clone3() {
    check_handler("clone3");
}

#[test]
fn handlers_set_up_by_fork() {
    check_handler("fork");
}

#[test]
fn runners_set_up_by_clone3() {
    check_runners("clone3");
}

#[test]
fn runners_set_up_by_clone() {
    check_runners("clone");
}

#[test]
fn runners_set_up_by_fork() {
    check_runners("fork");
}

#[test]
fn a_program_that_cannot_run_is_reported_with_its_cause() {
    for mode in ["clone3", "clone", "fork"] {
        // At start: the master does not start.
        for (command, cause) in [
            ("/dev/null", "/dev/null: Permission denied"),
            (
                "no-such-program-here",
                "no-such-program-here: No such file or directory",
            ),
        ] {
            let env = Env::new(&only(&format!(
                "[runner.broken]\ncommand = [\"{command}\"]\n[runner.fine]\ncommand = [\"sleep\", \"1000\"]\n"
            )));
            let out = env
                .cmd(&["start", "--foreground"])
                .env("MAILMAN_SPAWN", mode)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_ne!(out.status.code(), Some(0), "{mode}");
            let line = format!("Cannot start runner broken:0:1: {cause}");
            assert!(stderr.contains(&line), "{mode}: {stderr}");
        }
        // Later (a program gone since): logged, retried, and the master
        // carries on, with no child of the failed attempts left unreaped.
        let env = Env::new(&only(
            "[runner.flaky]\ncommand = [\"{var_dir}/flaky\"]\nrestart_delay = \"20ms\"\nrestart_delay_max = \"200ms\"\n\
             max_restarts = 1000\n[runner.fine]\ncommand = [\"sleep\", \"1000\"]\n",
        ));
        fs::create_dir_all(&env.var).unwrap();
        let flaky = env.var.join("flaky");
        fs::write(&flaky, "#!/bin/sh\nexit 3\n").unwrap();
        fs::set_permissions(&flaky, fs::Permissions::from_mode(0o755)).unwrap();
        let master = untidy_master(&env, mode);
        let pid = master.0.id() as i32;
        env.wait_log("why: EXIT 3, class: flaky");
        fs::set_permissions(&flaky, fs::Permissions::from_mode(0o644)).unwrap();
        env.wait_log(&format!(
            "Cannot start runner flaky:0:1: {}: Permission denied",
            flaky.display()
        ));
        fs::remove_file(&flaky).unwrap();
        env.wait_log(&format!(
            "Cannot start runner flaky:0:1: {}: No such file or directory",
            flaky.display()
        ));
        assert!(zombies_of(pid).is_empty(), "{mode}: {:?}", zombies_of(pid));
        assert_eq!(runners_of(pid).len(), 1, "{mode}: the sleeper alone");
        assert_eq!(env.run(&["status"]).code, 0, "{mode}");
        assert_eq!(env.run(&["stop"]).code, 0, "{mode}");
    }
}

/// A descriptor the master hands a runner (its slice's ownership lock
/// here; the preload helper's socket, whose number it is told) keeps its
/// number in the runner, whichever way the runner is created.
#[test]
fn a_kept_descriptor_keeps_its_number() {
    for mode in ["clone3", "clone", "fork"] {
        let env = Env::with_mailman(
            "slice_locks = true\n",
            &only("[runner.sleeper]\ncommand = [\"sleep\", \"1000\"]\n"),
        );
        let master = untidy_master(&env, mode);
        let pid = master.0.id() as i32;
        wait_until("the runner", PATIENCE, || {
            runners_of(pid)
                .first()
                .is_some_and(|&r| cmdline(r) == "sleep 1000")
        });
        let runner = runners_of(pid)[0];
        let lock_of = |p: i32| {
            fds(p)
                .into_iter()
                .find(|(_, target)| target.contains(".owners"))
        };
        let in_master = lock_of(pid).expect("the master holds the slice lock");
        assert_eq!(lock_of(runner), Some(in_master.clone()), "{mode}");
        // `sleep` opens its locale's files for a moment as it starts.
        wait_until(&format!("{mode}: four descriptors"), PATIENCE, || {
            fds(runner).len() == 4
        });
        assert_eq!(env.run(&["stop"]).code, 0, "{mode}");
    }
}

/// Start-up's children are cloned side by side, each from a copy of its
/// command line and environment made for it (`os::vfork::batch`): each
/// gets its own, whole, however long.
#[test]
fn a_batch_of_runners_each_get_their_own_long_command_line_and_environment() {
    const DUMP: &str = r#"import json, os, sys
with open(sys.argv[1] + ".tmp", "w") as f:
    json.dump({"arg": sys.argv[2], "env": os.environ["BIG"]}, f)
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
import time; time.sleep(1000)
"#;
    let long = |name: &str, what: &str, n: usize| -> String { format!("{name}-{what}-").repeat(n) };
    let names: Vec<String> = (0..6).map(|i| format!("w{i}")).collect();
    let runners: String = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            // From a few bytes to 100 KB: slots of one batch differ.
            let n = [1, 10, 100, 1000, 5000, 12000][i];
            format!(
                "[runner.{name}]\ncommand = [\"python3\", \"-c\", {DUMP:?}, \"{{var_dir}}/{name}.json\", {:?}]\n\
                 env = {{ BIG = {:?} }}\n",
                long(name, "arg", n),
                long(name, "env", n),
            )
        })
        .collect();
    let env = Env::new(&only(&runners));
    let _master = untidy_master(&env, "clone3");
    for (i, name) in names.iter().enumerate() {
        let n = [1, 10, 100, 1000, 5000, 12000][i];
        let file = env.var.join(format!("{name}.json"));
        wait_until(&format!("{name}'s report"), PATIENCE, || file.exists());
        let report: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&file).unwrap()).unwrap();
        assert!(
            report["arg"] == long(name, "arg", n).as_str(),
            "{name}: argv"
        );
        assert!(
            report["env"] == long(name, "env", n).as_str(),
            "{name}: env"
        );
    }
    // Each started by the batch, at the first try (a restart would start it
    // the single way).
    let status: serde_json::Value =
        serde_json::from_str(&env.run(&["status", "--json"]).stdout).unwrap();
    let runners = status["runners"].as_array().unwrap();
    assert_eq!(runners.len(), names.len(), "{status}");
    for r in runners {
        assert_eq!(r["total_restarts"], 0, "{r}");
    }
}

/// At start-up runners are cloned in batches of 128, none waiting for
/// another's exec: a program that cannot run, in the first batch of
/// several, still fails the start-up with its cause, and the runners
/// started beside it are stopped.
#[test]
fn a_program_that_cannot_run_fails_a_start_of_many() {
    let many: String = (0..150)
        .map(|i| format!("[runner.s{i:03}]\ncommand = [\"sleep\", \"1000\"]\n"))
        .collect();
    let env = Env::new(&only(&format!(
        "[runner.broken]\ncommand = [\"/dev/null\"]\n{many}"
    )));
    let out = env.cmd(&["start", "--foreground"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("Cannot start runner broken:0:1: /dev/null: Permission denied"),
        "{stderr}"
    );
    let sleepers = || {
        all_pids()
            .into_iter()
            .filter(|&p| {
                environ(p)
                    .iter()
                    .any(|v| v.contains(&env.var.display().to_string()))
            })
            .count()
    };
    wait_until("no runner left", PATIENCE, || sleepers() == 0);
}

/// Past a few hundred descriptors (the pipes of 128 runners), a batch's
/// children share the master's descriptor table, each with a set of
/// descriptors of its own, rather than copy it (`os::vfork::batch`): each
/// runner still holds exactly its own stdin, stdout and stderr, in its own
/// process group, nothing blocked. So do runners restarted together (all
/// 200 killed at once: due at the same turn, cloned as batches).
#[test]
fn runners_of_a_large_start_hold_only_their_own_descriptors() {
    let many: String = (0..200)
        .map(|i| {
            format!("[runner.s{i:03}]\ncommand = [\"sleep\", \"1000\"]\nrestart_delay = \"0s\"\n")
        })
        .collect();
    let env = Env::new(&only(&many));
    let master = untidy_master(&env, "clone3");
    let pid = master.0.id() as i32;
    wait_until("200 runners", PATIENCE, || runners_of(pid).len() == 200);
    let first = runners_of(pid);
    check_own_descriptors(&first);
    for &r in &first {
        send(r, libc::SIGKILL);
    }
    let again = || {
        let mut r = runners_of(pid);
        r.retain(|p| !first.contains(p));
        r
    };
    wait_until("200 runners restarted", PATIENCE, || again().len() == 200);
    check_own_descriptors(&again());
    let log = env.log();
    assert_eq!(log.matches("[restarting]").count(), 200, "{log}");
    assert!(!log.contains("Cannot start"), "{log}");
    drop(master);
}

/// Each of `runners` holds /dev/null as stdin and two pipes no other holds
/// (none of the three a placeholder opened `O_PATH`, which a runner could
/// not read or write), leads its own process group, and blocks no signal.
fn check_own_descriptors(runners: &[i32]) {
    let mut outputs = std::collections::HashSet::new();
    for &r in runners {
        // `sleep` opens its locale's files for a moment as it starts.
        wait_until(&format!("runner {r}: three descriptors"), PATIENCE, || {
            fds(r).len() == 3
        });
        assert_eq!(fds(r)[0], ("0".to_string(), "/dev/null".to_string()));
        // Linux's O_PATH, as /proc shows it (octal).
        const O_PATH: i64 = 0o10_000_000;
        for fd in 0..3 {
            let info = fs::read_to_string(format!("/proc/{r}/fdinfo/{fd}")).unwrap();
            let flags = info
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|f| i64::from_str_radix(f.trim(), 8).ok())
                .unwrap();
            assert_eq!(flags & O_PATH, 0, "runner {r}'s {fd}: {info}");
        }
        let pipes: Vec<String> = [1, 2]
            .iter()
            .map(|fd| {
                fs::read_link(format!("/proc/{r}/fd/{fd}"))
                    .unwrap()
                    .display()
                    .to_string()
            })
            .collect();
        assert!(pipes.iter().all(|p| p.starts_with("pipe:")), "{pipes:?}");
        // Its own pipes, no other runner's.
        for p in pipes {
            assert!(outputs.insert(p.clone()), "runner {r}: {p} twice");
        }
        assert_eq!(stat(r).unwrap().2, r, "runner {r}'s group");
        assert_eq!(proc_status(r, "SigBlk"), "0000000000000000", "{r}");
    }
}

/// A program that cannot run, started by a batch whose children share the
/// master's table, is reported with its cause as any other.
#[test]
fn a_program_that_cannot_run_fails_a_large_start() {
    let many: String = (0..200)
        .map(|i| format!("[runner.s{i:03}]\ncommand = [\"sleep\", \"1000\"]\n"))
        .collect();
    let env = Env::new(&only(&format!(
        "{many}[runner.zbroken]\ncommand = [\"/dev/null\"]\n"
    )));
    let out = env.cmd(&["start", "--foreground"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("Cannot start runner zbroken:0:1: /dev/null: Permission denied"),
        "{stderr}"
    );
}

/// `merge_pages = true`: the master offers its memory to the kernel's
/// same-page merging, and every runner inherits it across its `execve`
/// (Linux 6.7), whichever way it is created; without it, none does.
#[test]
fn merge_pages_reaches_every_runner() {
    let merge_any = |pid: i32| {
        fs::read_to_string(format!("/proc/{pid}/ksm_stat"))
            .map(|s| s.contains("ksm_merge_any: yes"))
    };
    // The setting crosses `execve` from Linux 6.7.
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut version = release
        .split(['.', '-'])
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let at_least_6_7 = (version.next().unwrap_or(0), version.next().unwrap_or(0)) >= (6, 7);
    require(
        at_least_6_7 && merge_any(std::process::id() as i32).is_ok(),
        "a kernel with same-page merging (/proc/PID/ksm_stat: CONFIG_KSM, Linux 6.7 or later)",
        "run the tests on such a kernel",
    );
    for (mode, merge) in [
        ("clone3", true),
        ("clone", true),
        ("fork", true),
        ("clone3", false),
    ] {
        let env = Env::with_mailman(
            &format!("merge_pages = {merge}\n"),
            &only("[runner.sleeper]\ncommand = [\"sleep\", \"1000\"]\nrestart_delay = \"0s\"\n"),
        );
        let master = untidy_master(&env, mode);
        let pid = master.0.id() as i32;
        let sleeper = || {
            runners_of(pid)
                .into_iter()
                .find(|&r| cmdline(r) == "sleep 1000")
        };
        wait_until("the runner", PATIENCE, || sleeper().is_some());
        let first = sleeper().unwrap();
        assert_eq!(
            merge_any(first).ok(),
            Some(merge),
            "{mode}, merge_pages = {merge}"
        );
        // A restarted runner too (the single clone).
        send(first, libc::SIGKILL);
        wait_until("the restarted runner", PATIENCE, || {
            sleeper().is_some_and(|r| r != first)
        });
        let second = sleeper().unwrap();
        assert_eq!(merge_any(second).ok(), Some(merge), "{mode}, restarted");
        assert_eq!(
            env.log()
                .contains("offered to the kernel's same-page merging"),
            merge,
            "{}",
            env.log()
        );
        assert_eq!(env.run(&["stop"]).code, 0, "{mode}");
    }
}
