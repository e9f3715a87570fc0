//! GNU Mailman 3.3.10's own configuration (`mailman.cfg`, lazr.config INI),
//! read as Mailman reads it: its built-in schema and `mailman.cfg` first,
//! then the site's file (and the files it `[meta] extends`), then the
//! layout's paths expanded. What comes out is what Mailman's own master
//! would run: the var dir, the other paths, and every runner with its
//! `instances`, `start` and `max_restarts` (docs/mailman-core.md).
//!
//! | room     | what it holds |
//! |----------|---------------|
//! | `ini`    | one INI text as Python's `RawConfigParser` reads it |
//! | `paths`  | `$`-expansion of the layout's paths, `$argv` |
//! | `builtin.cfg` | Mailman's schema and built-in `mailman.cfg`, reduced |
//!
//! Like Mailman, sections and keys it does not use are ignored, not
//! errors. Unlike Mailman, a value that would make its master crash
//! (`start: maybe`, `instances: 3`) is a configuration error here, with its
//! file and line.
//!
//! Not here: how these runners are supervised (`config::defaults` turns
//! them into runners; `master` runs them).

mod ini;
mod paths;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;

use super::ConfigError;

const BUILTIN: &str = include_str!("builtin.cfg");
const BUILTIN_SPLIT: &str = "# ---- mailman.cfg ----";

/// One runner as Mailman's master sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreRunner {
    pub name: String,
    pub class: String,
    pub start: bool,
    /// 0 (no slice, as Mailman) or a power of 2.
    pub instances: u32,
    pub max_restarts: u32,
    /// Whether it works a queue directory (its `path` is not empty).
    pub queue: bool,
    /// Where it accepts connections once it is ready (`HOST:PORT`): the
    /// LMTP runner at `[mta] lmtp_host:lmtp_port`, the REST runner at
    /// `[webservice] hostname:port`.
    pub ready_tcp: Option<String>,
    /// How long it sleeps when its queue is empty (`sleep_time`).
    pub sleep_time: std::time::Duration,
}

/// What Mailman 3.3.10 computes from a `mailman.cfg`.
#[derive(Debug, Clone)]
pub struct Core {
    /// The file, as Mailman resolves `-C` (absolute, symlinks resolved).
    pub file: PathBuf,
    pub layout: String,
    /// Every path by Mailman's attribute name: `VAR_DIR`, `QUEUE_DIR`,
    /// `BIN_DIR`, `LOG_DIR`, `LOCK_FILE`, `PID_FILE`, ….
    pub paths: IndexMap<String, PathBuf>,
    /// In Mailman's order (its built-in runners, then the site's new ones).
    pub runners: Vec<CoreRunner>,
    /// Where `bin_dir` was set (file and line), if the site set it.
    bin_dir_at: Option<(PathBuf, usize)>,
}

impl Core {
    fn path(&self, key: &str) -> PathBuf {
        self.paths.get(key).cloned().unwrap_or_default()
    }
    pub fn var_dir(&self) -> PathBuf {
        self.path("VAR_DIR")
    }
    pub fn bin_dir(&self) -> PathBuf {
        self.path("BIN_DIR")
    }
    pub fn queue_dir(&self) -> PathBuf {
        self.path("QUEUE_DIR")
    }
    pub fn log_dir(&self) -> PathBuf {
        self.path("LOG_DIR")
    }
    pub fn lock_file(&self) -> PathBuf {
        self.path("LOCK_FILE")
    }
    pub fn lock_dir(&self) -> PathBuf {
        self.path("LOCK_DIR")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.path("PID_FILE")
    }
    /// Mailman's runner program, `<bin_dir>/runner`.
    pub fn runner_program(&self) -> PathBuf {
        self.bin_dir().join("runner")
    }
    /// The Python that runs Mailman's `runner` program (its `#!` line).
    pub fn python(&self) -> Option<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_else(|| "/bin:/usr/bin".into());
        paths::script_interpreter(&self.runner_program(), &path)
    }
    pub fn runner(&self, name: &str) -> Option<&CoreRunner> {
        self.runners.iter().find(|r| r.name == name)
    }

    /// Whether Mailman's runner program is there to be run (checked when
    /// runners are to start, not by every command).
    pub fn check_runner_program(&self) -> Result<(), ConfigError> {
        use std::os::unix::fs::PermissionsExt;
        let program = self.runner_program();
        let ok = std::fs::metadata(&program)
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
        if ok {
            return Ok(());
        }
        let message = format!(
            "bin_dir {} has no runner program ({} is missing or not executable); \
             set bin_dir in [paths.{}] to the directory of Mailman's `runner`",
            self.bin_dir().display(),
            program.display(),
            self.layout
        );
        Err(match &self.bin_dir_at {
            Some((file, line)) => ConfigError::Line {
                file: file.display().to_string(),
                line: *line,
                message,
            },
            None => ConfigError::File {
                file: self.file.display().to_string(),
                message,
            },
        })
    }
}

