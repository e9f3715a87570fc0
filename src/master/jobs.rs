//! Scheduled jobs (docs/jobs.md): when each is due, starting a run,
//! overlap, timeouts, the end of a run, and what persists of it in the var
//! dir (`jobs/NAME.json`) for catch-up across restarts.
//!
//! A job's next time is wall-clock (its cron expression in its time zone);
//! the loop sleeps until the monotonic instant that maps to, and on waking
//! looks at the wall clock again (a clock set back re-arms the timer, one
//! set forward past several times runs once). Jobs are part of the loop's
//! single timeout: nothing wakes the master before a job is due.
//!
//! Not here: the schedule arithmetic (`config::jobs`), the process set-up
//! (`spawn`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use super::output::Output;
use super::shutdown::signal_group;
use super::slice::Why;
use super::spawn::{self, Environment};
use super::{Master, Mode};
use crate::config::jobs::{JobConfig, Overlap, Schedule};
use crate::config::placeholders::{fill, placeholders};

/// What persists of a job between masters (`$var_dir/jobs/NAME.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Record {
    /// Unix seconds.
    pub last_start: Option<f64>,
    pub last_end: Option<f64>,
    /// `success`, `failure`, `timeout` or `killed` (by a stop or
    /// `kill-previous`).
    pub last_outcome: Option<String>,
    /// The exit status, or 128 + the signal.
    pub last_exit_code: Option<i32>,
    pub last_duration_secs: Option<f64>,
    pub last_success: Option<f64>,
    pub runs: u64,
    pub failures: u64,
}

/// One job as the master keeps it.
pub struct Job {
    pub cfg: JobConfig,
    /// When it is due next: the wall-clock time and its monotonic instant.
    pub next: Option<(Timestamp, Instant)>,
    pub run: Option<Run>,
    /// A run waits for the current one to end (`overlap`), and why.
    pub queued: Option<&'static str>,
    pub record: Record,
    /// Writing its record failed once (said once).
    write_failed: bool,
}

/// A run in progress.
pub struct Run {
    pub pid: i32,
    pub since: Instant,
    /// When `timeout` (then, after SIGTERM, `stop_timeout`) runs out.
    deadline: Option<Instant>,
    /// SIGTERM was sent: by the timeout, `kill-previous` or a stop.
    terminated: Option<&'static str>,
    killed: bool,
}

impl Job {
    pub fn new(cfg: JobConfig, dir: &Path) -> Job {
        let record = std::fs::read(record_path(dir, &cfg.name))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Job {
            cfg,
            next: None,
            run: None,
            queued: None,
            record,
            write_failed: false,
        }
    }

    pub fn pid(&self) -> Option<i32> {
        self.run.as_ref().map(|r| r.pid)
    }
}

fn record_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.json"))
}

fn wall() -> Timestamp {
    Timestamp::now()
}

fn secs(t: Timestamp) -> f64 {
    t.as_millisecond() as f64 / 1000.0
}

/// The monotonic instant of wall-clock time `t`, seen from now.
fn instant_of(t: Timestamp, now: Instant, now_wall: Timestamp) -> Instant {
    let ahead = t.as_millisecond().saturating_sub(now_wall.as_millisecond());
    now + Duration::from_millis(ahead.max(0) as u64)
}

impl Master {
    fn jobs_dir(&self) -> PathBuf {
        self.layout.var_dir.join("jobs")
    }

    /// The runners are up: every enabled job gets its first time; those
    /// that run at start (`run_on_start`, or `catch_up` after a missed
    /// time) start now.
    pub(super) fn schedule_jobs(&mut self) {
        let now = Instant::now();
        let now_wall = wall();
        for idx in 0..self.jobs.len() {
            if !self.jobs[idx].cfg.start {
                continue;
            }
            self.arm(idx, now_wall, now, now_wall);
            let j = &self.jobs[idx];
            if j.cfg.run_on_start {
                let _ = self.fire(idx, "run_on_start");
            } else if j.cfg.catch_up && missed(j, now_wall) {
                info!(
                    "Job {} missed a run while no master ran; catching up.",
                    j.cfg.name
                );
                let _ = self.fire(idx, "catch-up");
            }
        }
    }

