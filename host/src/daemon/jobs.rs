//! Jobs: backup, restore, verify, delete and gc, each run on its own thread with live
//! progress and cancellation. One job at a time per instance; every state change is
//! written to sled and flushed before anyone is told about it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use ulid::Ulid;

use super::db::{ClusterIndexEntry, Db, IndexEntry};
use super::instances;
use super::metrics::{labels, Metrics};
use super::notify::Notifier;
use crate::couchdb::Source;
use crate::ops::keys::RewrapProgress;
use crate::ops::restore::{Hooks, RestoreRequest, RestoreTarget};
use crate::ops::{resolve_policies, BackupRequest, OpsError, Progress, Vault};
pub use crate::wire::{
    BackupParams, Job, JobRequest, JobState, ProgressSnapshot, ScheduledRun, ADMIN_TENANT,
    JOB_FORMAT,
};

/// Why a job failed: the use case's error, or the instance it names.
#[derive(Debug, thiserror::Error)]
enum JobError {
    #[error(transparent)]
    Ops(#[from] OpsError),
    #[error(transparent)]
    Instance(#[from] instances::InstanceError),
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
    notifier: Notifier,
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
    pub fn new(
        vault: Arc<Vault>,
        db: Db,
        metrics: Arc<Metrics>,
        notifier: Notifier,
        history: usize,
    ) -> Runner {
        Runner {
            vault,
            db,
            metrics,
            notifier,
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
            | JobRequest::Verify { backup_id, .. }
            | JobRequest::Databases { backup_id }
            | JobRequest::RestoreDatabase { backup_id, .. }
            | JobRequest::Delete { backup_id, .. } => Some(backup_id.clone()),
            JobRequest::Gc { .. } | JobRequest::KeyRotate { .. } => None,
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
        self.notifier.job_started(&job);
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
                job.error = Some(e.to_string());
            }
        }
        tracing::info!(job = %job.id, state = job.state.as_str(), error = %crate::names::escape_control(job.error.as_deref().unwrap_or("")), "job finished");
        self.record_metrics(&job);
        // The instance is free before the end is recorded: whoever sees the job ended may
        // start the next one at once (its work is done; only its record is left to write).
        if let Some(inst) = job.request.instance() {
            lock(&self.busy).remove(&(job.tenant.clone(), inst.to_string()));
        }
        if let Err(e) = self
            .db
            .put_job(&job)
            .and_then(|()| self.db.flush_blocking())
        {
            tracing::error!(job = %job.id, "cannot record the job's end: {e}");
        }
        crate::engine::checkpoint("job-recorded");
        lock(&self.active).remove(&job.id);
        self.notifier.job_finished(&job);
        self.prune(&job);
    }

    /// Runs the job's use case on the vault; what it made goes into the job record.
    fn execute(&self, job: &mut Job, progress: &Progress) -> Result<(), JobError> {
        let vault = &*self.vault;
        let tenant = job.tenant.clone();
        match job.request.clone() {
            JobRequest::Backup(params) => self.backup(job, params, progress),
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
                let opts = vault.restore_options(RestoreTarget {
                    target,
                    view_index_target,
                    config_target,
                    force,
                    discard_old,
                    owner: None,
                })?;
                let (hooks, couchdb) = if in_place {
                    let inst = self.instance(&tenant, &instance)?;
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
                    opts,
                    target_node: node_name,
                    rename_node,
                    hooks,
                    couchdb,
                };
                match vault.restore_backup(&tenant, &backup_id, &req, progress) {
                    Ok(outcome) => {
                        job.result = serde_json::to_value(&outcome).ok();
                        Ok(())
                    }
                    Err(e) => {
                        if let OpsError::PostCheck { checks, .. } = &e {
                            job.result = serde_json::to_value(checks).ok();
                        }
                        Err(e.into())
                    }
                }
            }
            JobRequest::Verify {
                backup_id,
                deep: true,
                ..
            } => {
                let report = vault.verify_deep(&tenant, &backup_id, progress)?;
                job.result = serde_json::to_value(&report).ok();
                match report.problems() {
                    0 => Ok(()),
                    n => Err(OpsError::Refused(format!(
                        "backup {backup_id}: {n} problem(s) in its database files (see the job's result)"
                    ))
                    .into()),
                }
            }
            JobRequest::Verify {
                backup_id, chain, ..
            } => {
                let report = vault.verify(&tenant, &backup_id, chain, progress)?;
                job.result = serde_json::to_value(&report).ok();
                Ok(())
            }
            JobRequest::Databases { backup_id } => {
                let report = vault.databases(&tenant, &backup_id, progress)?;
                job.result = serde_json::to_value(&report).ok();
                Ok(())
            }
            JobRequest::RestoreDatabase {
                backup_id,
                instance,
                database,
                target_name,
                include_deleted,
                to_url,
                couchdb_credentials,
            } => {
                let target = match to_url {
                    Some(url) => {
                        let creds = couchdb_credentials
                            .as_ref()
                            .and_then(|c| vault.config.couchdb.credentials.get(c));
                        crate::config::CouchDbConfig {
                            url: Some(url),
                            user: creds.and_then(|c| c.user.clone()),
                            password: creds.and_then(|c| c.password.clone()),
                            credentials: Default::default(),
                        }
                    }
                    None => self.instance(&tenant, &instance)?.couchdb(&vault.config),
                };
                let Some(couchdb) = vault.couch_client_for(Some(&target))? else {
                    return Err(OpsError::Refused(format!(
                        "instance '{instance}' has no couchdb_url to restore database '{database}' into"
                    ))
                    .into());
                };
                let req = crate::ops::databases::DbRestoreRequest {
                    database,
                    target_name,
                    couchdb,
                    include_deleted,
                };
                let report = vault.restore_database(&tenant, &backup_id, &req, progress)?;
                job.result = serde_json::to_value(&report).ok();
                match report.refused.len() {
                    0 => Ok(()),
                    n => Err(OpsError::Refused(format!(
                        "{n} revision(s) were refused by the target (see the job's result)"
                    ))
                    .into()),
                }
            }
            JobRequest::Delete {
                backup_id,
                with_dependents,
                ..
            } => {
                let deleted = vault.delete(&tenant, &backup_id, with_dependents)?;
                for d in &deleted {
                    self.index_remove(&tenant, &d.backup_id);
                }
                // A cluster backup's id deletes the whole.
                self.cluster_index_remove(&tenant, &backup_id);
                job.result = serde_json::to_value(&deleted).ok();
                Ok(())
            }
            JobRequest::Gc { grace } => {
                let report = vault.gc(grace.get(), false)?;
                job.result = serde_json::to_value(&report).ok();
                Ok(())
            }
            JobRequest::KeyRotate {
                barbican,
                rewrap_only,
            } => {
                let mut keyring = vault.keyring()?;
                let counted = |p: &RewrapProgress| {
                    progress.files_total.store(p.total, Ordering::Relaxed);
                    progress.files_done.store(p.done, Ordering::Relaxed);
                };
                let report = match rewrap_only {
                    true => vault.rewrap(&keyring, &tenant, &counted)?,
                    false => vault.rotate(&mut keyring, &tenant, barbican, &counted)?,
                };
                job.result = serde_json::to_value(&report).ok();
                match report.failed.first() {
                    None => Ok(()),
                    Some((id, why)) => Err(OpsError::Refused(format!(
                        "{} backup(s) are not wrapped with key {} (first: {id}: {why}); fix that, then rewrap again",
                        report.failed.len(),
                        report.key_id
                    ))
                    .into()),
                }
            }
        }
    }

