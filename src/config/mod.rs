//! Configuration: where it is found, what it may say, and the one validated
//! [`Config`] the rest of the program is handed.
//!
//! The file is TOML (SPEC 5). Parsing is two passes: serde reads the raw tables
//! (every key optional, unknown keys rejected), then [`Config::from_layer`] merges
//! built-in defaults, `[runner.default]` and each `[runner.NAME]`. Every error
//! is one line `FILE:LINE:COL: message`.
//!
//! Not here: anything that touches the var dir.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use toml::Spanned;

/// Mailman 3.3.10's runners in its own config order, with whether they start
/// by default.
pub const BUILTIN_RUNNERS: &[(&str, bool)] = &[
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
/// request, and after too many crash recoveries (SPEC 6).
pub const SHUNT_QUEUE: &str = "shunt";
pub const RETRY_QUEUE: &str = "retry";
pub const BAD_QUEUE: &str = "bad";

/// Built-in `next` queues: Mailman's own flow (in → pipeline → out, virgin →
/// pipeline, and retry back to out).
fn builtin_next(name: &str) -> Option<&'static str> {
    match name {
        "in" | "virgin" => Some("pipeline"),
        "pipeline" | "retry" => Some("out"),
        _ => None,
    }
}

/// Built-in `sleep_time`s: Mailman's retry runner waits 15 minutes.
fn builtin_sleep_time(name: &str) -> Duration {
    match name {
        "retry" => Duration::from_secs(15 * 60),
        _ => Duration::from_secs(1),
    }
}

/// Files tried, in order, when neither `-C` nor `$MAILMAN_CONFIG_FILE` names one.
const SEARCH_PATH: &[&str] = &[
    "./mailman.toml",
    "~/.mailman.toml",
    "/etc/mailman.toml",
    "/etc/mailman3/mailman.toml",
];

/// What `{config}` expands to when no file was found: an empty TOML document,
/// which a runner reads as the built-in defaults.
pub const NO_FILE: &str = "/dev/null";

/// A configuration error, printed as `FILE:LINE:COL: message`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}:{line}:{col}: {message}")]
    At {
        file: String,
        line: usize,
        col: usize,
        message: String,
    },
    #[error("{file}: {message}")]
    File { file: String, message: String },
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
    /// Every runner, in config order (built-ins first, then new ones).
    #[serde(serialize_with = "serialize_runners")]
    pub runners: Vec<RunnerConfig>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MailmanSection {
    /// Absolute.
    pub var_dir: PathBuf,
    pub user: String,
    pub group: String,
    pub stop_timeout: Dur,
    pub on_give_up: OnGiveUp,
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
    /// none (SPEC 6; see the README for what a runner does without one).
    pub handler: Vec<String>,
    /// The queue entries go to once handled; `None`: they are removed.
    #[serde(serialize_with = "serialize_next")]
    pub next: Option<String>,
    pub env: IndexMap<String, String>,
}

impl RunnerConfig {
    /// Whether the built-in runner works a queue for this runner.
    pub fn has_queue(&self) -> bool {
        !NON_QUEUE_RUNNERS.contains(&self.name.as_str())
    }
}

/// `None` is written `""`, which reads back as "no next queue" (not as the
/// built-in default).
fn serialize_next<S: Serializer>(next: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(next.as_deref().unwrap_or(""))
}

fn serialize_runners<S: Serializer>(runners: &[RunnerConfig], s: S) -> Result<S::Ok, S::Error> {
    let map: IndexMap<&str, &RunnerConfig> = runners.iter().map(|r| (r.name.as_str(), r)).collect();
    map.serialize(s)
}