    /// Sets job `idx`'s next time: the first after `after` (plus jitter).
    fn arm(&mut self, idx: usize, after: Timestamp, now: Instant, now_wall: Timestamp) {
        let j = &mut self.jobs[idx];
        let next = j.cfg.schedule.next_after(after, &j.cfg.tz).map(|t| {
            let jitter = j.cfg.jitter.0.as_millis() as u64;
            let t = if jitter > 0 {
                t.checked_add(Duration::from_millis(crate::util::jitter(jitter + 1)))
                    .unwrap_or(t)
            } else {
                t
            };
            (t, instant_of(t, now, now_wall))
        });
        if next.is_none() {
            warn!("Job {}: its schedule has no time left to run", j.cfg.name);
        }
        j.next = next;
    }

    /// The earliest instant a job needs the loop: a due time or a run's
    /// deadline.
    pub(super) fn next_job_deadline(&self) -> Option<Instant> {
        self.jobs
            .iter()
            .flat_map(|j| {
                [
                    j.next.map(|(_, at)| at),
                    j.run.as_ref().and_then(|r| r.deadline),
                ]
            })
            .flatten()
            .min()
    }

    /// A job timer is due: runs past their deadline are escalated, jobs
    /// whose time has come are started.
    pub(super) fn on_job_timer(&mut self, now: Instant) {
        let now_wall = wall();
        for idx in 0..self.jobs.len() {
            if self.jobs[idx]
                .run
                .as_ref()
                .is_some_and(|r| r.deadline.is_some_and(|d| d <= now))
            {
                self.escalate_job(idx, now);
            }
            let Some((due, at)) = self.jobs[idx].next else {
                continue;
            };
            if at > now || self.mode != Mode::Running {
                continue;
            }
            if now_wall < due {
                // The clock was set back: wait for the wall-clock time.
                self.jobs[idx].next = Some((due, instant_of(due, now, now_wall)));
                continue;
            }
            // Past several times at once (a clock set forward, a suspended
            // host): one run, then the next time after now.
            let after = match self.jobs[idx].cfg.schedule {
                Schedule::Every(d)
                    if now_wall.as_millisecond() - due.as_millisecond()
                        < d.0.as_millis() as i64 =>
                {
                    due
                }
                _ => now_wall,
            };
            self.arm(idx, after, now, now_wall);
            let _ = self.fire(idx, "schedule");
        }
    }

    /// Job `idx` is due (`why`): started, or dealt with by its `overlap`
    /// if its last run still runs. Returns what happened, for `run-job`.
    pub(super) fn fire(&mut self, idx: usize, why: &'static str) -> Result<String, String> {
        let stop_timeout = self.config.mailman.stop_timeout.0;
        let j = &mut self.jobs[idx];
        let Some(run) = &mut j.run else {
            return self.start_job(idx, why);
        };
        let name = j.cfg.name.clone();
        let since = run.since.elapsed().as_secs();
        match j.cfg.overlap {
            Overlap::Skip => {
                let m = format!(
                    "Job {name} is still running (pid {}, for {since}s): this run ({why}) is skipped (overlap = \"skip\")",
                    run.pid
                );
                info!("{m}");
                Err(m)
            }
            Overlap::Queue if j.queued.is_some() => {
                let m = format!(
                    "Job {name} is still running and a run already waits: this run ({why}) is skipped"
                );
                info!("{m}");
                Err(m)
            }
            Overlap::Queue => {
                j.queued = Some(why);
                let m = format!(
                    "Job {name} is still running (pid {}): this run ({why}) starts when it ends (overlap = \"queue\")",
                    run.pid
                );
                info!("{m}");
                Ok(m)
            }
            Overlap::KillPrevious => {
                j.queued = Some(why);
                if run.terminated.is_none() {
                    signal_group(run.pid, Signal::SIGTERM);
                    run.terminated = Some("killed");
                    run.deadline = Some(Instant::now() + stop_timeout);
                }
                let m = format!(
                    "Job {name} is still running (pid {}): stopping it for this run ({why}) (overlap = \"kill-previous\")",
                    run.pid
                );
                info!("{m}");
                Ok(m)
            }
        }
    }

