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
//! A batch ([`spawn_all`], start-up's runners; `batch`) is started without
//! waiting: each child shares our memory too (`CLONE_VM` without
//! `CLONE_VFORK`), on a slot of its own holding a copy of its plan and its
//! stack, with a copy of our descriptor table; the whole batch is cloned
//! before any has exec'd, then the failures are read from one close-on-exec
//! pipe per child (end of file: it exec'd). On two cores the children exec
//! side by side while the next are cloned.
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
pub use batch::spawn_all;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub use imp::spawn;

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod batch;

/// Elsewhere: never; the caller forks.
#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
pub fn spawn(_plan: &Plan) -> Option<std::io::Result<i32>> {
    None
}

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
        /// A child that does not share our memory (a batch's): the pipe
        /// its failure is written to; -1 otherwise.
        pub(super) report: c_int,
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
        use std::mem::MaybeUninit;
        let mut shared = Shared {
            plan,
            join_cgroup: plan.cgroup.is_some() && mode != CLONE3_CGROUP,
            handled: handled(),
            slots: SHARE_FILES.load(Relaxed).then(slots).flatten(),
            report: -1,
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
        let mut stack = MaybeUninit::<[u128; STACK / 16]>::uninit();
        let base = stack.as_mut_ptr().cast::<u8>();
        // Every signal is blocked around the clone, so no handler of ours
        // runs in the child (which shares our memory) before it has reset
        // them; the old mask is restored before returning.
        let old = block_all();
        let arg = (&raw mut shared).cast::<c_void>();
        // SAFETY: the child runs `child` on `stack`, which nothing else uses and
        // which outlives it: with CLONE_VFORK this thread does not go on until
        // the child has exec'd or exited, so `shared`, `plan` and `stack` stay
        // where they are. The child only makes system calls (see `child`).
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

    /// Five descriptors reserved once, as low as they come (on /dev/null,
    /// close-on-exec): four for a child's stdin, stdout, stderr and kept
    /// descriptor, the fifth stays on /dev/null to put them back with; a child that shares our table unshares only what lies below
    /// them, so that it never copies nor closes the other runners' pipes (at
    /// 1,000 runners, 2,000 of them: a cost per spawn that grew with their
    /// number). `None` if they cannot be had.
    pub(super) fn slots() -> Option<&'static [c_int; 5]> {
        static SLOTS: std::sync::OnceLock<Option<[c_int; 5]>> = std::sync::OnceLock::new();
        SLOTS
            .get_or_init(|| {
                let mut s = [-1; 5];
                for slot in &mut s {
                    // SAFETY: opens a descriptor this module keeps for good.
                    *slot = unsafe {
                        libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC)
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
    /// table): four descriptors, and, fifth, the /dev/null they are put back
    /// with; `taken` while a child that never exec'd may still use them
    /// (never reused then). Made as a batch first needs them, by `dup`s of
    /// one /dev/null, as low as they come.
    pub(super) struct Set {
        pub(super) fds: [c_int; 5],
        pub(super) taken: bool,
    }

    /// The batch's sets, `n` of them at least (fewer if descriptors run
    /// out). Only start-up's batches use them, one batch at a time.
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
                // SAFETY: a copy of our own /dev/null, kept for good.
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

    /// The slots back on /dev/null: no runner's pipe stays open in them.
    pub(super) fn put_back(s: &[c_int; 5]) {
        for &slot in &s[..4] {
            // SAFETY: dup3 between our own reserved descriptors.
            unsafe {
                libc::dup3(s[4], slot, libc::O_CLOEXEC);
            }
        }
    }

    /// Closes `first..=last` (none open is not an error); where the kernel has
    /// no `close_range` (before 5.9), the descriptors stay for `execve` to close
    /// (all of ours are close-on-exec).
    unsafe fn close_range(first: libc::c_uint, last: libc::c_uint) {
        if first <= last {
            // SAFETY: a system call on this process's descriptor table,
            // made directly (see `sys`).
            unsafe {
                sys(libc::SYS_close_range, first as usize, last as usize, 0, 0);
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

    /// `struct clone_args`, as far as `cgroup` (CLONE_ARGS_SIZE_VER2).
    #[repr(C)]
    #[derive(Default)]
    pub(super) struct CloneArgs {
        pub(super) flags: u64,
        pub(super) pidfd: u64,
        pub(super) child_tid: u64,
        pub(super) parent_tid: u64,
        pub(super) exit_signal: u64,
        pub(super) stack: u64,
        pub(super) stack_size: u64,
        pub(super) tls: u64,
        pub(super) set_tid: u64,
        pub(super) set_tid_size: u64,
        pub(super) cgroup: u64,
    }

    /// `clone` or `clone3` with `a0`, `a1` as its first two arguments (the
    /// others zero); in the child, on the new stack, calls `child(arg)` and
    /// exits with what it returns. Returns the child's pid, or `-errno`.
    ///
    /// # Safety
    /// For a clone sharing our memory: the new stack must be unused and outlive
    /// the child; `arg` must be valid for `child`.
    pub(super) unsafe fn raw_clone(
        nr: libc::c_long,
        a0: usize,
        a1: usize,
        arg: *mut c_void,
    ) -> isize {
        // SAFETY: the caller's.
        unsafe { raw_clone4(nr, a0, a1, 0, arg) }
    }

    /// [`raw_clone`] with a fourth argument (`clone`'s `child_tid`).
    ///
    /// # Safety
    /// As [`raw_clone`]'s; `a3`, if not zero, a word that outlives the child.
    pub(super) unsafe fn raw_clone4(
        nr: libc::c_long,
        a0: usize,
        a1: usize,
        a3: usize,
        arg: *mut c_void,
    ) -> isize {
        let f: unsafe extern "C" fn(*mut c_void) -> c_int = child;
        let ret: isize;
        // SAFETY: a system call; the child never returns into this function's
        // code: it calls `child`, which execs or exits, and exits itself if
        // `child` ever returned. The kernel keeps every register but rax, rcx and
        // r11 in the child, so `f` and `arg` are there; the new stack's top is
        // 16-byte aligned, as `call` needs. rcx and r11 are plain outputs (not
        // late) so that neither holds `f` or `arg`.
        unsafe {
            std::arch::asm!(
                "syscall",
                "test rax, rax",
                "jnz 2f",
                "mov rdi, {arg}",
                "call {f}",
                "mov edi, eax",
                "mov eax, 60",
                "syscall",
                "ud2",
                "2:",
                f = in(reg) f,
                arg = in(reg) arg,
                inlateout("rax") nr as isize => ret,
                in("rdi") a0,
                in("rsi") a1,
                in("rdx") 0usize,
                in("r10") a3,
                in("r8") 0usize,
                out("rcx") _,
                out("r11") _,
            );
        }
        ret
    }

    /// [`raw_clone`] by `clone3` with `args`.
    ///
    /// # Safety
    /// As [`raw_clone`]'s.
    pub(super) unsafe fn clone3(args: &mut CloneArgs, arg: *mut c_void) -> isize {
        let size = std::mem::size_of::<CloneArgs>();
        // SAFETY: as the caller's; `args` is a live `struct clone_args`.
        unsafe {
            raw_clone(
                libc::SYS_clone3,
                (args as *mut CloneArgs) as usize,
                size,
                arg,
            )
        }
    }

    /// A system call with up to four arguments, made directly: the
    /// `-errno` of a failure is returned, not stored in `errno`. The child
    /// runs with the caller's thread pointer, so libc's `errno` would be
    /// the caller's, which a batch's caller is using at the same moment.
    ///
    /// # Safety
    /// As the system call `nr` with these arguments.
    #[inline(always)]
    unsafe fn sys(nr: libc::c_long, a0: usize, a1: usize, a2: usize, a3: usize) -> isize {
        let ret: isize;
        // SAFETY: the caller's; the kernel clobbers rcx and r11 only.
        unsafe {
            std::arch::asm!(
                "syscall",
                inlateout("rax") nr as isize => ret,
                in("rdi") a0,
                in("rsi") a1,
                in("rdx") a2,
                in("r10") a3,
                out("rcx") _,
                out("r11") _,
                options(nostack),
            );
        }
        ret
    }

    /// The kernel's `struct sigaction` on x86_64 (not libc's).
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: u64,
        restorer: usize,
        mask: u64,
    }

    /// The child, between clone and `execve`. It shares the caller's memory
    /// and thread pointer: a vfork child while the caller waits, a batch's
    /// child while the caller goes on cloning the next. So it makes only
    /// direct system calls ([`sys`]: not even libc's `errno` is written),
    /// reads only what [`Shared`] points to, and writes only its own stack
    /// or, for a vfork child, its failure to `Shared`. A batch child's
    /// failure goes down its pipe before it exits with 127.
    ///
    /// # Safety
    /// `arg` is a `Shared` that, with all it points to, stays where it is,
    /// unchanged, until this process has exec'd or exited.
    unsafe extern "C" fn child(arg: *mut c_void) -> c_int {
        use libc::{
            SYS_close, SYS_close_range, SYS_dup2, SYS_execve, SYS_exit_group, SYS_fcntl,
            SYS_getppid, SYS_openat, SYS_prctl, SYS_prlimit64, SYS_rt_sigaction,
            SYS_rt_sigprocmask, SYS_setpgid, SYS_write,
        };
        // SAFETY: see above; each `sys` is a system call on this process
        // with arguments that are live for it.
        unsafe {
            let shared = arg.cast::<Shared>();
            let plan = (*shared).plan;
            let fail = |step: Step, ret: isize| -> ! {
                let errno = (-ret) as c_int;
                let report = (*shared).report;
                if report >= 0 {
                    // The failure goes down the pipe, whole (under
                    // PIPE_BUF bytes).
                    let e = errno.to_ne_bytes();
                    let msg = [step as u8, e[0], e[1], e[2], e[3]];
                    sys(
                        SYS_write,
                        report as usize,
                        msg.as_ptr() as usize,
                        msg.len(),
                        0,
                    );
                } else {
                    std::ptr::write_volatile(&raw mut (*shared).errno, errno);
                    std::ptr::write_volatile(&raw mut (*shared).step, step as u8);
                }
                sys(SYS_exit_group, 127, 0, 0, 0);
                std::hint::unreachable_unchecked()
            };
            // Sharing our table, first of all: a table of its own holding
            // only what lies below the slots (nothing here may open or
            // close a descriptor before this).
            let below = (*shared)
                .slots
                .map(|s| s[..4].iter().max().map_or(3, |&m| m + 1) as libc::c_uint);
            if let Some(k) = below {
                let ret = sys(
                    SYS_close_range,
                    k as usize,
                    libc::c_uint::MAX as usize,
                    libc::CLOSE_RANGE_UNSHARE as usize,
                    0,
                );
                if ret != 0 {
                    fail(Step::Unshare, ret);
                }
            }
            if (*shared).join_cgroup
                && let Some((_, procs)) = plan.cgroup
            {
                // As before issue 19: a failure leaves the child unconfined.
                let flags = (libc::O_WRONLY | libc::O_CLOEXEC) as usize;
                let fd = sys(
                    SYS_openat,
                    libc::AT_FDCWD as usize,
                    procs.as_ptr() as usize,
                    flags,
                    0,
                );
                if fd >= 0 {
                    sys(SYS_write, fd as usize, b"0".as_ptr() as usize, 1, 0);
                    sys(SYS_close, fd as usize, 0, 0, 0);
                }
            }
            if let Some(lim) = &plan.nofile {
                let lim = lim as *const libc::rlimit as usize;
                sys(SYS_prlimit64, 0, libc::RLIMIT_NOFILE as usize, lim, 0);
            }
            // Own process group, so that a stop reaches the runner's children.
            let ret = sys(SYS_setpgid, 0, 0, 0, 0);
            if ret != 0 {
                fail(Step::ProcessGroup, ret);
            }
            // Our handlers are not the child's (it shares our memory until it
            // execs): each one goes back to the default; what we ignore stays
            // ignored, but SIGPIPE, which the master ignores for itself.
            let default = KernelSigaction {
                handler: 0, // SIG_DFL
                flags: 0,
                restorer: 0,
                mask: 0,
            };
            for &sig in (*shared).handled {
                let act = &raw const default as usize;
                sys(SYS_rt_sigaction, sig as usize, act, 0, 8);
            }
            // No runner outlives the master, even a kill -9 of it; then check the
            // master did not die before it took effect.
            let pdeathsig = (libc::PR_SET_PDEATHSIG as usize, libc::SIGKILL as usize);
            sys(SYS_prctl, pdeathsig.0, pdeathsig.1, 0, 0);
            if sys(SYS_getppid, 0, 0, 0, 0) != plan.master as isize {
                sys(SYS_exit_group, 1, 0, 0, 0);
            }
            // Where the child's descriptors are now: in the slots, or where
            // the plan has them.
            let stdio = match (*shared).slots {
                Some(s) => [s[0], s[1], s[2]],
                None => plan.stdio,
            };
            for (target, &fd) in stdio.iter().enumerate() {
                let ret = sys(SYS_dup2, fd as usize, target, 0, 0);
                if ret < 0 {
                    fail(Step::Descriptors, ret);
                }
            }
            // The kept descriptor under its own number (a child may be told
            // it): back from its slot, where there is one.
            let keep = plan.keep;
            if let (Some(s), Some(k)) = ((*shared).slots, keep) {
                let ret = sys(SYS_dup2, s[3] as usize, k as usize, 0, 0);
                if ret < 0 {
                    fail(Step::Descriptors, ret);
                }
            }
            // Nothing else of ours goes with it: not the other runners' pipes
            // (at 1,000 runners, 2,000 of them, which a child sharing our
            // table never had), nor what the master inherited without
            // close-on-exec.
            // Open across the closing: the kept descriptor, and the pipe a
            // failure to exec is reported on (close-on-exec).
            let last = below.map_or(c_int::MAX as libc::c_uint, |k| k - 1);
            if let Some(fd) = keep
                && fd >= 3
            {
                let ret = sys(SYS_fcntl, fd as usize, libc::F_SETFD as usize, 0, 0);
                if ret < 0 {
                    fail(Step::Descriptors, ret);
                }
            }
            let mut open = [keep.unwrap_or(-1), (*shared).report];
            open.sort_unstable();
            let mut first = 3;
            for fd in open.into_iter().filter(|&fd| fd >= 3) {
                close_range(first, fd as libc::c_uint - 1);
                first = fd as libc::c_uint + 1;
            }
            close_range(first, last);
            // The kernel's signal set: one bit per signal, 64 of them.
            let mut mask = 0u64;
            for &sig in plan.blocked {
                if (1..=64).contains(&sig) {
                    mask |= 1 << (sig - 1);
                }
            }
            let mask_at = &raw const mask as usize;
            sys(
                SYS_rt_sigprocmask,
                libc::SIG_SETMASK as usize,
                mask_at,
                0,
                8,
            );
            let (path, argv, envp) = (plan.path.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr());
            let ret = sys(SYS_execve, path as usize, argv as usize, envp as usize, 0);
            fail(Step::Exec, ret)
        }
    }
}
