//! The HTTP API's wire types (docs/API.md, `/v1/openapi.json`): every request body and
//! answer, used by the daemon's handlers and by the CLI's client alike, so that what one
//! sends the other reads by type, and local and remote output are printed by the same code.
//! Job records are also what the daemon keeps in sled (`couchvault_job`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::couchdb::SourceSpec;
use crate::duration::Span;
use crate::format::{BackupMetadata, Kind, PrefixCheck};
use crate::policy::floors::Verdict;
use crate::strict::NoOtherFields;

pub const API_VERSION: &str = "v1";

/// Every error answer: `{"error": "..."}`, with the HTTP status saying which kind.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

/// `GET /healthz`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
    pub version: String,
    pub api: String,
    pub store: String,
    pub schedules: usize,
    pub jobs_running: usize,
}

/// A committed backup as listed and summarised (`backup list`, `backup create --json`,
/// the daemon's backup index): the same shape locally and from a daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BackupSummary {
    pub backup_id: String,
    pub tenant: String,
    pub instance: String,
    pub kind: Kind,
    /// The backup it is stored against (incremental and differential).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub files: u64,
    pub bytes: u64,
    pub stored_bytes: u64,
    /// e.g. `zstd-3`.
    pub compression: String,
    pub key_id: String,
    #[serde(default)]
    pub node_name: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

impl BackupSummary {
    pub fn of(m: &BackupMetadata) -> BackupSummary {
        BackupSummary {
            backup_id: m.backup_id.clone(),
            tenant: m.tenant.clone(),
            instance: m.instance.clone(),
            kind: m.kind,
            parent: m.parent.as_ref().map(|p| p.backup_id.clone()),
            started_at: m.started_at,
            finished_at: m.finished_at,
            files: m.totals.files,
            bytes: m.totals.bytes,
            stored_bytes: m.data.size,
            compression: format!("{}-{}", m.compression.algorithm, m.compression.level),
            key_id: m.encryption.key_id.clone(),
            node_name: m.source.node_name.clone(),
            tags: m.tags.clone(),
        }
    }
}

/// One row of `GET /v1/backups` and `backup list`: a backup whose metadata loaded (`ok`,
/// with its summary) or one that did not: `invalid` (damaged) or `no_key` (its key cannot
/// be had now, e.g. Barbican is down), with why.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BackupRow {
    pub backup_id: String,
    pub instance: String,
    pub status: RowStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<BackupSummary>,
    /// A cluster backup: its members, which the listing names here and not as rows of their
    /// own (docs/CLUSTERS.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterSummary>,
}

/// A committed cluster backup as listed: the whole, restored with `cluster restore`, and
/// its member backups (each a node-level backup of the shard ranges planned on that node).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClusterSummary {
    pub backup_id: String,
    pub tenant: String,
    pub instance: String,
    pub started_at: DateTime<Utc>,
    /// When its manifest was written: the commit.
    pub committed_at: DateTime<Utc>,
    pub databases: usize,
    /// The databases' sizes (CouchDB's file sizes) when it started.
    pub bytes: u64,
    pub stored_bytes: u64,
    pub key_id: String,
    pub members: Vec<ClusterMemberSummary>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClusterMemberSummary {
    pub backup_id: String,
    /// The CouchDB node it was taken on.
    pub node: String,
    /// The instance it is filed under (`<cluster instance>--<node>`).
    pub instance: String,
    pub shard_files: usize,
    pub stored_bytes: u64,
}

impl ClusterSummary {
    pub fn of(m: &crate::cluster::manifest::ClusterManifest) -> ClusterSummary {
        let at = |secs| DateTime::from_timestamp(secs, 0).unwrap_or_default();
        ClusterSummary {
            backup_id: m.backup_id.clone(),
            tenant: m.tenant.clone(),
            instance: m.instance.clone(),
            started_at: at(m.started_at),
            committed_at: at(m.committed_at),
            databases: m.databases.len(),
            bytes: m.databases.values().map(|d| d.detail.size).sum(),
            stored_bytes: m.members.iter().map(|x| x.stored_bytes).sum(),
            key_id: m.key_id.clone(),
            members: m
                .members
                .iter()
                .map(|x| ClusterMemberSummary {
                    backup_id: x.backup_id.clone(),
                    node: x.node.clone(),
                    instance: x.member_instance.clone(),
                    shard_files: x.shards.len(),
                    stored_bytes: x.stored_bytes,
                })
                .collect(),
        }
    }
}

