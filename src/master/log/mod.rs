//! The master's log: `tracing` events written through `tracing-appender`'s
//! non-blocking writer to `logs/mailman.log`, to stderr, or both, as Mailman
//! formats them (`Nov 24 20:17:31 2026 (PID) message`) or as JSON lines.
//!
//! tracing-appender has no reopen, so the file sits behind [`ReopenFile`],
//! which swaps in a freshly opened file by path on SIGHUP: logrotate's
//! rename-then-reopen loses and tears no line.
//!
//! Runner output arrives as events with `runner`, `slice`, `pid` and `stream`
//! fields (see `master::output`).

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

use crate::config::{LogFormat, LogLevel, Logging};
use crate::util::{io_text, log_time, rfc3339};

/// Lines queued for the writer thread before the master waits for it.
const QUEUE_LINES: usize = 4096;

/// A log file that can be reopened by path.
pub struct ReopenFile {
    path: PathBuf,
    file: Mutex<File>,
}

fn open_log(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

impl ReopenFile {
    pub fn open(path: &Path) -> anyhow::Result<ReopenFile> {
        let file = open_log(path).map_err(|e| {
            anyhow::anyhow!("cannot open log file {}: {}", path.display(), io_text(&e))
        })?;
        Ok(ReopenFile {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    /// Opens the path again and writes there from now on. Lines already
    /// handed to the old file stay there.
    pub fn reopen(&self) -> io::Result<()> {
        let fresh = open_log(&self.path)?;
        let mut slot = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let _ = slot.flush();
        *slot = fresh;
        Ok(())
    }
}

/// The writer the appender's worker thread owns: the file and/or stderr.
/// Lines are gathered and written together when the worker has drained its
/// queue (it calls `flush` then) or a batch is full: one write(2) for many
/// lines, each batch of whole lines (O_APPEND keeps them whole).
struct Tee {
    file: Option<Arc<ReopenFile>>,
    stderr: bool,
    batch: Vec<u8>,
}

/// Bytes gathered before they are written even with more lines queued.
const BATCH: usize = 64 * 1024;

impl Tee {
    fn write_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        if let Some(f) = &self.file {
            let mut file = f.file.lock().unwrap_or_else(|p| p.into_inner());
            let _ = file.write_all(&self.batch);
        }
        if self.stderr {
            let _ = io::stderr().write_all(&self.batch);
        }
        self.batch.clear();
    }
}

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.batch.extend_from_slice(buf);
        if self.batch.len() >= BATCH {
            self.write_batch();
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.write_batch();
        Ok(())
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        self.write_batch();
    }
}

/// Keeps the log alive; drop it (not `process::exit` past it) to flush.
pub struct LogHandle {
    _guard: WorkerGuard,
    file: Option<Arc<ReopenFile>>,
}

impl LogHandle {
    pub fn reopen(&self) -> io::Result<()> {
        match &self.file {
            Some(f) => f.reopen(),
            None => Ok(()),
        }
    }
}

/// Sets the global subscriber. `file` is the log file to write, if any.
pub fn init(cfg: &Logging, file: Option<&Path>, stderr: bool) -> anyhow::Result<LogHandle> {
    let file = match file {
        Some(p) => Some(Arc::new(ReopenFile::open(p)?)),
        None => None,
    };
    let tee = Tee {
        file: file.clone(),
        stderr,
        batch: Vec::with_capacity(BATCH),
    };
    // Not lossy: a full queue makes the master wait rather than drop lines.
    // The default queue (128,000 lines) is allocated and touched up front:
    // 4 MB of the master's memory for a backlog the writer thread never has.
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(QUEUE_LINES)
        .thread_name("mailman-log")
        .finish(tee);
    let level = match cfg.level {
        LogLevel::Error => Level::ERROR,
        LogLevel::Warn => Level::WARN,
        LogLevel::Info => Level::INFO,
        LogLevel::Debug => Level::DEBUG,
        LogLevel::Trace => Level::TRACE,
    };
    let layer = LineLayer {
        writer,
        level,
        json: cfg.format == LogFormat::Json,
    };
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::set_global_default(subscriber)
        .map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))?;
    Ok(LogHandle {
        _guard: guard,
        file,
    })
}

struct LineLayer {
    writer: NonBlocking,
    level: Level,
    json: bool,
}

#[derive(Default)]
struct Fields {
    message: String,
    runner: Option<String>,
    slice: Option<u64>,
    pid: Option<u64>,
    stream: Option<String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "runner" => self.runner = Some(value.to_string()),
            "stream" => self.stream = Some(value.to_string()),
            "message" => self.message.push_str(value),
            _ => {}
        }
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "slice" => self.slice = Some(value),
            "pid" => self.pid = Some(value),
            _ => {}
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record_u64(field, value.max(0) as u64);
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => {
                let _ = write!(self.message, "{value:?}");
            }
            "runner" => self.runner = Some(format!("{value:?}")),
            "stream" => self.stream = Some(format!("{value:?}")),
            _ => {}
        }
    }
}

impl<S: Subscriber> Layer<S> for LineLayer {
    fn enabled(&self, meta: &tracing::Metadata<'_>, _: Context<'_, S>) -> bool {
        *meta.level() <= self.level
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut f = Fields::default();
        event.record(&mut f);
        let now = SystemTime::now();
        let pid = f.pid.unwrap_or(std::process::id() as u64);
        let line = if self.json {
            let mut obj = serde_json::Map::new();
            obj.insert("time".into(), rfc3339(now).into());
            obj.insert(
                "level".into(),
                event.metadata().level().as_str().to_lowercase().into(),
            );
            obj.insert("pid".into(), pid.into());
            if let Some(r) = &f.runner {
                obj.insert("runner".into(), r.clone().into());
            }
            if let Some(s) = f.slice {
                obj.insert("slice".into(), s.into());
            }
            if let Some(s) = &f.stream {
                obj.insert("stream".into(), s.clone().into());
            }
            obj.insert("message".into(), f.message.into());
            let mut text = serde_json::Value::Object(obj).to_string();
            text.push('\n');
            text
        } else {
            match (&f.runner, f.slice) {
                (Some(r), Some(s)) => {
                    format!("{} ({pid}) [{r}:{s}] {}\n", log_time(now), f.message)
                }
                (Some(r), None) => format!("{} ({pid}) [{r}] {}\n", log_time(now), f.message),
                _ => format!("{} ({pid}) {}\n", log_time(now), f.message),
            }
        };
        let mut w = self.writer.clone();
        let _ = w.write_all(line.as_bytes());
    }
}
