//! The master's log: `tracing` events formatted as Mailman formats them
//! (`Nov 24 20:17:31 2026 (PID) message`) or as JSON lines, and handed to a
//! writer thread of our own (`writer`) for `logs/mailman.log`, stderr, or
//! both. Nothing here ever makes the master wait: see `writer` for what
//! happens when the disk or a reader of stderr is slow.
//!
//! Runner output arrives as events with `runner`, `slice`, `pid` and `stream`
//! fields (see `master::output`).

mod writer;

use std::borrow::Cow;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Sender, channel, sync_channel};
use std::time::{Duration, SystemTime};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

use self::writer::{HIGH_WATER, Msg, Shared, Wake, Writer};
use crate::config::{LogFormat, LogLevel, Logging};
use crate::util::{LogTime, io_text, rfc3339};

/// Keeps the log alive; dropping it writes what is queued (not
/// `process::exit` past it).
pub struct LogHandle {
    tx: Sender<Msg>,
    shared: Arc<Shared>,
    wake: Wake,
}

impl LogHandle {
    /// The log file is opened again by path, by the writer thread.
    pub fn reopen(&self) {
        let _ = self.tx.send(Msg::Reopen);
    }

    /// Whether runner output may be read now: fewer than [`HIGH_WATER`]
    /// runner lines wait to be written. When not, the writer thread makes
    /// [`LogHandle::wake_fd`] readable once they have drained.
    pub fn has_room(&self) -> bool {
        if self.shared.queued.load(Ordering::Acquire) < HIGH_WATER {
            return true;
        }
        self.shared.waiting.store(true, Ordering::Release);
        // It may have drained in between: look again.
        self.shared.queued.load(Ordering::Acquire) < HIGH_WATER
    }

    /// Readable when the writer has made room (poll it while there is none).
    pub fn wake_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.wake.fd()
    }

    pub fn woken(&self) {
        self.wake.drain();
    }

    /// Lines logged so far: the master's own, runners' stdout, runners'
    /// stderr; and the lines stderr did not take.
    pub fn counts(&self) -> ([u64; 3], u64) {
        let l = &self.shared.lines;
        (
            [0, 1, 2].map(|i| l[i].load(Ordering::Relaxed)),
            self.shared.dropped.load(Ordering::Relaxed),
        )
    }
}

impl Drop for LogHandle {
    fn drop(&mut self) {
        let (done, wait) = sync_channel(1);
        if self.tx.send(Msg::Flush(done)).is_ok() {
            // Bounded: a log file on a dead disk must not keep the master
            // from exiting.
            let _ = wait.recv_timeout(Duration::from_secs(5));
        }
    }
}

/// Sets the global subscriber. `file` is the log file to write, if any.
pub fn init(cfg: &Logging, file: Option<&Path>, stderr: bool) -> anyhow::Result<LogHandle> {
    let file = match file {
        Some(p) => Some((
            p.to_path_buf(),
            writer::open_log(p).map_err(|e| {
                anyhow::anyhow!("cannot open log file {}: {}", p.display(), io_text(&e))
            })?,
        )),
        None => None,
    };
    let (tx, rx) = channel();
    let shared = Arc::new(Shared {
        queued: AtomicUsize::new(0),
        waiting: AtomicBool::new(false),
        lines: Default::default(),
        dropped: AtomicU64::new(0),
    });
    let (wake, poke) = writer::wake_pair()
        .map_err(|e| anyhow::anyhow!("cannot set up logging: {}", io_text(&e)))?;
    let w = Writer::new(file, stderr);
    let thread_shared = Arc::clone(&shared);
    std::thread::Builder::new()
        .name("mailman-log".into())
        .spawn(move || w.run(rx, thread_shared, poke))
        .map_err(|e| anyhow::anyhow!("cannot start the log writer: {}", io_text(&e)))?;
    let level = match cfg.level {
        LogLevel::Error => Level::ERROR,
        LogLevel::Warn => Level::WARN,
        LogLevel::Info => Level::INFO,
        LogLevel::Debug => Level::DEBUG,
        LogLevel::Trace => Level::TRACE,
    };
    let layer = LineLayer {
        tx: tx.clone(),
        shared: Arc::clone(&shared),
        level,
        json: cfg.format == LogFormat::Json,
    };
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::set_global_default(subscriber)
        .map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))?;
    Ok(LogHandle { tx, shared, wake })
}

