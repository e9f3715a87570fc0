//! `status` (Mailman's line, LSB exit codes) and `status --json` (the
//! master's own report over the control socket).

use std::time::Duration;

use serde_json::json;

use super::{ASK_TIMEOUT, EXIT_UNHEALTHY, lsb, not_running, probe_settled};
use crate::config::Located;
use crate::control::{self, Answer, Request};
use crate::os::layout::Layout;
use crate::os::lock::{self, PidFile, Probe};

/// How long `status` waits for the master's answer about its health.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// `status`: Mailman's line, then, when something is wrong, a line saying
/// what (`GNU Mailman is degraded: …`). The exit status is LSB's; with
/// `check`, a master that runs but is starting, stopping or degraded
/// exits 1, and one whose health cannot be learnt exits 4.
pub fn status(located: Located, check: bool) -> i32 {
    let (layout, probe, asked) = match ask_checking(located, &Request::Health, HEALTH_TIMEOUT) {
        Ok(asked) => asked,
        Err(code) => return code,
    };
    let layout = &layout;
    let (line, code) = match probe {
        Probe::Unknown(e) => (
            format!("GNU Mailman is in an unexpected state ({e})"),
            lsb::UNKNOWN,
        ),
        Probe::Held(_) => {
            return match asked {
                Ok(Answer::Reply(r, _)) if r.health.is_some() => {
                    let h = r.health.unwrap_or_default();
                    println!("GNU Mailman is running (master pid: {})", h.pid);
                    if h.problems.is_empty() {
                        return lsb::RUNNING;
                    }
                    let what = if h.state == "running" {
                        "degraded"
                    } else {
                        h.state.as_str()
                    };
                    println!("GNU Mailman is {what}: {}", h.problems.join("; "));
                    if check { EXIT_UNHEALTHY } else { lsb::RUNNING }
                }
                other => {
                    let why = match other {
                        Ok(Answer::Reply(r, _)) => r.error.unwrap_or_else(|| "no answer".into()),
                        Ok(Answer::NoSocket) => "the master has no control socket".into(),
                        Err(e) => e.to_string(),
                    };
                    // The lock's pid only once proven the master's.
                    match verified_pid(layout) {
                        Some(pid) => println!("GNU Mailman is running (master pid: {pid})"),
                        None => println!("GNU Mailman is running (master pid: unknown)"),
                    }
                    if check {
                        println!("GNU Mailman's health is unknown: {why}");
                        lsb::UNKNOWN
                    } else {
                        lsb::RUNNING
                    }
                }
            };
        }
        Probe::Free => match lock::read_pid_file(layout) {
            Ok(PidFile::Missing) => (not_running(layout), lsb::NOT_RUNNING),
            Ok(PidFile::Pid(pid)) => (
                format!("GNU Mailman is stopped (stale pid: {pid})"),
                lsb::DEAD_WITH_PID_FILE,
            ),
            Err(e) => (
                format!("GNU Mailman is in an unexpected state ({e})"),
                lsb::UNKNOWN,
            ),
        },
    };
    println!("{line}");
    code
}

/// `status --json`: the master's own report over the socket when it runs.
pub fn status_json(located: Located) -> i32 {
    let (layout, probe, asked) = match ask_checking(located, &Request::Status, ASK_TIMEOUT) {
        Ok(asked) => asked,
        Err(code) => return code,
    };
    let layout = &layout;
    let (value, code) = match probe {
        Probe::Unknown(e) => (
            json!({"running": null, "state": "unknown", "detail": e}),
            lsb::UNKNOWN,
        ),
        Probe::Free => match lock::read_pid_file(layout) {
            Ok(PidFile::Missing) => (
                json!({"running": false, "state": "not running"}),
                lsb::NOT_RUNNING,
            ),
            Ok(PidFile::Pid(pid)) => (
                json!({"running": false, "state": "stopped", "stale_pid": pid}),
                lsb::DEAD_WITH_PID_FILE,
            ),
            Err(e) => (
                json!({"running": null, "state": "unknown", "detail": e.to_string()}),
                lsb::UNKNOWN,
            ),
        },
        Probe::Held(_) => match asked {
            Ok(Answer::Reply(r, _)) if r.status.is_some() => {
                let mut v = serde_json::to_value(r.status).unwrap_or_default();
                v["running"] = json!(true);
                v["state"] = json!("running");
                (v, lsb::RUNNING)
            }
            other => {
                let detail = match other {
                    Ok(Answer::Reply(r, _)) => r.error.unwrap_or_default(),
                    Ok(Answer::NoSocket) => "the master has no control socket".into(),
                    Err(e) => e.to_string(),
                };
                (
                    json!({"running": true, "state": "running", "master": {"pid": verified_pid(layout)}, "runners": null, "detail": detail}),
                    lsb::RUNNING,
                )
            }
        },
    };
    println!("{value}");
    code
}

/// The master's pid, when the lock's record of it is proven true.
fn verified_pid(layout: &Layout) -> Option<i32> {
    match super::find_master(layout) {
        super::Target::Master(id) => Some(id.pid),
        _ => None,
    }
}

/// `request` sent, if a socket takes it, and the lock probed while the
/// master answers (the request only reads: where the lock turns out not to
/// be held, its answer is not read); where it is held, the answer read;
/// then the rest of the configuration file checked, unless the master says
/// it read and validated this very file, unchanged since
/// ([`Located::confirm`]: at 1,000 runners that check was a third of the
/// command's CPU). `Err`: the exit status, the configuration's error said.
fn ask_checking(
    mut located: Located,
    request: &Request,
    timeout: Duration,
) -> Result<(Layout, Probe, std::io::Result<Answer>), i32> {
    let layout = located.layout.clone();
    let ask = || {
        control::send(&layout.socket(), request, timeout)
            .map(|p| p.map(control::Pending::done_asking))
    };
    let sent = ask();
    let probe = probe_settled(&layout);
    let sent = match (&probe, sent) {
        // No socket yet when asked (a master starting, its lock just
        // taken): asked again, now that the lock is seen held.
        (Probe::Held(_), Ok(None)) => ask(),
        (Probe::Held(_), sent) => sent,
        _ => Ok(None),
    };
    let answer = match sent {
        Ok(Some(pending)) => pending.answer(),
        Ok(None) => Ok(Answer::NoSocket),
        Err(e) => Err(e),
    };
    let validated = match &answer {
        Ok(Answer::Reply(r, _)) => r.config,
        _ => None,
    };
    if let Err(e) = located.confirm(validated) {
        // LSB's terms: it cannot tell.
        eprintln!("{e}");
        return Err(lsb::UNKNOWN);
    }
    if located.layout != layout {
        // The full reading placed the files elsewhere: asked there instead.
        return ask_checking(located, request, timeout);
    }
    Ok((layout, probe, answer))
}