    fn start_job(&mut self, idx: usize, why: &'static str) -> Result<String, String> {
        let ctx = &self.ctx;
        let j = &self.jobs[idx];
        let name = j.cfg.name.clone();
        let values = placeholders(&ctx.bin, &ctx.config_arg, &ctx.var_dir, &name, 0, 1);
        let argv = fill(&j.cfg.command, &values);
        let spawned = spawn::start(
            ctx,
            &argv,
            Environment::Ours {
                spec: format!("job:{name}"),
                env: &j.cfg.env,
            },
            None,
        );
        let now_wall = wall();
        let sp = match spawned {
            Ok(sp) => sp,
            Err(e) => {
                let m = format!(
                    "Job {name} cannot be started: {}: {}",
                    argv.first().map_or("", String::as_str),
                    crate::util::io_text(&e)
                );
                error!("{m}");
                let r = &mut self.jobs[idx].record;
                r.last_start = Some(secs(now_wall));
                r.last_end = Some(secs(now_wall));
                r.last_outcome = Some("failure".into());
                r.last_exit_code = Some(127);
                r.runs += 1;
                r.failures += 1;
                self.save_record(idx);
                return Err(m);
            }
        };
        let tag = format!("job:{name}");
        for (fd, stream) in [(sp.stdout, "stdout"), (sp.stderr, "stderr")] {
            self.outputs
                .push(Output::new(fd, &tag, None, sp.pid, stream));
        }
        self.record_stale = true;
        let now = Instant::now();
        let j = &mut self.jobs[idx];
        j.run = Some(Run {
            pid: sp.pid,
            since: now,
            deadline: j.cfg.timeout.map(|t| now + t.0),
            terminated: None,
            killed: false,
        });
        j.record.last_start = Some(secs(now_wall));
        j.record.runs += 1;
        let m = format!("Job {name} started ({why}, pid {}).", sp.pid);
        info!("{m}");
        self.save_record(idx);
        Ok(m)
    }

    /// A run is past its deadline: SIGTERM (timeout), then SIGKILL after
    /// `stop_timeout`.
    fn escalate_job(&mut self, idx: usize, now: Instant) {
        let stop_timeout = self.config.mailman.stop_timeout;
        let j = &mut self.jobs[idx];
        let name = &j.cfg.name;
        let Some(run) = &mut j.run else { return };
        if run.terminated.is_none() {
            warn!(
                "Job {name} (pid {}) ran past its timeout of {}; sending SIGTERM",
                run.pid,
                j.cfg.timeout.unwrap_or_default()
            );
            signal_group(run.pid, Signal::SIGTERM);
            run.terminated = Some("timeout");
            run.deadline = Some(now + stop_timeout.0);
        } else if !run.killed {
            warn!(
                "Job {name} (pid {}) did not stop within {stop_timeout}; sending SIGKILL",
                run.pid
            );
            signal_group(run.pid, Signal::SIGKILL);
            run.killed = true;
            run.deadline = None;
        }
    }

    /// A job's process exited: the outcome logged and kept; a waiting run
    /// starts. A failure is counted and reported, never retried.
    pub(super) fn on_job_exit(&mut self, idx: usize, why: Why) {
        let now_wall = wall();
        let j = &mut self.jobs[idx];
        let Some(run) = j.run.take() else { return };
        self.record_stale = true;
        let took = run.since.elapsed().as_secs_f64();
        let code = match why {
            Why::Exit(n) => n,
            Why::Signal(n) => 128 + n,
        };
        let outcome = match (why, run.terminated) {
            (Why::Exit(0), _) => "success",
            (_, Some(reason)) => reason,
            _ => "failure",
        };
        let name = &j.cfg.name;
        let r = &mut j.record;
        r.last_end = Some(secs(now_wall));
        r.last_duration_secs = Some(took);
        r.last_exit_code = Some(code);
        r.last_outcome = Some(outcome.into());
        if outcome == "success" {
            r.last_success = Some(secs(now_wall));
            info!("Job {name} ended: {why} after {took:.2}s.");
        } else {
            r.failures += 1;
            let how = match outcome {
                "timeout" => " (its timeout)",
                "killed" => " (stopped)",
                _ => "",
            };
            warn!("Job {name} failed: {why}{how} after {took:.2}s.");
        }
        let queued = j.queued.take();
        self.save_record(idx);
        if let Some(why) = queued
            && self.mode == Mode::Running
        {
            let _ = self.start_job(idx, why);
        }
    }

