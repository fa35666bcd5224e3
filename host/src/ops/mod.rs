//! Operations shared by the CLI's local mode and the daemon: one place that opens the
//! store and key ring from the config, asks the protection policy, takes the backup and
//! runs retention after it; the CouchDB-aware restore around the engine's (`restore`).

pub mod restore;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::Utc;
use nix::unistd::{Gid, Group, Uid, User};
use serde::Serialize;

use crate::catalog;
use crate::config::{self, Config, ConfigError, CouchDbConfig};
use crate::couchdb::http::{CouchClient, Password};
use crate::couchdb::Source;
use crate::engine::{self, backup::StreamSettings, BackupOptions, Progress};
use crate::format::BackupMetadata;
use crate::keyring::{KeyRing, KeyringError};
use crate::policy::floors::{self, ProtectionDecision, Verdict};
use crate::policy::{
    registry, BackupInfo, Policy, PolicyError, PolicyHost, ProtectionInput, RetentionInput,
};
use crate::store::{self, Store, StoreError};

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
    #[error("policy '{name}': {reason}")]
    Policy { name: String, reason: String },
    #[error("{0}")]
    Setup(String),
    #[error("{message}")]
    PostCheck {
        checks: Vec<restore::DbCheck>,
        message: String,
    },
}

pub type Result<T, E = OpsError> = std::result::Result<T, E>;

/// The config, the store and where the key ring and state live.
pub struct Vault {
    pub config: Config,
    /// couchvault's own state: policies, compiled-policy cache, the daemon's database.
    pub state_dir: PathBuf,
    pub store: Box<dyn Store>,
    keyring_path: PathBuf,
}

