//! The control channel (docs/control.md): a Unix socket `$var_dir/master.sock`
//! (mode 0600, peer credentials checked) that speaks one JSON object per line.
//!
//! Request → response:
//!
//! | request | response |
//! |---|---|
//! | `{"command":"status"}` | `{"ok":true,"status":{…}}` (see [`StatusReport`]) |
//! | `{"command":"stop"}` | `{"ok":true}`; the connection then stays open until the runners are gone |
//! | `{"command":"restart"}` | `{"ok":true}` (every runner, as SIGUSR1) |
//! | `{"command":"restart","runner":"in"}` / `…,"slice":1}` | `{"ok":true}`, or `{"ok":false,"error":"…"}` |
//! | `{"command":"reopen"}` | `{"ok":true}` (as SIGHUP) |
//! | `{"command":"jobs"}` | `{"ok":true,"jobs":[…]}` (see [`JobStatus`]) |
//! | `{"command":"run-job","job":"digests"}` | `{"ok":true,"message":"Job digests started (request, pid 7)."}`, or `{"ok":false,"error":"…"}` |
//!
//! `status` and `health` answers also carry the configuration file's stamp
//! (`"config":{…}`, [`crate::util::FileStamp`]). A client that half-closes
//! after its request (`status`) is closed as soon as it is answered.
//!
//! It works across PID namespaces (a host shell against a container's
//! bind-mounted var dir), where the pid in the pid file means nothing.
//!
//! This module holds the protocol types; `client` is what the CLI uses,
//! `server` the master's socket handling. What a request does is the
//! master's business (`master::requests`).

mod client;
pub mod http;
mod server;

pub use client::{Answer, Pending, ask, send, wait_closed};
pub use http::Http;
pub use server::{Client, Server};

use std::path::Path;
#[cfg(test)]
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "lowercase")]
pub enum Request {
    Status,
    /// Only the master's pid, state and problems (what `status` prints).
    Health,
    Stop,
    Reopen,
    Restart {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        runner: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        slice: Option<u32>,
    },
    /// The scheduled jobs and their runs.
    Jobs,
    /// Run a job now (subject to its `overlap`).
    #[serde(rename = "run-job")]
    RunJob {
        job: String,
    },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<StatusReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs: Option<Vec<JobStatus>>,
    /// What a request did, in a sentence (`run-job`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// With `status` and `health`: the configuration file the master read
    /// and validated, as it was then (`status` need not check it again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<crate::util::FileStamp>,
}

/// One scheduled job, as `jobs --json` and `status --json` show it. Times
/// are RFC 3339 (UTC).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JobStatus {
    pub name: String,
    /// The cron expression, or `every 15m`.
    pub schedule: String,
    pub timezone: String,
    /// `start = false`: it runs only by `run-job`.
    pub enabled: bool,
    pub next_run: Option<String>,
    /// The pid of the run in progress.
    pub running: Option<i32>,
    pub running_secs: Option<f64>,
    /// A run waits for the current one (`overlap = "queue"` or
    /// `"kill-previous"`).
    #[serde(default)]
    pub queued: bool,
    pub last_start: Option<String>,
    pub last_end: Option<String>,
    /// `success`, `failure`, `timeout` or `killed`.
    pub last_outcome: Option<String>,
    pub last_exit_code: Option<i32>,
    pub last_duration_secs: Option<f64>,
    pub last_success: Option<String>,
    pub runs: u64,
    pub failures: u64,
}

/// Whether the master does what it should, in a few words: its state
/// (`starting`, `running`, `stopping`) and what is wrong, if anything
/// (a runner given up, stopped, or down longer than `degraded_after`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Health {
    pub pid: i32,
    pub state: String,
    pub problems: Vec<String>,
}

impl Response {
    pub fn ok() -> Response {
        Response {
            ok: true,
            ..Default::default()
        }
    }
    pub fn error(text: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(text.into()),
            ..Default::default()
        }
    }
}

