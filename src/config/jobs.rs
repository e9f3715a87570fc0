//! Scheduled jobs (`[job.NAME]`, docs/jobs.md): the raw table as read, its
//! checks where the text is at hand (a cron expression, a time zone, a
//! timeout), and the validated [`JobConfig`].
//!
//! Cron expressions are parsed and evaluated by `croner` (5 fields, 6 with
//! seconds, `@daily`-style nicknames), on `jiff` times in a time zone from
//! the system's tz database, so that DST changes are handled as the zone
//! says.
//!
//! Not here: running them (`master::jobs`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use indexmap::IndexMap;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize, Serializer};
use toml::Spanned;

use super::{ConfigError, Dur};

/// What to do when a job is due while its previous run still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Overlap {
    /// This run is skipped (and logged).
    Skip,
    /// This run starts when the previous one ends (one waits at most).
    Queue,
    /// The previous run is stopped (SIGTERM, then SIGKILL), then this one
    /// starts.
    KillPrevious,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJob {
    pub(super) command: Option<Spanned<Vec<String>>>,
    pub(super) schedule: Option<Spanned<String>>,
    pub(super) every: Option<Spanned<Dur>>,
    pub(super) timezone: Option<Spanned<String>>,
    pub(super) timeout: Option<Spanned<Dur>>,
    pub(super) overlap: Option<Overlap>,
    pub(super) jitter: Option<Dur>,
    pub(super) run_on_start: Option<bool>,
    pub(super) catch_up: Option<bool>,
    pub(super) env: Option<IndexMap<String, String>>,
    pub(super) start: Option<bool>,
}

/// A job's table as merged, and where the job was first defined: the
/// errors only the whole configuration can decide on ("needs a schedule",
/// "has the name of a runner") point there.
#[derive(Debug, Clone)]
pub(super) struct LayerJob {
    pub(super) table: RawJob,
    /// An error at the job's name, its message to be filled in.
    pub(super) place: ConfigError,
}

impl LayerJob {
    fn error(&self, message: String) -> ConfigError {
        match &self.place {
            ConfigError::At {
                file, line, col, ..
            } => ConfigError::At {
                file: file.clone(),
                line: *line,
                col: *col,
                message,
            },
            ConfigError::Line { file, line, .. } => ConfigError::Line {
                file: file.clone(),
                line: *line,
                message,
            },
            ConfigError::File { file, .. } => ConfigError::File {
                file: file.clone(),
                message,
            },
        }
    }
}

impl RawJob {
    /// Checks what can be checked in one table: returns the span and
    /// message of the first problem.
    pub(super) fn check(&self, name: &str) -> Result<(), (std::ops::Range<usize>, String)> {
        if let Some(c) = &self.command
            && c.get_ref().first().is_none_or(String::is_empty)
        {
            return Err((
                c.span(),
                format!("Job \"{name}\": command must not be empty"),
            ));
        }
        if let Some(s) = &self.schedule {
            parse_cron(s.get_ref())
                .map_err(|e| (s.span(), format!("Job \"{name}\": schedule: {e}")))?;
            if let Some(e) = &self.every {
                return Err((
                    e.span(),
                    format!("Job \"{name}\": schedule and every: set one of them"),
                ));
            }
        }
        if let Some(e) = &self.every
            && e.get_ref().0 < Duration::from_secs(1)
        {
            return Err((
                e.span(),
                format!("Job \"{name}\": every must be at least 1s"),
            ));
        }
        if let Some(tz) = &self.timezone {
            time_zone(tz.get_ref()).map_err(|e| (tz.span(), format!("Job \"{name}\": {e}")))?;
        }
        if let Some(t) = &self.timeout
            && t.get_ref().0.is_zero()
        {
            return Err((
                t.span(),
                format!("Job \"{name}\": timeout must be more than 0 (leave it out for none)"),
            ));
        }
        Ok(())
    }

