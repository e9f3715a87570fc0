//! Scheduled jobs (docs/jobs.md) on a real clock, with schedules in
//! seconds: runs at their times, overlap policies, timeouts, catch-up
//! across a master restart, a job during stop, `run-job` and `jobs`, bad
//! job tables, and an idle master with a job that does not wake.

mod common;

use std::time::Duration;

use common::*;

/// A master with no runners and `jobs`.
fn env_with(jobs: &str) -> Env {
    let env = Env::new(&format!("{NO_RUNNERS}{jobs}"));
    env.edit_config("stop_timeout = \"3s\"", "stop_timeout = \"1s\"");
    env
}

fn start(env: &Env) -> i32 {
    let r = env.run(&["start"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    env.pid_from_file().unwrap()
}

/// The times (Unix seconds) a job appended to `file`, one per line.
fn stamps(env: &Env, file: &str) -> Vec<f64> {
    // Jobs run in the var dir, as runners do.
    std::fs::read_to_string(env.var.join(file))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect()
}

fn marks(env: &Env, file: &str) -> Vec<String> {
    std::fs::read_to_string(env.var.join(file))
        .unwrap_or_default()
        .lines()
        .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
        .collect()
}

#[test]
fn jobs_run_at_their_times_and_log_each_run() {
    let env = env_with(
        "[job.tick]\ncommand = [\"sh\", \"-c\", \"echo t $(date +%s.%N) >> tick; echo ticked\"]\nevery = \"1s\"\n\
         [job.even]\ncommand = [\"sh\", \"-c\", \"echo e $(date +%s.%N) >> even; exit 3\"]\nschedule = \"*/2 * * * * *\"\n",
    );
    start(&env);
    wait_until("five ticks and three even seconds", PATIENCE, || {
        stamps(&env, "tick").len() >= 5 && stamps(&env, "even").len() >= 3
    });
    assert_eq!(env.run(&["stop"]).code, 0);
    let ticks = stamps(&env, "tick");
    for w in ticks.windows(2) {
        let gap = w[1] - w[0];
        // Every second, anchored to the schedule (a late start does not
        // push the next one back).
        assert!((0.5..2.5).contains(&gap), "tick gaps: {ticks:?}");
    }
    for t in stamps(&env, "even") {
        // Fired on an even second, within a loaded machine's delay.
        let into = t % 2.0;
        assert!(into < 1.0, "an even-second job ran at {t}");
    }
    let log = env.log();
    assert!(log.contains("[job:tick] ticked"), "{log}");
    assert!(log.contains("Job tick started (schedule, pid "), "{log}");
    assert!(log.contains("Job tick ended: EXIT 0 after "), "{log}");
    assert!(log.contains("Job even failed: EXIT 3 after "), "{log}");
    // A failure is reported, never retried: one run per time.
    let runs = log.matches("Job even started").count();
    assert!(runs <= stamps(&env, "even").len() + 1, "{log}");
}

#[test]
fn overlap_skip_queue_and_kill_previous() {
    let body = |f: &str| {
        format!(
            "command = [\"sh\", \"-c\", \"echo start $$ >> {f}; sleep 2.2; echo end $$ >> {f}\"]\nevery = \"1s\"\n"
        )
    };
    let env = env_with(&format!(
        "[job.skip]\n{}\n[job.queue]\n{}overlap = \"queue\"\n[job.kill]\n{}overlap = \"kill-previous\"\n",
        body("skip"),
        body("queue"),
        body("kill")
    ));
    start(&env);
    wait_until("runs under each policy", PATIENCE, || {
        marks(&env, "skip").iter().filter(|m| *m == "end").count() >= 2
            && marks(&env, "queue").iter().filter(|m| *m == "end").count() >= 2
            && marks(&env, "kill").iter().filter(|m| *m == "start").count() >= 3
    });
    assert_eq!(env.run(&["stop"]).code, 0);
    // skip and queue: never two runs at once (start, end, start, end, …).
    for f in ["skip", "queue"] {
        let m = marks(&env, f);
        for (i, w) in m.iter().enumerate() {
            let want = if i % 2 == 0 { "start" } else { "end" };
            assert_eq!(w, want, "{f}: {m:?}");
        }
    }
    // kill-previous: a run is stopped for the next, which does not wait
    // for its end.
    let k = marks(&env, "kill");
    assert!(
        k.windows(2).any(|w| w[0] == "start" && w[1] == "start"),
        "{k:?}"
    );
    let log = env.log();
    assert!(log.contains("is skipped (overlap = \"skip\")"), "{log}");
    assert!(
        log.contains("starts when it ends (overlap = \"queue\")"),
        "{log}"
    );
    assert!(
        log.contains("stopping it for this run (schedule) (overlap = \"kill-previous\")"),
        "{log}"
    );
    assert!(
        log.contains("Job kill failed: SIGNAL 15 (stopped)"),
        "{log}"
    );
}

#[test]
fn a_timeout_escalates_to_sigkill() {
    let env = env_with(
        "[job.stubborn]\ncommand = [\"sh\", \"-c\", \"trap '' TERM; echo up; while true; do sleep 0.1; done\"]\n\
         schedule = \"@yearly\"\nrun_on_start = true\ntimeout = \"1s\"\n",
    );
    start(&env);
    env.wait_log("Job stubborn (pid ");
    env.wait_log("ran past its timeout of 1s; sending SIGTERM");
    env.wait_log("did not stop within 1s; sending SIGKILL");
    env.wait_log("Job stubborn failed: SIGNAL 9 (its timeout) after ");
    let r = env.run(&["jobs", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let j = &v["jobs"][0];
    assert_eq!(j["last_outcome"], "timeout", "{v}");
    assert_eq!(j["last_exit_code"], 137, "{v}");
    assert_eq!(j["failures"], 1, "{v}");
    assert_eq!(v["master_running"], true);
    assert_eq!(env.run(&["stop"]).code, 0);
}

#[test]
fn catch_up_runs_once_after_a_missed_time() {
    let env = env_with(
        "[job.caught]\ncommand = [\"sh\", \"-c\", \"echo c $(date +%s.%N) >> caught\"]\nschedule = \"*/2 * * * * *\"\ncatch_up = true\n\
         [job.missed]\ncommand = [\"true\"]\nschedule = \"*/2 * * * * *\"\n",
    );
    // A first master: no record yet, so nothing to catch up at its start.
    start(&env);
    wait_until("a first run of each", PATIENCE, || {
        env.var.join("jobs/caught.json").exists() && env.var.join("jobs/missed.json").exists()
    });
    assert_eq!(env.run(&["stop"]).code, 0);
    assert!(!env.log().contains("catching up"), "{}", env.log());
    // Down across at least one scheduled time (every 2 s).
    std::thread::sleep(Duration::from_millis(2500));
    let before = env.log().len();
    start(&env);
    env.wait_log("Job caught started (catch-up, pid ");
    let after = env.log()[before..].to_string();
    assert_eq!(after.matches("catching up").count(), 1, "{after}");
    assert!(after.contains("Job caught missed a run while no master ran; catching up."));
    assert!(!after.contains("Job missed started (catch-up"), "{after}");
    assert_eq!(env.run(&["stop"]).code, 0);
    // The record persists: a third start right away has missed nothing.
    let before = env.log().len();
    start(&env);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!env.log()[before..].contains("catch-up"), "{}", env.log());
    assert_eq!(env.run(&["stop"]).code, 0);
}

#[test]
fn a_job_running_during_stop_is_stopped_with_the_master() {
    let env = env_with(
        "[job.long]\ncommand = [\"sleep\", \"60\"]\nschedule = \"@yearly\"\nrun_on_start = true\n",
    );
    let master = start(&env);
    env.wait_log("Job long started (run_on_start, pid ");
    let job = runners_of(master)[0];
    // Logged once the clone returns: /proc shows an empty command line
    // until the exec has set up the new one.
    wait_until("the job past its exec", PATIENCE, || {
        cmdline(job).contains("sleep")
    });
    assert_eq!(env.run(&["stop"]).code, 0);
    assert!(!alive(job));
    let log = env.log();
    assert!(log.contains("Job long (pid "), "{log}");
    assert!(log.contains("is stopped with the master."), "{log}");
    assert!(
        log.contains("Job long failed: SIGNAL 15 (stopped)"),
        "{log}"
    );
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.var.join("jobs/long.json")).unwrap()).unwrap();
    assert_eq!(rec["last_outcome"], "killed");
}

#[test]
fn run_job_jobs_and_status() {
    let env = env_with(
        "[job.manual]\ncommand = [\"sh\", \"-c\", \"echo by hand; sleep 1\"]\nschedule = \"0 3 * * *\"\ntimezone = \"Europe/Berlin\"\nstart = false\n\
         [job.hourly]\ncommand = [\"true\"]\nschedule = \"@hourly\"\n",
    );
    // Without a master: listed from the configuration; run-job refuses.
    let r = env.run(&["jobs"]);
    assert_eq!(r.code, 0);
    assert!(
        r.stdout.contains("manual         0 3 * * * Europe/Berlin"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("disabled"), "{}", r.stdout);
    assert!(r.stdout.contains("(no master runs"), "{}", r.stdout);
    let r = env.run(&["run-job", "manual"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.starts_with("GNU Mailman is not running"),
        "{}",
        r.stderr
    );

    start(&env);
    let r = env.run(&["run-job", "manual"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.starts_with("Job manual started (request, pid "),
        "{}",
        r.stdout
    );
    // Again while it runs: skipped (the default overlap), exit 1.
    let r = env.run(&["run-job", "manual"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("is skipped (overlap = \"skip\")"),
        "{}",
        r.stderr
    );
    let r = env.run(&["run-job", "nope"]);
    assert_eq!(r.code, 1);
    assert_eq!(r.stderr, "no job named \"nope\" is configured\n");
    env.wait_log("[job:manual] by hand");
    env.wait_log("Job manual ended: EXIT 0");

    let v: serde_json::Value =
        serde_json::from_str(&env.run(&["status", "--json"]).stdout).unwrap();
    let jobs = v["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2, "{v}");
    assert_eq!(jobs[0]["name"], "manual");
    assert_eq!(jobs[0]["enabled"], false);
    assert_eq!(jobs[0]["last_outcome"], "success");
    assert_eq!(jobs[0]["runs"], 1);
    assert!(jobs[0]["next_run"].is_null());
    let next = jobs[1]["next_run"].as_str().unwrap();
    assert!(next.ends_with(":00:00Z"), "{next}");
    let r = env.run(&["jobs"]);
    assert!(r.stdout.contains("success (exit 0, "), "{}", r.stdout);
    assert!(!r.stdout.contains("(no master runs"), "{}", r.stdout);
    assert_eq!(env.run(&["stop"]).code, 0);
}

#[test]
fn bad_job_tables_are_one_line_and_nothing_starts() {
    // (table, line and column within the table, message)
    let cases: &[(&str, (usize, usize), &str)] = &[
        (
            "[job.x]\ncommand = [\"true\"]\nschedule = \"61 * * * *\"\n",
            (3, 12),
            "Job \"x\": schedule: invalid cron expression \"61 * * * *\"",
        ),
        (
            "[job.x]\ncommand = [\"true\"]\nschedule = \"@daily\"\ntimezone = \"Mars/Olympus\"\n",
            (4, 12),
            "Job \"x\": unknown timezone \"Mars/Olympus\"",
        ),
        (
            "[job.x]\ncommand = [\"true\"]\nschedule = \"@daily\"\ntimeout = \"0s\"\n",
            (4, 11),
            "Job \"x\": timeout must be more than 0",
        ),
        (
            "[job.in]\ncommand = [\"true\"]\nschedule = \"@daily\"\n",
            (1, 6),
            "Job \"in\" has the name of a runner: give it another",
        ),
        (
            "[job.x]\ncommand = [\"true\"]\n",
            (1, 6),
            "Job \"x\" needs a schedule (a cron expression) or every (an interval)",
        ),
        (
            "[job.x]\ncommand = [\"true\"]\nschedule = \"@daily\"\nevery = \"1m\"\n",
            (4, 9),
            "Job \"x\": schedule and every: set one of them",
        ),
        (
            "[job.x]\ncommand = [\"true\"]\nschedule = \"@daily\"\noverlap = \"sometimes\"\n",
            (4, 11),
            "unknown variant `sometimes`",
        ),
    ];
    for (table, (line, col), want) in cases {
        let env = Env::new(table);
        let text = std::fs::read_to_string(&env.config).unwrap();
        let before = text[..text.find(table).unwrap()].lines().count();
        let r = env.run(&["start"]);
        assert_eq!(r.code, 2, "{table}: {}{}", r.stdout, r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
        let want = format!("{}:{}:{col}: {want}", env.config.display(), before + line);
        assert!(
            r.stderr.starts_with(&want),
            "{table}\nwant {want}\n got {}",
            r.stderr
        );
        assert!(!env.var.join("master.pid").exists());
    }
    // An override that names no job is not a new one.
    let env = Env::new("");
    let r = env.run(&["--set", "job.typo.start=false", "check-config"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("Job \"typo\" needs a command"),
        "{}",
        r.stderr
    );
}

/// The only timer is the next job's: with a job due hourly, an idle master
/// (and its log thread) does not wake at all.
#[test]
fn an_idle_master_with_an_hourly_job_does_not_wake() {
    let env = env_with("[job.hourly]\ncommand = [\"true\"]\nschedule = \"@hourly\"\n");
    // Not across the hour, when the job is due.
    let into_hour = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        % 3600;
    if into_hour > 3590 {
        std::thread::sleep(Duration::from_secs(3601 - into_hour));
    }
    let master = start(&env);
    std::thread::sleep(Duration::from_millis(500));
    let switches = || -> u64 {
        std::fs::read_dir(format!("/proc/{master}/task"))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("status")).ok())
            .flat_map(|s| {
                s.lines()
                    .filter(|l| l.contains("ctxt_switches"))
                    .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .collect::<Vec<_>>()
            })
            .sum()
    };
    let before = switches();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(switches() - before, 0, "the idle master woke up");
    assert_eq!(env.run(&["stop"]).code, 0);
}

/// The value of `series` (name and labels as written) in `/metrics`.
fn metric(port: u16, series: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(PATIENCE)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn job_metrics_count_runs_failures_and_successes() {
    let env = env_with(
        "[http]\nlisten = \"127.0.0.1:0\"\n\
         [job.good]\ncommand = [\"sh\", \"-c\", \"sleep 0.2\"]\nevery = \"1s\"\n\
         [job.broken]\ncommand = [\"sh\", \"-c\", \"exit 4\"]\nevery = \"1s\"\n\
         [job.later]\ncommand = [\"true\"]\nschedule = \"@yearly\"\n",
    );
    start(&env);
    let port = env.http_port();
    wait_until("two runs of each job", PATIENCE, || {
        metric(port, "mailman_job_runs_total{job_name=\"good\"}").is_some_and(|n| n >= 2.0)
            && metric(port, "mailman_job_failures_total{job_name=\"broken\"}")
                .is_some_and(|n| n >= 2.0)
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert_eq!(
        metric(port, "mailman_job_failures_total{job_name=\"good\"}"),
        Some(0.0)
    );
    let success = metric(
        port,
        "mailman_job_last_success_time_seconds{job_name=\"good\"}",
    )
    .expect("good's last success");
    assert!(
        (now - 10.0..=now + 1.0).contains(&success),
        "{success} vs {now}"
    );
    let took = metric(port, "mailman_job_last_duration_seconds{job_name=\"good\"}")
        .expect("good's last duration");
    assert!((0.15..5.0).contains(&took), "{took}");
    // A job that never succeeded has no last success; one not yet run has
    // no runs, and its next time is in the future.
    assert_eq!(
        metric(
            port,
            "mailman_job_last_success_time_seconds{job_name=\"broken\"}"
        ),
        None
    );
    assert_eq!(
        metric(port, "mailman_job_runs_total{job_name=\"later\"}"),
        Some(0.0)
    );
    let next = metric(
        port,
        "mailman_job_next_run_time_seconds{job_name=\"later\"}",
    )
    .expect("later's next run");
    assert!(next > now + 1.0, "{next}");
    assert_eq!(env.run(&["stop"]).code, 0);
}
