//! Starting many runners at once (start-up, a restart of every runner): on
//! two threads, the event loop's and the spawner's, so that two children
//! `execve` on two cores (issue 19). A vfork-style clone (`os::vfork`)
//! holds its thread until the child has exec'd, ~0.5 ms for a small
//! dynamically linked program here: one thread leaves the other core idle
//! while it waits.
//!
//! The spawner thread lives as long as the master: a child's parent-death
//! signal fires when the *thread* that created it ends, so a thread that
//! started runners must never end before the master does. It blocks every
//! signal (they are the event loop's) and sleeps on its channel between
//! batches: no wake-up while the master is idle.
//!
//! Not here: what a child is started with (`spawn`), the clone itself
//! (`os::vfork`), deciding what to start (`runners`, `startup`).

use std::io;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender, channel};

use super::spawn::{Prepared, Spawned};

/// A child to start, by its index in the batch.
type Job = (usize, Prepared);
/// The spawner's answer: the job back, and what its clone gave (`None`:
/// none can be had here; the caller forks).
type Done = (usize, Prepared, Option<io::Result<i32>>);

struct Spawner {
    jobs: Sender<Job>,
    done: Receiver<Done>,
}

/// The spawner, once started; `None` inside if it could not be.
static SPAWNER: Mutex<Option<Option<Spawner>>> = Mutex::new(None);

/// Starts each child, as [`Prepared::run`] would, the event loop's thread
/// and the spawner's taking turns; results in the same order. Each child
/// is prepared (its pipes made) only when its turn comes, and the spawner
/// has one at a time: the descriptors open at once stay as few as with
/// one start after another.
pub(super) fn run_all(
    children: impl Iterator<Item = io::Result<Prepared>>,
) -> Vec<io::Result<Spawned>> {
    let mut out: Vec<Option<io::Result<Spawned>>> = Vec::new();
    // Until one clone has worked, one at a time: the first learns which
    // clone this kernel gives (and whether any), the rest follow it.
    let mut cloning = false;
    // Whether the spawner has a child of ours now.
    let mut busy = false;
    let mut guard = SPAWNER.lock().ok();
    for (idx, child) in children.enumerate() {
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                out.push(Some(Err(e)));
                continue;
            }
        };
        let spawner = guard
            .as_deref_mut()
            .filter(|_| cloning && idx % 2 == 1)
            .and_then(|g| g.get_or_insert_with(start).as_ref());
        if let Some(s) = spawner {
            if busy {
                busy = !answer(s, &mut out);
            }
            match s.jobs.send((idx, child)) {
                Ok(()) => {
                    busy = true;
                    out.push(None);
                }
                Err(e) => {
                    let (_, child) = e.0;
                    out.push(Some(child.run()));
                }
            }
            continue;
        }
        out.push(Some(match child.clone_start() {
            Some(pid) => {
                cloning = true;
                pid.map(|pid| child.started(pid))
            }
            None => child.run(),
        }));
    }
    if busy && let Some(Some(Some(s))) = guard.as_deref() {
        answer(s, &mut out);
    }
    out.into_iter()
        .map(|r| r.unwrap_or_else(|| Err(io::Error::other("the spawner thread went away"))))
        .collect()
}

/// Waits for the spawner's child and puts it in its place in `out`;
/// whether it came (it always does: the spawner never ends).
fn answer(s: &Spawner, out: &mut [Option<io::Result<Spawned>>]) -> bool {
    let Ok((idx, child, pid)) = s.done.recv() else {
        return false;
    };
    out[idx] = Some(match pid {
        Some(pid) => pid.map(|pid| child.started(pid)),
        None => child.run(),
    });
    true
}

/// Starts the spawner thread with every signal blocked; `None` if it
/// cannot be started (the caller then starts every child itself).
fn start() -> Option<Spawner> {
    let (jobs, job_rx) = channel::<Job>();
    let (done_tx, done) = channel::<Done>();
    // SAFETY: masks of the calling thread, saved and restored; the new
    // thread inherits the full one.
    let old = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        old
    };
    let started = std::thread::Builder::new()
        .name("spawner".into())
        .stack_size(256 * 1024)
        .spawn(move || serve(job_rx, done_tx));
    // SAFETY: restores the mask saved above.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
    }
    match started {
        Ok(_) => Some(Spawner { jobs, done }),
        Err(e) => {
            tracing::debug!("no spawner thread ({e}): runners start one by one");
            None
        }
    }
}

/// The spawner's life: clone what it is given, hand it back. It never
/// returns: its runners would get their parent-death signal.
fn serve(jobs: Receiver<Job>, done: Sender<Done>) {
    while let Ok((idx, child)) = jobs.recv() {
        let pid = child.clone_start();
        if done.send((idx, child, pid)).is_err() {
            break;
        }
    }
    loop {
        std::thread::park();
    }
}
