//! One lazr.config INI text as Python's `RawConfigParser(strict=False)`
//! reads it for lazr.config: the text dedented, `KEY: VALUE` or `KEY = VALUE`,
//! keys lower-cased, section names as written, full-line `#`/`;` comments,
//! values continued on lines indented deeper than their key, `[DEFAULT]`
//! keys seen in every section, a repeated section or key merged (the later
//! value wins). The values are read by the `configparser` crate; what it
//! accepts but Python rejects (a key before any section, a line that is
//! neither a section, a key nor a continuation) is found here first, with
//! its line, and every value remembers its line for later errors.

use indexmap::IndexMap;

/// A value and the 1-based line it was written on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    pub text: String,
    pub line: usize,
}

/// One file's sections, in order of first appearance, each with its keys
/// (`[DEFAULT]`'s included, as Python's `items()` gives them).
#[derive(Debug, Default)]
pub struct Ini {
    pub sections: IndexMap<String, IndexMap<String, Value>>,
    /// Where each section header first appears.
    pub headers: IndexMap<String, usize>,
}

const DEFAULT: &str = "DEFAULT";

/// Reads `text`; an error is `(line, message)`.
pub fn parse(text: &str) -> Result<Ini, (usize, String)> {
    let text = dedent(text);
    let lines = scan(&text)?;
    let mut options = configparser::ini::IniDefault::default();
    options.default_section = DEFAULT.to_string();
    options.comment_symbols = vec!['#', ';'];
    options.inline_comment_symbols = Some(Vec::new());
    options.delimiters = vec!['=', ':'];
    options.case_sensitive = true;
    options.multiline = true;
    options.enable_inline_comments = false;
    let mut reader = configparser::ini::Ini::new_from_defaults(options);
    let map = reader
        .read(text.clone())
        .map_err(|e| (line_of_error(&e), e))?;
    let mut ini = Ini::default();
    let defaults: IndexMap<String, Value> = map
        .get(DEFAULT)
        .map(|keys| values(keys, DEFAULT, &lines))
        .unwrap_or_default();
    for (name, keys) in &map {
        if name == DEFAULT {
            continue;
        }
        let mut all = defaults.clone();
        all.extend(values(keys, name, &lines));
        ini.sections.insert(name.clone(), all);
        if let Some(line) = lines.header(name) {
            ini.headers.insert(name.clone(), line);
        }
    }
    Ok(ini)
}

/// The crate's values, keys lower-cased (Python's `optionxform`), each
/// with the line of its last assignment.
fn values(
    keys: &IndexMap<String, Option<String>>,
    section: &str,
    lines: &Lines,
) -> IndexMap<String, Value> {
    let mut out = IndexMap::new();
    for (key, value) in keys {
        let key = key.to_lowercase();
        let line = lines.key(section, &key).unwrap_or(0);
        out.insert(
            key,
            Value {
                text: value.clone().unwrap_or_default(),
                line,
            },
        );
    }
    out
}

/// What the scan learned: where each section header and key line is.
struct Lines {
    /// (section, lower-cased key or None for the header, line)
    places: Vec<(String, Option<String>, usize)>,
}

impl Lines {
    fn header(&self, section: &str) -> Option<usize> {
        self.places
            .iter()
            .find(|(s, k, _)| s == section && k.is_none())
            .map(|p| p.2)
    }
    /// The last line that sets `key` in `section`.
    fn key(&self, section: &str, key: &str) -> Option<usize> {
        self.places
            .iter()
            .rev()
            .find(|(s, k, _)| s == section && k.as_deref() == Some(key))
            .map(|p| p.2)
    }
}

/// Classifies every line as Python's parser does, and rejects what it
/// rejects: a key before the first section header, and a line that is
/// neither a header, a `KEY: VALUE`, a continuation, a comment nor blank.
fn scan(text: &str) -> Result<Lines, (usize, String)> {
    let mut places = Vec::new();
    let mut section: Option<String> = None;
    // The indentation of the line that started the current value.
    let mut value_indent: Option<usize> = None;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let indent = raw.len() - raw.trim_start().len();
        if let (Some(start), Some(_)) = (value_indent, &section)
            && indent > start
        {
            continue; // a continuation line
        }
        // Python's `\[(?P<header>.+)\]`, matched from the start: the name
        // runs to the last `]`.
        if let Some(end) = line.rfind(']').filter(|&e| line.starts_with('[') && e > 1) {
            let name = line[1..end].trim().to_string();
            places.push((name.clone(), None, n));
            section = Some(name);
            value_indent = None;
            continue;
        }
        let Some(current) = &section else {
            return Err((n, "File contains no section headers.".to_string()));
        };
        let Some(at) = line.find(['=', ':']) else {
            return Err((
                n,
                format!("not a section, a KEY: VALUE line or a continuation: {line:?}"),
            ));
        };
        let key = line[..at].trim().to_lowercase();
        if key.is_empty() {
            return Err((n, "a value without a key".to_string()));
        }
        places.push((current.clone(), Some(key), n));
        value_indent = Some(indent);
    }
    Ok(Lines { places })
}

/// The line number in one of the crate's errors ("line 3: …"), else 0.
fn line_of_error(e: &str) -> usize {
    e.strip_prefix("line ")
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Python's `textwrap.dedent`: the whitespace every non-blank line starts
/// with is removed; whitespace-only lines become empty.
fn dedent(text: &str) -> String {
    let margin = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| &l[..l.len() - l.trim_start().len()])
        .reduce(|a, b| {
            let common = a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
            &a[..common]
        })
        .unwrap_or("");
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line.trim().is_empty() {
            out.push('\n');
        } else {
            out.push_str(line.strip_prefix(margin).unwrap_or(line));
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(ini: &'a Ini, s: &str, k: &str) -> &'a str {
        &ini.sections[s][k].text
    }

    #[test]
    fn reads_as_python_does() {
        let ini = parse(
            "# comment\n[mailman]\nLayout: here\n\n[paths.here]\nvar_dir = /srv/x # not a comment\n\
             multi: first\n    second\n  ; indented comment\n[runner.in]\ninstances: 2\n[runner.in]\nstart: no\n",
        )
        .unwrap();
        assert_eq!(get(&ini, "mailman", "layout"), "here");
        assert_eq!(ini.sections["mailman"]["layout"].line, 3);
        assert_eq!(get(&ini, "paths.here", "var_dir"), "/srv/x # not a comment");
        assert_eq!(get(&ini, "paths.here", "multi"), "first\nsecond");
        assert_eq!(get(&ini, "runner.in", "instances"), "2");
        assert_eq!(get(&ini, "runner.in", "start"), "no");
        assert_eq!(ini.sections["runner.in"]["start"].line, 13);
        assert_eq!(ini.headers["runner.in"], 10);
    }

    #[test]
    fn defaults_reach_every_section_and_text_is_dedented() {
        let ini =
            parse("    [DEFAULT]\n    start: no\n    [runner.a]\n    [runner.b]\n    start: yes\n")
                .unwrap();
        assert_eq!(get(&ini, "runner.a", "start"), "no");
        assert_eq!(get(&ini, "runner.b", "start"), "yes");
        assert!(!ini.sections.contains_key("DEFAULT"));
    }

    #[test]
    fn python_errors_have_their_line() {
        assert_eq!(parse("layout: here\n").unwrap_err().0, 1);
        assert_eq!(parse("[mailman]\n\nlayout here\n").unwrap_err().0, 3);
        assert_eq!(parse("[mailman\nlayout: here\n").unwrap_err().0, 1);
        assert_eq!(parse("[a]\n: x\n").unwrap_err().0, 2);
    }
}