impl BackupRow {
    pub fn of_cluster(c: ClusterSummary) -> BackupRow {
        BackupRow {
            backup_id: c.backup_id.clone(),
            instance: c.instance.clone(),
            status: RowStatus::Ok,
            error: None,
            summary: None,
            cluster: Some(c),
        }
    }

    /// A listing: `rows` (node-level backups, oldest first) with `clusters` as rows of their
    /// own; a member a listed cluster backup names is shown within it, not again.
    pub fn listing(rows: Vec<BackupRow>, clusters: Vec<ClusterSummary>) -> Vec<BackupRow> {
        let named: std::collections::BTreeSet<String> = clusters
            .iter()
            .flat_map(|c| c.members.iter().map(|m| m.backup_id.clone()))
            .collect();
        let mut out: Vec<BackupRow> = rows
            .into_iter()
            .filter(|r| !named.contains(&r.backup_id))
            .chain(clusters.into_iter().map(BackupRow::of_cluster))
            .collect();
        out.sort_by(|a, b| a.backup_id.cmp(&b.backup_id));
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RowStatus {
    Ok,
    Invalid,
    NoKey,
}

/// A backup made: its summary and the retention verdicts after it (`backup create --json`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BackupCreated {
    #[serde(flatten)]
    pub summary: BackupSummary,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Vec<Verdict>>,
}

/// `POST /v1/restores`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreParams {
    pub backup_id: String,
    /// Absolute for the admin; for a tenant, a directory name under its restore root.
    /// Not with `in_place`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub target: Option<PathBuf>,
    /// The instance being restored (default: the backup's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Into the registered instance's own directories, with its hooks (a tenant needs the
    /// instance's `restore_in_place`).
    #[serde(default)]
    pub in_place: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub view_index_target: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub config_target: Option<PathBuf>,
    #[serde(default)]
    pub force: bool,
    #[serde(default)]
    pub discard_old: bool,
    /// The node name the restored CouchDB runs as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default)]
    pub rename_node: bool,
}

/// `POST /v1/restores/database`: one database pushed into a running CouchDB.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DbRestoreParams {
    pub backup_id: String,
    pub database: String,
    /// Its name in the target (default: its own).
    #[serde(default, rename = "as", skip_serializing_if = "Option::is_none")]
    pub as_name: Option<String>,
    #[serde(default)]
    pub include_deleted: bool,
    /// Admin only: the target CouchDB (default: the backup's instance's). No credentials
    /// in it: name `[couchdb.credentials.NAME]` with `couchdb_credentials`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub couchdb_credentials: Option<String>,
}

/// `POST /v1/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenParams {
    /// None creates another admin token.
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub label: String,
}

/// A stored API token as listed: only the SHA-256 of the secret is kept.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    /// Short public id, for listing and revoking.
    pub id: String,
    /// None for an admin token.
    pub tenant: Option<String>,
    pub label: String,
    pub created_at: DateTime<Utc>,
}

/// The answer to `POST /v1/tokens`: the secret, shown only this once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenCreated {
    pub token: String,
    #[serde(flatten)]
    pub info: TokenInfo,
}

/// `POST /v1/gc`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GcParams {
    /// Default: `gc.grace`.
    #[serde(default)]
    pub grace: Option<Span>,
}

/// `POST /v1/keys/rotate?tenant=T`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyRotateParams {
    /// Hold the new key in OpenStack Barbican.
    #[serde(default)]
    pub barbican: bool,
    /// No new key: rewrap what is not yet wrapped with the active key (resumes a rotation
    /// that was cut off).
    #[serde(default)]
    pub rewrap_only: bool,
}

/// `POST /v1/reindex`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Reindexed {
    pub indexed: usize,
}

/// `POST /v1/policies/{name}/dry-run`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DryRunParams {
    /// Default: the instance's real backups when `instance` is given, else a sample.
    #[serde(default)]
    pub backups: Option<Vec<DryRunBackup>>,
    #[serde(default)]
    pub instance: Option<String>,
    #[serde(default)]
    pub now: Option<DateTime<Utc>>,
    #[serde(default)]
    pub source_size: Option<u64>,
}

