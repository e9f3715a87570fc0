//! Bad input: every configuration error is one `FILE:LINE:COL: message` line
//! with exit 2 and nothing started; an unusable var dir is one clear line
//! and a non-zero exit.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;

use common::*;

fn config_error(body: &str, line: usize, col: usize, message: &str) {
    let env = Env::new(body);
    let file = env.config.display().to_string();
    // The [mailman]/[logging] header Env writes is 7 lines long.
    let expected = format!("{file}:{}:{col}: {message}", line + 7);
    for cmd in [
        &["start"][..],
        &["start", "--foreground"],
        &["master"],
        &["check-config"],
        &["status"],
    ] {
        let r = env.run(cmd);
        assert_eq!(r.code, 2, "{cmd:?} on {body:?}: {}", r.stderr);
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
    config_error("[runner.in\n", 1, 11, "");
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
    assert_eq!(r.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&r.stderr),
        "/nonexistent/mailman.toml: cannot read the configuration: No such file or directory\n"
    );
}

#[test]
fn an_unwritable_var_dir_is_one_clear_line() {
    let env = Env::new(&only(""));
    // The config is readable by `nobody`; the var dir's parent is root's.
    fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let r = env.cmd(&["start"]).uid(65534).gid(65534).output().unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        format!("cannot create {}: Permission denied\n", env.var.display())
    );
    assert!(!env.var.exists());

    // The same in the foreground.
    let r = env.cmd(&["master"]).uid(65534).gid(65534).output().unwrap();
    assert_eq!(r.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&r.stderr),
        format!("cannot create {}: Permission denied\n", env.var.display())
    );
}

#[test]
fn a_world_writable_var_dir_is_refused() {
    let env = Env::new(&only(""));
    fs::create_dir_all(&env.var).unwrap();
    fs::set_permissions(&env.var, fs::Permissions::from_mode(0o777)).unwrap();
    let r = env.run(&["start"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("writable by every user"), "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1);
    assert!(!env.pid_file().exists());
}

#[test]
fn a_symlinked_pid_file_is_not_followed() {
    let env = Env::new(&only(""));
    fs::create_dir_all(&env.var).unwrap();
    let target = env.dir.path().join("victim");
    fs::write(&target, "precious\n").unwrap();
    std::os::unix::fs::symlink(&target, env.pid_file()).unwrap();
    let master = env.start(0);
    assert!(master > 0);
    // The symlink was replaced by a file; the target is untouched.
    assert!(
        !fs::symlink_metadata(env.pid_file())
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(fs::read_to_string(&target).unwrap(), "precious\n");
    assert_eq!(env.run(&["stop"]).code, 0);
}