/// A value in the merged configuration, and where it was set.
#[derive(Debug, Clone)]
struct Val {
    text: String,
    /// The file and line that set it; `None` for Mailman's built-ins.
    at: Option<(PathBuf, usize)>,
}

type Sections = IndexMap<String, IndexMap<String, Val>>;

/// Reads `file` (and what it extends) over Mailman's built-ins. `cwd` and
/// `env_var_dir` are what `$cwd` and `$MAILMAN_VAR_DIR` are for Mailman;
/// `search_path` is where `$argv`'s Python is looked for.
pub fn load(
    file: &Path,
    cwd: &Path,
    env_var_dir: Option<String>,
    search_path: Option<&std::ffi::OsStr>,
) -> Result<Core, ConfigError> {
    let shown = file.display().to_string();
    let real = std::fs::canonicalize(file).map_err(|e| ConfigError::File {
        file: shown.clone(),
        message: format!(
            "cannot read the configuration: {}",
            crate::util::io_text(&e)
        ),
    })?;
    let (schema_text, builtin_text) = BUILTIN.split_once(BUILTIN_SPLIT).unwrap_or((BUILTIN, ""));
    let builtin = |text: &str| {
        ini::parse(text).map_err(|(line, message)| ConfigError::Line {
            file: "<Mailman's built-in configuration>".into(),
            line,
            message,
        })
    };
    let schema = builtin(schema_text)?;
    let mut masters: IndexMap<String, IndexMap<String, Val>> = IndexMap::new();
    let mut data: Sections = IndexMap::new();
    for (name, keys) in &schema.sections {
        let keys: IndexMap<String, Val> = keys
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    Val {
                        text: v.text.clone(),
                        at: None,
                    },
                )
            })
            .collect();
        if name.ends_with(".master") {
            masters.insert(name.clone(), keys.clone());
        }
        data.insert(name.clone(), keys);
    }
    overlay(&mut data, &masters, &builtin(builtin_text)?, None)?;
    for (path, parsed) in chain(&real)? {
        overlay(&mut data, &masters, &parsed, Some(&path))?;
    }
    resolve(real, &data, cwd, env_var_dir, search_path)
}

/// `file` and the files it `[meta] extends`, the deepest first (the order
/// lazr.config lays them down).
fn chain(file: &Path) -> Result<Vec<(PathBuf, ini::Ini)>, ConfigError> {
    let mut out: Vec<(PathBuf, ini::Ini)> = Vec::new();
    let mut seen = HashSet::new();
    let mut next = Some(file.to_path_buf());
    while let Some(path) = next.take() {
        let shown = path.display().to_string();
        if !seen.insert(path.clone()) {
            return Err(ConfigError::File {
                file: shown,
                message: "[meta] extends loops back to this file".into(),
            });
        }
        let text = crate::util::read_config(&path).map_err(|e| ConfigError::File {
            file: shown.clone(),
            message: format!(
                "cannot read the configuration: {}",
                crate::util::io_text(&e)
            ),
        })?;
        let parsed = ini::parse(&text).map_err(|(line, message)| ConfigError::Line {
            file: shown.clone(),
            line,
            message,
        })?;
        if let Some(extends) = parsed.sections.get("meta").and_then(|m| m.get("extends")) {
            let base = path.parent().unwrap_or(Path::new("/"));
            next = Some(paths::abspath(base, &extends.text));
        }
        out.push((path, parsed));
    }
    out.reverse();
    Ok(out)
}

