//! The control channel (SPEC 3.7): a Unix socket `$var_dir/master.sock`
//! (mode 0600, peer credentials checked) that speaks one JSON object per line.
//!
//! Request → response:
//!
//! | request | response |
//! |---|---|
//! | `{"command":"status"}` | `{"ok":true,"status":{…}}` (see [`StatusReport`]) |
//! | `{"command":"stop"}` | `{"ok":true}`; the connection then stays open until the runners are gone |
//! | `{"command":"restart"}` | `{"ok":true}` (every runner, as SIGUSR1) |
//! | `{"command":"restart","runner":"in"}` / `…,"slice":1}` | `{"ok":true}`, or `{"ok":false,"error":"…"}` |
//! | `{"command":"reopen"}` | `{"ok":true}` (as SIGHUP) |
//!
//! It works across PID namespaces (a host shell against a container's
//! bind-mounted var dir), where the pid in the pid file means nothing.
//!
//! This module holds the protocol types, the client, and the server's socket
//! handling; what a request does is `master`'s business.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Longest request line accepted.
const MAX_REQUEST: usize = 64 * 1024;
/// Clients served at once; more are turned away.
const MAX_CLIENTS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "lowercase")]
pub enum Request {
    Status,
    Stop,
    Reopen,
    Restart {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        runner: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        slice: Option<u32>,
    },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<StatusReport>,
}

impl Response {
    pub fn ok() -> Response {
        Response {
            ok: true,
            ..Default::default()
        }
    }
    pub fn error(text: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(text.into()),
            status: None,
        }
    }
}

/// `status --json`: the master and every runner slice.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    pub master: MasterStatus,
    pub runners: Vec<SliceStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MasterStatus {
    pub pid: i32,
    pub version: String,
    pub uptime_secs: f64,
    /// `running` or `stopping`.
    pub state: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SliceStatus {
    pub name: String,
    pub slice: u32,
    pub range: u32,
    /// `running`, `backing-off`, `failed` or `stopped`.
    pub state: String,
    pub pid: Option<i32>,
    /// Counted exits since the runner last ran stably (what `max_restarts`
    /// is compared with).
    pub restarts: u32,
    /// Counted exits in all.
    pub total_restarts: u32,
    pub last_exit: Option<LastExit>,
    pub uptime_secs: Option<f64>,
    /// While backing off: seconds until the next start.
    pub restart_in_secs: Option<f64>,
    pub rss_bytes: Option<u64>,
    pub cpu_secs: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LastExit {
    Exit(i32),
    Signal(i32),
}

pub fn socket_path(var_dir: &Path) -> PathBuf {
    var_dir.join("master.sock")
}

// ---------------------------------------------------------------- client

/// What a client learns by asking.
#[derive(Debug)]
pub enum Answer {
    /// There is no socket, or nobody listens on it (a dead master's file).
    NoSocket,
    Reply(Response, UnixStream),
}

/// Sends one request and reads the one-line response.
pub fn ask(var_dir: &Path, request: &Request, timeout: Duration) -> io::Result<Answer> {
    let path = socket_path(var_dir);
    let mut stream = match UnixStream::connect(&path) {
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
    stream.write_all(line.as_bytes())?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut reply = String::new();
    reader.read_line(&mut reply)?;
    if reply.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the master closed the control socket without answering",
        ));
    }
    let response = serde_json::from_str(&reply)
        .map_err(|e| io::Error::other(format!("bad answer from the master: {e}")))?;
    Ok(Answer::Reply(response, stream))
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

// ---------------------------------------------------------------- server

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
    /// Binds `$var_dir/master.sock`, replacing whatever a dead master left
    /// there (the caller holds the lock, so nothing live is replaced).
    pub fn bind(var_dir: &Path) -> anyhow::Result<Server> {
        let path = socket_path(var_dir);
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
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(&path);
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

    #[test]
    fn requests_are_one_json_object() {
        let r: Request =
            serde_json::from_str(r#"{"command":"restart","runner":"in","slice":1}"#).unwrap();
        assert_eq!(
            r,
            Request::Restart {
                runner: Some("in".into()),
                slice: Some(1)
            }
        );
        assert_eq!(
            serde_json::to_string(&Request::Stop).unwrap(),
            r#"{"command":"stop"}"#
        );
        assert_eq!(
            serde_json::to_string(&Request::Restart {
                runner: None,
                slice: None
            })
            .unwrap(),
            r#"{"command":"restart"}"#
        );
        assert!(serde_json::from_str::<Request>(r#"{"command":"explode"}"#).is_err());
    }

    #[test]
    fn server_answers_and_removes_a_stale_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(socket_path(dir.path()), "stale").unwrap();
        let server = Server::bind(dir.path()).unwrap();
        let mode = std::fs::metadata(socket_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let path = dir.path().to_path_buf();
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
            ask(dir.path(), &Request::Status, Duration::from_secs(1)).unwrap(),
            Answer::NoSocket
        ));
    }
}
