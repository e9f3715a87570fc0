//! The configuration seen from the command line: every error is one
//! `FILE:LINE:COL: message` line with exit 2 and nothing started;
//! `check-config` prints the effective configuration; environment overrides
//! (`MAILMAN__SECTION__KEY=value`, `MAILMAN_VAR_DIR`) and `--set` stack as
//! built-in < file < environment < command line, validated like file values,
//! with errors that name the variable or flag.

mod common;

use common::*;

/// `body`'s error, outside `[mailman]`, stops every command but `status`,
/// which reads only `[mailman]` (docs/commands.md) unless the file cannot be
/// parsed at all (`syntax`).
fn config_error(body: &str, line: usize, col: usize, message: &str) {
    config_error_of(body, line, col, message, false);
}

fn config_error_of(body: &str, line: usize, col: usize, message: &str, syntax: bool) {
    let env = Env::new(body);
    let file = env.config.display().to_string();
    // The [mailman]/[logging] header Env writes is 7 lines long.
    let expected = format!("{file}:{}:{col}: {message}", line + 7);
    if !syntax {
        let r = env.run(&["status"]);
        assert_eq!(
            (r.code, r.stdout),
            (3, env.not_running()),
            "{body:?}: {}",
            r.stderr
        );
    }
    let status: &[&str] = if syntax { &["status"] } else { &[] };
    for cmd in [
        &["start"][..],
        &["start", "--foreground"],
        &["master"],
        &["check-config"],
        status,
    ] {
        if cmd.is_empty() {
            continue;
        }
        let r = env.run(cmd);
        // `status` keeps to LSB's codes: 4, "cannot tell".
        let want = if cmd == ["status"] { 4 } else { 2 };
        assert_eq!(r.code, want, "{cmd:?} on {body:?}: {}", r.stderr);
        assert_eq!(r.stdout, "", "{cmd:?}: nothing on stdout");
        assert_eq!(
            r.stderr.lines().count(),
            1,
            "{cmd:?}: one line: {}",
            r.stderr
        );
        assert!(
            r.stderr.starts_with(&expected),
            "{cmd:?}: {:?} should start with {expected:?}",
            r.stderr
        );
    }
    assert!(!env.var.exists(), "nothing was started or created");
}

#[test]
fn syntax_error() {
    config_error_of("[runner.in\n", 1, 11, "", true);
}

#[test]
fn status_reports_an_error_in_mailman_table() {
    let env = Env::with_mailman("stop_timout = \"3s\"\n", "");
    let r = env.run(&["status"]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    let file = env.config.display();
    assert!(
        r.stderr
            .starts_with(&format!("{file}:3:1: unknown field `stop_timout`")),
        "{}",
        r.stderr
    );
}

/// With the master running, a file broken since outside `[mailman]` is
/// still `status`'s error (the rest of the file is checked once the master
/// has answered, as its stamp of the file it read no longer matches: its
/// answer is not printed), then the master's answer once the file is
/// mended. The master's answer carries that stamp: the file as it read it.
#[test]
fn status_with_a_running_master_reports_a_file_broken_since() {
    use std::io::{BufRead, Write};
    use std::os::unix::fs::MetadataExt;
    let env = Env::new(&only("[runner.in]\nstart = true\n"));
    let master = env.start(1);
    let m = std::fs::metadata(&env.config).unwrap();
    let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
    let stamp = format!(
        "\"config\":{{\"dev\":{},\"ino\":{},\"size\":{},\"mtime_ns\":{},\"ctime_ns\":{}}}",
        m.dev(),
        m.ino(),
        m.size(),
        ns(m.mtime(), m.mtime_nsec()),
        ns(m.ctime(), m.ctime_nsec())
    );
    for request in ["health", "status"] {
        let mut s = std::os::unix::net::UnixStream::connect(env.var.join("master.sock")).unwrap();
        writeln!(s, "{{\"command\":\"{request}\"}}").unwrap();
        let mut answer = String::new();
        std::io::BufReader::new(s).read_line(&mut answer).unwrap();
        assert!(answer.contains(&stamp), "{request}: {answer} lacks {stamp}");
    }
    let good = std::fs::read_to_string(&env.config).unwrap();
    let lines = good.lines().count();
    std::fs::write(
        &env.config,
        format!("{good}[runner.late]\ncommand = [\"a\" \"b\"]\n"),
    )
    .unwrap();
    let file = env.config.display();
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["status", "--check"],
    ] {
        let r = env.run(args);
        assert_eq!(
            (r.code, r.stdout.as_str()),
            (4, ""),
            "{args:?}: {}",
            r.stderr
        );
        assert_eq!(r.stderr.lines().count(), 1, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.starts_with(&format!("{file}:{}:", lines + 2)),
            "{args:?}: {}",
            r.stderr
        );
    }
    std::fs::write(&env.config, &good).unwrap();
    let r = env.run(&["status"]);
    assert_eq!(
        (r.code, r.stdout),
        (
            0,
            format!("GNU Mailman is running (master pid: {master})\n")
        )
    );
    assert_eq!(env.run(&["stop"]).code, 0);
}

