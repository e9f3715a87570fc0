//! `status` (Mailman's line, LSB exit codes) and `status --json` (the
//! master's own report over the control socket).

use serde_json::json;

use super::{ASK_TIMEOUT, NOT_RUNNING, lsb, probe_settled};
use crate::config::Config;
use crate::control::{self, Answer, Request};
use crate::os::lock::{self, PidFile, Probe};

pub fn status(config: &Config) -> i32 {
    let layout = config.layout();
    let (line, code) = match probe_settled(&layout) {
        Probe::Unknown(e) => (
            format!("GNU Mailman is in an unexpected state ({e})"),
            lsb::UNKNOWN,
        ),
        Probe::Held(info) => {
            let pid = info.pid.or(match lock::read_pid_file(&layout) {
                Ok(PidFile::Pid(p)) => Some(p),
                _ => None,
            });
            match pid {
                Some(pid) => (
                    format!("GNU Mailman is running (master pid: {pid})"),
                    lsb::RUNNING,
                ),
                None => (
                    "GNU Mailman is running (master pid: unknown)".into(),
                    lsb::RUNNING,
                ),
            }
        }
        Probe::Free => match lock::read_pid_file(&layout) {
            Ok(PidFile::Missing) => (NOT_RUNNING.into(), lsb::NOT_RUNNING),
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
pub fn status_json(config: &Config) -> i32 {
    let layout = config.layout();
    let (value, code) = match probe_settled(&layout) {
        Probe::Unknown(e) => (
            json!({"running": null, "state": "unknown", "detail": e}),
            lsb::UNKNOWN,
        ),
        Probe::Free => match lock::read_pid_file(&layout) {
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
        Probe::Held(info) => match control::ask(&layout.socket(), &Request::Status, ASK_TIMEOUT) {
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
                    json!({"running": true, "state": "running", "master": {"pid": info.pid}, "runners": null, "detail": detail}),
                    lsb::RUNNING,
                )
            }
        },
    };
    println!("{value}");
    code
}