/// `status --json`: the master and every runner slice.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    pub master: MasterStatus,
    pub runners: Vec<SliceStatus>,
    /// What is wrong, as `status` says it; empty when healthy.
    #[serde(default)]
    pub problems: Vec<String>,
    #[serde(default)]
    pub jobs: Vec<JobStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MasterStatus {
    pub pid: i32,
    pub version: String,
    pub uptime_secs: f64,
    /// `running` or `stopping`.
    pub state: String,
    /// Where the HTTP endpoint listens (`[http] listen`, with the port the
    /// kernel chose for a port 0); absent when it is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SliceStatus {
    pub name: String,
    pub slice: u32,
    pub range: u32,
    /// `running`, `backing-off`, `failed` or `stopped`.
    pub state: String,
    pub pid: Option<i32>,
    /// Counted exits since the runner last ran stably (what `max_restarts`
    /// is compared with).
    pub restarts: u32,
    /// Counted exits in all.
    pub total_restarts: u32,
    pub last_exit: Option<LastExit>,
    pub uptime_secs: Option<f64>,
    /// While backing off: seconds until the next start.
    pub restart_in_secs: Option<f64>,
    /// Running and ready (its `ready_tcp`, if any, accepts connections).
    #[serde(default)]
    pub ready: bool,
    /// While not running: seconds since it last ran.
    #[serde(default)]
    pub down_secs: Option<f64>,
    pub rss_bytes: Option<u64>,
    pub cpu_secs: Option<f64>,
    /// The oldest entry of its slice of the queue waited past its stall
    /// threshold (only runners with `stall_after` set).
    #[serde(default)]
    pub stalled: bool,
    /// How long that entry has waited while this run of the runner was up
    /// (only runners with `stall_after` set, while up).
    #[serde(default)]
    pub queue_wait_secs: Option<f64>,
    /// While `waiting-for-owner`: who runs it (another master's slice,
    /// host, pid, since).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LastExit {
    Exit(i32),
    Signal(i32),
}

/// Longest socket path `bind` and `connect` take (`sun_path` holds 108
/// bytes with the final NUL; a little room is kept).
const SUN_PATH_MAX: usize = 100;

/// `path` in a form a socket call accepts: itself when short enough; else,
/// on Linux, through `/proc/self/fd/N/` of its directory opened here (keep
/// the returned fd open while the path is used). A var dir deeper than
/// `sun_path` allows (about 100 bytes) still has a working control socket.
pub(crate) fn reachable(
    path: &Path,
) -> std::io::Result<(std::path::PathBuf, Option<std::os::fd::OwnedFd>)> {
    use std::os::unix::ffi::OsStrExt;
    if path.as_os_str().as_bytes().len() <= SUN_PATH_MAX {
        return Ok((path.to_path_buf(), None));
    }
    #[cfg(target_os = "linux")]
    {
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(std::io::Error::other("not a socket path"));
        };
        let fd = nix::fcntl::open(
            dir,
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        use std::os::fd::AsRawFd;
        let short =
            std::path::PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())).join(name);
        Ok((short, Some(fd)))
    }
    #[cfg(not(target_os = "linux"))]
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("{} is longer than a socket path may be", path.display()),
    ))
}

/// Whether an `accept` failed for want of a descriptor (the process's or
/// the system's), memory or buffers: the connection stays in the backlog and
/// the listener stays readable, so polling it again at once would spin.
pub(crate) fn out_of_room(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// A listener of the master's (control socket or HTTP), left unpolled for a
/// moment after an `accept` found no descriptor to spare and no connection
/// of its own to close for one: connections wait in the backlog meanwhile,
/// and the master wakes a few times a second instead of spinning.
#[derive(Debug, Default)]
pub struct AcceptPause {
    until: Option<std::time::Instant>,
    warned: bool,
}

impl AcceptPause {
    /// How long a listener rests after running out.
    pub const REST: std::time::Duration = std::time::Duration::from_millis(250);

    /// Whether to leave the listener unpolled now.
    pub fn resting(&self, now: std::time::Instant) -> bool {
        self.until.is_some_and(|u| now < u)
    }

    /// When to poll it again (`None` unless resting).
    pub fn deadline(&self, now: std::time::Instant) -> Option<std::time::Instant> {
        self.until.filter(|&u| now < u)
    }

    /// After accepting: `ran_out` says whether it did. Returns `true` the
    /// first time it runs out after having had room (to warn once).
    pub fn record(&mut self, ran_out: bool, now: std::time::Instant) -> bool {
        if ran_out {
            self.until = Some(now + Self::REST);
            !std::mem::replace(&mut self.warned, true)
        } else {
            self.until = None;
            self.warned = false;
            false
        }
    }
}

/// The control socket of the default layout (`$var_dir/master.sock`).
#[cfg(test)]
pub fn socket_path(var_dir: &Path) -> PathBuf {
    var_dir.join("master.sock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_json_object() {
        let r: Request =
            serde_json::from_str(r#"{"command":"restart","runner":"in","slice":1}"#).unwrap();
        assert_eq!(
            r,
            Request::Restart {
                runner: Some("in".into()),
                slice: Some(1)
            }
        );
        assert_eq!(
            serde_json::to_string(&Request::Stop).unwrap(),
            r#"{"command":"stop"}"#
        );
        assert_eq!(
            serde_json::to_string(&Request::Restart {
                runner: None,
                slice: None
            })
            .unwrap(),
            r#"{"command":"restart"}"#
        );
        assert!(serde_json::from_str::<Request>(r#"{"command":"explode"}"#).is_err());
    }
}
