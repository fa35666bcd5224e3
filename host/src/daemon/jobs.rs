//! Jobs: backup, restore, verify, delete and gc, each run on its own thread with live
//! progress and cancellation. One job at a time per instance; every state change is
//! written to sled and flushed before anyone is told about it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use ulid::Ulid;

use super::db::{Db, IndexEntry};
use super::instances;
use super::metrics::{labels, Metrics};
use crate::catalog;
use crate::couchdb::{Source, SourceSpec};
use crate::engine::{self, Progress, RestoreOptions};
use crate::ops::restore::{Hooks, RestoreRequest};
use crate::ops::{resolve_policies, restore_owner, BackupRequest, OpsError, Vault};
use crate::policy::floors::Verdict;
use crate::scheduler::SourceSettings;

pub const JOB_FORMAT: u32 = 1;
/// The tenant the admin's own jobs (gc) are recorded under.
pub const ADMIN_TENANT: &str = "_admin";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// The daemon stopped (crash, kill, shutdown timeout) while the job ran.
    Interrupted,
}

impl JobState {
    pub fn is_finished(self) -> bool {
        self != JobState::Running
    }
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Interrupted => "interrupted",
        }
    }
}

/// A backup's parameters (also the body of `POST /v1/backups`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupParams {
    pub instance: String,
    // The source's fields, inline: serde cannot reject unknown fields through a flatten.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub couchdb_config: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view_index_dir: Option<PathBuf>,
    /// The tenant's policies (retention and/or protection) by name.
    #[serde(default)]
    pub policies: Vec<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression_level: Option<i32>,
    /// Back up even when the shard map names files the data dir lacks; record the gaps.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_incomplete: bool,
}

impl BackupParams {
    pub fn source(&self) -> SourceSettings {
        SourceSettings {
            couchdb_config: self.couchdb_config.clone(),
            data_dir: self.data_dir.clone(),
            view_index_dir: self.view_index_dir.clone(),
        }
    }
}

/// What a job does, with its parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobRequest {
    Backup(BackupParams),
    Restore {
        backup_id: String,
        /// The instance being restored (locks it against its backups); default the backup's.
        instance: String,
        target: PathBuf,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        view_index_target: Option<PathBuf>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        config_target: Option<PathBuf>,
        #[serde(default)]
        force: bool,
        #[serde(default)]
        discard_old: bool,
        /// The node name the restored CouchDB runs as; a backup from another node is
        /// refused unless `rename_node`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node_name: Option<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        rename_node: bool,
        /// Run the config's restore hooks (admin requests only).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        hooks: bool,
        /// Into the registered instance itself: its hooks and its CouchDB.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        in_place: bool,
    },
    Verify {
        backup_id: String,
    },
    Delete {
        backup_id: String,
    },
    Gc {
        grace: String,
    },
}

impl JobRequest {
    pub fn kind(&self) -> &'static str {
        match self {
            JobRequest::Backup(_) => "backup",
            JobRequest::Restore { .. } => "restore",
            JobRequest::Verify { .. } => "verify",
            JobRequest::Delete { .. } => "delete",
            JobRequest::Gc { .. } => "gc",
        }
    }

    /// The instance this job holds exclusively, if any.
    pub fn instance(&self) -> Option<&str> {
        match self {
            JobRequest::Backup(BackupParams { instance, .. })
            | JobRequest::Restore { instance, .. } => Some(instance),
            _ => None,
        }
    }
}

/// Which schedule run started a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledRun {
    pub schedule_id: String,
    pub schedule_name: String,
    pub scheduled_for: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProgressSnapshot {
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub files_done: u64,
    pub files_total: u64,
    /// Bytes per second since the job started.
    pub rate: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub couchvault_job: u32,
    pub id: String,
    pub tenant: String,
    pub request: JobRequest,
    pub state: JobState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled: Option<ScheduledRun>,
    /// 1 for a first try; retries of interrupted scheduled backups count up.
    pub attempt: u32,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<f64>,
    pub progress: ProgressSnapshot,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The backup made, restored, verified or deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    /// Retention verdicts after a backup (what was kept and deleted, and why).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retention: Vec<Verdict>,
    /// Kind-specific result (restore, verify and gc reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(
        "instance '{instance}' is busy with {kind} job {job_id}; try again when it has finished"
    )]
    Busy {
        instance: String,
        kind: String,
        job_id: String,
    },
    #[error("tenant '{tenant}' already has {limit} jobs running (daemon.tenant_jobs); try again when one has finished")]
    TooMany { tenant: String, limit: usize },
    #[error("the daemon is shutting down and takes no new jobs")]
    ShuttingDown,
    #[error("cannot start a thread for the job ({0}); the machine is out of threads or memory")]
    Thread(String),
    #[error(transparent)]
    Db(#[from] super::db::DbError),
}

