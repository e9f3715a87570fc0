//! Batches ([`spawn_all`]: start-up's, and restarts due together): every
//! child cloned before any has exec'd, each sharing our memory (`CLONE_VM`,
//! without `CLONE_VFORK`: we go on cloning while it sets itself up and
//! execs on the other core), then a wait until each has exec'd or failed.
//! A fork would copy our page tables and make our next writes fault, once
//! per child.
//!
//! A child that shares our memory while we run must not read anything we
//! may change or free: each gets a slot of its own in a mapping made for
//! the batch: its stack (a guard page below), then a copy of its plan
//! (program, arguments, environment), its `Shared` and the word the kernel
//! clears when it execs or exits (`CLONE_CHILD_CLEARTID`: what we wait on,
//! with a futex). A failure is written to its `Shared`.
//!
//! In a start-up of more than one batch (or once our descriptor table is
//! large: past [`SHARE_ABOVE`]), each child shares it too, with a set of
//! four descriptors of its own ([`sets`], made before the first batch's
//! pipes: [`prepare`]) holding its stdin, stdout, stderr and kept descriptor;
//! its first system call gives it a table of its own of only what lies
//! below its set, as the single spawn's child does, so that at 1,000
//! runners it neither copies nor closes the others' 2,000 pipes.
//! A set is given to the next child once its child has a table of its own
//! (the lowest such set first: fewer descriptors below it to copy), and
//! put back on its placeholder once the last child given it has exec'd or
//! exited.
//! With a small table, where the kernel cannot (`close_range` without
//! `CLOSE_RANGE_UNSHARE`, before 5.9) or when no set is free, the child
//! gets a copy of the table: the copy costs it less than the set costs us.
//!
//! The mapping is unmapped once every child has exec'd or exited; if one
//! has done neither by [`BATCH_WAIT`], it and its set are left as they are
//! for good.
//!
//! Not here: the clone itself and the child's set-up (`child`), shared
//! with the single spawn (`imp`).

use std::ffi::{CStr, c_char, c_int, c_void};
use std::io;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::time::Instant;

use super::Plan;
use super::child::{CloneArgs, clone3, raw_clone4};
use super::imp::{
    CLONE, CLONE_INTO_CGROUP, CLONE3_CGROUP, SHARE_FILES, Shared, Step, block_all, failure,
    handled, learning, map, move_into, put_back, restore, sets,
};

/// Where no sets were made beforehand ([`prepare`]): how far our table
/// reaches past the batch's own pipes (the other runners' pipes: two a
/// runner) before a batch's children share it (with a set of descriptors
/// each) rather than copy it. A child that shares our table copies and
/// closes what lies below its set, one that does not copies and closes the
/// whole table (~0.25 µs a descriptor here); a set costs us a few `dup3`s a
/// child, and its making once (four placeholder descriptors per child of
/// a batch, kept for the next).
const SHARE_ABOVE: c_int = 256;

