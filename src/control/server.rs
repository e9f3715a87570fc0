//! The master's side of the control socket: binding it (mode 0600),
//! accepting clients (peer uid checked), reading requests and writing
//! answers without ever waiting on a client.
//!
//! What no client can do: hold the loop (every read and write is
//! non-blocking; an answer the client has not taken waits in its buffer,
//! and none of its further requests is read until it has), grow memory (a
//! request is at most [`MAX_REQUEST`] bytes, one answer is kept per client,
//! at most [`MAX_CLIENTS`] clients), or keep others out (when every place is
//! taken, the client idle longest makes room; a `stop` waiting for the
//! master's end keeps its place).

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::{Request, Response};

/// Longest request line accepted.
const MAX_REQUEST: usize = 64 * 1024;
/// Clients kept at once; a new one makes room (see the module's text).
const MAX_CLIENTS: usize = 64;

/// One connected client.
pub struct Client {
    stream: UnixStream,
    /// What it sent that is not handled yet.
    buf: Vec<u8>,
    /// Its answer, written up to `written`.
    out: Vec<u8>,
    written: usize,
    /// When it connected or last sent a request: the longest idle makes room.
    active: Instant,
    /// Kept open until the master has stopped (a `stop` request).
    pub waits_for_stop: bool,
}

