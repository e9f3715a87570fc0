//! The preload helper's side of the wire: its program (`helper.py`) and
//! how it is started, the socket pair, the requests sent to it and the
//! answers it gives (the format is in `helper.py`'s opening comment).
//!
//! Not here: what the master does with an answer, or when it asks (`mod.rs`).

use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessage, MsgFlags};

use crate::master::spawn::{self, Environment};

/// The helper's code, handed over in its environment (not left in a file):
/// its code cache's, then its own.
const SCRIPT: &str = concat!(include_str!("code_cache.py"), include_str!("helper.py"));
/// The helper's code cache, in the var dir (`code_cache.py`).
const CODE_CACHE: &str = "preload.cache";
const SCRIPT_ENV: &str = "MAILMAN_PRELOAD_SCRIPT";
/// Set (to 1) when the helper offers its memory to same-page merging
/// (`merge_pages`); the helper takes it out of its environment.
const MERGE_ENV: &str = "MAILMAN_PRELOAD_MERGE";
/// Set when the helper is to make what it loaded immortal
/// (`immortal_objects`); the helper takes it out of its environment.
const IMMORTAL_ENV: &str = "MAILMAN_PRELOAD_IMMORTAL";

/// What the configuration asks of the helper beside preloading.
#[derive(Debug, Clone, Copy)]
pub(super) struct HelperOptions {
    /// `merge_pages`.
    pub merge_pages: bool,
    /// `immortal_objects`.
    pub immortal_objects: bool,
}

/// The helper's command line: its script comes from the environment.
const BOOT: &str = "import os; exec(os.environ.pop('MAILMAN_PRELOAD_SCRIPT'))";

/// How the master sends to the helper: never waiting (a helper that does
/// not read is one that hangs; the timeouts deal with it). A helper gone
/// is EPIPE, not a signal: the master ignores SIGPIPE.
pub(super) const SEND: MsgFlags = MsgFlags::MSG_DONTWAIT;

/// Sends request `id` to the helper on `sock`: `argv` run with `env`
/// added, with `fds` (stdin, stdout, stderr, and a slice lock if any).
pub(super) fn send_request(
    sock: RawFd,
    id: u64,
    argv: &[String],
    env: &indexmap::IndexMap<String, String>,
    fds: &[RawFd],
) -> std::io::Result<()> {
    let request = serde_json::json!({ "id": id, "argv": argv, "env": env });
    let bytes = request.to_string().into_bytes();
    nix::sys::socket::sendmsg::<()>(
        sock,
        &[IoSlice::new(&bytes)],
        &[ControlMessage::ScmRights(fds)],
        SEND,
        None,
    )?;
    Ok(())
}

/// One answer from the helper.
pub(super) enum Answer {
    Ready,
    Forked { id: u64, pid: i32 },
    Failed { id: u64, text: String },
}

pub(super) fn parse(datagram: &[u8]) -> Option<Answer> {
    let text = std::str::from_utf8(datagram).ok()?;
    if text == "ready" {
        return Some(Answer::Ready);
    }
    let (id, rest) = text.split_once(' ')?;
    let id = id.parse().ok()?;
    match rest.strip_prefix("error ") {
        Some(text) => Some(Answer::Failed {
            id,
            text: text.to_string(),
        }),
        None => Some(Answer::Forked {
            id,
            pid: rest.parse().ok().filter(|p| *p > 1)?,
        }),
    }
}

/// Starts `python` on the helper's script, with Mailman's runners'
/// environment; returns it and the master's end of its socket.
pub(super) fn spawn_helper(
    ctx: &spawn::SpawnContext,
    python: &std::path::Path,
    cfg: &std::path::Path,
    options: HelperOptions,
) -> std::io::Result<(spawn::Spawned, OwnedFd)> {
    let (ours, theirs) = socket_pair()?;
    let argv = [
        python.to_string_lossy().into_owned(),
        "-c".into(),
        BOOT.into(),
        theirs.as_raw_fd().to_string(),
        ctx.master_pid.to_string(),
        cfg.to_string_lossy().into_owned(),
        ctx.var_dir.join(CODE_CACHE).to_string_lossy().into_owned(),
    ];
    let mut env = indexmap::IndexMap::new();
    env.insert(SCRIPT_ENV.to_string(), SCRIPT.to_string());
    if options.merge_pages {
        // Before Linux 6.7 the master's setting does not cross `execve`.
        env.insert(MERGE_ENV.to_string(), "1".to_string());
    }
    if options.immortal_objects {
        env.insert(IMMORTAL_ENV.to_string(), "1".to_string());
    }
    let sp = spawn::start(
        ctx,
        &argv,
        Environment::Mailman { env: &env },
        Some(theirs.as_raw_fd()),
    )?;
    Ok((sp, ours))
}

/// A datagram socket pair, both ends close-on-exec, the master's end
/// non-blocking.
#[cfg(target_os = "linux")]
fn socket_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    nix::fcntl::fcntl(
        &ours,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    Ok((ours, theirs))
}

#[cfg(not(target_os = "linux"))]
fn socket_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "preloading runners needs Linux",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_strictly() {
        assert!(matches!(parse(b"ready"), Some(Answer::Ready)));
        assert!(matches!(
            parse(b"7 1234"),
            Some(Answer::Forked { id: 7, pid: 1234 })
        ));
        assert!(matches!(
            parse(b"7 error fork: no memory"),
            Some(Answer::Failed { id: 7, .. })
        ));
        for bad in [&b"7"[..], b"x 12", b"7 1", b"7 -5", b"7 12x", b"\xff"] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
    }
}
