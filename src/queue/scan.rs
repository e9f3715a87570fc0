//! Reading a queue directory for what waits in it, per slice: how many
//! entries, and how long the oldest has waited. For our entries (`.msg`,
//! sliced by [`super::owner`]) and for Mailman Core's (`.pck`, sliced as
//! Mailman 3.3.10's switchboard slices them: see [`mailman_slices`]).
//!
//! One `readdir` of the directory and no `stat`: an entry's age is the time
//! in its name (`<time>+<sha1hex>.<ext>`), as both Mailman and we write it.
//! Names that are not entries (temporary files, strangers) are not counted.
//!
//! Not here: deciding what a slow queue means (`master`).

use std::fs;
use std::io;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{BAK, Entry, MSG, PCK, PSV};

/// One queue's entries, as seen by a runner of `range` slices.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scan {
    /// Waiting entries (`.msg`, `.pck`; in `bad/`, `.psv` too).
    pub waiting: usize,
    /// Claimed entries (`.bak`).
    pub in_hand: usize,
    /// The oldest waiting entry's age in seconds, whole queue.
    pub oldest_secs: Option<f64>,
    /// Per slice: waiting entries and the oldest one's age.
    pub slices: Vec<(usize, Option<f64>)>,
}

/// Reads `dir` for a runner of `range` slices (a missing directory is an
/// empty queue).
pub fn scan(dir: &Path, range: u32) -> io::Result<Scan> {
    let range = range.max(1);
    let mut out = Scan {
        slices: vec![(0, None); range as usize],
        ..Scan::default()
    };
    let list = match fs::read_dir(dir) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    for item in list {
        let name = item?.file_name();
        let Some(name) = name.to_str() else { continue };
        if Entry::parse(name, BAK).is_some() {
            out.in_hand += 1;
            continue;
        }
        let (entry, mailmans) = match (
            Entry::parse(name, MSG).or_else(|| Entry::parse(name, PSV)),
            Entry::parse(name, PCK),
        ) {
            (Some(e), _) => (e, false),
            (None, Some(e)) => (e, true),
            (None, None) => continue,
        };
        out.waiting += 1;
        let age = (now - entry.time).max(0.0);
        let older = |o: Option<f64>| Some(o.map_or(age, |a: f64| a.max(age)));
        out.oldest_secs = older(out.oldest_secs);
        let owners: Vec<u32> = if mailmans {
            mailman_slices(&entry.hash, range).collect()
        } else {
            vec![entry.owner(range)]
        };
        for s in owners {
            let slot = &mut out.slices[s as usize];
            slot.0 += 1;
            slot.1 = older(slot.1);
        }
    }
    Ok(out)
}

/// The slices of `range` whose Mailman runner handles an entry with digest
/// `hash`, exactly as Mailman 3.3.10's `Switchboard` decides: slice `s`
/// takes `lower <= d <= upper` with `lower = 2^160 * s / range` and
/// `upper = 2^160 * (s + 1) / range - 1`, both Python floats (true
/// division, correctly rounded), where the `- 1` is lost to rounding. So
/// slice `s` takes `B(s) <= d <= B(s + 1)` with `B(s)` the float nearest
/// `2^160 * s / range`: a digest within rounding of a boundary may belong
/// to the neighbour of `floor(d * range / 2^160)`, and one exactly on a
/// boundary to two slices.
pub fn mailman_slices(hash: &[u8; 20], range: u32) -> impl Iterator<Item = u32> {
    let own = super::owner(hash, range);
    let (hi, lo_zero) = split(hash);
    let lo = own.saturating_sub(1);
    let hi_s = (own + 1).min(range - 1);
    (lo..=hi_s).filter(move |&s| {
        let low = boundary(s, range);
        let up = boundary(s + 1, range);
        hi >= low && (s + 1 == range || hi < up || (hi == up && lo_zero))
    })
}

/// `B(s) / 2^32` for `B(s) = float(2^160 * s / range)`, exactly. The float
/// is `x * 2^160` with `x = s / range` rounded to 53 bits, so `x * 2^128`
/// is an integer below 2^128 (for `0 <= s < range`, any `u32` range), and
/// `B(s)`'s low 32 bits are zero.
fn boundary(s: u32, range: u32) -> u128 {
    let x = f64::from(s) / f64::from(range);
    (x * 2f64.powi(128)) as u128
}

/// The digest's top 128 bits, and whether its low 32 are all zero.
fn split(hash: &[u8; 20]) -> (u128, bool) {
    let mut top = [0u8; 16];
    top.copy_from_slice(&hash[..16]);
    (u128::from_be_bytes(top), hash[16..] == [0, 0, 0, 0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_belong_to_two_mailman_slices() {
        let mut h = [0u8; 20];
        h[0] = 0x80; // exactly 2^159: the boundary of slices 0 and 1 of 2
        assert_eq!(mailman_slices(&h, 2).collect::<Vec<_>>(), [0, 1]);
        h[19] = 1;
        assert_eq!(mailman_slices(&h, 2).collect::<Vec<_>>(), [1]);
        let zero = [0u8; 20];
        assert_eq!(mailman_slices(&zero, 4).collect::<Vec<_>>(), [0]);
        assert_eq!(mailman_slices(&[0xff; 20], 4).collect::<Vec<_>>(), [3]);
        assert_eq!(mailman_slices(&[0xff; 20], 1).collect::<Vec<_>>(), [0]);
    }

    #[test]
    fn scans_ours_and_mailmans() {
        let dir = tempfile::tempdir().unwrap();
        let old = "1000000000.5+0000000000000000000000000000000000000000";
        let new = format!(
            "{:.6}+ffffffffffffffffffffffffffffffffffffffff",
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs_f64()
        );
        fs::write(dir.path().join(format!("{old}.pck")), "").unwrap();
        fs::write(dir.path().join(format!("{new}.msg")), "").unwrap();
        fs::write(dir.path().join(format!("{new}.bak")), "").unwrap();
        fs::write(dir.path().join("junk.tmp"), "").unwrap();
        let s = scan(dir.path(), 2).unwrap();
        assert_eq!((s.waiting, s.in_hand), (2, 1));
        assert!(s.oldest_secs.unwrap() > 700_000_000.0);
        assert_eq!(s.slices[0].0, 1);
        assert_eq!(s.slices[1].0, 1);
        assert!(s.slices[1].1.unwrap() < 60.0);
        assert_eq!(scan(&dir.path().join("none"), 4).unwrap().slices.len(), 4);
    }
}