impl Client {
    fn new(stream: UnixStream) -> Client {
        Client {
            stream,
            buf: Vec::new(),
            out: Vec::new(),
            written: 0,
            active: Instant::now(),
            waits_for_stop: false,
        }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    /// Whether to wait for room to write rather than for a request: its
    /// answer is not all written, or its next request is already in (it is
    /// handled once an answer can go out).
    pub fn wants_to_write(&self) -> bool {
        self.written < self.out.len() || self.buf.contains(&b'\n')
    }

    /// For a ready client: writes what is left of its answer, then, once it
    /// is all out, returns its next whole request (reading if none is in).
    /// `Ok(None)`: nothing to do yet; an error: the client is gone or
    /// misbehaves (drop it).
    pub fn next_request(&mut self) -> Result<Option<Request>, String> {
        self.flush()?;
        if self.written < self.out.len() {
            return Ok(None);
        }
        if !self.buf.contains(&b'\n') {
            match self.read_more() {
                Ok(0) => return Err("closed".into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(None),
                Err(e) => return Err(e.to_string()),
            }
        }
        let Some(nl) = self.buf.iter().position(|&b| b == b'\n') else {
            if self.buf.len() > MAX_REQUEST {
                self.reply(&Response::error("request too long"));
                return Err("request too long".into());
            }
            return Ok(None);
        };
        let line: Vec<u8> = self.buf.drain(..=nl).collect();
        self.active = Instant::now();
        match serde_json::from_slice::<Request>(&line) {
            Ok(r) => Ok(Some(r)),
            Err(e) => {
                self.reply(&Response::error(format!("bad request: {e}")));
                Ok(None)
            }
        }
    }

    /// Whether the client has said all it will (it closed its side: a
    /// `status`) and has its answers, all written: then it can go now.
    /// One read, which keeps whatever else the client sent.
    pub fn finished(&mut self) -> bool {
        if self.waits_for_stop || self.written < self.out.len() || self.buf.contains(&b'\n') {
            return false;
        }
        matches!(self.read_more(), Ok(0))
    }

    /// One read, added to what the client sent; `Ok(0)`: it closed its side.
    fn read_more(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Queues one response line and writes what the socket takes now; the
    /// rest goes out as the client reads (`next_request`).
    pub fn reply(&mut self, response: &Response) {
        let mut line = serde_json::to_vec(response).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
        line.push(b'\n');
        if self.written == self.out.len() {
            self.out = line;
            self.written = 0;
        } else {
            self.out.extend_from_slice(&line);
        }
        // An error shows again at the next write, which drops the client.
        let _ = self.flush();
    }

    /// Writes without waiting; `Ok` with some left when the socket is full.
    fn flush(&mut self) -> Result<(), String> {
        while self.written < self.out.len() {
            match self.stream.write(&self.out[self.written..]) {
                Ok(0) => return Err("closed".into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        // All out: a large answer's memory goes now, not at the next one.
        self.out = Vec::new();
        self.written = 0;
        Ok(())
    }
}

/// The client idle longest that may be closed to make room (not a `stop`
/// waiting for the master's end).
fn idle_longest(clients: &[Client]) -> Option<usize> {
    (0..clients.len())
        .filter(|&i| !clients[i].waits_for_stop)
        .min_by_key(|&i| clients[i].active)
}

/// What [`Server::accept`] did.
#[derive(Debug, Default)]
pub struct Accepted {
    /// Out of descriptors with no client to close.
    pub ran_out: bool,
    /// A client was added.
    pub any: bool,
}

/// The master's listening socket.
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
    uid: u32,
}

impl Server {
    /// Binds the socket at `path`, replacing whatever a dead master left
    /// there (the caller holds the lock, so nothing live is replaced).
    pub fn bind(path: &Path) -> anyhow::Result<Server> {
        let path = path.to_path_buf();
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => anyhow::bail!(
                "cannot remove {}: {}",
                path.display(),
                crate::util::io_text(&e)
            ),
        }
        // 0600 from the start: no window in which others may connect.
        let (short, _dir) = super::reachable(&path).map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {}: {}",
                path.display(),
                crate::util::io_text(&e)
            )
        })?;
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(&short);
        nix::sys::stat::umask(old);
        let listener = bound.map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {}: {}",
                path.display(),
                crate::util::io_text(&e)
            )
        })?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(|e| {
            anyhow::anyhow!(
                "cannot chmod {}: {}",
                path.display(),
                crate::util::io_text(&e)
            )
        })?;
        listener.set_nonblocking(true)?;
        Ok(Server {
            listener,
            path,
            uid: nix::unistd::geteuid().as_raw(),
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    /// Accepts every waiting connection. Clients of another user (not root)
    /// are answered with an error and dropped. Out of descriptors, the
    /// client idle longest is closed to make room; `ran_out` if there was
    /// none to close (the listener should rest: [`super::AcceptPause`]).
    pub fn accept(&self, clients: &mut Vec<Client>) -> Accepted {
        let mut accepted = Accepted::default();
        loop {
            let stream = match accept_nonblocking(&self.listener) {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if super::out_of_room(&e) => match idle_longest(clients) {
                    Some(i) => {
                        drop(clients.swap_remove(i));
                        continue;
                    }
                    None => {
                        accepted.ran_out = true;
                        return accepted;
                    }
                },
                Err(_) => return accepted,
            };
            let mut client = Client::new(stream);
            match peer_uid(&client.stream) {
                Some(uid) if uid == self.uid || uid == 0 => {}
                other => {
                    tracing::warn!(
                        "control socket: refused a client of uid {}",
                        other.map_or(-1, |u| u as i64)
                    );
                    client.reply(&Response::error("permission denied: not the master's user"));
                    continue;
                }
            }
            if clients.len() >= MAX_CLIENTS {
                // Room is made by the client idle longest, never by a `stop`
                // waiting for the master's end: a client that holds many
                // places cannot keep `stop` or `status` out.
                match idle_longest(clients) {
                    Some(i) => drop(clients.swap_remove(i)),
                    None => {
                        client.reply(&Response::error("busy: too many control connections"));
                        continue;
                    }
                }
            }
            clients.push(client);
            accepted.any = true;
        }
    }

    /// Removes the socket file (the master is exiting and still holds the
    /// lock, so the file is ours).
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A connection, non-blocking from the start: even a refusal never waits.
/// On Linux in the same system call as it is accepted.
#[cfg(target_os = "linux")]
fn accept_nonblocking(listener: &UnixListener) -> io::Result<UnixStream> {
    use nix::sys::socket::{SockFlag, accept4};
    use std::os::fd::{AsRawFd, FromRawFd};
    let fd = accept4(
        listener.as_raw_fd(),
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
    )?;
    // SAFETY: `accept4` has just returned this descriptor; nothing else
    // owns it.
    Ok(unsafe { UnixStream::from_raw_fd(fd) })
}

#[cfg(not(target_os = "linux"))]
fn accept_nonblocking(listener: &UnixListener) -> io::Result<UnixStream> {
    let (stream, _) = listener.accept()?;
    stream.set_nonblocking(true)?;
    Ok(stream)
}

#[cfg(target_os = "linux")]
fn peer_uid(stream: &UnixStream) -> Option<u32> {
    nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .ok()
        .map(|c| c.uid())
}

#[cfg(not(target_os = "linux"))]
fn peer_uid(stream: &UnixStream) -> Option<u32> {
    nix::unistd::getpeereid(stream)
        .ok()
        .map(|(uid, _)| uid.as_raw())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::control::{Answer, ask, socket_path};

    #[test]
    fn server_answers_and_removes_a_stale_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(socket_path(dir.path()), "stale").unwrap();
        let server = Server::bind(&socket_path(dir.path())).unwrap();
        let mode = std::fs::metadata(socket_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let path = socket_path(dir.path());
        let client =
            std::thread::spawn(move || ask(&path, &Request::Status, Duration::from_secs(5)));
        let mut clients = Vec::new();
        while clients.is_empty() {
            server.accept(&mut clients);
            std::thread::sleep(Duration::from_millis(5));
        }
        let request = loop {
            if let Some(r) = clients[0].next_request().unwrap() {
                break r;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(request, Request::Status);
        clients[0].reply(&Response::error("just testing"));
        match client.join().unwrap().unwrap() {
            Answer::Reply(r, _) => assert_eq!(r.error.as_deref(), Some("just testing")),
            Answer::NoSocket => panic!("no socket"),
        }
        server.remove();
        assert!(matches!(
            ask(
                &socket_path(dir.path()),
                &Request::Status,
                Duration::from_secs(1)
            )
            .unwrap(),
            Answer::NoSocket
        ));
    }

    /// A client that closed its side once it asked (`status`) is finished
    /// once answered; one that did not, or that asks again, is not, and
    /// what it sent meanwhile is kept; nor is a `stop` waiting for the end.
    #[test]
    fn a_client_that_asked_its_last_is_finished_once_answered() {
        use std::io::Write;
        use std::net::Shutdown;
        let pair = || {
            let (ours, theirs) = UnixStream::pair().unwrap();
            ours.set_nonblocking(true).unwrap();
            (Client::new(ours), theirs)
        };
        let health = b"{\"command\":\"health\"}\n";
        let ask = |c: &mut Client| loop {
            if let Some(r) = c.next_request().unwrap() {
                c.reply(&Response::ok());
                break r;
            }
        };
        // Asked, then closed its side: finished, answered.
        let (mut c, mut them) = pair();
        them.write_all(health).unwrap();
        them.shutdown(Shutdown::Write).unwrap();
        assert_eq!(ask(&mut c), Request::Health);
        assert!(c.finished());
        drop(c);
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut them, &mut answer).unwrap();
        assert_eq!(answer, "{\"ok\":true}\n");
        // Still connected: not finished, and asks again.
        let (mut c, mut them) = pair();
        them.write_all(health).unwrap();
        ask(&mut c);
        assert!(!c.finished());
        them.write_all(b"{\"command\":\"status\"}\n").unwrap();
        assert!(!c.finished(), "it asked again");
        assert_eq!(ask(&mut c), Request::Status);
        // A stop waiting for the end is never finished this way.
        let (mut c, mut them) = pair();
        them.write_all(b"{\"command\":\"stop\"}\n").unwrap();
        them.shutdown(Shutdown::Write).unwrap();
        assert_eq!(ask(&mut c), Request::Stop);
        c.waits_for_stop = true;
        assert!(!c.finished());
    }
}