    /// `self` with every key it lacks taken from `base`.
    pub(super) fn over(self, base: &RawJob) -> RawJob {
        // A schedule replaces an `every` below it, and the other way round.
        let own_timing = self.schedule.is_some() || self.every.is_some();
        RawJob {
            command: self.command.or_else(|| base.command.clone()),
            schedule: if own_timing {
                self.schedule
            } else {
                base.schedule.clone()
            },
            every: if own_timing {
                self.every
            } else {
                base.every.clone()
            },
            timezone: self.timezone.or_else(|| base.timezone.clone()),
            timeout: self.timeout.or_else(|| base.timeout.clone()),
            overlap: self.overlap.or(base.overlap),
            jitter: self.jitter.or(base.jitter),
            run_on_start: self.run_on_start.or(base.run_on_start),
            catch_up: self.catch_up.or(base.catch_up),
            env: match (&base.env, self.env) {
                (Some(b), Some(mut own)) => {
                    for (k, v) in b {
                        own.entry(k.clone()).or_insert_with(|| v.clone());
                    }
                    Some(own)
                }
                (b, own) => own.or_else(|| b.clone()),
            },
            start: self.start.or(base.start),
        }
    }
}

/// When a job runs.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// A cron expression as written, and parsed.
    Cron(String, Box<croner::Cron>),
    /// A fixed interval from the master's start (or the last run).
    Every(Dur),
}

impl Schedule {
    /// The first time after `after` this schedule fires, in `tz` (`None`:
    /// never again, e.g. `0 0 30 2 *`). For `Every`, `after` + the interval.
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        match self {
            Schedule::Cron(_, cron) => cron
                .find_next_occurrence(&after.to_zoned(tz.clone()), false)
                .ok()
                .map(|z| z.timestamp()),
            Schedule::Every(d) => after.checked_add(d.0).ok(),
        }
    }

    /// The last time at or before `at` this schedule fired (`Every`: none;
    /// catch-up for it compares with the interval instead).
    pub fn previous(&self, at: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        match self {
            Schedule::Cron(_, cron) => cron
                .find_previous_occurrence(&at.to_zoned(tz.clone()), true)
                .ok()
                .map(|z| z.timestamp()),
            Schedule::Every(_) => None,
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Cron(text, _) => f.write_str(text),
            Schedule::Every(d) => write!(f, "every {d}"),
        }
    }
}

/// A validated `[job.NAME]`.
#[derive(Debug, Clone, Serialize)]
pub struct JobConfig {
    #[serde(skip)]
    pub name: String,
    pub command: Vec<String>,
    #[serde(flatten, serialize_with = "serialize_schedule")]
    pub schedule: Schedule,
    #[serde(rename = "timezone")]
    pub tz_name: String,
    #[serde(skip)]
    pub tz: TimeZone,
    #[serde(serialize_with = "serialize_timeout")]
    pub timeout: Option<Dur>,
    pub overlap: Overlap,
    pub jitter: Dur,
    pub run_on_start: bool,
    pub catch_up: bool,
    pub env: IndexMap<String, String>,
    pub start: bool,
}

fn serialize_schedule<S: Serializer>(s: &Schedule, ser: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = ser.serialize_map(Some(1))?;
    match s {
        Schedule::Cron(text, _) => m.serialize_entry("schedule", text)?,
        Schedule::Every(d) => m.serialize_entry("every", d)?,
    }
    m.end()
}

fn serialize_timeout<S: Serializer>(t: &Option<Dur>, ser: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(d) => d.serialize(ser),
        None => ser.serialize_str(""),
    }
}

/// A cron expression: 5 fields, 6 with seconds first, or a nickname
/// (`@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`); day of month
/// and day of week restricted both: either matches, as in Vixie cron.
pub fn parse_cron(text: &str) -> Result<croner::Cron, String> {
    if text.trim().is_empty() {
        return Err("empty cron expression".into());
    }
    croner::Cron::from_str(text).map_err(|e| format!("invalid cron expression \"{text}\": {e}"))
}

