//! The operating system's side: the var dir's lock and pid file, who a pid
//! is, signals as events, systemd notification, user switching.

pub mod layout;
pub mod lock;
pub mod notify;
pub mod process;
pub mod procinfo;
pub mod signals;
pub mod user;
