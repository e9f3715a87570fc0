//! The master's modes: foreground (container form) logging to stderr and
//! stopping on SIGINT/SIGQUIT, JSON log lines, multi-call names, and
//! `--run-as-user`.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

use common::*;

const ONE_RUNNER: &str = "[runner.in]\nstart = true\n";

fn foreground_stops_on(sig: i32, name: &str) {
    let env = Env::new(&only(ONE_RUNNER));
    env.edit_config("stderr = false", "stderr = true");
    let child = env
        .cmd(&["start", "--foreground"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let master = child.id() as i32;
    wait_until("the runner", PATIENCE, || runners_of(master).len() == 1);
    env.wait_log("in runner started.");
    let runner = runners_of(master)[0];
    assert!(send(master, sig));
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Starting Mailman's master runner\n"
    );
    // The container log (stderr) and the file both have the whole story.
    for text in [stderr.to_string(), env.log()] {
        assert!(
            text.contains(&format!("({master}) Master started")),
            "{text}"
        );
        assert!(
            text.contains(&format!("[in:0] in runner caught {name}.  Stopping.")),
            "{text}"
        );
        assert!(
            text.contains(&format!("Master watcher caught {name}.  Exiting.")),
            "{text}"
        );
        assert!(text.contains("Master stopped"), "{text}");
    }
    assert!(!alive(runner));
    assert!(!env.pid_file().exists());
}

#[test]
fn foreground_master_logs_to_stderr_and_stops_on_sigint() {
    foreground_stops_on(2, "SIGINT");
}

#[test]
fn foreground_master_stops_on_sigquit() {
    foreground_stops_on(3, "SIGQUIT");
}

#[test]
fn json_log_lines() {
    let env = Env::new(&only(ONE_RUNNER));
    env.edit_config("[logging]\n", "[logging]\nformat = \"json\"\n");
    let master = env.start(1);
    let runner = runners_of(master)[0];
    env.wait_log("in runner started.");
    assert_eq!(env.run(&["stop"]).code, 0);
    let mut saw_runner_line = false;
    for line in env.log().lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["time"].is_string() && v["level"].is_string() && v["message"].is_string(),
            "{line}"
        );
        if v["message"] == "in runner started." {
            assert_eq!(v["runner"], "in");
            assert_eq!(v["slice"], 0);
            assert_eq!(v["pid"], runner);
            assert_eq!(v["stream"], "stderr");
            saw_runner_line = true;
        }
    }
    assert!(saw_runner_line, "{}", env.log());
}

#[test]
fn multi_call_names() {
    let env = Env::new(&only(ONE_RUNNER));
    let bin_dir = env.dir.path().join("bin");
    fs::create_dir(&bin_dir).unwrap();
    for name in ["start", "stop", "status", "restart", "reopen", "master"] {
        std::os::unix::fs::symlink(BIN, bin_dir.join(name)).unwrap();
    }
    let call = |name: &str| {
        let out = std::process::Command::new(bin_dir.join(name))
            .arg("-C")
            .arg(&env.config)
            .env_remove("MAILMAN_CONFIG_FILE")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert_eq!(call("status"), (3, env.not_running()));
    assert_eq!(
        call("start"),
        (0, "Starting Mailman's master runner\n".into())
    );
    let master = env.pid_from_file().unwrap();
    assert_eq!(
        call("status"),
        (
            0,
            format!("GNU Mailman is running (master pid: {master})\n")
        )
    );
    assert_eq!(
        call("reopen"),
        (0, "Reopening the Mailman runners\n".into())
    );
    assert_eq!(
        call("restart"),
        (0, "Restarting the Mailman runners\n".into())
    );
    assert_eq!(
        call("stop"),
        (0, "Shutting down Mailman's master runner\n".into())
    );
    assert!(!alive(master));
}

#[test]
fn run_as_user_switches_before_taking_the_lock() {
    require(
        nix::unistd::geteuid().is_root(),
        "root (--run-as-user switches users)",
        "run the tests as root",
    );
    let env = Env::with_mailman(
        "stop_timeout = \"3s\"\nuser = \"nobody\"\ngroup = \"nogroup\"\n",
        &only(ONE_RUNNER),
    );
    fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir(&env.var).unwrap();
    nix::unistd::chown(&env.var, Some(65534.into()), Some(65534.into())).unwrap();

    let r = env.run(&["start", "--run-as-user"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let master = env.pid_from_file().unwrap();
    wait_until("the runner", PATIENCE, || runners_of(master).len() == 1);
    let uid_line = |pid: i32| {
        fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
            .unwrap()
    };
    assert_eq!(uid_line(master), "65534 65534 65534 65534");
    assert_eq!(uid_line(runners_of(master)[0]), "65534 65534 65534 65534");
    let meta = fs::metadata(env.var.join("locks/master.lck")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 65534);
    assert!(!env.log().contains("running as root"));
    assert_eq!(env.run(&["stop"]).code, 0);
    assert!(!alive(master));
}

#[test]
fn completions_and_man_page() {
    // They need no configuration, not even a readable one.
    let run = |args: &[&str]| {
        std::process::Command::new(BIN)
            .args(["-C", "/nonexistent.toml"])
            .args(args)
            .output()
            .unwrap()
    };
    for shell in ["bash", "zsh", "fish"] {
        let out = run(&["completions", shell]);
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        for sub in [
            "start",
            "stop",
            "restart",
            "reopen",
            "status",
            "check-config",
        ] {
            assert!(text.contains(sub), "{shell} completions lack {sub}");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("mailman.bash");
    fs::write(&script, run(&["completions", "bash"]).stdout).unwrap();
    let syntax = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .status()
        .unwrap();
    assert!(syntax.success(), "bash -n rejects the completion script");

    let man = run(&["man"]);
    assert!(man.status.success());
    let page = String::from_utf8_lossy(&man.stdout);
    assert!(page.contains(".TH mailman 1"), "{page}");
    assert!(page.contains("check\\-config"), "{page}");
    for section in [".SH \"EXIT STATUS\"", ".SH ENVIRONMENT", ".SH FILES"] {
        assert!(page.contains(section), "{section} missing:\n{page}");
    }
    // Every page the main one refers to (mailman-start(1), …) is generated.
    let pages = dir.path().join("man");
    assert!(
        run(&["man", "--dir", pages.to_str().unwrap()])
            .status
            .success()
    );
    let referred: Vec<String> = page
        .match_indices("mailman\\-")
        .filter_map(|(i, _)| {
            let rest = &page[i + "mailman\\-".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '\\' || *c == '-')
                .collect();
            rest[name.len()..]
                .starts_with("(1)")
                .then(|| format!("mailman-{}.1", name.replace("\\-", "-")))
        })
        .collect();
    assert!(referred.len() >= 10, "{referred:?}");
    for file in referred {
        assert!(
            pages.join(&file).is_file(),
            "{file} is referred to, not generated"
        );
    }
    assert!(pages.join("mailman.1").is_file());
}
