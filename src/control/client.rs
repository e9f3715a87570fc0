//! The CLI's side of the control socket: one request, one answer, and
//! (for `stop`) waiting until the master closes the connection.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Request, Response};

/// What a client learns by asking.
#[derive(Debug)]
pub enum Answer {
    /// There is no socket, or nobody listens on it (a dead master's file).
    NoSocket,
    Reply(Box<Response>, UnixStream),
}

/// Sends one request and reads the one-line response.
pub fn ask(path: &Path, request: &Request, timeout: Duration) -> io::Result<Answer> {
    match send(path, request, timeout)? {
        Some(pending) => pending.answer(),
        None => Ok(Answer::NoSocket),
    }
}

/// A request sent, its answer not read yet.
pub struct Pending {
    stream: UnixStream,
    /// Why the request was not all written, if it was not.
    unsent: Option<io::Error>,
    path: PathBuf,
    timeout: Duration,
}

/// Sends one request without waiting for its answer, so that the caller
/// can work meanwhile (`status` checks the rest of its configuration file
/// while the master answers). `None`: there is no socket, or nobody
/// listens on it.
pub fn send(path: &Path, request: &Request, timeout: Duration) -> io::Result<Option<Pending>> {
    // Kept open until connected (a long path goes through /proc/self/fd).
    let (short, _dir) = match super::reachable(path) {
        Ok(p) => p,
        Err(_) => return Ok(None), // the checked signal path, then
    };
    let stream = match UnixStream::connect(&short) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("{}: {}", path.display(), crate::util::io_text(&e)),
            ));
        }
    };
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_string(request).map_err(io::Error::other)?;
    line.push('\n');
    let mut pending = Pending {
        stream,
        unsent: None,
        path: path.to_path_buf(),
        timeout,
    };
    // A master that turned the connection away (it answers, then closes)
    // may have closed before the request was all written: its answer is
    // read all the same, and the write's error said only if there is none.
    match pending.stream.write_all(line.as_bytes()) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => pending.unsent = Some(e),
        Err(e) => return Err(pending.slow(e)),
    }
    Ok(Some(pending))
}

impl Pending {
    /// Says that nothing more will be asked on this connection (a half
    /// close): the master then lets it go as it answers, in the same turn,
    /// rather than when this process exits. Never for a `stop`, whose
    /// connection the master closes only once stopped.
    pub fn done_asking(self) -> Pending {
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        self
    }

    /// Reads the one-line response.
    pub fn answer(mut self) -> io::Result<Answer> {
        let mut reply = String::new();
        let read = BufReader::new(&self.stream).read_line(&mut reply);
        if reply.is_empty()
            && let Some(e) = self.unsent.take()
        {
            return Err(self.slow(e));
        }
        read.map_err(|e| self.slow(e))?;
        if reply.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the master closed the control socket without answering",
            ));
        }
        let response = serde_json::from_str(&reply)
            .map_err(|e| io::Error::other(format!("bad answer from the master: {e}")))?;
        Ok(Answer::Reply(Box::new(response), self.stream))
    }

    /// A master that does not answer in time is said so in words, not as
    /// "Resource temporarily unavailable (os error 11)".
    fn slow(&self, e: io::Error) -> io::Error {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the master did not answer on {} within {} s",
                    self.path.display(),
                    self.timeout.as_secs()
                ),
            ),
            _ => e,
        }
    }
}

/// Waits until the master closes the connection (it does once a stop is
/// complete), or `timeout` passes. Returns whether it was closed.
pub fn wait_closed(mut stream: UnixStream, timeout: Duration) -> bool {
    if stream.set_read_timeout(Some(timeout)).is_err() {
        return false;
    }
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}
