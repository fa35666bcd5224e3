//! The operator's configuration file (TOML, versioned) and the embedded defaults.
//!
//! Precedence: command-line flags, then the config file, then the embedded defaults, which
//! keep everything under `./couchvault-data/`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::duration::Span;

pub const CONFIG_FORMAT: u32 = 1;
pub const DEFAULT_DATA_DIR: &str = "couchvault-data";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path} does not exist")]
    Missing { path: PathBuf },
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Must be 1.
    pub couchvault_config: u32,
    /// Store URL, e.g. `file:///srv/couchvault`.
    pub store: Option<String>,
    /// Key ring file.
    pub keyring: Option<PathBuf>,
    /// Where couchvault keeps its own state (policies, compiled-policy cache).
    pub state_dir: Option<PathBuf>,
    #[serde(default)]
    pub backup: BackupConfig,
    #[serde(default)]
    pub restore: RestoreConfig,
    #[serde(default)]
    pub gc: GcConfig,
    #[serde(default)]
    pub swift: SwiftConfig,
    #[serde(default)]
    pub barbican: BarbicanConfig,
    #[serde(default)]
    pub policy: PolicyConfig,
    #[serde(default)]
    pub floors: crate::policy::floors::Floors,
    #[serde(default)]
    pub couchdb: CouchDbConfig,
    #[serde(default)]
    pub daemon: DaemonConfig,
    /// `[notify]`: webhooks and dead-man's-switch pings of jobs (daemon).
    #[serde(default)]
    pub notify: crate::daemon::notify::NotifyConfig,
    #[serde(default)]
    pub client: ClientConfig,
    /// `[cluster]`: this daemon's part in cluster backups (docs/CLUSTERS.md).
    #[serde(default)]
    pub cluster: ClusterConfig,
}

/// How to reach the CouchDB node over HTTP. Also from `COUCHDB_URL`, `COUCHDB_USER`,
/// `COUCHDB_PASSWORD`; values here win. Never on the command line.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CouchDbConfig {
    /// e.g. `http://127.0.0.1:5984`.
    pub url: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    /// Named credentials that registered instances refer to (`couchdb_credentials`), so
    /// that no secret is stored in the daemon's database: `[couchdb.credentials.NAME]`.
    pub credentials: std::collections::BTreeMap<String, CouchCredentials>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CouchCredentials {
    pub user: Option<String>,
    pub password: Option<String>,
}

/// `couchvault daemon`: where it listens and how it treats jobs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Address to listen on; loopback by default.
    pub listen: String,
    /// Schedule files applied at start (`*.toml`); none when unset. The embedded defaults
    /// use `./schedules` when it exists.
    pub schedules_dir: Option<PathBuf>,
    /// On SIGTERM, how long running jobs may take to finish before they are interrupted.
    pub shutdown_timeout: Span,
    /// Finished jobs kept per tenant and instance (older ones are forgotten).
    pub job_history: usize,
    /// Largest request body accepted (policy uploads are the big ones).
    pub max_body_bytes: usize,
    /// Restores requested with a tenant token go under `<tenant_restore_root>/<tenant>/`.
    /// Default `<state_dir>/restores`.
    pub tenant_restore_root: Option<PathBuf>,
    /// Instance files applied at start (`*.toml`); none when unset. The embedded defaults
    /// use `./instances` when it exists.
    pub instances_dir: Option<PathBuf>,
    /// Policy uploads and dry runs one tenant may have in progress at once; more get 429.
    pub tenant_policy_uploads: usize,
    /// Jobs one tenant may have running at once; more get 429.
    pub tenant_jobs: usize,
    /// Threads compiling and dry-running uploaded policies, for all tenants together.
    pub policy_workers: usize,
    /// How often the backup index is rebuilt from the store (it is also updated by every
    /// job): picks up backups made by the CLI or another daemon.
    pub reindex_interval: Span,
    /// An instance whose last successful backup is older is shown stale (red) on the
    /// dashboard and in `GET /v1/overview`.
    pub stale_after: Span,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            listen: "127.0.0.1:8765".into(),
            schedules_dir: None,
            shutdown_timeout: Span::secs(60),
            job_history: 50,
            stale_after: Span::secs(26 * 3600),
            max_body_bytes: 16 << 20,
            tenant_restore_root: None,
            instances_dir: None,
            tenant_policy_uploads: 2,
            tenant_jobs: 4,
            policy_workers: 2,
            reindex_interval: Span::secs(600),
        }
    }
}

