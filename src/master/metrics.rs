//! What `GET /metrics` says (docs/observability.md): a snapshot of the
//! master, its slices, its queues and its log, taken when scraped and
//! encoded by `prometheus-client` in the Prometheus text format or, when
//! the scraper asks for it, OpenMetrics.
//!
//! Nothing is kept between scrapes: an idle master holds no metric state
//! and does no work for them.
//!
//! Not here: the HTTP side (`control::http`), reading queues
//! (`master::stall`, `queue::scan`).

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use super::Master;
use super::slice::{State, Why};
use super::stall::QueueScan;
use crate::config::{BAD_QUEUE, SHUNT_QUEUE};

/// The states of `mailman_runner_state`, as `status --json` names them.
const STATES: [&str; 7] = [
    "pending",
    "running",
    "backing-off",
    "failed",
    "stopped",
    "waiting-for-owner",
    "starting",
];

#[derive(Debug)]
struct Snapshot {
    start_time: f64,
    slices: Vec<SliceRow>,
    queues: Vec<QueueScan>,
    /// Lines: master, stdout, stderr; and dropped from stderr.
    log: Option<([u64; 3], u64)>,
    jobs: Vec<JobRow>,
}

#[derive(Debug)]
struct JobRow {
    name: String,
    running: bool,
    runs: u64,
    failures: u64,
    last_success: Option<f64>,
    last_duration: Option<f64>,
    next: Option<f64>,
}

#[derive(Debug)]
struct SliceRow {
    runner: String,
    slice: String,
    range: String,
    state: &'static str,
    restarts: u64,
    start_time: Option<f64>,
    last_exit_code: Option<i64>,
    cpu_secs: Option<f64>,
    rss_bytes: Option<u64>,
    ready: bool,
    /// `None`: stall detection is off for its runner.
    stalled: Option<bool>,
}

impl std::fmt::Debug for QueueScan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QueueScan({})", self.name)
    }
}

/// The body and content type of a scrape.
pub(super) fn encode(master: &mut Master, openmetrics: bool) -> (&'static str, Vec<u8>) {
    master.refresh_stalls();
    let snapshot = master.snapshot();
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot));
    let mut text = String::new();
    let done = if openmetrics {
        prometheus_client::encoding::text::encode(&mut text, &registry)
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
    };
    if let Err(e) = done {
        tracing::error!("cannot encode the metrics: {e}");
    }
    let content_type = if openmetrics {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        prometheus_client::encoding::prometheus_text::CONTENT_TYPE
    };
    (content_type, text.into_bytes())
}

