//! Configuration: where it is found, what it may say, and the one validated
//! [`Config`] the rest of the program is handed (docs/configuration.md).
//!
//! | room         | what it holds |
//! |--------------|---------------|
//! | `mod.rs`     | the validated types, where the file is found, the order of layers |
//! | `layer`      | one TOML text (file or override) read into raw tables |
//! | `overrides`  | the environment's and `--set`'s layers |
//! | `defaults`   | Mailman's runners and our defaults, and the merge over them |
//! | `validate`   | what each key may hold, in one place |
//! | `duration`   | `"100ms"`, `"5s"`, … |
//! | `selection`  | `NAME[:SLICE:RANGE]` |
//! | `locate`     | only where the master's files are, cheaply (for `status`) |
//! | `tests`      | `mod.rs`'s unit tests (errors, defaults, layers) |
//!
//! Reading is two passes: each layer (file, environment, `--set`) is parsed
//! and validated on its own (so that an error names its source), the layers
//! are laid over each other, then [`Config::from_layer`] fills in built-in
//! defaults, `[runner.default]` and each `[runner.NAME]`. Every error is one
//! line `FILE:LINE:COL: message`.
//!
//! Not here: anything that touches the var dir.

mod defaults;
mod duration;
pub mod jobs;
mod layer;
mod locate;
pub use locate::Located;
pub mod mailman_cfg;
mod overrides;
pub mod placeholders;
mod selection;
mod validate;

pub use defaults::{BAD_QUEUE, RETRY_QUEUE, SHUNT_QUEUE};
pub use duration::Dur;
pub use overrides::set_as_env;
pub use selection::{RunnerSpec, no_overlap};

use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::{Deserialize, Serialize, Serializer};

use crate::os::layout::Layout;
use layer::{Layer, line_col};
use overrides::{env_layers, set_layers};

/// Files tried, in order, when neither `-C` nor `$MAILMAN_CONFIG_FILE` names
/// one: ours, then Mailman Core's own (as Mailman searches them).
const SEARCH_PATH: &[&str] = &[
    "./mailman.toml",
    "~/.mailman.toml",
    "/etc/mailman.toml",
    "/etc/mailman3/mailman.toml",
    "./mailman.cfg",
    "~/.mailman.cfg",
    "/etc/mailman.cfg",
    "/etc/mailman3/mailman.cfg",
];

/// Whether `path` names a Mailman Core configuration (lazr.config INI)
/// rather than one of ours (TOML): its name ends in `.cfg`.
pub fn is_mailman_cfg(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "cfg")
}

/// What `{config}` expands to when no file was found: an empty TOML document,
/// which a runner reads as the built-in defaults.
pub const NO_FILE: &str = "/dev/null";

/// A configuration error, printed as `FILE:LINE:COL: message`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}:{line}:{col}: {}", one_line(message))]
    At {
        file: String,
        line: usize,
        col: usize,
        message: String,
    },
    /// An error in a `mailman.cfg`, whose reader gives lines, not columns.
    #[error("{file}:{line}: {}", one_line(message))]
    Line {
        file: String,
        line: usize,
        message: String,
    },
    #[error("{}: {}", one_line(file), one_line(message))]
    File { file: String, message: String },
}

/// An error is one line: newlines that came with the input (a `--set`
/// value, a key the parser echoes) are shown as `\n`.
fn one_line(text: &str) -> String {
    text.trim_end().replace('\r', "\\r").replace('\n', "\\n")
}

