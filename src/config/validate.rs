//! What each key may hold, checked in one place: runner and queue names,
//! commands, handlers, `instances`, and the queue graph (`next`). Types
//! (booleans, enums, durations) are checked by serde as the text is read.

use std::ops::Range;

use toml::Spanned;

use super::layer::RawRunner;
use super::{Config, RunnerConfig};

/// An error at a place in the text: the span and the message.
pub(super) type Spot = (Range<usize>, String);

/// A runner or queue name: letters, digits, `_` and `-`, not starting with
/// `-` (the default command passes it as an argument: `-x` would be an
/// option).
pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// `var_dir` as written.
pub(super) fn var_dir(v: &std::path::Path) -> Result<(), String> {
    if v.as_os_str().is_empty() {
        return Err("var_dir must not be empty".into());
    }
    Ok(())
}

/// `[http] listen` as written: `""` (off) or `HOST:PORT` with a port
/// number (the host is resolved when the master binds; port 0 lets the
/// kernel choose one, which `status --json` then shows).
pub(super) fn listen(v: &str) -> Result<(), String> {
    let ok = v.is_empty()
        || v.rsplit_once(':').is_some_and(|(h, p)| {
            !h.is_empty() && p.parse::<u16>().is_ok() && !h.contains(char::is_whitespace)
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "listen must be HOST:PORT (e.g. \"127.0.0.1:9410\", \"[::]:9410\") or \"\" for none, not \"{v}\""
        ))
    }
}

/// One `[runner.NAME]` table (or its override): the name, and each key that
/// serde cannot check by type.
pub(super) fn runner_table(name: &Spanned<String>, table: &RawRunner) -> Result<(), Spot> {
    if !valid_name(name.get_ref()) {
        return Err((
            name.span(),
            format!(
                "invalid runner name \"{}\": use letters, digits, '_' and '-' (not first)",
                name.get_ref()
            ),
        ));
    }
    let name = name.get_ref();
    if let Some(c) = &table.command
        && (c.get_ref().is_empty() || c.get_ref()[0].is_empty())
    {
        return Err((
            c.span(),
            format!("Runner \"{name}\": command must not be empty"),
        ));
    }
    if let Some(h) = &table.handler
        && h.get_ref().first().is_some_and(String::is_empty)
    {
        return Err((
            h.span(),
            format!("Runner \"{name}\": handler must not start with an empty program"),
        ));
    }
    if let Some(n) = &table.next
        && !n.get_ref().is_empty()
        && !valid_name(n.get_ref())
    {
        return Err((
            n.span(),
            format!("Runner \"{name}\": invalid next queue \"{}\"", n.get_ref()),
        ));
    }
    if let Some(a) = &table.ready_tcp
        && !a.get_ref().is_empty()
        && !a
            .get_ref()
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
    {
        return Err((
            a.span(),
            format!(
                "Runner \"{name}\": ready_tcp must be HOST:PORT, not \"{}\"",
                a.get_ref()
            ),
        ));
    }
    if let Some(i) = &table.instances
        && !i.get_ref().is_power_of_two()
    {
        return Err((
            i.span(),
            format!("Runner \"{name}\", not a power of 2: {}", i.get_ref()),
        ));
    }
    Ok(())
}

/// Why `var_dir` may not be set next to a `mailman.cfg`.
pub(super) const CORE_VAR_DIR: &str = "var_dir comes from mailman_cfg (its [paths.LAYOUT] var_dir, or $MAILMAN_VAR_DIR): set it there";

pub(super) const CORE_QUEUE_DIR: &str =
    "queue_dir comes from mailman_cfg (its [paths.LAYOUT] queue_dir): set it there";

/// `[mailman] slices` as written: each a selection, none overlapping
/// another (the runners' names are checked against the whole
/// configuration).
pub(super) fn slices(list: &[String]) -> Result<(), String> {
    let specs = list
        .iter()
        .map(|t| super::RunnerSpec::parse(t))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("slices: {e}"))?;
    super::selection::no_overlap(&specs).map_err(|e| format!("slices: {e}"))
}

