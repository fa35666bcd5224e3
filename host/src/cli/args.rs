//! Command-line arguments (clap derive).

use couchvault::format::{Kind, PrefixCheck};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use couchvault::couchdb::SourceSpec;

#[derive(Debug, Parser)]
#[command(
    name = "couchvault",
    version,
    about = "Hot, encrypted, streaming backup and restore for Apache CouchDB",
    after_help = "With no --config, couchvault runs on its embedded defaults: a local store and a key ring under ./couchvault-data/."
)]
pub struct Cli {
    /// Config file (TOML); see README.md for its keys.
    #[arg(long, global = true, env = "COUCHVAULT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Store URL, e.g. file:///srv/couchvault (overrides the config file).
    #[arg(long, global = true, env = "COUCHVAULT_STORE", value_name = "URL")]
    pub store: Option<String>,
    /// Key ring file (mode 0600) (overrides the config file).
    #[arg(long, global = true, env = "COUCHVAULT_KEYRING", value_name = "FILE")]
    pub keyring: Option<PathBuf>,
    /// Tenant whose backups, keys, schedules and policies to use (default: `default`, or a
    /// tenant token's own tenant).
    #[arg(long, global = true, value_parser = parse_tenant)]
    pub tenant: Option<String>,
    /// Talk to a couchvault daemon at this URL instead of working locally (schedule, job
    /// and token commands always do; default from [client] server or daemon.listen).
    #[arg(long, global = true, env = "COUCHVAULT_SERVER", value_name = "URL")]
    pub server: Option<String>,
    /// Bearer token for the daemon (or COUCHVAULT_TOKEN, [client] token_file, or the
    /// daemon's ./couchvault-data/admin.token on the embedded defaults).
    #[arg(
        long,
        global = true,
        env = "COUCHVAULT_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Print stable JSON instead of tables and sentences.
    #[arg(long, global = true)]
    pub json: bool,
    /// More logging (-v info, -vv debug); RUST_LOG also works.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, list, show, verify and delete backups.
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Restore a backup into a directory (staged, verified, then swapped in).
    Restore(RestoreArgs),
    /// Remove leftovers of uncommitted backups older than the grace period.
    Gc(GcArgs),
    /// Manage the key ring.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Test, add, list and remove the tenant's policies (WebAssembly components).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Run the scheduler daemon and its HTTP API.
    Daemon(DaemonArgs),
    /// Register the CouchDB instances that tenants back up, on a daemon (admin).
    #[command(subcommand)]
    Instance(InstanceCommand),
    /// Manage recurring backups on a daemon.
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// Follow, list and cancel a daemon's jobs.
    #[command(subcommand)]
    Job(JobCommand),
    /// Create, restore, list, verify and delete backups of whole CouchDB clusters
    /// (docs/CLUSTERS.md; needs [cluster] broker for `backup` and `status`).
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Create, list and revoke a daemon's API tokens (admin).
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Ask the coordinating daemon for a backup of the cluster and wait for it to commit.
    Backup {
        /// The cluster instance's name (its backups are filed under it).
        #[arg(long)]
        instance: String,
        /// Return once the request is queued; print the backup id.
        #[arg(long)]
        no_wait: bool,
        /// After it commits, the tenant's retention policy decides over the instance's
        /// cluster backups (default policy.retention); not with --no-wait.
        #[arg(long, value_name = "POLICY", conflicts_with = "no_wait")]
        retention: Option<String>,
        /// The tenant's protection policy, asked once for the whole backup: the level, key
        /// and tags of every member (default policy.protection).
        #[arg(long, value_name = "POLICY")]
        protection: Option<String>,
    },
    /// The committed cluster backups, each with its member backups.
    List {
        #[arg(long)]
        instance: Option<String>,
    },
    /// Verify every member backup of a cluster backup (reads everything, writes nothing).
    Verify {
        #[arg(long)]
        instance: String,
        id: String,
    },
    /// Delete a cluster backup and its member backups.
    Delete {
        #[arg(long)]
        instance: String,
        id: String,
    },
    /// Restore a cluster backup into a new cluster of any size and node names, through
    /// its CouchDB URL ([couchdb] url or COUCHDB_URL) and its nodes' directories here.
    Restore(ClusterRestoreArgs),
    /// The daemons registered with the broker and the coordinator.
    Status,
}

