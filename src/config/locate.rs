//! Where the master's files are, and nothing else: what `status` needs
//! (issue 19). Reading the whole configuration costs milliseconds at 1,000
//! runners; this reads the `[mailman]` table alone and skips the rest
//! unchecked. Wherever more could change the answer (a `mailman_cfg`, an
//! override from the environment or `--set`) or `[mailman]` is wrong, it
//! does what [`Config::discover`] does, so that its answer, and any error in
//! `[mailman]`, are the full configuration's. A mistake elsewhere in the
//! file is for `check-config` and `start` to report.
//!
//! Not here: validation (`validate`), the full merge (`defaults`).

use std::path::Path;

use serde::Deserialize;

use super::layer::RawMailman;
use super::{Config, ConfigError, NO_FILE, find_source, is_mailman_cfg, layout_of};
use crate::os::layout::Layout;

/// A file read for its `[mailman]` table; other tables are skipped.
#[derive(Deserialize)]
struct MailmanOnly {
    #[serde(default)]
    mailman: RawMailman,
}

impl Config {
    /// `Config::discover(explicit, sets)?.layout()`, without reading more
    /// of the file than its `[mailman]` table where that is the same.
    pub fn locate(explicit: Option<&Path>, sets: &[String]) -> Result<Layout, ConfigError> {
        match light(explicit, sets) {
            Some(layout) => Ok(layout),
            None => Config::discover(explicit, sets).map(|c| c.layout()),
        }
    }
}

/// The layout from the `[mailman]` table alone; `None` where the full
/// reading is needed.
fn light(explicit: Option<&Path>, sets: &[String]) -> Option<Layout> {
    if !sets.is_empty() || !super::overrides::env_layers().ok()?.is_empty() {
        return None;
    }
    let source = find_source(explicit);
    let (text, base) = match &source {
        Some(path) if is_mailman_cfg(path) => return None,
        Some(path) => {
            let text = crate::util::read_config(path).ok()?;
            let base = if path == Path::new(NO_FILE) {
                std::env::current_dir().ok()?
            } else {
                std::path::absolute(path).ok()?.parent()?.to_path_buf()
            };
            (text, base)
        }
        None => (String::new(), std::env::current_dir().ok()?),
    };
    let m = toml::from_str::<MailmanOnly>(&text).ok()?.mailman;
    if m.mailman_cfg.is_some() {
        return None;
    }
    // As `Layer::parse` and `Config::from_layer` have them.
    let dir = |d: &Option<toml::Spanned<std::path::PathBuf>>| {
        d.as_ref()
            .map(|d| crate::util::normalize(&base.join(d.get_ref())))
    };
    if m.var_dir
        .as_ref()
        .is_some_and(|d| super::validate::var_dir(d.get_ref()).is_err())
        || [&m.run_dir, &m.queue_dir].iter().any(|d| {
            d.as_ref()
                .is_some_and(|d| d.get_ref().as_os_str().is_empty())
        })
    {
        return None;
    }
    let var_dir = dir(&m.var_dir)
        .unwrap_or_else(|| crate::util::normalize(&super::defaults::default_var_dir()));
    let run_dir = dir(&m.run_dir).unwrap_or_else(|| var_dir.clone());
    let queue_dir = dir(&m.queue_dir).unwrap_or_else(|| var_dir.join("queue"));
    Some(layout_of(&var_dir, &run_dir, &queue_dir, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The light reading and the full one agree, and the light one is the
    /// one taken (it would not be, were it to give up).
    #[test]
    fn the_layout_is_the_full_configurations() {
        let dir = tempfile::tempdir().unwrap();
        let runners: String = (0..1000).map(|i| format!("[runner.b{i}]\n")).collect();
        let texts = [
            String::new(),
            "[mailman]\nvar_dir = \"/srv/mm\"\n".into(),
            "[mailman]\nvar_dir = \"rel/../var\"\n".into(),
            "[mailman]\nvar_dir = \"v\"\nrun_dir = \"r\"\nqueue_dir = \"/shared/q\"\n".into(),
            "[mailman]\nrun_dir = \"/run/mm\"\nslices = [\"mine:0:2\"]\n\
             [runner.mine]\ncommand = [\"sleep\", \"9\"]\ninstances = 2\n"
                .into(),
            format!("[mailman]\nvar_dir = \"/v\"\n[logging]\nstderr = false\n{runners}"),
        ];
        for (i, text) in texts.iter().enumerate() {
            let file = dir.path().join(format!("c{i}.toml"));
            std::fs::write(&file, text).unwrap();
            let full = Config::discover(Some(&file), &[]).unwrap().layout();
            assert_eq!(light(Some(&file), &[]), Some(full), "{text}");
        }
    }

    /// Where `[mailman]` is wrong, the full reading's error.
    #[test]
    fn a_wrong_mailman_table_gets_the_full_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "[mailman]\nvar_dir = \"\"\n").unwrap();
        assert_eq!(light(Some(&file), &[]), None);
        let light_error = Config::locate(Some(&file), &[]).unwrap_err().to_string();
        let full_error = Config::discover(Some(&file), &[]).unwrap_err().to_string();
        assert_eq!(light_error, full_error);
        // `--set` is the full reading's business.
        std::fs::write(&file, "").unwrap();
        assert_eq!(light(Some(&file), &["mailman.var_dir=/x".into()]), None);
        assert_eq!(
            Config::locate(Some(&file), &["mailman.var_dir=/x".into()]).unwrap(),
            Config::discover(Some(&file), &["mailman.var_dir=/x".into()])
                .unwrap()
                .layout()
        );
    }
}