/// The validated configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// The file this came from (absolute), or `None` for the built-in defaults.
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// The `--set` overrides this was built with (passed on to the master
    /// `start` runs, and to runners as `MAILMAN__…` variables).
    #[serde(skip)]
    pub sets: Vec<String>,
    pub mailman: MailmanSection,
    pub logging: Logging,
    pub http: Http,
    /// Every runner, in config order (built-ins first, then new ones).
    #[serde(serialize_with = "serialize_runners")]
    pub runners: Vec<RunnerConfig>,
    /// Scheduled jobs (`[job.NAME]`), in config order.
    #[serde(rename = "job", serialize_with = "serialize_jobs")]
    pub jobs: Vec<jobs::JobConfig>,
    /// What Mailman computes from `mailman_cfg`, when there is one.
    #[serde(skip)]
    pub core: Option<mailman_cfg::Core>,
    /// The text read, when `source` is not a regular file but a pipe or
    /// the like, which a runner cannot read again (`-C <(envsubst < …)`):
    /// the master keeps a copy for `{config}`.
    #[serde(skip)]
    pub piped: Option<String>,
    /// The file as it was when read (`status` skips checking a file the
    /// running master read and validated: `Located::confirm`).
    #[serde(skip)]
    pub stamp: Option<crate::util::FileStamp>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MailmanSection {
    /// Absolute.
    pub var_dir: PathBuf,
    /// The Mailman Core configuration whose runners run here, resolved
    /// as Mailman resolves `-C` (absolute, no symlinks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mailman_cfg: Option<PathBuf>,
    /// Run once before the first runner; empty: nothing.
    pub init: Vec<String>,
    pub user: String,
    pub group: String,
    pub stop_timeout: Dur,
    pub on_give_up: OnGiveUp,
    /// A runner down (backing off) longer than this makes the master
    /// degraded (`status`, `status --check`).
    pub degraded_after: Dur,
    /// At most this many runner slices (all runners' `instances`).
    pub max_runners: u32,
    /// Host-local state (lock, pid file, socket, log); the var dir unless
    /// set (docs/scaling-out.md).
    pub run_dir: PathBuf,
    /// Where the queues are (with `mailman_cfg`: Mailman's `queue_dir`).
    pub queue_dir: PathBuf,
    /// The slices this master runs when `master -r` names none (empty:
    /// every started runner's).
    pub slices: Vec<String>,
    /// Each slice is owned through a lock in the queue directory.
    pub slice_locks: bool,
    /// How often a slice that another master owns is tried again.
    pub owner_retry: Dur,
    /// Mailman Core's runners are forked from one Python helper that has
    /// imported Mailman's code (docs/mailman-core.md, "Preloaded runners").
    pub preload: bool,
    /// The master, and so every process it starts, offers its memory to
    /// the kernel's same-page merging (docs/mailman-core.md, "Merging
    /// identical pages").
    pub merge_pages: bool,
    /// With `preload`, the helper makes what it loaded immortal before the
    /// first fork, where its Python can (docs/mailman-core.md, "Preloaded
    /// runners").
    pub immortal_objects: bool,
}

/// The master's HTTP endpoint (docs/observability.md).
#[derive(Debug, Clone, Serialize)]
pub struct Http {
    /// `HOST:PORT` to serve `/metrics`, `/livez` and `/readyz` on; `None`
    /// (written `""`): no endpoint.
    #[serde(serialize_with = "serialize_opt_str")]
    pub listen: Option<String>,
}

/// What a stalled slice leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnStall {
    /// Shown in `status`, `/readyz` and the metrics, and logged.
    Report,
    /// That, and the slice's runner is restarted as if it had crashed.
    Restart,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnGiveUp {
    KeepRunning,
    Exit,
}

#[derive(Debug, Clone, Serialize)]
pub struct Logging {
    pub stderr: bool,
    pub file: bool,
    pub format: LogFormat,
    pub level: LogLevel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunnerConfig {
    #[serde(skip)]
    pub name: String,
    pub command: Vec<String>,
    pub instances: u32,
    pub start: bool,
    pub max_restarts: u32,
    pub sleep_time: Dur,
    pub restart_delay: Dur,
    pub restart_delay_max: Dur,
    pub stable_after: Dur,
    /// The command each queue entry is handed to (entry on stdin); empty:
    /// none (docs/queues.md says what a runner does without one).
    pub handler: Vec<String>,
    /// The queue entries go to once handled; `None`: they are removed.
    #[serde(serialize_with = "serialize_next")]
    pub next: Option<String>,
    pub env: IndexMap<String, String>,
    /// Whether it works a queue directory (Mailman's lmtp, rest and task
    /// runners have none).
    #[serde(skip)]
    pub queue: bool,
    /// Where the runner accepts TCP connections once it is ready
    /// (`HOST:PORT`; `""` for none): until then it counts as starting.
    #[serde(serialize_with = "serialize_opt_str")]
    pub ready_tcp: Option<String>,
    /// A slice is stalled once the oldest entry of its slice of the queue
    /// has waited `sleep_time + stall_after`; zero: never.
    pub stall_after: Dur,
    pub on_stall: OnStall,
    /// One of Mailman Core's own runners (from `mailman_cfg`): it gets
    /// Mailman's environment, not ours.
    #[serde(skip)]
    pub mailman_core: bool,
}

impl RunnerConfig {
    /// Whether it works a queue directory.
    pub fn has_queue(&self) -> bool {
        self.queue
    }