/// Before a start-up of `children` runners in batches of `batch`: if they
/// are more than one batch, a batch's sets made now, while our table is
/// small, so that they are its lowest descriptors and a child copies and
/// closes only the few below its own set; with sets made, every batch
/// shares our table. Made at the first batch past [`SHARE_ABOVE`] instead,
/// they would lie above the first batches' pipes, and each child would
/// copy and close those (at 1,000 runners, ~500 each: 150 ms of CPU in all,
/// measured). A start-up of one batch makes none: its table is small.
pub fn prepare(children: usize, batch: usize) {
    if children > batch && SHARE_FILES.load(Relaxed) {
        drop(sets(batch));
    }
}

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
    let highest = plans.iter().flat_map(|p| p.stdio).max().unwrap_or(0);
    let own = c_int::try_from(4 * plans.len()).unwrap_or(c_int::MAX);
    let prepared = !sets(0).is_empty();
    let share =
        SHARE_FILES.load(Relaxed) && (prepared || highest.saturating_sub(own) > SHARE_ABOVE);
    let mut sets = sets(if share { plans.len() } else { 0 });
    // Per set, the last child given it (its place in `waiting`). A set is
    // given again, the lowest first, once that child has a table of its
    // own: a child copies and closes every descriptor below its set, and
    // with a set for each child a batch of 128 copied 256 on average
    // (given again: 70–145 at 1,000 runners, children on both cores).
    let mut users: Vec<Option<usize>> = vec![None; sets.len()];
    let mut out: Vec<Option<io::Result<i32>>> = Vec::with_capacity(plans.len());
    // Each started child: its place in `out`, its pid, its slot, its set.
    let mut waiting: Vec<(usize, i32, Child, Option<usize>)> = Vec::new();
    for (i, plan) in plans.iter().enumerate() {
        let child = match slots.fill(i, plan) {
            Ok(c) => c,
            Err(e) => {
                out.push(Some(Err(e)));
                continue;
            }
        };
        let set = if share {
            (0..sets.len())
                .find(|&n| !sets[n].taken && users[n].is_none_or(|w| waiting[w].2.left_our_table()))
        } else {
            None
        };
        let fds = set.map(|n| sets[n].fds);
        match learning(plan, |_, mode| detached(&child, fds, mode)) {
            Some(Ok(Ok(pid))) => {
                if let Some(n) = set {
                    users[n] = Some(waiting.len());
                }
                waiting.push((out.len(), pid, child, set));
                out.push(Some(Ok(pid)));
            }
            Some(Ok(Err(e)) | Err(e)) => out.push(Some(Err(e))),
            None => out.push(None),
        }
    }
    let deadline = Instant::now() + BATCH_WAIT;
    let mut lasting = false;
    for (w, (at, pid, child, set)) in waiting.into_iter().enumerate() {
        // The set, if this child was the last given it (an earlier one's
        // was given again, its descriptors replaced by the next child's).
        let set = set.filter(|&n| users[n] == Some(w));
        // SAFETY: the word is in the child's slot, alive until we unmap it.
        let done = unsafe { &*child.done };
        if !wait_cleared(done, deadline) {
            // Still before its exec: it may yet read its slot and (sharing
            // our table) its set.
            if let Some(n) = set {
                if child.left_our_table() {
                    put_back(&sets[n].fds);
                } else {
                    sets[n].taken = true;
                }
            }
            lasting = true;
            continue; // counts as started
        }
        if let Some(n) = set {
            put_back(&sets[n].fds);
        }
        // SAFETY: the child has exec'd or exited: it writes nothing any more.
        let (errno, step) = unsafe {
            (
                std::ptr::read_volatile(&raw const (*child.shared).errno),
                std::ptr::read_volatile(&raw const (*child.shared).step),
            )
        };
        if step == 0 {
            continue;
        }
        // SAFETY: our own child, which has failed and exits: reaped here, as
        // `attempt` does.
        unsafe {
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        out[at] = if step == Step::Unshare as u8 {
            // An older kernel: from now on, children get a copy of the
            // table; this one is forked by the caller.
            SHARE_FILES.store(false, Relaxed);
            None
        } else {
            Some(Err(failure(step, errno)))
        };
    }
    if lasting {
        // Children that may still run on their slots: never unmapped.
        std::mem::forget(slots);
    }
    out
}

