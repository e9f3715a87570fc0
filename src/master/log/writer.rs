//! The log's writer thread: lines arrive on a channel, in batches go to the
//! log file (every line; the thread may wait on the disk, the master never
//! does) and to stderr (never waited on: what a stalled reader of stderr, a
//! full pipe, a terminal paused with Ctrl-S, cannot take is dropped from
//! stderr only, and counted, and a line says so once stderr takes lines
//! again).
//!
//! Runner output is counted while queued: the master stops reading a
//! runner's pipe while [`HIGH_WATER`] lines wait, so that a runner writing
//! faster than the disk is slowed by its own full pipe, not by the master,
//! and the queue stays bounded; the thread wakes the master (a byte on a
//! pipe) when the queue has drained below [`LOW_WATER`].

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, FromRawFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};

use crate::util::io_text;

/// Runner lines queued at which the master stops reading runner pipes.
pub const HIGH_WATER: usize = 4096;
/// Queued runner lines below which it reads them again.
pub const LOW_WATER: usize = 1024;
/// Bytes gathered before a write even with more lines queued.
const BATCH: usize = 64 * 1024;

pub enum Msg {
    /// `lines` formatted lines; `runner`: counted against [`HIGH_WATER`].
    Line {
        text: Vec<u8>,
        lines: usize,
        runner: bool,
    },
    /// Open the log file again by path (logrotate).
    Reopen,
    /// Write what is queued, then answer.
    Flush(SyncSender<()>),
}

/// What the master and the thread share.
pub struct Shared {
    /// Runner lines sent and not yet written.
    pub queued: AtomicUsize,
    /// The master is waiting for room (it polls the wake pipe).
    pub waiting: AtomicBool,
    /// Lines logged: the master's own, runners' stdout, runners' stderr.
    pub lines: [AtomicU64; 3],
    /// Lines stderr did not take (see [`Writer`]); the file has them.
    pub dropped: AtomicU64,
}

pub fn open_log(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Stderr for the thread, written without waiting: a description of its
/// own (reopened through /proc, so that the non-blocking flag is not the
/// terminal's or the pipe's shared one), else fd 2 itself made non-blocking
/// (a socket: the journal), else fd 2 as it is.
fn stderr_sink() -> File {
    let reopened = OpenOptions::new()
        .append(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/proc/self/fd/2");
    if let Ok(f) = reopened {
        return f;
    }
    // SAFETY: fd 2 is open for the life of the process; the dup is ours.
    let dup = unsafe { libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 3) };
    if dup < 0 {
        // SAFETY: as above; a closed fd 2 only makes writes fail.
        return unsafe { File::from_raw_fd(libc::dup(2)) };
    }
    // SAFETY: `dup` is a fresh fd we own.
    let f = unsafe { File::from_raw_fd(dup) };
    if let Ok(flags) = nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_GETFL) {
        let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        let _ = nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_SETFL(flags));
    }
    f
}

pub struct Writer {
    pub file: Option<(PathBuf, File)>,
    stderr: Option<File>,
    /// Lines stderr could not take since it last took one.
    dropped: usize,
    /// Lines stderr could not take, in all.
    dropped_total: u64,
    /// The last write to stderr ended inside a line.
    torn: bool,
    batch: Vec<u8>,
    lines: usize,
    runner_lines: usize,
}

impl Writer {
    pub fn new(file: Option<(PathBuf, File)>, stderr: bool) -> Writer {
        Writer {
            file,
            stderr: stderr.then(stderr_sink),
            dropped: 0,
            dropped_total: 0,
            torn: false,
            batch: Vec::with_capacity(BATCH),
            lines: 0,
            runner_lines: 0,
        }
    }

