//! Signals as events: each handled signal sets a flag and writes a byte to a
//! self-pipe, so an event loop can `poll` the pipe next to its other fds and
//! sleep until something happens (no periodic wake-up).
//!
//! Used by the master and by the built-in runner. Handlers come from
//! `signal-hook`, which, unlike `ctrlc`, tells SIGHUP from SIGTERM and handles
//! SIGUSR1 and SIGCHLD.

use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub struct SignalPipe {
    read: UnixStream,
    /// The write end every handler writes its byte to (one fd for all).
    _write: UnixStream,
    flags: Vec<(i32, Arc<AtomicBool>)>,
}

impl SignalPipe {
    /// Installs handlers for `signals`. As PID 1 this must come first: the
    /// kernel drops a signal that has no handler there.
    pub fn install(signals: &[i32]) -> io::Result<SignalPipe> {
        let (read, write) = UnixStream::pair()?;
        read.set_nonblocking(true)?;
        write.set_nonblocking(true)?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&write);
        let mut flags = Vec::with_capacity(signals.len());
        for &sig in signals {
            let flag = Arc::new(AtomicBool::new(false));
            let set = Arc::clone(&flag);
            // The flag first, then the byte: whoever wakes on the byte finds
            // the flag already set. A full pipe (a byte already waits) is
            // fine: the reader takes every flag at once.
            // SAFETY: the action only stores to an atomic and calls write(2),
            // both async-signal-safe; the fd lives as long as the handlers
            // (the SignalPipe, which the master keeps to its end).
            unsafe {
                signal_hook::low_level::register(sig, move || {
                    set.store(true, Ordering::SeqCst);
                    libc::write(fd, b"s".as_ptr().cast(), 1);
                })?;
            }
            flags.push((sig, flag));
        }
        Ok(SignalPipe {
            read,
            _write: write,
            flags,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }

    /// Returns the signals that arrived since the last call, in the order
    /// they were installed, and empties the pipe if `drain` (`poll` found
    /// it readable: the flags are what counts, the pipe only wakes `poll`,
    /// so a turn woken by something else spares a `read`). Repeats of one
    /// signal merge, as the kernel merges them anyway.
    pub fn take(&self, drain: bool) -> Vec<i32> {
        let mut buf = [0u8; 256];
        if drain {
            while matches!((&self.read).read(&mut buf), Ok(n) if n == buf.len()) {}
        }
        self.flags
            .iter()
            .filter(|(_, f)| f.swap(false, Ordering::AcqRel))
            .map(|(s, _)| *s)
            .collect()
    }
}

/// Signals whose default action ends a process without a core dump and that
/// mean nothing to a master: caught (and logged) so that a stray one does
/// not end it silently, leaving its pid file and socket behind.
pub const TERMINATING_OTHERS: &[i32] = &[
    libc::SIGUSR2,
    libc::SIGALRM,
    libc::SIGVTALRM,
    libc::SIGPROF,
    libc::SIGIO,
    libc::SIGXCPU,
    libc::SIGXFSZ,
    #[cfg(target_os = "linux")]
    libc::SIGPWR,
    #[cfg(target_os = "linux")]
    libc::SIGSTKFLT,
];

/// A signal's name as Mailman's log lines print it.
pub fn name(sig: i32) -> String {
    #[cfg(target_os = "linux")]
    if (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&sig) {
        return format!("SIGRTMIN+{}", sig - libc::SIGRTMIN());
    }
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {sig}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

    fn readable(pipe: &SignalPipe) -> bool {
        let mut fds = [PollFd::new(pipe.fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::ZERO).unwrap() == 1
    }

    /// A turn that `poll` woke for something else leaves the pipe alone but
    /// still takes a signal that arrived meanwhile; its byte wakes the next.
    #[test]
    fn signals_are_taken_by_their_flags_and_the_pipe_drained_when_asked() {
        // SIGWINCH: ignored by default, used by no other test.
        let pipe = SignalPipe::install(&[libc::SIGWINCH]).unwrap();
        assert!(!readable(&pipe));
        // SAFETY: raising a signal that has a handler installed above.
        unsafe { libc::raise(libc::SIGWINCH) };
        assert_eq!(pipe.take(false), vec![libc::SIGWINCH]);
        assert!(readable(&pipe), "the byte is left for the next poll");
        assert_eq!(pipe.take(true), Vec::<i32>::new());
        assert!(!readable(&pipe), "drained");
        // SAFETY: as above.
        unsafe { libc::raise(libc::SIGWINCH) };
        assert_eq!(pipe.take(true), vec![libc::SIGWINCH]);
        assert!(!readable(&pipe));
    }
}
