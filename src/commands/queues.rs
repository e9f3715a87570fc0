//! The queue commands: `inject` (enqueue from files or stdin) and `queues`
//! (how many entries wait in each queue).
//!
//! Not here: the queue format itself (`queue`).

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::config::Config;
use crate::exit::{EXIT_ERROR, EXIT_USAGE};
use crate::queue;
use crate::util::io_text;

/// `mailman inject QUEUE [FILE]...`: one entry per file (`-` or none: stdin),
/// each name printed as it is written. Stops at the first error.
pub fn inject(config: &Config, queue_name: &str, files: &[PathBuf]) -> i32 {
    match config.runner(queue_name) {
        Some(r) if r.has_queue() => {}
        Some(_) => {
            eprintln!("No such queue: {queue_name} (the {queue_name} runner has no queue)");
            return EXIT_USAGE;
        }
        None => {
            eprintln!("No such queue: {queue_name}");
            return EXIT_USAGE;
        }
    }
    let dir = config.layout().queue_dir().join(queue_name);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!(
            "cannot create queue directory {}: {}",
            dir.display(),
            io_text(&e)
        );
        return EXIT_ERROR;
    }
    let stdin_only = [PathBuf::from("-")];
    let files = if files.is_empty() {
        &stdin_only[..]
    } else {
        files
    };
    for file in files {
        match inject_one(&dir, file) {
            Ok(name) => {
                // Each name as soon as its entry is in; a closed stdout
                // is reported, not a panic (the entry stays in the queue).
                let mut out = io::stdout().lock();
                if let Err(e) = writeln!(out, "{name}").and_then(|()| out.flush()) {
                    eprintln!(
                        "entry {name} is queued, but its name cannot be printed: {}",
                        io_text(&e)
                    );
                    return EXIT_ERROR;
                }
            }
            Err(e) => {
                eprintln!("{e:#}");
                return EXIT_ERROR;
            }
        }
    }
    0
}

fn inject_one(dir: &Path, file: &Path) -> anyhow::Result<String> {
    if file.as_os_str() == "-" {
        return queue::enqueue(dir, &mut io::stdin().lock(), "standard input");
    }
    // Opened before anything is written, so an unreadable file leaves no trace.
    let mut source: Box<dyn Read> = match File::open(file) {
        Ok(f) => Box::new(f),
        Err(e) => anyhow::bail!("cannot read {}: {}", file.display(), io_text(&e)),
    };
    queue::enqueue(dir, &mut source, &file.display().to_string())
}

/// `mailman queues [--json]`: each queue's waiting and in-hand entries.
pub fn queues(config: &Config, as_json: bool) -> i32 {
    let root = config.layout().queue_dir();
    // A var dir that does not exist is a mistake (a typo, the wrong
    // configuration), not a set of empty queues.
    let var = &config.mailman.var_dir;
    if let Err(e) = std::fs::metadata(var) {
        eprintln!(
            "cannot read the queues: var dir {}: {}",
            var.display(),
            io_text(&e)
        );
        return EXIT_ERROR;
    }
    let mut rows = Vec::new();
    for r in config.runners.iter().filter(|r| r.has_queue()) {
        match queue::scan::scan(&root.join(&r.name), r.instances) {
            Ok(d) => rows.push((r.name.as_str(), d)),
            Err(e) => {
                eprintln!(
                    "cannot read {}: {}",
                    root.join(&r.name).display(),
                    io_text(&e)
                );
                return EXIT_ERROR;
            }
        }
    }
    let mut text = String::new();
    if as_json {
        let queues: Vec<_> = rows
            .iter()
            .map(|(name, d)| {
                let slices: Vec<_> = d
                    .slices
                    .iter()
                    .map(|(n, oldest)| json!({"waiting": n, "oldest_secs": oldest}))
                    .collect();
                json!({
                    "name": name,
                    "waiting": d.waiting,
                    "in_hand": d.in_hand,
                    "oldest_secs": d.oldest_secs,
                    "slices": slices,
                })
            })
            .collect();
        text = json!({"queue_dir": root.display().to_string(), "queues": queues}).to_string();
        text.push('\n');
    } else {
        text.push_str(&format!(
            "{:<12} {:>8} {:>8}\n",
            "QUEUE", "WAITING", "IN HAND"
        ));
        for (name, d) in rows {
            text.push_str(&format!("{name:<12} {:>8} {:>8}\n", d.waiting, d.in_hand));
        }
    }
    if let Err(e) = io::stdout().lock().write_all(text.as_bytes()) {
        eprintln!("cannot print the queues: {}", io_text(&e));
        return EXIT_ERROR;
    }
    0
}