    /// Writes job `idx`'s record (`util::replace_file`: never half a
    /// record).
    fn save_record(&mut self, idx: usize) {
        let dir = self.jobs_dir();
        let j = &mut self.jobs[idx];
        let path = record_path(&dir, &j.cfg.name);
        let text = serde_json::to_vec(&j.record).unwrap_or_default();
        let done = std::fs::create_dir_all(&dir)
            .and_then(|()| crate::util::replace_file(&path, &text, 0o644));
        match done {
            Ok(()) => j.write_failed = false,
            Err(e) => {
                if !j.write_failed {
                    warn!(
                        "cannot keep job {}'s last run in {}: {} (catch_up cannot see it)",
                        j.cfg.name,
                        path.display(),
                        crate::util::io_text(&e)
                    );
                }
                j.write_failed = true;
            }
        }
    }

    /// Stopping: every running job gets the runners' stop signal.
    pub(super) fn stop_jobs(&mut self, signal: Signal) {
        for j in &mut self.jobs {
            j.queued = None;
            j.next = None;
            if let Some(run) = &mut j.run {
                info!(
                    "Job {} (pid {}) is stopped with the master.",
                    j.cfg.name, run.pid
                );
                signal_group(run.pid, signal);
                run.terminated = Some("killed");
                run.deadline = None;
            }
        }
    }

    /// The stop deadline: SIGKILL to every job still running.
    pub(super) fn kill_jobs(&mut self) {
        for j in &mut self.jobs {
            if let Some(run) = &mut j.run {
                warn!(
                    "Job {} (pid {}) did not stop within {}; sending SIGKILL",
                    j.cfg.name, run.pid, self.config.mailman.stop_timeout
                );
                signal_group(run.pid, Signal::SIGKILL);
                run.killed = true;
            }
        }
    }
}

impl Master {
    /// Every job as `jobs` and `status --json` show it.
    pub(super) fn job_statuses(&self) -> Vec<crate::control::JobStatus> {
        self.jobs.iter().map(status_of).collect()
    }
}

/// A job's status (also for `mailman jobs` without a master: `next` is
/// then computed from now).
pub fn status_of(j: &Job) -> crate::control::JobStatus {
    let rfc = |s: Option<f64>| {
        s.and_then(|s| Timestamp::from_millisecond((s * 1000.0) as i64).ok())
            .map(|t| t.round(jiff::Unit::Second).unwrap_or(t).to_string())
    };
    crate::control::JobStatus {
        name: j.cfg.name.clone(),
        schedule: j.cfg.schedule.to_string(),
        timezone: j.cfg.tz_name.clone(),
        enabled: j.cfg.start,
        next_run: j
            .next
            .map(|(t, _)| t.round(jiff::Unit::Second).unwrap_or(t).to_string()),
        running: j.pid(),
        running_secs: j.run.as_ref().map(|r| r.since.elapsed().as_secs_f64()),
        queued: j.queued.is_some(),
        last_start: rfc(j.record.last_start),
        last_end: rfc(j.record.last_end),
        last_outcome: j.record.last_outcome.clone(),
        last_exit_code: j.record.last_exit_code,
        last_duration_secs: j.record.last_duration_secs,
        last_success: rfc(j.record.last_success),
        runs: j.record.runs,
        failures: j.record.failures,
    }
}

/// The jobs of `config` as recorded in `var_dir`, with their next times
/// from now, for `mailman jobs` when no master runs.
pub fn offline(config: &crate::config::Config) -> Vec<crate::control::JobStatus> {
    let dir = config.layout().var_dir.join("jobs");
    let now = wall();
    config
        .jobs
        .iter()
        .map(|c| {
            let mut j = Job::new(c.clone(), &dir);
            if c.start {
                j.next = c
                    .schedule
                    .next_after(now, &c.tz)
                    .map(|t| (t, Instant::now()));
            }
            status_of(&j)
        })
        .collect()
}

/// Whether a scheduled time passed while no master ran: the schedule's
/// last time before now is after the last run's start (`every`: the last
/// start is more than an interval ago). Never for a job that never ran.
fn missed(j: &Job, now: Timestamp) -> bool {
    let Some(last) = j.record.last_start else {
        return false;
    };
    let last_ms = (last * 1000.0) as i64;
    match &j.cfg.schedule {
        Schedule::Every(d) => now.as_millisecond() - last_ms > d.0.as_millis() as i64,
        cron => cron
            .previous(now, &j.cfg.tz)
            .is_some_and(|prev| prev.as_millisecond() > last_ms),
    }
}
