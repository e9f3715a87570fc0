//! Slice ownership across masters that share one queue directory
//! (docs/scaling-out.md): a master runs slice S of R of a runner only while
//! it holds a write lock on that slice's share of the hash space, bytes
//! `[S·2³²/R, (S+1)·2³²/R)` of `QUEUE_DIR/.owners/NAME.lock`. Slices of
//! different ranges that overlap (`in:0:2` and `in:1:4`) conflict as they
//! should, since their byte ranges overlap.
//!
//! The lock is an open-file-description lock (`F_OFD_SETLK`, Linux): it
//! belongs to one open file, not to the process, so releasing one slice
//! never drops another's, and the runner inherits the descriptor: the lock
//! lasts as long as the master *or* the runner holds it, so a runner that
//! outlives a killed master by a moment still keeps its slice. NFSv4 carries
//! byte-range locks to the server; see the docs for the file systems that
//! do not honour them.
//!
//! Who holds a slice is written beside the lock (`NAME.S.R.owner`: host, pid,
//! since), for the messages of a master that waits.
//!
//! Not here: when to take or wait for a lock (`master::sharing`).

// Off Linux only the types remain (no locks to take).
#![cfg_attr(not(target_os = "linux"), allow(dead_code, unused_imports))]

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The hash space's size in lock bytes: every power-of-two range up to
/// 2³² divides it exactly.
const SPACE: i64 = 1 << 32;

/// A slice's lock, held while this value lives.
#[derive(Debug)]
pub struct SliceLock {
    file: File,
    info: PathBuf,
}

impl SliceLock {
    /// The descriptor a runner inherits to keep the lock with it.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl Drop for SliceLock {
    fn drop(&mut self) {
        // The lock goes with the last descriptor; the note of who held it
        // goes now (a master that dies leaves it, and the next owner
        // overwrites it).
        let _ = fs::remove_file(&self.info);
    }
}

/// What trying a slice's lock found.
#[derive(Debug)]
pub enum Claim {
    Mine(SliceLock),
    /// Another process holds it (or a slice overlapping it): who, as its
    /// note says.
    Held(String),
}

fn dir(queue_dir: &Path) -> PathBuf {
    queue_dir.join(".owners")
}

fn range_of(slice: u32, range: u32) -> (i64, i64) {
    let len = SPACE / i64::from(range.max(1));
    (i64::from(slice) * len, len)
}

/// Tries to lock slice `slice` of `range` of runner `name` in `queue_dir`;
/// `me` is what the note says of this master (host, pid, since).
#[cfg(target_os = "linux")]
pub fn try_claim(
    queue_dir: &Path,
    name: &str,
    slice: u32,
    range: u32,
    me: &str,
) -> io::Result<Claim> {
    let dir = dir(queue_dir);
    fs::create_dir_all(&dir)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
    let path = dir.join(format!("{name}.lock"));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let (start, len) = range_of(slice, range);
    let mut fl = flock(libc::F_WRLCK as libc::c_short, start, len);
    // SAFETY: fcntl on an fd we own, with a valid, initialised flock.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) };
    if r == -1 {
        let e = io::Error::last_os_error();
        if !matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) {
            return Err(io::Error::new(
                e.kind(),
                format!("locking {}: {e}", path.display()),
            ));
        }
        return Ok(Claim::Held(holder(&file, &dir, name, start, len)));
    }
    let info = dir.join(format!("{name}.{slice}.{range}.owner"));
    let tmp = dir.join(format!(
        ".{name}.{slice}.{range}.owner.{}",
        std::process::id()
    ));
    let _ = fs::write(&tmp, me).and_then(|()| fs::rename(&tmp, &info));
    let _ = fs::remove_file(&tmp);
    Ok(Claim::Mine(SliceLock { file, info }))
}

/// Off Linux there are no open-file-description locks: ownership is not
/// enforced (docs/scaling-out.md).
#[cfg(not(target_os = "linux"))]
pub fn try_claim(
    _queue_dir: &Path,
    _name: &str,
    _slice: u32,
    _range: u32,
    _me: &str,
) -> io::Result<Claim> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "slice locks need Linux (open file description locks)",
    ))
}