#[derive(Debug, Args)]
pub struct ClusterRestoreArgs {
    /// The cluster backup's id.
    pub id: String,
    #[arg(long)]
    pub instance: String,
    /// A node of the new cluster and its database directory; once per node, every node.
    #[arg(
        long = "node",
        value_name = "NAME=DIR",
        required_unless_present = "via_daemons"
    )]
    pub nodes: Vec<String>,
    /// Each node's files placed by the new cluster's own daemons, through [cluster] broker
    /// (one registered for every node of the new cluster's /_membership), instead of from
    /// here: for nodes whose directories this machine does not reach.
    #[arg(long, conflicts_with_all = ["nodes", "one_node", "owner", "staging"])]
    pub via_daemons: bool,
    /// Restore only the one node given, of the cluster the backup was taken of (its disk
    /// lost, the others alive): every range the backup's maps place on it, between the stop
    /// and start hooks (restore.stop_command / start_command); CouchDB then syncs it.
    #[arg(long)]
    pub one_node: bool,
    /// Copies of each shard range (default: the new cluster's [cluster] n).
    #[arg(long)]
    pub n: Option<usize>,
    /// Delete databases of the backup that the new cluster already has, with documents.
    #[arg(long)]
    pub replace: bool,
    /// USER:GROUP of the placed files (default: restore.owner, else each directory's owner).
    #[arg(long)]
    pub owner: Option<String>,
    /// Where member backups are unpacked and verified first (default: beside the first
    /// node's directory).
    #[arg(long, value_name = "DIR")]
    pub staging: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Apply the schedule files in this directory at start (default: daemon.schedules_dir,
    /// or ./schedules on the embedded defaults when it exists).
    #[arg(long, value_name = "DIR")]
    pub schedules: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum InstanceCommand {
    /// Register (or re-register) an instance of --tenant: where its data is, how to reach
    /// its CouchDB, its restore hooks. Its backups may read only inside the directories
    /// its source resolves to now.
    Add(Box<InstanceAddArgs>),
    /// List instances (a tenant token: its own).
    List,
    /// Show one instance with the directories its backups are confined to.
    Show { name: String },
    /// Unregister an instance (its backups stay); refused while a schedule names it.
    Rm { name: String },
    /// Register every instance in DIR/*.toml (one bad entry registers nothing).
    Apply { dir: PathBuf },
}

#[derive(Debug, Args)]
pub struct InstanceAddArgs {
    #[arg(long, value_parser = parse_instance)]
    pub name: String,
    #[command(flatten)]
    pub source: SourceSpec,
    /// The node's CouchDB, e.g. http://127.0.0.1:5984 (no credentials in it).
    #[arg(long, value_name = "URL")]
    pub couchdb_url: Option<String>,
    /// Names [couchdb.credentials.NAME] in the daemon's config.
    #[arg(long, value_name = "NAME")]
    pub couchdb_credentials: Option<String>,
    /// Run (sh -c) before an in-place restore swaps the data in, e.g. `systemctl stop couchdb`.
    #[arg(long, value_name = "CMD")]
    pub stop_command: Option<String>,
    /// Run after an in-place restore, e.g. `systemctl start couchdb`.
    #[arg(long, value_name = "CMD")]
    pub start_command: Option<String>,
    /// Let the tenant restore into the instance itself (with its hooks).
    #[arg(long)]
    pub restore_in_place: bool,
}

#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Add a schedule; it first runs at the next matching time, never at once.
    Add(Box<ScheduleAddArgs>),
    /// List schedules with their next run.
    List,
    /// Show one schedule with its recent runs.
    Show { id: String },
    /// Remove a schedule (its backups stay).
    Rm { id: String },
    /// Pause a schedule.
    Pause { id: String },
    /// Resume a schedule; runs missed while paused are not caught up.
    Resume { id: String },
    /// Create or update the schedules in DIR/*.toml (matched by tenant and name).
    Apply { dir: PathBuf },
}

