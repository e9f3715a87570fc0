//! Queue directories: Mailman's switchboard without pickles (SPEC 6).
//!
//! An entry is one file, `$var_dir/queue/NAME/<time>+<sha1hex>.msg`, whose
//! content is opaque (a message, usually). It is written under a temporary
//! name, fsynced and renamed into place, so a reader never sees half of it.
//! A runner claims an entry by renaming it to `.bak`; once handled, the
//! `.bak` is removed or renamed into another queue. Every step is one
//! rename, so a crash at any moment leaves the entry whole in exactly one
//! place: in a queue, or in hand (`.bak`), from where the next start of its
//! slice returns it. An entry found in hand for the third time (it took its
//! runner down three times) is moved to `bad/` as `<base>.psv`, as Mailman
//! does, instead of looping. The count lives in a `<base>.rec` file next to
//! the entry, since the entry's bytes are not ours to change.
//!
//! Slice `S` of `R` owns the entries whose 160-bit hash `h` satisfies
//! `floor(h * R / 2^160) == S` (the top log2(R) bits of the hash).
//!
//! Not here: running handlers, signals (that is `runner`).

pub mod runner;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::BAD_QUEUE;
use crate::util::io_text;

/// `e` as one line, `what: reason` (without Rust's "(os error N)").
fn failed(what: String) -> impl FnOnce(io::Error) -> anyhow::Error {
    move |e| anyhow::anyhow!("{what}: {}", io_text(&e))
}

/// An entry found in hand at start-up this many times goes to `bad/`
/// (Mailman's `MAX_BAK_COUNT`).
pub const MAX_RECOVERIES: u32 = 3;

/// How old a temporary file in a queue must be to count as abandoned.
pub const STALE_TEMPORARY: Duration = Duration::from_secs(3600);

const MSG: &str = "msg";
const BAK: &str = "bak";
/// What `bad/` keeps (Mailman's "preserved" extension): never processed.
const PSV: &str = "psv";
const REC: &str = "rec";
/// Mailman Core's own entries (pickles), counted by `mailman queues` when
/// this binary supervises Mailman's Python runners.
const PCK: &str = "pck";

/// `$var_dir/queue`.
pub fn root(var_dir: &Path) -> PathBuf {
    var_dir.join("queue")
}

/// One entry, by its base name `<time>+<sha1hex>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub base: String,
    hash: [u8; 20],
    time: f64,
}

impl Entry {
    /// The entry a file name `<time>+<sha1hex>.<ext>` stands for; `None` for
    /// any other name (temporary files, sidecars, strangers).
    pub fn parse(file_name: &str, ext: &str) -> Option<Entry> {
        let base = file_name.strip_suffix(ext)?.strip_suffix('.')?;
        let (time, hex) = base.split_once('+')?;
        let time: f64 = time.parse().ok().filter(|t: &f64| t.is_finite())?;
        if hex.len() != 40 {
            return None;
        }
        let mut hash = [0u8; 20];
        for (i, byte) in hash.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Entry {
            base: base.to_string(),
            hash,
            time,
        })
    }

    pub fn file_name(&self) -> String {
        format!("{}.{MSG}", self.base)
    }

    /// The slice of `range` that owns this entry.
    pub fn owner(&self, range: u32) -> u32 {
        owner(&self.hash, range)
    }
}

/// `floor(h * range / 2^160)` for the big-endian 160-bit `h`, exactly:
/// multiply byte by byte from the low end and keep what carries out.
pub fn owner(hash: &[u8; 20], range: u32) -> u32 {
    let mut carry: u64 = 0;
    for &b in hash.iter().rev() {
        carry = (u64::from(b) * u64::from(range) + carry) >> 8;
    }
    carry as u32
}

/// How many entries a queue holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Depth {
    /// Waiting (`.msg`; in `bad/`, the preserved `.psv`; Mailman Core's `.pck`).
    pub waiting: usize,
    /// Claimed by a runner and not yet finished (`.bak`).
    pub in_hand: usize,
}

/// Counts the entries of the queue directory `dir` (a missing one is empty).
pub fn depth(dir: &Path) -> io::Result<Depth> {
    let mut d = Depth::default();
    let list = match fs::read_dir(dir) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(d),
        Err(e) => return Err(e),
    };
    for item in list {
        let name = item?.file_name();
        let Some(name) = name.to_str() else { continue };
        if [MSG, PSV, PCK]
            .iter()
            .any(|ext| Entry::parse(name, ext).is_some())
        {
            d.waiting += 1;
        } else if Entry::parse(name, BAK).is_some() {
            d.in_hand += 1;
        }
    }
    Ok(d)
}

