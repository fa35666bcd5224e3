//! The service layer: every use case of couchvault, in one place, over the config, the
//! store and the key ring. The CLI's local mode and the daemon's jobs and handlers are thin
//! adapters over [`Vault`]; nothing else reaches the catalog or the engine.
//!
//! - `backup`: protection policy, backup, commit, retention (`backup create`).
//! - `backups`: list, show, verify, delete, gc.
//! - `restore`: the CouchDB-aware restore around the engine's, and its rollback.
//! - `cluster`: restoring a cluster backup into a new cluster.
//! - `policies`: registering, listing and dry-running tenants' policies.

pub mod backup;
pub mod backups;
pub mod cluster;
pub mod databases;
pub mod keys;
pub mod policies;
pub mod restore;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use nix::unistd::{Gid, Group, Uid, User};

use crate::config::{self, Config, ConfigError, CouchDbConfig};
use crate::couchdb::http::{CouchClient, CouchError, Password};
use crate::keyring::barbican::Barbican;
use crate::keyring::{KeyRing, KeyringError};
use crate::policy::registry::RegistryError;
use crate::policy::{Limits, PolicyEngine, PolicyError, PolicyHost};
use crate::store::swift::SwiftSettings;
use crate::store::{self, Store, StoreError};

pub use backup::{BackupOutcome, BackupRequest};
pub use backups::{Deleted, GcReport, VerifyReport};
pub use restore::RestoreReport;
// What callers watch and cancel a use case through.
pub use crate::engine::{set_checkpoint_observer, Progress};
pub use policies::{resolve_policies, sample_backups, DryRunReport, Situation};

