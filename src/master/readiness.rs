//! Whether a runner that serves TCP is ready: Mailman's LMTP and REST
//! runners (their addresses come from `mailman.cfg`), or any runner with
//! `ready_tcp`. After such a runner starts, the master tries a
//! non-blocking connect to its address from the event loop, every
//! [`PROBE_INTERVAL`], until one succeeds; until then the runner counts as
//! starting (`status`, `status --check`, `status --json`). Wake-ups happen
//! only while some runner is not ready.
//!
//! Not here: what "ready" means to `status` (`slice::Slice::problem`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrStorage, sockopt};
use tracing::{info, warn};

use super::Master;
use super::slice::State;

/// Time between two attempts.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(200);
/// How long one connect may take before it is given up and tried again.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// One connect under way.
pub(super) struct Probe {
    idx: usize,
    pid: i32,
    sock: OwnedFd,
    since: Instant,
}

impl Probe {
    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

/// `HOST:PORT` as a runner listens on it, as an address to connect to: a
/// wildcard host is this host (`0.0.0.0`, `::` or empty), `localhost` is
/// the loopback address, other names are looked up (at start-up, before
/// the event loop runs). `None` if it cannot be resolved.
pub fn resolve(text: &str) -> Option<SocketAddr> {
    let (host, port) = text.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip = match host {
        "" | "0.0.0.0" | "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        "::" => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => match other.parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) => return (other, port).to_socket_addrs().ok()?.next(),
        },
    };
    Some(SocketAddr::new(ip, port))
}

/// Starts a non-blocking connect to `addr`. `Ok(None)`: connected at once.
fn connect(addr: SocketAddr) -> nix::Result<Option<OwnedFd>> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let sock = socket::socket(family, SockType::Stream, SockFlag::empty(), None)?;
    let flags = nix::fcntl::fcntl(&sock, nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&sock, nix::fcntl::FcntlArg::F_SETFL(flags))?;
    nix::fcntl::fcntl(
        &sock,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )?;
    use std::os::fd::AsRawFd;
    match socket::connect(sock.as_raw_fd(), &SockaddrStorage::from(addr)) {
        Ok(()) => Ok(None),
        Err(Errno::EINPROGRESS) => Ok(Some(sock)),
        Err(e) => Err(e),
    }
}

impl Master {
    /// A runner just started: ready at once, or once its address accepts.
    pub(super) fn expect_ready(&mut self, idx: usize, now: Instant) {
        let s = &mut self.slices[idx];
        s.ready = s.ready_addr.is_none();
        s.probe_at = s.ready_addr.map(|_| now + PROBE_INTERVAL);
        self.probes.retain(|p| p.idx != idx);
    }

    /// The probes due at `now` are started.
    pub(super) fn start_probes(&mut self, now: Instant) {
        for idx in 0..self.slices.len() {
            let s = &mut self.slices[idx];
            let (Some(addr), Some(at), State::Running { pid, .. }) =
                (s.ready_addr, s.probe_at, s.state)
            else {
                continue;
            };
            if at > now || s.ready {
                continue;
            }
            s.probe_at = None;
            match connect(addr) {
                Ok(None) => self.now_ready(idx, addr),
                Ok(Some(sock)) => self.probes.push(Probe {
                    idx,
                    pid,
                    sock,
                    since: now,
                }),
                Err(_) => self.slices[idx].probe_at = Some(now + PROBE_INTERVAL),
            }
        }
        // Connects that hang (a filtered port) are tried again.
        let mut i = 0;
        while i < self.probes.len() {
            if now.saturating_duration_since(self.probes[i].since) >= PROBE_TIMEOUT {
                let p = self.probes.swap_remove(i);
                self.slices[p.idx].probe_at = Some(now + PROBE_INTERVAL);
            } else {
                i += 1;
            }
        }
    }

    /// `poll` says these connects have finished (indices into `probes`).
    pub(super) fn finish_probes(&mut self, done: &[usize]) {
        let now = Instant::now();
        let mut finished: Vec<Probe> = Vec::new();
        for &i in done.iter().rev() {
            finished.push(self.probes.swap_remove(i));
        }
        for p in finished {
            let s = &self.slices[p.idx];
            if s.pid() != Some(p.pid) {
                continue; // that runner is gone; its successor has its own
            }
            let connected = socket::getsockopt(&p.sock, sockopt::SocketError) == Ok(0);
            match s.ready_addr {
                Some(addr) if connected => self.now_ready(p.idx, addr),
                _ => self.slices[p.idx].probe_at = Some(now + PROBE_INTERVAL),
            }
        }
    }

    fn now_ready(&mut self, idx: usize, addr: SocketAddr) {
        let s = &mut self.slices[idx];
        s.ready = true;
        s.probe_at = None;
        info!(
            "Runner {} is ready: it accepts connections on {addr}",
            s.spec()
        );
    }

    /// When the oldest connect under way times out (the probes due are
    /// among the slices' timers: `event_loop`).
    pub(super) fn hanging_probe(&self) -> Option<Instant> {
        self.probes.iter().map(|p| p.since + PROBE_TIMEOUT).min()
    }
}

/// Resolves every slice's `ready_tcp` once, at start-up.
pub(super) fn resolve_all(slices: &mut [super::slice::Slice]) {
    for s in slices {
        let Some(text) = s.runner.ready_tcp.clone() else {
            continue;
        };
        s.ready_addr = resolve(&text);
        if s.ready_addr.is_none() {
            warn!(
                "Runner {}: cannot resolve ready_tcp {text}; its readiness is not checked",
                s.spec()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_are_this_host() {
        assert_eq!(
            resolve("0.0.0.0:8024"),
            Some("127.0.0.1:8024".parse().unwrap())
        );
        assert_eq!(
            resolve("localhost:8001"),
            Some("127.0.0.1:8001".parse().unwrap())
        );
        assert_eq!(resolve("[::]:25"), Some("[::1]:25".parse().unwrap()));
        assert_eq!(resolve("10.0.0.1:25"), Some("10.0.0.1:25".parse().unwrap()));
        assert_eq!(resolve("nope"), None);
    }

    #[test]
    fn connects_without_blocking() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // Either connected at once or under way; never an error.
        assert!(connect(addr).is_ok());
        drop(listener);
        // Nobody listens: refused at once, or an error once polled.
        if let Ok(Some(sock)) = connect(addr) {
            let mut fds = [nix::poll::PollFd::new(
                sock.as_fd(),
                nix::poll::PollFlags::POLLOUT,
            )];
            nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(1000u16)).unwrap();
            assert_ne!(socket::getsockopt(&sock, sockopt::SocketError), Ok(0));
        }
    }
}