/// The file system `path` (or its nearest existing ancestor) is on: its
/// name, and whether it is one several hosts can share (NFS, SMB, CephFS,
/// GFS2, OCFS2, Lustre, AFS). `None` where it cannot be told (FUSE: sshfs
/// and GlusterFS alike; off Linux).
#[cfg(target_os = "linux")]
pub fn file_system(path: &Path) -> Option<(&'static str, bool)> {
    let mut at = Some(path);
    while let Some(p) = at {
        if let Ok(fs) = nix::sys::statfs::statfs(p) {
            // The magic numbers of statfs(2); the field's width varies by
            // architecture (i64 here).
            #[allow(clippy::unnecessary_cast)]
            let magic = fs.filesystem_type().0 as i64;
            return match magic {
                0x6969 => Some(("nfs", true)),
                0x517B | 0xFF53_4D42 | 0xFE53_4D42 => Some(("smb", true)),
                0x00C3_6400 => Some(("ceph", true)),
                0x0116_1970 => Some(("gfs2", true)),
                0x7461_636f => Some(("ocfs2", true)),
                0x0BD0_0BD0 => Some(("lustre", true)),
                0x5346_414F => Some(("afs", true)),
                0x6573_5546 => None,
                0xEF53 => Some(("ext4", false)),
                0x5846_5342 => Some(("xfs", false)),
                0x9123_683E => Some(("btrfs", false)),
                0x0102_1994 => Some(("tmpfs", false)),
                0x794C_7630 => Some(("overlay", false)),
                0x2FC1_2FC1 => Some(("zfs", false)),
                _ => Some(("a local file system", false)),
            };
        }
        at = p.parent();
    }
    None
}

#[cfg(not(target_os = "linux"))]
pub fn file_system(_path: &Path) -> Option<(&'static str, bool)> {
    None
}

/// Who holds slice `slice` of `range` of runner `name` (or a slice that
/// overlaps it) in `queue_dir`, as its note says; `None` if nobody does.
#[cfg(target_os = "linux")]
pub fn holder_of(queue_dir: &Path, name: &str, slice: u32, range: u32) -> Option<String> {
    let dir = dir(queue_dir);
    let file = File::open(dir.join(format!("{name}.lock"))).ok()?;
    let (start, len) = range_of(slice, range);
    let mut fl = flock(libc::F_WRLCK as libc::c_short, start, len);
    // SAFETY: fcntl on an fd we own, with a valid, initialised flock.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    if r == -1 || fl.l_type == libc::F_UNLCK as libc::c_short {
        return None;
    }
    Some(holder(&file, &dir, name, start, len))
}

#[cfg(not(target_os = "linux"))]
pub fn holder_of(_queue_dir: &Path, _name: &str, _slice: u32, _range: u32) -> Option<String> {
    None
}

#[cfg(target_os = "linux")]
fn flock(kind: libc::c_short, start: i64, len: i64) -> libc::flock {
    // SAFETY: flock is plain data; zero is a valid value for every field.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start;
    fl.l_len = len;
    fl
}

/// Who holds what conflicts with `[start, start+len)`: the note of the
/// conflicting lock's slice, or what is known without one.
#[cfg(target_os = "linux")]
fn holder(file: &File, dir: &Path, name: &str, start: i64, len: i64) -> String {
    let mut fl = flock(libc::F_WRLCK as libc::c_short, start, len);
    // SAFETY: fcntl on an fd we own, with a valid, initialised flock.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    if r == -1 || fl.l_type == libc::F_UNLCK as libc::c_short || fl.l_len <= 0 {
        return "another master (it just let go)".into();
    }
    let range = (SPACE / fl.l_len).max(1);
    let slice = fl.l_start / fl.l_len;
    let spec = format!("{name}:{slice}:{range}");
    match fs::read_to_string(dir.join(format!("{name}.{slice}.{range}.owner"))) {
        Ok(note) if !note.trim().is_empty() => format!("{spec} held by {}", note.trim()),
        _ => format!("{spec} held by another master"),
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn overlapping_slices_conflict_and_others_do_not() {
        let d = tempfile::tempdir().unwrap();
        let q = d.path();
        let Claim::Mine(a) = try_claim(q, "in", 0, 2, "host a, pid 1").unwrap() else {
            panic!("a free slice is mine");
        };
        // The same slice through another open file: held, and by whom.
        match try_claim(q, "in", 0, 2, "host b, pid 2").unwrap() {
            Claim::Held(who) => assert_eq!(who, "in:0:2 held by host a, pid 1"),
            Claim::Mine(_) => panic!("one slice locked twice"),
        }
        // Looking does not take: held, or free.
        assert_eq!(
            holder_of(q, "in", 1, 4).as_deref(),
            Some("in:0:2 held by host a, pid 1")
        );
        assert_eq!(holder_of(q, "in", 2, 4), None);
        assert_eq!(holder_of(q, "nosuch", 0, 1), None);
        // in:1:4 is half of in:0:2; in:2:4 is the other half of the space.
        assert!(matches!(
            try_claim(q, "in", 1, 4, "b").unwrap(),
            Claim::Held(_)
        ));
        let Claim::Mine(c) = try_claim(q, "in", 2, 4, "host c").unwrap() else {
            panic!("in:2:4 does not overlap in:0:2");
        };
        // Another runner's slices are another file.
        assert!(matches!(
            try_claim(q, "out", 0, 2, "b").unwrap(),
            Claim::Mine(_)
        ));
        // Let go: the slice is free again, the note is gone.
        drop(a);
        assert!(!q.join(".owners/in.0.2.owner").exists());
        assert!(matches!(
            try_claim(q, "in", 0, 2, "b").unwrap(),
            Claim::Mine(_)
        ));
        drop(c);
    }
}
