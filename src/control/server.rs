//! The master's side of the control socket: binding it (mode 0600),
//! accepting clients (peer uid checked), reading requests without blocking
//! and writing answers with a bound.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Request, Response};

/// Longest request line accepted.
const MAX_REQUEST: usize = 64 * 1024;
/// Clients served at once; more are turned away.
const MAX_CLIENTS: usize = 64;

/// One connected client.
pub struct Client {
    stream: UnixStream,
    buf: Vec<u8>,
    /// Kept open until the master has stopped (a `stop` request).
    pub waits_for_stop: bool,
}

impl Client {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    /// Reads what arrived. Returns the request once a whole line is in,
    /// `Ok(None)` if more is needed, and an error when the client is gone or
    /// misbehaves (drop it).
    pub fn read_request(&mut self) -> Result<Option<Request>, String> {
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk) {
            Ok(0) => return Err("closed".into()),
            Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(None),
            Err(e) => return Err(e.to_string()),
        }
        let Some(nl) = self.buf.iter().position(|&b| b == b'\n') else {
            if self.buf.len() > MAX_REQUEST {
                self.reply(&Response::error("request too long"));
                return Err("request too long".into());
            }
            return Ok(None);
        };
        let line: Vec<u8> = self.buf.drain(..=nl).collect();
        match serde_json::from_slice::<Request>(&line) {
            Ok(r) => Ok(Some(r)),
            Err(e) => {
                self.reply(&Response::error(format!("bad request: {e}")));
                Ok(None)
            }
        }
    }

    /// Writes one response line (blocking, bounded by a timeout: a client
    /// that does not read is dropped rather than stalling the master).
    pub fn reply(&mut self, response: &Response) {
        let mut line = serde_json::to_string(response).unwrap_or_else(|_| "{\"ok\":false}".into());
        line.push('\n');
        let _ = self.stream.set_nonblocking(false);
        let _ = self.stream.set_write_timeout(Some(Duration::from_secs(2)));
        let _ = self.stream.write_all(line.as_bytes());
        let _ = self.stream.set_nonblocking(true);
    }
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
    /// are answered with an error and dropped.
    pub fn accept(&self, clients: &mut Vec<Client>) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            let mut client = Client {
                stream,
                buf: Vec::new(),
                waits_for_stop: false,
            };
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
            if clients.len() >= MAX_CLIENTS || client.stream.set_nonblocking(true).is_err() {
                client.reply(&Response::error("busy: too many control connections"));
                continue;
            }
            clients.push(client);
        }
    }

    /// Removes the socket file (the master is exiting and still holds the
    /// lock, so the file is ours).
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
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
            if let Some(r) = clients[0].read_request().unwrap() {
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
}
