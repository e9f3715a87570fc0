//! Stalled runners (docs/observability.md): a slice is stalled when its
//! runner is up but the oldest entry of its slice of the queue has waited,
//! while that run of the runner was up, longer than the runner's
//! [`stall_threshold`](crate::config::RunnerConfig::stall_threshold).
//!
//! Queues are read only when asked (a scrape, a status request) or on a
//! slow timer that exists only while some runner has `stall_after` set: an
//! idle master without it never wakes for this.
//!
//! Not here: reading a queue directory (`queue::scan`), the restart rule
//! (`slice`).

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tracing::{debug, info, warn};

use super::slice::{RestartAsked, State};
use super::{Master, Mode};
use crate::config::OnStall;
use crate::queue::scan::{Scan, scan};

/// One queue as read: its runner's name and what waits in it.
pub(super) struct QueueScan {
    pub name: String,
    pub scan: Scan,
}

impl Master {
    /// Reads the queue of every runner that has one (`watched_only`: only
    /// those with stall detection on), once per runner.
    pub(super) fn scan_queues(&self, watched_only: bool) -> Vec<QueueScan> {
        let root = self.layout.queue_dir();
        let mut out: Vec<QueueScan> = Vec::new();
        for s in &self.slices {
            let r = &s.runner;
            if !r.has_queue()
                || (watched_only && r.stall_threshold().is_none())
                || out.iter().any(|q| q.name == r.name)
            {
                continue;
            }
            match scan(&root.join(&r.name), s.range) {
                Ok(scan) => out.push(QueueScan {
                    name: r.name.clone(),
                    scan,
                }),
                Err(e) => debug!(
                    "cannot read queue {}: {}",
                    root.join(&r.name).display(),
                    crate::util::io_text(&e)
                ),
            }
        }
        // Queues of runners this master does not run (`-r`), for the
        // metrics: every configured runner with a queue.
        if !watched_only {
            for r in &self.config.runners {
                if r.has_queue()
                    && !out.iter().any(|q| q.name == r.name)
                    && let Ok(scan) = scan(&root.join(&r.name), r.instances)
                {
                    out.push(QueueScan {
                        name: r.name.clone(),
                        scan,
                    });
                }
            }
        }
        out
    }

    /// Brings every watched slice's stall state up to date with `scans`:
    /// logs a stall once when it starts and once when it clears, and with
    /// `on_stall = "restart"` restarts the runner as a crash.
    pub(super) fn note_scans(&mut self, scans: &[QueueScan], now: Instant) {
        for idx in 0..self.slices.len() {
            let s = &self.slices[idx];
            let Some(threshold) = s.runner.stall_threshold() else {
                continue;
            };
            let Some(q) = scans.iter().find(|q| q.name == s.runner.name) else {
                continue;
            };
            let wait = match s.state {
                State::Running { since, .. } => q
                    .scan
                    .slices
                    .get(s.slice as usize)
                    .and_then(|(_, oldest)| *oldest)
                    .map(|age| {
                        Duration::from_secs_f64(age).min(now.saturating_duration_since(since))
                    }),
                _ => None,
            };
            let stalled = wait.is_some_and(|w| w > threshold);
            let was = s.stalled;
            let s = &mut self.slices[idx];
            s.queue_wait = wait;
            s.stalled = stalled;
            match (was, stalled) {
                (false, true) => {
                    warn!(
                        "Runner {} stalled: the oldest entry of its slice has waited {}s while it ran (stall_after {} + sleep_time {})",
                        s.spec(),
                        wait.unwrap_or_default().as_secs(),
                        s.runner.stall_after,
                        s.runner.sleep_time
                    );
                    if s.runner.on_stall == OnStall::Restart {
                        self.restart_stalled(idx, now);
                    }
                }
                (true, false) => info!("Runner {} is no longer stalled.", s.spec()),
                _ => {}
            }
        }
    }

    /// `on_stall = "restart"`: as a restart request (SIGUSR1, then SIGTERM
    /// and SIGKILL if it does not go), but its exit counts as a crash.
    fn restart_stalled(&mut self, idx: usize, now: Instant) {
        let stop_timeout = self.config.mailman.stop_timeout.0;
        let s = &mut self.slices[idx];
        let (Some(pid), None) = (s.pid(), s.restart_asked) else {
            return;
        };
        info!("Restarting stalled runner {} (pid {pid}).", s.spec());
        let _ = kill(Pid::from_raw(pid), Signal::SIGUSR1);
        s.restart_asked = Some(RestartAsked {
            deadline: now + stop_timeout,
            terminated: false,
            counted: true,
        });
        // A new timer, set while `status` or a scrape is answered.
        self.slice_timer = None;
    }

    /// Whether any runner of this master has stall detection on.
    pub(super) fn watches_stalls(&self) -> bool {
        self.watches_stalls
    }

    /// The stall timer is due: read the watched queues, set the next turn.
    pub(super) fn on_stall_timer(&mut self, now: Instant) {
        if self.stall_check_at.is_none_or(|at| at > now) || self.mode != Mode::Running {
            return;
        }
        let scans = self.scan_queues(true);
        self.note_scans(&scans, now);
        self.stall_check_at = Some(now + self.stall_period());
    }

    /// A quarter of the shortest threshold, between 1 s and a minute: a
    /// stall is seen within a quarter of its threshold (or a minute).
    pub(super) fn stall_period(&self) -> Duration {
        self.slices
            .iter()
            .filter_map(|s| s.runner.stall_threshold())
            .min()
            .map_or(Duration::from_secs(60), |t| {
                (t / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
            })
    }

    /// Before answering a status request or a scrape: the watched queues
    /// read now.
    pub(super) fn refresh_stalls(&mut self) {
        if self.mode == Mode::Running && self.watches_stalls() {
            let scans = self.scan_queues(true);
            self.note_scans(&scans, Instant::now());
        }
    }
}
