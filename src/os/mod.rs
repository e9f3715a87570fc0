//! The operating system's side, as small tools with no policy: where the var
//! dir's files live and how they are created (`layout`), the master lock and
//! pid file (`lock`), who a pid is (`procinfo`), starting a child without
//! copying the master, or a batch of copies side by side (`vfork`), a
//! child's set-up between fork and exec where
//! we fork (`process`), giving back start-up's memory (`memory`), signals as
//! events (`signals`), systemd notification (`notify`), user switching
//! (`user`), slice ownership locks in a shared queue directory (`owner`),
//! the part of Rust's start-up we keep (`runtime`).
//!
//! Not here: deciding what to signal or when (`master`, `commands`); these
//! modules know nothing of runners or the configuration.

pub mod confine;
pub mod layout;
pub mod lock;
pub mod memory;
pub mod notify;
pub mod owner;
pub mod process;
pub mod procinfo;
pub mod runtime;
pub mod signals;
pub mod user;
pub mod vfork;
