//! Giving back what start-up used and the running master does not need
//! (issue 19): the master's resident set is mostly its own program's pages,
//! and start-up (argument parsing, the configuration, the first spawns)
//! touches most of them once. Once the runners are up, [`trim`] unmaps the
//! program's unmodified pages, which the kernel maps again from the page
//! cache as the event loop touches them (a minor fault each, on first use);
//! and returns the heap's free memory to the system.
//!
//! What this changes is the master's RSS and PSS; the page cache holding the
//! program, which a container's memory accounting counts, stays as it is.
//!
//! Also: [`offer_to_merge`], this process's memory (and that of every
//! process it starts) offered to the kernel's same-page merging.
//!
//! Not here: anything about runners.

/// Unmaps this program's file-backed pages that hold nothing of their own
/// (no anonymous, copied-on-write page: never the relocated read-only data),
/// and trims the heap. Linux; a no-op elsewhere. Errors are ignored: it only
/// ever saves memory.
pub fn trim() {
    #[cfg(target_os = "linux")]
    {
        let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
            return;
        };
        let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
            return;
        };
        for (start, end) in clean_mappings(&smaps, &exe.to_string_lossy()) {
            // SAFETY: a private, read-only mapping of our own executable with
            // no anonymous page in it: dropping its page-table entries loses
            // nothing (the next access maps the same file page again). The
            // range is one whole mapping as the kernel listed it.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
            }
        }
        #[cfg(target_env = "gnu")]
        // SAFETY: glibc's own call on its own heap.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// Whether the host's same-page merging daemon runs
/// (`/sys/kernel/mm/ksm/run` is 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub enum Merging {
    Running,
    Stopped,
}

/// Offers all this process's anonymous memory, now and later, to the
/// kernel's same-page merging (`prctl(PR_SET_MEMORY_MERGE, 1)`, Linux 6.4):
/// identical pages, in this process and any other that offered its own, are
/// merged into one copy-on-write page by `ksmd` when the host runs it. The
/// setting is inherited by forked children, and from Linux 6.7 across
/// `execve` too. Returns whether the host runs the daemon now.
pub fn offer_to_merge() -> std::io::Result<Merging> {
    #[cfg(target_os = "linux")]
    {
        const PR_SET_MEMORY_MERGE: libc::c_int = 67;
        // SAFETY: prctl with integer arguments only; it changes a flag of
        // this process's memory map and touches no memory of ours.
        if unsafe { libc::prctl(PR_SET_MEMORY_MERGE, 1 as libc::c_ulong, 0, 0, 0) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let run = std::fs::read_to_string("/sys/kernel/mm/ksm/run").unwrap_or_default();
        Ok(if run.trim() == "1" {
            Merging::Running
        } else {
            Merging::Stopped
        })
    }
    #[cfg(not(target_os = "linux"))]
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "same-page merging is Linux's",
    ))
}

/// The `start-end` ranges of `exe`'s read-only private mappings in `smaps`
/// whose `Anonymous:` is 0 kB.
#[cfg(target_os = "linux")]
fn clean_mappings(smaps: &str, exe: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        {
            let perms = fields.next().unwrap_or("");
            let path = fields.nth(3).unwrap_or("");
            let read_only_private =
                perms.starts_with('r') && &perms[1..2] == "-" && perms.ends_with('p');
            current = (read_only_private && path == exe).then_some((a, b));
        } else if first == "Anonymous:"
            && let Some(range) = current.take()
            && fields.next() == Some("0")
        {
            out.push(range);
        }
    }
    out
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn only_clean_read_only_mappings_of_the_program() {
        let smaps = "\
7f4a00600000-7f4a006bb000 r--p 00000000 fe:00 53 /bin/mm
Rss:                 508 kB
Anonymous:             0 kB
7f4a006bb000-7f4a009bc000 r-xp 000ba000 fe:00 53 /bin/mm
Rss:                2800 kB
Anonymous:             0 kB
7f4a009bc000-7f4a009cd000 r--p 003ba000 fe:00 53 /bin/mm
Anonymous:            68 kB
7f4a009cd000-7f4a009d1000 rw-p 003ca000 fe:00 53 /bin/mm
Anonymous:             0 kB
7f4a00a00000-7f4a00a10000 r-xp 00000000 fe:00 54 /lib/other
Anonymous:             0 kB
";
        assert_eq!(
            clean_mappings(smaps, "/bin/mm"),
            [
                (0x7f4a00600000, 0x7f4a006bb000),
                (0x7f4a006bb000, 0x7f4a009bc000)
            ]
        );
    }
}
