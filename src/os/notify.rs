//! systemd's readiness protocol (`sd_notify`) without libsystemd: datagrams
//! like `READY=1` sent to the socket `$NOTIFY_SOCKET` names (a path, or an
//! abstract name written with a leading `@`). Silent when it is not set.

use std::os::unix::net::UnixDatagram;

pub struct Notifier {
    socket: Option<(UnixDatagram, String)>,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        let socket = std::env::var("NOTIFY_SOCKET")
            .ok()
            .filter(|s| !s.is_empty())
            .and_then(|target| UnixDatagram::unbound().ok().map(|d| (d, target)));
        Notifier { socket }
    }

    /// Sends newline-separated `KEY=VALUE` assignments; failures are logged
    /// once and otherwise ignored (systemd is an observer, not a dependency).
    pub fn send(&self, state: &str) {
        let Some((socket, target)) = &self.socket else {
            return;
        };
        let sent = match target.strip_prefix('@') {
            #[cfg(target_os = "linux")]
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                    .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
            }
            #[cfg(not(target_os = "linux"))]
            Some(_) => Err(std::io::Error::other("abstract sockets need Linux")),
            None => socket.send_to(state.as_bytes(), target),
        };
        if let Err(e) = sent {
            tracing::warn!("cannot notify systemd at {target}: {e}");
        }
    }
}