#[derive(Debug, Args)]
pub struct ScheduleAddArgs {
    /// The CouchDB instance to back up.
    #[arg(long, value_parser = parse_instance)]
    pub instance: String,
    /// Schedule name, unique per tenant (default: the instance name).
    #[arg(long, value_parser = parse_instance)]
    pub name: Option<String>,
    #[command(flatten)]
    pub source: SourceSpec,
    /// 5-field cron expression or @hourly/@daily/@weekly/@monthly/@yearly.
    #[arg(long)]
    pub cron: String,
    /// IANA time zone the cron expression is read in.
    #[arg(long, default_value = "UTC")]
    pub tz: String,
    /// A policy of the tenant's (retention or protection); repeatable.
    #[arg(long = "policy", value_name = "NAME")]
    pub policies: Vec<String>,
    #[arg(long = "tag", value_name = "K=V", value_parser = parse_tag)]
    pub tags: Vec<(String, String)>,
    /// Spread runs by up to this much (e.g. 5m).
    #[arg(long, default_value = "0")]
    pub jitter: String,
    /// A run not started within this long of its time is missed.
    #[arg(long, default_value = "1h")]
    pub starting_deadline: String,
    /// Create it paused.
    #[arg(long)]
    pub paused: bool,
    /// Back up the whole CouchDB cluster (admin; no paths): each run queues a cluster
    /// backup for the coordinating daemon (docs/CLUSTERS.md).
    #[arg(long)]
    pub cluster: bool,
    #[command(flatten)]
    pub kind: KindArgs,
}

/// Full, incremental or differential; none given: the protection policy decides, else full.
#[derive(Debug, Args, Default)]
pub struct KindArgs {
    /// A full backup (every file whole), whatever the protection policy says.
    #[arg(long, conflicts_with_all = ["incremental", "differential"])]
    pub full: bool,
    /// Store only what changed since the instance's newest backup.
    #[arg(long, conflicts_with = "differential")]
    pub incremental: bool,
    /// Store only what changed since the instance's newest full backup.
    #[arg(long)]
    pub differential: bool,
    /// Check unchanged prefixes by identity, size and last blocks only, without reading
    /// them (see docs/FORMAT.md for what this cannot see); default: read and hash them.
    #[arg(long)]
    pub fast: bool,
}

impl KindArgs {
    pub fn kind(&self) -> Option<Kind> {
        match (self.full, self.incremental, self.differential) {
            (true, _, _) => Some(Kind::Full),
            (_, true, _) => Some(Kind::Incremental),
            (_, _, true) => Some(Kind::Differential),
            _ => None,
        }
    }

    pub fn prefix_check(&self) -> Option<PrefixCheck> {
        self.fast.then_some(PrefixCheck::Fast)
    }
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// List jobs (newest first).
    List {
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        kind: Option<String>,
    },
    /// Show one job.
    Show { id: String },
    /// Follow a job with a progress bar until it ends; exits 1 unless it succeeded.
    Watch { id: String },
    /// Ask a running job to stop.
    Cancel { id: String },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token for --tenant (or, with --admin, another admin token); printed once.
    Create {
        #[arg(long)]
        admin: bool,
        #[arg(long, default_value = "")]
        label: String,
    },
    /// List tokens (ids and tenants, never secrets).
    List,
    /// Revoke a token by id.
    Rm { id: String },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Write a starter policy project (Rust, JavaScript or Python) for this couchvault's WIT.
    New {
        /// The policy's name (also its project's and component's name).
        #[arg(value_parser = parse_instance)]
        name: String,
        #[arg(long, value_enum)]
        lang: PolicyLang,
        /// Which functions it exports: retention (`retain`), protection (`protect`) or both.
        #[arg(long, value_enum, default_value = "both")]
        world: PolicyWorld,
        /// Where to write it (must not exist or be empty); default ./NAME.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Dry-run a policy component: keep/delete with reasons, and its protection answer.
    Test {
        /// The component (.wasm).
        file: PathBuf,
        /// JSON array of backups: [{"id": "...", "created_at": "RFC 3339", "size": N, "tags": {..}}].
        #[arg(long, value_name = "FILE")]
        backups: Option<PathBuf>,
        /// The time the policy is told it is (RFC 3339); default now.
        #[arg(long, value_name = "TIME")]
        now: Option<String>,
        /// Parameters passed to the policy (JSON).
        #[arg(long, default_value = "")]
        params: String,
        #[arg(long, default_value = "instance", value_parser = parse_instance)]
        instance: String,
        /// Source size in bytes given to the protection policy.
        #[arg(long, default_value_t = 0)]
        source_size: u64,
    },
    /// Validate a component and add it to the tenant's policies under NAME.
    Add {
        #[arg(value_parser = parse_instance)]
        name: String,
        file: PathBuf,
        /// Parameters passed to the policy on every evaluation (JSON).
        #[arg(long, default_value = "")]
        params: String,
    },
    /// List the tenant's policies.
    List,
    /// Remove one of the tenant's policies.
    Rm {
        #[arg(value_parser = parse_instance)]
        name: String,
    },
}

/// A starter policy's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyLang {
    Rust,
    #[value(alias = "javascript")]
    Js,
    #[value(alias = "py")]
    Python,
}