    /// How long the oldest entry of a slice may wait before the slice is
    /// stalled (`None`: stall detection is off for this runner). A runner
    /// that finds its queue empty sleeps `sleep_time` before it looks
    /// again, so that is added to `stall_after`: Mailman's retry runner
    /// waits 15 minutes by design.
    pub fn stall_threshold(&self) -> Option<std::time::Duration> {
        (self.queue && !self.stall_after.0.is_zero())
            .then(|| self.stall_after.0 + self.sleep_time.0)
    }
}

/// `None` is written `""`, which reads back as "no next queue" (not as the
/// built-in default).
fn serialize_next<S: Serializer>(next: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(next.as_deref().unwrap_or(""))
}

fn serialize_opt_str<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v.as_deref().unwrap_or(""))
}

fn serialize_jobs<S: Serializer>(jobs: &[jobs::JobConfig], s: S) -> Result<S::Ok, S::Error> {
    let map: IndexMap<&str, &jobs::JobConfig> = jobs.iter().map(|j| (j.name.as_str(), j)).collect();
    map.serialize(s)
}

fn serialize_runners<S: Serializer>(runners: &[RunnerConfig], s: S) -> Result<S::Ok, S::Error> {
    let map: IndexMap<&str, &RunnerConfig> = runners.iter().map(|r| (r.name.as_str(), r)).collect();
    map.serialize(s)
}

impl Config {
    /// Finds and loads the configuration in this order: `-C`, then
    /// `$MAILMAN_CONFIG_FILE`, then the search path, then built-in defaults;
    /// then the environment's overrides, then `sets` (`--set`).
    pub fn discover(explicit: Option<&Path>, sets: &[String]) -> Result<Config, ConfigError> {
        match find_source(explicit) {
            Some(path) => Config::load_file(&path, sets),
            None => Config::build("", None, sets),
        }
    }

    /// Loads one file. `/dev/null` (what runners get when there is no file)
    /// reads as the built-in defaults; a `*.cfg` is Mailman Core's own
    /// configuration, run with our defaults.
    pub fn load_file(path: &Path, sets: &[String]) -> Result<Config, ConfigError> {
        if is_mailman_cfg(path) {
            let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
            return Config::build("", Some(&abs), sets);
        }
        let (text, stamp) =
            crate::util::read_config_stamped(path).map_err(|e| ConfigError::File {
                file: path.display().to_string(),
                message: format!(
                    "cannot read the configuration: {}",
                    crate::util::io_text(&e)
                ),
            })?;
        if path == Path::new(NO_FILE) {
            return Config::build(&text, None, sets);
        }
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let mut config = Config::build(&text, Some(&abs), sets)?;
        // Not a regular file (its stamp says so): a runner cannot read it again.
        if stamp.is_none() {
            config.piped = Some(text);
        }
        config.stamp = stamp;
        Ok(config)
    }

    /// `text` (from `source`, if any) with the environment's overrides.
    #[cfg(test)]
    pub fn from_text(text: &str, source: Option<&Path>) -> Result<Config, ConfigError> {
        Config::build(text, source, &[])
    }

