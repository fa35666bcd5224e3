//! Schedules and when they run. Everything here is pure: the daemon passes in `now`, so the
//! semantics are tested with an injected clock.
//!
//! The rules (README.md, "Schedules"):
//! - A schedule only considers runs after its *anchor*: its creation, its last resume, or
//!   the last run it handled. So a new, edited or resumed schedule never fires at once.
//! - A run is due at its cron time plus its jitter (a fixed offset per run, below `jitter`).
//! - After downtime, of all the runs missed, only the latest one still within the starting
//!   deadline runs (at most one); older ones are recorded as missed, never replayed.
//! - A due run while the instance has a job active is recorded as skipped, with the reason.

pub mod cron;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::couchdb::SourceSpec;
use crate::strict::NoOtherFields;

pub use cron::{parse_tz, Cron, CronError};

pub const SCHEDULE_FORMAT: u32 = 1;
/// Run records kept per schedule.
pub const HISTORY: usize = 20;

/// What a user gives to create or replace a schedule (API body, `schedule add`, a file in
/// `schedules/`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScheduleSpec {
    /// Unique per tenant; `schedule apply` matches files to schedules by it.
    pub name: String,
    /// Only in schedule files and admin requests; a tenant token implies its tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub instance: String,
    /// Paths (admin only); none for a registered instance.
    #[serde(flatten)]
    pub source: SourceSpec,
    /// 5-field cron or @hourly/@daily/@weekly/@monthly/@yearly.
    pub cron: String,
    /// IANA time zone the cron expression is read in.
    #[serde(default = "utc")]
    pub tz: String,
    /// The tenant's policies (retention and/or protection) by name.
    #[serde(default)]
    pub policies: Vec<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub paused: bool,
    /// Full, incremental or differential backups (overrides a protection policy's answer);
    /// none: the protection policy's answer, else full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_kind: Option<crate::format::Kind>,
    /// How incrementals check unchanged prefixes: exact (default) or fast.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_check: Option<crate::format::PrefixCheck>,
    /// Backups of the whole CouchDB cluster (admin only, no paths; docs/CLUSTERS.md).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cluster: bool,
    /// Spread runs by up to this much (e.g. "5m"); "0" for none.
    #[serde(default = "zero")]
    pub jitter: String,
    /// A run that could not start within this long of its time is missed (e.g. "1h").
    #[serde(default = "one_hour")]
    pub starting_deadline: String,
    #[serde(flatten, skip_serializing_if = "NoOtherFields::skip")]
    pub other: NoOtherFields,
}

fn utc() -> String {
    "UTC".into()
}
fn zero() -> String {
    "0".into()
}
fn one_hour() -> String {
    "1h".into()
}

/// A stored schedule (sled, format versioned by `couchvault_schedule`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Schedule {
    pub couchvault_schedule: u32,
    pub id: String,
    pub tenant: String,
    #[serde(flatten)]
    pub spec: ScheduleSpec,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Runs at or before this instant are never considered again.
    pub anchor: DateTime<Utc>,
    /// Newest last, at most [`HISTORY`].
    #[serde(default)]
    pub history: Vec<RunRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunRecord {
    /// The cron time of the run.
    pub scheduled_for: DateTime<Utc>,
    /// When the daemon decided.
    pub decided_at: DateTime<Utc>,
    #[serde(flatten)]
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// A job was started for the run.
    Started { job_id: String },
    /// The run was due but the instance was busy.
    Skipped { reason: String },
    /// Runs passed while the daemon could not start them, beyond the starting deadline.
    Missed { runs: u32, reason: String },
}

/// A schedule checked and ready to be evaluated.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub cron: Cron,
    pub jitter: Duration,
    pub deadline: Duration,
}

