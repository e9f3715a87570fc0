//! One slice's view of one queue: its waiting entries oldest first,
//! claiming (`.msg` → `.bak`), finishing (removed or moved on), and the
//! start-up recovery of what a dead runner left in hand.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{BAK, Entry, MAX_RECOVERIES, MSG, PSV, REC, STALE_TEMPORARY, failed};
use crate::config::BAD_QUEUE;

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
    use crate::queue::enqueue;
    use crate::queue::scan::scan;

    fn depth(dir: &std::path::Path) -> (usize, usize) {
        let s = scan(dir, 1).unwrap();
        (s.waiting, s.in_hand)
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
        assert_eq!(depth(&sb.dir()), (0, 1));
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
        assert_eq!(depth(&root.join("bad")).0, 1);
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
        assert_eq!(depth(&root.join("out")), (2, 0));
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
        let shm = tempfile::tempdir_in("/dev/shm").expect("this test needs /dev/shm");
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
