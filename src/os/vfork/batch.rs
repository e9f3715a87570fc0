//! Start-up's batches ([`spawn_all`]): each child a copy of this process
//! (a fork, by the same clone as `imp`'s but without `CLONE_VM`), the whole
//! batch cloned before any has exec'd, then the failures read from one
//! close-on-exec pipe per child (end of file: it exec'd).
//!
//! Not here: the clone itself and the child's set-up, shared with the
//! single spawn (`imp`).

use std::ffi::{c_int, c_void};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::Plan;
use super::imp::{
    CLONE, CLONE_INTO_CGROUP, CLONE3_CGROUP, CloneArgs, Shared, block_all, clone3, failure,
    handled, learning, raw_clone, restore,
};

/// Starts every plan's program, cloning each child before any has
/// exec'd, then waits until each has exec'd or failed. Per plan, as
/// [`super::spawn`] says. A child that has neither exec'd nor failed after
/// [`BATCH_WAIT`] (stopped before its `execve`) counts as started: a
/// failure after that shows as its exit.
pub fn spawn_all(plans: &[Plan]) -> Vec<Option<io::Result<i32>>> {
    let mut out: Vec<Option<io::Result<i32>>> = Vec::with_capacity(plans.len());
    let mut waiting: Vec<(usize, i32, OwnedFd)> = Vec::new();
    for plan in plans {
        match learning(plan, detached) {
            Some(Ok(Ok((pid, report)))) => {
                waiting.push((out.len(), pid, report));
                out.push(Some(Ok(pid)));
            }
            Some(Ok(Err(e)) | Err(e)) => out.push(Some(Err(e))),
            None => out.push(None),
        }
    }
    let deadline = std::time::Instant::now() + BATCH_WAIT;
    while !waiting.is_empty() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break; // the rest count as started
        }
        let mut fds: Vec<libc::pollfd> = waiting
            .iter()
            .map(|(_, _, fd)| libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a live array of `fds.len()` pollfds.
        let n = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                left.as_millis().clamp(1, i32::MAX as u128) as c_int,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            break; // cannot wait: the rest count as started
        }
        for i in (0..fds.len()).rev() {
            if fds[i].revents == 0 {
                continue;
            }
            let (at, pid, report) = waiting.swap_remove(i);
            if let Some((step, errno)) = read_report(&report) {
                // SAFETY: our own child, which has failed and exits:
                // reaped here, as `attempt` does.
                unsafe {
                    libc::waitpid(pid, std::ptr::null_mut(), 0);
                }
                out[at] = Some(Err(failure(step, errno)));
            }
        }
    }
    out
}

/// How long [`spawn_all`] waits for a batch's children to exec.
const BATCH_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// What a batch's child wrote before exiting: its step and errno; `None`
/// at end of file (it exec'd) or if nothing whole can be read.
fn read_report(fd: &OwnedFd) -> Option<(u8, c_int)> {
    let mut buf = [0u8; 5];
    loop {
        // SAFETY: reads into a local buffer of its length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return (n == 5).then(|| {
            (
                buf[0],
                c_int::from_ne_bytes([buf[1], buf[2], buf[3], buf[4]]),
            )
        });
    }
}

/// One clone in `mode` of a child that does not share our memory (a
/// copy, as `fork` makes) nor wait for its `execve`: its pid, and the
/// read end of the pipe it writes a failure to (end of file once it has
/// exec'd). `Err`: the clone failed; `Ok(Err)`: the pipe could not be
/// made.
fn detached(plan: &Plan, mode: u8) -> io::Result<io::Result<(i32, OwnedFd)>> {
    let mut ends = [-1; 2];
    // SAFETY: pipe2 into a local array.
    if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Ok(Err(io::Error::last_os_error()));
    }
    // SAFETY: two descriptors pipe2 just made, owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
    let mut shared = Shared {
        plan,
        join_cgroup: plan.cgroup.is_some() && mode != CLONE3_CGROUP,
        handled: handled(),
        slots: None,
        report: write.as_raw_fd(),
        errno: 0,
        step: 0,
    };
    let mut flags = 0u64;
    let mut args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    if mode == CLONE3_CGROUP
        && let Some((fd, _)) = plan.cgroup
    {
        flags |= CLONE_INTO_CGROUP;
        args.cgroup = fd as u64;
    }
    args.flags = flags;
    let old = block_all();
    let arg = (&raw mut shared).cast::<c_void>();
    // SAFETY: without CLONE_VM the child runs `child` on its own copy of
    // this thread's stack (stack 0: where it is now) and of `shared` and
    // `plan`, which the copy holds at the same addresses; it makes only
    // system calls (see `child`). Every signal is blocked across the
    // clone, so no handler of ours (whose self-pipe the child's copied
    // descriptor table shares) runs in the child before it resets them.
    let ret = unsafe {
        if mode == CLONE {
            raw_clone(libc::SYS_clone, libc::SIGCHLD as usize, 0, arg)
        } else {
            clone3(&mut args, arg)
        }
    };
    restore(&old);
    drop(write);
    if ret < 0 {
        return Err(io::Error::from_raw_os_error(-ret as i32));
    }
    Ok(Ok((ret as i32, read)))
}