/// Why a schedule spec is refused; each names the field.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error(transparent)]
    Name(#[from] crate::names::NameError),
    #[error(transparent)]
    Tag(#[from] crate::names::TagError),
    #[error(transparent)]
    Source(#[from] crate::couchdb::SourceError),
    #[error(transparent)]
    Cron(#[from] CronError),
    #[error("tz: {0}")]
    Tz(#[from] cron::UnknownZone),
    #[error("{field}: {reason}")]
    Duration { field: &'static str, reason: String },
}

fn duration(field: &'static str, text: &str) -> Result<Duration, SpecError> {
    let bad = |reason: String| SpecError::Duration { field, reason };
    let d = crate::config::parse_duration(text).map_err(|e| bad(e.to_string()))?;
    Duration::from_std(d).map_err(|_| bad(format!("'{text}' is too long")))
}

impl ScheduleSpec {
    /// Checks every field; the error says which and why.
    pub fn compile(&self) -> Result<Compiled, SpecError> {
        crate::names::validate_name("schedule name", &self.name)?;
        crate::names::validate_name("instance", &self.instance)?;
        if let Some(t) = &self.tenant {
            crate::names::validate_name("tenant", t)?;
        }
        for p in &self.policies {
            crate::names::validate_name("policy", p)?;
        }
        crate::names::validate_tags(&self.tags)?;
        // No paths: the instance is a registered one (checked by the daemon).
        if !self.source.is_empty() {
            self.source.check_paths()?;
        }
        let tz = parse_tz(&self.tz)?;
        let cron = Cron::parse(&self.cron, tz)?;
        let jitter = duration("jitter", &self.jitter)?;
        let deadline = duration("starting_deadline", &self.starting_deadline)?;
        if deadline < Duration::minutes(1) {
            return Err(SpecError::Duration {
                field: "starting_deadline",
                reason: "must be at least 1m".into(),
            });
        }
        Ok(Compiled {
            cron,
            jitter,
            deadline,
        })
    }
}

/// A fixed offset in [0, jitter) for one run of one schedule, the same across restarts.
pub fn jitter_for(schedule_id: &str, run: DateTime<Utc>, jitter: Duration) -> Duration {
    let span = jitter.num_seconds();
    if span <= 0 {
        return Duration::zero();
    }
    // FNV-1a: stable, and spread enough to keep runs of many schedules apart.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in schedule_id.bytes().chain(run.timestamp().to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    Duration::seconds((h % span as u64) as i64)
}

/// What to do about a schedule at `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Record for runs missed beyond the deadline (at most one record).
    pub missed: Option<RunRecord>,
    /// The one run to start now (or record as skipped), if any.
    pub due: Option<DateTime<Utc>>,
    /// The new anchor.
    pub anchor: DateTime<Utc>,
}

impl Schedule {
    /// The instant the next run is due (cron time plus jitter), or None when paused or never.
    pub fn next_due(&self, c: &Compiled) -> Option<DateTime<Utc>> {
        if self.spec.paused {
            return None;
        }
        let t = c.cron.next_after(self.anchor)?;
        Some(t + jitter_for(&self.id, t, c.jitter))
    }

    /// Decides at `now`; None when nothing is due yet.
    pub fn decide(&self, c: &Compiled, now: DateTime<Utc>) -> Option<Decision> {
        if self.next_due(c)? > now {
            return None;
        }
        let window_start = now - c.deadline;
        // The latest run in the window whose jittered time has come.
        let mut due = None;
        let mut t = c.cron.next_after(self.anchor.max(window_start))?;
        while t + jitter_for(&self.id, t, c.jitter) <= now {
            due = Some(t);
            match c.cron.next_after(t) {
                Some(n) => t = n,
                None => break,
            }
        }
        // Runs before the window: count a few for the record, without replaying any.
        let mut missed_runs = 0u32;
        let mut first_missed = None;
        let mut m = c.cron.next_after(self.anchor);
        while let Some(x) = m.filter(|x| *x <= window_start) {
            first_missed.get_or_insert(x);
            missed_runs += 1;
            if missed_runs == 1000 {
                break;
            }
            m = c.cron.next_after(x);
        }
        let missed = first_missed.map(|first| RunRecord {
            scheduled_for: first,
            decided_at: now,
            outcome: Outcome::Missed {
                runs: missed_runs,
                reason: format!(
                    "the daemon could not start {} within the starting deadline ({})",
                    if missed_runs >= 1000 {
                        "1000 or more runs".to_string()
                    } else if missed_runs == 1 {
                        "this run".to_string()
                    } else {
                        format!("{missed_runs} runs")
                    },
                    self.spec.starting_deadline
                ),
            },
        });
        if due.is_none() && missed.is_none() {
            return None;
        }
        Some(Decision {
            missed,
            due,
            anchor: due.unwrap_or(window_start).max(self.anchor),
        })
    }

    /// Applies a decision's records and anchor; the history stays bounded.
    pub fn record(&mut self, d: &Decision, due_outcome: Option<Outcome>, now: DateTime<Utc>) {
        if let Some(m) = &d.missed {
            self.history.push(m.clone());
        }
        if let (Some(t), Some(o)) = (d.due, due_outcome) {
            self.history.push(RunRecord {
                scheduled_for: t,
                decided_at: now,
                outcome: o,
            });
        }
        let excess = self.history.len().saturating_sub(HISTORY);
        self.history.drain(..excess);
        self.anchor = d.anchor;
    }
}

/// The due-time index: (due instant, schedule id), earliest first. A tick takes the due
/// prefix, so its cost is the number of due schedules, not the number of schedules.
#[derive(Debug, Default)]
pub struct Timetable {
    by_time: BTreeSet<(DateTime<Utc>, String)>,
    by_id: BTreeMap<String, DateTime<Utc>>,
}

impl Timetable {
    pub fn set(&mut self, id: &str, due: Option<DateTime<Utc>>) {
        if let Some(old) = self.by_id.remove(id) {
            self.by_time.remove(&(old, id.to_string()));
        }
        if let Some(t) = due {
            self.by_time.insert((t, id.to_string()));
            self.by_id.insert(id.to_string(), t);
        }
    }

    /// Ids due at or before `now`, earliest first.
    pub fn due(&self, now: DateTime<Utc>) -> Vec<String> {
        self.by_time
            .iter()
            .take_while(|(t, _)| *t <= now)
            .map(|(_, id)| id.clone())
            .collect()
    }

    /// The earliest due time, for sleeping until it.
    pub fn earliest(&self) -> Option<DateTime<Utc>> {
        self.by_time.first().map(|(t, _)| *t)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    fn schedule(cron: &str, tz: &str, created: &str) -> (Schedule, Compiled) {
        let spec = ScheduleSpec {
            name: "nightly".into(),
            tenant: None,
            instance: "db1".into(),
            source: SourceSpec {
                data_dir: Some("/var/lib/couchdb".into()),
                ..Default::default()
            },
            cron: cron.into(),
            tz: tz.into(),
            policies: vec![],
            tags: BTreeMap::new(),
            paused: false,
            backup_kind: None,
            prefix_check: None,
            cluster: false,
            jitter: "0".into(),
            starting_deadline: "1h".into(),
            other: Default::default(),
        };
        let c = spec.compile().expect("valid spec");
        let s = Schedule {
            couchvault_schedule: SCHEDULE_FORMAT,
            id: "01SCHEDULE".into(),
            tenant: "acme".into(),
            spec,
            created_at: t(created),
            updated_at: t(created),
            anchor: t(created),
            history: vec![],
        };
        (s, c)
    }

    /// Runs the schedule minute by minute from its anchor to `end` with an idle instance,
    /// returning the runs started.
    fn simulate(s: &mut Schedule, c: &Compiled, end: &str) -> Vec<String> {
        let mut now = s.anchor;
        let mut started = Vec::new();
        while now <= t(end) {
            if let Some(d) = s.decide(c, now) {
                if let Some(due) = d.due {
                    started.push(due.to_rfc3339());
                }
                let o = d.due.map(|_| Outcome::Started {
                    job_id: "job".into(),
                });
                s.record(&d, o, now);
            }
            now += Duration::seconds(20);
        }
        started
    }

    #[test]
    fn never_fires_on_create_even_when_the_time_matches() {
        // Created at exactly 02:00 with a 02:00 schedule: the first run is tomorrow.
        let (s, c) = schedule("0 2 * * *", "UTC", "2026-11-26T02:00:00Z");
        assert_eq!(s.decide(&c, t("2026-11-26T02:00:00Z")), None);
        assert_eq!(s.decide(&c, t("2026-11-26T12:00:00Z")), None);
        assert_eq!(s.next_due(&c), Some(t("2026-11-27T02:00:00Z")));
    }

    #[test]
    fn dst_days_run_once_in_two_zones() {
        for (tz, spring_day, fall_day) in [
            ("Europe/Berlin", "2026-03-29", "2026-10-25"),
            ("America/New_York", "2026-03-08", "2026-11-01"),
        ] {
            for day in [spring_day, fall_day] {
                let (mut s, c) = schedule("30 2 * * *", tz, &format!("{day}T00:00:00Z"));
                s.anchor = t(&format!("{day}T00:00:00Z")) - Duration::hours(12);
                let runs = simulate(&mut s, &c, &format!("{day}T23:59:00Z"));
                assert_eq!(runs.len(), 1, "{tz} on {day}: {runs:?}");
            }
        }
    }

    #[test]
    fn after_downtime_at_most_one_missed_run_within_the_deadline() {
        let (mut s, c) = schedule("*/10 * * * *", "UTC", "2026-11-26T08:00:00Z");
        // Down from 08:05 to 12:34: runs 08:10 ... 12:30 passed. Only 12:30 is within 1h
        // and the latest, so it runs once; the rest are recorded as missed.
        let d = s.decide(&c, t("2026-11-26T12:34:00Z")).expect("a decision");
        assert_eq!(d.due, Some(t("2026-11-26T12:30:00Z")));
        let missed = d.missed.clone().expect("missed record");
        assert_eq!(missed.scheduled_for, t("2026-11-26T08:10:00Z"));
        assert!(
            matches!(missed.outcome, Outcome::Missed { runs: 21, .. }),
            "{missed:?}"
        );
        s.record(
            &d,
            Some(Outcome::Started { job_id: "j".into() }),
            t("2026-11-26T12:34:00Z"),
        );
        // Not again at the next tick.
        assert_eq!(s.decide(&c, t("2026-11-26T12:34:30Z")), None);
        assert_eq!(s.next_due(&c), Some(t("2026-11-26T12:40:00Z")));

        // Down past the deadline of every run: nothing runs, one missed record.
        let (mut daily, c) = schedule("0 3 * * *", "UTC", "2026-11-20T00:00:00Z");
        let d = daily
            .decide(&c, t("2026-11-26T10:00:00Z"))
            .expect("decision");
        assert_eq!(d.due, None);
        assert!(matches!(
            d.missed.as_ref().map(|m| &m.outcome),
            Some(Outcome::Missed { runs: 7, .. })
        ));
        daily.record(&d, None, t("2026-11-26T10:00:00Z"));
        assert_eq!(daily.decide(&c, t("2026-11-26T10:01:00Z")), None);
        assert_eq!(daily.next_due(&c), Some(t("2026-11-27T03:00:00Z")));
    }

    #[test]
    fn resume_does_not_fire_a_catch_up_run() {
        let (mut s, c) = schedule("@hourly", "UTC", "2026-11-26T08:00:00Z");
        s.spec.paused = true;
        assert_eq!(s.next_due(&c), None);
        assert_eq!(s.decide(&c, t("2026-11-26T10:30:00Z")), None);
        // Resuming at 10:30 moves the anchor: 09:00 and 10:00 are not caught up.
        s.spec.paused = false;
        s.anchor = t("2026-11-26T10:30:00Z");
        assert_eq!(s.decide(&c, t("2026-11-26T10:30:00Z")), None);
        assert_eq!(s.next_due(&c), Some(t("2026-11-26T11:00:00Z")));
    }

    #[test]
    fn a_busy_instance_records_the_run_as_skipped() {
        let (mut s, c) = schedule("*/5 * * * *", "UTC", "2026-11-26T08:00:00Z");
        let now = t("2026-11-26T08:05:01Z");
        let d = s.decide(&c, now).expect("due");
        s.record(
            &d,
            Some(Outcome::Skipped {
                reason: "instance db1 is busy with restore job J".into(),
            }),
            now,
        );
        assert_eq!(s.history.len(), 1);
        assert!(
            matches!(&s.history[0].outcome, Outcome::Skipped { reason } if reason.contains("busy"))
        );
        // The skipped run is not retried; the next is 08:10.
        assert_eq!(s.decide(&c, t("2026-11-26T08:09:00Z")), None);
        assert_eq!(s.next_due(&c), Some(t("2026-11-26T08:10:00Z")));
    }

    #[test]
    fn jitter_delays_within_bounds_and_history_is_bounded() {
        let (mut s, mut c) = schedule("* * * * *", "UTC", "2026-11-26T08:00:00Z");
        c.jitter = Duration::seconds(30);
        for k in 0..100 {
            let run = t("2026-11-26T08:00:00Z") + Duration::minutes(k);
            let j = jitter_for(&s.id, run, c.jitter);
            assert!(j >= Duration::zero() && j < Duration::seconds(30));
        }
        let runs = simulate(&mut s, &c, "2026-11-26T09:00:00Z");
        assert!(runs.len() >= 59, "{}", runs.len());
        assert_eq!(s.history.len(), HISTORY);
    }

    #[test]
    fn timetable_returns_the_due_prefix() {
        let mut tt = Timetable::default();
        tt.set("a", Some(t("2026-11-26T08:00:00Z")));
        tt.set("b", Some(t("2026-11-26T09:00:00Z")));
        tt.set("c", None);
        tt.set("a", Some(t("2026-11-26T10:00:00Z")));
        assert_eq!(tt.due(t("2026-11-26T09:30:00Z")), vec!["b".to_string()]);
        assert_eq!(tt.earliest(), Some(t("2026-11-26T09:00:00Z")));
        assert_eq!(tt.len(), 2);
    }
}