/// Where the embedded defaults keep everything: `./couchvault-data`, absolute.
pub fn default_data_dir() -> Result<PathBuf> {
    std::path::absolute(config::DEFAULT_DATA_DIR)
        .map_err(|e| OpsError::Setup(format!("resolving ./{}: {e}", config::DEFAULT_DATA_DIR)))
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
            config
                .swift
                .settings(base, prefix, config.backup.segment_size, &|var| {
                    std::env::var(var).ok().filter(|v| !v.is_empty())
                })
        })?;
        let keyring_path = match keyring.or_else(|| config.keyring.clone()) {
            Some(path) => {
                KeyRing::load(&path)?;
                path
            }
            None => open_default_keyring(&data_dir)?,
        };
        Ok(Vault {
            state_dir: config.state_dir.clone().unwrap_or(data_dir),
            config,
            store,
            keyring_path,
        })
    }

    /// The CouchDB HTTP client, when a URL is configured (`[couchdb] url` or `COUCHDB_URL`).
    pub fn couch_client(&self) -> Result<Option<CouchClient>> {
        self.couch_client_for(None)
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
        CouchClient::new(&url, user, password)
            .map(Some)
            .map_err(|e| OpsError::Setup(e.to_string()))
    }

    /// The key ring as it is on disk now (keys added with `key add` are seen at once).
    pub fn keyring(&self) -> Result<KeyRing> {
        Ok(KeyRing::load(&self.keyring_path)?)
    }

    pub fn policy_host(&self) -> Result<PolicyHost> {
        Ok(PolicyHost::new(
            &self.state_dir.join("policy-cache"),
            self.config.policy.limits(),
        )?)
    }

    /// Loads one of the tenant's registered policies, with its parameters.
    pub fn registered(
        &self,
        host: &PolicyHost,
        tenant: &str,
        name: &str,
    ) -> Result<(Policy, String)> {
        let (entry, wasm) =
            registry::load(&self.state_dir, tenant, name).map_err(|reason| OpsError::Policy {
                name: name.to_string(),
                reason,
            })?;
        Ok((host.load(name, &wasm)?, entry.params))
    }

    /// Asks the tenant's protection policy how to make a backup, then applies the floors.
    pub fn protection(
        &self,
        host: &PolicyHost,
        keyring: &KeyRing,
        name: &str,
        req: &BackupRequest,
        source_size: u64,
    ) -> Result<ProtectionDecision> {
        let tenant = req.tenant.as_str();
        let (policy, params) = self.registered(host, tenant, name)?;
        let answer = host.protect(
            &policy,
            &ProtectionInput {
                now: Utc::now().timestamp(),
                tenant: tenant.to_string(),
                instance: req.instance.clone(),
                schedule: req.schedule.clone(),
                source_size,
                params,
            },
        )?;
        floors::protection(&self.config.floors, answer, |k| {
            keyring.get(tenant, k).is_ok()
        })
        .map_err(|reason| OpsError::Policy {
            name: name.to_string(),
            reason: reason.to_string(),
        })
    }

    /// Runs the tenant's retention policy over an instance's committed backups, applies the
    /// floors, and deletes what neither keeps. Returns every verdict.
    pub fn retention(
        &self,
        host: &PolicyHost,
        keyring: &KeyRing,
        tenant: &str,
        name: &str,
        instance: &str,
    ) -> Result<Vec<Verdict>> {
        let (policy, params) = self.registered(host, tenant, name)?;
        let mut metas: Vec<BackupMetadata> =
            catalog::list(&*self.store, keyring, tenant, Some(instance))?
                .into_iter()
                .filter_map(|l| l.metadata)
                .collect();
        metas.sort_by(|a, b| {
            b.started_at
                .cmp(&a.started_at)
                .then(b.backup_id.cmp(&a.backup_id))
        });
        let backups: Vec<BackupInfo> = metas.iter().map(info_of).collect();
        let now = Utc::now().timestamp();
        let keeps = host.retain(
            &policy,
            &RetentionInput {
                now,
                tenant: tenant.to_string(),
                instance: instance.to_string(),
                params,
                backups: backups.clone(),
            },
        )?;
        let verdicts =
            floors::retention(&self.config.floors, now, &backups, &keeps).map_err(|reason| {
                OpsError::Policy {
                    name: name.to_string(),
                    reason: reason.to_string(),
                }
            })?;
        for v in verdicts.iter().filter(|v| !v.keep) {
            catalog::delete(&*self.store, tenant, &v.id)?;
            tracing::info!(backup = %v.id, reason = %v.reason, "retention deleted a backup");
        }
        Ok(verdicts)
    }

    /// Protection policy, backup, commit, then retention: the whole of `backup create`.
    pub fn backup(
        &self,
        req: &BackupRequest,
        source: &Source,
        progress: &Progress,
    ) -> Result<BackupOutcome> {
        let keyring = self.keyring()?;
        let cfg = &self.config.backup;
        let mut stream = StreamSettings {
            compression_level: cfg.compression_level,
            zstd_workers: match cfg.zstd_workers {
                0 => StreamSettings::default().zstd_workers,
                n => n,
            },
            chunk_size: cfg.chunk_size,
        };
        let mut tags = BTreeMap::new();
        let mut key_id = None;
        let mut notes = Vec::new();
        let protection = req
            .protection
            .as_ref()
            .or(self.config.policy.protection.as_ref());
        let retention = req
            .retention
            .as_ref()
            .or(self.config.policy.retention.as_ref());
        let host = match (protection, retention) {
            (None, None) => None,
            _ => {
                let mut host = self.policy_host()?;
                host.cancel_on(progress.cancel_flag());
                Some(host)
            }
        };
        let mut policy_time = std::time::Duration::ZERO;
        // The protection policy decides level, key and tags before anything is read.
        if let (Some(name), Some(host)) = (protection, &host) {
            let t0 = std::time::Instant::now();
            let size = crate::couchdb::total_size(&source.plan().map_err(crate::Error::from)?);
            let decision = self
                .protection(host, &keyring, name, req, size)
                .map_err(|e| {
                    OpsError::Setup(format!(
                        "backup not started: the protection policy '{name}' failed: {e}"
                    ))
                })?;
            notes.extend(
                decision
                    .overrides
                    .iter()
                    .map(|o| format!("protection policy '{name}': {o}")),
            );
            stream.compression_level = decision.compression_level;
            key_id = decision.key_id;
            // A policy's tags are kept only when a tenant could have set them itself.
            for (k, v) in decision.tags {
                match crate::names::validate_tags([(&k, &v)]) {
                    Ok(()) => {
                        tags.insert(k, v);
                    }
                    Err(why) => {
                        notes.push(format!("protection policy '{name}': tag dropped: {why}"))
                    }
                }
            }
            policy_time += t0.elapsed();
        }
        if let Some(level) = req.compression_level {
            stream.compression_level = level;
        }
        crate::names::validate_tags(&req.tags).map_err(OpsError::Setup)?;
        tags.extend(req.tags.clone());
        // The host's own tags last: retention trusts them.
        if let Some(name) = protection {
            tags.insert("protection-policy".into(), name.clone());
        }
        if let Some(s) = &req.schedule {
            tags.insert("schedule".into(), s.clone());
        }
        // Live stats from CouchDB at the start; an unreachable CouchDB is noted, not fatal.
        let live = self.couch_client_for(req.couchdb.as_ref())?.map(|c| {
            let info = c.live_info(source.node_name.as_deref());
            if let Some(e) = &info.error {
                notes.push(format!(
                    "CouchDB did not answer ({e}); backing up the files without live stats"
                ));
            }
            info
        });
        let opts = BackupOptions {
            id: req.backup_id,
            allow_incomplete: req.allow_incomplete,
            live,
            tenant: req.tenant.clone(),
            instance: req.instance.clone(),
            key_id,
            tags,
            stream,
        };
        let meta = engine::backup(&*self.store, &keyring, source, &opts, progress)?;
        // The retention policy runs after every successful backup.
        let t0 = std::time::Instant::now();
        let retention = match (retention, &host) {
            (Some(name), Some(host)) => Some(
                self.retention(host, &keyring, &req.tenant, name, &req.instance)
                    .map_err(|e| {
                        format!(
                            "backup {} committed, but retention policy '{name}' failed: {e}; nothing was deleted by it",
                            meta.backup_id
                        )
                    }),
            ),
            _ => None,
        };
        policy_time += t0.elapsed();
        Ok(BackupOutcome {
            meta,
            notes,
            retention,
            policy_time,
        })
    }
}