#[test]
fn unknown_key() {
    config_error("[runner.in]\nstrat = true\n", 2, 1, "unknown field `strat`");
}

#[test]
fn wrong_type() {
    config_error(
        "[runner.in]\nstart = \"yes\"\n",
        2,
        9,
        "invalid type: string \"yes\", expected a boolean",
    );
}

#[test]
fn bad_duration() {
    config_error(
        "[runner.default]\nrestart_delay = \"soon\"\n",
        2,
        17,
        "invalid duration \"soon\"",
    );
}

#[test]
fn instances_not_a_power_of_two() {
    config_error(
        "[runner.in]\ninstances = 3\n",
        2,
        13,
        "Runner \"in\", not a power of 2: 3",
    );
}

#[test]
fn empty_command() {
    config_error(
        "[runner.out]\ncommand = []\n",
        2,
        11,
        "Runner \"out\": command must not be empty",
    );
}

#[test]
fn unknown_section() {
    config_error(
        "[mailmen]\nvar_dir = \"x\"\n",
        1,
        2,
        "unknown field `mailmen`",
    );
}

#[test]
fn check_config_prints_the_effective_configuration() {
    let env = Env::new("[runner.in]\ninstances = 4\n");
    let r = env.run(&["check-config"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("[runner.in]\n"), "{}", r.stdout);
    assert!(r.stdout.contains("instances = 4"), "{}", r.stdout);
    assert!(r.stdout.contains("stop_timeout = \"3s\""), "{}", r.stdout);
}

#[test]
fn a_missing_config_file_is_an_error() {
    let r = std::process::Command::new(BIN)
        .args(["-C", "/nonexistent/mailman.toml", "status"])
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(4), "status: LSB's \"unknown\"");
    assert_eq!(
        String::from_utf8_lossy(&r.stderr),
        "/nonexistent/mailman.toml: cannot read the configuration: No such file or directory\n"
    );
}

