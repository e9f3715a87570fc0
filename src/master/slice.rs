//! One runner slice (`NAME:SLICE:RANGE`) as the master sees it: an explicit
//! state, its restart count and back-off, and the restart rule (docs/master.md, "Restart rules") as
//! one pure function, [`Slice::on_exit`].
//!
//! Not here: processes, signals, logging (that is `master`).

use std::fmt;
use std::time::{Duration, Instant};

use crate::config::RunnerConfig;

/// Why a runner ended: Mailman's `why` (an exit status or a signal number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    Exit(i32),
    Signal(i32),
}

impl Why {
    /// The number Mailman's rules look at, whether exit code or signal.
    pub fn number(self) -> i32 {
        match self {
            Why::Exit(n) | Why::Signal(n) => n,
        }
    }
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::Exit(n) => write!(f, "EXIT {n}"),
            Why::Signal(n) => write!(f, "SIGNAL {n}"),
        }
    }
}

/// Mailman's "do not restart me" code (SIGTERM's number).
pub const WHY_NO_RESTART: i32 = 15;
/// A requested restart (SIGUSR1's number): restarted at once, not counted.
pub const WHY_REQUESTED: i32 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not started yet: start-up starts slices in batches (see
    /// `master::startup`), so that a master of thousands of runners answers
    /// `status` and `stop` meanwhile.
    Pending,
    /// Asked of the preload helper (`master::preload`) at `since`; its pid
    /// is not known yet.
    Forking { since: Instant },
    /// A live process.
    Running { pid: i32, since: Instant },
    /// Waiting out the back-off before the next start.
    BackingOff { until: Instant },
    /// Past `max_restarts`: given up until `restart` or a new master.
    Failed,
    /// Not running and not to be restarted (exit 15, `--no-restart`, stop).
    Stopped,
    /// Another master owns the slice (its lock in the shared queue
    /// directory): tried again at `retry_at` (docs/scaling-out.md).
    WaitingForOwner { retry_at: Instant },
}

#[derive(Debug, Clone)]
pub struct Slice {
    pub runner: RunnerConfig,
    pub slice: u32,
    pub range: u32,
    pub state: State,
    /// Counted exits since the last stable run.
    pub restarts: u32,
    /// Counted exits in all (for status).
    pub total_restarts: u32,
    pub last_exit: Option<Why>,
    /// When it last exited.
    pub last_exit_at: Option<Instant>,
    /// When its current run of counted exits began (`None` once a stable
    /// run or a restart request has reset the count).
    pub failing_since: Option<Instant>,
    /// The master asked it to restart (SIGUSR1): its next exit, whatever
    /// its status, is restarted at once and not counted; past the deadline
    /// the request escalates (see [`RestartAsked`]).
    pub restart_asked: Option<RestartAsked>,
    /// Where it accepts connections once ready (its `ready_tcp`, resolved).
    pub ready_addr: Option<std::net::SocketAddr>,
    /// Running and ready: it has no `ready_tcp`, or that address accepted a
    /// connection since it started.
    pub ready: bool,
    /// When to try its address next, while it is not ready.
    pub probe_at: Option<Instant>,
    /// How long the oldest entry of its slice of the queue has waited
    /// while this run of it was up, as last seen (`master::stall`).
    pub queue_wait: Option<Duration>,
    /// That wait passed its runner's stall threshold.
    pub stalled: bool,
    /// Its ownership lock, held from its first start until it is given up
    /// or stopped (`slice_locks`); its runner inherits it.
    pub owner: Option<std::sync::Arc<crate::os::owner::SliceLock>>,
    /// Who owns it while it waits, as last logged.
    pub waiting_on: Option<String>,
}

/// A restart the master asked of a running runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartAsked {
    /// When to escalate.
    pub deadline: Instant,
    /// SIGTERM was sent after SIGUSR1 was not obeyed (gunicorn, Mailman's
    /// REST runner, takes SIGUSR1 as "reopen logs").
    pub terminated: bool,
    /// Asked because it stalled (`on_stall = "restart"`): its exit counts
    /// as a crash (back-off, `max_restarts`), whatever its status.
    pub counted: bool,
}