/// The made-up situation a policy dry run puts a policy in.
pub struct Situation<'a> {
    pub tenant: &'a str,
    pub now: i64,
    pub backups: Vec<BackupInfo>,
    pub params: &'a str,
    pub instance: &'a str,
    pub source_size: u64,
}

#[derive(Debug, Serialize)]
pub struct DryRunReport {
    pub policy: String,
    pub kinds: String,
    pub sha256: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention: Option<Vec<Verdict>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protection: Option<ProtectionDecision>,
}

/// Sample input for validating a new policy: three backups a day apart.
pub fn sample_backups(now: i64) -> Vec<BackupInfo> {
    (0..3)
        .map(|i| BackupInfo {
            id: format!("01SAMPLE{i:018}"),
            created_at: now - i * 86_400,
            size: 1 << 20,
            kind: "full".into(),
            tags: vec![],
            schedule: None,
        })
        .collect()
}

impl Vault {
    /// Runs a policy on made-up input, floors applied, deleting nothing.
    pub fn dry_run(
        &self,
        host: &PolicyHost,
        keyring: &KeyRing,
        policy: &Policy,
        sit: Situation<'_>,
    ) -> Result<DryRunReport> {
        let failed = |reason: String| OpsError::Policy {
            name: policy.name.clone(),
            reason,
        };
        let retention = if policy.has_retention() {
            let keeps = host.retain(
                policy,
                &RetentionInput {
                    now: sit.now,
                    tenant: sit.tenant.to_string(),
                    instance: sit.instance.to_string(),
                    params: sit.params.to_string(),
                    backups: sit.backups.clone(),
                },
            )?;
            Some(
                floors::retention(&self.config.floors, sit.now, &sit.backups, &keeps)
                    .map_err(|e| failed(e.to_string()))?,
            )
        } else {
            None
        };
        let protection = if policy.has_protection() {
            let answer = host.protect(
                policy,
                &ProtectionInput {
                    now: sit.now,
                    tenant: sit.tenant.to_string(),
                    instance: sit.instance.to_string(),
                    schedule: None,
                    source_size: sit.source_size,
                    params: sit.params.to_string(),
                },
            )?;
            Some(
                floors::protection(&self.config.floors, answer, |k| {
                    keyring.get(sit.tenant, k).is_ok()
                })
                .map_err(|e| failed(e.to_string()))?,
            )
        } else {
            None
        };
        Ok(DryRunReport {
            policy: policy.name.clone(),
            kinds: policy.kinds(),
            sha256: policy.sha256.clone(),
            retention,
            protection,
        })
    }