/// The keys of a runner table that a `mailman.cfg` owns for Mailman's own
/// runners, with their spans.
pub(super) fn core_owned_keys(table: &RawRunner) -> Vec<(Range<usize>, &'static str)> {
    let mut out = Vec::new();
    if let Some(c) = &table.command {
        out.push((c.span(), "command"));
    }
    if let Some(i) = &table.instances {
        out.push((i.span(), "instances"));
    }
    if let Some(s) = &table.start {
        out.push((s.span(), "start"));
    }
    out
}

pub(super) fn core_owned_message(runner: &str, key: &str) -> String {
    if runner == "default" {
        format!(
            "[runner.default] {key}: with mailman_cfg, Mailman's runners take {key} from mailman.cfg; set it in a [runner.NAME] of a runner of ours"
        )
    } else {
        format!(
            "Runner \"{runner}\": {key} comes from mailman_cfg ([runner.{runner}] there); here only supervision keys (max_restarts, restart_delay, env, …) may be set"
        )
    }
}

/// The whole configuration, once merged: what no single layer can tell.
impl Config {
    /// Every `next` names another runner that has a queue.
    pub(super) fn check_queues(&self) -> Result<(), String> {
        for r in &self.runners {
            let Some(next) = &r.next else { continue };
            if *next == r.name {
                return Err(format!("Runner \"{}\": next must be another queue", r.name));
            }
            if !self.runner(next).is_some_and(RunnerConfig::has_queue) {
                return Err(format!(
                    "Runner \"{}\": next queue \"{next}\" is not a queue runner",
                    r.name
                ));
            }
        }
        // Entries handled with success move on along `next`: a loop would
        // send them round for ever.
        for r in &self.runners {
            let mut path = vec![r.name.as_str()];
            let mut at = r;
            while let Some(next) = at.next.as_deref().and_then(|n| self.runner(n)) {
                path.push(next.name.as_str());
                if next.name == r.name {
                    return Err(format!(
                        "next queues go round in a loop: {} (entries would never leave it)",
                        path.join(" -> ")
                    ));
                }
                if path.len() > self.runners.len() {
                    break; // a loop elsewhere, reported from its own start
                }
                at = next;
            }
        }
        Ok(())
    }

    /// `slices` name runners there are, and the master's own files are not
    /// in the queue directory other masters may share.
    pub(super) fn check_sharing(&self) -> Result<(), String> {
        for text in &self.mailman.slices {
            let name = text.split(':').next().unwrap_or_default();
            if self.runner(name).is_none() {
                return Err(format!("slices: Undefined runner name: {name}"));
            }
        }
        let m = &self.mailman;
        if m.run_dir.starts_with(&m.queue_dir) {
            return Err(format!(
                "run_dir {} is inside queue_dir {}: the master's lock, pid file and socket must be \
                 host-local, or two masters sharing the queue would share one lock",
                m.run_dir.display(),
                m.queue_dir.display()
            ));
        }
        Ok(())
    }

    /// `preload` is for Mailman Core's runners, which only `mailman_cfg`
    /// brings.
    pub(super) fn check_preload(&self) -> Result<(), String> {
        if self.mailman.preload && self.core.is_none() {
            return Err(
                "preload = true needs mailman_cfg: it preloads Mailman Core's \
                        runners (its Python code), and this configuration runs none"
                    .into(),
            );
        }
        Ok(())
    }

    /// The slices that would start stay under `max_runners`: a typo such as
    /// `instances = 2147483648` must not make the master try.
    pub(super) fn check_runner_count(&self) -> Result<(), String> {
        let total: u64 = self
            .runners
            .iter()
            .filter(|r| r.start)
            .map(|r| u64::from(r.instances))
            .sum();
        if total > u64::from(self.mailman.max_runners) {
            return Err(format!(
                "{total} runner slices would start, more than max_runners = {}; \
                 raise [mailman] max_runners if you mean it",
                self.mailman.max_runners
            ));
        }
        Ok(())
    }
}
