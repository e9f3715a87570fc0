//! Starting a program as a child without copying this process (issue 19):
//! a vfork-style clone (`CLONE_VM | CLONE_VFORK`: the child runs on a stack
//! of its own in our memory while the calling thread waits for its `execve`
//! or exit), the child's set-up made of plain system calls, and a failure
//! reported through memory the child shares with us rather than a pipe.
//! Where the kernel has `clone3` and the child joins a cgroup, it is born in
//! it (`CLONE_INTO_CGROUP`): no migration, whose first write to
//! `cgroup.procs` costs a whole RCU grace period. The child shares our
//! descriptor table too, and its first system call gives it a table of its
//! own holding only what lies below five descriptors reserved for its stdio
//! (`slots`): at 1,000 runners it neither copies nor closes the others'
//! 2,000 pipes.
//!
//! A batch ([`spawn_all`]: start-up's runners, restarts due together;
//! `batch`) is started without
//! waiting: each child shares our memory too (`CLONE_VM` without
//! `CLONE_VFORK`), on a slot of its own holding a copy of its plan and its
//! stack, and, past a few hundred descriptors, our table as well; the
//! whole batch is cloned before any has exec'd, then we wait until the
//! kernel says each has exec'd or exited (`CLONE_CHILD_CLEARTID`), a
//! failure written to its slot. On two cores the children exec side by
//! side while the next are cloned.
//!
//! Linux on x86_64 only; elsewhere, or where clone is refused (a seccomp
//! profile), [`spawn`] says so and the caller forks (`master::spawn`).
//!
//! Not here: what to run, with which environment and descriptors
//! (`master::spawn`); the built-in runner's handlers, which fork
//! (`os::process`).

use std::ffi::{CStr, c_char, c_int};
use std::os::fd::RawFd;

