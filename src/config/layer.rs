//! One source of settings as read: serde's raw tables (every key optional,
//! unknown keys rejected), and [`Layer`], one file or override parsed on its
//! own so that an error names its source, then laid over the others.
//!
//! Not here: what a missing key means (`defaults`), what a key may hold
//! (`validate`).

use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::Deserialize;
use toml::Spanned;

use super::jobs::{LayerJob, RawJob};
use super::{ConfigError, Dur, LogFormat, LogLevel, OnGiveUp, validate};

// ---- raw file tables: every key optional, unknown keys rejected ----

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    #[serde(default)]
    pub(super) mailman: RawMailman,
    #[serde(default)]
    pub(super) logging: RawLogging,
    #[serde(default)]
    pub(super) http: RawHttp,
    #[serde(default)]
    pub(super) runner: IndexMap<Spanned<String>, RawRunner>,
    #[serde(default)]
    pub(super) job: IndexMap<Spanned<String>, RawJob>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    /// `HOST:PORT` to serve `/metrics`, `/livez`, `/readyz` on; "" for none.
    pub(super) listen: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMailman {
    pub(super) var_dir: Option<Spanned<PathBuf>>,
    /// A Mailman Core `mailman.cfg` whose runners and paths this master
    /// runs (docs/mailman-core.md).
    pub(super) mailman_cfg: Option<Spanned<PathBuf>>,
    /// A command run once, to its end, before the first runner starts.
    pub(super) init: Option<Vec<String>>,
    pub(super) user: Option<String>,
    pub(super) group: Option<String>,
    pub(super) stop_timeout: Option<Dur>,
    pub(super) on_give_up: Option<OnGiveUp>,
    pub(super) degraded_after: Option<Dur>,
    pub(super) max_runners: Option<u32>,
    /// Host-local state: the lock, pid file, control socket and log
    /// (docs/scaling-out.md).
    pub(super) run_dir: Option<Spanned<PathBuf>>,
    /// The (possibly shared) queue directory.
    pub(super) queue_dir: Option<Spanned<PathBuf>>,
    /// The slices this master runs (`NAME` or `NAME:SLICE:RANGE`), as `-r`.
    pub(super) slices: Option<Spanned<Vec<String>>>,
    /// Own each slice through a lock in the queue directory.
    pub(super) slice_locks: Option<bool>,
    /// How often a slice another master owns is tried again.
    pub(super) owner_retry: Option<Spanned<Dur>>,
    /// Fork Mailman Core's runners from one preloaded Python helper.
    pub(super) preload: Option<bool>,
    /// Offer runners' memory to the kernel's same-page merging (KSM).
    pub(super) merge_pages: Option<bool>,
    /// Make what the preload helper loaded immortal (Python 3.12, 3.13).
    pub(super) immortal_objects: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLogging {
    pub(super) stderr: Option<bool>,
    pub(super) file: Option<bool>,
    pub(super) format: Option<LogFormat>,
    pub(super) level: Option<LogLevel>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRunner {
    pub(super) command: Option<Spanned<Vec<String>>>,
    pub(super) instances: Option<Spanned<u32>>,
    pub(super) start: Option<Spanned<bool>>,
    pub(super) max_restarts: Option<u32>,
    pub(super) sleep_time: Option<Dur>,
    pub(super) restart_delay: Option<Dur>,
    pub(super) restart_delay_max: Option<Dur>,
    pub(super) stable_after: Option<Dur>,
    pub(super) handler: Option<Spanned<Vec<String>>>,
    pub(super) next: Option<Spanned<String>>,
    pub(super) env: Option<IndexMap<String, String>>,
    pub(super) ready_tcp: Option<Spanned<String>>,
    pub(super) stall_after: Option<Dur>,
    pub(super) on_stall: Option<super::OnStall>,
}

impl RawRunner {
    /// `self` with every key it lacks taken from `base`.
    pub(super) fn over(self, base: &RawRunner) -> RawRunner {
        RawRunner {
            command: self.command.or_else(|| base.command.clone()),
            instances: self.instances.or_else(|| base.instances.clone()),
            start: self.start.or_else(|| base.start.clone()),
            max_restarts: self.max_restarts.or(base.max_restarts),
            sleep_time: self.sleep_time.or(base.sleep_time),
            restart_delay: self.restart_delay.or(base.restart_delay),
            restart_delay_max: self.restart_delay_max.or(base.restart_delay_max),
            stable_after: self.stable_after.or(base.stable_after),
            handler: self.handler.or_else(|| base.handler.clone()),
            next: self.next.or_else(|| base.next.clone()),
            ready_tcp: self.ready_tcp.or_else(|| base.ready_tcp.clone()),
            stall_after: self.stall_after.or(base.stall_after),
            on_stall: self.on_stall.or(base.on_stall),
            env: match (&base.env, self.env) {
                (Some(b), Some(mut own)) => {
                    for (k, v) in b {
                        own.entry(k.clone()).or_insert_with(|| v.clone());
                    }
                    Some(own)
                }
                (b, own) => own.or_else(|| b.clone()),
            },
        }
    }
}

/// One source of settings (the file, the environment, a `--set`), parsed and
/// checked on its own so that an error names its source; merged in order.
#[derive(Debug, Default)]
pub(super) struct Layer {
    pub(super) mailman: RawMailman,
    pub(super) logging: RawLogging,
    pub(super) http: RawHttp,
    pub(super) runner: IndexMap<String, RawRunner>,
    pub(super) job: IndexMap<String, LayerJob>,
    /// What this layer sets that a Mailman Core configuration owns (its
    /// `var_dir`, a Mailman runner's `command`, `instances`, `start`), each
    /// with its error: `None` for `var_dir`, else the runner's name. Raised
    /// only if the configuration turns out to name a `mailman.cfg`.
    pub(super) core_owned: Vec<(Option<String>, ConfigError)>,
    /// An override's source (`--set …`, `MAILMAN__…=…`); `None` for a file.
    pub(super) label: Option<String>,
}

impl Layer {
    /// Parses one TOML text. `at` turns a byte span of `text` into the
    /// error to report. Relative `var_dir`s are resolved against `base`.
    pub(super) fn parse(
        text: &str,
        base: &Path,
        at: &dyn Fn(std::ops::Range<usize>, String) -> ConfigError,
    ) -> Result<Layer, ConfigError> {
        let raw: RawFile = toml::from_str(text)
            .map_err(|e| at(e.span().unwrap_or(0..0), e.message().trim_end().to_string()))?;
        let mut mailman = raw.mailman;
        let mut core_owned = Vec::new();
        if let Some(v) = mailman.var_dir.take() {
            let span = v.span();
            validate::var_dir(v.get_ref()).map_err(|message| at(span.clone(), message))?;
            core_owned.push((None, at(span.clone(), validate::CORE_VAR_DIR.to_string())));
            mailman.var_dir = Some(Spanned::new(span, base.join(v.into_inner())));
        }
        for (key, dir) in [
            ("run_dir", &mut mailman.run_dir),
            ("queue_dir", &mut mailman.queue_dir),
        ] {
            if let Some(v) = dir.take() {
                let span = v.span();
                if v.get_ref().as_os_str().is_empty() {
                    return Err(at(span, format!("{key} must not be empty")));
                }
                if key == "queue_dir" {
                    core_owned.push((None, at(span.clone(), validate::CORE_QUEUE_DIR.to_string())));
                }
                *dir = Some(Spanned::new(span, base.join(v.into_inner())));
            }
        }
        if let Some(r) = &mailman.owner_retry {
            let d = r.get_ref().0;
            if d < std::time::Duration::from_millis(100) || d > std::time::Duration::from_secs(3600)
            {
                return Err(at(
                    r.span(),
                    format!(
                        "owner_retry must be between 100ms and 1h, not {}",
                        r.get_ref()
                    ),
                ));
            }
        }
        if let Some(s) = &mailman.slices {
            validate::slices(s.get_ref()).map_err(|m| at(s.span(), m))?;
        }
        if let Some(v) = mailman.mailman_cfg.take() {
            let span = v.span();
            validate::var_dir(v.get_ref())
                .map_err(|_| at(span.clone(), "mailman_cfg must not be empty".into()))?;
            mailman.mailman_cfg = Some(Spanned::new(span, base.join(v.into_inner())));
        }
        if let Some(init) = &mailman.init
            && init.first().is_some_and(String::is_empty)
        {
            return Err(at(0..0, "init must not start with an empty program".into()));
        }
        let mut runner = IndexMap::new();
        for (name, table) in raw.runner {
            validate::runner_table(&name, &table).map_err(|(span, message)| at(span, message))?;
            for (span, key) in validate::core_owned_keys(&table) {
                core_owned.push((
                    Some(name.get_ref().clone()),
                    at(span, validate::core_owned_message(name.get_ref(), key)),
                ));
            }
            runner.insert(name.into_inner(), table);
        }
        let mut job = IndexMap::new();
        for (name, table) in raw.job {
            if !validate::valid_name(name.get_ref()) {
                return Err(at(
                    name.span(),
                    format!(
                        "invalid job name \"{}\": use letters, digits, '_' and '-' (not first)",
                        name.get_ref()
                    ),
                ));
            }
            table
                .check(name.get_ref())
                .map_err(|(span, message)| at(span, message))?;
            let place = at(name.span(), String::new());
            job.insert(name.into_inner(), LayerJob { table, place });
        }
        if let Some(l) = &raw.http.listen {
            validate::listen(l.get_ref()).map_err(|m| at(l.span(), m))?;
        }
        Ok(Layer {
            mailman,
            logging: raw.logging,
            http: raw.http,
            runner,
            job,
            core_owned,
            label: None,
        })
    }

    /// `self` over `base`: what `self` sets wins.
    pub(super) fn over(self, mut base: Layer) -> Layer {
        let (m, b) = (self.mailman, base.mailman);
        base.mailman = RawMailman {
            var_dir: m.var_dir.or(b.var_dir),
            mailman_cfg: m.mailman_cfg.or(b.mailman_cfg),
            init: m.init.or(b.init),
            user: m.user.or(b.user),
            group: m.group.or(b.group),
            stop_timeout: m.stop_timeout.or(b.stop_timeout),
            on_give_up: m.on_give_up.or(b.on_give_up),
            degraded_after: m.degraded_after.or(b.degraded_after),
            max_runners: m.max_runners.or(b.max_runners),
            run_dir: m.run_dir.or(b.run_dir),
            queue_dir: m.queue_dir.or(b.queue_dir),
            slices: m.slices.or(b.slices),
            slice_locks: m.slice_locks.or(b.slice_locks),
            owner_retry: m.owner_retry.or(b.owner_retry),
            preload: m.preload.or(b.preload),
            merge_pages: m.merge_pages.or(b.merge_pages),
            immortal_objects: m.immortal_objects.or(b.immortal_objects),
        };
        let (l, b) = (self.logging, base.logging);
        base.logging = RawLogging {
            stderr: l.stderr.or(b.stderr),
            file: l.file.or(b.file),
            format: l.format.or(b.format),
            level: l.level.or(b.level),
        };
        if self.http.listen.is_some() {
            base.http.listen = self.http.listen;
        }
        base.core_owned.extend(self.core_owned);
        for (name, lj) in self.job {
            let merged = match base.job.shift_remove(&name) {
                // The error place stays where the job was first defined.
                Some(under) => LayerJob {
                    table: lj.table.over(&under.table),
                    place: under.place,
                },
                None => lj,
            };
            base.job.insert(name, merged);
        }
        for (name, table) in self.runner {
            let merged = match base.runner.get(&name) {
                Some(under) => table.over(under),
                None => table,
            };
            base.runner.insert(name, merged);
        }
        base
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}