/// Writes the content of `source` as a new entry of the queue directory
/// `dir` and returns its file name. The entry appears whole or not at all:
/// on any error the temporary file is removed.
pub fn enqueue(dir: &Path, source: &mut dyn Read, source_label: &str) -> anyhow::Result<String> {
    static NONCE: AtomicU64 = AtomicU64::new(0);
    let pid = std::process::id();
    let nonce = NONCE.fetch_add(1, Ordering::Relaxed);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let tmp = dir.join(format!(".{pid}.{}.{nonce}.tmp", now.as_nanos()));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(failed(format!("cannot write to queue {}", dir.display())))?;
    let mut guard = RemoveOnDrop(Some(tmp.clone()));
    let mut sha = sha1_smol::Sha1::new();
    copy_hashing(source, &file, &mut sha, source_label, &tmp)?;
    file.sync_all()
        .map_err(failed(format!("cannot write {}", tmp.display())))?;
    drop(file);
    // Mailman's hash food: the content and the time; the nanoseconds, pid,
    // a counter and a per-process random number keep two identical entries
    // apart (written in one microsecond, even from two PID namespaces).
    let time = format!("{}.{:06}", now.as_secs(), now.subsec_micros());
    sha.update(time.as_bytes());
    sha.update(&now.subsec_nanos().to_be_bytes());
    sha.update(&pid.to_be_bytes());
    sha.update(&nonce.to_be_bytes());
    sha.update(&random().to_be_bytes());
    let name = format!("{time}+{}.{MSG}", sha.digest());
    fs::rename(&tmp, dir.join(&name))
        .map_err(failed(format!("cannot write to queue {}", dir.display())))?;
    guard.0 = None;
    sync_dir(dir);
    Ok(name)
}

/// A random number, from the random keys std gives each `RandomState`.
fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

fn copy_hashing(
    source: &mut dyn Read,
    mut file: &File,
    sha: &mut sha1_smol::Sha1,
    source_label: &str,
    tmp: &Path,
) -> anyhow::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match source.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(failed(format!("cannot read {source_label}"))(e)),
        };
        sha.update(&buf[..n]);
        file.write_all(&buf[..n])
            .map_err(failed(format!("cannot write {}", tmp.display())))?;
    }
}

/// Removes a temporary file unless disarmed (set to `None`).
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// Makes renames in `dir` durable where the file system supports it.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// What start-up recovery did with one entry found in hand.
#[derive(Debug, Clone, PartialEq)]
pub enum Recovered {
    /// Back in the queue; found in hand this many times so far.
    Returned(Entry, u32),
    /// Found in hand [`MAX_RECOVERIES`] times: moved to `bad/`.
    ToBad(Entry),
}

/// One slice's view of one queue.
#[derive(Debug, Clone)]
pub struct Switchboard {
    root: PathBuf,
    name: String,
    slice: u32,
    range: u32,
}

impl Switchboard {
    /// The queue `name` under `root` (`$var_dir/queue`), seen by `slice` of
    /// `range`. Creates its directory and those of `targets`, the queues
    /// its entries may be moved to.
    pub fn open(
        root: &Path,
        name: &str,
        slice: u32,
        range: u32,
        targets: &[&str],
    ) -> anyhow::Result<Switchboard> {
        for q in std::iter::once(name).chain(targets.iter().copied()) {
            let dir = root.join(q);
            fs::create_dir_all(&dir).map_err(failed(format!(
                "cannot create queue directory {}",
                dir.display()
            )))?;
        }
        Ok(Switchboard {
            root: root.to_path_buf(),
            name: name.to_string(),
            slice,
            range,
        })
    }

    pub fn dir(&self) -> PathBuf {
        self.root.join(&self.name)
    }

    fn path(&self, e: &Entry, ext: &str) -> PathBuf {
        self.dir().join(format!("{}.{ext}", e.base))
    }

    /// The claimed entry's file (what a handler reads).
    pub fn in_hand(&self, e: &Entry) -> PathBuf {
        self.path(e, BAK)
    }

    /// This slice's entries with extension `ext`, oldest first (FIFO).
    fn list(&self, ext: &str) -> io::Result<Vec<Entry>> {
        let mut out = Vec::new();
        for item in fs::read_dir(self.dir())? {
            let name = item?.file_name();
            let Some(e) = name.to_str().and_then(|n| Entry::parse(n, ext)) else {
                continue;
            };
            if e.owner(self.range) == self.slice {
                out.push(e);
            }
        }
        out.sort_by(|a, b| a.time.total_cmp(&b.time).then_with(|| a.base.cmp(&b.base)));
        Ok(out)
    }

    /// This slice's waiting entries, oldest first.
    pub fn waiting(&self) -> io::Result<Vec<Entry>> {
        self.list(MSG)
    }