/// The CLI talking to a daemon (`--server`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    /// Daemon URL, e.g. `http://127.0.0.1:8765`.
    pub server: Option<String>,
    /// File holding the bearer token (instead of `--token` / `COUCHVAULT_TOKEN`).
    pub token_file: Option<PathBuf>,
}

/// A daemon on one node of a CouchDB cluster (docs/CLUSTERS.md). Without `broker`, nothing
/// about clusters runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// NATS server with JetStream, e.g. `nats://127.0.0.1:4222`.
    pub broker: Option<String>,
    /// This node's CouchDB name as the shard maps name it (`couchdb@db1.example`).
    pub node: Option<String>,
    /// This node's CouchDB config directory (its ini files name the data dirs), or
    /// `data_dir` (and `view_index_dir`): member backups read the node's share there.
    pub couchdb_config: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub view_index_dir: Option<PathBuf>,
    /// Whether this daemon may coordinate cluster backups (one at a time leads).
    pub coordinate: bool,
    /// A daemon silent this long is gone: its ranges move to other replicas.
    pub node_ttl: Span,
    /// A coordinator silent this long loses the lead to another daemon.
    pub lease: Span,
    /// A node job unacknowledged this long (its agent died) is delivered again.
    pub ack_wait: Span,
    /// A cluster backup not committed this long after it began fails, committing nothing.
    pub deadline: Span,
}

impl ClusterConfig {
    pub fn source(&self) -> crate::couchdb::SourceSpec {
        crate::couchdb::SourceSpec {
            couchdb_config: self.couchdb_config.clone(),
            data_dir: self.data_dir.clone(),
            view_index_dir: self.view_index_dir.clone(),
        }
    }

    pub fn timings(&self) -> crate::cluster::broker::Timings {
        crate::cluster::broker::Timings {
            node_ttl: self.node_ttl.get(),
            lease: self.lease.get(),
            ack_wait: self.ack_wait.get(),
        }
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            broker: None,
            node: None,
            couchdb_config: None,
            data_dir: None,
            view_index_dir: None,
            coordinate: true,
            node_ttl: Span::secs(15),
            lease: Span::secs(15),
            ack_wait: Span::secs(60),
            deadline: Span::secs(6 * 3600),
        }
    }
}