/// Lays one parsed file over `data` as lazr.config's `push` does, for the
/// sections the master uses: `[mailman]`, `[paths.*]`, `[runner.*]`.
fn overlay(
    data: &mut Sections,
    masters: &IndexMap<String, IndexMap<String, Val>>,
    file: &ini::Ini,
    path: Option<&Path>,
) -> Result<(), ConfigError> {
    let mut used_masters = Vec::new();
    for (name, keys) in &file.sections {
        if name == "meta"
            || [".template", ".optional", ".master"]
                .iter()
                .any(|s| name.ends_with(s))
        {
            continue;
        }
        let master = match name.split_once('.') {
            Some((_, rest)) if rest.contains('.') => {
                return Err(ConfigError::Line {
                    file: path.map_or_else(String::new, |p| p.display().to_string()),
                    line: file.headers.get(name).copied().unwrap_or(0),
                    message: format!(
                        "section [{name}]: Mailman cannot read a section name with more than one dot"
                    ),
                });
            }
            Some((category, _)) => Some(format!("{category}.master")),
            None => None,
        };
        let set = |section: &mut IndexMap<String, Val>| {
            for (k, v) in keys {
                if let Some(slot) = section.get_mut(k) {
                    *slot = Val {
                        text: v.text.clone(),
                        at: path.map(|p| (p.to_path_buf(), v.line)),
                    };
                }
            }
        };
        if let Some(section) = data.get_mut(name) {
            set(section);
            continue;
        }
        // A new section of a category with a template (`[runner.NAME]`,
        // `[paths.NAME]`): the schema's template, then the file's keys.
        let Some(template) = master.as_ref().and_then(|m| masters.get(m)) else {
            continue; // a section the master does not use
        };
        let mut section = template.clone();
        set(&mut section);
        data.insert(name.clone(), section);
        used_masters.extend(master);
    }
    for m in used_masters {
        data.shift_remove(&m);
    }
    Ok(())
}