/// A time zone by IANA name, from the system's tz database (`UTC` always).
pub fn time_zone(name: &str) -> Result<TimeZone, String> {
    if name == "UTC" {
        return Ok(TimeZone::UTC);
    }
    TimeZone::get(name).map_err(|_| {
        format!("unknown timezone \"{name}\": use an IANA name such as \"Europe/Berlin\" (from the system's tz database, /usr/share/zoneinfo)")
    })
}

/// The jobs of a merged configuration: every table complete and checked
/// against the runners' names; `defaults` are jobs the configuration
/// brings (Mailman Core's), under the tables.
pub(super) fn finish(
    tables: IndexMap<String, LayerJob>,
    defaults: Vec<(String, RawJob)>,
    runner_names: &[&str],
) -> Result<Vec<JobConfig>, ConfigError> {
    let mut out: Vec<JobConfig> = Vec::new();
    let mut all: IndexMap<String, (RawJob, Option<&LayerJob>)> =
        defaults.into_iter().map(|(n, t)| (n, (t, None))).collect();
    for (name, lj) in &tables {
        let merged = match all.get(name) {
            Some((base, _)) => lj.table.clone().over(base),
            None => lj.table.clone(),
        };
        all.insert(name.clone(), (merged, Some(lj)));
    }
    for (name, (t, lj)) in all {
        let err = |m: String| match lj {
            Some(lj) => lj.error(m),
            None => ConfigError::File {
                file: "<defaults>".into(),
                message: m,
            },
        };
        if runner_names.contains(&name.as_str()) {
            return Err(err(format!(
                "Job \"{name}\" has the name of a runner: give it another"
            )));
        }
        let Some(command) = t.command.map(Spanned::into_inner) else {
            return Err(err(format!("Job \"{name}\" needs a command")));
        };
        let schedule = match (t.schedule, t.every) {
            (Some(s), _) => {
                let cron = parse_cron(s.get_ref()).map_err(&err)?;
                Schedule::Cron(s.into_inner(), Box::new(cron))
            }
            (None, Some(e)) => Schedule::Every(e.into_inner()),
            (None, None) => {
                return Err(err(format!(
                    "Job \"{name}\" needs a schedule (a cron expression) or every (an interval)"
                )));
            }
        };
        let tz_name = t
            .timezone
            .map_or_else(|| "UTC".to_string(), Spanned::into_inner);
        let tz = time_zone(&tz_name).map_err(&err)?;
        out.push(JobConfig {
            name,
            command,
            schedule,
            tz_name,
            tz,
            timeout: t.timeout.map(Spanned::into_inner),
            overlap: t.overlap.unwrap_or(Overlap::Skip),
            jitter: t.jitter.unwrap_or(Dur(Duration::ZERO)),
            run_on_start: t.run_on_start.unwrap_or(false),
            catch_up: t.catch_up.unwrap_or(false),
            env: t.env.unwrap_or_default(),
            start: t.start.unwrap_or(true),
        });
    }
    Ok(out)
}