    /// Built-in defaults < `text` < environment < `sets`. A `source` that
    /// is a `mailman.cfg` stands for an empty file naming it.
    fn build(text: &str, source: Option<&Path>, sets: &[String]) -> Result<Config, ConfigError> {
        let file = source.map_or_else(|| "<defaults>".to_string(), |p| p.display().to_string());
        let at = |span: std::ops::Range<usize>, message: String| {
            let (line, col) = line_col(text, span.start);
            ConfigError::At {
                file: file.clone(),
                line,
                col,
                message,
            }
        };
        let cwd = std::env::current_dir().unwrap_or_default();
        let base_dir = match source {
            Some(p) => p.parent().map(Path::to_path_buf).unwrap_or_default(),
            None => cwd.clone(),
        };
        let mut merged = Layer::parse(text, &base_dir, &at)?;
        let bare_cfg = source.filter(|p| is_mailman_cfg(p));
        if let Some(cfg) = bare_cfg {
            merged.mailman.mailman_cfg = Some(toml::Spanned::new(0..0, cfg.to_path_buf()));
        }
        // Runners a file or the built-ins define; an override may change
        // them, or define a new runner only with its command (so that a typo
        // such as `--set runner.inn.instances=4` is not a new runner).
        let mut defined: Vec<String> = merged.runner.keys().cloned().collect();
        for layer in env_layers()?.into_iter().chain(set_layers(sets)?) {
            for (name, table) in &layer.runner {
                let known = defined.contains(name)
                    || name == "default"
                    || defaults::is_builtin(name)
                    || merged.mailman.mailman_cfg.is_some()
                    || layer.mailman.mailman_cfg.is_some();
                if !known && table.command.is_none() {
                    return Err(ConfigError::File {
                        file: layer.label.clone().unwrap_or_default(),
                        message: format!(
                            "no runner \"{name}\" is defined (by the file or built in): an override can change a runner, or define a new one with its command"
                        ),
                    });
                }
                defined.push(name.clone());
            }
            if bare_cfg.is_some() && layer.mailman.mailman_cfg.is_some() {
                return Err(ConfigError::File {
                    file,
                    message: "mailman_cfg cannot be set: the configuration is a mailman.cfg".into(),
                });
            }
            merged = layer.over(merged);
        }
        let core = match &merged.mailman.mailman_cfg {
            Some(cfg) => Some(mailman_cfg::load(
                cfg.get_ref(),
                &cwd,
                std::env::var("MAILMAN_VAR_DIR").ok(),
                std::env::var_os("PATH").as_deref(),
            )?),
            None => None,
        };
        if let Some(core) = &core {
            for (name, table) in &merged.runner {
                if name != "default" && core.runner(name).is_none() && table.command.is_none() {
                    return Err(ConfigError::File {
                        file: file.clone(),
                        message: format!(
                            "Runner \"{name}\" is not one of mailman_cfg's runners: a runner of ours beside Mailman's needs a command"
                        ),
                    });
                }
            }
            for (runner, error) in std::mem::take(&mut merged.core_owned) {
                let owned = match &runner {
                    None => true,
                    Some(name) => name == "default" || core.runner(name).is_some(),
                };
                if owned {
                    return Err(error);
                }
            }
        }
        let job_tables = std::mem::take(&mut merged.job);
        let default_jobs = core.as_ref().map_or_else(Vec::new, |c| {
            jobs::mailman_core_jobs(&c.bin_dir().join("mailman"), &c.file)
        });
        let mut config = Config::from_layer(merged, source, core);
        let names: Vec<&str> = config.runners.iter().map(|r| r.name.as_str()).collect();
        config.jobs = jobs::finish(job_tables, default_jobs, &names)?;
        config.sets = sets.to_vec();
        config
            .check_queues()
            .and_then(|()| config.check_runner_count())
            .and_then(|()| config.check_sharing())
            .and_then(|()| config.check_preload())
            .map_err(|message| ConfigError::File {
                file: file.clone(),
                message,
            })?;
        Ok(config)
    }

