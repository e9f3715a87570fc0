//! Where the master's files are, and nothing else: what `status` needs
//! (issue 19). Reading the whole configuration costs milliseconds at 1,000
//! runners; this reads the `[mailman]` table alone. The whole file is
//! still checked for TOML syntax (by the `toml` crate's own lexer and
//! parser, `toml_parser`, which build nothing), but only the parts that
//! can define `mailman` (the lines before the first table header, and
//! every `[mailman…]` / `[[mailman…]]` table) are read as a document:
//! what other tables hold, duplicates among them included, is not looked at.
//! Wherever more could change the answer (a `mailman_cfg`, an override
//! from the environment or `--set`) or the file or `[mailman]` is wrong, it
//! does what [`Config::discover`] does, so that its answer, and any error,
//! are the full configuration's. A mistake elsewhere in the file is for
//! `check-config` and `start` to report.
//!
//! The check comes in two halves ([`Config::locate`], then
//! [`Located::confirm`]): the root and the `mailman` tables are checked
//! first, since they give the layout; the syntax of the others (the 1,000
//! runner tables of a large file) once the master has answered, and only
//! if the file is not the one it read and validated, unchanged since (its
//! [`FileStamp`], which the master sends with its answer). The first half
//! lexes the file only as far as the last table that can be `mailman`'s
//! (one whose header holds the word, or a backslash that could spell it);
//! the tables after it are lexed in the second half alone.
//!
//! The lexing and parsing themselves are in `crates/toml-skim`
//! (`toml_skim`), a crate of its own only so that it is built for speed.
//!
//! Not here: validation (`validate`), the full merge (`defaults`).

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use toml_skim::mailman_part;

use super::layer::RawMailman;
use super::{Config, ConfigError, NO_FILE, find_source, is_mailman_cfg, layout_of};
use crate::os::layout::Layout;
use crate::util::FileStamp;

/// A file read for its `[mailman]` table; other tables are skipped.
#[derive(Deserialize)]
struct MailmanOnly {
    #[serde(default)]
    mailman: RawMailman,
}

impl Config {
    /// `Config::discover(explicit, sets)?.layout()`, without reading more
    /// of the file than its `[mailman]` table where that is the same: the
    /// layout, with the syntax of the tables that cannot define `mailman`
    /// still to be checked ([`Located::confirm`]).
    pub fn locate(explicit: Option<&Path>, sets: &[String]) -> Result<Located, ConfigError> {
        let (layout, rest) = match light(explicit, sets) {
            Some((layout, rest)) => (layout, Some(rest)),
            None => (Config::discover(explicit, sets)?.layout(), None),
        };
        Ok(Located {
            layout,
            rest,
            explicit: explicit.map(Path::to_path_buf),
            sets: sets.to_vec(),
        })
    }
}

/// Where the master's files are, as far as the root and `mailman` tables
/// say; the rest of the file still to be checked.
pub struct Located {
    pub layout: Layout,
    rest: Option<Rest>,
    explicit: Option<PathBuf>,
    sets: Vec<String>,
}