impl Master {
    fn snapshot(&self) -> Snapshot {
        let now = Instant::now();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let ago = |t: Instant| wall - now.saturating_duration_since(t).as_secs_f64();
        let slices = self
            .slices
            .iter()
            .map(|s| {
                let usage = s.pid().and_then(crate::os::procinfo::usage);
                SliceRow {
                    runner: s.runner.name.clone(),
                    slice: s.slice.to_string(),
                    range: s.range.to_string(),
                    state: match s.state {
                        State::Pending => STATES[0],
                        State::Running { .. } => STATES[1],
                        State::BackingOff { .. } => STATES[2],
                        State::Failed => STATES[3],
                        State::Stopped => STATES[4],
                        State::WaitingForOwner { .. } => STATES[5],
                        State::Forking { .. } => STATES[6],
                    },
                    restarts: u64::from(s.total_restarts),
                    start_time: match s.state {
                        State::Running { since, .. } => Some(ago(since)),
                        _ => None,
                    },
                    last_exit_code: s.last_exit.map(|w| match w {
                        Why::Exit(n) => i64::from(n),
                        Why::Signal(n) => 128 + i64::from(n),
                    }),
                    cpu_secs: usage.map(|u| u.cpu_secs),
                    rss_bytes: usage.map(|u| u.rss_bytes),
                    ready: s.pid().is_some() && s.ready,
                    stalled: s.runner.stall_threshold().map(|_| s.stalled),
                }
            })
            .collect();
        Snapshot {
            start_time: ago(self.started),
            slices,
            queues: self.scan_queues(false),
            log: self.log.as_ref().map(super::log::LogHandle::counts),
            jobs: self
                .jobs
                .iter()
                .map(|j| JobRow {
                    name: j.cfg.name.clone(),
                    running: j.run.is_some(),
                    runs: j.record.runs,
                    failures: j.record.failures,
                    last_success: j.record.last_success,
                    last_duration: j.record.last_duration_secs,
                    next: j.next.map(|(t, _)| t.as_millisecond() as f64 / 1000.0),
                })
                .collect(),
        }
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        {
            let m = e.encode_descriptor(
                "mailman_master_start_time_seconds",
                "When the master started, in seconds since the Unix epoch.",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(self.start_time).encode(m)?;
        }
        {
            let m = e.encode_descriptor(
                "mailman_build",
                "The master's version.",
                None,
                MetricType::Info,
            )?;
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]).encode(m)?;
        }
        let key = |r: &SliceRow| vec![("runner", r.runner.clone()), ("slice", r.slice.clone())];
        family(
            &mut e,
            "mailman_runner_up",
            "Whether the slice's runner process is up (1) or not (0).",
            MetricType::Gauge,
            self.slices.iter().map(|r| {
                let mut l = key(r);
                l.push(("range", r.range.clone()));
                (l, Value::Gauge(f64::from(u8::from(r.state == "running"))))
            }),
        )?;
        family(
            &mut e,
            "mailman_runner_state",
            "The slice's state, one-hot: pending, running, backing-off, failed or stopped.",
            MetricType::Gauge,
            self.slices.iter().flat_map(|r| {
                STATES.iter().map(move |st| {
                    let mut l = key(r);
                    l.push(("state", (*st).to_string()));
                    (l, Value::Gauge(f64::from(u8::from(r.state == *st))))
                })
            }),
        )?;
        family(
            &mut e,
            "mailman_runner_restarts",
            "Counted exits of the slice's runner (crashes; not requested restarts) since the master started.",
            MetricType::Counter,
            self.slices
                .iter()
                .map(|r| (key(r), Value::Counter(r.restarts as f64))),
        )?;
        family(
            &mut e,
            "mailman_runner_start_time_seconds",
            "When the slice's current runner process started, in seconds since the Unix epoch.",
            MetricType::Gauge,
            self.slices
                .iter()
                .filter_map(|r| Some((key(r), Value::Gauge(r.start_time?)))),
        )?;
        family(
            &mut e,
            "mailman_runner_last_exit_code",
            "How the slice's runner last ended: its exit status, or 128 + the signal that ended it.",
            MetricType::Gauge,
            self.slices
                .iter()
                .filter_map(|r| Some((key(r), Value::Gauge(r.last_exit_code? as f64)))),
        )?;
        family(
            &mut e,
            "mailman_runner_cpu_seconds",
            "CPU time (user and system) of the slice's current runner process.",
            MetricType::Counter,
            self.slices
                .iter()
                .filter_map(|r| Some((key(r), Value::Counter(r.cpu_secs?)))),
        )?;
        family(
            &mut e,
            "mailman_runner_resident_memory_bytes",
            "Resident memory of the slice's current runner process.",
            MetricType::Gauge,
            self.slices
                .iter()
                .filter_map(|r| Some((key(r), Value::Gauge(r.rss_bytes? as f64)))),
        )?;
        family(
            &mut e,
            "mailman_runner_ready",
            "Whether the slice's runner is up and ready (its ready_tcp, if any, accepts connections).",
            MetricType::Gauge,
            self.slices
                .iter()
                .map(|r| (key(r), Value::Gauge(f64::from(u8::from(r.ready))))),
        )?;
        family(
            &mut e,
            "mailman_runner_stalled",
            "Whether the oldest entry of the slice's queue has waited past its runner's stall threshold (only runners with stall_after set).",
            MetricType::Gauge,
            self.slices
                .iter()
                .filter_map(|r| Some((key(r), Value::Gauge(f64::from(u8::from(r.stalled?)))))),
        )?;
        family(
            &mut e,
            "mailman_queue_entries",
            "Entries in a queue: waiting, or in_hand (claimed by a runner); in the bad and shunt queues, which no runner works, state is bad or shunt.",
            MetricType::Gauge,
            self.queues.iter().flat_map(|q| {
                let rest = match q.name.as_str() {
                    BAD_QUEUE => "bad",
                    SHUNT_QUEUE => "shunt",
                    _ => "waiting",
                };
                [(rest, q.scan.waiting), ("in_hand", q.scan.in_hand)]
                    .into_iter()
                    .map(|(state, n)| {
                        (
                            vec![("queue", q.name.clone()), ("state", state.to_string())],
                            Value::Gauge(n as f64),
                        )
                    })
            }),
        )?;
        family(
            &mut e,
            "mailman_queue_oldest_entry_age_seconds",
            "How long the oldest entry of a queue has waited (0 when the queue is empty).",
            MetricType::Gauge,
            self.queues.iter().map(|q| {
                (
                    vec![("queue", q.name.clone())],
                    Value::Gauge(q.scan.oldest_secs.unwrap_or(0.0)),
                )
            }),
        )?;
        // Not "job": Prometheus owns that label (the scrape job).
        let job = |j: &JobRow| vec![("job_name", j.name.clone())];
        family(
            &mut e,
            "mailman_job_runs",
            "Runs of the job started (since its record began).",
            MetricType::Counter,
            self.jobs
                .iter()
                .map(|j| (job(j), Value::Counter(j.runs as f64))),
        )?;
        family(
            &mut e,
            "mailman_job_failures",
            "Runs of the job that failed: a non-zero exit, a signal, its timeout, a failed start.",
            MetricType::Counter,
            self.jobs
                .iter()
                .map(|j| (job(j), Value::Counter(j.failures as f64))),
        )?;
        family(
            &mut e,
            "mailman_job_last_success_time_seconds",
            "When the job's last successful run ended (Unix time).",
            MetricType::Gauge,
            self.jobs
                .iter()
                .filter_map(|j| Some((job(j), Value::Gauge(j.last_success?)))),
        )?;
        family(
            &mut e,
            "mailman_job_last_duration_seconds",
            "How long the job's last run took.",
            MetricType::Gauge,
            self.jobs
                .iter()
                .filter_map(|j| Some((job(j), Value::Gauge(j.last_duration?)))),
        )?;
        family(
            &mut e,
            "mailman_job_running",
            "Whether a run of the job is in progress.",
            MetricType::Gauge,
            self.jobs
                .iter()
                .map(|j| (job(j), Value::Gauge(f64::from(u8::from(j.running))))),
        )?;
        family(
            &mut e,
            "mailman_job_next_run_time_seconds",
            "When the job is due next (Unix time); absent for a disabled job.",
            MetricType::Gauge,
            self.jobs
                .iter()
                .filter_map(|j| Some((job(j), Value::Gauge(j.next?)))),
        )?;
        if let Some((lines, dropped)) = self.log {
            family(
                &mut e,
                "mailman_log_lines",
                "Lines logged: the master's own (master), and its runners' stdout and stderr.",
                MetricType::Counter,
                ["master", "stdout", "stderr"]
                    .into_iter()
                    .zip(lines)
                    .map(|(s, n)| (vec![("stream", s.to_string())], Value::Counter(n as f64))),
            )?;
            family(
                &mut e,
                "mailman_log_lines_dropped",
                "Log lines the master's stderr did not take because nobody read it (the log file, if any, has them).",
                MetricType::Counter,
                std::iter::once((
                    vec![("sink", "stderr".to_string())],
                    Value::Counter(dropped as f64),
                )),
            )?;
        }
        Ok(())
    }
}

enum Value {
    Gauge(f64),
    Counter(f64),
}

type Labels = Vec<(&'static str, String)>;

/// One metric family: its descriptor, then each series (none: nothing at
/// all, as an empty family is not worth a `# TYPE` line).
fn family(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    series: impl Iterator<Item = (Labels, Value)>,
) -> Result<(), std::fmt::Error> {
    let mut series = series.peekable();
    if series.peek().is_none() {
        return Ok(());
    }
    let mut m = e.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in series {
        let f = m.encode_family(&labels)?;
        match value {
            Value::Gauge(v) => ConstGauge::new(v).encode(f)?,
            Value::Counter(v) => ConstCounter::new(v).encode(f)?,
        }
    }
    Ok(())
}
