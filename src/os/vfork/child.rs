//! The clone itself and the child it starts: `clone`/`clone3` made by
//! hand (the child runs `child` on a stack we give it), and the child's
//! whole life between clone and `execve`, made of direct system calls.
//! Shared by the single spawn (`imp`) and a batch (`batch`).
//!
//! Not here: choosing the clone and waiting for the child (`imp`, `batch`).

use std::ffi::{c_int, c_void};

use super::imp::{Shared, Step};

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
pub(super) unsafe fn raw_clone(nr: libc::c_long, a0: usize, a1: usize, arg: *mut c_void) -> isize {
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
/// reads only what [`Shared`] points to, and writes only its own stack,
/// `Shared`'s `unshared` once it has a descriptor table of its own and,
/// on a failure, its step and errno to `Shared` before it exits with 127.
///
/// # Safety
/// `arg` is a `Shared` that, with all it points to, stays where it is,
/// unchanged, until this process has exec'd or exited.
unsafe extern "C" fn child(arg: *mut c_void) -> c_int {
    use libc::{
        SYS_close, SYS_close_range, SYS_dup2, SYS_execve, SYS_exit_group, SYS_fcntl, SYS_getppid,
        SYS_openat, SYS_prctl, SYS_prlimit64, SYS_rt_sigaction, SYS_rt_sigprocmask, SYS_setpgid,
        SYS_write,
    };
    // SAFETY: see above; each `sys` is a system call on this process
    // with arguments that are live for it.
    unsafe {
        let shared = arg.cast::<Shared>();
        let plan = (*shared).plan;
        let fail = |step: Step, ret: isize| -> ! {
            std::ptr::write_volatile(&raw mut (*shared).errno, (-ret) as c_int);
            std::ptr::write_volatile(&raw mut (*shared).step, step as u8);
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
            // A plain store to memory the caller reads: its slots in our
            // table are free for the next child.
            (*shared)
                .unshared
                .store(true, std::sync::atomic::Ordering::Release);
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
        // Open across the closing: the kept descriptor.
        let last = below.map_or(c_int::MAX as libc::c_uint, |k| k - 1);
        if let Some(fd) = keep
            && fd >= 3
        {
            let ret = sys(SYS_fcntl, fd as usize, libc::F_SETFD as usize, 0, 0);
            if ret < 0 {
                fail(Step::Descriptors, ret);
            }
        }
        let mut first = 3;
        if let Some(fd) = keep.filter(|&fd| fd >= 3) {
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
