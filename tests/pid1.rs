//! The master as PID 1 of a new PID namespace (what a container gives it),
//! via `unshare --pid --fork --mount-proc`: it reaps orphans, and `stop` run
//! inside the namespace (SIGTERM to PID 1) ends it with status 0.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// An orphan maker: every 20 ms a background process that exits at once,
/// re-parented to PID 1 (the master) when its subshell exits first.
const ORPHANS: &str = r#"
[runner.orphans]
command = ["sh", "-c", "trap 'exit 0' TERM; i=0; while [ $i -lt 100 ]; do (sleep 0.01 &); i=$((i+1)); sleep 0.02; done; echo spawned 100; while true; do sleep 0.05; done"]
[runner.in]
start = true
"#;

fn unshare_works() -> bool {
    Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn as_pid_1_it_reaps_orphans_and_stops_cleanly() {
    require(
        unshare_works(),
        "`unshare --pid --fork --mount-proc`",
        "apt-get install util-linux, and run the tests as root",
    );
    let env = Env::new(&only(ORPHANS));
    let mut unshare = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", BIN, "-C"])
        .arg(&env.config)
        .arg("master")
        .env_remove("MAILMAN_CONFIG_FILE")
        .env("MAILMAN_VAR_DIR", &env.var)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let outer = unshare.id() as i32;
    let mut master = 0;
    wait_until("the master under unshare", PATIENCE, || {
        master = runners_of(outer).first().copied().unwrap_or(0);
        master != 0 && runners_of(master).len() == 2
    });
    env.wait_log("(1) Master started");
    assert_eq!(env.pid_from_file(), Some(1), "pid file holds the inner pid");

    // Orphans re-parent to PID 1 and are reaped: none piles up as a zombie.
    env.wait_log("spawned 100");
    std::thread::sleep(Duration::from_millis(100));
    let zombies = zombies_of(master);
    assert!(zombies.len() <= 2, "zombies left under PID 1: {zombies:?}");
    assert!(env.log().contains("(1) Master started"));

    // From outside the namespace the control socket reaches it…
    let st = env.run(&["status", "--json"]);
    assert_eq!(st.code, 0, "{}", st.stdout);
    assert!(st.stdout.contains("\"pid\":1"), "{}", st.stdout);
    // …and without the socket the CLI refuses to signal pid 1 (this
    // machine's init, out here) and says why.
    std::fs::remove_file(env.var.join("master.sock")).unwrap();
    let r = env.run(&["stop"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("another PID namespace"), "{}", r.stderr);
    assert!(alive(master));

    // Inside the namespace (as `docker exec mailman stop` is), `stop` signals
    // PID 1 (no socket now) and returns at once: waiting would only get it killed with the
    // namespace. The master then stops with status 0.
    let inside = Command::new("nsenter")
        .args([
            "--target",
            &master.to_string(),
            "--pid",
            "--mount",
            BIN,
            "-C",
        ])
        .arg(&env.config)
        .arg("stop")
        .env("MAILMAN_VAR_DIR", &env.var)
        .output()
        .unwrap();
    assert_eq!(
        inside.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&inside.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&inside.stdout),
        "Shutting down Mailman's master runner\n"
    );
    let status = unshare.wait().unwrap();
    assert_eq!(status.code(), Some(0), "master as PID 1 exits 0 on SIGTERM");
    let log = env.log();
    assert!(
        log.contains("Master watcher caught SIGTERM.  Exiting."),
        "{log}"
    );
    assert!(log.contains("(1) Master stopped"), "{log}");
    assert!(!env.pid_file().exists());
}
