//! `--run-as-user`: switching the master to the configured user and group
//! before it takes the lock. Names are looked up in `/etc/passwd` and
//! `/etc/group` directly (no NSS: the binary is static); numeric ids work too.

use anyhow::{Result, anyhow, bail};

fn lookup(file: &str, name: &str) -> Result<Option<(u32, u32)>> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| anyhow!("cannot read {file}: {}", crate::util::io_text(&e)))?;
    for line in text.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 3 && fields[0] == name {
            let id = fields[2].parse().ok();
            let gid = fields.get(3).and_then(|g| g.parse().ok());
            if let Some(id) = id {
                return Ok(Some((id, gid.unwrap_or(id))));
            }
        }
    }
    Ok(None)
}

/// Becomes `user` with group `group` (supplementary groups dropped).
pub fn switch_to(user: &str, group: &str) -> Result<()> {
    let (uid, primary) = match user.parse::<u32>() {
        Ok(uid) => (uid, uid),
        Err(_) => lookup("/etc/passwd", user)?
            .ok_or_else(|| anyhow!("cannot run as user \"{user}\": no such user"))?,
    };
    let gid = match group.parse::<u32>() {
        Ok(gid) => gid,
        Err(_) => match lookup("/etc/group", group)? {
            Some((gid, _)) => gid,
            None if group == user => primary,
            None => bail!("cannot run as group \"{group}\": no such group"),
        },
    };
    #[cfg(target_os = "linux")]
    {
        let gids = [gid as libc::gid_t];
        // SAFETY: a plain system call with a valid one-element array.
        if unsafe { libc::setgroups(1, gids.as_ptr()) } != 0 {
            bail!(
                "cannot drop supplementary groups: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    nix::unistd::setgid(nix::unistd::Gid::from_raw(gid))
        .map_err(|e| anyhow!("cannot switch to group {gid}: {}", e.desc()))?;
    nix::unistd::setuid(nix::unistd::Uid::from_raw(uid))
        .map_err(|e| anyhow!("cannot switch to user {user} ({uid}): {}", e.desc()))?;
    Ok(())
}
