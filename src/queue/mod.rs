//! Queue directories: Mailman's switchboard without pickles (docs/queues.md).
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
//! | room          | what it holds |
//! |---------------|---------------|
//! | `mod.rs`      | entries, their names and owners, counting, `enqueue` |
//! | `switchboard` | one slice's view: claim, finish, recover |
//! | `runner`      | the built-in runner that works a slice |
//!
//! Not here: the commands `inject` and `queues` (`commands::queues`).

mod handler;
pub mod runner;
pub mod scan;
mod switchboard;

pub use switchboard::{Recovered, Switchboard};

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
}