/// How long [`spawn_all`] waits for a batch's children to exec.
const BATCH_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits until the kernel clears `done` (the child exec'd or exited), or
/// `deadline`; whether it did.
fn wait_cleared(done: &AtomicU32, deadline: Instant) -> bool {
    loop {
        let now = done.load(Acquire);
        if now == 0 {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let ts = libc::timespec {
            tv_sec: left.as_secs() as _,
            tv_nsec: left.subsec_nanos() as libc::c_long,
        };
        // SAFETY: a wait on a live word of ours while it holds `now`; it
        // returns on the kernel's wake, a change, a signal or the timeout
        // (not private: the kernel's wake at exec is a shared one).
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                done.as_ptr(),
                libc::FUTEX_WAIT,
                now,
                &raw const ts,
                std::ptr::null::<u32>(),
                0,
            );
        }
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

/// A child ready to be cloned: its `Shared`, the word the kernel clears
/// at its exec or exit, and its stack, in its slot.
struct Child {
    shared: *mut Shared<'static>,
    /// Where the child finds its set of descriptors, if it has one.
    set: *mut [c_int; 5],
    done: *const AtomicU32,
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
        let base = map(len, libc::PROT_NONE, "the children's stacks")?;
        Ok(Slots { base, len, stride })
    }

    /// Slot `i` made writable and filled: the stack, then a copy of `plan`
    /// that points only into the slot, and the child's `Shared`.
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
        // The stack at the bottom, so that an overflow meets the guard page
        // below it rather than the copy above.
        let mut bump = Bump {
            at: start.wrapping_add(STACK),
            end: start.wrapping_add(size),
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
                unshared: std::sync::atomic::AtomicBool::new(false),
                errno: 0,
                step: 0,
            })
            .ok_or_else(|| io::Error::other("a child's plan does not fit its slot"))?;
        let done = bump
            .place(AtomicU32::new(0))
            .ok_or_else(|| io::Error::other("a child's plan does not fit its slot"))?;
        let set = bump
            .place([-1; 5])
            .ok_or_else(|| io::Error::other("a child's plan does not fit its slot"))?;
        Ok(Child {
            shared,
            set,
            done,
            stack: start,
            stack_size: STACK,
        })
    }
}

impl Child {
    /// Whether the child no longer reads our descriptor table: it has a
    /// table of its own, or has exec'd or exited.
    fn left_our_table(&self) -> bool {
        // SAFETY: both are in the child's slot, alive until we unmap it;
        // the child writes `unshared` (atomically) and the kernel `done`.
        unsafe { (*self.done).load(Acquire) == 0 || (*self.shared).unshared.load(Acquire) }
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
        + std::mem::size_of::<AtomicU32>()
        + std::mem::size_of::<[c_int; 5]>()
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
/// wait for its `execve`, and shares our descriptor table until its first
/// system call if it has a set of descriptors (`fds`): its pid. `Err`: the
/// clone failed; `Ok(Err)`: its descriptors could not be set.
fn detached(child: &Child, fds: Option<[c_int; 5]>, mode: u8) -> io::Result<io::Result<i32>> {
    // SAFETY: the child's `Shared` and set, in its slot; no child runs on
    // them yet (a clone that failed started none). The set is copied there
    // so that the child reads nothing but its slot.
    let (plan, fds) = unsafe {
        let shared = &mut *child.shared;
        shared.join_cgroup = shared.plan.cgroup.is_some() && mode != CLONE3_CGROUP;
        let fds = fds.map(|f| {
            child.set.write(f);
            &*child.set
        });
        shared.slots = fds;
        (shared.plan, fds)
    };
    let mut flags = (libc::CLONE_VM | libc::CLONE_CHILD_CLEARTID) as u64;
    if let Some(s) = fds {
        if let Err(e) = move_into(plan, s) {
            return Ok(Err(e));
        }
        flags |= libc::CLONE_FILES as u64;
    }
    // SAFETY: the word is in the slot, aligned; the kernel clears it.
    unsafe { (*child.done).store(1, Relaxed) };
    let mut args = CloneArgs {
        flags,
        exit_signal: libc::SIGCHLD as u64,
        child_tid: child.done as u64,
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
    // reads only its slot (its `Shared` and the plan copied there), its set
    // of descriptors and static data; the slot stays mapped and the set
    // untouched until the kernel has cleared its word (it has exec'd or
    // exited: `spawn_all`). It makes only direct system calls (see
    // `child::child`). Every signal is blocked across the clone, so no
    // handler of ours runs in the child before it resets them.
    let ret = unsafe {
        if mode == CLONE {
            let top = child.stack.add(child.stack_size);
            raw_clone4(
                libc::SYS_clone,
                (flags | libc::SIGCHLD as u64) as usize,
                top as usize,
                child.done as usize,
                arg,
            )
        } else {
            clone3(&mut args, arg)
        }
    };
    restore(&old);
    if ret < 0 {
        if let Some(s) = fds {
            put_back(s);
        }
        return Err(io::Error::from_raw_os_error(-ret as i32));
    }
    Ok(Ok(ret as i32))
}