    fn instance(&self, tenant: &str, name: &str) -> Result<instances::Instance, JobError> {
        Ok(instances::require(&self.db, tenant, name)?)
    }

    fn backup(&self, job: &mut Job, b: BackupParams, progress: &Progress) -> Result<(), JobError> {
        if b.cluster {
            return self.cluster_backup(job, &b, progress);
        }
        let vault = &*self.vault;
        let tenant = job.tenant.clone();
        // Paths come from the admin only; otherwise the registered instance, confined to
        // its directories.
        let (source, couchdb) = if b.source.is_empty() {
            let inst = self.instance(&tenant, &b.instance)?;
            (inst.source()?, Some(inst.couchdb(&vault.config)))
        } else {
            let source = Source::discover(&b.source).map_err(crate::Error::from);
            (source.map_err(OpsError::from)?, None)
        };
        let (protection, retention) = resolve_policies(&vault.state_dir, &tenant, &b.policies)?;
        let req = BackupRequest {
            backup_id: job
                .backup_id
                .as_deref()
                .and_then(|b| b.parse::<Ulid>().ok()),
            tenant: tenant.clone(),
            instance: b.instance.clone(),
            protection,
            retention,
            schedule: job.scheduled.as_ref().map(|s| s.schedule_name.clone()),
            compression_level: b.compression_level,
            tags: b.tags,
            allow_incomplete: b.allow_incomplete,
            couchdb,
            kind: b.backup_kind,
            prefix_check: b.prefix_check,
            cluster_member: None,
        };
        let outcome = vault.backup(&req, &source, progress)?;
        let meta = &outcome.meta;
        self.index_put(&IndexEntry::of(meta));
        let by_tenant = labels(&[("tenant", &tenant)]);
        self.metrics.add(
            "couchvault_backup_bytes_total",
            by_tenant.clone(),
            meta.totals.bytes as f64,
        );
        self.metrics.add(
            "couchvault_backup_stored_bytes_total",
            by_tenant,
            meta.data.size as f64,
        );
        self.metrics.set(
            "couchvault_last_success_timestamp_seconds",
            labels(&[("tenant", &tenant), ("instance", &b.instance)]),
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
        job.notes = outcome.notes;
        match outcome.retention {
            Some(Ok(verdicts)) => {
                for v in verdicts.iter().filter(|v| !v.keep) {
                    self.index_remove(&tenant, &v.id);
                }
                job.retention = verdicts;
                Ok(())
            }
            Some(Err(e)) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// A backup of the whole cluster: made as its protection policy says, queued for the
    /// coordinating daemon, waited for, then the retention policy over the instance's
    /// cluster backups.
    fn cluster_backup(
        &self,
        job: &mut Job,
        b: &BackupParams,
        progress: &Progress,
    ) -> Result<(), JobError> {
        let vault = &*self.vault;
        let tenant = job.tenant.clone();
        let (protection, retention) = resolve_policies(&vault.state_dir, &tenant, &b.policies)?;
        let ask = crate::ops::cluster::ClusterBackupAsk {
            tenant: tenant.clone(),
            instance: b.instance.clone(),
            protection,
            wait: true,
        };
        let queued = vault.request_cluster_backup(&ask, progress)?;
        job.backup_id = Some(queued.id);
        job.notes = queued.notes;
        if let Some(m) = &queued.manifest {
            if let Err(err) = self.db.cluster_put(&ClusterIndexEntry::of(m)) {
                tracing::warn!("backup index: {err} (the store stays the truth)");
            }
            job.result = serde_json::to_value(m).ok();
        }
        if let Some(name) = retention.or_else(|| vault.config.policy.retention.clone()) {
            job.retention = vault.cluster_retention(&tenant, &name, &b.instance, progress)?;
            for v in job.retention.iter().filter(|v| !v.keep) {
                self.cluster_index_remove(&tenant, &v.id);
            }
        }
        Ok(())
    }

    /// Takes a deleted cluster backup out of the index, and its members with it.
    fn cluster_index_remove(&self, tenant: &str, id: &str) {
        let removed = self.db.cluster_list(tenant).and_then(|all| {
            for e in all.iter().filter(|e| e.cluster.backup_id == id) {
                for m in &e.cluster.members {
                    self.db.index_remove(tenant, &m.backup_id)?;
                }
            }
            self.db.cluster_remove(tenant, id)
        });
        if let Err(err) = removed {
            tracing::warn!("backup index: {err} (the store stays the truth)");
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
            let committed = self.vault.show_backup(&job.tenant, id).ok();
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
                None => match self.vault.delete(&job.tenant, id, false) {
                    Ok(_) => error.push_str("; its partial upload was removed"),
                    Err(OpsError::Engine(crate::Error::NotFound { .. })) => {
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
