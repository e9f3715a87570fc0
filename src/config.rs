//! Configuration: where it is found, what it may say, and the one validated
//! [`Config`] the rest of the program is handed.
//!
//! The file is TOML (SPEC 5). Parsing is two passes: serde reads the raw tables
//! (every key optional, unknown keys rejected), then [`Config::from_raw`] merges
//! built-in defaults, `[runner.default]` and each `[runner.NAME]`. Every error
//! is one line `FILE:LINE:COL: message`.
//!
//! Not here: the environment overrides of the operations issue beyond
//! `MAILMAN_VAR_DIR`, and anything that touches the var dir.

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
    pub env: IndexMap<String, String>,
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

impl Config {
    /// Finds and loads the configuration as SPEC 1 orders it: `-C`, then
    /// `$MAILMAN_CONFIG_FILE`, then the search path, then built-in defaults.
    pub fn discover(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        if let Some(path) = explicit {
            return Config::load_file(path);
        }
        if let Some(env) = std::env::var_os("MAILMAN_CONFIG_FILE").filter(|v| !v.is_empty()) {
            return Config::load_file(Path::new(&env));
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
                return Config::load_file(&path);
            }
        }
        Config::from_text("", None)
    }

    /// Loads one file. `/dev/null` (what runners get when there is no file)
    /// reads as the built-in defaults.
    pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            file: path.display().to_string(),
            message: format!(
                "cannot read the configuration: {}",
                crate::util::io_text(&e)
            ),
        })?;
        if path == Path::new(NO_FILE) {
            return Config::from_text(&text, None);
        }
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        Config::from_text(&text, Some(&abs))
    }

    /// Parses `text` (from `source`, if any) and applies `$MAILMAN_VAR_DIR`.
    pub fn from_text(text: &str, source: Option<&Path>) -> Result<Config, ConfigError> {
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
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            at(span, e.message().trim_end().to_string())
        })?;

        let base_dir = match source {
            Some(p) => p.parent().map(Path::to_path_buf).unwrap_or_default(),
            None => std::env::current_dir().unwrap_or_default(),
        };
        let mut var_dir = match raw.mailman.var_dir {
            Some(v) if v.as_os_str().is_empty() => {
                return Err(at(0..0, "var_dir must not be empty".into()));
            }
            Some(v) => base_dir.join(v),
            None => base_dir.join("var"),
        };
        if let Some(env) = std::env::var_os("MAILMAN_VAR_DIR").filter(|v| !v.is_empty()) {
            var_dir = std::path::absolute(PathBuf::from(env)).map_err(|e| ConfigError::File {
                file: "MAILMAN_VAR_DIR".into(),
                message: e.to_string(),
            })?;
        }
        let user = raw.mailman.user.unwrap_or_else(|| "mailman".into());
        let mailman = MailmanSection {
            var_dir: crate::util::normalize(&var_dir),
            group: raw.mailman.group.unwrap_or_else(|| user.clone()),
            user,
            stop_timeout: raw
                .mailman
                .stop_timeout
                .unwrap_or(Dur(Duration::from_secs(5))),
            on_give_up: raw.mailman.on_give_up.unwrap_or(OnGiveUp::KeepRunning),
        };
        let logging = Logging {
            stderr: raw.logging.stderr.unwrap_or(true),
            file: raw.logging.file.unwrap_or(true),
            format: raw.logging.format.unwrap_or(LogFormat::Text),
            level: raw.logging.level.unwrap_or(LogLevel::Info),
        };

        // Pass two: merge built-in defaults, [runner.default], [runner.NAME].
        let mut tables = raw.runner;
        let default = tables.shift_remove("default").unwrap_or_default();
        let mut order: Vec<(String, bool, RawRunner)> = BUILTIN_RUNNERS
            .iter()
            .map(|(n, start)| (n.to_string(), *start, RawRunner::default()))
            .collect();
        for (name, table) in tables {
            if !valid_name(name.get_ref()) {
                return Err(at(
                    name.span(),
                    format!(
                        "invalid runner name \"{}\": use letters, digits, '_' and '-'",
                        name.get_ref()
                    ),
                ));
            }
            match order.iter_mut().find(|(n, _, _)| n == name.get_ref()) {
                Some(slot) => slot.2 = table,
                None => order.push((name.into_inner(), true, table)),
            }
        }
        let mut runners = Vec::with_capacity(order.len());
        for (name, builtin_start, table) in order {
            let r = table.over(&default);
            let command = match r.command {
                Some(c) if c.get_ref().is_empty() || c.get_ref()[0].is_empty() => {
                    return Err(at(
                        c.span(),
                        format!("Runner \"{name}\": command must not be empty"),
                    ));
                }
                Some(c) => c.into_inner(),
                None => default_command(),
            };
            let instances = match r.instances {
                Some(i) if !i.get_ref().is_power_of_two() => {
                    return Err(at(
                        i.span(),
                        format!("Runner \"{name}\", not a power of 2: {}", i.get_ref()),
                    ));
                }
                Some(i) => i.into_inner(),
                None => 1,
            };
            let restart_delay = r.restart_delay.unwrap_or(Dur(Duration::from_millis(100)));
            let restart_delay_max = r
                .restart_delay_max
                .unwrap_or(Dur(Duration::from_secs(30)))
                .max(restart_delay);
            runners.push(RunnerConfig {
                name,
                command,
                instances,
                start: r.start.unwrap_or(builtin_start),
                max_restarts: r.max_restarts.unwrap_or(10),
                sleep_time: r.sleep_time.unwrap_or(Dur(Duration::from_secs(1))),
                restart_delay,
                restart_delay_max,
                stable_after: r.stable_after.unwrap_or(Dur(Duration::from_secs(60))),
                env: r.env.unwrap_or_default(),
            });
        }
        Ok(Config {
            source: source.map(Path::to_path_buf),
            mailman,
            logging,
            runners,
        })
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
    fn effective_config_round_trips() {
        let c = Config::from_text("[runner.in]\ninstances = 4\n", Some(Path::new("/x/m.toml")))
            .unwrap();
        let again = Config::from_text(&c.to_toml(), Some(Path::new("/x/m.toml"))).unwrap();
        assert_eq!(again.runner("in").unwrap().instances, 4);
        assert_eq!(again.runners.len(), c.runners.len());
    }
}
