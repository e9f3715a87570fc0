//! Runner output capture: each runner's stdout and stderr pipe, read without
//! blocking and cut into lines that go to the master's log tagged with the
//! runner's `NAME:SLICE` and pid.
//!
//! A pipe lives until EOF, not until its runner is reaped, so a runner's last
//! words (or a partial last line) are still logged after a restart.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use super::log::RunnerLines;

/// Longest line kept whole; longer ones are logged in pieces (bounding what
/// a line without a newline holds, and each log line).
const MAX_LINE: usize = 16 * 1024;
/// Bytes read from one pipe per wake-up, so that one flooding runner cannot
/// starve the others or the event loop.
const CHUNK: usize = 64 * 1024;

#[derive(Debug, PartialEq, Eq)]
enum Got {
    Data,
    Empty,
    Closed,
}

pub struct Output {
    file: File,
    pub runner: String,
    /// `None` for what is not a runner's slice (`init`).
    pub slice: Option<u32>,
    pub pid: i32,
    pub stream: &'static str,
    /// Logged at debug level rather than info (what nobody needs to read
    /// unless something goes wrong).
    quiet: bool,
    buf: Vec<u8>,
}

impl Output {
    /// `fd`: the master's end of the pipe, non-blocking (`master::spawn`).
    pub fn new(
        fd: OwnedFd,
        runner: &str,
        slice: Option<u32>,
        pid: i32,
        stream: &'static str,
    ) -> Output {
        Output {
            file: File::from(fd),
            runner: runner.to_string(),
            slice,
            pid,
            stream,
            quiet: false,
            buf: Vec::new(),
        }
    }

    /// `self`, logging at debug level.
    pub fn quiet(mut self) -> Output {
        self.quiet = true;
        self
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Reads what is there and logs every complete line. Returns `false` at
    /// end of file (after logging any partial last line).
    pub fn pump(&mut self) -> bool {
        let read = self.read_once();
        self.emit_lines();
        if read == Got::Closed {
            self.flush_partial();
        }
        read != Got::Closed
    }

    /// Reads until the pipe is empty for now (bounded), logging whole lines;
    /// with `to_end`, also logs a partial last line. Used before a runner's
    /// exit is logged and when the master exits. Returns `true` at end of
    /// file (after logging any partial last line): the pipe can be closed.
    pub fn drain(&mut self, to_end: bool) -> bool {
        let mut last = Got::Empty;
        for _ in 0..64 {
            last = self.read_once();
            if last != Got::Data {
                break;
            }
        }
        self.emit_lines();
        if to_end || last == Got::Closed {
            self.flush_partial();
        }
        last == Got::Closed
    }

    fn read_once(&mut self) -> Got {
        let mut chunk = [0u8; CHUNK];
        match self.file.read(&mut chunk) {
            Ok(0) => Got::Closed,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Got::Data
            }
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted =>
            {
                Got::Empty
            }
            Err(_) => Got::Closed,
        }
    }

    fn flush_partial(&mut self) {
        if !self.buf.is_empty() {
            if let Some(mut out) = self.lines_out() {
                for piece in self.buf.chunks(MAX_LINE) {
                    out.push(piece);
                }
                out.send();
            }
            self.buf.clear();
        }
    }

    /// Every whole line in the buffer to the log, in one message (a line
    /// longer than [`MAX_LINE`], and what has grown past it without a
    /// newline, in pieces).
    fn emit_lines(&mut self) {
        let mut out = self.lines_out();
        let mut start = 0;
        while let Some(nl) = memchr::memchr(b'\n', &self.buf[start..]) {
            if let Some(out) = &mut out {
                let line = &self.buf[start..start + nl];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                for piece in line.chunks(MAX_LINE) {
                    out.push(piece);
                }
            }
            start += nl + 1;
        }
        let mut rest = &self.buf[start..];
        while rest.len() >= MAX_LINE {
            if let Some(out) = &mut out {
                out.push(&rest[..MAX_LINE]);
            }
            rest = &rest[MAX_LINE..];
        }
        let used = self.buf.len() - rest.len();
        if let Some(out) = out {
            out.send();
        }
        self.buf.drain(..used);
    }

    fn lines_out(&self) -> Option<RunnerLines<'_>> {
        RunnerLines::new(
            &self.runner,
            self.slice,
            self.pid,
            self.stream,
            self.quiet,
            self.buf.len(),
        )
    }
}

/// Every pipe being read, and (Linux) an epoll set holding them all, so that
/// the event loop's `poll` watches one descriptor for all of them: with
/// 1,000 runners, `poll` over 2,000 pipes cost a millisecond per turn of the
/// loop, each `status` included (issue 19). Where there is no epoll set,
/// each pipe is polled on its own.
pub struct Outputs {
    list: Vec<Output>,
    /// Each pipe's descriptor, as `list` has them: what the set's events
    /// name, looked up without touching each `Output`.
    fds: Vec<RawFd>,
    #[cfg(target_os = "linux")]
    epoll: Option<nix::sys::epoll::Epoll>,
}