/// What can go wrong in a use case. Each variant keeps its cause typed; the edges (CLI,
/// API) turn them into text and, for the API, a status (`kind`).
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error(transparent)]
    Engine(#[from] crate::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    PolicyHost(#[from] PolicyError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Couch(#[from] CouchError),
    #[error(transparent)]
    Hook(#[from] restore::HookError),
    #[error(transparent)]
    Broker(#[from] crate::cluster::broker::BrokerError),
    /// A policy answered, but against the floors or the tenant's keys.
    #[error("policy '{name}': {reason}")]
    Policy { name: String, reason: String },
    /// The protection policy failed, so no backup was started.
    #[error("backup not started: the protection policy '{name}' failed: {source}")]
    Protection {
        name: String,
        #[source]
        source: Box<OpsError>,
    },
    /// The backup is committed; its retention failed and deleted nothing.
    #[error("backup {backup_id} committed, but retention policy '{name}' failed: {source}; nothing was deleted by it")]
    Retention {
        backup_id: String,
        name: String,
        #[source]
        source: Box<OpsError>,
    },
    /// The request cannot be done as asked; the message says what to change.
    #[error("{0}")]
    Refused(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    /// A restore swapped the data in and then failed; the message says how to roll back.
    #[error("{0}")]
    AfterSwap(String),
    #[error("{message}")]
    PostCheck {
        checks: Vec<restore::DbCheck>,
        message: String,
    },
}

/// What an error means to a caller, for the API's status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The backup, policy or instance named does not exist (for this tenant).
    NotFound,
    /// The request is wrong; asking again the same way fails the same way.
    Invalid,
    /// Something on the server's side failed (store, disk, CouchDB, a hook).
    Failed,
}

impl OpsError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> OpsError {
        OpsError::Io {
            context: context.into(),
            source,
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            OpsError::Engine(crate::Error::NotFound { .. })
            | OpsError::Registry(RegistryError::NotFound { .. }) => ErrorKind::NotFound,
            OpsError::Engine(crate::Error::Name(_) | crate::Error::TargetNotEmpty { .. })
            | OpsError::Policy { .. }
            | OpsError::Refused(_) => ErrorKind::Invalid,
            // A tenant's policy that fails is the tenant's to fix; the cache is ours.
            OpsError::PolicyHost(e) if !matches!(e, PolicyError::Cache { .. }) => {
                ErrorKind::Invalid
            }
            OpsError::Protection { source, .. } => source.kind(),
            _ => ErrorKind::Failed,
        }
    }
}

pub type Result<T, E = OpsError> = std::result::Result<T, E>;

/// The config, the store and where the key ring and state live.
pub struct Vault {
    pub config: Config,
    /// couchvault's own state: policies, compiled-policy cache, the daemon's database.
    pub state_dir: PathBuf,
    pub store: Box<dyn Store>,
    keyring_path: PathBuf,
    /// Fetches the keys held in Barbican; its token is shared by every job.
    barbican: Arc<Barbican>,
    /// One wasmtime engine per process, made on first use.
    policy_engine: OnceLock<PolicyEngine>,
}

/// Where the embedded defaults keep everything: `./couchvault-data`, absolute.
pub fn default_data_dir() -> Result<PathBuf> {
    std::path::absolute(config::DEFAULT_DATA_DIR)
        .map_err(|e| OpsError::io(format!("resolving ./{}", config::DEFAULT_DATA_DIR), e))
}

impl Vault {
    /// Opens the store and checks the key ring; on the embedded defaults, first use creates
    /// the key ring (with one key for tenant `default`) and says so on stderr.
    pub fn open(
        config: Config,
        store_url: Option<String>,
        keyring: Option<PathBuf>,
    ) -> Result<Vault> {
        let data_dir = default_data_dir()?;
        let store_url = store_url
            .or_else(|| config.store.clone())
            .unwrap_or_else(|| format!("file://{}", data_dir.join("store").display()));
        let store = store::open(&store_url, config.backup.segment_size, |base, prefix| {
            SwiftSettings::from_config(
                &config.swift,
                base,
                prefix,
                config.backup.segment_size,
                &|var| std::env::var(var).ok().filter(|v| !v.is_empty()),
            )
        })?;
        let keyring_path = match keyring.or_else(|| config.keyring.clone()) {
            Some(path) => {
                KeyRing::load(&path)?;
                path
            }
            None => open_default_keyring(&data_dir)?,
        };
        let barbican = Arc::new(Barbican::from_config(&config.barbican, &|var| {
            std::env::var(var).ok().filter(|v| !v.is_empty())
        }));
        Ok(Vault {
            state_dir: config.state_dir.clone().unwrap_or(data_dir),
            config,
            store,
            keyring_path,
            barbican,
            policy_engine: OnceLock::new(),
        })
    }

    /// The client for `settings` alone (a registered instance's), else the config's and
    /// the environment's.
    pub fn couch_client_for(
        &self,
        settings: Option<&CouchDbConfig>,
    ) -> Result<Option<CouchClient>> {
        let env = |k: &str| match settings {
            Some(_) => None,
            None => std::env::var(k).ok().filter(|v| !v.is_empty()),
        };
        let c = settings.unwrap_or(&self.config.couchdb);
        let Some(url) = c.url.clone().or_else(|| env("COUCHDB_URL")) else {
            return Ok(None);
        };
        let user = c.user.clone().or_else(|| env("COUCHDB_USER"));
        let password = c
            .password
            .clone()
            .or_else(|| env("COUCHDB_PASSWORD"))
            .map(Password);
        Ok(Some(CouchClient::new(&url, user, password)?))
    }

    /// The key ring as it is on disk now (keys added with `key add` are seen at once).
    pub fn keyring(&self) -> Result<KeyRing> {
        let ring = KeyRing::load(&self.keyring_path)?.with_barbican(self.barbican.clone());
        crate::engine::checkpoint("key-ring-loaded");
        Ok(ring)
    }

    /// A policy host for one job or request, on the process's one engine.
    pub fn policy_host(&self) -> Result<PolicyHost> {
        let engine = match self.policy_engine.get() {
            Some(e) => e,
            None => {
                let made = PolicyEngine::new(
                    &self.state_dir.join("policy-cache"),
                    policy_limits(&self.config.policy),
                )?;
                // Two threads may race here; both engines work, one is kept.
                self.policy_engine.get_or_init(|| made)
            }
        };
        Ok(engine.host()?)
    }
}

/// The sandbox's limits that the config's `[policy]` section sets.
fn policy_limits(c: &config::PolicyConfig) -> Limits {
    Limits {
        fuel: c.fuel,
        fuel_per_backup: c.fuel_per_backup,
        deadline: std::time::Duration::from_millis(c.deadline_ms.max(1)),
        deadline_per_backup: std::time::Duration::from_micros(c.deadline_per_backup_us),
        memory_bytes: c.memory_mib << 20,
        ..Limits::default()
    }
}

/// The embedded default key ring, created on first use with one key for tenant `default`.
fn open_default_keyring(data_dir: &Path) -> Result<PathBuf> {
    let path = data_dir.join("keyring.toml");
    match KeyRing::load(&path) {
        Err(KeyringError::Missing { .. }) => {
            std::fs::create_dir_all(data_dir)
                .map_err(|e| OpsError::io(format!("creating {}", data_dir.display()), e))?;
            KeyRing::create(&path, "default")?;
            eprintln!(
                "couchvault: first use: created {} with a local store and a new key ring at {}.\n\
                 couchvault: keep a copy of the key ring somewhere safe: losing it loses every backup made with it.",
                data_dir.display(),
                path.display()
            );
            Ok(path)
        }
        other => other.map(|_| path).map_err(Into::into),
    }
}

/// The owner for restored files: `USER:GROUP` by name or number; by default, when running
/// as root, the owner of the existing target directory, else couchdb:couchdb when that user
/// exists (otherwise ownership is left as it is).
pub fn restore_owner(spec: Option<&str>, target: &Path) -> Result<Option<(Uid, Gid)>> {
    let Some(spec) = spec else {
        if Uid::effective().is_root() {
            if let Ok(m) = std::fs::metadata(target) {
                use std::os::unix::fs::MetadataExt;
                return Ok(Some((Uid::from_raw(m.uid()), Gid::from_raw(m.gid()))));
            }
        }
        return Ok(default_owner());
    };
    let bad = |m: String| OpsError::Refused(m);
    let Some((u, g)) = spec.split_once(':') else {
        return Err(bad(format!("owner '{spec}' is not USER:GROUP")));
    };
    let uid = match u.parse::<u32>() {
        Ok(n) => Uid::from_raw(n),
        Err(_) => {
            User::from_name(u)
                .ok()
                .flatten()
                .ok_or_else(|| bad(format!("no user '{u}' on this machine")))?
                .uid
        }
    };
    let gid = match g.parse::<u32>() {
        Ok(n) => Gid::from_raw(n),
        Err(_) => {
            Group::from_name(g)
                .ok()
                .flatten()
                .ok_or_else(|| bad(format!("no group '{g}' on this machine")))?
                .gid
        }
    };
    Ok(Some((uid, gid)))
}

fn default_owner() -> Option<(Uid, Gid)> {
    if !Uid::effective().is_root() {
        return None;
    }
    let user = User::from_name("couchdb").ok().flatten()?;
    let gid = Group::from_name("couchdb")
        .ok()
        .flatten()
        .map_or(user.gid, |g| g.gid);
    Some((user.uid, gid))
}
