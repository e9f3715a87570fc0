//! What every key is when nobody sets it: Mailman 3.3.10's runners and
//! their flow, our own defaults, and the second pass that lays built-in
//! defaults, `[runner.default]` and each `[runner.NAME]` over each other.
//!
//! Not here: reading text (`layer`), checking values (`validate`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;
use toml::Spanned;

use super::layer::{Layer, RawRunner};
use super::mailman_cfg::{Core, CoreRunner};
use super::{
    Config, Dur, Http, LogFormat, LogLevel, Logging, MailmanSection, OnGiveUp, OnStall,
    RunnerConfig,
};

/// Mailman 3.3.10's runners in its own config order, with whether they start
/// by default.
pub(super) const BUILTIN_RUNNERS: &[(&str, bool)] = &[
    ("archive", true),
    ("bad", false),
    ("bounces", true),
    ("command", true),
    ("in", true),
    ("lmtp", true),
    ("nntp", false),
    ("out", true),
    ("pipeline", true),
    ("rest", true),
    ("retry", true),
    ("shunt", false),
    ("task", true),
    ("virgin", true),
    ("digest", true),
];

/// Mailman's runners that have no queue (LMTP, REST and the task runner):
/// the built-in runner stands in for them by idling.
pub const NON_QUEUE_RUNNERS: &[&str] = &["lmtp", "rest", "task"];

/// The queues entries are moved to on a handler's failure, on a retry
/// request, and after too many crash recoveries (docs/queues.md).
pub const SHUNT_QUEUE: &str = "shunt";
pub const RETRY_QUEUE: &str = "retry";
pub const BAD_QUEUE: &str = "bad";

/// Built-in `next` queues: Mailman's own flow (in → pipeline → out, virgin →
/// pipeline, and retry back to out).
pub(super) fn builtin_next(name: &str) -> Option<&'static str> {
    match name {
        "in" | "virgin" => Some("pipeline"),
        "pipeline" | "retry" => Some("out"),
        _ => None,
    }
}

/// Built-in `sleep_time`s: Mailman's retry runner waits 15 minutes.
pub(super) fn builtin_sleep_time(name: &str) -> Duration {
    match name {
        "retry" => Duration::from_secs(15 * 60),
        _ => Duration::from_secs(1),
    }
}

/// The var dir when none is set: the same whatever the working directory
/// (`stop` run from elsewhere finds the master `start` started): for root
/// `/var/lib/mailman`, for anyone else `$XDG_STATE_HOME/mailman`, else
/// `~/.local/state/mailman` (else `./var`, with no home at all).
pub(super) fn default_var_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/mailman");
    }
    let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    if let Some(state) = std::env::var_os("XDG_STATE_HOME").and_then(absolute) {
        return state.join("mailman");
    }
    match std::env::var_os("HOME").and_then(absolute) {
        Some(home) => home.join(".local/state/mailman"),
        None => std::env::current_dir().unwrap_or_default().join("var"),
    }
}

/// The default bound on runner slices: well above any real site (Mailman
/// runs 12), well below what exhausts a machine's pids.
pub(super) const DEFAULT_MAX_RUNNERS: u32 = 4096;

/// Whether `name` is one of Mailman's runners (built in here too).
pub(super) fn is_builtin(name: &str) -> bool {
    BUILTIN_RUNNERS.iter().any(|(n, _)| *n == name)
}

