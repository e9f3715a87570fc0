//! Start-up's batches ([`spawn_all`]): every child cloned before any has
//! exec'd, each sharing our memory (`CLONE_VM`, without `CLONE_VFORK`: we
//! go on cloning while it sets itself up and execs on the other core), then
//! the failures read from one close-on-exec pipe per child (end of file:
//! it exec'd). A fork would copy our page tables and make our next writes
//! fault, once per child.
//!
//! A child that shares our memory while we run must not read anything we
//! may change or free: each gets a slot of its own in a mapping made for
//! the batch, a guard page below it, holding a copy of its plan (program,
//! arguments, environment) and its `Shared`, and its stack above them.
//! The mapping is unmapped once every child has exec'd or exited; if one
//! has done neither by [`BATCH_WAIT`], it is left mapped for good.
//!
//! Not here: the clone itself and the child's set-up, shared with the
//! single spawn (`imp`).

use std::ffi::{CStr, c_char, c_int, c_void};
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
    let slots = match Slots::new(plans) {
        Ok(s) => s,
        Err(e) => {
            return plans
                .iter()
                .map(|_| Some(Err(io::Error::new(e.kind(), e.to_string()))))
                .collect();
        }
    };
    let mut out: Vec<Option<io::Result<i32>>> = Vec::with_capacity(plans.len());
    let mut waiting: Vec<(usize, i32, OwnedFd)> = Vec::new();
    for (i, plan) in plans.iter().enumerate() {
        let child = match slots.fill(i, plan) {
            Ok(c) => c,
            Err(e) => {
                out.push(Some(Err(e)));
                continue;
            }
        };
        match learning(plan, |_, mode| detached(&child, mode)) {
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
                // reaped here, as `attempt` does (and so gone before its
                // slot is unmapped).
                unsafe {
                    libc::waitpid(pid, std::ptr::null_mut(), 0);
                }
                out[at] = Some(Err(failure(step, errno)));
            }
        }
    }
    if !waiting.is_empty() {
        // Children that may still run on their slots: never unmapped.
        std::mem::forget(slots);
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

/// A child's stack in its slot: far more than its few system calls need.
const STACK: usize = 32 * 1024;
const PAGE: usize = 4096;

/// The batch's mapping: per child, a guard page then a slot (see the
/// module's comment). Unmapped when dropped.
struct Slots {
    base: *mut u8,
    len: usize,
    /// A slot and its guard page.
    stride: usize,
}

/// A child ready to be cloned: its `Shared` and its stack, in its slot.
struct Child {
    shared: *mut Shared<'static>,
    stack: *mut u8,
    stack_size: usize,
}

impl Slots {
    /// A mapping with room for every plan's copy and a stack, none of it
    /// accessible until [`Slots::fill`].
    fn new(plans: &[Plan]) -> io::Result<Slots> {
        let need = plans.iter().map(copy_size).max().unwrap_or(0);
        let stride = PAGE + (need + STACK).next_multiple_of(PAGE);
        let len = stride * plans.len().max(1);
        // SAFETY: a new private anonymous mapping, ours alone.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("mapping the children's stacks: {e}"),
            ));
        }
        Ok(Slots {
            base: base.cast(),
            len,
            stride,
        })
    }

    /// Slot `i` made writable and filled: a copy of `plan` that points only
    /// into the slot, the child's `Shared`, and the stack above them.
    fn fill(&self, i: usize, plan: &Plan) -> io::Result<Child> {
        // SAFETY: slot `i` lies inside the mapping (one per plan), past its
        // guard page; nothing else uses it.
        let (start, size) = unsafe { (self.base.add(i * self.stride + PAGE), self.stride - PAGE) };
        // SAFETY: changes the protection of our own mapping's slot.
        if unsafe { libc::mprotect(start.cast(), size, libc::PROT_READ | libc::PROT_WRITE) } != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("mapping a child's stack: {e}"),
            ));
        }
        let mut bump = Bump {
            at: start,
            end: start.wrapping_add(size - STACK),
        };
        let copy = bump
            .plan(plan)
            .ok_or_else(|| io::Error::other("a child's plan does not fit its slot"))?;
        let shared = bump
            .place(Shared {
                plan: copy,
                join_cgroup: false,
                handled: handled(),
                slots: None,
                report: -1,
                errno: 0,
                step: 0,
            })
            .ok_or_else(|| io::Error::other("a child's plan does not fit its slot"))?;
        let stack = bump.at.wrapping_add(bump.at.align_offset(16));
        // SAFETY: both inside the slot: the stack is what is left of it.
        let stack_size = unsafe { start.add(size).offset_from(stack) } as usize;
        Ok(Child {
            shared,
            stack,
            stack_size,
        })
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        // SAFETY: our own mapping; every child that used it has exec'd or
        // exited (else `spawn_all` forgets it rather than drop it).
        unsafe {
            libc::munmap(self.base.cast(), self.len);
        }
    }
}