/// (tenant, instance) → (job id, job kind) of the job holding it.
type Holders = HashMap<(String, String), (String, &'static str)>;

struct Active {
    tenant: String,
    progress: Arc<Progress>,
    started: Instant,
}

/// Starts jobs, tracks the running ones and records how they end.
pub struct Runner {
    pub vault: Arc<Vault>,
    pub db: Db,
    pub metrics: Arc<Metrics>,
    /// (tenant, instance) → the job holding it.
    busy: Mutex<Holders>,
    active: Mutex<HashMap<String, Active>>,
    accepting: AtomicBool,
    history: usize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking job thread must not take the daemon down with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Runner {
    pub fn new(vault: Arc<Vault>, db: Db, metrics: Arc<Metrics>, history: usize) -> Runner {
        Runner {
            vault,
            db,
            metrics,
            busy: Mutex::default(),
            active: Mutex::default(),
            accepting: AtomicBool::new(true),
            history: history.max(1),
        }
    }

    /// The job holding an instance, if any.
    pub fn busy_with(&self, tenant: &str, instance: &str) -> Option<(String, &'static str)> {
        lock(&self.busy)
            .get(&(tenant.to_string(), instance.to_string()))
            .cloned()
    }

    pub fn running(&self) -> usize {
        lock(&self.active).len()
    }

    /// Records a job as running and starts it on its own thread. The record is written
    /// (not yet flushed: the caller flushes before acknowledging).
    pub fn submit(
        self: &Arc<Self>,
        tenant: &str,
        mut request: JobRequest,
        scheduled: Option<ScheduledRun>,
        attempt: u32,
    ) -> Result<Job, SubmitError> {
        if !self.accepting.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        let id = Ulid::new().to_string();
        // A backup's id is chosen now, so a crash can be cleaned up after.
        let backup_id = match &mut request {
            JobRequest::Backup(_) => Some(Ulid::new().to_string()),
            JobRequest::Restore { backup_id, .. }
            | JobRequest::Verify { backup_id }
            | JobRequest::Delete { backup_id } => Some(backup_id.clone()),
            JobRequest::Gc { .. } => None,
        };
        let job = Job {
            couchvault_job: JOB_FORMAT,
            id: id.clone(),
            tenant: tenant.to_string(),
            request,
            state: JobState::Running,
            scheduled,
            attempt,
            created_at: Utc::now(),
            finished_at: None,
            duration_secs: None,
            progress: ProgressSnapshot::default(),
            error: None,
            backup_id,
            retention: Vec::new(),
            result: None,
            notes: Vec::new(),
        };
        {
            let mut busy = lock(&self.busy);
            // One tenant cannot take every thread: admin jobs (gc) are not counted.
            let limit = self.vault.config.daemon.tenant_jobs.max(1);
            let mine = lock(&self.active)
                .values()
                .filter(|a| a.tenant == tenant)
                .count();
            if tenant != ADMIN_TENANT && mine >= limit {
                return Err(SubmitError::TooMany {
                    tenant: tenant.to_string(),
                    limit,
                });
            }
            if let Some(inst) = job.request.instance() {
                let key = (tenant.to_string(), inst.to_string());
                if let Some((other, kind)) = busy.get(&key) {
                    return Err(SubmitError::Busy {
                        instance: inst.to_string(),
                        kind: kind.to_string(),
                        job_id: other.clone(),
                    });
                }
                busy.insert(key, (id.clone(), job.request.kind()));
            }
            self.db.put_job(&job)?;
        }
        let progress = Arc::new(Progress::default());
        lock(&self.active).insert(
            id.clone(),
            Active {
                tenant: tenant.to_string(),
                progress: progress.clone(),
                started: Instant::now(),
            },
        );
        let me = self.clone();
        let spawned = job.clone();
        let started = std::thread::Builder::new()
            .name(format!("job-{id}"))
            .spawn(move || me.run(spawned, progress));
        if let Err(e) = started {
            // Undo the claim: the job never ran.
            if let Some(inst) = job.request.instance() {
                lock(&self.busy).remove(&(tenant.to_string(), inst.to_string()));
            }
            lock(&self.active).remove(&id);
            let mut failed = job;
            failed.state = JobState::Failed;
            failed.finished_at = Some(Utc::now());
            failed.error = Some(format!("cannot start a thread: {e}"));
            self.db.put_job(&failed)?;
            return Err(SubmitError::Thread(e.to_string()));
        }
        Ok(job)
    }

    /// A job as stored, with live progress while it runs.
    pub fn show(&self, mut job: Job) -> Job {
        if let Some(a) = lock(&self.active).get(&job.id) {
            job.progress = snapshot(&a.progress, a.started);
        }
        job
    }

    /// Asks a running job to stop; false when it is not running.
    pub fn cancel(&self, id: &str) -> bool {
        match lock(&self.active).get(id) {
            Some(a) => {
                a.progress.cancel();
                true
            }
            None => false,
        }
    }

    fn run(self: Arc<Self>, mut job: Job, progress: Arc<Progress>) {
        let started = Instant::now();
        if let Err(e) = self.db.flush_blocking() {
            tracing::error!(job = %job.id, "cannot record the job: {e}");
        }
        tracing::info!(job = %job.id, kind = job.request.kind(), tenant = %job.tenant, "job started");
        let outcome = self.execute(&mut job, &progress);
        job.progress = snapshot(&progress, started);
        job.finished_at = Some(Utc::now());
        job.duration_secs = Some(started.elapsed().as_secs_f64());
        match outcome {
            Ok(()) => job.state = JobState::Succeeded,
            Err(e) => {
                job.state = if progress.is_cancelled() {
                    JobState::Cancelled
                } else {
                    JobState::Failed
                };
                job.error = Some(e);
            }
        }
        tracing::info!(job = %job.id, state = job.state.as_str(), error = %crate::names::escape_control(job.error.as_deref().unwrap_or("")), "job finished");
        self.record_metrics(&job);
        if let Err(e) = self
            .db
            .put_job(&job)
            .and_then(|()| self.db.flush_blocking())
        {
            tracing::error!(job = %job.id, "cannot record the job's end: {e}");
        }
        if let Some(inst) = job.request.instance() {
            lock(&self.busy).remove(&(job.tenant.clone(), inst.to_string()));
        }
        lock(&self.active).remove(&job.id);
        self.prune(&job);
    }

    fn execute(&self, job: &mut Job, progress: &Progress) -> Result<(), String> {
        let vault = &*self.vault;
        let tenant = job.tenant.clone();
        match job.request.clone() {
            JobRequest::Backup(BackupParams {
                instance,
                couchdb_config,
                data_dir,
                view_index_dir,
                policies,
                tags,
                compression_level,
                allow_incomplete,
            }) => {
                // Paths come from the admin only; otherwise the registered instance,
                // confined to its directories.
                let (source, couchdb) = if couchdb_config.is_some() || data_dir.is_some() {
                    let spec = SourceSpec {
                        couchdb_config,
                        data_dir,
                        view_index_dir,
                    };
                    (Source::discover(&spec).map_err(|e| e.to_string())?, None)
                } else {
                    let inst = instances::require(&self.db, &tenant, &instance)
                        .map_err(|e| e.to_string())?;
                    (inst.source()?, Some(inst.couchdb(&vault.config)))
                };
                let (protection, retention) =
                    resolve_policies(&vault.state_dir, &tenant, &policies)?;
                let backup_id = job
                    .backup_id
                    .as_deref()
                    .and_then(|b| b.parse::<Ulid>().ok());
                let req = BackupRequest {
                    backup_id,
                    tenant: tenant.clone(),
                    instance: instance.clone(),
                    protection,
                    retention,
                    schedule: job.scheduled.as_ref().map(|s| s.schedule_name.clone()),
                    compression_level,
                    tags,
                    allow_incomplete,
                    couchdb,
                };
                let outcome = vault
                    .backup(&req, &source, progress)
                    .map_err(|e| e.to_string())?;
                let meta = &outcome.meta;
                self.index_put(&IndexEntry::of(meta));
                self.metrics.add(
                    "couchvault_backup_bytes_total",
                    labels(&[("tenant", &tenant)]),
                    meta.totals.bytes as f64,
                );
                self.metrics.add(
                    "couchvault_backup_stored_bytes_total",
                    labels(&[("tenant", &tenant)]),
                    meta.data.size as f64,
                );
                self.metrics.set(
                    "couchvault_last_success_timestamp_seconds",
                    labels(&[("tenant", &tenant), ("instance", &instance)]),
                    meta.finished_at.timestamp() as f64,
                );
                if outcome.retention.is_some() || !outcome.notes.is_empty() {
                    self.metrics.add(
                        "couchvault_policy_evaluation_seconds_sum",
                        String::new(),
                        outcome.policy_time.as_secs_f64(),
                    );
                    self.metrics.add(
                        "couchvault_policy_evaluation_seconds_count",
                        String::new(),
                        1.0,
                    );
                }
                job.notes = outcome.notes.clone();
                match outcome.retention {
                    Some(Ok(verdicts)) => {
                        for v in verdicts.iter().filter(|v| !v.keep) {
                            self.index_remove(&tenant, &v.id);
                        }
                        job.retention = verdicts;
                        Ok(())
                    }
                    Some(Err(e)) => Err(e),
                    None => Ok(()),
                }
            }
            JobRequest::Restore {
                backup_id,
                target,
                view_index_target,
                config_target,
                force,
                discard_old,
                node_name,
                rename_node,
                hooks,
                in_place,
                instance,
            } => {
                let keyring = vault.keyring().map_err(|e| e.to_string())?;
                let meta = catalog::load(&*vault.store, &keyring, &tenant, &backup_id)
                    .map_err(|e| e.to_string())?;
                let owner = restore_owner(vault.config.restore.owner.as_deref(), &target)
                    .map_err(|e| e.to_string())?;
                let (hooks, couchdb) = if in_place {
                    let inst = instances::require(&self.db, &tenant, &instance)
                        .map_err(|e| e.to_string())?;
                    let hooks = Hooks {
                        stop: inst.spec.stop_command.clone(),
                        start: inst.spec.start_command.clone(),
                    };
                    (hooks, Some(inst.couchdb(&vault.config)))
                } else if hooks {
                    (Hooks::from_config(&vault.config.restore), None)
                } else {
                    // A tenant's restore into its restore root: no hooks, no CouchDB.
                    (Hooks::default(), Some(Default::default()))
                };
                let req = RestoreRequest {
                    opts: RestoreOptions {
                        target,
                        view_index_target,
                        config_target,
                        force,
                        discard_old,
                        owner,
                        sync: vault.config.restore.sync,
                    },
                    target_node: node_name,
                    rename_node,
                    hooks,
                    couchdb,
                };
                match vault.restore(&meta, &req, progress) {
                    Ok(outcome) => {
                        job.result = serde_json::to_value(&outcome).ok();
                        Ok(())
                    }
                    Err(OpsError::PostCheck { checks, message }) => {
                        job.result = serde_json::to_value(&checks).ok();
                        Err(message)
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
            JobRequest::Verify { backup_id } => {
                let keyring = vault.keyring().map_err(|e| e.to_string())?;
                let meta = catalog::load(&*vault.store, &keyring, &tenant, &backup_id)
                    .map_err(|e| e.to_string())?;
                let report = engine::verify(&*vault.store, &keyring, &meta, progress)
                    .map_err(|e| e.to_string())?;
                job.result = serde_json::to_value(&report).ok();
                Ok(())
            }
            JobRequest::Delete { backup_id } => {
                let deleted = catalog::delete(&*vault.store, &tenant, &backup_id)
                    .map_err(|e| e.to_string())?;
                self.index_remove(&tenant, &backup_id);
                job.result = serde_json::to_value(&deleted).ok();
                Ok(())
            }
            JobRequest::Gc { grace } => {
                let grace = crate::config::parse_duration(&grace)?;
                let report = catalog::gc(&*vault.store, grace, false).map_err(|e| e.to_string())?;
                job.result = serde_json::to_value(&report).ok();
                Ok(())
            }
        }
    }

    fn index_put(&self, e: &IndexEntry) {
        if let Err(err) = self.db.index_put(e) {
            tracing::warn!("backup index: {err} (the store stays the truth)");
        }
    }

    fn index_remove(&self, tenant: &str, id: &str) {
        if let Err(err) = self.db.index_remove(tenant, id) {
            tracing::warn!("backup index: {err} (the store stays the truth)");
        }
    }

    fn record_metrics(&self, job: &Job) {
        let l = labels(&[
            ("kind", job.request.kind()),
            ("outcome", job.state.as_str()),
        ]);
        self.metrics.add("couchvault_jobs_total", l.clone(), 1.0);
        self.metrics.add(
            "couchvault_job_duration_seconds_sum",
            l.clone(),
            job.duration_secs.unwrap_or(0.0),
        );
        self.metrics
            .add("couchvault_job_duration_seconds_count", l, 1.0);
    }

    /// Keeps the newest `history` finished jobs per tenant and instance.
    fn prune(&self, finished: &Job) {
        let key = |j: &Job| (j.tenant.clone(), j.request.instance().map(str::to_string));
        let mine = key(finished);
        let Ok(jobs) = self.db.jobs() else { return };
        let mut same: Vec<&Job> = jobs
            .iter()
            .filter(|j| j.state.is_finished() && key(j) == mine)
            .collect();
        same.sort_by(|a, b| b.id.cmp(&a.id));
        for old in same.iter().skip(self.history) {
            let _ = self.db.remove_job(&old.id);
        }
    }

    /// At start-up: jobs that were running when the daemon died are marked interrupted and
    /// their leftovers removed. Returns them, for retries.
    pub fn recover(&self) -> Result<Vec<Job>, super::db::DbError> {
        let mut out = Vec::new();
        for job in self.db.jobs()? {
            if job.state == JobState::Running {
                out.push(self.interrupt(job)?);
            }
        }
        self.db.flush_blocking()?;
        Ok(out)
    }

    /// Marks a job cut off by a stop as interrupted and removes its leftovers: a backup
    /// stopped before its commit leaves segments only. One stopped after its commit is whole.
    fn interrupt(&self, mut job: Job) -> Result<Job, super::db::DbError> {
        job.finished_at = Some(Utc::now());
        job.state = JobState::Interrupted;
        let mut error =
            "the daemon stopped (crash, kill or shutdown timeout) while this job ran".to_string();
        if let (JobRequest::Backup(_), Some(id)) = (&job.request, &job.backup_id) {
            let committed = self
                .vault
                .keyring()
                .ok()
                .and_then(|k| catalog::load(&*self.vault.store, &k, &job.tenant, id).ok());
            match committed {
                Some(meta) => {
                    job.state = JobState::Succeeded;
                    self.index_put(&IndexEntry::of(&meta));
                    error.clear();
                    job.notes.push(
                        "the daemon stopped after the backup was committed; retention did not run"
                            .into(),
                    );
                }
                None => match catalog::delete(&*self.vault.store, &job.tenant, id) {
                    Ok(_) => error.push_str("; its partial upload was removed"),
                    Err(crate::Error::NotFound { .. }) => {
                        error.push_str("; it had uploaded nothing")
                    }
                    Err(e) => error.push_str(&format!(
                        "; removing its partial upload failed ({e}); `couchvault gc` will"
                    )),
                },
            }
        }
        if let JobRequest::Restore { target, .. } = &job.request {
            error.push_str(&format!(
                "; {} is as it was unless the swap had happened: check it, and rerun the restore with --force",
                target.display()
            ));
        }
        if !error.is_empty() {
            job.error = Some(error);
        }
        tracing::warn!(job = %job.id, kind = job.request.kind(), state = job.state.as_str(), "job cut off by a stop");
        self.db.put_job(&job)?;
        self.record_metrics(&job);
        Ok(job)
    }

    /// Stops taking jobs, waits up to `timeout` for running ones, then cancels the rest
    /// (they clean up and end as cancelled); whatever still runs is marked interrupted.
    pub fn shutdown(&self, timeout: Duration) {
        self.accepting.store(false, Ordering::SeqCst);
        let deadline = Instant::now() + timeout;
        while self.running() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if self.running() == 0 {
            return;
        }
        tracing::warn!(
            running = self.running(),
            "shutdown timeout: cancelling running jobs"
        );
        for a in lock(&self.active).values() {
            a.progress.cancel();
        }
        // A cancelled job stops at its next block; one stuck elsewhere (a hook, a dead
        // store) is recorded as interrupted and left to the process exit.
        let grace = Instant::now() + Duration::from_secs(3);
        while self.running() > 0 && Instant::now() < grace {
            std::thread::sleep(Duration::from_millis(100));
        }
        let left: Vec<String> = lock(&self.active).keys().cloned().collect();
        for id in left {
            if let Ok(Some(job)) = self.db.job(&id) {
                if let Err(e) = self.interrupt(job) {
                    tracing::error!(job = %id, "cannot record the interruption: {e}");
                }
            }
        }
        let _ = self.db.flush_blocking();
    }
}

fn snapshot(p: &Progress, started: Instant) -> ProgressSnapshot {
    let done = p.bytes_done.load(Ordering::Relaxed);
    ProgressSnapshot {
        bytes_done: done,
        bytes_total: p.bytes_total.load(Ordering::Relaxed),
        files_done: p.files_done.load(Ordering::Relaxed),
        files_total: p.files_total.load(Ordering::Relaxed),
        rate: (done as f64 / started.elapsed().as_secs_f64().max(1e-3)) as u64,
    }
}