/// Which uploaded policies a backup uses, and the sandbox's limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Name of the tenant's retention policy (see `couchvault policy add`); none keeps all.
    pub retention: Option<String>,
    /// Name of the tenant's protection policy; none uses the [backup] settings.
    pub protection: Option<String>,
    /// Fuel per evaluation.
    pub fuel: u64,
    /// Fuel added per backup in the policy's input.
    pub fuel_per_backup: u64,
    /// Wall-clock deadline per evaluation, in milliseconds.
    pub deadline_ms: u64,
    /// Deadline added per backup in the policy's input, in microseconds.
    pub deadline_per_backup_us: u64,
    /// Cap on a policy's memory, in MiB.
    pub memory_mib: usize,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        let l = crate::policy::Limits::default();
        PolicyConfig {
            retention: None,
            protection: None,
            fuel: l.fuel,
            fuel_per_backup: l.fuel_per_backup,
            deadline_ms: l.deadline.as_millis() as u64,
            deadline_per_backup_us: l.deadline_per_backup.as_micros() as u64,
            memory_mib: l.memory_bytes >> 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupConfig {
    /// zstd level, 1-19.
    pub compression_level: i32,
    /// Compression threads (each compresses 512 KiB frames of the tar stream); 0 means one per
    /// CPU core. Each costs about 3 MiB (docs/PERFORMANCE.md).
    pub zstd_workers: u32,
    /// Plaintext bytes per encrypted chunk (4 KiB - 16 MiB).
    pub chunk_size: u32,
    /// Bytes per stored segment.
    pub segment_size: u64,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            compression_level: 3,
            zstd_workers: 0,
            chunk_size: 1 << 20,
            segment_size: 32 << 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestoreConfig {
    /// `USER:GROUP` for restored files; empty means the default (couchdb:couchdb when
    /// running as root and that user exists, else unchanged).
    pub owner: Option<String>,
    /// Flush restored files to disk before swapping them into place.
    pub sync: bool,
    /// Run (with `sh -c`) just before the swap, e.g. `systemctl stop couchdb`.
    pub stop_command: Option<String>,
    /// Run after the swap, e.g. `systemctl start couchdb`; then the restore waits for
    /// CouchDB and checks every database (with a CouchDB URL configured).
    pub start_command: Option<String>,
    /// How long to wait for CouchDB to answer after the start command.
    pub start_timeout: Span,
}

impl Default for RestoreConfig {
    fn default() -> Self {
        RestoreConfig {
            owner: None,
            sync: true,
            stop_command: None,
            start_command: None,
            start_timeout: Span::secs(120),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GcConfig {
    /// Leftovers younger than this are kept: an upload may still be running. e.g. "24h".
    pub grace: Span,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            grace: Span::secs(24 * 3600),
        }
    }
}

/// Swift connection settings. Credentials may instead come from the environment:
/// `ST_AUTH`, `ST_USER`, `ST_KEY` (v1) or `OS_AUTH_URL`, `OS_USERNAME`, `OS_PASSWORD`,
/// `OS_PROJECT_NAME`, `OS_USER_DOMAIN_NAME`, `OS_PROJECT_DOMAIN_NAME`, `OS_REGION_NAME`,
/// `OS_INTERFACE` (Keystone v3). Values in this file win over the environment.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SwiftConfig {
    pub auth_url: Option<String>,
    /// 1 (tempauth) or 3 (Keystone); default 3 when the URL ends in /v3, else 1.
    pub auth_version: Option<u8>,
    pub user: Option<String>,
    pub key: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub project_name: Option<String>,
    pub user_domain_name: Option<String>,
    pub project_domain_name: Option<String>,
    pub region: Option<String>,
    pub interface: Option<String>,
    /// Segments uploading at once; memory is (this + 1) × backup.segment_size.
    pub segments_in_flight: usize,
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// Give up on a request after this long, e.g. "2m".
    pub max_retry_time: Span,
    /// Timeout of one request (streamed downloads excepted), e.g. "60s".
    pub request_timeout: Span,
}

impl Default for SwiftConfig {
    fn default() -> Self {
        SwiftConfig {
            auth_url: None,
            auth_version: None,
            user: None,
            key: None,
            username: None,
            password: None,
            project_name: None,
            user_domain_name: None,
            project_domain_name: None,
            region: None,
            interface: None,
            segments_in_flight: 2,
            max_attempts: 8,
            max_retry_time: Span::secs(120),
            request_timeout: Span::secs(60),
        }
    }
}

/// OpenStack Barbican, for key ring entries that name a Barbican secret instead of holding
/// key bytes. Each identity setting missing here is read from the environment
/// (`OS_AUTH_URL`, `OS_USERNAME`, `OS_PASSWORD`, `OS_PROJECT_NAME`, `OS_USER_DOMAIN_NAME`,
/// `OS_PROJECT_DOMAIN_NAME`, `OS_REGION_NAME`, `OS_INTERFACE`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BarbicanConfig {
    /// Keystone v3, e.g. `http://127.0.0.1:5000/v3`.
    pub auth_url: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub project_name: Option<String>,
    pub user_domain_name: Option<String>,
    pub project_domain_name: Option<String>,
    pub region: Option<String>,
    pub interface: Option<String>,
    /// Barbican's URL, e.g. `http://127.0.0.1:9311`; default: the catalog's key-manager.
    pub endpoint: Option<String>,
    /// Attempts per request when Barbican or Keystone does not answer, the first included.
    pub max_attempts: u32,
    /// Timeout of one request, e.g. "30s".
    pub request_timeout: Span,
}

impl Default for BarbicanConfig {
    fn default() -> Self {
        BarbicanConfig {
            auth_url: None,
            username: None,
            password: None,
            project_name: None,
            user_domain_name: None,
            project_domain_name: None,
            region: None,
            interface: None,
            endpoint: None,
            max_attempts: 3,
            request_timeout: Span::secs(30),
        }
    }
}

impl Config {
    /// The embedded defaults: local store and key ring under `./couchvault-data/`.
    pub fn embedded() -> Config {
        Config {
            couchvault_config: CONFIG_FORMAT,
            store: None,
            keyring: None,
            state_dir: None,
            backup: BackupConfig::default(),
            restore: RestoreConfig::default(),
            gc: GcConfig::default(),
            swift: SwiftConfig::default(),
            barbican: BarbicanConfig::default(),
            policy: PolicyConfig::default(),
            floors: crate::policy::floors::Floors::default(),
            couchdb: CouchDbConfig::default(),
            daemon: DaemonConfig::default(),
            notify: Default::default(),
            client: ClientConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ConfigError::Missing {
                    path: path.to_path_buf(),
                }
            } else {
                ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        let invalid = |reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let mut cfg: Config = toml::from_str(&text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start].matches('\n').count() + 1)
                .map(|l| format!("line {l}: "))
                .unwrap_or_default();
            invalid(format!("{line}{}", e.message()))
        })?;
        if cfg.couchvault_config != CONFIG_FORMAT {
            return Err(invalid(format!(
                "couchvault_config = {} is not supported (this couchvault reads {CONFIG_FORMAT})",
                cfg.couchvault_config
            )));
        }
        if !(1..=19).contains(&cfg.backup.compression_level) {
            return Err(invalid("backup.compression_level must be 1-19".into()));
        }
        if cfg.backup.zstd_workers > 64 {
            return Err(invalid(
                "backup.zstd_workers must be 0-64 (0: one per CPU core)".into(),
            ));
        }
        if !(crate::format::MIN_CHUNK..=crate::format::MAX_CHUNK).contains(&cfg.backup.chunk_size) {
            return Err(invalid("backup.chunk_size must be 4096-16777216".into()));
        }
        if cfg.backup.segment_size < 1 << 20 {
            return Err(invalid(
                "backup.segment_size must be at least 1048576".into(),
            ));
        }
        // Relative paths are relative to the config file.
        let base = path.parent().unwrap_or(Path::new("."));
        if cfg.daemon.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(format!(
                "daemon.listen '{}' is not an address such as 127.0.0.1:8765",
                cfg.daemon.listen
            )));
        }
        for p in [
            &mut cfg.keyring,
            &mut cfg.state_dir,
            &mut cfg.daemon.schedules_dir,
            &mut cfg.daemon.tenant_restore_root,
            &mut cfg.client.token_file,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if cfg.floors.compression_min > cfg.floors.compression_max {
            return Err(invalid(
                "floors.compression_min is above floors.compression_max".into(),
            ));
        }
        Ok(cfg)
    }
}

/// Parses a duration such as `90s`, `30m`, `24h`, `7d` or `1d12h` ([`crate::duration`]).
pub fn parse_duration(s: &str) -> Result<Duration, crate::duration::DurationError> {
    crate::duration::parse(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("90s").unwrap().as_secs(), 90);
        assert_eq!(parse_duration("1d12h").unwrap().as_secs(), 36 * 3600);
        for bad in ["", "12", "h", "3x", "-1h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_errors_name_the_problem() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.toml");
        std::fs::write(
            &p,
            "couchvault_config = 1\n[backup]\ncompresion_level = 3\n",
        )
        .unwrap();
        let e = Config::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("line 3") && e.contains("compresion_level"),
            "{e}"
        );
        std::fs::write(&p, "couchvault_config = 1\nkeyring = \"keys.toml\"\n").unwrap();
        assert_eq!(
            Config::load(&p).unwrap().keyring.unwrap(),
            d.path().join("keys.toml")
        );
    }
}