pub(super) fn default_command() -> Vec<String> {
    [
        "{bin}",
        "runner",
        "-C",
        "{config}",
        "--runner",
        "{name}:{slice}:{range}",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

impl Config {
    /// Pass two: built-in defaults, `[runner.default]`, `[runner.NAME]`;
    /// with a Mailman Core configuration, its var dir and runners in place
    /// of ours (docs/mailman-core.md).
    pub(super) fn from_layer(layer: Layer, source: Option<&Path>, core: Option<Core>) -> Config {
        let raw_mailman = layer.mailman;
        let var_dir = match &core {
            Some(c) => c.var_dir(),
            None => raw_mailman
                .var_dir
                .map(Spanned::into_inner)
                .unwrap_or_else(default_var_dir),
        };
        let user = raw_mailman.user.unwrap_or_else(|| "mailman".into());
        let var_dir = crate::util::normalize(&var_dir);
        // A queue that may be shared (its own run_dir, queue_dir or slices
        // said so) is locked slice by slice unless told otherwise.
        let shared = raw_mailman.run_dir.is_some()
            || raw_mailman.queue_dir.is_some()
            || raw_mailman.slices.is_some();
        let run_dir = raw_mailman
            .run_dir
            .map_or_else(|| var_dir.clone(), |d| crate::util::normalize(d.get_ref()));
        let queue_dir = match (&core, raw_mailman.queue_dir) {
            (Some(c), _) => c.queue_dir(),
            (None, Some(d)) => crate::util::normalize(d.get_ref()),
            (None, None) => var_dir.join("queue"),
        };
        let mailman = MailmanSection {
            run_dir,
            queue_dir,
            slices: raw_mailman
                .slices
                .map(Spanned::into_inner)
                .unwrap_or_default(),
            slice_locks: raw_mailman.slice_locks.unwrap_or(shared),
            preload: raw_mailman.preload.unwrap_or(false),
            merge_pages: raw_mailman.merge_pages.unwrap_or(false),
            immortal_objects: raw_mailman.immortal_objects.unwrap_or(true),
            owner_retry: raw_mailman
                .owner_retry
                .map_or(Dur(Duration::from_secs(5)), Spanned::into_inner),
            var_dir,
            mailman_cfg: core.as_ref().map(|c| c.file.clone()),
            init: match (raw_mailman.init, &core) {
                (Some(init), _) => init,
                // Mailman's master initialises Mailman once before it forks
                // any runner; this does the same in a process of its own.
                (None, Some(c)) => vec![
                    c.runner_program().to_string_lossy().into_owned(),
                    "-C".into(),
                    c.file.to_string_lossy().into_owned(),
                    "--list".into(),
                ],
                (None, None) => Vec::new(),
            },
            group: raw_mailman.group.unwrap_or_else(|| user.clone()),
            user,
            stop_timeout: raw_mailman
                .stop_timeout
                .unwrap_or(Dur(Duration::from_secs(5))),
            on_give_up: raw_mailman.on_give_up.unwrap_or(OnGiveUp::KeepRunning),
            degraded_after: raw_mailman
                .degraded_after
                .unwrap_or(Dur(Duration::from_secs(30))),
            max_runners: raw_mailman.max_runners.unwrap_or(DEFAULT_MAX_RUNNERS),
        };
        let logging = Logging {
            stderr: layer.logging.stderr.unwrap_or(true),
            file: layer.logging.file.unwrap_or(true),
            format: layer.logging.format.unwrap_or(LogFormat::Text),
            level: layer.logging.level.unwrap_or(LogLevel::Info),
        };
        let http = Http {
            listen: layer
                .http
                .listen
                .map(Spanned::into_inner)
                .filter(|l| !l.is_empty()),
        };
        let mut tables = layer.runner;
        let default = tables.shift_remove("default").unwrap_or_default();
        // name → (the runner's own defaults, its table), in order
        let mut order: IndexMap<String, (Base, RawRunner)> = match &core {
            Some(c) => c
                .runners
                .iter()
                .map(|r| (r.name.clone(), (Base::core(c, r), RawRunner::default())))
                .collect(),
            None => BUILTIN_RUNNERS
                .iter()
                .map(|(n, start)| {
                    (
                        n.to_string(),
                        (Base::builtin(n, *start), RawRunner::default()),
                    )
                })
                .collect(),
        };
        for (name, table) in tables {
            match order.get_mut(&name) {
                Some(slot) => slot.1 = table,
                None => {
                    let base = Base::builtin(&name, true);
                    order.insert(name, (base, table));
                }
            }
        }
        let runners = order
            .into_iter()
            .map(|(name, (base, table))| {
                let r = table.over(&default);
                let restart_delay = r.restart_delay.unwrap_or(Dur(Duration::from_millis(100)));
                RunnerConfig {
                    command: r
                        .command
                        .map_or_else(|| base.command.clone(), Spanned::into_inner),
                    instances: r.instances.map_or(base.instances, Spanned::into_inner),
                    start: r.start.map_or(base.start, Spanned::into_inner),
                    max_restarts: r.max_restarts.unwrap_or(base.max_restarts),
                    // Mailman's own runners sleep as mailman.cfg says.
                    sleep_time: base
                        .sleep_time
                        .or(r.sleep_time)
                        .unwrap_or(Dur(builtin_sleep_time(&name))),
                    stall_after: r.stall_after.unwrap_or(Dur(Duration::ZERO)),
                    on_stall: r.on_stall.unwrap_or(OnStall::Report),
                    restart_delay,
                    restart_delay_max: r
                        .restart_delay_max
                        .unwrap_or(Dur(Duration::from_secs(30)))
                        .max(restart_delay),
                    stable_after: r.stable_after.unwrap_or(Dur(Duration::from_secs(60))),
                    handler: r.handler.map(Spanned::into_inner).unwrap_or_default(),
                    next: match r.next.map(Spanned::into_inner) {
                        Some(n) if n.is_empty() => None,
                        Some(n) => Some(n),
                        None if base.mailman_core => None,
                        None => builtin_next(&name).map(str::to_string),
                    },
                    env: r.env.unwrap_or_default(),
                    ready_tcp: match r.ready_tcp.map(Spanned::into_inner) {
                        Some(a) if a.is_empty() => None,
                        Some(a) => Some(a),
                        None => base.ready_tcp.clone(),
                    },
                    queue: base.queue,
                    mailman_core: base.mailman_core,
                    name,
                }
            })
            .collect();
        Config {
            source: source.map(Path::to_path_buf),
            sets: Vec::new(),
            mailman,
            logging,
            http,
            runners,
            jobs: Vec::new(),
            core,
            piped: None,
            stamp: None,
        }
    }
}

/// What a runner is when its table says nothing.
struct Base {
    command: Vec<String>,
    instances: u32,
    start: bool,
    max_restarts: u32,
    queue: bool,
    ready_tcp: Option<String>,
    mailman_core: bool,
    /// Mailman's `sleep_time` for one of its runners.
    sleep_time: Option<Dur>,
}

impl Base {
    /// One of ours: the built-in runner, Mailman's runner names and flow.
    fn builtin(name: &str, start: bool) -> Base {
        Base {
            command: default_command(),
            instances: 1,
            start,
            max_restarts: 10,
            queue: !NON_QUEUE_RUNNERS.contains(&name),
            ready_tcp: None,
            mailman_core: false,
            sleep_time: None,
        }
    }

    /// One of Mailman's, as its master would run it.
    fn core(core: &Core, r: &CoreRunner) -> Base {
        Base {
            command: vec![
                core.runner_program().to_string_lossy().into_owned(),
                "-C".into(),
                core.file.to_string_lossy().into_owned(),
                "--runner={name}:{slice}:{range}".into(),
            ],
            instances: r.instances,
            start: r.start,
            max_restarts: r.max_restarts,
            queue: r.queue,
            ready_tcp: r.ready_tcp.clone(),
            mailman_core: true,
            sleep_time: Some(Dur(r.sleep_time)),
        }
    }
}
