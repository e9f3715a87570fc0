//! Keeping the lock when its file is deleted under the master (a cleaner
//! of old files, `rm -rf` of the locks directory): the `flock` is on the
//! file the master opened, so a deleted one is still held but no longer
//! seen. A second `start` would then make a new file, take its lock, and
//! run beside this master (killing its runners as if a dead master had left
//! them). The master watches the lock's directory and, when its file is no
//! longer there, makes it again, takes its lock and writes the pid file.
//! Where it cannot, it says why once, not at every later change in the
//! directory, until it has the lock again.
//!
//! Not here: the lock itself (`os::lock`).

use tracing::{error, warn};

use super::Master;
use crate::os::lock::{self, AcquireError};

impl Master {
    /// The lock's directory changed: takes the lock again if its file went.
    pub(super) fn keep_lock(&mut self) {
        let Some(watch) = &self.lock_watch else {
            return;
        };
        watch.drain();
        let path = self.layout.lock_file();
        let trouble = match self.lock.retake(&self.layout) {
            Ok(false) => None,
            Ok(true) => {
                warn!(
                    "{} was deleted or replaced under the running master; it is made again and locked",
                    path.display()
                );
                if let Err(e) = lock::write_pid_file(&self.layout) {
                    warn!("{e:#}");
                }
                None
            }
            Err(AcquireError::Held) => Some(format!(
                "{} was deleted, and another master took the new one: two masters now run on {}; \
                 stop this one (pid {})",
                path.display(),
                self.layout.var_dir.display(),
                std::process::id()
            )),
            Err(e) => Some(format!(
                "{} was deleted under the running master and cannot be made again: {e}",
                path.display()
            )),
        };
        watch.rewatch();
        if let Some(why) = &trouble
            && self.lock_trouble.as_ref() != Some(why)
        {
            error!("{why}");
        }
        self.lock_trouble = trouble;
    }
}
