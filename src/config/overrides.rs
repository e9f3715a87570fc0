//! Overrides from outside the file: `MAILMAN_VAR_DIR`, the
//! `MAILMAN__SECTION__KEY` environment variables, and `--set
//! SECTION.KEY=VALUE`, each turned into a [`Layer`] of its own; and the way
//! back, a `--set` as the variable a runner gets.

use std::path::PathBuf;

use super::ConfigError;
use super::layer::{Layer, RawMailman};

impl Layer {
    /// One override: `path` (`mailman.stop_timeout`, `runner.in.env.FOO`) set
    /// to `value` (a TOML value, else a string), reported as `label`.
    pub(super) fn one(label: &str, path: &[String], value: &str) -> Result<Layer, ConfigError> {
        let err = |message: String| ConfigError::File {
            file: label.to_string(),
            message,
        };
        let shape_ok = match path {
            [s, _] => s == "mailman" || s == "logging" || s == "http",
            [s, _, _] => s == "runner" || s == "job",
            [s, _, e, _] => (s == "runner" || s == "job") && e == "env",
            _ => false,
        };
        if !shape_ok || path.iter().any(|p| p.is_empty()) {
            return Err(err(
                "not a configuration key: expected mailman.KEY, logging.KEY, http.KEY, runner.NAME.KEY, runner.NAME.env.VAR, job.NAME.KEY or job.NAME.env.VAR"
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
        let mut layer = Layer::parse(&text, &cwd, &|_, message| err(message))?;
        layer.label = Some(label.to_string());
        Ok(layer)
    }
}

/// The environment's overrides: `MAILMAN_VAR_DIR`, then every
/// `MAILMAN__SECTION__KEY` (e.g. `MAILMAN__RUNNER__ARCHIVE__START=false`), in
/// name order.
pub(super) fn env_layers() -> Result<Vec<Layer>, ConfigError> {
    let mut layers = Vec::new();
    if let Some(dir) = std::env::var_os("MAILMAN_VAR_DIR").filter(|v| !v.is_empty()) {
        let abs = std::path::absolute(PathBuf::from(&dir)).map_err(|e| ConfigError::File {
            file: "MAILMAN_VAR_DIR".into(),
            message: e.to_string(),
        })?;
        layers.push(Layer {
            // Mailman honours MAILMAN_VAR_DIR too: never a conflict with
            // a mailman.cfg.
            mailman: RawMailman {
                var_dir: Some(toml::Spanned::new(0..0, abs)),
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
pub(super) fn set_layers(sets: &[String]) -> Result<Vec<Layer>, ConfigError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

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
                "runner.new.command=[\"sleep\", \"9\"]".into(),
                "runner.new.start=false".into(),
                "mailman.var_dir=rel".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.runner("in").unwrap().instances, 4);
        assert!(!c.runner("new").unwrap().start);
        // A typo is not a new runner.
        let e = Config::build("", None, &["runner.inn.instances=4".into()]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--set runner.inn.instances=4: no runner \"inn\" is defined (by the file or built in): an override can change a runner, or define a new one with its command"
        );
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
}