/// Mailman Core's periodic commands, as its documentation's crontab runs
/// them: digests and moderator reminders, daily.
pub(super) fn mailman_core_jobs(
    mailman: &std::path::Path,
    cfg: &std::path::Path,
) -> Vec<(String, RawJob)> {
    let job = |args: &[&str]| {
        let mut command = vec![
            mailman.to_string_lossy().into_owned(),
            "-C".to_string(),
            cfg.to_string_lossy().into_owned(),
        ];
        command.extend(args.iter().map(|a| a.to_string()));
        RawJob {
            command: Some(Spanned::new(0..0, command)),
            schedule: Some(Spanned::new(0..0, "@daily".to_string())),
            ..RawJob::default()
        }
    };
    vec![
        ("digests".to_string(), job(&["digests", "--periodic"])),
        ("notify".to_string(), job(&["notify"])),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(tz: &str, s: &str) -> Timestamp {
        jiff::civil::DateTime::from_str(s)
            .unwrap()
            .to_zoned(time_zone(tz).unwrap())
            .unwrap()
            .timestamp()
    }

    fn next(expr: &str, tz: &str, after: Timestamp) -> String {
        let tzone = time_zone(tz).unwrap();
        let s = Schedule::Cron(expr.into(), Box::new(parse_cron(expr).unwrap()));
        s.next_after(after, &tzone)
            .unwrap()
            .to_zoned(tzone)
            .strftime("%Y-%m-%d %H:%M:%S %Z")
            .to_string()
    }

    #[test]
    fn dst_transitions_in_berlin_and_new_york() {
        // Spring forward, Berlin 2026-03-29: 02:00 CET → 03:00 CEST; 02:30
        // does not exist that day: it runs when the gap ends, at 03:00.
        let before = at("Europe/Berlin", "2026-03-29T01:00:00");
        assert_eq!(
            next("30 2 * * *", "Europe/Berlin", before),
            "2026-03-29 03:00:00 CEST"
        );
        // The day after: 02:30 again.
        assert_eq!(
            next(
                "30 2 * * *",
                "Europe/Berlin",
                at("Europe/Berlin", "2026-03-29T12:00:00")
            ),
            "2026-03-30 02:30:00 CEST"
        );
        // An hourly job across the gap: 01:00, then 03:00 (no 02:00).
        assert_eq!(
            next(
                "0 * * * *",
                "Europe/Berlin",
                at("Europe/Berlin", "2026-03-29T01:00:00")
            ),
            "2026-03-29 03:00:00 CEST"
        );
        // Fall back, Berlin 2026-10-25: 03:00 CEST → 02:00 CET; 02:30 comes
        // twice and runs once.
        let first = next(
            "30 2 * * *",
            "Europe/Berlin",
            at("Europe/Berlin", "2026-10-25T01:00:00"),
        );
        assert_eq!(first, "2026-10-25 02:30:00 CEST");
        let tz = time_zone("Europe/Berlin").unwrap();
        let s = Schedule::Cron(
            "30 2 * * *".into(),
            Box::new(parse_cron("30 2 * * *").unwrap()),
        );
        let t1 = s
            .next_after(at("Europe/Berlin", "2026-10-25T01:00:00"), &tz)
            .unwrap();
        let t2 = s.next_after(t1, &tz).unwrap();
        assert_eq!(
            t2.to_zoned(tz.clone())
                .strftime("%Y-%m-%d %H:%M %Z")
                .to_string(),
            "2026-10-26 02:30 CET"
        );
        // New York, 2026-03-08: 02:00 EST → 03:00 EDT; daily at midnight is
        // 24 wall-clock hours apart, but 23 real ones across the change.
        let ny = time_zone("America/New_York").unwrap();
        let d = Schedule::Cron("@daily".into(), Box::new(parse_cron("@daily").unwrap()));
        let m1 = d
            .next_after(at("America/New_York", "2026-03-07T12:00:00"), &ny)
            .unwrap();
        let m2 = d.next_after(m1, &ny).unwrap();
        let m3 = d.next_after(m2, &ny).unwrap();
        assert_eq!((m2.as_second() - m1.as_second()) / 3600, 23);
        assert_eq!((m3.as_second() - m2.as_second()) / 3600, 24);
        // UTC has no DST: the same every day.
        assert_eq!(
            next("30 2 * * *", "UTC", at("UTC", "2026-03-29T01:00:00")),
            "2026-03-29 02:30:00 UTC"
        );
    }

    #[test]
    fn six_fields_and_nicknames() {
        let t0 = at("UTC", "2026-01-01T00:00:00");
        assert_eq!(next("*/2 * * * * *", "UTC", t0), "2026-01-01 00:00:02 UTC");
        assert_eq!(next("@hourly", "UTC", t0), "2026-01-01 01:00:00 UTC");
        assert!(parse_cron("61 * * * *").is_err());
        assert!(parse_cron("* * *").is_err());
        assert!(parse_cron("").is_err());
        assert!(time_zone("Mars/Olympus").is_err());
        assert!(time_zone("UTC").is_ok());
    }
}