struct LineLayer {
    tx: Sender<Msg>,
    shared: Arc<Shared>,
    level: Level,
    json: bool,
}

#[derive(Default)]
struct Fields {
    message: String,
    runner: Option<String>,
    slice: Option<u64>,
    pid: Option<u64>,
    stream: Option<Cow<'static, str>>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "runner" => self.runner = Some(value.to_string()),
            "stream" => self.stream = Some(stream_name(value)),
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
            "stream" => self.stream = Some(format!("{value:?}").into()),
            _ => {}
        }
    }
}

/// [`LogTime`] of `now` appended to `out`, from this thread's copy of the
/// last second formatted.
fn push_log_time(out: &mut String, now: SystemTime) {
    thread_local! {
        static LAST: std::cell::RefCell<(u64, String)> =
            const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    LAST.with_borrow_mut(|(at, text)| {
        if *at != secs {
            text.clear();
            let _ = write!(text, "{}", LogTime(now));
            *at = secs;
        }
        out.push_str(text);
    });
}

/// A runner's stream by name, without a string of its own for the two
/// there are.
fn stream_name(value: &str) -> Cow<'static, str> {
    match value {
        "stdout" => Cow::Borrowed("stdout"),
        "stderr" => Cow::Borrowed("stderr"),
        other => Cow::Owned(other.to_string()),
    }
}

impl<S: Subscriber> Layer<S> for LineLayer {
    fn enabled(&self, meta: &tracing::Metadata<'_>, _: Context<'_, S>) -> bool {
        *meta.level() <= self.level
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        // Sized for a runner's line at once (it grew four times before).
        let mut f = Fields {
            message: String::with_capacity(160),
            ..Fields::default()
        };
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
            // One allocation for the line; the time stamp is formatted
            // once a second (a runner's lines come thousands a second).
            let mut text = String::with_capacity(f.message.len() + 64);
            push_log_time(&mut text, now);
            let _ = match (&f.runner, f.slice) {
                (Some(r), Some(s)) => writeln!(text, " ({pid}) [{r}:{s}] {}", f.message),
                (Some(r), None) => writeln!(text, " ({pid}) [{r}] {}", f.message),
                _ => writeln!(text, " ({pid}) {}", f.message),
            };
            text
        };
        let runner = f.stream.is_some();
        let kind = match f.stream.as_deref() {
            None => 0,
            Some("stdout") => 1,
            Some(_) => 2,
        };
        self.shared.lines[kind].fetch_add(1, Ordering::Relaxed);
        if runner {
            self.shared.queued.fetch_add(1, Ordering::AcqRel);
        }
        let msg = Msg::Line {
            text: line.into_bytes(),
            runner,
        };
        if self.tx.send(msg).is_err() && runner {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    /// The time stamp kept from the last line is the right one for the next:
    /// the same second again, then the next one, then an earlier one.
    #[test]
    fn a_lines_time_stamp_is_its_own_second() {
        let at = |secs: u64| {
            let mut out = String::from("x");
            super::push_log_time(&mut out, UNIX_EPOCH + Duration::from_secs(secs));
            out
        };
        let t = 1_795_551_451; // Nov 24 20:17:31 2026
        assert_eq!(at(t), "xNov 24 20:17:31 2026");
        assert_eq!(at(t), "xNov 24 20:17:31 2026");
        assert_eq!(at(t + 1), "xNov 24 20:17:32 2026");
        assert_eq!(at(0), "xJan 01 00:00:00 1970");
    }
}
