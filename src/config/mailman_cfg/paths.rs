//! Mailman's paths, computed as Mailman 3.3.10's `Configuration._expand_paths`
//! computes them: the layout's `[paths.*]` values and a few more go into one
//! substitution table, `$name`s are replaced (Python's
//! `Template.safe_substitute`) pass after pass until none is left, and each
//! path is made absolute against the working directory.
//!
//! `$argv` is the directory of the Python that runs Mailman. We are not that
//! Python, so we find it the way a shell would: the `mailman` program on
//! `PATH` (a Python script), and the interpreter its `#!` line names.

use std::path::{Path, PathBuf};

use indexmap::IndexMap;

/// Mailman's `DIR_NAMES`, in its order: each `NAME_dir` of the layout.
const DIR_NAMES: &[&str] = &[
    "archive",
    "bin",
    "cache",
    "data",
    "etc",
    "list_data",
    "lock",
    "log",
    "messages",
    "queue",
];

/// What `$argv` stands for when no Mailman program is on `PATH`: a value no
/// path has, so that a path that needs it can be told apart.
pub const ARGV_UNKNOWN: &str = "\u{1}argv\u{1}";

/// The inputs of the expansion.
pub struct Inputs<'a> {
    /// The layout's `[paths.NAME]` section: key → value.
    pub layout: &'a IndexMap<String, String>,
    /// `$MAILMAN_VAR_DIR`, which wins over the layout's `var_dir`.
    pub env_var_dir: Option<String>,
    pub cwd: PathBuf,
    /// `$argv`; [`ARGV_UNKNOWN`] when it cannot be known.
    pub argv: String,
    /// `$cfg_file`: the configuration file, as Mailman was given it.
    pub cfg_file: PathBuf,
}

/// Every path, absolute, keyed as Mailman's attributes are (`VAR_DIR`,
/// `QUEUE_DIR`, `BIN_DIR`, `LOCK_FILE`, `PID_FILE`, …); or the keys that
/// still hold a `$` after the last pass that helped (Mailman's "Path
/// expansion infloop detected").
pub fn expand(inputs: &Inputs) -> Result<IndexMap<String, PathBuf>, Vec<(String, String)>> {
    let get = |k: &str| inputs.layout.get(k).cloned().unwrap_or_default();
    let mut subs: IndexMap<String, String> = IndexMap::new();
    subs.insert("cwd".into(), inputs.cwd.to_string_lossy().into_owned());
    subs.insert("argv".into(), inputs.argv.clone());
    subs.insert(
        "var_dir".into(),
        inputs.env_var_dir.clone().unwrap_or_else(|| get("var_dir")),
    );
    // ':source:' is Mailman's own templates directory, which no path we use
    // depends on; it is kept as written.
    subs.insert("template_dir".into(), get("template_dir"));
    for name in DIR_NAMES {
        let key = format!("{name}_dir");
        let value = get(&key);
        subs.insert(key, value);
    }
    for name in ["lock", "pid"] {
        let key = format!("{name}_file");
        let value = get(&key);
        subs.insert(key, value);
    }
    subs.insert(
        "cfg_file".into(),
        inputs.cfg_file.to_string_lossy().into_owned(),
    );
    // Each pass substitutes into the table as it goes (Python mutates the
    // dict while iterating it), so a later key sees earlier keys' new values.
    let mut last = 0;
    loop {
        let mut left = Vec::new();
        for i in 0..subs.len() {
            let value = safe_substitute(&subs[i], &subs);
            if value.contains('$') {
                left.push((
                    subs.get_index(i)
                        .map(|(k, _)| k.clone())
                        .unwrap_or_default(),
                    value.clone(),
                ));
            }
            subs[i] = value;
        }
        if left.is_empty() {
            break;
        }
        if left.len() == last {
            left.sort();
            return Err(left);
        }
        last = left.len();
    }
    Ok(subs
        .into_iter()
        .map(|(k, v)| (k.to_uppercase(), abspath(&inputs.cwd, &v)))
        .collect())
}

/// Python's `string.Template(text).safe_substitute(map)`: `$$` is `$`,
/// `$name` and `${name}` are replaced when `map` has `name` (names are
/// `[_a-zA-Z][_a-zA-Z0-9]*`), and everything else is left as it is.
pub fn safe_substitute(text: &str, map: &IndexMap<String, String>) -> String {
    let ident_start = |c: u8| c == b'_' || c.is_ascii_alphabetic();
    let ident = |c: u8| c == b'_' || c.is_ascii_alphanumeric();
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut plain = 0;
    while i < b.len() {
        if b[i] != b'$' {
            i += 1;
            continue;
        }
        out.push_str(&text[plain..i]);
        let rest = &b[i + 1..];
        if rest.first() == Some(&b'$') {
            out.push('$');
            i += 2;
        } else if rest.first().copied().is_some_and(ident_start) {
            let len = rest.iter().take_while(|&&c| ident(c)).count();
            let name = &text[i + 1..i + 1 + len];
            match map.get(name) {
                Some(v) => out.push_str(v),
                None => out.push_str(&text[i..i + 1 + len]),
            }
            i += 1 + len;
        } else if rest.first() == Some(&b'{')
            && rest.get(1).copied().is_some_and(ident_start)
            && let Some(close) = rest.iter().position(|&c| c == b'}')
            && rest[1..close].iter().all(|&c| ident(c))
        {
            let name = &text[i + 2..i + 1 + close];
            match map.get(name) {
                Some(v) => out.push_str(v),
                None => out.push_str(&text[i..i + 2 + close]),
            }
            i += 2 + close;
        } else {
            out.push('$');
            i += 1;
        }
        plain = i;
    }
    out.push_str(&text[plain..]);
    out
}

