//! `backup create`: the protection policy decides how, the engine takes the backup and
//! commits it, the retention policy runs after it.

use std::collections::BTreeMap;

use chrono::Utc;

use super::{OpsError, Result, Vault};
use crate::catalog;
use crate::config::CouchDbConfig;
use crate::couchdb::Source;
use crate::engine::{self, backup::StreamSettings, BackupOptions, Progress};
use crate::format::BackupMetadata;
use crate::keyring::KeyRing;
use crate::policy::floors::{self, ProtectionDecision, Verdict};
use crate::policy::{BackupInfo, PolicyHost, ProtectionInput, RetentionInput};

impl Vault {
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
                .map_err(|e| OpsError::Protection {
                    name: name.clone(),
                    source: Box::new(e),
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
        crate::names::validate_tags(&req.tags).map_err(crate::Error::from)?;
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
                    .map_err(|e| OpsError::Retention {
                        backup_id: meta.backup_id.clone(),
                        name: name.clone(),
                        source: Box::new(e),
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

#[derive(Debug)]
pub struct BackupOutcome {
    pub meta: BackupMetadata,
    /// Floors the protection policy's answer was held to.
    pub notes: Vec<String>,
    /// The retention verdicts, or why retention failed (the backup is committed either way).
    pub retention: Option<Result<Vec<Verdict>>>,
    /// Time spent in policies (protection and retention, floors included).
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
