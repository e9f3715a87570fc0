//! What Rust's runtime would do before `main`, done by us (issue 19): the
//! binary's entry point is the C `main` (`#![no_main]` in `main.rs`), so
//! that a command that lives a millisecond does not pay for what it never
//! uses. Std's start-up also sets up a handler to report stack overflows
//! (a signal stack, SIGSEGV and SIGBUS handlers, and a read of
//! `/proc/self/maps` to find the main thread's stack) and names the main
//! thread: 17 of the 35 system calls of `mailman --version`, one of them
//! a read of `/proc/self/maps`. On an empty program the difference was
//! 0.17 ms of 1.59 (BENCHMARKS.md); on ours it was within the noise. A
//! stack overflow is now the plain SIGSEGV it is in C (a SIGSEGV or SIGBUS
//! *sent* ends any of our processes at once, which the master and the
//! built-in runner had to restore by hand before); a panic, which aborts,
//! names the main thread `<unnamed>`.
//!
//! Kept, as std has them: the command line (taken from `main`'s own
//! `argv`: std reads it in its start-up on musl, which we skip), SIGPIPE
//! ignored (so a closed pipe is an `EPIPE` error; children get it back at
//! its default), and standard descriptors that are closed opened on
//! `/dev/null`, so that no file we open later lands on 0, 1 or 2. Standard
//! output is flushed at exit by `std::process::exit`, as it is after a
//! `main` that returns.
//!
//! Not here: the master's signal handlers (`signals`, `master`).

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

/// The command line, from C `main`'s arguments.
///
/// # Safety
/// `argv` holds `argc` pointers to NUL-terminated strings that live as
/// long as the process (what C's `main` is given).
pub unsafe fn args(argc: libc::c_int, argv: *const *const libc::c_char) -> Vec<OsString> {
    (0..usize::try_from(argc).unwrap_or(0))
        .map(|i| {
            // SAFETY: `i < argc`, and each of those pointers is a
            // NUL-terminated string (the caller's promise).
            let arg = unsafe { std::ffi::CStr::from_ptr(*argv.add(i)) };
            OsString::from_vec(arg.to_bytes().to_vec())
        })
        .collect()
}

/// Std's start-up, the parts we rely on. Call first of all, before any
/// thread exists.
pub fn init() {
    // SAFETY: plain system calls on fds 0 to 2 and one disposition, made
    // before any other thread exists; nothing is borrowed.
    unsafe {
        let mut fds = [0, 1, 2].map(|fd| libc::pollfd {
            fd,
            events: 0,
            revents: 0,
        });
        while libc::poll(fds.as_mut_ptr(), 3, 0) < 0 {
            if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                // As std does where `poll` is refused: each one by `fcntl`.
                for p in &mut fds {
                    if libc::fcntl(p.fd, libc::F_GETFD) < 0 {
                        p.revents = libc::POLLNVAL;
                    }
                }
                break;
            }
        }
        for p in fds {
            if p.revents & libc::POLLNVAL != 0
                && libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) < 0
            {
                // Std aborts here too: a process that cannot open
                // /dev/null in place of a standard descriptor cannot
                // promise where its output goes.
                libc::abort();
            }
        }
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

#[cfg(test)]
mod tests {
    /// Every argument, bytes as they are (not UTF-8 ones included).
    #[test]
    fn the_command_line_is_argv() {
        let owned = [c"mailman", c"-C", c"/etc/m\xffil.toml", c"status"];
        let argv: Vec<*const libc::c_char> = owned.iter().map(|a| a.as_ptr()).collect();
        // SAFETY: four pointers to NUL-terminated strings that outlive the call.
        let args = unsafe { super::args(4, argv.as_ptr()) };
        let bytes: Vec<&[u8]> = args.iter().map(|a| a.as_encoded_bytes()).collect();
        assert_eq!(
            bytes,
            [&b"mailman"[..], b"-C", b"/etc/m\xffil.toml", b"status"]
        );
        // SAFETY: no pointer is read.
        assert!(unsafe { super::args(0, argv.as_ptr()) }.is_empty());
    }
}
