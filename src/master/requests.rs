//! What a control request does: the same as the matching signal, plus what
//! signals cannot say (one runner, a status report).
//!
//! Not here: the socket and the wire format (`control`).

use std::time::Instant;

use tracing::info;

use super::slice::{State, Why};
use super::{EXIT_OK, Master, Mode};
use crate::control::http::{self, Route};
use crate::control::{self, Health, LastExit, Request, Response, SliceStatus, StatusReport};

impl Master {
    /// What a control request does: the same as the matching signal, plus
    /// what signals cannot say (one runner, a status report).
    pub(super) fn on_request(&mut self, request: &Request) -> Response {
        if matches!(request, Request::Status | Request::Health) {
            self.refresh_stalls();
        }
        match request {
            Request::Status => Response {
                status: Some(self.report()),
                config: self.config.stamp,
                ..Response::ok()
            },
            Request::Health => Response {
                health: Some(self.health()),
                config: self.config.stamp,
                ..Response::ok()
            },
            Request::Stop => {
                if !matches!(self.mode, Mode::Stopping { .. }) {
                    info!("Master watcher got a stop request.  Exiting.");
                    self.begin_stop(libc::SIGTERM, EXIT_OK);
                }
                Response::ok()
            }
            Request::Reopen => {
                self.reopen("got a reopen request");
                Response::ok()
            }
            Request::Jobs => Response {
                jobs: Some(self.job_statuses()),
                ..Response::ok()
            },
            Request::RunJob { job } => {
                if self.mode != Mode::Running {
                    return Response::error(format!("the master is {}", self.state_name()));
                }
                let Some(idx) = self.jobs.iter().position(|j| &j.cfg.name == job) else {
                    return Response::error(format!("no job named \"{job}\""));
                };
                match self.fire(idx, "request") {
                    Ok(m) => Response {
                        message: Some(m),
                        ..Response::ok()
                    },
                    Err(e) => Response::error(e),
                }
            }
            Request::Restart { runner, slice } => {
                match self.mode {
                    Mode::Running => {}
                    Mode::Starting => return Response::error("the master is starting"),
                    Mode::Stopping { .. } => return Response::error("the master is stopping"),
                }
                if let Some(name) = runner {
                    if !self.slices.iter().any(|s| &s.runner.name == name) {
                        return Response::error(format!(
                            "no runner named \"{name}\" runs under this master"
                        ));
                    }
                    if let Some(n) = slice
                        && !self
                            .slices
                            .iter()
                            .any(|s| &s.runner.name == name && s.slice == *n)
                    {
                        return Response::error(format!("runner \"{name}\" has no slice {n}"));
                    }
                }
                self.restart(runner.as_deref(), *slice);
                match runner {
                    Some(name) => info!(
                        "Master watcher got a restart request for {name}{}.",
                        slice.map_or(String::new(), |n| format!(":{n}"))
                    ),
                    None => info!("Master watcher got a restart request.  Restarting."),
                }
                Response::ok()
            }
        }
    }

    /// The slice table as `status --json` shows it.
    pub(super) fn report(&self) -> StatusReport {
        let now = Instant::now();
        let runners = self
            .slices
            .iter()
            .map(|s| {
                let (state, pid, uptime, retry) = match s.state {
                    State::Running { pid, since } => (
                        "running",
                        Some(pid),
                        Some(now.saturating_duration_since(since).as_secs_f64()),
                        None,
                    ),
                    State::BackingOff { until } => (
                        "backing-off",
                        None,
                        None,
                        Some(until.saturating_duration_since(now).as_secs_f64()),
                    ),
                    State::Pending => ("pending", None, None, None),
                    State::Forking { since } => (
                        "starting",
                        None,
                        Some(now.saturating_duration_since(since).as_secs_f64()),
                        None,
                    ),
                    State::Failed => ("failed", None, None, None),
                    State::Stopped => ("stopped", None, None, None),
                    State::WaitingForOwner { retry_at } => (
                        "waiting-for-owner",
                        None,
                        None,
                        Some(retry_at.saturating_duration_since(now).as_secs_f64()),
                    ),
                };
                let usage = pid.and_then(crate::os::procinfo::usage);
                SliceStatus {
                    name: s.runner.name.clone(),
                    slice: s.slice,
                    range: s.range,
                    state: state.into(),
                    pid,
                    restarts: s.restarts,
                    total_restarts: s.total_restarts,
                    last_exit: s.last_exit.map(|w| match w {
                        Why::Exit(n) => LastExit::Exit(n),
                        Why::Signal(n) => LastExit::Signal(n),
                    }),
                    uptime_secs: uptime,
                    restart_in_secs: retry,
                    ready: s.pid().is_some() && s.ready,
                    down_secs: s
                        .pid()
                        .is_none()
                        .then_some(s.last_exit_at)
                        .flatten()
                        .map(|t| now.saturating_duration_since(t).as_secs_f64()),
                    rss_bytes: usage.map(|u| u.rss_bytes),
                    cpu_secs: usage.map(|u| u.cpu_secs),
                    stalled: s.stalled,
                    queue_wait_secs: s.queue_wait.map(|w| w.as_secs_f64()),
                    owner: s.waiting_on.clone(),
                }
            })
            .collect();
        StatusReport {
            master: control::MasterStatus {
                pid: std::process::id() as i32,
                version: env!("CARGO_PKG_VERSION").into(),
                uptime_secs: now.saturating_duration_since(self.started).as_secs_f64(),
                state: self.state_name().into(),
                http: self.http.as_ref().map(|h| h.local.to_string()),
            },
            runners,
            problems: self.problems(now),
            jobs: self.job_statuses(),
        }
    }