    /// What can only be checked where runners are about to start: Mailman's
    /// runner program is there.
    pub fn check_runnable(&self) -> Result<(), ConfigError> {
        match &self.core {
            Some(core) => {
                core.check_runner_program()?;
                if self.mailman.preload && core.python().is_none() {
                    return Err(ConfigError::File {
                        file: self
                            .source
                            .as_ref()
                            .unwrap_or(&core.file)
                            .display()
                            .to_string(),
                        message: format!(
                            "preload: cannot tell which Python runs {} (no #! line naming a python)",
                            core.runner_program().display()
                        ),
                    });
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// The Python the preload helper runs with, when runners are preloaded.
    pub fn preload_python(&self) -> Option<PathBuf> {
        self.core
            .as_ref()
            .filter(|_| self.mailman.preload)
            .and_then(|c| c.python())
    }

    /// Where the master's files are: under the var dir, or, with a
    /// `mailman_cfg`, the lock, pid file, logs and queues where Mailman's
    /// own tools look for them.
    pub fn layout(&self) -> Layout {
        let m = &self.mailman;
        layout_of(&m.var_dir, &m.run_dir, &m.queue_dir, self.core.as_ref())
    }

    pub fn runner(&self, name: &str) -> Option<&RunnerConfig> {
        self.runners.iter().find(|r| r.name == name)
    }

    /// What `{config}` expands to and what runners get as `MAILMAN_CONFIG_FILE`.
    pub fn config_arg(&self) -> PathBuf {
        self.source
            .clone()
            .unwrap_or_else(|| PathBuf::from(NO_FILE))
    }

    /// The effective configuration as TOML (for `check-config`), after a
    /// comment saying where it came from.
    pub fn to_toml(&self) -> String {
        let mut head = match &self.source {
            Some(p) => format!("# read from {}\n", p.display()),
            None => "# no configuration file: the built-in defaults\n".to_string(),
        };
        if let Some(core) = &self.core {
            head.push_str(&format!(
                "# var_dir, paths and runners from {} (Mailman's layout \"{}\"):\n",
                core.file.display(),
                core.layout
            ));
            for (key, path) in &core.paths {
                head.push_str(&format!(
                    "#   {} = {}\n",
                    key.to_lowercase(),
                    path.display()
                ));
            }
        }
        #[derive(Serialize)]
        struct Out<'a> {
            mailman: &'a MailmanSection,
            logging: &'a Logging,
            #[serde(serialize_with = "serialize_runners")]
            runner: &'a [RunnerConfig],
        }
        let body = toml::to_string(&Out {
            mailman: &self.mailman,
            logging: &self.logging,
            runner: &self.runners,
        })
        .unwrap_or_else(|e| format!("# cannot print the configuration: {e}\n"));
        head + &body
    }
}

/// The configuration file to read: `explicit`, else `MAILMAN_CONFIG_FILE`,
/// else the first of [`SEARCH_PATH`] there is; `None`: the built-in defaults.
fn find_source(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = explicit {
        return Some(path.to_path_buf());
    }
    if let Some(env) = std::env::var_os("MAILMAN_CONFIG_FILE").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(env));
    }
    SEARCH_PATH.iter().find_map(|candidate| {
        let path = match candidate.strip_prefix("~/") {
            Some(rest) => PathBuf::from(std::env::var_os("HOME")?).join(rest),
            None => PathBuf::from(candidate),
        };
        path.is_file().then_some(path)
    })
}

/// [`Config::layout`] from its parts (also `locate`'s).
fn layout_of(
    var_dir: &Path,
    run_dir: &Path,
    queue_dir: &Path,
    core: Option<&mailman_cfg::Core>,
) -> Layout {
    let run = Layout::new(run_dir);
    let layout = Layout::new(var_dir).with_socket(run.socket());
    match core {
        // Mailman's lock_dir also holds its lists' locks, shared between
        // hosts: a run_dir set apart takes the master's own files out of it
        // (Mailman's `mailman status` then cannot see them).
        Some(c) if run_dir == var_dir => {
            layout.with(c.lock_file(), c.pid_file(), c.log_dir(), c.queue_dir())
        }
        _ => layout.with(
            run.lock_file(),
            run.pid_file(),
            run.log_file()
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
            queue_dir.to_path_buf(),
        ),
    }
}

#[cfg(test)]
mod tests;
