//! `mailman jobs [--json]` and `mailman run-job NAME` (docs/jobs.md): the
//! scheduled jobs as the running master sees them (or, with no master, as
//! the configuration and the var dir's records say), and one run now.

use std::io::Write;

use super::{Target, find_master, not_running};
use crate::config::Config;
use crate::control::{self, Answer, JobStatus, Request};
use crate::exit::EXIT_ERROR;

/// `mailman jobs`: a table, or `--json`.
pub fn jobs(config: &Config, as_json: bool) -> i32 {
    let (list, live) = match find_master(&config.layout()) {
        Target::Master(_) => match control::ask(
            &config.layout().socket(),
            &Request::Jobs,
            super::ASK_TIMEOUT,
        ) {
            Ok(Answer::Reply(r, _)) if r.ok => (r.jobs.unwrap_or_default(), true),
            Ok(Answer::Reply(r, _)) => {
                eprintln!("{}", r.error.unwrap_or_else(|| "the master refused".into()));
                return EXIT_ERROR;
            }
            Ok(Answer::NoSocket) | Err(_) => (crate::master::offline_jobs(config), false),
        },
        Target::NotRunning | Target::Refuse(_) => (crate::master::offline_jobs(config), false),
    };
    let text = if as_json {
        let mut t = serde_json::json!({"master_running": live, "jobs": list}).to_string();
        t.push('\n');
        t
    } else {
        table(&list, live)
    };
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("cannot print the jobs: {}", crate::util::io_text(&e));
            EXIT_ERROR
        }
    }
}

fn table(list: &[JobStatus], live: bool) -> String {
    if list.is_empty() {
        return "no jobs are configured ([job.NAME] sections: see docs/jobs.md)\n".into();
    }
    let mut out = format!(
        "{:<14} {:<22} {:<21} {:<21} {}\n",
        "JOB", "SCHEDULE", "NEXT RUN", "LAST RUN", "LAST OUTCOME"
    );
    for j in list {
        let next = match (&j.running, &j.next_run, j.enabled) {
            (Some(pid), _, _) => format!("running (pid {pid})"),
            (None, _, false) => "disabled".into(),
            (None, Some(t), true) => t.clone(),
            (None, None, true) => "never".into(),
        };
        let outcome = match (&j.last_outcome, j.last_exit_code, j.last_duration_secs) {
            (Some(o), Some(c), Some(d)) => format!("{o} (exit {c}, {d:.1}s)"),
            (Some(o), _, _) => o.clone(),
            _ => "-".into(),
        };
        let schedule = if j.timezone == "UTC" {
            j.schedule.clone()
        } else {
            format!("{} {}", j.schedule, j.timezone)
        };
        out.push_str(&format!(
            "{:<14} {:<22} {:<21} {:<21} {}\n",
            j.name,
            schedule,
            next,
            j.last_start.as_deref().unwrap_or("-"),
            outcome
        ));
    }
    if !live {
        out.push_str("(no master runs: next runs are what a master started now would do)\n");
    }
    out
}

/// `mailman run-job NAME`: the master runs it now (its `overlap` applies).
pub fn run_job(config: &Config, name: &str) -> i32 {
    if !config.jobs.iter().any(|j| j.name == name) {
        eprintln!("no job named \"{name}\" is configured");
        return EXIT_ERROR;
    }
    match find_master(&config.layout()) {
        Target::Master(_) => {}
        Target::NotRunning => {
            eprintln!("{}", not_running(&config.layout()));
            return EXIT_ERROR;
        }
        Target::Refuse(why) => {
            eprintln!("{why}");
            return EXIT_ERROR;
        }
    }
    match control::ask(
        &config.layout().socket(),
        &Request::RunJob { job: name.into() },
        super::ASK_TIMEOUT,
    ) {
        Ok(Answer::Reply(r, _)) if r.ok => {
            println!("{}", r.message.unwrap_or_default());
            0
        }
        Ok(Answer::Reply(r, _)) => {
            eprintln!("{}", r.error.unwrap_or_else(|| "the master refused".into()));
            EXIT_ERROR
        }
        Ok(Answer::NoSocket) => {
            eprintln!("the master has no control socket: run-job needs it");
            EXIT_ERROR
        }
        Err(e) => {
            eprintln!("cannot talk to the master: {e}");
            EXIT_ERROR
        }
    }
}
