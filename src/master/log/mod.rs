//! The master's log: `tracing` events formatted as Mailman formats them
//! (`Nov 24 20:17:31 2026 (PID) message`) or as JSON lines, and handed to a
//! writer thread of our own (`writer`) for `logs/mailman.log`, stderr, or
//! both. Nothing here ever makes the master wait: see `writer` for what
//! happens when the disk or a reader of stderr is slow.
//!
//! Runner output does not go through `tracing`: a read of a runner's pipe
//! brings hundreds of lines, and an event each (the formatting machinery, an
//! allocation, a message on the channel and a free on the writer thread per
//! line) cost more than the rest of the capture together. Its lines are
//! formatted into one message per read ([`RunnerLines`], `master::output`),
//! exactly as an event with `runner`, `slice`, `pid` and `stream` fields
//! would be.

mod writer;

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::OnceLock;
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
    let sink = Sink {
        tx: tx.clone(),
        shared: Arc::clone(&shared),
        level,
        json: cfg.format == LogFormat::Json,
    };
    SINK.set(sink)
        .map_err(|_| anyhow::anyhow!("cannot set up logging: it is set up already"))?;
    let Some(sink) = SINK.get() else {
        anyhow::bail!("cannot set up logging: no sink");
    };
    let subscriber = tracing_subscriber::registry().with(LineLayer { sink });
    tracing::subscriber::set_global_default(subscriber)
        .map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))?;
    Ok(LogHandle { tx, shared, wake })
}

/// Where lines go, and which: for the `tracing` layer and [`RunnerLines`].
struct Sink {
    tx: Sender<Msg>,
    shared: Arc<Shared>,
    level: Level,
    json: bool,
}

/// Set once, by [`init`]; before it, nothing is logged (as `tracing` without
/// a subscriber).
static SINK: OnceLock<Sink> = OnceLock::new();

impl Sink {
    /// `lines` formatted lines of one kind (0: the master's own, 1: a
    /// runner's stdout, 2: its stderr) to the writer.
    fn send(&self, text: Vec<u8>, lines: usize, kind: usize) {
        self.shared.lines[kind].fetch_add(lines as u64, Ordering::Relaxed);
        let runner = kind != 0;
        if runner {
            self.shared.queued.fetch_add(lines, Ordering::AcqRel);
        }
        let msg = Msg::Line {
            text,
            lines,
            runner,
        };
        if self.tx.send(msg).is_err() && runner {
            self.shared.queued.fetch_sub(lines, Ordering::AcqRel);
        }
    }
}

struct LineLayer {
    sink: &'static Sink,
}

/// What a line says besides its message and time.
struct Head<'a> {
    level: Level,
    pid: u64,
    runner: Option<&'a str>,
    slice: Option<u64>,
    stream: Option<&'a str>,
}

impl Head<'_> {
    /// The line for `message` at `now`, as JSON or as Mailman writes it,
    /// appended to `out`.
    fn format(&self, out: &mut String, json: bool, now: SystemTime, message: &str) {
        let pid = self.pid;
        if json {
            let mut obj = serde_json::Map::new();
            obj.insert("time".into(), rfc3339(now).into());
            obj.insert("level".into(), self.level.as_str().to_lowercase().into());
            obj.insert("pid".into(), pid.into());
            if let Some(r) = self.runner {
                obj.insert("runner".into(), r.into());
            }
            if let Some(s) = self.slice {
                obj.insert("slice".into(), s.into());
            }
            if let Some(s) = self.stream {
                obj.insert("stream".into(), s.into());
            }
            obj.insert("message".into(), message.into());
            let _ = writeln!(out, "{}", serde_json::Value::Object(obj));
            return;
        }
        // The time stamp is formatted once a second.
        push_log_time(out, now);
        let _ = match (self.runner, self.slice) {
            (Some(r), Some(s)) => writeln!(out, " ({pid}) [{r}:{s}] {message}"),
            (Some(r), None) => writeln!(out, " ({pid}) [{r}] {message}"),
            _ => writeln!(out, " ({pid}) {message}"),
        };
    }
}

/// A runner's lines from one read of its pipe (or `init`'s, a job's, the
/// preload helper's), formatted into one message for the writer: what an
/// event per line with `runner`, `slice`, `pid` and `stream` fields gave,
/// at info level (debug if `quiet`), one time stamp for all of them.
pub struct RunnerLines<'a> {
    sink: &'static Sink,
    head: Head<'a>,
    now: SystemTime,
    /// The plain format's start of every line, formatted once.
    prefix: String,
    text: Vec<u8>,
    lines: usize,
    kind: usize,
}

impl<'a> RunnerLines<'a> {
    /// `None`: the log is not set up, or its level leaves these lines out.
    /// `bytes`: about how much output is to come.
    pub fn new(
        runner: &'a str,
        slice: Option<u32>,
        pid: i32,
        stream: &'a str,
        quiet: bool,
        bytes: usize,
    ) -> Option<RunnerLines<'a>> {
        let sink = SINK.get()?;
        let level = if quiet { Level::DEBUG } else { Level::INFO };
        if level > sink.level {
            return None;
        }
        let head = Head {
            level,
            pid: pid.max(0) as u64,
            runner: Some(runner),
            slice: slice.map(u64::from),
            stream: Some(stream),
        };
        let now = SystemTime::now();
        let mut prefix = String::new();
        if !sink.json {
            head.format(&mut prefix, false, now, "");
            prefix.pop();
        }
        Some(RunnerLines {
            sink,
            head,
            now,
            prefix,
            // A 100-byte line takes about 150 in the log.
            text: Vec::with_capacity(bytes + bytes / 2 + 128),
            lines: 0,
            kind: if stream == "stdout" { 1 } else { 2 },
        })
    }

    /// One line, without its newline (bytes that are not UTF-8 are
    /// replaced).
    pub fn push(&mut self, line: &[u8]) {
        let message = String::from_utf8_lossy(line);
        if self.sink.json {
            let mut one = String::new();
            self.head.format(&mut one, true, self.now, &message);
            self.text.extend_from_slice(one.as_bytes());
        } else {
            self.text.extend_from_slice(self.prefix.as_bytes());
            self.text.extend_from_slice(message.as_bytes());
            self.text.push(b'\n');
        }
        self.lines += 1;
    }

    /// The lines to the writer.
    pub fn send(self) {
        if self.lines > 0 {
            self.sink.send(self.text, self.lines, self.kind);
        }
    }
}

/// An event's message (the master's own events have no other field the log
/// shows).
#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
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

impl<S: Subscriber> Layer<S> for LineLayer {
    fn enabled(&self, meta: &tracing::Metadata<'_>, _: Context<'_, S>) -> bool {
        *meta.level() <= self.sink.level
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut m = Message::default();
        event.record(&mut m);
        let head = Head {
            level: *event.metadata().level(),
            pid: std::process::id() as u64,
            runner: None,
            slice: None,
            stream: None,
        };
        let mut text = String::with_capacity(m.0.len() + 64);
        head.format(&mut text, self.sink.json, SystemTime::now(), &m.0);
        self.sink.send(text.into_bytes(), 1, 0);
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