/// A starter policy's world of wit/policy.wit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyWorld {
    Retention,
    Protection,
    Both,
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Take a hot backup of a CouchDB node: full, incremental or differential.
    Create(CreateArgs),
    /// List committed backups.
    List {
        #[arg(long, value_parser = parse_instance)]
        instance: Option<String>,
    },
    /// Show one backup's metadata.
    Show { id: String },
    /// Check a backup end to end without writing anything.
    Verify {
        id: String,
        /// Also every backup it depends on, each file rebuilt and checked whole.
        #[arg(long)]
        chain: bool,
        /// Also open every database file at its last header, walk its trees and read
        /// every document body and attachment (implies --chain).
        #[arg(long)]
        deep: bool,
    },
    /// The databases in a backup, with shards, document counts and sizes, read from its
    /// files (no restore, no CouchDB).
    Databases { id: String },
    /// Delete a backup (metadata first, then data).
    Delete {
        id: String,
        /// Also delete the incremental and differential backups that depend on it (a
        /// backup others depend on is otherwise refused).
        #[arg(long)]
        with_dependents: bool,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Name of the CouchDB instance (part of the backup's path in the store).
    #[arg(long, value_parser = parse_instance)]
    pub instance: String,
    #[command(flatten)]
    pub source: SourceSpec,
    /// A tag recorded with the backup; repeatable.
    #[arg(long = "tag", value_name = "K=V", value_parser = parse_tag)]
    pub tags: Vec<(String, String)>,
    /// zstd level 1-19 (overrides the config file and the protection policy).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=19))]
    pub compression_level: Option<i32>,
    /// The tenant's protection policy to ask first (overrides policy.protection).
    #[arg(long, value_name = "NAME")]
    pub protection: Option<String>,
    /// The tenant's retention policy to run after the backup (overrides policy.retention).
    #[arg(long, value_name = "NAME")]
    pub retention: Option<String>,
    /// Back up even when the shard map names shard files the data dir lacks (or the map is
    /// missing); the gaps are recorded in the backup.
    #[arg(long)]
    pub allow_incomplete: bool,
    /// With --server: return once the daemon has accepted the job, without waiting.
    #[arg(long)]
    pub detach: bool,
    #[command(flatten)]
    pub kind: KindArgs,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup id (see `backup list`).
    #[arg(required_unless_present = "rollback")]
    pub id: Option<String>,
    /// Directory to restore the database files into (with a tenant token: a directory name
    /// under the tenant's restore root).
    #[arg(long, value_name = "DIR", required_unless_present_any = ["in_place", "database"])]
    pub to: Option<PathBuf>,
    /// Restore one database only, pushed into the running CouchDB at --to-url (with
    /// --server and no --to-url: the backup's registered instance's CouchDB): every leaf
    /// revision with its history, conflicts, attachments, design documents, _security.
    #[arg(long, value_name = "NAME")]
    pub database: Option<String>,
    /// The CouchDB that --database goes into, e.g. http://127.0.0.1:5984 (credentials from
    /// COUCHDB_USER and COUCHDB_PASSWORD or [couchdb], never in this URL).
    #[arg(long, value_name = "URL", requires = "database", conflicts_with_all = ["to", "in_place", "view_index_to", "config_to", "force", "rollback", "rename_node"])]
    pub to_url: Option<String>,
    /// With --database: the name it gets in the target (default: its own).
    #[arg(long = "as", value_name = "NEWNAME", requires = "database")]
    pub as_name: Option<String>,
    /// With --database: also the tombstones of deleted documents.
    #[arg(long, requires = "database")]
    pub include_deleted: bool,
    /// With --server: restore into the registered instance itself (its directories, its
    /// hooks); a tenant needs the instance's restore_in_place.
    #[arg(long, conflicts_with_all = ["to", "view_index_to", "config_to", "rollback"])]
    pub in_place: bool,
    /// Directory for view indexes when they were kept apart (default: under --to).
    #[arg(long, value_name = "DIR")]
    pub view_index_to: Option<PathBuf>,
    /// Also restore the CouchDB config files (ini, vm.args) into this directory.
    #[arg(long, value_name = "DIR")]
    pub config_to: Option<PathBuf>,
    /// Replace a non-empty target; its old contents are moved aside first.
    #[arg(long)]
    pub force: bool,
    /// With --force, delete the old contents once the new data is in place.
    #[arg(long, requires = "force")]
    pub discard_old: bool,
    /// Owner of the restored files, USER:GROUP (default couchdb:couchdb when root).
    #[arg(long, value_name = "USER:GROUP")]
    pub owner: Option<String>,
    /// The node name the restored CouchDB runs as; a backup from another node is refused
    /// unless --rename-node.
    #[arg(long, value_name = "NAME", conflicts_with = "couchdb_config")]
    pub node_name: Option<String>,
    /// The target CouchDB's config directory: its vm.args names the target node.
    #[arg(long, value_name = "DIR")]
    pub couchdb_config: Option<PathBuf>,
    /// Rewrite every database's shard map for the target node name after CouchDB starts
    /// (needs [couchdb] url or COUCHDB_URL).
    #[arg(long)]
    pub rename_node: bool,
    /// Undo the last restore into --to: put the previous data back (kept aside by --force).
    #[arg(long, conflicts_with_all = ["force", "discard_old", "rename_node", "detach"])]
    pub rollback: bool,
    /// With --server: return once the daemon has accepted the job, without waiting.
    #[arg(long)]
    pub detach: bool,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Keep leftovers younger than this (e.g. 30m, 24h; 0 for none).
    #[arg(long)]
    pub grace: Option<couchvault::duration::Span>,
    /// Report what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Add a new random key for the tenant; it encrypts the tenant's new backups. Creates
    /// the key ring (mode 0600) when --keyring names one that does not exist yet.
    Add(KeyWhere),
    /// List keys (ids only, never key material) and how many backups each wraps.
    List,
    /// A new active key for the tenant, then every backup of the tenant rewrapped with it
    /// (metadata only: no data object is read or written).
    Rotate(KeyWhere),
    /// Rewrap every backup of the tenant with its active key (resumes a cut-off rotation).
    Rewrap,
    /// Remove a key from the ring: refused while a backup needs it or it is the active key.
    Retire { id: String },
}

#[derive(Debug, Args)]
pub struct KeyWhere {
    /// Hold the new key in OpenStack Barbican (a new secret in the [barbican] identity's
    /// project); the key ring records only the secret's UUID.
    #[arg(long)]
    pub barbican: bool,
}

fn parse_tag(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("'{s}' is not K=V")),
    }
}

fn parse_tenant(s: &str) -> Result<String, String> {
    couchvault::names::validate_name("tenant", s)
        .map(|()| s.to_string())
        .map_err(|e| e.to_string())
}

fn parse_instance(s: &str) -> Result<String, String> {
    couchvault::names::validate_name("instance", s)
        .map(|()| s.to_string())
        .map_err(|e| e.to_string())
}