impl Outputs {
    pub fn new() -> Outputs {
        #[cfg(target_os = "linux")]
        let epoll = nix::sys::epoll::Epoll::new(nix::sys::epoll::EpollCreateFlags::EPOLL_CLOEXEC)
            .map_err(|e| {
                tracing::warn!("no epoll set for runners' output ({e}): each pipe is polled")
            })
            .ok();
        Outputs {
            list: Vec::new(),
            fds: Vec::new(),
            #[cfg(target_os = "linux")]
            epoll,
        }
    }

    pub fn push(&mut self, o: Output) {
        #[cfg(target_os = "linux")]
        if let Some(ep) = &self.epoll {
            let event = nix::sys::epoll::EpollEvent::new(
                nix::sys::epoll::EpollFlags::EPOLLIN,
                o.fd().as_raw_fd() as u64,
            );
            // A pipe the set cannot take is polled on its own instead.
            if let Err(e) = ep.add(o.fd(), event) {
                tracing::warn!(
                    "epoll cannot watch a pipe of {} ({e}): no epoll set from now",
                    o.runner
                );
                self.epoll = None;
            }
        }
        self.fds.push(o.fd().as_raw_fd());
        self.list.push(o);
    }

    /// The one descriptor to poll for all pipes; `None`: poll each one.
    pub fn set_fd(&self) -> Option<BorrowedFd<'_>> {
        #[cfg(target_os = "linux")]
        if let Some(ep) = &self.epoll {
            return Some(ep.0.as_fd());
        }
        None
    }

    /// Once `set_fd` polled readable: the indices of the pipes with
    /// something to read (or closed), in the order of the list. Usually one
    /// pipe among 2,000 at 1,000 runners: found in `fds` (8 KB), by a
    /// binary search of the few ready.
    pub fn ready(&self) -> Vec<usize> {
        #[cfg(target_os = "linux")]
        if let Some(ep) = &self.epoll {
            let mut events = [nix::sys::epoll::EpollEvent::empty(); 256];
            let n = ep
                .wait(&mut events, nix::sys::epoll::EpollTimeout::ZERO)
                .unwrap_or(0);
            let mut ready: Vec<u64> = events[..n]
                .iter()
                .map(nix::sys::epoll::EpollEvent::data)
                .collect();
            ready.sort_unstable();
            return (self.fds.iter().enumerate())
                .filter(|&(_, &fd)| ready.binary_search(&(fd as u64)).is_ok())
                .map(|(i, _)| i)
                .collect();
        }
        Vec::new()
    }

    pub fn swap_remove(&mut self, i: usize) -> Output {
        // Closing the pipe takes it out of the epoll set (no other
        // descriptor refers to it).
        self.fds.swap_remove(i);
        self.list.swap_remove(i)
    }

    pub fn retain_mut(&mut self, f: impl FnMut(&mut Output) -> bool) {
        let before = self.list.len();
        self.list.retain_mut(f);
        if self.list.len() != before {
            self.fds = self.list.iter().map(|o| o.fd().as_raw_fd()).collect();
        }
    }
}

impl std::ops::Deref for Outputs {
    type Target = [Output];
    fn deref(&self) -> &[Output] {
        &self.list
    }
}

impl std::ops::DerefMut for Outputs {
    fn deref_mut(&mut self) -> &mut [Output] {
        &mut self.list
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::io::Write;

    /// The pipes `ready` names are those with something to read, by their
    /// place in the list, after removals of both kinds too.
    #[test]
    fn ready_names_the_pipes_with_data_by_their_place() {
        let mut outputs = Outputs::new();
        assert!(outputs.set_fd().is_some());
        let mut writers = Vec::new();
        for pid in 0..6 {
            let (r, w) = nix::unistd::pipe().unwrap();
            outputs.push(Output::new(r, "r", Some(0), pid, "stdout"));
            writers.push(File::from(w));
        }
        assert_eq!(outputs.ready(), Vec::<usize>::new());
        for i in [4, 1] {
            writers[i].write_all(b"x\n").unwrap();
        }
        assert_eq!(outputs.ready(), [1, 4]);
        // [0, 5, 2, 3, 4] after swapping 5 into 1's place.
        outputs.swap_remove(1);
        assert_eq!(outputs.ready(), [4]);
        writers[5].write_all(b"y\n").unwrap();
        assert_eq!(outputs.ready(), [1, 4]);
        // [0, 5, 3, 4]
        outputs.retain_mut(|o| o.pid != 2);
        writers[3].write_all(b"z\n").unwrap();
        assert_eq!(outputs.ready(), [1, 2, 3]);
        let pids: Vec<i32> = outputs.ready().iter().map(|&i| outputs[i].pid).collect();
        assert_eq!(pids, [5, 3, 4]);
    }
}