/// What the master should do after a runner exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start it again now.
    RestartNow,
    /// Start it again after this delay.
    RestartAfter(Duration),
    /// Leave it stopped.
    Leave,
    /// It crossed `max_restarts`: give it up.
    GiveUp,
}

impl Decision {
    pub fn restarts(self) -> bool {
        matches!(self, Decision::RestartNow | Decision::RestartAfter(_))
    }
}

impl Slice {
    pub fn new(runner: RunnerConfig, slice: u32, range: u32) -> Slice {
        Slice {
            runner,
            slice,
            range,
            state: State::Stopped,
            restarts: 0,
            total_restarts: 0,
            last_exit: None,
            last_exit_at: None,
            failing_since: None,
            restart_asked: None,
            ready_addr: None,
            ready: false,
            probe_at: None,
            queue_wait: None,
            stalled: false,
            owner: None,
            waiting_on: None,
        }
    }

    /// `NAME:SLICE:RANGE`, as runners are told on their command line.
    pub fn spec(&self) -> String {
        format!("{}:{}:{}", self.runner.name, self.slice, self.range)
    }

    pub fn pid(&self) -> Option<i32> {
        match self.state {
            State::Running { pid, .. } => Some(pid),
            _ => None,
        }
    }

    /// Applies the restart rule to an exit after `uptime`. `restartable` is false
    /// once the master is stopping or runs with `--no-restart`. `jitter` maps
    /// a base delay to the one used (randomised in the master, identity in
    /// tests). Updates the count and the last exit, not the state.
    pub fn on_exit(
        &mut self,
        why: Why,
        uptime: Duration,
        restartable: bool,
        jitter: impl Fn(Duration) -> Duration,
    ) -> Decision {
        self.last_exit = Some(why);
        if uptime >= self.runner.stable_after.0 {
            // Stayed up long enough: earlier crashes are forgiven.
            self.restarts = 0;
        }
        let asked = self.restart_asked.take();
        let counted = asked.is_some_and(|a| a.counted);
        if !counted && (asked.is_some() || why.number() == WHY_REQUESTED) {
            return if restartable {
                Decision::RestartNow
            } else {
                Decision::Leave
            };
        }
        self.restarts += 1;
        self.total_restarts += 1;
        if !restartable {
            return Decision::Leave;
        }
        if self.restarts > self.runner.max_restarts {
            return Decision::GiveUp;
        }
        if why.number() == WHY_NO_RESTART && !counted {
            return Decision::Leave;
        }
        let delay = self.backoff(jitter);
        if delay.is_zero() {
            Decision::RestartNow
        } else {
            Decision::RestartAfter(delay)
        }
    }

    /// Records when an exit (already applied by [`Slice::on_exit`]) happened.
    pub fn note_exit(&mut self, now: Instant) {
        self.last_exit_at = Some(now);
        self.failing_since = match self.restarts {
            0 => None,
            _ => self.failing_since.or(Some(now)),
        };
    }

    /// Its count is reset (a restart request): it is not failing any more.
    pub fn forgive(&mut self) {
        self.restarts = 0;
        self.failing_since = None;
    }

    /// What is wrong with it at `now`, if anything, for `status`: given up;
    /// stopped although it should run; or failing (backing off, or never up
    /// for `stable_after` since) for longer than `grace`.
    pub fn problem(&self, now: Instant, grace: Duration) -> Option<String> {
        let last = || {
            self.last_exit
                .map_or_else(String::new, |w| format!(", last {w}"))
        };
        match self.state {
            // A standby: another master runs it, as meant.
            State::Pending | State::WaitingForOwner { .. } => None,
            State::Forking { .. } => Some(format!("runner {} starting", self.spec())),
            State::Running { .. } if !self.ready => Some(format!(
                "runner {} not ready yet (no connection on {})",
                self.spec(),
                self.ready_addr.map_or_else(String::new, |a| a.to_string())
            )),
            State::Failed => Some(format!(
                "runner {} given up after {} restarts{}",
                self.spec(),
                self.restarts.saturating_sub(1),
                last()
            )),
            State::Stopped => Some(format!("runner {} stopped{}", self.spec(), last())),
            State::Running { since, .. }
                if now.saturating_duration_since(since) >= self.runner.stable_after.0 =>
            {
                None
            }
            State::Running { .. } | State::BackingOff { .. } => {
                let failing = now.saturating_duration_since(self.failing_since?);
                (failing > grace).then(|| {
                    format!(
                        "runner {} failing for {}s ({} restarts{})",
                        self.spec(),
                        failing.as_secs(),
                        self.restarts,
                        last()
                    )
                })
            }
        }
    }

