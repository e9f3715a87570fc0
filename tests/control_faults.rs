//! What no control client, and no shortage of descriptors, can do to the
//! master: a client that never reads its answers, connections left idle in
//! every place, a master with no descriptor to spare for a new connection.
//! Each test failed before its fix. Linux: `/proc`, `prlimit`.
#![cfg(target_os = "linux")]

mod common;

use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::*;

/// One runner that only waits.
const SLEEPER: &str = "[runner.in]\ncommand = [\"sleep\", \"1000\"]\n";

/// The descriptor a process would get next (the lowest free number): an
/// open-file limit of this leaves it none.
fn next_fd(pid: i32) -> u64 {
    let open: std::collections::BTreeSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    (0..).find(|n| !open.contains(n)).unwrap()
}

/// Sets another process's soft open-file limit (`None`: its hard limit).
fn set_nofile(pid: i32, n: Option<u64>) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls with valid rlimit structs.
    unsafe {
        let r = libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut lim);
        assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
        lim.rlim_cur = n.unwrap_or(lim.rlim_max);
        let r = libc::prlimit(pid, libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut());
        assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
    }
}

/// CPU time a process has used, in seconds.
fn cpu_secs(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = stat.rsplit_once(')').unwrap().1;
    let f: Vec<f64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (f[11] + f[12]) / hz
}

/// A client that sends request after request and never reads an answer
/// holds nothing: the master's answers wait in that client's buffer, not in
/// the event loop. (The master used to write answers blocking, up to 2 s
/// each: `status --check` waited out its 5 s and said the health was
/// unknown, exit 4.)
#[test]
fn a_client_that_reads_no_answer_cannot_hold_the_master() {
    let env = Env::new(&only(&format!("{SLEEPER}restart_delay = \"0s\"\n")));
    let master = env.start(1);
    let mut flood = UnixStream::connect(env.var.join("master.sock")).unwrap();
    flood.set_nonblocking(true).unwrap();
    let line = b"{\"command\":\"status\"}\n".repeat(1000);
    // Requests until the master takes no more: its answers have filled the
    // socket and it reads nothing more of this client until they are taken.
    let mut full_since = None;
    wait_until("the master to stop reading the flood", PATIENCE, || {
        match flood.write(&line) {
            Ok(_) => full_since = None,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let since = *full_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > Duration::from_millis(500) {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("the master dropped the flood: {e}"),
        }
        false
    });
    for _ in 0..3 {
        let r = env.run(&["status", "--check"]);
        assert_eq!(
            (r.code, r.stdout.as_str()),
            (
                0,
                format!("GNU Mailman is running (master pid: {master})\n").as_str()
            ),
            "{}",
            r.stderr
        );
    }
    let runner = runners_of(master)[0];
    send(runner, 9);
    wait_until("the runner to come back", PATIENCE, || {
        runners_of(master).iter().any(|&p| p != runner)
    });
    drop(flood);
    assert_eq!(env.run(&["stop"]).code, 0);
}

/// Idle connections in every place the master keeps do not keep `stop` out:
/// the client idle longest makes room. (`stop` used to be answered "busy:
/// too many control connections" and fail, as did `restart` and `reopen`.)
#[test]
fn idle_connections_do_not_keep_stop_out() {
    let env = Env::new(&only(SLEEPER));
    let master = env.start(1);
    let idle: Vec<UnixStream> = (0..100)
        .map(|_| UnixStream::connect(env.var.join("master.sock")).unwrap())
        .collect();
    let r = env.run(&["status", "--check"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let r = env.run(&["restart", "in"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let r = env.run(&["stop"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    wait_until("the master to exit", PATIENCE, || !alive(master));
    drop(idle);
}

/// With no descriptor to spare and no connection of its own to close for
/// one, the master leaves that listener alone for a moment instead of
/// spinning on a backlog it cannot take (it used a whole core); a control
/// client closes the idle one for room; and the waiting connections are
/// served once descriptors are free again.
#[test]
fn out_of_descriptors_the_listeners_rest() {
    let env = Env::new(&only(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n{SLEEPER}"
    )));
    let master = env.start(1);
    let port = env.http_port();
    // Idle control clients fill the low holes of its table, until every
    // descriptor below a limit roomy enough for its `poll` set is in use
    // (one at least: `status` below makes room by closing it).
    let socket = env.var.join("master.sock");
    let mut idle = Vec::new();
    while idle.is_empty() || next_fd(master) < 24 {
        let before = next_fd(master);
        idle.push(UnixStream::connect(&socket).unwrap());
        wait_until("the master to take the client", PATIENCE, || {
            next_fd(master) != before
        });
    }
    set_nofile(master, Some(next_fd(master)));
    // HTTP connections it cannot take, and no HTTP connection to close.
    let mut scrapes: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    // A window to measure in, not a wait for something: the master tries
    // to accept them at once.
    let (t, before) = (Instant::now(), cpu_secs(master));
    std::thread::sleep(Duration::from_secs(2));
    let share = (cpu_secs(master) - before) / t.elapsed().as_secs_f64();
    assert!(
        share < 0.25,
        "the master used {:.0} % of a core",
        share * 100.0
    );
    env.wait_log("out of file descriptors (open-file limit ");
    // `status` gets in: an idle control client makes room.
    let r = env.run(&["status", "--check"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    // Descriptors back: the scrapes that waited are answered.
    set_nofile(master, None);
    let s = &mut scrapes[0];
    s.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(s, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(idle);
    assert_eq!(env.run(&["stop"]).code, 0);
}

/// An open-file limit lowered under the running master below the
/// descriptors it polls (`prlimit --pid`): `poll` refuses the set (EINVAL),
/// and the loop heard nothing more, `status` and `stop` included. The
/// master raises the limit back and answers.
#[test]
fn a_limit_lowered_below_the_poll_set_is_raised_back() {
    let env = Env::new(&only(SLEEPER));
    let master = env.start(1);
    set_nofile(master, Some(2));
    let r = env.run(&["status", "--check"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    env.wait_log("open-file limit was lowered under the running master");
    assert_eq!(env.run(&["stop"]).code, 0);
}

/// A master that takes no connection (out of descriptors, or, here,
/// stopped) is stopped with SIGTERM after the identity check once the socket
/// has not answered (`stop` said "cannot talk to the master" and exit 1).
#[test]
fn stop_signals_a_master_that_does_not_answer_on_its_socket() {
    let env = Env::new(&only(SLEEPER));
    let master = env.start(1);
    assert!(send(master, libc::SIGSTOP));
    let stop = env
        .cmd(&["stop"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The SIGTERM waits while the master is stopped; then it goes on.
    let pending = || {
        let status = std::fs::read_to_string(format!("/proc/{master}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("ShdPnd:"))
            .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            .is_some_and(|m| m & (1 << (libc::SIGTERM - 1)) != 0)
    };
    wait_until("stop to send SIGTERM", Duration::from_secs(30), pending);
    assert!(send(master, libc::SIGCONT));
    let out = stop.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("the master to exit", PATIENCE, || !alive(master));
}
