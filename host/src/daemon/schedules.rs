//! The daemon's schedules: create/replace/pause/resume/remove (persisted in sled) and the
//! tick that starts due runs. The semantics live in `crate::scheduler`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use ulid::Ulid;

use super::db::Db;
use super::files::{check_version, parse_toml, toml_files, FileError};
use super::jobs::{BackupParams, JobRequest, JobState, Runner, ScheduledRun, SubmitError};
use super::metrics::labels;
use crate::ops::resolve_policies;
use crate::scheduler::{Compiled, Outcome, Schedule, ScheduleSpec, Timetable, SCHEDULE_FORMAT};

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("{0}")]
    Invalid(String),
    #[error("no such schedule")]
    NotFound,
    #[error("tenant '{tenant}' already has a schedule named '{name}' ({id})")]
    Exists {
        tenant: String,
        name: String,
        id: String,
    },
    #[error(transparent)]
    Db(#[from] super::db::DbError),
}

/// Every schedule in memory (sled is written through), so reads never scan the database.
#[derive(Default)]
struct Inner {
    timetable: Timetable,
    compiled: HashMap<String, Compiled>,
    schedules: BTreeMap<String, Schedule>,
}

pub struct Schedules {
    db: Db,
    runner: Arc<Runner>,
    inner: Mutex<Inner>,
    /// Woken when a schedule changes, so the loop recomputes its sleep.
    pub changed: tokio::sync::Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Schedules {
    /// Loads every stored schedule and computes when each is next due.
    pub fn load(db: Db, runner: Arc<Runner>) -> Result<Schedules, ScheduleError> {
        let mut inner = Inner::default();
        for s in db.schedules()? {
            match s.spec.compile() {
                Ok(c) => {
                    inner.timetable.set(&s.id, s.next_due(&c));
                    inner.compiled.insert(s.id.clone(), c);
                }
                // Stored schedules were valid when stored; a newer rule may refuse one.
                Err(e) => {
                    tracing::error!(schedule = %s.id, "schedule no longer valid, not run: {e}")
                }
            }
            inner.schedules.insert(s.id.clone(), s);
        }
        runner.metrics.set(
            "couchvault_schedules",
            String::new(),
            inner.compiled.len() as f64,
        );
        Ok(Schedules {
            db,
            runner,
            inner: Mutex::new(inner),
            changed: tokio::sync::Notify::new(),
        })
    }

    pub fn len(&self) -> usize {
        lock(&self.inner).compiled.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The tenant's schedules (all for None), sorted by id.
    pub fn list(&self, tenant: Option<&str>) -> Result<Vec<Schedule>, ScheduleError> {
        Ok(lock(&self.inner)
            .schedules
            .values()
            .filter(|s| tenant.is_none_or(|t| s.tenant == t))
            .cloned()
            .collect())
    }

    pub fn get(&self, tenant: Option<&str>, id: &str) -> Result<Schedule, ScheduleError> {
        match lock(&self.inner).schedules.get(id) {
            Some(s) if tenant.is_none_or(|t| s.tenant == t) => Ok(s.clone()),
            _ => Err(ScheduleError::NotFound),
        }
    }

    /// The id of the tenant's schedule named `name`, other than `except`.
    fn named(&self, tenant: &str, name: &str, except: Option<&str>) -> Option<String> {
        lock(&self.inner)
            .schedules
            .values()
            .find(|s| s.tenant == tenant && s.spec.name == name && Some(s.id.as_str()) != except)
            .map(|s| s.id.clone())
    }

    /// Checks a spec for `tenant`: every field, and that its policies exist.
    fn check(&self, tenant: &str, spec: &ScheduleSpec) -> Result<Compiled, ScheduleError> {
        let c = spec
            .compile()
            .map_err(|e| ScheduleError::Invalid(e.to_string()))?;
        resolve_policies(&self.runner.vault.state_dir, tenant, &spec.policies)
            .map_err(|e| ScheduleError::Invalid(e.to_string()))?;
        Ok(c)
    }

    fn store(&self, s: &Schedule, c: Compiled) -> Result<(), ScheduleError> {
        self.db.put_schedule(s)?;
        let mut inner = lock(&self.inner);
        inner.timetable.set(&s.id, s.next_due(&c));
        inner.compiled.insert(s.id.clone(), c);
        inner.schedules.insert(s.id.clone(), s.clone());
        self.runner.metrics.set(
            "couchvault_schedules",
            String::new(),
            inner.compiled.len() as f64,
        );
        drop(inner);
        self.changed.notify_one();
        Ok(())
    }

    /// A new schedule; it first runs at its next cron time after now, never at once.
    pub fn create(
        &self,
        tenant: &str,
        mut spec: ScheduleSpec,
        now: DateTime<Utc>,
    ) -> Result<Schedule, ScheduleError> {
        // The stored schedule carries its tenant once, outside the spec.
        spec.tenant = None;
        let c = self.check(tenant, &spec)?;
        if let Some(id) = self.named(tenant, &spec.name, None) {
            return Err(ScheduleError::Exists {
                tenant: tenant.to_string(),
                name: spec.name,
                id,
            });
        }
        let s = Schedule {
            couchvault_schedule: SCHEDULE_FORMAT,
            id: Ulid::new().to_string(),
            tenant: tenant.to_string(),
            spec,
            created_at: now,
            updated_at: now,
            anchor: now,
            history: Vec::new(),
        };
        self.store(&s, c)?;
        Ok(s)
    }

    /// Replaces a schedule's spec; like a new one, it does not fire at once.
    pub fn replace(
        &self,
        tenant: Option<&str>,
        id: &str,
        mut spec: ScheduleSpec,
        now: DateTime<Utc>,
    ) -> Result<Schedule, ScheduleError> {
        let mut s = self.get(tenant, id)?;
        spec.tenant = None;
        let c = self.check(&s.tenant, &spec)?;
        if let Some(id) = self.named(&s.tenant, &spec.name, Some(&s.id)) {
            return Err(ScheduleError::Exists {
                tenant: s.tenant.clone(),
                name: spec.name,
                id,
            });
        }
        s.spec = spec;
        s.updated_at = now;
        s.anchor = s.anchor.max(now);
        self.store(&s, c)?;
        Ok(s)
    }

    /// Pauses or resumes. Resuming moves the anchor to now: runs passed while paused are
    /// not caught up.
    pub fn set_paused(
        &self,
        tenant: Option<&str>,
        id: &str,
        paused: bool,
        now: DateTime<Utc>,
    ) -> Result<Schedule, ScheduleError> {
        let mut s = self.get(tenant, id)?;
        let c = s
            .spec
            .compile()
            .map_err(|e| ScheduleError::Invalid(e.to_string()))?;
        if s.spec.paused && !paused {
            s.anchor = s.anchor.max(now);
        }
        s.spec.paused = paused;
        s.updated_at = now;
        self.store(&s, c)?;
        Ok(s)
    }

    pub fn remove(&self, tenant: Option<&str>, id: &str) -> Result<(), ScheduleError> {
        self.get(tenant, id)?;
        self.db.remove_schedule(id)?;
        let mut inner = lock(&self.inner);
        inner.timetable.set(id, None);
        inner.compiled.remove(id);
        inner.schedules.remove(id);
        self.runner.metrics.set(
            "couchvault_schedules",
            String::new(),
            inner.compiled.len() as f64,
        );
        Ok(())
    }

    /// The earliest due time, for the loop's sleep.
    pub fn earliest(&self) -> Option<DateTime<Utc>> {
        lock(&self.inner).timetable.earliest()
    }

    /// The ids due at `now` (the per-tick computation B6 measures).
    pub fn due(&self, now: DateTime<Utc>) -> Vec<String> {
        lock(&self.inner).timetable.due(now)
    }

    /// Starts (or records as skipped or missed) every run due at `now`. Returns how many
    /// schedules were handled; their records are flushed before it returns.
    pub async fn tick(&self, now: DateTime<Utc>) -> Result<usize, ScheduleError> {
        let due = self.due(now);
        for id in &due {
            self.handle(id, now)?;
        }
        if !due.is_empty() {
            self.db.flush().await?;
        }
        Ok(due.len())
    }

    fn handle(&self, id: &str, now: DateTime<Utc>) -> Result<(), ScheduleError> {
        let Ok(mut s) = self.get(None, id) else {
            lock(&self.inner).timetable.set(id, None);
            return Ok(());
        };
        let Some(c) = lock(&self.inner).compiled.get(id).cloned() else {
            return Ok(());
        };
        let Some(decision) = s.decide(&c, now) else {
            lock(&self.inner).timetable.set(id, s.next_due(&c));
            return Ok(());
        };
        let metrics = &self.runner.metrics;
        if decision.missed.is_some() {
            metrics.add(
                "couchvault_scheduled_runs_total",
                labels(&[("outcome", "missed")]),
                1.0,
            );
            tracing::warn!(schedule = %s.id, "runs missed beyond the starting deadline");
        }
        let outcome = decision.due.map(|t| {
            let request = JobRequest::Backup(BackupParams {
                instance: s.spec.instance.clone(),
                source: s.spec.source.clone(),
                policies: s.spec.policies.clone(),
                tags: s.spec.tags.clone(),
                backup_kind: s.spec.backup_kind,
                prefix_check: s.spec.prefix_check,
                cluster: s.spec.cluster,
                ..Default::default()
            });
            let run = ScheduledRun {
                schedule_id: s.id.clone(),
                schedule_name: s.spec.name.clone(),
                scheduled_for: t,
            };
            let o = match self.runner.submit(&s.tenant, request, Some(run), 1) {
                Ok(job) => Outcome::Started { job_id: job.id },
                Err(e @ (SubmitError::Busy { .. } | SubmitError::ShuttingDown)) => {
                    Outcome::Skipped {
                        reason: e.to_string(),
                    }
                }
                Err(e) => Outcome::Skipped {
                    reason: format!("could not start: {e}"),
                },
            };
            let label = match &o {
                Outcome::Started { .. } => "started",
                _ => "skipped",
            };
            metrics.add(
                "couchvault_scheduled_runs_total",
                labels(&[("outcome", label)]),
                1.0,
            );
            tracing::info!(schedule = %s.id, scheduled_for = %t, outcome = label, "scheduled run");
            o
        });
        s.record(&decision, outcome, now);
        self.db.put_schedule(&s)?;
        let mut inner = lock(&self.inner);
        inner.timetable.set(id, s.next_due(&c));
        inner.schedules.insert(s.id.clone(), s);
        Ok(())
    }

    /// Retries scheduled backups cut off by the last stop, when their schedule still
    /// exists, is not paused and the run is within its starting deadline.
    pub fn retry_interrupted(&self, interrupted: &[super::jobs::Job], now: DateTime<Utc>) {
        for job in interrupted {
            let (JobState::Interrupted, Some(run)) = (job.state, &job.scheduled) else {
                continue;
            };
            let Ok(s) = self.get(None, &run.schedule_id) else {
                continue;
            };
            let Some(c) = lock(&self.inner).compiled.get(&s.id).cloned() else {
                continue;
            };
            if s.spec.paused || now - run.scheduled_for > c.deadline {
                continue;
            }
            match self.runner.submit(
                &job.tenant,
                job.request.clone(),
                Some(run.clone()),
                job.attempt + 1,
            ) {
                Ok(new) => {
                    tracing::info!(job = %job.id, retry = %new.id, "retrying an interrupted scheduled backup")
                }
                Err(e) => tracing::warn!(job = %job.id, "cannot retry: {e}"),
            }
        }
    }

    /// Applies every `*.toml` in `dir`: creates schedules that do not exist (matched by
    /// tenant and name), replaces those that differ, leaves the rest. Schedules not in
    /// the files are kept. Returns (created, updated, unchanged) names.
    pub fn apply_dir(
        &self,
        dir: &Path,
        default_tenant: &str,
        now: DateTime<Utc>,
    ) -> Result<ApplyReport, ScheduleError> {
        let specs = read_dir_specs(dir).map_err(|e| ScheduleError::Invalid(e.to_string()))?;
        self.apply(specs, default_tenant, now)
    }

    pub fn apply(
        &self,
        specs: Vec<(String, ScheduleSpec)>,
        default_tenant: &str,
        now: DateTime<Utc>,
    ) -> Result<ApplyReport, ScheduleError> {
        // Check every file first: a bad one applies nothing.
        for (file, spec) in &specs {
            let tenant = spec.tenant.as_deref().unwrap_or(default_tenant);
            self.check(tenant, spec)
                .map_err(|e| ScheduleError::Invalid(format!("{file}: {e}")))?;
        }
        let mut report = ApplyReport::default();
        for (_, mut spec) in specs {
            let tenant = spec
                .tenant
                .take()
                .unwrap_or_else(|| default_tenant.to_string());
            let label = format!("{tenant}/{}", spec.name);
            match self.named(&tenant, &spec.name, None) {
                None => {
                    self.create(&tenant, spec, now)?;
                    report.created.push(label);
                }
                Some(id) if same_spec(&self.get(None, &id)?.spec, &spec) => {
                    report.unchanged.push(label)
                }
                Some(id) => {
                    self.replace(Some(&tenant), &id, spec, now)?;
                    report.updated.push(label);
                }
            }
        }
        Ok(report)
    }
}

fn same_spec(a: &ScheduleSpec, b: &ScheduleSpec) -> bool {
    serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ApplyReport {
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub unchanged: Vec<String>,
}

/// A schedule file: `couchvault_schedules = 1` and one or more `[[schedule]]` tables.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleFile {
    couchvault_schedules: u32,
    #[serde(default)]
    schedule: Vec<ScheduleSpec>,
}

/// Reads every `*.toml` in `dir` (sorted), each entry labelled with its file.
pub fn read_dir_specs(dir: &Path) -> Result<Vec<(String, ScheduleSpec)>, FileError> {
    let mut out = Vec::new();
    for (f, text) in toml_files(dir)? {
        let parsed: ScheduleFile = parse_toml(&f, &text)?;
        check_version(&f, "couchvault_schedules", parsed.couchvault_schedules)?;
        for s in parsed.schedule {
            out.push((f.display().to_string(), s));
        }
    }
    Ok(out)
}