/// The merged sections turned into paths and runners.
fn resolve(
    file: PathBuf,
    data: &Sections,
    cwd: &Path,
    env_var_dir: Option<String>,
    search_path: Option<&std::ffi::OsStr>,
) -> Result<Core, ConfigError> {
    let err = |v: Option<&Val>, message: String| match v.and_then(|v| v.at.clone()) {
        Some((f, line)) => ConfigError::Line {
            file: f.display().to_string(),
            line,
            message,
        },
        None => ConfigError::File {
            file: file.display().to_string(),
            message,
        },
    };
    let layout_val = data.get("mailman").and_then(|m| m.get("layout"));
    let layout = layout_val.map_or("here", |v| v.text.as_str()).to_string();
    let Some(section) = data.get(&format!("paths.{layout}")) else {
        return Err(err(
            layout_val,
            format!("No path configuration found: paths.{layout}"),
        ));
    };
    let values: IndexMap<String, String> = section
        .iter()
        .map(|(k, v)| (k.clone(), v.text.clone()))
        .collect();
    let argv = paths::python_bin_dir(search_path);
    let inputs = paths::Inputs {
        layout: &values,
        env_var_dir,
        cwd: cwd.to_path_buf(),
        argv: argv
            .clone()
            .unwrap_or_else(|| paths::ARGV_UNKNOWN.to_string()),
        cfg_file: file.clone(),
    };
    let expanded = paths::expand(&inputs).map_err(|left| {
        let list: Vec<String> = left.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        err(
            None,
            format!(
                "[paths.{layout}]: path expansion loops: {}",
                list.join(", ")
            ),
        )
    })?;
    if let Some((key, _)) = expanded
        .iter()
        .find(|(_, p)| p.to_string_lossy().contains(paths::ARGV_UNKNOWN))
    {
        let attr = key.to_lowercase();
        return Err(err(
            section.get(&attr),
            format!(
                "[paths.{layout}] {attr} uses $argv, the directory of the Python that runs Mailman, \
                 and no Mailman program (a Python script named `mailman`) is on PATH to tell it: \
                 put Mailman's bin directory on PATH, or set {attr}"
            ),
        ));
    }
    let value = |section: &str, key: &str| {
        data.get(section)
            .and_then(|s| s.get(key))
            .map_or(String::new(), |v| v.text.trim().to_string())
    };
    let lmtp = format!(
        "{}:{}",
        value("mta", "lmtp_host"),
        value("mta", "lmtp_port")
    );
    let rest = format!(
        "{}:{}",
        value("webservice", "hostname"),
        value("webservice", "port")
    );
    let mut runners = Vec::new();
    for (name, keys) in data {
        let Some(short) = name.strip_prefix("runner.") else {
            continue;
        };
        let get = |k: &str| keys.get(k);
        let text = |k: &str| get(k).map_or("", |v| v.text.as_str());
        let start = as_boolean(text("start")).ok_or_else(|| {
            err(
                get("start"),
                format!("Invalid boolean value: {}", text("start").to_lowercase()),
            )
        })?;
        let instances = match python_int(text("instances")) {
            Some(n) if n == 0 || (n > 0 && (n & (n - 1)) == 0 && n <= i64::from(u32::MAX)) => {
                n as u32
            }
            _ if !start => 1, // Mailman never reads it
            Some(n) => {
                return Err(err(
                    get("instances"),
                    format!("Runner \"{short}\", not a power of 2: {n}"),
                ));
            }
            None => {
                return Err(err(
                    get("instances"),
                    format!(
                        "Runner \"{short}\": instances is not a number: {:?}",
                        text("instances")
                    ),
                ));
            }
        };
        let max_restarts = python_int(text("max_restarts"))
            .filter(|n| *n >= 0)
            .map(|n| n.min(i64::from(u32::MAX)) as u32)
            .ok_or_else(|| {
                err(
                    get("max_restarts"),
                    format!(
                        "Runner \"{short}\": max_restarts is not a number: {:?}",
                        text("max_restarts")
                    ),
                )
            })?;
        let class = text("class").trim();
        runners.push(CoreRunner {
            name: short.to_string(),
            ready_tcp: match class {
                "mailman.runners.lmtp.LMTPRunner" => Some(lmtp.clone()),
                "mailman.runners.rest.RESTRunner" => Some(rest.clone()),
                _ => None,
            },
            class: class.to_string(),
            start,
            instances,
            max_restarts,
            queue: !text("path").trim().is_empty(),
            // As lazr.config's as_timedelta reads it; Mailman's runner
            // would not start on a value it cannot read, so that value
            // counts as Mailman's default.
            sleep_time: as_timedelta(text("sleep_time").trim())
                .unwrap_or(std::time::Duration::from_secs(1)),
        });
    }
    Ok(Core {
        bin_dir_at: section.get("bin_dir").and_then(|v| v.at.clone()),
        file,
        layout,
        paths: expanded,
        runners,
    })
}

/// lazr.config's `as_boolean`.
fn as_boolean(text: &str) -> Option<bool> {
    match text.to_lowercase().as_str() {
        "true" | "yes" | "1" | "on" | "enabled" | "enable" => Some(true),
        "false" | "no" | "0" | "off" | "disabled" | "disable" => Some(false),
        _ => None,
    }
}