/// A made-up backup for a dry run or `policy test`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DryRunBackup {
    pub id: String,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub size: u64,
    #[serde(default = "full")]
    pub kind: String,
    #[serde(default)]
    pub parent: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub schedule: Option<String>,
}

fn full() -> String {
    "full".into()
}

impl DryRunBackup {
    pub fn info(self) -> crate::policy::BackupInfo {
        crate::policy::BackupInfo {
            id: self.id,
            created_at: self.created_at.timestamp(),
            size: self.size,
            kind: self.kind,
            parent: self.parent,
            schedule: self.schedule.or_else(|| self.tags.get("schedule").cloned()),
            tags: self.tags.into_iter().collect(),
        }
    }
}

/// `POST /v1/schedules/apply`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleApply {
    pub schedules: Vec<crate::scheduler::ScheduleSpec>,
}

pub const INSTANCE_FORMAT: u32 = 1;

/// What the admin gives to register an instance (API body, `instance add`, a file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceSpec {
    pub name: String,
    /// The owning tenant; `default` when not given.
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// The source, as for `backup create`: one of couchdb_config and data_dir.
    #[serde(flatten)]
    pub source: SourceSpec,
    /// The node's CouchDB URL (live stats at backup, checks after an in-place restore).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub couchdb_url: Option<String>,
    /// Names `[couchdb.credentials.NAME]` in the daemon's config: the secret stays there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub couchdb_credentials: Option<String>,
    /// Run (with `sh -c`) before an in-place restore swaps the data in, and after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_command: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_command: Option<String>,
    /// The tenant may restore into the instance itself (in place, with its hooks).
    /// Otherwise its restores go under its restore root only.
    #[serde(default)]
    pub restore_in_place: bool,
    #[serde(flatten, skip_serializing_if = "NoOtherFields::skip")]
    pub other: NoOtherFields,
}

fn default_tenant() -> String {
    "default".into()
}

/// A registered instance (sled, format versioned by `couchvault_instance`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Instance {
    pub couchvault_instance: u32,
    #[serde(flatten)]
    pub spec: InstanceSpec,
    /// The canonical directories its source resolved to when registered: the only ones
    /// its backups may read.
    #[schema(value_type = Vec<String>)]
    pub roots: Vec<PathBuf>,
    /// Where its databases and (when separate) view indexes are: in-place restores go there.
    #[schema(value_type = String)]
    pub database_dir: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub view_index_dir_resolved: Option<PathBuf>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What applying instance files did.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceApplyReport {
    pub registered: Vec<String>,
    pub unchanged: Vec<String>,
}

/// `POST /v1/instances/apply`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceApply {
    pub instances: Vec<InstanceSpec>,
}

/// `GET /v1/whoami`: what the token is.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    pub admin: bool,
    /// The tenant of a tenant token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// `POST /v1/schedules/preview`: a cron expression to explain.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CronPreviewParams {
    pub cron: String,
    /// IANA time zone; UTC when absent.
    #[serde(default)]
    pub tz: Option<String>,
}

/// The expression in words and its next runs.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CronPreview {
    pub cron: String,
    pub tz: String,
    /// e.g. "At 02:30 every day (Europe/Berlin)".
    pub description: String,
    /// The next five runs.
    pub next_runs: Vec<DateTime<Utc>>,
    /// The same runs in the time zone (RFC 3339 with its offset).
    pub next_runs_local: Vec<String>,
}

/// `GET /v1/overview`: each instance at a glance.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Overview {
    pub now: DateTime<Utc>,
    /// `daemon.stale_after` in seconds.
    pub stale_after_secs: u64,
    pub instances: Vec<InstanceOverview>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InstanceOverview {
    pub tenant: String,
    pub instance: String,
    /// Registered with the daemon (else only its backups or schedules name it).
    pub registered: bool,
    pub backups: u64,
    /// Bytes its backups take in the store.
    pub stored_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup_id: Option<String>,
    /// No successful backup within `daemon.stale_after`.
    pub stale: bool,
    /// The earliest next run of its active schedules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run_schedule: Option<String>,
    /// Jobs of the instance that failed in the last 7 days.
    pub failures_7d: u64,
    /// Ids of its running jobs.
    pub running: Vec<String>,
    /// Its backups, oldest first (at most the last 60): the charts' points.
    pub history: Vec<HistoryPoint>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HistoryPoint {
    pub backup_id: String,
    pub kind: crate::format::Kind,
    pub finished_at: DateTime<Utc>,
    pub bytes: u64,
    pub stored_bytes: u64,
    pub duration_secs: f64,
}

/// `GET /v1/schedules/{id}`: the schedule and when it runs next.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ScheduleShown {
    #[serde(flatten)]
    pub schedule: crate::scheduler::Schedule,
    #[serde(default)]
    pub next_run: Option<DateTime<Utc>>,
}

