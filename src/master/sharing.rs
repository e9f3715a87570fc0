//! Slices over several masters sharing one queue directory
//! (docs/scaling-out.md): owning a slice before its runner starts (or
//! waiting for the master that owns it), and the warnings about layouts
//! that cannot work across hosts.
//!
//! Not here: the lock itself (`os::owner`), when a slice is started
//! (`runners`).

use std::time::Instant;

use indexmap::IndexMap;
use tracing::{info, warn};

use super::Master;
use super::runners::LaunchError;
use super::slice::State;
use crate::os::owner::{self, Claim, file_system};

/// When (in `owner_retry`s after start) a master that runs part of a
/// runner's slices looks, once, whether every other slice has an owner:
/// a minute by default, time for the other masters to start.
const SHARE_CHECK_AFTER: u32 = 12;

impl Master {
    /// Slice `idx`'s ownership (`slice_locks`, docs/scaling-out.md): true
    /// when this master owns it (already, or now); false when another
    /// master does, and the slice waits, tried again after `owner_retry`
    /// (logged when it starts waiting, when its owner changes, and when it
    /// is taken over).
    pub(super) fn claim(&mut self, idx: usize) -> Result<bool, LaunchError> {
        let m = &self.config.mailman;
        let s = &self.slices[idx];
        if !m.slice_locks || s.owner.is_some() {
            return Ok(true);
        }
        let me = format!(
            "host {}, pid {}, since {}",
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "?".into()),
            std::process::id(),
            jiff::Timestamp::now()
                .round(jiff::Unit::Second)
                .unwrap_or_else(|_| jiff::Timestamp::now())
        );
        let claimed = owner::try_claim(
            &self.layout.queue_dir(),
            &s.runner.name,
            s.slice,
            s.range,
            &me,
        );
        let retry = m.owner_retry;
        let s = &mut self.slices[idx];
        match claimed {
            Ok(Claim::Mine(lock)) => {
                if let Some(was) = s.waiting_on.take() {
                    info!(
                        "Slice {} is free now: taking it over (before: {was})",
                        s.spec()
                    );
                }
                s.owner = Some(std::sync::Arc::new(lock));
                Ok(true)
            }
            Ok(Claim::Held(who)) => {
                if s.waiting_on.as_deref() != Some(who.as_str()) {
                    info!(
                        "Slice {} is another master's ({who}): not starting it; trying again every {retry}",
                        s.spec()
                    );
                }
                s.waiting_on = Some(who);
                s.state = State::WaitingForOwner {
                    retry_at: Instant::now() + retry.0,
                };
                Ok(false)
            }
            // Off Linux: documented as not enforced.
            Err(e) if e.kind() == std::io::ErrorKind::Unsupported => Ok(true),
            Err(e) => Err(LaunchError {
                message: format!(
                    "Cannot start runner {}: cannot take its ownership lock: {}",
                    s.spec(),
                    crate::util::io_text(&e)
                ),
                lasting: true,
            }),
        }
    }

    /// The runners this master runs only part of, with its slices of
    /// each (`SLICE`, `RANGE`).
    fn partial_runners(&self) -> IndexMap<String, Vec<(u32, u32)>> {
        let mut mine: IndexMap<String, Vec<(u32, u32)>> = IndexMap::new();
        for s in &self.slices {
            mine.entry(s.runner.name.clone())
                .or_default()
                .push((s.slice, s.range.max(1)));
        }
        mine.retain(|_, v| v.iter().map(|(_, r)| 1.0 / f64::from(*r)).sum::<f64>() < 0.999_999);
        mine
    }

    /// At start, where slices are locked: warns of a layout that cannot
    /// work across hosts (this master runs only part of a runner's slices
    /// on a queue directory other hosts cannot see, or its lock is on a
    /// file system other hosts share), and schedules the one later look at
    /// the slices it does not run ([`Master::on_share_check`]).
    pub(super) fn check_sharing(&mut self) {
        if !self.config.mailman.slice_locks {
            return;
        }
        let partial: Vec<String> = self.partial_runners().into_keys().collect();
        let queue = self.layout.queue_dir();
        if !partial.is_empty() {
            if let Some((fs, false)) = file_system(&queue) {
                warn!(
                    "queue_dir {} is on {fs}, which other hosts cannot share, and this master runs \
                     only part of {}'s slices: the others must run on this host (docs/scaling-out.md)",
                    queue.display(),
                    partial.join(", ")
                );
            }
            let after = self
                .config
                .mailman
                .owner_retry
                .0
                .saturating_mul(SHARE_CHECK_AFTER);
            self.share_check_at = Some(Instant::now() + after);
        }
        let lock = self.layout.lock_file();
        if let Some((fs, true)) = file_system(&lock) {
            warn!(
                "the master's lock {} is on a shared file system ({fs}): run_dir should be \
                 host-local, or two masters could share one lock (docs/scaling-out.md)",
                lock.display()
            );
        }
    }

    /// [`SHARE_CHECK_AFTER`] `owner_retry`s after the start, once: the slices of its runners that
    /// this master does not run, and nobody owns in its queue directory.
    /// Either no master runs them, or this queue directory is not the one
    /// the others see.
    pub(super) fn on_share_check(&mut self, now: Instant) {
        if self.share_check_at.is_none_or(|at| at > now) {
            return;
        }
        self.share_check_at = None;
        let queue = self.layout.queue_dir();
        let mut free = Vec::new();
        for (name, mine) in self.partial_runners() {
            let finest = mine.iter().map(|(_, r)| *r).max().unwrap_or(1);
            for k in 0..finest {
                let ours = mine.iter().any(|(s, r)| k / (finest / r) == *s);
                if !ours && owner::holder_of(&queue, &name, k, finest).is_none() {
                    free.push(format!("{name}:{k}:{finest}"));
                }
            }
        }
        if !free.is_empty() {
            warn!(
                "no master owns {} in {}: if other masters should run them, they do not see this \
                 queue directory (is it shared with them?) (docs/scaling-out.md)",
                free.join(", "),
                queue.display()
            );
        }
    }
}
