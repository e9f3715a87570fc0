//! The master's HTTP endpoint and stall detection (docs/observability.md):
//! `/metrics` read by `promtool` and scraped by a real Prometheus, `/livez`
//! and `/readyz` as runners come and go, clients that misbehave, and
//! stalled slices reported, logged and restarted.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// An environment whose master serves HTTP on a port the kernel chooses
/// ([`Env::http_port`] once started).
fn env_with_http(extra: &str) -> Env {
    Env::new(&format!("[http]\nlisten = \"127.0.0.1:0\"\n{extra}"))
}

struct Reply {
    status: u16,
    head: String,
    body: String,
}

/// One raw HTTP exchange: `request` as written, the whole answer read.
fn http(port: u16, request: &str) -> Reply {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.write_all(request.as_bytes()).expect("send");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read the answer");
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Reply {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

fn get(port: u16, path: &str) -> Reply {
    http(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
}

/// The value of the series `series` (name and labels, exactly as written)
/// in a text exposition.
fn value(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn promtool() -> bool {
    Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `promtool check metrics` on `text`: its complaints, if any.
fn promtool_check(text: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(said)
    }
}

const NAMES: &[&str] = &[
    "mailman_master_start_time_seconds",
    "mailman_build_info",
    "mailman_runner_up",
    "mailman_runner_state",
    "mailman_runner_restarts_total",
    "mailman_runner_start_time_seconds",
    "mailman_runner_last_exit_code",
    "mailman_runner_cpu_seconds_total",
    "mailman_runner_resident_memory_bytes",
    "mailman_runner_ready",
    "mailman_runner_stalled",
    "mailman_queue_entries",
    "mailman_queue_oldest_entry_age_seconds",
    "mailman_log_lines_total",
];

#[test]
fn metrics_livez_and_readyz() {
    require(
        promtool(),
        "promtool",
        "apt-get install prometheus (it brings promtool)",
    );
    let env = env_with_http(&only(
        "[runner.in]\nstall_after = \"10m\"\n[runner.out]\ninstances = 2\n",
    ));
    let master = env.start(3);
    let port = env.http_port();
    assert_eq!(get(port, "/livez").status, 200);
    wait_until("/readyz to say ready", PATIENCE, || {
        get(port, "/readyz").status == 200
    });

    // A crash: counted, with its exit; a preserved entry in `bad`.
    let victim = runners_of(master)
        .into_iter()
        .find(|&p| cmdline(p).contains("in:0:1"))
        .unwrap();
    send(victim, 9);
    wait_until("the runner to come back", PATIENCE, || {
        runners_of(master).len() == 3 && !runners_of(master).contains(&victim)
    });
    // Seen as a child before the master has it as `running`: wait for that.
    wait_until("the runner to be running again", PATIENCE, || {
        let m = get(port, "/metrics");
        value(
            &m.body,
            r#"mailman_runner_state{runner="in",slice="0",state="running"}"#,
        ) == Some(1.0)
    });
    let bad = env.var.join("queue/bad");
    std::fs::create_dir_all(&bad).unwrap();
    let old = format!("1700000000.5+{}.psv", "ab".repeat(20));
    std::fs::write(bad.join(&old), "x").unwrap();

    let m = get(port, "/metrics");
    assert_eq!(m.status, 200);
    assert!(
        m.head
            .contains("Content-Type: text/plain; version=0.0.4; charset=utf-8"),
        "{}",
        m.head
    );
    for name in NAMES {
        assert!(
            m.body.lines().any(|l| l.starts_with(name)),
            "{name} missing:\n{}",
            m.body
        );
    }
    promtool_check(&m.body).unwrap_or_else(|e| panic!("promtool: {e}\n{}", m.body));
    let v = |s: &str| value(&m.body, s).unwrap_or_else(|| panic!("no {s} in\n{}", m.body));
    assert_eq!(
        v(r#"mailman_runner_restarts_total{runner="in",slice="0"}"#),
        1.0
    );
    assert_eq!(
        v(r#"mailman_runner_last_exit_code{runner="in",slice="0"}"#),
        137.0
    );
    assert_eq!(
        v(r#"mailman_runner_up{runner="out",slice="1",range="2"}"#),
        1.0
    );
    assert_eq!(
        v(r#"mailman_runner_state{runner="in",slice="0",state="running"}"#),
        1.0
    );
    assert_eq!(
        v(r#"mailman_runner_state{runner="in",slice="0",state="failed"}"#),
        0.0
    );
    assert_eq!(v(r#"mailman_runner_stalled{runner="in",slice="0"}"#), 0.0);
    assert_eq!(v(r#"mailman_queue_entries{queue="bad",state="bad"}"#), 1.0);
    assert!(v(r#"mailman_queue_oldest_entry_age_seconds{queue="bad"}"#) > 3600.0);
    assert!(v(r#"mailman_runner_resident_memory_bytes{runner="out",slice="0"}"#) > 100_000.0);
    assert!(v(r#"mailman_log_lines_total{stream="master"}"#) >= 1.0);
    // A runner without stall_after has no stall series.
    assert!(!m.body.contains(r#"mailman_runner_stalled{runner="out""#));

    // OpenMetrics when asked for it.
    let om = http(
        port,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n",
    );
    assert!(
        om.head.contains("application/openmetrics-text"),
        "{}",
        om.head
    );
    assert!(om.body.ends_with("# EOF\n"), "{}", om.body);
    assert!(om.body.contains("# TYPE mailman_build info"));

    // HEAD: the head only; anything else: 404 or 405.
    let head = http(port, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((head.status, head.body.as_str()), (200, ""));
    assert!(head.head.contains("Content-Length: "));
    assert_eq!(get(port, "/").status, 404);
    assert_eq!(get(port, "/metrics/../x").status, 404);
    let post = http(
        port,
        "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(post.status, 405);
    assert!(env.run(&["stop"]).code == 0);
}

#[test]
fn readyz_says_what_is_not_ready() {
    let env = env_with_http(&only("[runner.in]\nrestart_delay = \"1h\"\n[runner.out]\n"));
    let master = env.start(2);
    let port = env.http_port();
    wait_until("ready", PATIENCE, || get(port, "/readyz").status == 200);
    let victim = runners_of(master)
        .into_iter()
        .find(|&p| cmdline(p).contains("in:0:1"))
        .unwrap();
    send(victim, 9);
    wait_until("/readyz to say 503", PATIENCE, || {
        get(port, "/readyz").status == 503
    });
    let r = get(port, "/readyz");
    assert!(r.body.contains("runner in:0:1 is restarting"), "{}", r.body);
    // The loop turns: alive, whatever the runners do.
    assert_eq!(get(port, "/livez").status, 200);
    assert_eq!(env.run(&["restart", "in"]).code, 0);
    wait_until("ready again", PATIENCE, || {
        get(port, "/readyz").status == 200
    });
    assert_eq!(env.run(&["stop"]).code, 0);
}

/// Slowloris, floods of connections, garbage and oversized requests: the
/// master keeps answering `status` and scrapes, and every connection is
/// closed within its deadline, leaving no fd behind.
#[test]
fn bad_http_clients_never_hold_the_master() {
    let env = env_with_http(&only("[runner.in]\n"));
    let master = env.start(1);
    let port = env.http_port();
    wait_until("ready", PATIENCE, || get(port, "/readyz").status == 200);
    let fds = || {
        std::fs::read_dir(format!("/proc/{master}/fd"))
            .unwrap()
            .count()
    };
    let before = fds();
    // Anonymous memory, where a leak would be: the program's own pages,
    // which the master gives back once started (os::memory), come back as
    // its code runs.
    let rss = |pid: i32| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("RssAnon:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    };
    let rss_before = rss(master);

    // 40 connections that say nothing, one that stops mid-head, one that
    // sends 64 KiB without an end.
    let mut silent: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let mut partial = TcpStream::connect(("127.0.0.1", port)).unwrap();
    partial
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut big = TcpStream::connect(("127.0.0.1", port)).unwrap();
    big.set_read_timeout(Some(PATIENCE)).unwrap();
    let _ = big.write_all(&vec![b'A'; 64 * 1024]);
    let mut answer = Vec::new();
    let _ = big.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty()
            || answer.starts_with("HTTP/1.1 431")
            || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );
    let mut garbage = TcpStream::connect(("127.0.0.1", port)).unwrap();
    garbage.set_read_timeout(Some(PATIENCE)).unwrap();
    garbage.write_all(b"\x00\x01\x02 nonsense\r\n\r\n").unwrap();
    let mut g = String::new();
    let _ = garbage.read_to_string(&mut g);
    assert!(g.starts_with("HTTP/1.1 400"), "{g}");

    // Meanwhile: status answers, a scrape gets through (the oldest idle
    // connection made room for it), a thousand short connections pass.
    let t = Instant::now();
    let r = env.run(&["status"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(t.elapsed() < PATIENCE);
    assert_eq!(get(port, "/metrics").status, 200);
    for _ in 0..1000 {
        drop(TcpStream::connect(("127.0.0.1", port)));
    }
    assert_eq!(get(port, "/livez").status, 200);

    // Every connection is closed by the master within its deadline.
    partial.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut rest = Vec::new();
    assert!(
        partial.read_to_end(&mut rest).is_ok(),
        "partial head kept open"
    );
    for s in &mut silent {
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut buf = Vec::new();
        assert!(s.read_to_end(&mut buf).is_ok(), "silent client kept open");
    }
    wait_until(
        "the master's fds to return to what they were",
        PATIENCE,
        || fds() <= before,
    );
    assert!(
        rss(master) < rss_before + 1024,
        "anonymous RSS grew from {rss_before} KiB to {} KiB",
        rss(master)
    );
    assert_eq!(env.run(&["stop"]).code, 0);
}

#[test]
fn a_stalled_slice_is_reported_logged_and_restarted() {
    let env = env_with_http(&only(
        "[runner.in]\nstall_after = \"1s\"\nsleep_time = \"100ms\"\non_stall = \"restart\"\n\
         [runner.out]\nstall_after = \"1s\"\nsleep_time = \"100ms\"\nhandler = [\"true\"]\n",
    ));
    env.edit_config("stop_timeout = \"3s\"", "stop_timeout = \"1s\"");
    let master = env.start(2);
    let port = env.http_port();
    let pid_of = |spec: &str| {
        runners_of(master)
            .into_iter()
            .find(|&p| cmdline(p).contains(spec))
    };
    let stuck_in = pid_of("in:0:1").unwrap();
    let stuck_out = pid_of("out:0:1").unwrap();
    // Up for a while, so that the entries' age counts in full.
    std::thread::sleep(Duration::from_millis(1500));
    for p in [stuck_in, stuck_out] {
        send(p, libc::SIGSTOP);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for q in ["in", "out"] {
        let dir = env.var.join("queue").join(q);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(format!("{:.6}+{}.msg", now - 30.0, "cd".repeat(20))),
            "x",
        )
        .unwrap();
    }
    // Reported: log (once), status, /readyz, metrics.
    env.wait_log("Runner out:0:1 stalled");
    let status = env.run(&["status"]);
    assert!(
        status.stdout.contains("runner out:0:1 stalled"),
        "{}",
        status.stdout
    );
    let json: serde_json::Value =
        serde_json::from_str(&env.run(&["status", "--json"]).stdout).unwrap();
    let out = json["runners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "out")
        .unwrap()
        .clone();
    assert_eq!(out["stalled"], true, "{out}");
    assert!(out["queue_wait_secs"].as_f64().unwrap() > 1.0);
    let ready = get(port, "/readyz");
    assert_eq!(ready.status, 503);
    assert!(
        ready.body.contains("runner out:0:1 stalled"),
        "{}",
        ready.body
    );
    let m = get(port, "/metrics").body;
    assert_eq!(
        value(&m, r#"mailman_runner_stalled{runner="out",slice="0"}"#),
        Some(1.0)
    );

    // on_stall = "restart": SIGUSR1, SIGTERM, SIGKILL (it is stopped), and
    // the exit counts.
    env.wait_log("Restarting stalled runner in:0:1");
    wait_until("the stalled runner to be replaced", PATIENCE, || {
        !alive(stuck_in) && pid_of("in:0:1").is_some()
    });
    wait_until("the restart to show as counted", PATIENCE, || {
        value(
            &get(port, "/metrics").body,
            r#"mailman_runner_restarts_total{runner="in",slice="0"}"#,
        ) == Some(1.0)
    });
    // The new runner takes the entry: no longer stalled.
    env.wait_log("Runner in:0:1 is no longer stalled.");

    // The reporting one: cleared once it works again.
    send(stuck_out, libc::SIGCONT);
    env.wait_log("Runner out:0:1 is no longer stalled.");
    assert_eq!(env.log().matches("Runner out:0:1 stalled").count(), 1);
    wait_until("ready again", PATIENCE, || {
        get(port, "/readyz").status == 200
    });
    assert_eq!(env.run(&["stop"]).code, 0);
}

#[test]
fn http_listen_errors_are_clear() {
    let env = Env::new("[http]\nlisten = \"9410\"\n");
    let r = env.run(&["check-config"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("listen must be HOST:PORT") && r.stderr.contains("mailman.toml:9:10: "),
        "{}",
        r.stderr
    );
    // A port someone else holds: start fails, saying so, and leaves nothing.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let env = Env::new(&only("[runner.in]\n"));
    let set = format!("http.listen=127.0.0.1:{port}");
    let r = env.run(&["--set", &set, "start"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "[http] listen = \"127.0.0.1:{port}\": cannot listen"
        )) && r.stderr.contains("in use"),
        "{}",
        r.stderr
    );
    assert_eq!(env.run(&["status"]).code, 3);
    // Through the environment, like every key.
    let r = env
        .cmd(&["start"])
        .env("MAILMAN__HTTP__LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let chosen = env.http_port();
    // `status --json` says where it listens too, the chosen port included.
    let r = env.run(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["master"]["http"], format!("127.0.0.1:{chosen}"), "{v}");
    assert_eq!(get(chosen, "/livez").status, 200);
    assert_eq!(env.run(&["stop"]).code, 0);
}

/// The port Prometheus says it listens on (`msg="Listening on"
/// address=127.0.0.1:PORT`), read from its log, which a thread keeps
/// draining afterwards.
fn listening_on(log: std::process::ChildStderr) -> u16 {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = String::new();
        for line in std::io::BufReader::new(log).lines().map_while(Result::ok) {
            let port = line
                .contains("msg=\"Listening on\"")
                .then(|| line.rsplit_once("address=127.0.0.1:"))
                .flatten()
                .and_then(|(_, p)| p.trim().parse::<u16>().ok());
            match port {
                Some(p) => {
                    let _ = tx.send(Ok(p));
                }
                None if seen.len() < 8192 => seen += &format!("{line}\n"),
                None => {}
            }
        }
        let _ = tx.send(Err(seen));
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(port)) => port,
        Ok(Err(log)) => panic!("Prometheus exited without listening:\n{log}"),
        Err(e) => panic!("Prometheus did not say where it listens: {e}"),
    }
}

/// Debian's Prometheus scrapes the master and its query API returns our
/// series.
#[test]
fn a_real_prometheus_scrapes_the_master() {
    let have = Command::new("prometheus")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    require(have, "Prometheus", "apt-get install prometheus");
    let env = env_with_http(&only("[runner.in]\n[runner.out]\ninstances = 2\n"));
    env.start(3);
    let port = env.http_port();
    let cfg = env.dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: mailman\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        ),
    )
    .unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            env.dir.path().join("tsdb").display()
        ))
        // Its own port, chosen by the kernel and learnt from its log.
        .arg("--web.listen-address=127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start prometheus");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut prom = Kill(child);
    let prom_port = listening_on(prom.0.stderr.take().unwrap());
    let query = |q: &str| -> serde_json::Value {
        let r = std::panic::catch_unwind(|| get(prom_port, &format!("/api/v1/query?query={q}")));
        r.ok()
            .and_then(|r| serde_json::from_str(&r.body).ok())
            .unwrap_or(serde_json::Value::Null)
    };
    let patience = Duration::from_secs(60);
    wait_until("Prometheus to have scraped the master", patience, || {
        query("mailman_runner_up")["data"]["result"]
            .as_array()
            .is_some_and(|a| a.len() == 3)
    });
    let up = query("up");
    assert_eq!(up["data"]["result"][0]["value"][1], "1", "{up}");
    let r = query("mailman_runner_up");
    let mut seen: Vec<String> = r["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let m = &s["metric"];
            format!(
                "{}:{}:{}",
                m["runner"].as_str().unwrap(),
                m["slice"].as_str().unwrap(),
                m["range"].as_str().unwrap()
            )
        })
        .collect();
    seen.sort();
    assert_eq!(seen, ["in:0:1", "out:0:2", "out:1:2"]);
    wait_until("a counter and the info series", patience, || {
        query("mailman_runner_restarts_total")["data"]["result"]
            .as_array()
            .is_some_and(|a| a.len() == 3)
            && query("mailman_build_info")["data"]["result"][0]["metric"]["version"].is_string()
    });
    // Every query of the Grafana dashboard works on what was scraped
    // (rates need two scrapes: a few seconds).
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(contrib("grafana-dashboard.json")).unwrap())
            .unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().clone())
        .map(|t| t["expr"].as_str().unwrap().replace("$instance", ".*"))
        .collect();
    assert!(exprs.len() >= 10);
    for expr in exprs {
        // Only after an exit is there a last exit code.
        let may_be_empty = expr.contains("last_exit_code");
        wait_until(&format!("dashboard query {expr}"), patience, || {
            let r = query(&url_encode(&expr));
            r["status"] == "success"
                && (may_be_empty
                    || r["data"]["result"]
                        .as_array()
                        .is_some_and(|a| !a.is_empty()))
        });
    }
    assert_eq!(env.run(&["stop"]).code, 0);
}

fn contrib(file: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib/prometheus")
        .join(file)
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// contrib/prometheus: the alert rules pass `promtool check rules` and
/// their unit tests (`promtool test rules`), and they and the dashboard
/// name only series the master exports.
#[test]
fn alert_rules_check_and_pass_their_tests() {
    require(
        promtool(),
        "promtool",
        "apt-get install prometheus (it brings promtool)",
    );
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(contrib(""))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rules = std::fs::read_to_string(contrib("alerts.yml")).unwrap();
    let dashboard = std::fs::read_to_string(contrib("grafana-dashboard.json")).unwrap();
    for text in [rules, dashboard] {
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("mailman_") && word != "mailman_" {
                assert!(
                    NAMES.contains(&word) || word == "mailman_log_lines_dropped_total",
                    "{word} is not a series the master exports"
                );
            }
        }
    }
}