/// Everything the child needs, prepared before the clone: the child
/// allocates nothing and takes no lock.
#[cfg_attr(
    not(all(target_os = "linux", target_arch = "x86_64")),
    allow(dead_code)
)]
#[derive(Clone, Copy)]
pub struct Plan<'a> {
    /// The program, as `execve` takes it (a path: nothing searches `PATH`).
    pub path: &'a CStr,
    /// NULL-terminated.
    pub argv: &'a [*const c_char],
    /// NULL-terminated.
    pub envp: &'a [*const c_char],
    /// Become the child's 0, 1 and 2; each must be 3 or above.
    pub stdio: [RawFd; 3],
    /// A close-on-exec descriptor the child keeps open across `execve`.
    pub keep: Option<RawFd>,
    /// The process the child must not outlive (its parent).
    pub master: i32,
    /// The open-file limit the child gets.
    pub nofile: Option<libc::rlimit>,
    /// Signals blocked at `execve` (the rest are unblocked).
    pub blocked: &'a [c_int],
    /// The cgroup the child is born in: its directory, open, and its
    /// `cgroup.procs`, written to where the kernel cannot place the child.
    pub cgroup: Option<(RawFd, &'a CStr)>,
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub use batch::{prepare, spawn_all};
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub use imp::spawn;

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod batch;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod child;

/// Elsewhere: never; the caller forks.
#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
pub fn spawn(_plan: &Plan) -> Option<std::io::Result<i32>> {
    None
}

/// Elsewhere: nothing to prepare.
#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
pub fn prepare(_children: usize, _batch: usize) {}

/// Elsewhere: never; the caller forks each.
#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
pub fn spawn_all(plans: &[Plan]) -> Vec<Option<std::io::Result<i32>>> {
    plans.iter().map(|_| None).collect()
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod imp {
    use std::ffi::{c_int, c_void};
    use std::io;
    use std::sync::atomic::Ordering::Relaxed;

    use super::Plan;
    use super::child::{CloneArgs, clone3, raw_clone};

    /// What went wrong in the child, by step.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[repr(u8)]
    pub enum Step {
        ProcessGroup = 1,
        Descriptors = 2,
        Exec = 3,
        /// `close_range(CLOSE_RANGE_UNSHARE)` refused (before Linux 5.9).
        Unshare = 4,
    }

    /// The page the child and the caller share: the plan in, a failure out.
    #[repr(C)]
    pub(super) struct Shared<'a> {
        pub(super) plan: &'a Plan<'a>,
        /// Whether the child writes `cgroup.procs` itself.
        pub(super) join_cgroup: bool,
        /// The signals to set back to their default ([`handled`]).
        pub(super) handled: &'a [c_int],
        /// Where the child shares our descriptor table until its first
        /// system call makes it a copy of the few below the [`slots`]': the
        /// slots holding its stdin, stdout, stderr and kept descriptor.
        pub(super) slots: Option<&'static [c_int; 5]>,
        /// Set by the child once it has a table of its own (it no longer
        /// reads ours: its slots may be given to the next child).
        pub(super) unshared: std::sync::atomic::AtomicBool,
        pub(super) errno: c_int,
        pub(super) step: u8,
    }

    /// Which clone this kernel (and its seccomp profile) gives us, learnt at
    /// the first spawn: 0 not tried, 1 `clone3` into a cgroup, 2 `clone3`, 3
    /// `clone`, 4 none.
    static MODE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
    pub(super) const CLONE3_CGROUP: u8 = 1;
    const CLONE3: u8 = 2;
    pub(super) const CLONE: u8 = 3;
    const NONE: u8 = 4;

    pub(super) const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

    /// The child's stack: far more than its few system calls need.
    const STACK: usize = 64 * 1024;

    /// The stack of this thread's clones ([`attempt`]): one mapping, made
    /// at the thread's first clone and kept until the thread ends, with a
    /// guard page below it. Only the pages a child touches (the top one,
    /// for its few system calls) are ever faulted in, once. An array on our
    /// own stack was probed page by page at each call: 16 page faults at
    /// the master's first respawn, and 64 KiB more of its RSS.
    struct ChildStack {
        /// The mapping's start (the guard page).
        base: *mut u8,
        len: usize,
    }

    impl Drop for ChildStack {
        fn drop(&mut self) {
            // SAFETY: our own mapping, which no child uses any more: a
            // clone's caller waits until its child has exec'd or exited.
            unsafe {
                libc::munmap(self.base.cast(), self.len);
            }
        }
    }

    thread_local! {
        static CHILD_STACK: std::cell::OnceCell<ChildStack> = const { std::cell::OnceCell::new() };
    }

    /// The lowest address of this thread's child stack, [`STACK`] bytes.
    fn child_stack() -> io::Result<*mut u8> {
        let made = CHILD_STACK.try_with(|cell| {
            if let Some(s) = cell.get() {
                return Ok(s.base.wrapping_add(s.len - STACK));
            }
            // SAFETY: asks the page size, which has no preconditions.
            let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
                .ok()
                .filter(|&p| p > 0 && STACK.is_multiple_of(p))
                .unwrap_or(4096);
            let len = page + STACK;
            let base = map(len, libc::PROT_READ | libc::PROT_WRITE, "a child's stack")?;
            // SAFETY: our new mapping's first page made inaccessible, so that
            // an overflow faults. A failure leaves no guard: the child's calls
            // need far less.
            unsafe {
                libc::mprotect(base.cast(), page, libc::PROT_NONE);
            }
            let _ = cell.set(ChildStack { base, len });
            Ok(base.wrapping_add(page))
        });
        made.unwrap_or_else(|_| Err(io::Error::other("a child's stack, as this thread ends")))
    }

    /// A new private anonymous mapping of `len` bytes (`prot`), ours alone;
    /// on a failure, an error naming `what` it was for.
    pub(super) fn map(len: usize, prot: c_int, what: &str) -> io::Result<*mut u8> {
        // SAFETY: asks the kernel for new memory; nothing of ours is touched.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("mapping {what}: {e}")));
        }
        Ok(base.cast())
    }

    /// Starts `plan`'s program; its pid once it has exec'd. `None`: this system
    /// cannot clone this way (the caller forks instead). A failure in the child
    /// (its process group, its descriptors, `execve`) is an error, with the child
    /// already reaped.
    pub fn spawn(plan: &Plan) -> Option<io::Result<i32>> {
        learning(plan, attempt).map(Result::flatten)
    }

    /// Runs `f` (one clone of `plan`) in the way this kernel allows,
    /// learning it at the first spawn. `None`: none works here.
    pub(super) fn learning<T>(
        plan: &Plan,
        f: impl Fn(&Plan, u8) -> io::Result<io::Result<T>>,
    ) -> Option<io::Result<io::Result<T>>> {
        if plan.stdio.iter().any(|&fd| fd < 3)
            || plan.argv.last().is_none_or(|p| !p.is_null())
            || plan.envp.last().is_none_or(|p| !p.is_null())
        {
            return Some(Err(io::Error::other("spawn plan malformed")));
        }
        loop {
            let mode = match MODE.load(Relaxed) {
                0 => match forced() {
                    Some(forced) => forced,
                    None if plan.cgroup.is_some() => CLONE3_CGROUP,
                    None => CLONE3,
                },
                // Learnt without a cgroup to go into: try it once there is one.
                CLONE3 if plan.cgroup.is_some() && !NO_INTO_CGROUP.load(Relaxed) => CLONE3_CGROUP,
                m => m,
            };
            if mode == NONE {
                return None;
            }
            match f(plan, mode) {
                Ok(result) => {
                    MODE.store(mode, Relaxed);
                    return Some(Ok(result));
                }
                Err(e) => {
                    let next = match (mode, e.raw_os_error()) {
                        // Transient: the caller's error.
                        (_, Some(libc::EAGAIN | libc::ENOMEM)) => return Some(Err(e)),
                        (CLONE3_CGROUP, Some(libc::ENOSYS)) => CLONE,
                        // An older kernel, or a cgroup it will not place us in:
                        // the child joins by writing `cgroup.procs`.
                        (CLONE3_CGROUP, _) => {
                            NO_INTO_CGROUP.store(true, Relaxed);
                            CLONE3
                        }
                        (CLONE3, _) => CLONE,
                        _ => NONE,
                    };
                    MODE.store(next, Relaxed);
                }
            }
        }
    }

    /// `MAILMAN_SPAWN=clone` or `fork`: the way a system without `clone3` (a
    /// container's seccomp profile) or without this module spawns, chosen where
    /// the better one works (to test it, or to rule this module out).
    fn forced() -> Option<u8> {
        match std::env::var("MAILMAN_SPAWN").ok()?.as_str() {
            "clone" => Some(CLONE),
            "fork" => Some(NONE),
            _ => None,
        }
    }

    /// Set once `CLONE_INTO_CGROUP` failed: not tried again.
    static NO_INTO_CGROUP: std::sync::atomic::AtomicBool =
        std::sync::atomic::AtomicBool::new(false);

    /// One clone in `mode`. `Err`: the clone itself failed (nothing started);
    /// `Ok(Err)`: the child failed and has been reaped.
    fn attempt(plan: &Plan, mode: u8) -> io::Result<io::Result<i32>> {
        let base = match child_stack() {
            Ok(base) => base,
            Err(e) => return Ok(Err(e)),
        };
        let mut shared = Shared {
            plan,
            join_cgroup: plan.cgroup.is_some() && mode != CLONE3_CGROUP,
            handled: handled(),
            slots: SHARE_FILES.load(Relaxed).then(slots).flatten(),
            unshared: std::sync::atomic::AtomicBool::new(false),
            errno: 0,
            step: 0,
        };
        let mut flags = (libc::CLONE_VM | libc::CLONE_VFORK) as u64;
        if let Some(s) = shared.slots {
            if let Err(e) = move_into(plan, s) {
                return Ok(Err(e));
            }
            flags |= libc::CLONE_FILES as u64;
        }
        // Every signal is blocked around the clone, so no handler of ours
        // runs in the child (which shares our memory) before it has reset
        // them; the old mask is restored before returning.
        let old = block_all();
        let arg = (&raw mut shared).cast::<c_void>();
        // SAFETY: the child runs `child` on this thread's child stack, which
        // no other clone uses meanwhile (one per thread) and which lives as
        // long as the thread: with CLONE_VFORK this thread does not go on
        // until the child has exec'd or exited, so `shared`, `plan` and the
        // stack stay where they are. The child only makes system calls (see
        // `child`).
        let ret = unsafe {
            if mode == CLONE {
                let top = base.add(STACK);
                raw_clone(
                    libc::SYS_clone,
                    (flags | libc::SIGCHLD as u64) as usize,
                    top as usize,
                    arg,
                )
            } else {
                let mut args = CloneArgs {
                    flags,
                    exit_signal: libc::SIGCHLD as u64,
                    stack: base as u64,
                    stack_size: STACK as u64,
                    ..CloneArgs::default()
                };
                if mode == CLONE3_CGROUP
                    && let Some((fd, _)) = plan.cgroup
                {
                    args.flags |= CLONE_INTO_CGROUP;
                    args.cgroup = fd as u64;
                }
                clone3(&mut args, arg)
            }
        };
        restore(&old);
        if let Some(s) = shared.slots {
            put_back(s);
        }
        if ret < 0 {
            return Err(io::Error::from_raw_os_error(-ret as i32));
        }
        let pid = ret as i32;
        // SAFETY: the child has exec'd or exited: it writes nothing any more.
        let (errno, step) = unsafe {
            (
                std::ptr::read_volatile(&raw const shared.errno),
                std::ptr::read_volatile(&raw const shared.step),
            )
        };
        if step == 0 {
            return Ok(Ok(pid));
        }
        // SAFETY: our own child, which has exited (or is about to): reaped here
        // so that the event loop never sees a runner it did not start.
        unsafe {
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        if step == Step::Unshare as u8 {
            // An older kernel: the child gets a copy of the whole table.
            SHARE_FILES.store(false, Relaxed);
            return attempt(plan, mode);
        }
        Ok(Err(failure(step, errno)))
    }

    /// A child's failure at `step`, as the caller hears it.
    pub(super) fn failure(step: u8, errno: c_int) -> io::Error {
        let e = io::Error::from_raw_os_error(errno);
        if step == Step::Exec as u8 {
            return e;
        }
        let what = if step == Step::ProcessGroup as u8 {
            "process group"
        } else {
            "descriptors"
        };
        io::Error::new(e.kind(), format!("setting up the child's {what}: {e}"))
    }

    /// Blocks every signal in this thread; the mask it had.
    pub(super) fn block_all() -> libc::sigset_t {
        // SAFETY: sets this thread's mask from a full set; saves the old one.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            old
        }
    }

    /// Puts back the mask [`block_all`] saved.
    pub(super) fn restore(old: &libc::sigset_t) {
        // SAFETY: restores a mask saved by `block_all`.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, old, std::ptr::null_mut());
        }
    }

    /// Whether children share our descriptor table until they unshare the
    /// few they need (see [`slots`]); off once a kernel refused.
    pub(super) static SHARE_FILES: std::sync::atomic::AtomicBool =
        std::sync::atomic::AtomicBool::new(true);

    /// Five descriptors reserved once, as low as they come (close-on-exec):
    /// four for a child's stdin, stdout, stderr and kept descriptor, the
    /// fifth a placeholder to put them back with. A child that shares our
    /// table unshares only what lies below them, so that it never copies
    /// nor closes the other runners' pipes (at 1,000 runners, 2,000 of them:
    /// a cost per spawn that grew with their number). `None` if they cannot
    /// be had.
    ///
    /// Between children they hold /dev/null opened `O_PATH`: nothing reads
    /// or writes them, and a child closes the placeholders below its own
    /// (a batch's other sets) without the checks for file locks and
    /// directory notifications that closing a readable file costs (more
    /// where a process holds a lock on /dev/null: dockerd does).
    pub(super) fn slots() -> Option<&'static [c_int; 5]> {
        static SLOTS: std::sync::OnceLock<Option<[c_int; 5]>> = std::sync::OnceLock::new();
        SLOTS
            .get_or_init(|| {
                let mut s = [-1; 5];
                for slot in &mut s {
                    // SAFETY: opens a descriptor this module keeps for good.
                    *slot = unsafe {
                        libc::open(c"/dev/null".as_ptr(), libc::O_PATH | libc::O_CLOEXEC)
                    };
                }
                if s.iter().all(|&fd| fd >= 3) {
                    Some(s)
                } else {
                    for fd in s.into_iter().filter(|&fd| fd >= 0) {
                        // SAFETY: closes what was just opened above.
                        unsafe { libc::close(fd) };
                    }
                    None
                }
            })
            .as_ref()
    }

    /// A batch's slots ([`slots`], one set per child that shares our
    /// table): four descriptors, and, fifth, the placeholder they are put
    /// back with; `taken` while a child that never exec'd may still use them
    /// (never reused then). Made before start-up's first batch (`prepare`),
    /// else as a batch first needs them, by `dup`s of the placeholder
    /// ([`slots`]), as low as they come.
    pub(super) struct Set {
        pub(super) fds: [c_int; 5],
        pub(super) taken: bool,
    }

    /// The batch's sets, `n` of them at least (fewer if descriptors run
    /// out). Only batches use them (start-up's, restarts due together), one
    /// batch at a time, from the master's thread.
    pub(super) fn sets(n: usize) -> std::sync::MutexGuard<'static, Vec<Set>> {
        static SETS: std::sync::Mutex<Vec<Set>> = std::sync::Mutex::new(Vec::new());
        let mut sets = SETS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(null) = slots().map(|s| s[4]) else {
            return sets;
        };
        while sets.len() < n {
            let mut fds = [null; 5];
            for slot in &mut fds[..4] {
                // SAFETY: a copy of our own placeholder, kept for good.
                *slot = unsafe { libc::fcntl(null, libc::F_DUPFD_CLOEXEC, 3) };
            }
            if fds.iter().any(|&fd| fd < 0) {
                for fd in fds[..4].iter().filter(|&&fd| fd >= 0) {
                    // SAFETY: closes what was just made above.
                    unsafe { libc::close(*fd) };
                }
                break;
            }
            sets.push(Set { fds, taken: false });
        }
        sets
    }

    /// `plan`'s stdin, stdout, stderr and kept descriptor copied into the
    /// slots `s` (close-on-exec), for a child that shares our table; on a
    /// failure the slots are put back.
    pub(super) fn move_into(plan: &Plan, s: &[c_int; 5]) -> io::Result<()> {
        // SAFETY: dup3 onto descriptors reserved for this child (`slots`,
        // `sets`) that nothing else uses until they are put back.
        let moved = unsafe {
            let mut ok = true;
            for (i, fd) in plan.stdio.iter().chain(plan.keep.as_ref()).enumerate() {
                ok &= libc::dup3(*fd, s[i], libc::O_CLOEXEC) >= 0;
            }
            ok
        };
        if moved {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        put_back(s);
        Err(e)
    }

    /// The slots back on the placeholder: no runner's pipe stays open in
    /// them.
    pub(super) fn put_back(s: &[c_int; 5]) {
        for &slot in &s[..4] {
            // SAFETY: dup3 between our own reserved descriptors.
            unsafe {
                libc::dup3(s[4], slot, libc::O_CLOEXEC);
            }
        }
    }

    /// The signals this process handles (its handlers are in place before it
    /// starts anything: the master installs them first of all), and SIGPIPE:
    /// what the child sets back to the default. Learnt once, in the parent, so
    /// that a child makes a few system calls here rather than two per signal.
    pub(super) fn handled() -> &'static [c_int] {
        static HANDLED: std::sync::OnceLock<Vec<c_int>> = std::sync::OnceLock::new();
        HANDLED.get_or_init(|| {
            let mut out = vec![libc::SIGPIPE];
            for sig in 1..=libc::SIGRTMAX() {
                if [libc::SIGKILL, libc::SIGSTOP, libc::SIGPIPE].contains(&sig) {
                    continue;
                }
                // SAFETY: a query of this process's disposition into a local.
                let handler = unsafe {
                    let mut sa: libc::sigaction = std::mem::zeroed();
                    if libc::sigaction(sig, std::ptr::null(), &mut sa) != 0 {
                        continue;
                    }
                    sa.sa_sigaction
                };
                if handler != libc::SIG_DFL && handler != libc::SIG_IGN {
                    out.push(sig);
                }
            }
            out
        })
    }
}
