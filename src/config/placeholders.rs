//! The placeholders a runner's `command` and `handler` may use (`{bin}`,
//! `{config}`, `{var_dir}`, `{name}`, `{slice}`, `{range}`), and filling
//! them in.

use std::path::Path;

/// The placeholders a runner's `command` and `handler` may use, with their
/// values.
pub fn placeholders(
    bin: &Path,
    config: &Path,
    var_dir: &Path,
    name: &str,
    slice: u32,
    range: u32,
) -> Vec<(&'static str, String)> {
    vec![
        ("bin", bin.to_string_lossy().into_owned()),
        ("config", config.to_string_lossy().into_owned()),
        ("var_dir", var_dir.to_string_lossy().into_owned()),
        ("name", name.to_string()),
        ("slice", slice.to_string()),
        ("range", range.to_string()),
    ]
}

/// `template` with each `{key}` of `values` replaced.
pub fn fill(template: &[String], values: &[(&str, String)]) -> Vec<String> {
    template
        .iter()
        .map(|arg| {
            values.iter().fold(arg.clone(), |acc, (key, value)| {
                acc.replace(&format!("{{{key}}}"), value)
            })
        })
        .collect()
}