/// The bytes a copy of `plan` takes in a slot ([`Bump::plan`]), with room
/// for alignment.
fn copy_size(plan: &Plan) -> usize {
    let strings = |list: &[*const c_char]| -> usize {
        list.iter()
            .filter(|p| !p.is_null())
            // SAFETY: the plan's NUL-terminated strings, alive while it is.
            .map(|&p| unsafe { CStr::from_ptr(p) }.count_bytes() + 1 + 8)
            .sum::<usize>()
            + 8
    };
    plan.path.count_bytes()
        + 1
        + strings(plan.argv)
        + strings(plan.envp)
        + 4 * plan.blocked.len()
        + plan.cgroup.map_or(0, |(_, p)| p.count_bytes() + 1)
        + std::mem::size_of::<Plan>()
        + std::mem::size_of::<Shared>()
        + 128
}

/// Places values one after the other in a slot, each aligned.
struct Bump {
    at: *mut u8,
    end: *mut u8,
}

impl Bump {
    /// Room for `n` values of `T`, aligned; `None` if the slot is full.
    fn room<T>(&mut self, n: usize) -> Option<*mut T> {
        let at = self
            .at
            .wrapping_add(self.at.align_offset(std::mem::align_of::<T>()));
        let next = at.wrapping_add(n * std::mem::size_of::<T>());
        if next > self.end {
            return None;
        }
        self.at = next;
        Some(at.cast())
    }

    /// A copy of `items` in the slot.
    fn slice<T: Copy>(&mut self, items: &[T]) -> Option<&'static [T]> {
        let at = self.room::<T>(items.len())?;
        // SAFETY: `at` has room for `items.len()` values, aligned, in a
        // slot that outlives the child that reads it.
        unsafe {
            std::ptr::copy_nonoverlapping(items.as_ptr(), at, items.len());
            Some(std::slice::from_raw_parts(at, items.len()))
        }
    }

    fn c_str(&mut self, s: &CStr) -> Option<&'static CStr> {
        let bytes = self.slice(s.to_bytes_with_nul())?;
        // SAFETY: a copy of a C string, its NUL included.
        Some(unsafe { CStr::from_bytes_with_nul_unchecked(bytes) })
    }

    /// `list`'s strings copied, then the NULL-terminated list of them.
    fn list(&mut self, list: &[*const c_char]) -> Option<&'static [*const c_char]> {
        let mut copied = Vec::with_capacity(list.len());
        for &p in list.iter().filter(|p| !p.is_null()) {
            // SAFETY: the plan's NUL-terminated strings, alive while it is.
            copied.push(self.c_str(unsafe { CStr::from_ptr(p) })?.as_ptr());
        }
        copied.push(std::ptr::null());
        self.slice(&copied)
    }

    fn place<T>(&mut self, value: T) -> Option<*mut T> {
        let at = self.room::<T>(1)?;
        // SAFETY: room for one `T`, aligned.
        unsafe { at.write(value) };
        Some(at)
    }

    /// A copy of `plan` whose every reference is into the slot.
    fn plan(&mut self, plan: &Plan) -> Option<&'static Plan<'static>> {
        let copy = Plan {
            path: self.c_str(plan.path)?,
            argv: self.list(plan.argv)?,
            envp: self.list(plan.envp)?,
            blocked: self.slice(plan.blocked)?,
            cgroup: match plan.cgroup {
                Some((fd, procs)) => Some((fd, self.c_str(procs)?)),
                None => None,
            },
            ..*plan
        };
        // SAFETY: placed in the slot, which outlives the child.
        Some(unsafe { &*self.place(copy)? })
    }
}

/// One clone in `mode` of `child`, which shares our memory but does not
/// wait for its `execve`: its pid, and the read end of the pipe it writes
/// a failure to (end of file once it has exec'd). `Err`: the clone failed;
/// `Ok(Err)`: the pipe could not be made.
fn detached(child: &Child, mode: u8) -> io::Result<io::Result<(i32, OwnedFd)>> {
    let mut ends = [-1; 2];
    // SAFETY: pipe2 into a local array.
    if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Ok(Err(io::Error::last_os_error()));
    }
    // SAFETY: two descriptors pipe2 just made, owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
    // SAFETY: the child's `Shared`, in its slot; no child runs on it yet
    // (a clone that failed started none).
    let plan = unsafe {
        let shared = &mut *child.shared;
        shared.join_cgroup = shared.plan.cgroup.is_some() && mode != CLONE3_CGROUP;
        shared.report = write.as_raw_fd();
        shared.plan
    };
    let flags = libc::CLONE_VM as u64;
    let mut args = CloneArgs {
        flags,
        exit_signal: libc::SIGCHLD as u64,
        stack: child.stack as u64,
        stack_size: child.stack_size as u64,
        ..CloneArgs::default()
    };
    if mode == CLONE3_CGROUP
        && let Some((fd, _)) = plan.cgroup
    {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = fd as u64;
    }
    let old = block_all();
    let arg = child.shared.cast::<c_void>();
    // SAFETY: the child runs `child` on its own stack, in its slot, and
    // reads only its slot (its `Shared` and the plan copied there) and
    // static data; the slot stays mapped and unchanged until it has exec'd
    // or exited (`spawn_all`). It makes only direct system calls (see
    // `imp::child`). Every signal is blocked across the clone, so no
    // handler of ours runs in the child before it resets them.
    let ret = unsafe {
        if mode == CLONE {
            let top = child.stack.add(child.stack_size);
            raw_clone(
                libc::SYS_clone,
                (flags | libc::SIGCHLD as u64) as usize,
                top as usize,
                arg,
            )
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