fn effective(env: &Env, vars: &[(&str, &str)], args: &[&str]) -> Ran {
    let mut all = args.to_vec();
    all.push("check-config");
    let out = env.cmd(&all).envs(vars.iter().copied()).output().unwrap();
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn environment_beats_the_file_and_the_command_line_beats_both() {
    let env = Env::new("[runner.in]\ninstances = 2\n");
    let file = effective(&env, &[], &[]);
    assert!(
        file.stdout.contains("stop_timeout = \"3s\""),
        "{}",
        file.stdout
    );

    let vars = [
        ("MAILMAN__MAILMAN__STOP_TIMEOUT", "7s"),
        ("MAILMAN__RUNNER__ARCHIVE__START", "false"),
        ("MAILMAN__RUNNER__IN__INSTANCES", "4"),
        ("MAILMAN__RUNNER__IN__ENV__Greeting", "hello world"),
        ("MAILMAN__LOGGING__FORMAT", "json"),
    ];
    let r = effective(&env, &vars, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("stop_timeout = \"7s\""), "{}", r.stdout);
    assert!(r.stdout.contains("format = \"json\""), "{}", r.stdout);
    let archive = r.stdout.split("[runner.archive]").nth(1).unwrap();
    assert!(
        archive
            .split("[runner.")
            .next()
            .unwrap()
            .contains("start = false"),
        "{archive}"
    );
    let section_in = r.stdout.split("[runner.in]").nth(1).unwrap();
    assert!(section_in.contains("instances = 4"), "{section_in}");
    assert!(
        r.stdout.contains("Greeting = \"hello world\""),
        "{}",
        r.stdout
    );

    let r = effective(&env, &vars, &["--set", "mailman.stop_timeout=9s"]);
    assert!(r.stdout.contains("stop_timeout = \"9s\""), "{}", r.stdout);

    let var = env.dir.path().join("elsewhere");
    let r = effective(&env, &[("MAILMAN_VAR_DIR", var.to_str().unwrap())], &[]);
    assert!(
        r.stdout
            .contains(&format!("var_dir = \"{}\"", var.display())),
        "{}",
        r.stdout
    );
}

#[test]
fn a_bad_override_names_its_source() {
    let env = Env::new("");
    for (vars, args, expected) in [
        (
            vec![("MAILMAN__RUNNER__IN__INSTANCES", "3")],
            vec![],
            "MAILMAN__RUNNER__IN__INSTANCES=3: Runner \"in\", not a power of 2: 3\n",
        ),
        (
            vec![("MAILMAN__MAILMAN__STOP_TIMEOUT", "soon")],
            vec![],
            "MAILMAN__MAILMAN__STOP_TIMEOUT=soon: invalid duration \"soon\"",
        ),
        (
            vec![("MAILMAN__MAILMAN__BOGUS", "1")],
            vec![],
            "MAILMAN__MAILMAN__BOGUS=1: unknown field `bogus`",
        ),
        (
            vec![("MAILMAN__NOPE", "1")],
            vec![],
            "MAILMAN__NOPE=1: not a configuration key",
        ),
        (
            vec![],
            vec!["--set", "runner.in.start=maybe"],
            "--set runner.in.start=maybe: invalid type",
        ),
        (
            vec![],
            vec!["--set", "mailman.stop_timeout"],
            "--set mailman.stop_timeout: expected SECTION.KEY=VALUE",
        ),
    ] {
        let r = effective(&env, &vars, &args);
        assert_eq!(r.code, 2, "{vars:?} {args:?}");
        assert!(
            r.stderr.starts_with(expected),
            "{:?} should start with {expected:?}",
            r.stderr
        );
        assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
        // And nothing starts.
        let mut start = env.cmd(&[&args[..], &["start"]].concat());
        let out = start.envs(vars.iter().copied()).output().unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(!env.var.exists());
    }
}

#[test]
fn runners_see_the_masters_overrides() {
    // A runner defined only by --set (with its command, as a new runner
    // must be): the built-in runner learns of it from the MAILMAN__
    // variables its master passes on (else it would exit 15 as an unknown
    // runner).
    let env = Env::new(&only(""));
    let command = r#"runner.extra.command=["{bin}", "runner", "-C", "{config}", "--runner", "{name}:{slice}:{range}"]"#;
    let r = env
        .cmd(&[
            "--set",
            command,
            "--set",
            "runner.extra.instances=2",
            "start",
        ])
        .env("MAILMAN__RUNNER__IN__START", "true")
        .output()
        .unwrap();
    assert_eq!(
        r.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    let master = env.pid_from_file().unwrap();
    wait_until("three runners", PATIENCE, || runners_of(master).len() == 3);
    env.wait_log("[extra:1] extra runner started.");
    env.wait_log("[in:0] in runner started.");
    let extra = runners_of(master)
        .into_iter()
        .find(|p| cmdline(*p).contains("extra:0:2"))
        .unwrap();
    assert!(environ(extra).contains(&"MAILMAN__RUNNER__EXTRA__INSTANCES=2".to_string()));
    assert!(!env.log().contains("Undefined runner name"));
    assert_eq!(env.run(&["stop"]).code, 0);
}

/// `preload` is for Mailman Core's runners: without `mailman_cfg` it is a
/// mistake, said in one line, and nothing starts.
#[test]
fn preload_without_mailman_cfg_is_an_error() {
    let env = Env::with_mailman("preload = true\n", "");
    for cmd in [&["start"][..], &["master"], &["check-config"]] {
        let r = env.run(cmd);
        assert_eq!(r.code, 2, "{cmd:?}: {}", r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
        assert!(
            r.stderr.contains("preload = true needs mailman_cfg"),
            "{cmd:?}: {}",
            r.stderr
        );
    }
    assert!(!env.var.join("master.pid").exists());
}

/// A configuration path that never ends (a device, a runaway generator) or
/// a huge file is one error line, at once, not all the memory there is.
/// (The whole of `/dev/zero` was read: here, under a 1 GiB address-space
/// limit, the old code said "out of memory"; without one it took the
/// machine's memory.)
#[cfg(target_os = "linux")]
#[test]
fn a_configuration_without_end_is_refused() {
    use std::os::unix::process::CommandExt;
    let env = Env::new("");
    for args in [&["check-config"][..], &["start"], &["status"]] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mailman"));
        cmd.args(["-C", "/dev/zero"]).args(args);
        // SAFETY: setrlimit is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: 1 << 30,
                    rlim_max: 1 << 30,
                };
                libc::setrlimit(libc::RLIMIT_AS, &lim);
                Ok(())
            });
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let want = if args == ["status"] { 4 } else { 2 };
        assert_eq!(out.status.code(), Some(want), "{args:?}: {stderr}");
        assert_eq!(
            stderr, "/dev/zero: cannot read the configuration: larger than 16 MiB\n",
            "{args:?}"
        );
    }
    assert!(!env.var.exists());
}
