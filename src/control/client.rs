//! The CLI's side of the control socket: one request, one answer, and
//! (for `stop`) waiting until the master closes the connection.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
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
    // Kept open until connected (a long path goes through /proc/self/fd).
    let (short, _dir) = match super::reachable(path) {
        Ok(p) => p,
        Err(_) => return Ok(Answer::NoSocket), // the checked signal path, then
    };
    let mut stream = match UnixStream::connect(&short) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(Answer::NoSocket);
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
    // A master that does not answer in time is said so in words, not as
    // "Resource temporarily unavailable (os error 11)".
    let slow = |e: io::Error| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the master did not answer on {} within {} s",
                path.display(),
                timeout.as_secs()
            ),
        ),
        _ => e,
    };
    // A master that turned the connection away (it answers, then closes)
    // may have closed before the request was all written: its answer is
    // read all the same, and the write's error said only if there is none.
    let sent = match stream.write_all(line.as_bytes()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => return Err(slow(e)),
        sent => sent,
    };
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut reply = String::new();
    let read = reader.read_line(&mut reply);
    if reply.is_empty()
        && let Err(e) = sent
    {
        return Err(slow(e));
    }
    read.map_err(slow)?;
    if reply.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the master closed the control socket without answering",
        ));
    }
    let response = serde_json::from_str(&reply)
        .map_err(|e| io::Error::other(format!("bad answer from the master: {e}")))?;
    Ok(Answer::Reply(Box::new(response), stream))
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