    /// `restart_delay` doubled for each counted exit after the first, capped
    /// at `restart_delay_max`, then jittered (and capped again).
    ///
    /// A `restart_delay` of 0 restarts a first crash at once, but from the
    /// second counted exit on the delay is at least [`MIN_DELAY`], doubled
    /// likewise: a runner that exits as soon as it starts cannot keep the
    /// master forking flat out.
    fn backoff(&self, jitter: impl Fn(Duration) -> Duration) -> Duration {
        let base = self.runner.restart_delay.0;
        let max = self.runner.restart_delay_max.0.max(MIN_DELAY);
        let shift = self.restarts.saturating_sub(1).min(31);
        let mut delay = base.saturating_mul(1u32 << shift);
        if self.restarts >= 2 {
            let floor = MIN_DELAY.saturating_mul(1u32 << self.restarts.saturating_sub(2).min(31));
            delay = delay.max(floor);
        }
        jitter(delay.min(max)).min(max)
    }
}

/// The least delay before a second or later restart in a row.
pub const MIN_DELAY: Duration = Duration::from_millis(10);

/// ±20 % jitter: spreads restarts of runners that crashed together, while
/// each delay stays above the one before (0.8 × 2d > 1.2 × d).
pub fn jitter(d: Duration) -> Duration {
    let ms = d.as_millis() as u64;
    if ms == 0 {
        return d;
    }
    let spread = ms * 2 / 5; // 40 % wide window, centred
    Duration::from_millis(ms - ms / 5 + crate::util::jitter(spread + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Dur};

    fn slice(max: u32, delay_ms: u64) -> Slice {
        let c = Config::from_text("", None).unwrap();
        let mut r = c.runner("in").unwrap().clone();
        r.max_restarts = max;
        r.restart_delay = Dur(Duration::from_millis(delay_ms));
        r.restart_delay_max = Dur(Duration::from_millis(delay_ms * 8));
        Slice::new(r, 0, 1)
    }
    const SHORT: Duration = Duration::from_millis(10);

    #[test]
    fn crashes_back_off_doubling_then_give_up() {
        let mut s = slice(5, 100);
        let got: Vec<_> = (0..6)
            .map(|_| s.on_exit(Why::Exit(1), SHORT, true, |d| d))
            .collect();
        let ms = |n| Decision::RestartAfter(Duration::from_millis(n));
        assert_eq!(
            got,
            vec![
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(800),
                Decision::GiveUp
            ]
        );
    }

    #[test]
    fn exit_15_is_never_restarted_but_counted() {
        let mut s = slice(10, 100);
        assert_eq!(
            s.on_exit(Why::Exit(15), SHORT, true, |d| d),
            Decision::Leave
        );
        assert_eq!(
            s.on_exit(Why::Signal(15), SHORT, true, |d| d),
            Decision::Leave
        );
        assert_eq!(s.restarts, 2);
    }

    #[test]
    fn requested_restarts_are_immediate_and_free() {
        let mut s = slice(1, 100);
        for _ in 0..20 {
            assert_eq!(
                s.on_exit(Why::Exit(10), SHORT, true, |d| d),
                Decision::RestartNow
            );
            assert_eq!(
                s.on_exit(Why::Signal(10), SHORT, true, |d| d),
                Decision::RestartNow
            );
        }
        assert_eq!(s.restarts, 0);
        assert_eq!(
            s.on_exit(Why::Exit(10), SHORT, false, |d| d),
            Decision::Leave
        );
    }

    #[test]
    fn a_stable_run_resets_the_count() {
        let mut s = slice(2, 100);
        s.on_exit(Why::Signal(9), SHORT, true, |d| d);
        s.on_exit(Why::Signal(9), SHORT, true, |d| d);
        let stable = s.runner.stable_after.0;
        assert_eq!(
            s.on_exit(Why::Signal(9), stable, true, |d| d),
            Decision::RestartAfter(Duration::from_millis(100))
        );
        assert_eq!(s.restarts, 1);
        assert_eq!(s.total_restarts, 3);
    }

    #[test]
    fn not_restartable_leaves_it() {
        let mut s = slice(10, 100);
        assert_eq!(
            s.on_exit(Why::Exit(1), SHORT, false, |d| d),
            Decision::Leave
        );
        let mut z = slice(10, 0);
        assert_eq!(
            z.on_exit(Why::Exit(1), SHORT, true, |d| d),
            Decision::RestartNow
        );
        // A zero delay is a first crash's only: then 10 ms, 20 ms, …
        let ms = |n| Decision::RestartAfter(Duration::from_millis(n));
        z.runner.restart_delay_max = Dur(Duration::from_secs(30));
        let next: Vec<_> = (0..3)
            .map(|_| z.on_exit(Why::Exit(1), SHORT, true, |d| d))
            .collect();
        assert_eq!(next, vec![ms(10), ms(20), ms(40)]);
    }

    #[test]
    fn problems_are_given_up_stopped_or_failing_too_long() {
        let grace = Duration::from_secs(30);
        let t0 = Instant::now();
        let mut s = slice(2, 100);
        s.state = State::Running { pid: 1, since: t0 };
        s.ready = true;
        assert_eq!(s.problem(t0, grace), None);
        s.on_exit(Why::Exit(1), SHORT, true, |d| d);
        s.note_exit(t0);
        s.state = State::BackingOff { until: t0 };
        assert_eq!(s.problem(t0 + Duration::from_secs(5), grace), None);
        let p = s.problem(t0 + Duration::from_secs(31), grace).unwrap();
        assert!(
            p.starts_with("runner in:0:1 failing for 31s (1 restarts, last EXIT 1)"),
            "{p}"
        );
        // Up again, but not yet stable: still failing; stable: fine.
        s.state = State::Running {
            pid: 2,
            since: t0 + Duration::from_secs(31),
        };
        assert!(s.problem(t0 + Duration::from_secs(40), grace).is_some());
        assert_eq!(s.problem(t0 + Duration::from_secs(100), grace), None);
        s.state = State::Failed;
        assert!(s.problem(t0, grace).unwrap().contains("given up"));
        s.forgive();
        assert_eq!(s.failing_since, None);
    }

    #[test]
    fn an_asked_restart_is_free_whatever_the_exit() {
        let mut s = slice(1, 100);
        s.restart_asked = Some(RestartAsked {
            deadline: Instant::now(),
            terminated: true,
            counted: false,
        });
        assert_eq!(
            s.on_exit(Why::Exit(0), SHORT, true, |d| d),
            Decision::RestartNow
        );
        assert_eq!((s.restarts, s.restart_asked), (0, None));
        assert_ne!(
            s.on_exit(Why::Exit(0), SHORT, true, |d| d),
            Decision::RestartNow
        );
    }

    #[test]
    fn a_stall_restart_counts_as_a_crash() {
        let mut s = slice(1, 100);
        let stall = RestartAsked {
            deadline: Instant::now(),
            terminated: true,
            counted: true,
        };
        // Whatever it exits with (10 for SIGUSR1, 15 once terminated).
        s.restart_asked = Some(stall);
        assert_eq!(
            s.on_exit(Why::Exit(10), SHORT, true, |d| d),
            Decision::RestartAfter(Duration::from_millis(100))
        );
        s.restart_asked = Some(stall);
        assert_eq!(
            s.on_exit(Why::Signal(15), SHORT, true, |d| d),
            Decision::GiveUp
        );
        assert_eq!(s.total_restarts, 2);
    }

    #[test]
    fn jitter_keeps_delays_growing() {
        for _ in 0..1000 {
            let a = jitter(Duration::from_millis(100));
            let b = jitter(Duration::from_millis(200));
            assert!(
                a >= Duration::from_millis(80) && a <= Duration::from_millis(120),
                "{a:?}"
            );
            assert!(b > a);
        }
    }
}