    /// The thread's life: until every sender is gone and the queue is empty.
    pub fn run(mut self, rx: Receiver<Msg>, shared: Arc<Shared>, wake: UnixStream) {
        while let Ok(msg) = rx.recv() {
            self.take(msg);
            while self.batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(msg) => self.take(msg),
                    Err(_) => break,
                }
            }
            self.write_batch();
            shared.dropped.store(self.dropped_total, Ordering::Relaxed);
            let left =
                shared.queued.fetch_sub(self.runner_lines, Ordering::AcqRel) - self.runner_lines;
            self.runner_lines = 0;
            if left < LOW_WATER && shared.waiting.swap(false, Ordering::AcqRel) {
                let _ = (&wake).write(b"w");
            }
        }
        self.write_batch();
    }

    fn take(&mut self, msg: Msg) {
        match msg {
            Msg::Line {
                text,
                lines,
                runner,
            } => {
                self.batch.extend_from_slice(&text);
                self.lines += lines;
                if runner {
                    self.runner_lines += lines;
                }
            }
            Msg::Reopen => {
                self.write_batch();
                self.reopen();
            }
            Msg::Flush(done) => {
                self.write_batch();
                let _ = done.send(());
            }
        }
    }

    fn reopen(&mut self) {
        let Some((path, _)) = &self.file else {
            return;
        };
        // A deleted directory (`rm -rf logs/`, then logrotate's `reopen`)
        // is made again, as at start, rather than the log going on into a
        // file nobody can see.
        let opened = open_log(path).or_else(|e| match path.parent() {
            Some(dir) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(dir)?;
                open_log(path)
            }
            _ => Err(e),
        });
        match opened {
            Ok(fresh) => {
                let path = path.clone();
                if let Some((_, old)) = &mut self.file {
                    let _ = old.flush();
                }
                self.file = Some((path, fresh));
            }
            Err(e) => {
                let line = format!(
                    "{} ({}) cannot reopen {}: {}\n",
                    crate::util::log_time(std::time::SystemTime::now()),
                    std::process::id(),
                    path.display(),
                    io_text(&e)
                );
                self.batch.extend_from_slice(line.as_bytes());
                self.lines += 1;
            }
        }
    }

    fn write_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        if let Some((_, f)) = &mut self.file {
            let _ = f.write_all(&self.batch);
        }
        if self.stderr.is_some() {
            self.write_stderr();
        }
        self.batch.clear();
        self.lines = 0;
    }

    fn drop_lines(&mut self, n: usize) {
        self.dropped += n;
        self.dropped_total += n as u64;
    }

    /// The batch to stderr, as much as it takes without waiting.
    fn write_stderr(&mut self) {
        let Some(err) = &mut self.stderr else {
            return;
        };
        if self.dropped > 0 {
            let note = format!(
                "{}{} ({}) {} log lines were not written to stderr, which was not being read{}\n",
                if self.torn { "\n" } else { "" },
                crate::util::log_time(std::time::SystemTime::now()),
                std::process::id(),
                self.dropped,
                if self.file.is_some() {
                    "; the log file has them"
                } else {
                    ""
                },
            );
            match err.write(note.as_bytes()) {
                Ok(n) if n == note.len() => {
                    self.dropped = 0;
                    self.torn = false;
                }
                Ok(n) => {
                    // Part of the note went out: the rest of this batch is
                    // dropped too, and the note comes again.
                    self.torn = n > 0 && !note.as_bytes()[..n].ends_with(b"\n");
                    self.drop_lines(self.lines);
                    return;
                }
                Err(_) => {
                    self.drop_lines(self.lines);
                    return;
                }
            }
        }
        let mut rest: &[u8] = &self.batch;
        while !rest.is_empty() {
            match err.write(rest) {
                Ok(0) => break,
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        if rest.is_empty() {
            return;
        }
        // What is left: its whole lines are dropped (and counted); a line
        // cut in the middle is finished by the note's leading newline.
        let whole = rest.iter().filter(|&&b| b == b'\n').count();
        self.torn = rest.len() != self.batch.len()
            && !self.batch[..self.batch.len() - rest.len()].ends_with(b"\n");
        self.drop_lines(whole);
    }
}

/// The master's end of the wake pipe.
pub struct Wake(pub UnixStream);

impl Wake {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
    /// Empties the pipe.
    pub fn drain(&self) {
        use std::io::Read;
        let mut buf = [0u8; 64];
        while matches!((&self.0).read(&mut buf), Ok(n) if n > 0) {}
    }
}

/// A pair of connected sockets for the wake-up, the master's end
/// non-blocking.
pub fn wake_pair() -> io::Result<(Wake, UnixStream)> {
    let (ours, theirs) = UnixStream::pair()?;
    ours.set_nonblocking(true)?;
    Ok((Wake(ours), theirs))
}