    /// What `status` needs: pid, state, problems. A master whose runners
    /// run but are not all ready yet is `starting`.
    pub(super) fn health(&self) -> Health {
        let (problems, unready) = self.survey(Instant::now());
        let starting = self.mode == Mode::Running && unready;
        Health {
            pid: std::process::id() as i32,
            state: if starting {
                "starting"
            } else {
                self.state_name()
            }
            .into(),
            problems,
        }
    }

    fn state_name(&self) -> &'static str {
        match self.mode {
            Mode::Starting => "starting",
            Mode::Running => "running",
            Mode::Stopping { .. } => "stopping",
        }
    }

    /// What is wrong: the master is not (yet, or any more) running its
    /// runners, or a runner is given up, stopped, or failing for longer
    /// than `degraded_after`.
    fn problems(&self, now: Instant) -> Vec<String> {
        self.survey(now).0
    }

    /// The problems, and whether some runner runs that is not ready yet:
    /// one pass over the slices, as every `status` asks (at 1,000 runners
    /// each pass over them was ~5 µs of the answer).
    fn survey(&self, now: Instant) -> (Vec<String>, bool) {
        match self.mode {
            Mode::Starting if self.init.is_some() => {
                return (vec!["starting: init runs".into()], false);
            }
            Mode::Starting => {
                let pending = self
                    .slices
                    .iter()
                    .filter(|s| s.state == State::Pending)
                    .count();
                return (
                    vec![format!("starting: {pending} runners not started yet")],
                    false,
                );
            }
            Mode::Stopping { .. } => return (vec!["stopping".into()], false),
            Mode::Running => {}
        }
        let grace = self.config.mailman.degraded_after.0;
        let (mut out, mut stalls) = (Vec::new(), Vec::new());
        let mut unready = false;
        for s in &self.slices {
            unready |= s.pid().is_some() && !s.ready;
            if self.restartable || !matches!(s.state, State::Stopped) {
                out.extend(s.problem(now, grace));
            }
            if s.stalled {
                stalls.push(format!(
                    "runner {} stalled: the oldest entry of its slice has waited {}s",
                    s.spec(),
                    s.queue_wait.unwrap_or_default().as_secs()
                ));
            }
        }
        out.append(&mut stalls);
        (out, unready)
    }

    /// `GET /readyz`'s reasons for 503: what `status` reports, and any
    /// slice that should run and is not up and ready at this moment (a
    /// runner between a crash and its restart is not ready, however soon
    /// it will be).
    fn not_ready(&self) -> Vec<String> {
        let mut out = self.problems(Instant::now());
        if self.mode == Mode::Running {
            out.extend(
                self.slices
                    .iter()
                    .filter(|s| matches!(s.state, State::BackingOff { .. } | State::Pending))
                    .map(|s| format!("runner {} is restarting", s.spec())),
            );
        }
        out
    }

    /// The HTTP endpoint: new connections and ready ones, each whole
    /// request answered at once.
    pub(super) fn serve_http(&mut self, listener: bool, ready: &[usize]) {
        let Some(mut http) = self.http.take() else {
            return;
        };
        let ran_out = http.turn(listener, ready, Instant::now(), &mut |route| {
            self.on_http(route)
        });
        self.http = Some(http);
        if listener && self.http_pause.record(ran_out, Instant::now()) {
            super::event_loop::warn_out_of_fds("HTTP");
        }
    }

    /// What an HTTP request gets.
    fn on_http(&mut self, route: Route) -> http::Answer {
        match route {
            Route::Livez => http::Answer::text(200, "ok\n"),
            Route::Readyz => {
                self.refresh_stalls();
                let problems = self.not_ready();
                if problems.is_empty() {
                    http::Answer::text(200, "ready\n")
                } else {
                    http::Answer::text(503, problems.join("\n") + "\n")
                }
            }
            Route::Metrics { openmetrics } => {
                let (content_type, body) = super::metrics::encode(self, openmetrics);
                http::Answer {
                    status: 200,
                    content_type,
                    body,
                }
            }
            Route::NotFound => {
                http::Answer::text(404, "not found: try /metrics, /livez or /readyz\n")
            }
            Route::MethodNotAllowed => http::Answer::text(405, "only GET and HEAD\n"),
            Route::Bad { too_large: true } => http::Answer::text(431, "request too large\n"),
            Route::Bad { too_large: false } => http::Answer::text(400, "bad request\n"),
        }
    }
}