impl Located {
    /// The rest of the file checked for TOML syntax, unless it is the file
    /// a running master read and validated, unchanged since (`validated`:
    /// its stamp, as the master tells it). On a mistake, the full reading's
    /// answer: its error (or, if it reads the file after all, its layout,
    /// which then replaces [`Located::layout`]).
    pub fn confirm(&mut self, validated: Option<FileStamp>) -> Result<(), ConfigError> {
        match self.rest.take() {
            Some(rest) if rest.stamp.is_some() && rest.stamp == validated => Ok(()),
            Some(rest) if !rest.check() => {
                self.layout = Config::discover(self.explicit.as_deref(), &self.sets)?.layout();
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// The tables of a file not checked yet: their text, and where they are
/// (a range is one table, or the run of tables that ends the file).
struct Rest {
    text: String,
    tables: Vec<Range<usize>>,
    stamp: Option<FileStamp>,
}

impl Rest {
    /// Whether every table is valid TOML syntax, keys and values included
    /// (`toml_skim`, built for speed: README, "Dependencies").
    fn check(&self) -> bool {
        toml_skim::tables_valid(&self.text, &self.tables)
    }
}

/// The layout from the `[mailman]` table alone, and the tables still to be
/// checked; `None` where the full reading is needed.
fn light(explicit: Option<&Path>, sets: &[String]) -> Option<(Layout, Rest)> {
    if !sets.is_empty() || !super::overrides::env_layers().ok()?.is_empty() {
        return None;
    }
    let source = find_source(explicit);
    let (text, stamp, base) = match &source {
        Some(path) if is_mailman_cfg(path) => return None,
        Some(path) => {
            let (text, stamp) = crate::util::read_config_stamped(path).ok()?;
            let base = if path == Path::new(NO_FILE) {
                std::env::current_dir().ok()?
            } else {
                std::path::absolute(path).ok()?.parent()?.to_path_buf()
            };
            (text, stamp, base)
        }
        None => (String::new(), None, std::env::current_dir().ok()?),
    };
    let (part, tables) = mailman_part(&text)?;
    let m = toml::from_str::<MailmanOnly>(&part).ok()?.mailman;
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
    Some((
        layout_of(&var_dir, &run_dir, &queue_dir, None),
        Rest {
            text,
            tables,
            stamp,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both halves: the layout once the whole file is checked.
    fn locate(explicit: Option<&Path>, sets: &[String]) -> Result<Layout, ConfigError> {
        let mut located = Config::locate(explicit, sets)?;
        located.confirm(None)?;
        Ok(located.layout)
    }

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
            // `mailman` defined from the root, quoted, spaced, or after other tables.
            "mailman.var_dir = \"/dotted\"\n[runner.in]\ninstances = 2\n".into(),
            "mailman = { var_dir = \"/inline\", run_dir = \"/r\" }\n".into(),
            "# c\n[ \"mailman\" ] # c\nvar_dir = '/quoted'\n".into(),
            "[runner.in]\n[\"\\u006Dail\\u006dan\"]\nvar_dir = \"/escaped\"\n".into(),
            "[runner.mailman]\n[job.x]\ncommand = [\"true\"]\nschedule = \"@hourly\"\n\
             [mailman]\nvar_dir = \"/late\"\n"
                .into(),
            // What looks like a header inside a value is not one.
            "[runner.a]\ncommand = [\"\"\"\n[mailman]\nvar_dir = \"/no\"\n\"\"\"]\n\
             [mailman]\nrun_dir = \"/r\"\n"
                .into(),
        ];
        for (i, text) in texts.iter().enumerate() {
            let file = dir.path().join(format!("c{i}.toml"));
            std::fs::write(&file, text).unwrap();
            let full = Config::discover(Some(&file), &[]).unwrap().layout();
            let (layout, rest) = light(Some(&file), &[]).expect(text);
            assert!(rest.check(), "{text}");
            assert_eq!(layout, full, "{text}");
        }
    }

    /// A file the master read and validated, unchanged since, is not
    /// checked again; any other is, a master's stamp of another file
    /// included.
    #[test]
    fn a_file_the_master_validated_is_not_checked_again() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.toml");
        // A mistake past `[mailman]`: what the second half finds.
        std::fs::write(&file, "[mailman]\nvar_dir = \"/v\"\n[runner.a]\nx = \n").unwrap();
        let (_, stamp) = crate::util::read_config_stamped(&file).unwrap();
        let stamp = stamp.expect("a regular file has a stamp");
        let confirm = |validated| Config::locate(Some(&file), &[])?.confirm(validated);
        assert!(confirm(None).is_err());
        assert!(confirm(Some(stamp)).is_ok());
        let other = FileStamp {
            ino: stamp.ino + 1,
            ..stamp
        };
        assert!(confirm(Some(other)).is_err());
        // Rewritten, the same size: a stamp of its own.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&file, "[mailman]\nvar_dir = \"/w\"\n[runner.a]\nx = \n").unwrap();
        assert!(confirm(Some(stamp)).is_err());
    }

    /// `mailman_part`, then the check of the rest: the part read, where the
    /// whole is valid TOML syntax.
    fn checked(text: &str) -> Option<String> {
        let (kept, tables) = mailman_part(text)?;
        let rest = Rest {
            text: text.to_string(),
            tables,
            stamp: None,
        };
        rest.check().then_some(kept)
    }

    /// What the light reading reads as a document: the root and `mailman`'s
    /// tables, the others' syntax left for later; and nothing when the file
    /// is not TOML, wherever it is not.
    #[test]
    fn only_mailmans_part_is_read() {
        let doc = "top = 1\n[runner.a]\nx = 1\n[mailman]\nvar_dir = \"/v\"\n\
                   [[job.list]]\ny = 2\n['mailman'.sub]\nz = 3\n[runner.b]\n";
        let (kept, rest) = mailman_part(doc).unwrap();
        assert_eq!(
            kept,
            "top = 1\n\n[mailman]\nvar_dir = \"/v\"\n\n['mailman'.sub]\nz = 3\n\n"
        );
        let rest: Vec<&str> = rest.into_iter().map(|r| &doc[r]).collect();
        assert_eq!(
            rest,
            [
                "[runner.a]\nx = 1\n",
                "[[job.list]]\ny = 2\n",
                "[runner.b]\n"
            ]
        );
        // Past the last `mailman` (or backslash), the tables are one range,
        // not lexed until it is checked.
        let doc =
            "[runner.a]\n[mailman]\nx = 'mailman'\n[runner.b]\n[[job.c]]\n[runner.d]\ny = 1\n";
        let (_, rest) = mailman_part(doc).unwrap();
        let rest: Vec<&str> = rest.into_iter().map(|r| &doc[r]).collect();
        assert_eq!(
            rest,
            ["[runner.a]\n", "[runner.b]\n[[job.c]]\n[runner.d]\ny = 1\n"]
        );
        assert!(checked(doc).is_some());
        // A mistake in a table left for later is not seen at first.
        for late in [
            "[mailman]\nvar_dir = \"/v\"\n[runner.x]\ncommand = [\"a\" \"b\"]\n",
            "[mailman]\nvar_dir = \"/v\"\n[runner.x]\n[runner.y]\ncommand = [\"a\" \"b\"]\n[runner.z]\n",
            "[mailman]\nvar_dir = \"/v\"\n[runner.x]\n[runner.y]\nc = 'unclosed\n[runner.z]\n",
        ] {
            assert!(mailman_part(late).is_some(), "{late:?}");
            assert_eq!(checked(late), None, "{late:?}");
        }
        for broken in [
            "[runner.in\n",
            "[runner.in]\ncommand = [\"a\" \"b\"]\n",
            "[runner.in]\nname = \"\\q\"\n",
            "[runner.in]\ninstances = 1__0\n",
            "[runner.in]\n= 1\n",
            "[job.\"a\nb\"]\n",
            "[mailman]\nvar_dir = \"/v\"\n[runner.b1\n[runner.b2]\n",
            "[mailman]\nvar_dir = \"/v\"\n[runner.b 1]\n",
            "a = [1,\n[mailman]\nvar_dir = \"/v\"\n",
            "[mailman]\nvar_dir = \"/v\"\n[runner.x]\nb = [1]]\n",
            "[mailman]\nvar_dir = \"/v\"\n[runner.x]\n[]\n",
            "[runner.x] # a \u{7} in a comment\n",
            &format!(
                "[runner.x]\ncommand = {}{}\n",
                "[".repeat(200_000),
                "]".repeat(200_000)
            ),
            &format!(
                "[runner.x]\ncommand = {}{}\n",
                "{a=".repeat(200_000),
                "}".repeat(200_000)
            ),
        ] {
            assert_eq!(checked(broken), None, "{broken:?}");
            let file = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(file.path(), broken).unwrap();
            assert!(locate(Some(file.path()), &[]).is_err(), "{broken:?}");
        }
        // Brackets inside values, at the start of a line or not.
        let values = "a = [\n[1],\n  [2] ]\nt = { b = [\n[1]] }\n  [ mailman ]\nc = 1\n[[job.x]]\n";
        assert_eq!(
            checked(values).as_deref(),
            Some("a = [\n[1],\n  [2] ]\nt = { b = [\n[1]] }\n  \n[ mailman ]\nc = 1\n\n")
        );
        // What only the whole document's reading sees: left to `check-config`.
        let twice = "[mailman]\nvar_dir = \"/v\"\n[runner.a]\n[runner.a]\n";
        assert!(checked(twice).is_some());
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), twice).unwrap();
        assert!(Config::discover(Some(file.path()), &[]).is_err());
        assert_eq!(
            locate(Some(file.path()), &[]).unwrap().var_dir,
            Path::new("/v")
        );
        // ... but not within `mailman`'s own part.
        assert!(light(Some(file.path()), &[]).is_some());
        std::fs::write(file.path(), "[mailman]\n[runner.a]\n[mailman]\n").unwrap();
        assert!(light(Some(file.path()), &[]).is_none());
    }

    /// Where `[mailman]` is wrong, the full reading's error.
    #[test]
    fn a_wrong_mailman_table_gets_the_full_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "[mailman]\nvar_dir = \"\"\n").unwrap();
        assert!(light(Some(&file), &[]).is_none());
        let light_error = locate(Some(&file), &[]).unwrap_err().to_string();
        let full_error = Config::discover(Some(&file), &[]).unwrap_err().to_string();
        assert_eq!(light_error, full_error);
        // `--set` is the full reading's business.
        std::fs::write(&file, "").unwrap();
        assert!(light(Some(&file), &["mailman.var_dir=/x".into()]).is_none());
        assert_eq!(
            locate(Some(&file), &["mailman.var_dir=/x".into()]).unwrap(),
            Config::discover(Some(&file), &["mailman.var_dir=/x".into()])
                .unwrap()
                .layout()
        );
    }
}