/// A duration written as `"100ms"`, `"5s"`, `"1.5m"`, `"2h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    pub fn parse(text: &str) -> Result<Dur, String> {
        let bad = || {
            format!(
                "invalid duration \"{text}\": expected a number and a unit (ms, s, m, h), e.g. \"100ms\" or \"5s\""
            )
        };
        let t = text.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (num, unit) = t.split_at(split);
        let value: f64 = num.parse().map_err(|_| bad())?;
        let scale = match unit.trim() {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        let secs = value * scale;
        if !secs.is_finite() || secs > 365.0 * 86400.0 {
            return Err(format!("invalid duration \"{text}\": too long"));
        }
        Ok(Dur(Duration::from_secs_f64(secs)))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Dur::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

// ---- raw file tables: every key optional, unknown keys rejected ----

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    mailman: RawMailman,
    #[serde(default)]
    logging: RawLogging,
    #[serde(default)]
    runner: IndexMap<Spanned<String>, RawRunner>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMailman {
    var_dir: Option<PathBuf>,
    user: Option<String>,
    group: Option<String>,
    stop_timeout: Option<Dur>,
    on_give_up: Option<OnGiveUp>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLogging {
    stderr: Option<bool>,
    file: Option<bool>,
    format: Option<LogFormat>,
    level: Option<LogLevel>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRunner {
    command: Option<Spanned<Vec<String>>>,
    instances: Option<Spanned<u32>>,
    start: Option<bool>,
    max_restarts: Option<u32>,
    sleep_time: Option<Dur>,
    restart_delay: Option<Dur>,
    restart_delay_max: Option<Dur>,
    stable_after: Option<Dur>,
    handler: Option<Spanned<Vec<String>>>,
    next: Option<Spanned<String>>,
    env: Option<IndexMap<String, String>>,
}

impl RawRunner {
    /// `self` with every key it lacks taken from `base`.
    fn over(self, base: &RawRunner) -> RawRunner {
        RawRunner {
            command: self.command.or_else(|| base.command.clone()),
            instances: self.instances.or_else(|| base.instances.clone()),
            start: self.start.or(base.start),
            max_restarts: self.max_restarts.or(base.max_restarts),
            sleep_time: self.sleep_time.or(base.sleep_time),
            restart_delay: self.restart_delay.or(base.restart_delay),
            restart_delay_max: self.restart_delay_max.or(base.restart_delay_max),
            stable_after: self.stable_after.or(base.stable_after),
            handler: self.handler.or_else(|| base.handler.clone()),
            next: self.next.or_else(|| base.next.clone()),
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

pub fn default_command() -> Vec<String> {
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

/// One source of settings (the file, the environment, a `--set`), parsed and
/// checked on its own so that an error names its source; merged in order.
#[derive(Debug, Default)]
struct Layer {
    mailman: RawMailman,
    logging: RawLogging,
    runner: IndexMap<String, RawRunner>,
}

impl Layer {
    /// Parses one TOML text. `at` turns a byte span of `text` into the
    /// error to report. Relative `var_dir`s are resolved against `base`.
    fn parse(
        text: &str,
        base: &Path,
        at: &dyn Fn(std::ops::Range<usize>, String) -> ConfigError,
    ) -> Result<Layer, ConfigError> {
        let raw: RawFile = toml::from_str(text)
            .map_err(|e| at(e.span().unwrap_or(0..0), e.message().trim_end().to_string()))?;
        let mut mailman = raw.mailman;
        if let Some(v) = mailman.var_dir.take() {
            if v.as_os_str().is_empty() {
                return Err(at(0..0, "var_dir must not be empty".into()));
            }
            mailman.var_dir = Some(base.join(v));
        }
        let mut runner = IndexMap::new();
        for (name, table) in raw.runner {
            if !valid_name(name.get_ref()) {
                return Err(at(
                    name.span(),
                    format!(
                        "invalid runner name \"{}\": use letters, digits, '_' and '-'",
                        name.get_ref()
                    ),
                ));
            }
            let name = name.into_inner();
            if let Some(c) = &table.command
                && (c.get_ref().is_empty() || c.get_ref()[0].is_empty())
            {
                return Err(at(
                    c.span(),
                    format!("Runner \"{name}\": command must not be empty"),
                ));
            }
            if let Some(h) = &table.handler
                && h.get_ref().first().is_some_and(String::is_empty)
            {
                return Err(at(
                    h.span(),
                    format!("Runner \"{name}\": handler must not start with an empty program"),
                ));
            }
            if let Some(n) = &table.next
                && !n.get_ref().is_empty()
                && !valid_name(n.get_ref())
            {
                return Err(at(
                    n.span(),
                    format!("Runner \"{name}\": invalid next queue \"{}\"", n.get_ref()),
                ));
            }
            if let Some(i) = &table.instances
                && !i.get_ref().is_power_of_two()
            {
                return Err(at(
                    i.span(),
                    format!("Runner \"{name}\", not a power of 2: {}", i.get_ref()),
                ));
            }
            runner.insert(name, table);
        }
        Ok(Layer {
            mailman,
            logging: raw.logging,
            runner,
        })
    }

    /// One override: `path` (`mailman.stop_timeout`, `runner.in.env.FOO`) set
    /// to `value` (a TOML value, else a string), reported as `label`.
    fn one(label: &str, path: &[String], value: &str) -> Result<Layer, ConfigError> {
        let err = |message: String| ConfigError::File {
            file: label.to_string(),
            message,
        };
        let shape_ok = match path {
            [s, _] => s == "mailman" || s == "logging",
            [s, _, _] => s == "runner",
            [s, _, e, _] => s == "runner" && e == "env",
            _ => false,
        };
        if !shape_ok || path.iter().any(|p| p.is_empty()) {
            return Err(err(
                "not a configuration key: expected mailman.KEY, logging.KEY, runner.NAME.KEY or runner.NAME.env.VAR"
                    .into(),
            ));
        }
        let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.to_string()));
        let mut leaf = parsed;
        for key in path.iter().rev() {
            let mut t = toml::Table::new();
            t.insert(key.clone(), leaf);
            leaf = toml::Value::Table(t);
        }
        let text = toml::to_string(&leaf).map_err(|e| err(e.to_string()))?;
        let cwd = std::env::current_dir().unwrap_or_default();
        Layer::parse(&text, &cwd, &|_, message| err(message))
    }

    /// `self` over `base`: what `self` sets wins.
    fn over(self, mut base: Layer) -> Layer {
        let (m, b) = (self.mailman, base.mailman);
        base.mailman = RawMailman {
            var_dir: m.var_dir.or(b.var_dir),
            user: m.user.or(b.user),
            group: m.group.or(b.group),
            stop_timeout: m.stop_timeout.or(b.stop_timeout),
            on_give_up: m.on_give_up.or(b.on_give_up),
        };
        let (l, b) = (self.logging, base.logging);
        base.logging = RawLogging {
            stderr: l.stderr.or(b.stderr),
            file: l.file.or(b.file),
            format: l.format.or(b.format),
            level: l.level.or(b.level),
        };
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

/// The environment's overrides: `MAILMAN_VAR_DIR`, then every
/// `MAILMAN__SECTION__KEY` (e.g. `MAILMAN__RUNNER__ARCHIVE__START=false`), in
/// name order.
fn env_layers() -> Result<Vec<Layer>, ConfigError> {
    let mut layers = Vec::new();
    if let Some(dir) = std::env::var_os("MAILMAN_VAR_DIR").filter(|v| !v.is_empty()) {
        let abs = std::path::absolute(PathBuf::from(&dir)).map_err(|e| ConfigError::File {
            file: "MAILMAN_VAR_DIR".into(),
            message: e.to_string(),
        })?;
        layers.push(Layer {
            mailman: RawMailman {
                var_dir: Some(abs),
                ..Default::default()
            },
            ..Default::default()
        });
    }
    let mut vars: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| k.starts_with("MAILMAN__"))
        .collect();
    vars.sort();
    for (key, value) in vars {
        let parts: Vec<String> = key["MAILMAN__".len()..]
            .split("__")
            .map(str::to_string)
            .collect();
        // Keys are lower case; a runner's env variable keeps its case.
        let path: Vec<String> = parts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                if parts.len() == 4 && i == 3 {
                    p.clone()
                } else {
                    p.to_lowercase()
                }
            })
            .collect();
        layers.push(Layer::one(&format!("{key}={value}"), &path, &value)?);
    }
    Ok(layers)
}

/// `--set SECTION.KEY=VALUE` overrides, in order.
fn set_layers(sets: &[String]) -> Result<Vec<Layer>, ConfigError> {
    sets.iter()
        .map(|set| {
            let label = format!("--set {set}");
            let (key, value) = set.split_once('=').ok_or_else(|| ConfigError::File {
                file: label.clone(),
                message: "expected SECTION.KEY=VALUE".into(),
            })?;
            let path: Vec<String> = key.split('.').map(str::to_string).collect();
            Layer::one(&label, &path, value)
        })
        .collect()
}

/// The environment variable a runner gets for a `--set` (so that it sees
/// what its master sees), e.g. `runner.in.env.FOO=1` → `MAILMAN__RUNNER__IN__ENV__FOO`.
pub fn set_as_env(set: &str) -> Option<(String, String)> {
    let (key, value) = set.split_once('=')?;
    let parts: Vec<&str> = key.split('.').collect();
    let name = parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if parts.len() == 4 && i == 3 {
                p.to_string()
            } else {
                p.to_uppercase()
            }
        })
        .collect::<Vec<_>>()
        .join("__");
    Some((format!("MAILMAN__{name}"), value.to_string()))
}

impl Config {
    /// Finds and loads the configuration as SPEC 1 orders it: `-C`, then
    /// `$MAILMAN_CONFIG_FILE`, then the search path, then built-in defaults;
    /// then the environment's overrides, then `sets` (`--set`).
    pub fn discover(explicit: Option<&Path>, sets: &[String]) -> Result<Config, ConfigError> {
        if let Some(path) = explicit {
            return Config::load_file(path, sets);
        }
        if let Some(env) = std::env::var_os("MAILMAN_CONFIG_FILE").filter(|v| !v.is_empty()) {
            return Config::load_file(Path::new(&env), sets);
        }
        for candidate in SEARCH_PATH {
            let path = match candidate.strip_prefix("~/") {
                Some(rest) => match std::env::var_os("HOME") {
                    Some(home) => PathBuf::from(home).join(rest),
                    None => continue,
                },
                None => PathBuf::from(candidate),
            };
            if path.is_file() {
                return Config::load_file(&path, sets);
            }
        }
        Config::build("", None, sets)
    }

    /// Loads one file. `/dev/null` (what runners get when there is no file)
    /// reads as the built-in defaults.
    pub fn load_file(path: &Path, sets: &[String]) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
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
        Config::build(&text, Some(&abs), sets)
    }

    /// `text` (from `source`, if any) with the environment's overrides.
    #[cfg(test)]
    pub fn from_text(text: &str, source: Option<&Path>) -> Result<Config, ConfigError> {
        Config::build(text, source, &[])
    }

    /// Built-in defaults < `text` < environment < `sets`.
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
        let base_dir = match source {
            Some(p) => p.parent().map(Path::to_path_buf).unwrap_or_default(),
            None => std::env::current_dir().unwrap_or_default(),
        };
        let mut merged = Layer::parse(text, &base_dir, &at)?;
        for layer in env_layers()?.into_iter().chain(set_layers(sets)?) {
            merged = layer.over(merged);
        }
        let mut config = Config::from_layer(merged, source, &base_dir);
        config.sets = sets.to_vec();
        config.check_queues().map_err(|message| ConfigError::File {
            file: file.clone(),
            message,
        })?;
        Ok(config)
    }

    /// Pass two: built-in defaults, `[runner.default]`, `[runner.NAME]`.
    fn from_layer(layer: Layer, source: Option<&Path>, base_dir: &Path) -> Config {
        let raw_mailman = layer.mailman;
        let var_dir = raw_mailman.var_dir.unwrap_or_else(|| base_dir.join("var"));
        let user = raw_mailman.user.unwrap_or_else(|| "mailman".into());
        let mailman = MailmanSection {
            var_dir: crate::util::normalize(&var_dir),
            group: raw_mailman.group.unwrap_or_else(|| user.clone()),
            user,
            stop_timeout: raw_mailman
                .stop_timeout
                .unwrap_or(Dur(Duration::from_secs(5))),
            on_give_up: raw_mailman.on_give_up.unwrap_or(OnGiveUp::KeepRunning),
        };
        let logging = Logging {
            stderr: layer.logging.stderr.unwrap_or(true),
            file: layer.logging.file.unwrap_or(true),
            format: layer.logging.format.unwrap_or(LogFormat::Text),
            level: layer.logging.level.unwrap_or(LogLevel::Info),
        };
        let mut tables = layer.runner;
        let default = tables.shift_remove("default").unwrap_or_default();
        let mut order: Vec<(String, bool, RawRunner)> = BUILTIN_RUNNERS
            .iter()
            .map(|(n, start)| (n.to_string(), *start, RawRunner::default()))
            .collect();
        for (name, table) in tables {
            match order.iter_mut().find(|(n, _, _)| *n == name) {
                Some(slot) => slot.2 = table,
                None => order.push((name, true, table)),
            }
        }
        let runners = order
            .into_iter()
            .map(|(name, builtin_start, table)| {
                let r = table.over(&default);
                let restart_delay = r.restart_delay.unwrap_or(Dur(Duration::from_millis(100)));
                RunnerConfig {
                    command: r.command.map_or_else(default_command, Spanned::into_inner),
                    instances: r.instances.map_or(1, Spanned::into_inner),
                    start: r.start.unwrap_or(builtin_start),
                    max_restarts: r.max_restarts.unwrap_or(10),
                    sleep_time: r.sleep_time.unwrap_or(Dur(builtin_sleep_time(&name))),
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
                        None => builtin_next(&name).map(str::to_string),
                    },
                    env: r.env.unwrap_or_default(),
                    name,
                }
            })
            .collect();
        Config {
            source: source.map(Path::to_path_buf),
            sets: Vec::new(),
            mailman,
            logging,
            runners,
        }
    }

    /// Every `next` names another runner that has a queue.
    fn check_queues(&self) -> Result<(), String> {
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
        Ok(())
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

    /// The effective configuration as TOML (for `check-config`).
    pub fn to_toml(&self) -> String {
        #[derive(Serialize)]
        struct Out<'a> {
            mailman: &'a MailmanSection,
            logging: &'a Logging,
            #[serde(serialize_with = "serialize_runners")]
            runner: &'a [RunnerConfig],
        }
        toml::to_string(&Out {
            mailman: &self.mailman,
            logging: &self.logging,
            runner: &self.runners,
        })
        .unwrap_or_else(|e| format!("# cannot print the configuration: {e}\n"))
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::from_text(text, Some(Path::new("/x/m.toml")))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn defaults_have_mailmans_runners_in_order() {
        let c = Config::from_text("", Some(Path::new("/x/m.toml"))).unwrap();
        let names: Vec<_> = c.runners.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names[0], "archive");
        assert_eq!(names.len(), 15);
        let started = c.runners.iter().filter(|r| r.start).count();
        assert_eq!(started, 12);
        assert_eq!(c.mailman.var_dir, PathBuf::from("/x/var"));
        assert_eq!(c.mailman.stop_timeout, Dur(Duration::from_secs(5)));
    }

    #[test]
    fn runner_default_is_inherited_and_overridden() {
        let c = Config::from_text(
            "[runner.default]\nmax_restarts = 3\nenv = { A = \"1\" }\n[runner.in]\ninstances = 2\nenv = { B = \"2\" }\n[runner.extra]\nsleep_time = \"250ms\"\n",
            Some(Path::new("/x/m.toml")),
        )
        .unwrap();
        let r = c.runner("in").unwrap();
        assert_eq!((r.instances, r.max_restarts), (2, 3));
        assert_eq!(r.env.get("A").map(String::as_str), Some("1"));
        assert_eq!(r.env.get("B").map(String::as_str), Some("2"));
        let e = c.runner("extra").unwrap();
        assert_eq!(e.sleep_time.0, Duration::from_millis(250));
        assert!(e.start);
        assert_eq!(c.runners.last().unwrap().name, "extra");
    }

    #[test]
    fn errors_carry_file_line_col() {
        assert_eq!(
            err("[runner.in]\ninstances = 3\n"),
            "/x/m.toml:2:13: Runner \"in\", not a power of 2: 3"
        );
        assert!(err("[mailman]\nbogus = 1\n").starts_with("/x/m.toml:2:1: unknown field `bogus`"));
        assert!(
            err("[mailman]\nstop_timeout = \"5x\"\n")
                .starts_with("/x/m.toml:2:16: invalid duration")
        );
        assert!(
            err("[runner.in]\ncommand = []\n")
                .starts_with("/x/m.toml:2:11: Runner \"in\": command must not be empty")
        );
        assert!(err("[runner.in]\nstart = \"yes\"\n").starts_with("/x/m.toml:2:9: "));
        assert!(err("[mailman\n").starts_with("/x/m.toml:1:"));
        assert!(err("[runner.\"a:b\"]\n").contains("invalid runner name"));
    }

    #[test]
    fn sets_become_runner_environment() {
        assert_eq!(
            set_as_env("runner.in.env.Foo=a=b"),
            Some(("MAILMAN__RUNNER__IN__ENV__Foo".into(), "a=b".into()))
        );
        assert_eq!(
            set_as_env("mailman.stop_timeout=2s"),
            Some(("MAILMAN__MAILMAN__STOP_TIMEOUT".into(), "2s".into()))
        );
        let c = Config::build(
            "[runner.in]\ninstances = 2\n",
            Some(Path::new("/x/m.toml")),
            &[
                "runner.in.instances=4".into(),
                "runner.new.start=false".into(),
                "mailman.var_dir=rel".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.runner("in").unwrap().instances, 4);
        assert!(!c.runner("new").unwrap().start);
        assert_eq!(
            c.mailman.var_dir,
            std::env::current_dir().unwrap().join("rel")
        );
        let e = Config::build("", None, &["runner.in.instances=3".into()]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--set runner.in.instances=3: Runner \"in\", not a power of 2: 3"
        );
        let e = Config::build("", None, &["runner.in=3".into()]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("--set runner.in=3: not a configuration key"),
            "{e}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(Dur::parse("100ms").unwrap().0, Duration::from_millis(100));
        assert_eq!(Dur::parse("1.5s").unwrap().0, Duration::from_millis(1500));
        assert_eq!(Dur::parse("2m").unwrap().0, Duration::from_secs(120));
        assert!(Dur::parse("5").is_err());
        assert!(Dur::parse("s").is_err());
        assert_eq!(Dur::parse("1500ms").unwrap().to_string(), "1500ms");
        assert_eq!(Dur::parse("2m").unwrap().to_string(), "120s");
    }

    #[test]
    fn queue_keys() {
        let c = Config::from_text("", Some(Path::new("/x/m.toml"))).unwrap();
        let next = |n: &str| c.runner(n).unwrap().next.clone();
        assert_eq!(next("in").as_deref(), Some("pipeline"));
        assert_eq!(next("virgin").as_deref(), Some("pipeline"));
        assert_eq!(next("pipeline").as_deref(), Some("out"));
        assert_eq!(next("retry").as_deref(), Some("out"));
        assert_eq!(next("out"), None);
        assert_eq!(
            c.runner("retry").unwrap().sleep_time.0,
            Duration::from_secs(900)
        );
        assert!(c.runner("out").unwrap().handler.is_empty());
        assert!(!c.runner("rest").unwrap().has_queue());

        let c = Config::from_text(
            "[runner.in]\nnext = \"\"\nhandler = [\"/bin/cat\", \"{entry}\"]\n",
            Some(Path::new("/x/m.toml")),
        )
        .unwrap();
        let r = c.runner("in").unwrap();
        assert_eq!(r.next, None, "\"\" turns the built-in next off");
        assert_eq!(r.handler, ["/bin/cat", "{entry}"]);
        let again = Config::from_text(&c.to_toml(), Some(Path::new("/x/m.toml"))).unwrap();
        assert_eq!(again.runner("in").unwrap().next, None);
        assert_eq!(
            again.runner("pipeline").unwrap().next.as_deref(),
            Some("out")
        );

        assert_eq!(
            err("[runner.in]\nnext = \"nope\"\n"),
            "/x/m.toml: Runner \"in\": next queue \"nope\" is not a queue runner"
        );
        assert_eq!(
            err("[runner.in]\nnext = \"rest\"\n"),
            "/x/m.toml: Runner \"in\": next queue \"rest\" is not a queue runner"
        );
        assert_eq!(
            err("[runner.in]\nnext = \"in\"\n"),
            "/x/m.toml: Runner \"in\": next must be another queue"
        );
        assert_eq!(
            err("[runner.in]\nnext = \"a/b\"\n"),
            "/x/m.toml:2:8: Runner \"in\": invalid next queue \"a/b\""
        );
        assert_eq!(
            err("[runner.in]\nhandler = [\"\"]\n"),
            "/x/m.toml:2:11: Runner \"in\": handler must not start with an empty program"
        );
    }

    #[test]
    fn effective_config_round_trips() {
        let c = Config::from_text("[runner.in]\ninstances = 4\n", Some(Path::new("/x/m.toml")))
            .unwrap();
        let again = Config::from_text(&c.to_toml(), Some(Path::new("/x/m.toml"))).unwrap();
        assert_eq!(again.runner("in").unwrap().instances, 4);
        assert_eq!(again.runners.len(), c.runners.len());
    }
}