    /// Validates a component (right world, compiles, a dry run on sample input) and adds
    /// it to the tenant's policies.
    pub fn add_policy(
        &self,
        tenant: &str,
        name: &str,
        wasm: &[u8],
        params: &str,
    ) -> Result<registry::Entry> {
        crate::names::validate_name("policy", name).map_err(crate::Error::from)?;
        let host = self.policy_host()?;
        let policy = host.load(name, wasm)?;
        let now = Utc::now().timestamp();
        self.dry_run(
            &host,
            &self.keyring()?,
            &policy,
            Situation {
                tenant,
                now,
                backups: sample_backups(now),
                params,
                instance: "sample",
                source_size: 1 << 30,
            },
        )
        .map_err(|e| OpsError::Policy {
            name: name.to_string(),
            reason: format!("the dry run on sample input failed ({e}); the policy was not added"),
        })?;
        let entry = registry::Entry {
            couchvault_policy: registry::REGISTRY_FORMAT,
            name: name.to_string(),
            tenant: tenant.to_string(),
            sha256: policy.sha256.clone(),
            kinds: policy.kinds(),
            params: params.to_string(),
            added: Utc::now(),
        };
        registry::save(&self.state_dir, &entry, wasm).map_err(OpsError::Setup)?;
        Ok(entry)
    }
}

/// What to back up and which policies to use (None: the config's `[policy]`).
#[derive(Debug, Clone, Default)]
pub struct BackupRequest {
    /// None for a fresh id.
    pub backup_id: Option<ulid::Ulid>,
    pub tenant: String,
    pub instance: String,
    pub protection: Option<String>,
    pub retention: Option<String>,
    /// The schedule's name, for scheduled backups (recorded as tag `schedule`).
    pub schedule: Option<String>,
    pub compression_level: Option<i32>,
    pub tags: BTreeMap<String, String>,
    /// See `BackupOptions::allow_incomplete`.
    pub allow_incomplete: bool,
    /// A registered instance's CouchDB; None: the config's (and the environment's).
    pub couchdb: Option<CouchDbConfig>,
}

#[derive(Debug, Serialize)]
pub struct BackupOutcome {
    pub meta: BackupMetadata,
    /// Floors the protection policy's answer was held to.
    pub notes: Vec<String>,
    /// The retention verdicts, or why retention failed (the backup is committed either way).
    pub retention: Option<std::result::Result<Vec<Verdict>, String>>,
    /// Time spent in policies (protection and retention, floors included).
    #[serde(skip)]
    pub policy_time: std::time::Duration,
}

pub fn info_of(m: &BackupMetadata) -> BackupInfo {
    BackupInfo {
        id: m.backup_id.clone(),
        created_at: m.started_at.timestamp(),
        size: m.data.size,
        kind: m.kind.clone(),
        tags: m.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        schedule: m.tags.get("schedule").cloned(),
    }
}

/// Splits a schedule's policy names into (protection, retention) by what each implements.
pub fn resolve_policies(
    state_dir: &Path,
    tenant: &str,
    names: &[String],
) -> std::result::Result<(Option<String>, Option<String>), String> {
    let (mut protection, mut retention) = (None, None);
    for name in names {
        let (entry, _) = registry::load(state_dir, tenant, name)?;
        for (kind, slot) in [
            ("protection", &mut protection),
            ("retention", &mut retention),
        ] {
            if entry.kinds.contains(kind) {
                if let Some(other) = slot.replace(name.clone()) {
                    return Err(format!(
                        "policies '{other}' and '{name}' are both {kind} policies; give one"
                    ));
                }
            }
        }
    }
    Ok((protection, retention))
}

/// The embedded default key ring, created on first use with one key for tenant `default`.
fn open_default_keyring(data_dir: &Path) -> Result<PathBuf> {
    let path = data_dir.join("keyring.toml");
    match KeyRing::load(&path) {
        Err(KeyringError::Missing { .. }) => {
            std::fs::create_dir_all(data_dir)
                .map_err(|e| OpsError::Setup(format!("creating {}: {e}", data_dir.display())))?;
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
    let bad = |m: String| OpsError::Setup(m);
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