    /// Claims `e` (`.msg` → `.bak`). `false`: it is gone (someone else's).
    pub fn claim(&self, e: &Entry) -> io::Result<bool> {
        match fs::rename(self.path(e, MSG), self.path(e, BAK)) {
            Ok(()) => Ok(true),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Finishes the claimed `e`: removed (`to` is `None`), or moved into
    /// the queue `to` under its own name.
    pub fn finish(&self, e: &Entry, to: Option<&str>) -> io::Result<()> {
        let bak = self.path(e, BAK);
        match to {
            None => fs::remove_file(&bak)?,
            Some(q) => {
                let dest = if q == BAD_QUEUE {
                    format!("{}.{PSV}", e.base)
                } else {
                    e.file_name()
                };
                move_file(&bak, &self.root.join(q).join(dest))?;
            }
        }
        self.forget(e);
        Ok(())
    }

    /// Removes `e`'s recovery count, if any.
    fn forget(&self, e: &Entry) {
        let _ = fs::remove_file(self.path(e, REC));
    }

    fn recoveries(&self, e: &Entry) -> u32 {
        fs::read_to_string(self.path(e, REC))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Start-up: returns this slice's entries left in hand by a runner that
    /// died to the queue, or, on their [`MAX_RECOVERIES`]th time, moves
    /// them to `bad/`. Also drops recovery counts whose entry has left.
    pub fn recover(&self) -> anyhow::Result<Vec<Recovered>> {
        let mut done = Vec::new();
        let dir = self.dir();
        for e in self
            .list(BAK)
            .map_err(failed(format!("cannot read {}", dir.display())))?
        {
            let n = self.recoveries(&e) + 1;
            if n >= MAX_RECOVERIES {
                self.finish(&e, Some(BAD_QUEUE)).map_err(failed(format!(
                    "cannot move {} to the bad queue",
                    self.in_hand(&e).display()
                )))?;
                done.push(Recovered::ToBad(e));
                continue;
            }
            // The count first: a crash between the two steps over-counts
            // by one rather than loops.
            let rec = self.path(&e, REC);
            let tmp = self.path(&e, "rec.tmp");
            fs::write(&tmp, format!("{n}\n"))
                .and_then(|()| fs::rename(&tmp, &rec))
                .map_err(failed(format!("cannot write {}", rec.display())))?;
            fs::rename(self.path(&e, BAK), self.path(&e, MSG))
                .map_err(failed(format!("cannot return {} to the queue", e.base)))?;
            done.push(Recovered::Returned(e, n));
        }
        for e in self.list(REC).unwrap_or_default() {
            if !self.path(&e, MSG).exists() && !self.path(&e, BAK).exists() {
                self.forget(&e);
            }
        }
        // A count being written when its runner died.
        for e in self.list("rec.tmp").unwrap_or_default() {
            let _ = fs::remove_file(self.path(&e, "rec.tmp"));
        }
        if self.slice == 0 {
            self.sweep_stale_temporaries();
        }
        Ok(done)
    }

    /// Removes what an `inject` or a cross-file-system move killed
    /// mid-write left: temporary files (`*.tmp`, never an entry) older than
    /// [`STALE_TEMPORARY`]. One slice does it; a younger one may still be
    /// being written.
    fn sweep_stale_temporaries(&self) {
        let Ok(list) = fs::read_dir(self.dir()) else {
            return;
        };
        let now = SystemTime::now();
        for item in list.flatten() {
            let name = item.file_name();
            let stale = name.to_str().is_some_and(|n| n.ends_with(".tmp"))
                && item
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| now.duration_since(t).unwrap_or_default() > STALE_TEMPORARY);
            if stale {
                let _ = fs::remove_file(item.path());
            }
        }
    }
}

/// Renames `src` to `dst`; across file systems, copies (fsynced, under a
/// temporary name) and then removes `src`.
fn move_file(src: &Path, dst: &Path) -> io::Result<()> {
    match fs::rename(src, dst) {
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            let tmp = dst.with_extension("tmp");
            let copied = fs::copy(src, &tmp).and_then(|_| File::open(&tmp)?.sync_all());
            if let Err(e) = copied.and_then(|()| fs::rename(&tmp, dst)) {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
            fs::remove_file(src)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_the_top_bits() {
        let mut h = [0u8; 20];
        assert_eq!(owner(&h, 4), 0);
        h[0] = 0x40;
        assert_eq!(owner(&h, 4), 1);
        h[0] = 0xff;
        assert_eq!(owner(&h, 4), 3);
        assert_eq!(owner(&h, 1), 0);
        assert_eq!(owner(&[0xff; 20], 8), 7);
        // Exact at a boundary that the top 64 bits alone would get right
        // too, and with a range that is not a power of 2.
        let mut third = [0x55u8; 20];
        assert_eq!(owner(&third, 3), 0);
        third[19] = 0x56;
        assert_eq!(owner(&third, 3), 1);
    }

    #[test]
    fn names() {
        let name = format!("1732492800.123456+{}.msg", "ab".repeat(20));
        let e = Entry::parse(&name, "msg").unwrap();
        assert_eq!(e.file_name(), name);
        assert_eq!(e.owner(2), 1);
        assert!(Entry::parse(&name, "bak").is_none());
        assert!(Entry::parse("x+abc.msg", "msg").is_none());
        assert!(Entry::parse(&format!("nan+{}.msg", "ab".repeat(20)), "msg").is_none());
        assert!(Entry::parse(".1.2.3.tmp", "msg").is_none());
    }

    #[test]
    fn enqueue_claim_finish_recover() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("queue");
        let sb = Switchboard::open(&root, "in", 0, 1, &["out", "bad"]).unwrap();
        let name = enqueue(&sb.dir(), &mut &b"hello"[..], "stdin").unwrap();
        assert_eq!(fs::read(sb.dir().join(&name)).unwrap(), b"hello");
        let e = sb.waiting().unwrap().remove(0);
        assert_eq!(e.file_name(), name);
        assert!(sb.claim(&e).unwrap());
        assert!(!sb.claim(&e).unwrap());
        assert_eq!(
            depth(&sb.dir()).unwrap(),
            Depth {
                waiting: 0,
                in_hand: 1
            }
        );
        // Found in hand twice: returned; the third time: bad.
        for n in 1..MAX_RECOVERIES {
            assert_eq!(
                sb.recover().unwrap(),
                vec![Recovered::Returned(e.clone(), n)]
            );
            assert!(sb.claim(&e).unwrap());
        }
        assert_eq!(sb.recover().unwrap(), vec![Recovered::ToBad(e.clone())]);
        assert_eq!(fs::read_dir(sb.dir()).unwrap().count(), 0);
        assert_eq!(depth(&root.join("bad")).unwrap().waiting, 1);
        assert!(root.join("bad").join(format!("{}.psv", e.base)).exists());
        // Moved on: into `out` under its own name.
        let name = enqueue(&sb.dir(), &mut &b"x"[..], "stdin").unwrap();
        let e = Entry::parse(&name, "msg").unwrap();
        sb.claim(&e).unwrap();
        sb.finish(&e, Some("out")).unwrap();
        assert!(root.join("out").join(&name).exists());
        // Mailman Core's pickles count as waiting too; strangers do not.
        let base = format!("1795564229.8089131+{}", "0f".repeat(20));
        fs::write(root.join("out").join(format!("{base}.pck")), "").unwrap();
        fs::write(root.join("out").join("notes.txt"), "").unwrap();
        assert_eq!(
            depth(&root.join("out")).unwrap(),
            Depth {
                waiting: 2,
                in_hand: 0
            }
        );
    }

    #[test]
    fn stale_temporaries_are_swept_by_slice_0() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("queue");
        let sb = Switchboard::open(&root, "in", 0, 2, &[]).unwrap();
        let dir = sb.dir();
        let old = dir.join(".123.456.0.tmp");
        let young = dir.join(".123.789.1.tmp");
        let other = dir.join("notes.txt");
        for p in [&old, &young, &other] {
            fs::write(p, "x").unwrap();
        }
        let long_ago = SystemTime::now() - STALE_TEMPORARY * 2;
        File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        // Slice 1 leaves them; slice 0 removes only the old temporary.
        Switchboard::open(&root, "in", 1, 2, &[])
            .unwrap()
            .recover()
            .unwrap();
        assert!(old.exists());
        sb.recover().unwrap();
        assert!(!old.exists());
        assert!(young.exists() && other.exists());
    }

    #[test]
    fn moves_across_file_systems() {
        use std::os::unix::fs::MetadataExt;
        // /dev/shm (tmpfs) and the temp dir are two file systems here; where
        // they are not, rename covers the move and this checks that.
        let Ok(shm) = tempfile::tempdir_in("/dev/shm") else {
            return;
        };
        let disk = tempfile::tempdir().unwrap();
        let crosses =
            fs::metadata(shm.path()).unwrap().dev() != fs::metadata(disk.path()).unwrap().dev();
        let src = shm.path().join("a.bak");
        fs::write(&src, "entry").unwrap();
        let dst = disk.path().join("a.msg");
        move_file(&src, &dst).unwrap();
        assert_eq!(fs::read_to_string(&dst).unwrap(), "entry");
        assert!(!src.exists());
        assert_eq!(
            fs::read_dir(disk.path()).unwrap().count(),
            1,
            "no temporary left"
        );
        println!("crossed file systems: {crosses}");
    }
}
