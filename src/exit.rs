//! Exit statuses shared by the master and the commands, in one place
//! (docs/commands.md lists every command's).

/// A requested stop; a command that did what it was asked.
pub const EXIT_OK: i32 = 0;
/// A failure: start-up error, lost log, unreadable file, …
pub const EXIT_ERROR: i32 = 1;
/// Another master holds the lock, or the configuration is bad.
pub const EXIT_USAGE: i32 = 2;
/// The master stopped because a runner was given up with
/// `on_give_up = "exit"`.
pub const EXIT_GAVE_UP: i32 = 3;
