//! `backup create`: the protection policy decides how (full, incremental or differential),
//! the host picks the parent and holds the chain to its floors, the engine takes the backup
//! and commits it, the retention policy runs after it.

use std::collections::BTreeMap;

use chrono::Utc;

use super::{OpsError, Result, Vault};
use crate::catalog;
use crate::cluster::job::{CLUSTER_INSTANCE_TAG, MEMBER_OF_TAG};
use crate::config::CouchDbConfig;
use crate::couchdb::Source;
use crate::engine::{self, backup::Base, backup::StreamSettings, BackupOptions, Progress};
use crate::format::{BackupMetadata, Kind, PrefixCheck};
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
        chain: &[BackupMetadata],
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
                chain: chain.iter().rev().map(info_of).collect(),
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
        let verdicts = self.decide_retention(host, tenant, name, instance, backups)?;
        for v in verdicts.iter().filter(|v| !v.keep) {
            catalog::delete(&*self.store, tenant, &v.id)?;
            tracing::info!(backup = %v.id, reason = %v.reason, "retention deleted a backup");
        }
        Ok(verdicts)
    }

    /// The retention policy's answer over `backups` (newest first), held to the floors.
    pub fn decide_retention(
        &self,
        host: &PolicyHost,
        tenant: &str,
        name: &str,
        instance: &str,
        backups: Vec<BackupInfo>,
    ) -> Result<Vec<Verdict>> {
        let (policy, params) = self.registered(host, tenant, name)?;
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
        // A member is made as the cluster backup's protection decision says.
        let member = req.cluster_member.as_ref().map(|m| &m.settings);
        let mut key_id = member.and_then(|m| m.key_id.clone());
        if let Some(level) = member.and_then(|m| m.compression_level) {
            stream.compression_level = level;
        }
        tags.extend(member.map(|m| m.tags.clone()).unwrap_or_default());
        let mut notes = Vec::new();
        let (config_protection, config_retention) = match req.cluster_member {
            Some(_) => (None, None),
            None => (
                self.config.policy.protection.as_ref(),
                self.config.policy.retention.as_ref(),
            ),
        };
        let protection = req.protection.as_ref().or(config_protection);
        let retention = req.retention.as_ref().or(config_retention);
        let host = match (protection, retention) {
            (None, None) => None,
            _ => {
                let mut host = self.policy_host()?;
                host.cancel_on(progress.cancel_flag());
                Some(host)
            }
        };
        let mut policy_time = std::time::Duration::ZERO;
        // The instance's newest backup and its chain: the parent an incremental would have
        // (read only when a policy or the request may want one).
        let newest = match protection.is_some() || req.kind.is_some_and(|k| k != Kind::Full) {
            true => self.newest_chain(&keyring, &req.tenant, &req.instance),
            false => Newest {
                chain: Vec::new(),
                newest_mac: String::new(),
                problem: Some("no incremental was asked for".into()),
            },
        };
        let mut kind = req.kind.unwrap_or_default();
        let mut check = req.prefix_check.unwrap_or_default();
        // The protection policy decides level, key, tags and kind before anything is read.
        if let (Some(name), Some(host)) = (protection, &host) {
            let t0 = std::time::Instant::now();
            let size = crate::couchdb::total_size(&source.plan().map_err(crate::Error::from)?);
            let decision = self
                .protection(host, &keyring, name, req, size, &newest.chain)
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
            // An explicit kind in the request wins, as an explicit level does.
            kind = req.kind.unwrap_or(decision.kind);
            check = req.prefix_check.unwrap_or(decision.prefix_check);
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
        if let Some(m) = &req.cluster_member {
            tags.insert(MEMBER_OF_TAG.into(), m.cluster_backup.clone());
            tags.insert(CLUSTER_INSTANCE_TAG.into(), m.cluster_instance.clone());
            if let Some(name) = &m.settings.protection_policy {
                tags.insert("protection-policy".into(), name.clone());
            }
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
        let base = match kind {
            Kind::Full => None,
            kind => match self.base(kind, check, newest, source) {
                Ok(base) => Some(base),
                Err(why) => {
                    notes.push(format!("taking a full backup instead of {kind}: {why}"));
                    None
                }
            },
        };
        let opts = BackupOptions {
            base,
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
        notes.extend(stored_whole(&meta));
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

impl Vault {
    /// The instance's newest committed backup and everything it depends on, or why there
    /// is none to build on.
    fn newest_chain(&self, keyring: &KeyRing, tenant: &str, instance: &str) -> Newest {
        let none = |why: String| Newest {
            chain: Vec::new(),
            newest_mac: String::new(),
            problem: Some(why),
        };
        let listed = match catalog::list(&*self.store, keyring, tenant, Some(instance)) {
            Ok(l) => l,
            Err(e) => return none(format!("the store's listing failed ({e})")),
        };
        let Some(newest) = listed.last() else {
            return none(format!("instance '{instance}' has no backup yet"));
        };
        let (Some(meta), Some(mac)) = (&newest.metadata, &newest.mac) else {
            return none(format!(
                "the newest backup {} cannot be read ({})",
                newest.backup_id,
                newest.error.clone().unwrap_or_default()
            ));
        };
        let chain = match catalog::chain(&*self.store, keyring, meta.clone()) {
            Ok(chain) => chain,
            Err(e) => return none(e.to_string()),
        };
        // Metadata alone is not enough to build on: every backup of the chain needs its data.
        let has_data = |id: &str| listed.iter().any(|l| l.backup_id == id && l.has_data);
        if let Some(lost) = chain.iter().find(|m| !has_data(&m.backup_id)) {
            return none(format!(
                "the data of backup {} is missing from the store",
                lost.backup_id
            ));
        }
        Newest {
            chain,
            newest_mac: mac.clone(),
            problem: None,
        }
    }

    /// The parent of an incremental (the newest backup) or a differential (the newest
    /// full), or why the backup must be a full one: no usable parent, or a chain past the
    /// floors.
    fn base(
        &self,
        kind: Kind,
        check: PrefixCheck,
        newest: Newest,
        source: &Source,
    ) -> std::result::Result<Base, String> {
        if let Some(why) = newest.problem {
            return Err(why);
        }
        let mut chain = newest.chain;
        // The MAC a child records: the newest's own, or (a differential's full) the one its
        // child recorded, which the chain was checked against.
        let mut parent_mac = newest.newest_mac;
        if kind == Kind::Differential && chain.len() > 1 {
            if let Some(p) = &chain[1].parent {
                parent_mac = p.metadata_mac.clone();
            }
            chain.truncate(1);
        }
        let floors = &self.config.floors;
        let after_full = chain.len().saturating_sub(1);
        let parent = chain.pop().ok_or("no parent backup")?;
        let full = chain.first().unwrap_or(&parent);
        if after_full >= floors.max_chain_length {
            return Err(format!(
                "the chain has {after_full} backups after its full (floor: max_chain_length = {})",
                floors.max_chain_length
            ));
        }
        let age = Utc::now() - full.started_at;
        if age.to_std().unwrap_or_default() > floors.full_max_age.get() {
            return Err(format!(
                "its full backup {} is older than {} (floor: full_max_age)",
                full.backup_id, floors.full_max_age
            ));
        }
        let dir = source.database_dir.display().to_string();
        if parent.source.database_dir != dir {
            return Err(format!(
                "the parent {} backed up {}, this backup reads {dir}",
                parent.backup_id, parent.source.database_dir
            ));
        }
        Ok(Base {
            kind,
            check,
            parent,
            parent_mac,
            ancestors: chain,
        })
    }
}

/// The instance's newest backup and its chain, oldest first (empty, with the problem, when
/// there is none to build on), and the newest's metadata MAC.
struct Newest {
    chain: Vec<BackupMetadata>,
    newest_mac: String,
    problem: Option<String>,
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
    /// Full, incremental or differential; None: the protection policy's answer, else full.
    pub kind: Option<Kind>,
    /// How an incremental checks prefixes; None: the policy's answer, else exact.
    pub prefix_check: Option<PrefixCheck>,
    /// A member of a cluster backup: no policy of the config's applies (its cluster
    /// backup's retention decides when it goes), tagged with its cluster backup.
    pub cluster_member: Option<MemberOf>,
}

/// The cluster backup a member backup belongs to.
#[derive(Debug, Clone)]
pub struct MemberOf {
    pub cluster_backup: String,
    pub cluster_instance: String,
    /// Level, key and tags the protection policy decided for the whole cluster backup.
    pub settings: crate::cluster::job::MemberSettings,
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

/// Most notes said about files stored whole against a parent.
const WHOLE_NOTES: usize = 20;

/// Why an incremental stored files whole that its parent had (a compaction, a changed
/// prefix): said with the backup, the first few by name.
fn stored_whole(meta: &BackupMetadata) -> Vec<String> {
    let whole: Vec<String> = meta
        .files
        .iter()
        .filter_map(|f| Some(format!("{} stored whole: {}", f.path, f.reason.as_ref()?)))
        .collect();
    let more = whole.len().saturating_sub(WHOLE_NOTES);
    let mut notes: Vec<String> = whole.into_iter().take(WHOLE_NOTES).collect();
    if more > 0 {
        notes.push(format!(
            "and {more} more files stored whole (see `backup show {}`)",
            meta.backup_id
        ));
    }
    notes
}

pub fn info_of(m: &BackupMetadata) -> BackupInfo {
    BackupInfo {
        id: m.backup_id.clone(),
        created_at: m.started_at.timestamp(),
        size: m.data.size,
        kind: m.kind.to_string(),
        parent: m.parent.as_ref().map(|p| p.backup_id.clone()),
        tags: m.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        schedule: m.tags.get("schedule").cloned(),
    }
}
