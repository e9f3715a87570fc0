//! Small helpers shared by several modules: error text, paths, log time stamps,
//! jitter. Nothing here knows about runners or the master.

use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// An I/O error's text without Rust's " (os error N)" suffix.
pub fn io_text(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// The largest configuration file read (ours or Mailman's): a real one is
/// kilobytes (15 KB at 1,000 runners); a path to a device or a runaway
/// generator gets an error, not all the memory there is.
pub const MAX_CONFIG: u64 = 16 * 1024 * 1024;

/// A configuration file's text, refused past [`MAX_CONFIG`] bytes. Reads
/// what `path` gives (a pipe from `<(…)` too), not its announced size.
pub fn read_config(path: &Path) -> std::io::Result<String> {
    read_config_stamped(path).map(|(text, _)| text)
}

/// Which file, as it was: a regular file's device, inode, size and change
/// times, taken as it was read. Two equal stamps are the same text, but
/// for a rewrite of the same size within one tick of the file system's
/// clock (a few milliseconds where its times are coarse) after the first
/// reading: what `status` uses it for can bear that (`Located::confirm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileStamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl FileStamp {
    fn of(m: &std::fs::Metadata) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        m.is_file().then(|| FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        })
    }
}

/// [`read_config`], and the file's stamp if it is a regular file (from the
/// descriptor it was read through, once read).
pub fn read_config_stamped(path: &Path) -> std::io::Result<(String, Option<FileStamp>)> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    // The announced size, where there is one, saves reads and copies.
    let hint = file.metadata().map_or(0, |m| m.len().min(MAX_CONFIG));
    let mut text = String::with_capacity(usize::try_from(hint).unwrap_or(0) + 1);
    (&file).take(MAX_CONFIG + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_CONFIG {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("larger than {} MiB", MAX_CONFIG >> 20),
        ));
    }
    let stamp = file.metadata().ok().and_then(|m| FileStamp::of(&m));
    Ok((text, stamp))
}

/// Replaces `path` with `contents` (mode `mode`, whatever the umask): a
/// temporary file beside it (a rename cannot cross file systems), renamed
/// over it, so that a reader sees the old file or the whole new one. Not
/// fsynced. On a failure nothing is left behind.
pub fn replace_file(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    use std::fs::{OpenOptions, Permissions};
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        f.set_permissions(Permissions::from_mode(mode))?;
        f.write_all(contents)?;
        std::fs::rename(&tmp, path)
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// `path` with `.` components and `x/..` pairs removed, lexically.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// Mailman's log time stamp (`%b %d %H:%M:%S %Y`), in UTC.
pub fn log_time(now: SystemTime) -> String {
    LogTime(now).to_string()
}

/// [`log_time`] written where it is formatted, with no string of its own
/// (a log line is one allocation, not two).
pub struct LogTime(pub SystemTime);

impl std::fmt::Display for LogTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let secs = self.0.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
        let (y, m, d) = civil_from_days(secs.div_euclid(86400));
        let rem = secs.rem_euclid(86400);
        write!(
            f,
            "{} {:02} {:02}:{:02}:{:02} {}",
            MONTHS[(m - 1) as usize],
            d,
            rem / 3600,
            (rem % 3600) / 60,
            rem % 60,
            y
        )
    }
}

/// RFC 3339 time stamp in UTC with milliseconds (for JSON logs).
pub fn rfc3339(now: SystemTime) -> String {
    let dur = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = dur.as_secs() as i64;
    let (y, m, d) = civil_from_days(secs.div_euclid(86400));
    let rem = secs.rem_euclid(86400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        dur.subsec_millis()
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A pseudo-random number in `0..bound` (xorshift seeded from the clock and
/// pid); good enough for back-off jitter, not for anything secret.
pub fn jitter(bound: u64) -> u64 {
    use std::cell::Cell;
    thread_local!(static STATE: Cell<u64> = const { Cell::new(0) });
    if bound == 0 {
        return 0;
    }
    STATE.with(|s| {
        let mut x = s.get();
        if x == 0 {
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64);
            x = t ^ ((std::process::id() as u64) << 32) | 1;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x % bound
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn time_stamps() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_551_451); // 2026-11-24 20:17:31 UTC
        assert_eq!(log_time(t), "Nov 24 20:17:31 2026");
        assert_eq!(rfc3339(t), "2026-11-24T20:17:31.000Z");
        assert_eq!(log_time(UNIX_EPOCH), "Jan 01 00:00:00 1970");
    }

    #[test]
    fn normalizes() {
        assert_eq!(normalize(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
    }

    #[test]
    fn jitter_in_range() {
        for _ in 0..1000 {
            assert!(jitter(7) < 7);
        }
        assert_eq!(jitter(0), 0);
    }
}