pub const JOB_FORMAT: u32 = 1;
/// The tenant the admin's own jobs (gc) are recorded under.
pub const ADMIN_TENANT: &str = "_admin";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
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

/// A backup's parameters: the body of `POST /v1/backups`, and a backup job's request.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct BackupParams {
    pub instance: String,
    /// Paths (admin only); none names a registered instance.
    #[serde(flatten)]
    pub source: SourceSpec,
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
    /// Full, incremental or differential (overrides the protection policy); none: the
    /// policy's answer, else full. (Not `kind`: a job request's `kind` says what the job is.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_kind: Option<Kind>,
    /// How an incremental checks unchanged prefixes (exact or fast).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_check: Option<PrefixCheck>,
    /// A backup of the whole CouchDB cluster (admin only, no paths): queued for the
    /// coordinating daemon over `[cluster] broker`; the retention policy decides over the
    /// instance's cluster backups (docs/CLUSTERS.md).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cluster: bool,
    #[serde(flatten, skip_serializing_if = "NoOtherFields::skip")]
    pub other: NoOtherFields,
}

/// What a job does, with its parameters.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobRequest {
    Backup(BackupParams),
    Restore {
        backup_id: String,
        /// The instance being restored (locks it against its backups); default the backup's.
        instance: String,
        #[schema(value_type = String)]
        target: PathBuf,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(value_type = Option<String>)]
        view_index_target: Option<PathBuf>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(value_type = Option<String>)]
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
        /// Also every backup it depends on, each file rebuilt and checked whole.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        chain: bool,
        /// Also every database file read whole (result: the databases report).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        deep: bool,
    },
    /// The databases in a backup, from its files' headers.
    Databases {
        backup_id: String,
    },
    /// One database pushed into a running CouchDB: `to_url` (admin), else the registered
    /// instance's CouchDB.
    RestoreDatabase {
        backup_id: String,
        /// The backup's instance (holds no lock: the node's files are not touched).
        instance: String,
        database: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target_name: Option<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        include_deleted: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to_url: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        couchdb_credentials: Option<String>,
    },
    Delete {
        backup_id: String,
        /// Also the backups that depend on it (else refused while any does).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        with_dependents: bool,
        /// The backup's instance, held while the delete runs: an incremental of it must not
        /// lose its parent half-way.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        instance: Option<String>,
    },
    Gc {
        grace: Span,
    },
    /// A new active key for the job's tenant, then each of its backups rewrapped with it.
    KeyRotate {
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        barbican: bool,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        rewrap_only: bool,
    },
}

impl JobRequest {
    pub fn kind(&self) -> &'static str {
        match self {
            JobRequest::Backup(_) => "backup",
            JobRequest::Restore { .. } => "restore",
            JobRequest::Verify { .. } => "verify",
            JobRequest::Databases { .. } => "databases",
            JobRequest::RestoreDatabase { .. } => "restore_database",
            JobRequest::Delete { .. } => "delete",
            JobRequest::Gc { .. } => "gc",
            JobRequest::KeyRotate { .. } => "key_rotate",
        }
    }

    /// The instance this job holds exclusively, if any.
    pub fn instance(&self) -> Option<&str> {
        match self {
            JobRequest::Backup(BackupParams { instance, .. })
            | JobRequest::Restore { instance, .. } => Some(instance),
            JobRequest::Delete { instance, .. } => instance.as_deref(),
            _ => None,
        }
    }
}

/// Which schedule run started a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ScheduledRun {
    pub schedule_id: String,
    pub schedule_name: String,
    pub scheduled_for: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ProgressSnapshot {
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub files_done: u64,
    pub files_total: u64,
    /// Bytes per second since the job started.
    pub rate: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
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
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}