/// Python's `int(text)` for base-10 text: surrounding whitespace, a sign,
/// digits with single `_` between them.
fn python_int(text: &str) -> Option<i64> {
    let t = text.trim();
    let (neg, digits) = match t.as_bytes().first()? {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
        || !digits.chars().all(|c| c.is_ascii_digit() || c == '_')
    {
        return None;
    }
    let n: i64 = digits.replace('_', "").parse().ok()?;
    Some(if neg { -n } else { n })
}

/// lazr.config's `as_timedelta`: `1w2d3h4m5.5s`, each unit at most once,
/// in that order.
fn as_timedelta(text: &str) -> Option<std::time::Duration> {
    let mut rest = text;
    let mut secs = 0.0f64;
    let mut last = usize::MAX;
    while !rest.is_empty() {
        let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (num, tail) = rest.split_at(end);
        let unit = tail.chars().next()?;
        let order = "wdhms".find(unit.to_ascii_lowercase())?;
        if num.is_empty() || (last != usize::MAX && order <= last) {
            return None;
        }
        last = order;
        let scale = [604_800.0, 86_400.0, 3_600.0, 60.0, 1.0][order];
        secs += num.parse::<f64>().ok()? * scale;
        rest = &tail[1..];
    }
    (last != usize::MAX && secs.is_finite() && secs < 1e9)
        .then(|| std::time::Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core(text: &str) -> Result<Core, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mailman.cfg");
        std::fs::write(&file, text).unwrap();
        let bin = dir.path().join("venv/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(
            bin.join("mailman"),
            format!("#!{}/python3\n", bin.display()),
        )
        .unwrap();
        load(&file, Path::new("/w"), None, Some(bin.as_os_str()))
    }

    fn started(c: &Core) -> Vec<String> {
        c.runners
            .iter()
            .filter(|r| r.start)
            .flat_map(|r| (0..r.instances).map(move |s| format!("{}:{s}:{}", r.name, r.instances)))
            .collect()
    }

    #[test]
    fn defaults_are_mailmans() {
        let c = core("[mailman]\nsite_owner: x@example.com\n").unwrap();
        assert_eq!(c.layout, "here");
        assert_eq!(c.var_dir(), PathBuf::from("/w/var"));
        assert_eq!(c.lock_file(), PathBuf::from("/w/var/locks/master.lck"));
        assert!(c.bin_dir().ends_with("venv/bin"));
        assert_eq!(
            started(&c),
            [
                "archive:0:1",
                "bounces:0:1",
                "command:0:1",
                "in:0:1",
                "lmtp:0:1",
                "out:0:1",
                "pipeline:0:1",
                "rest:0:1",
                "retry:0:1",
                "task:0:1",
                "virgin:0:1",
                "digest:0:1"
            ]
        );
        assert!(!c.runner("lmtp").unwrap().queue);
        assert!(c.runner("in").unwrap().queue);
        assert_eq!(
            c.runner("lmtp").unwrap().ready_tcp.as_deref(),
            Some("127.0.0.1:8024")
        );
        assert_eq!(
            c.runner("rest").unwrap().ready_tcp.as_deref(),
            Some("localhost:8001")
        );
        assert_eq!(c.runner("in").unwrap().ready_tcp, None);
    }

    #[test]
    fn site_values_layouts_and_new_runners() {
        let c = core(
            "[mailman]\nlayout: site\n[paths.site]\nvar_dir: /srv/mm\nlog_dir: $var_dir/../log\n\
             [runner.in]\ninstances: 4\n[runner.archive]\nstart: no\n[runner.extra]\nclass: x.Y\n\
             [runner.master]\nstart: no\n",
        )
        .unwrap();
        assert_eq!(c.var_dir(), PathBuf::from("/srv/mm"));
        assert_eq!(c.log_dir(), PathBuf::from("/srv/log"));
        assert_eq!(c.queue_dir(), PathBuf::from("/srv/mm/queue"));
        let s = started(&c);
        assert!(s.contains(&"in:3:4".to_string()));
        assert!(!s.iter().any(|x| x.starts_with("archive")));
        // [runner.master] in a site file is a schema directive: ignored.
        assert_eq!(s.last().unwrap(), "extra:0:1");
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = core("[mailman]\nlayout: nope\n").unwrap_err().to_string();
        assert!(
            e.ends_with("mailman.cfg:2: No path configuration found: paths.nope"),
            "{e}"
        );
        let e = core("[runner.in]\n\ninstances: 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.ends_with(":3: Runner \"in\", not a power of 2: 3"), "{e}");
        let e = core("[runner.in]\nstart: maybe\n").unwrap_err().to_string();
        assert!(e.ends_with(":2: Invalid boolean value: maybe"), "{e}");
        let e = core("[mailman]\nlayout here\n").unwrap_err().to_string();
        assert!(e.contains("mailman.cfg:2: "), "{e}");
        // A runner that does not start is not asked for its instances.
        assert!(core("[runner.in]\nstart: no\ninstances: 3\n").is_ok());
    }

    #[test]
    fn python_ints() {
        assert_eq!(python_int(" 4 "), Some(4));
        assert_eq!(python_int("+1_0"), Some(10));
        assert_eq!(python_int("1__0"), None);
        assert_eq!(python_int("0x4"), None);
        assert_eq!(python_int(""), None);
    }
}
