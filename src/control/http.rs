//! The master's HTTP endpoint (docs/observability.md): a non-blocking TCP
//! listener whose clients are polled by the event loop like the control
//! socket's. It reads one request per connection (parsed by `httparse`),
//! says which [`Route`] it asks for, writes the answer the master gives
//! without waiting, and closes.
//!
//! What no client can do: hold the loop (every read and write is
//! non-blocking), grow memory (a request is at most [`MAX_REQUEST`] bytes,
//! at most [`MAX_CLIENTS`] connections are kept, the oldest unfinished one
//! making room for a new one), or keep a connection (each has
//! [`DEADLINE`] to send its request and take its answer).
//!
//! Not here: what the answers say (`master::metrics`, `master::requests`).

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

/// Largest request head accepted (the request line and headers).
pub const MAX_REQUEST: usize = 8 * 1024;
/// Connections kept at once.
pub const MAX_CLIENTS: usize = 32;
/// How long a connection may take, from accept to the last byte written.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /metrics`; `openmetrics`: the scraper's `Accept` asks for it.
    Metrics {
        openmetrics: bool,
    },
    Livez,
    Readyz,
    NotFound,
    /// Not `GET` or `HEAD`.
    MethodNotAllowed,
    /// Not HTTP, or a head larger than [`MAX_REQUEST`].
    Bad {
        too_large: bool,
    },
}

/// An answer to write.
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn text(status: u16, body: impl Into<String>) -> Answer {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into().into_bytes(),
        }
    }
}

/// The listening socket and its connections.
pub struct Http {
    listener: TcpListener,
    clients: Vec<Conn>,
    /// The address actually bound (a port 0 is chosen by the kernel).
    pub local: std::net::SocketAddr,
}

struct Conn {
    stream: TcpStream,
    since: Instant,
    /// The request as read so far; then, the answer still to write.
    buf: Vec<u8>,
    /// Bytes of `buf` written, once answering.
    written: usize,
    answering: bool,
    head_only: bool,
}

impl Http {
    /// Binds `addr` (`HOST:PORT`; the host may be a name, resolved here).
    pub fn bind(addr: &str) -> anyhow::Result<Http> {
        let addrs: Vec<_> = addr
            .to_socket_addrs()
            .map_err(|e| anyhow::anyhow!("[http] listen = \"{addr}\": {e}"))?
            .collect();
        let listener = TcpListener::bind(&addrs[..]).map_err(|e| {
            anyhow::anyhow!(
                "[http] listen = \"{addr}\": cannot listen: {}",
                crate::util::io_text(&e)
            )
        })?;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        Ok(Http {
            listener,
            clients: Vec::new(),
            local,
        })
    }

    pub fn listener_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    /// Each connection's fd and whether it waits to write (else to read).
    pub fn client_fds(&self) -> impl Iterator<Item = (BorrowedFd<'_>, bool)> {
        self.clients.iter().map(|c| (c.stream.as_fd(), c.answering))
    }

    /// When the oldest connection runs out of time (`None`: none open, so
    /// an idle master never wakes for this).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.clients.iter().map(|c| c.since + DEADLINE).min()
    }

    /// One turn: new connections, then the ready ones (by index into
    /// [`Http::client_fds`] as polled); `answer` is called once per whole
    /// request. Connections done or out of time are closed. Returns `true`
    /// if accepting ran out of descriptors (the listener should rest:
    /// [`super::AcceptPause`]).
    pub fn turn(
        &mut self,
        listener: bool,
        ready: &[usize],
        now: Instant,
        answer: &mut dyn FnMut(Route) -> Answer,
    ) -> bool {
        for &i in ready {
            let Some(c) = self.clients.get_mut(i) else {
                continue;
            };
            if c.answering {
                c.write();
            } else if let Some(route) = c.read() {
                let a = answer(route);
                c.answer(&a);
            }
        }
        self.clients
            .retain(|c| !c.done() && now.saturating_duration_since(c.since) < DEADLINE);
        listener && self.accept(now)
    }

    /// The connection open longest.
    fn oldest(&self) -> Option<usize> {
        (0..self.clients.len()).min_by_key(|&i| self.clients[i].since)
    }

    /// Accepts every waiting connection; `true` if it ran out (see `turn`).
    fn accept(&mut self, now: Instant) -> bool {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Out of descriptors: closing a connection for room would
                // only close one that came a moment before (each lasts at
                // most DEADLINE); the listener rests.
                Err(e) if super::out_of_room(&e) => return true,
                // WouldBlock: none left.
                Err(_) => return false,
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            if self.clients.len() >= MAX_CLIENTS {
                // Room is made by the oldest connection: a slow client
                // holding many cannot keep a scraper out.
                if let Some(i) = self.oldest() {
                    self.clients.swap_remove(i);
                }
            }
            self.clients.push(Conn {
                stream,
                since: now,
                buf: Vec::new(),
                written: 0,
                answering: false,
                head_only: false,
            });
        }
    }
}

impl Conn {
    /// Reads what arrived; the route once the head is whole.
    fn read(&mut self) -> Option<Route> {
        let mut chunk = [0u8; 2048];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    // Gone before a whole request: nothing to answer.
                    self.answering = true;
                    self.buf.clear();
                    self.written = 0;
                    return None;
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    if self.buf.len() > MAX_REQUEST {
                        return Some(Route::Bad { too_large: true });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.answering = true;
                    self.buf.clear();
                    return None;
                }
            }
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&self.buf) {
            Ok(httparse::Status::Partial) => None,
            Err(httparse::Error::TooManyHeaders) => Some(Route::Bad { too_large: true }),
            Err(_) => Some(Route::Bad { too_large: false }),
            Ok(httparse::Status::Complete(_)) => {
                let method = req.method.unwrap_or("");
                self.head_only = method == "HEAD";
                if method != "GET" && method != "HEAD" {
                    return Some(Route::MethodNotAllowed);
                }
                let path = req.path.unwrap_or("");
                let path = path.split_once('?').map_or(path, |(p, _)| p);
                Some(match path {
                    "/metrics" => Route::Metrics {
                        openmetrics: req.headers.iter().any(|h| {
                            h.name.eq_ignore_ascii_case("accept")
                                && String::from_utf8_lossy(h.value)
                                    .contains("application/openmetrics-text")
                        }),
                    },
                    "/livez" => Route::Livez,
                    "/readyz" => Route::Readyz,
                    _ => Route::NotFound,
                })
            }
        }
    }

    fn answer(&mut self, a: &Answer) {
        let reason = match a.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            431 => "Request Header Fields Too Large",
            503 => "Service Unavailable",
            _ => "",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n",
            a.status,
            a.content_type,
            a.body.len(),
            if a.status == 405 { "Allow: GET, HEAD\r\n" } else { "" },
        )
        .into_bytes();
        if !self.head_only {
            out.extend_from_slice(&a.body);
        }
        self.buf = out;
        self.written = 0;
        self.answering = true;
        self.write();
    }

    /// Writes what the socket takes now.
    fn write(&mut self) {
        while self.written < self.buf.len() {
            match self.stream.write(&self.buf[self.written..]) {
                Ok(0) => break,
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.written = self.buf.len();
                }
            }
        }
    }

    fn done(&self) -> bool {
        self.answering && self.written >= self.buf.len()
    }
}