/// Python's `os.path.abspath`: joined to `cwd` if relative, then
/// normalised lexically (`.`, `..`, repeated slashes).
pub fn abspath(cwd: &Path, p: &str) -> PathBuf {
    let joined = if p.starts_with('/') {
        PathBuf::from(p)
    } else {
        cwd.join(p)
    };
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            std::path::Component::Normal(part) => out.push(part),
            std::path::Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// `$argv`: the directory of the interpreter named by the `#!` line of the
/// first `mailman` program on `path` that is a Python script; `None` if
/// there is none.
pub fn python_bin_dir(path: Option<&std::ffi::OsStr>) -> Option<String> {
    let path = path?;
    for dir in std::env::split_paths(path) {
        let candidate = dir.join("mailman");
        let Some(interpreter) = script_interpreter(&candidate, path) else {
            continue;
        };
        let parent = interpreter.parent()?;
        return Some(parent.to_string_lossy().into_owned());
    }
    None
}

/// The Python interpreter a script runs with: its `#!` line (`#!/x/python3`,
/// or `#!/usr/bin/env python3` looked up on `path`), or pip's `/bin/sh`
/// trampoline for long paths (`'''exec' /x/python3 "$0" "$@"`).
pub(super) fn script_interpreter(script: &Path, path: &std::ffi::OsStr) -> Option<PathBuf> {
    use std::io::Read;
    let mut head = [0u8; 512];
    let n = std::fs::File::open(script).ok()?.read(&mut head).ok()?;
    let text = std::str::from_utf8(&head[..n]).ok()?;
    let mut lines = text.lines();
    let shebang = lines.next()?.strip_prefix("#!")?.trim();
    let mut words = shebang.split_whitespace();
    let program = words.next()?;
    let interpreter = if program.ends_with("/env") {
        let name = words.next()?;
        std::env::split_paths(path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())?
    } else if program == "/bin/sh" {
        let exec = lines.next()?.strip_prefix("'''exec' ")?;
        PathBuf::from(exec.split_whitespace().next()?)
    } else {
        PathBuf::from(program)
    };
    let name = interpreter.file_name()?.to_string_lossy().into_owned();
    name.starts_with("python").then_some(interpreter)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> IndexMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn substitutes_as_python_template_does() {
        let m = map(&[("a", "A"), ("b_1", "B")]);
        assert_eq!(
            safe_substitute("$a/${b_1}/$c/$$/$/${x", &m),
            "A/B/$c/$/$/${x"
        );
        assert_eq!(safe_substitute("$ab", &m), "$ab");
        assert_eq!(safe_substitute("x$a.y", &m), "xA.y");
        assert_eq!(safe_substitute("$1", &m), "$1");
    }

    #[test]
    fn expands_like_mailman() {
        let layout = map(&[
            ("var_dir", "$cwd/var"),
            ("queue_dir", "$var_dir/queue"),
            ("bin_dir", "$argv"),
            ("lock_dir", "$var_dir/locks"),
            ("lock_file", "$lock_dir/master.lck"),
            ("pid_file", "$var_dir/master.pid"),
            ("log_dir", "$var_dir/../logs"),
        ]);
        let inputs = Inputs {
            layout: &layout,
            env_var_dir: None,
            cwd: PathBuf::from("/w"),
            argv: "/venv/bin".into(),
            cfg_file: PathBuf::from("/etc/mailman.cfg"),
        };
        let p = expand(&inputs).unwrap();
        assert_eq!(p["VAR_DIR"], PathBuf::from("/w/var"));
        assert_eq!(p["QUEUE_DIR"], PathBuf::from("/w/var/queue"));
        assert_eq!(p["BIN_DIR"], PathBuf::from("/venv/bin"));
        assert_eq!(p["LOCK_FILE"], PathBuf::from("/w/var/locks/master.lck"));
        assert_eq!(p["LOG_DIR"], PathBuf::from("/w/logs"));
        // Unset keys are "" and so the working directory.
        assert_eq!(p["DATA_DIR"], PathBuf::from("/w"));

        let looping = map(&[("var_dir", "$queue_dir"), ("queue_dir", "$var_dir")]);
        let e = expand(&Inputs {
            layout: &looping,
            ..inputs
        })
        .unwrap_err();
        assert_eq!(e.len(), 2);
    }

    #[test]
    fn abspath_normalises() {
        assert_eq!(
            abspath(Path::new("/c"), "a/../b/./d//e"),
            PathBuf::from("/c/b/d/e")
        );
        assert_eq!(abspath(Path::new("/c"), "/x/.."), PathBuf::from("/"));
    }

    #[test]
    fn finds_the_python_behind_mailman() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("venv/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("python3"), "").unwrap();
        std::fs::write(
            bin.join("mailman"),
            format!("#!{}/python3\nimport x\n", bin.display()),
        )
        .unwrap();
        let other = dir.path().join("other");
        std::fs::create_dir_all(&other).unwrap();
        // A non-Python `mailman` (ours) earlier on PATH is passed over.
        std::fs::write(other.join("mailman"), "\u{7f}ELF").unwrap();
        let path = std::env::join_paths([&other, &bin]).unwrap();
        assert_eq!(python_bin_dir(Some(&path)), Some(bin.display().to_string()));
        std::fs::write(bin.join("mailman"), "#!/usr/bin/env python3\n").unwrap();
        assert_eq!(python_bin_dir(Some(&path)), Some(bin.display().to_string()));
        assert_eq!(python_bin_dir(Some(other.as_os_str())), None);
    }
}
