//! The key life cycle: which backups each key wraps, rewrapping a tenant's backups with its
//! active key (metadata only), rotation (a new key, then a rewrap) and retiring a key that
//! nothing needs any more.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::{OpsError, Result, Vault};
use crate::catalog;
use crate::keyring::KeyRing;

/// One key of the ring and how many backups its wraps.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyUsage {
    pub tenant: String,
    pub key_id: String,
    pub created: chrono::DateTime<chrono::Utc>,
    pub active: bool,
    /// Committed backups whose data key it wraps.
    pub backups: u64,
    /// The UUID of the Barbican secret holding it; absent for a key in the ring's file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub barbican: Option<String>,
}

/// How far a rewrap is, after each backup.
#[derive(Debug, Clone)]
pub struct RewrapProgress<'a> {
    /// Backups looked at so far, of `total`.
    pub done: u64,
    pub total: u64,
    pub backup_id: &'a str,
    /// Rewrapped now (else already wrapped with the key, or failed).
    pub rewrapped: bool,
}

/// Called after each backup a rewrap looks at, from any of its threads.
pub type RewrapObserver<'a> = dyn Fn(&RewrapProgress) + Sync + 'a;

/// What a rewrap did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RewrapReport {
    pub tenant: String,
    /// The key every backup is now wrapped with.
    pub key_id: String,
    pub rewrapped: Vec<String>,
    /// Backups that were already wrapped with it.
    pub already: u64,
    /// Backups whose metadata could not be read or rewritten, with why (left as they were).
    pub failed: Vec<(String, String)>,
}

impl Vault {
    /// Every key of the ring with the number of backups it wraps.
    pub fn key_usage(&self, keyring: &KeyRing) -> Result<Vec<KeyUsage>> {
        let mut tenants: Vec<&str> = keyring.keys().iter().map(|k| k.tenant.as_str()).collect();
        tenants.sort_unstable();
        tenants.dedup();
        let mut used: Vec<(String, String)> = Vec::new();
        for t in &tenants {
            for l in catalog::list(&*self.store, keyring, t, None)? {
                if let Some(m) = l.metadata {
                    used.push((m.tenant, m.encryption.key_id));
                }
            }
        }
        Ok(keyring
            .keys()
            .iter()
            .map(|k| KeyUsage {
                tenant: k.tenant.clone(),
                key_id: k.id.clone(),
                created: k.created,
                active: keyring.active(&k.tenant).is_ok_and(|a| a.id == k.id),
                barbican: k.barbican.clone(),
                backups: used
                    .iter()
                    .filter(|(t, id)| *t == k.tenant && *id == k.id)
                    .count() as u64,
            })
            .collect())
    }

    /// Wraps every backup of `tenant` with its active key, metadata only: each backup's
    /// data key is unwrapped with its old key and wrapped with the new one, and its sealed
    /// metadata replaced in one write (several backups at once). Resumable: a rerun
    /// rewraps what is left.
    pub fn rewrap(
        &self,
        keyring: &KeyRing,
        tenant: &str,
        progress: &RewrapObserver<'_>,
    ) -> Result<RewrapReport> {
        let key = keyring.active(tenant)?;
        // A key manager that is down stops the rewrap before anything is read.
        keyring.unlock(key)?;
        let mut report = RewrapReport {
            tenant: tenant.to_string(),
            key_id: key.id.clone(),
            ..Default::default()
        };
        let listed = catalog::list(&*self.store, keyring, tenant, None)?;
        let total = listed.len() as u64;
        let done = AtomicU64::new(0);
        let step = |backup_id: &str, rewrapped: bool| {
            progress(&RewrapProgress {
                done: done.fetch_add(1, Ordering::Relaxed) + 1,
                total,
                backup_id,
                rewrapped,
            })
        };
        let mut todo = Vec::new();
        for l in listed {
            match l.metadata {
                None => {
                    let why = l.error.unwrap_or_default();
                    step(&l.backup_id, false);
                    report.failed.push((l.backup_id, why));
                }
                Some(meta) if meta.encryption.key_id == key.id => {
                    step(&meta.backup_id, false);
                    report.already += 1;
                }
                Some(meta) => todo.push(meta),
            }
        }
        let results = crate::parallel::map(&todo, crate::parallel::IO_WORKERS, |meta| {
            let r = catalog::rewrap(&*self.store, keyring, meta, key);
            if r.is_ok() {
                tracing::info!(backup = %meta.backup_id, key = %key.id, "rewrapped");
                crate::engine::checkpoint("after-rewrap");
            }
            step(&meta.backup_id, r.is_ok());
            r
        });
        for (meta, r) in todo.into_iter().zip(results) {
            match r {
                Ok(()) => report.rewrapped.push(meta.backup_id),
                Err(e) => report.failed.push((meta.backup_id, e.to_string())),
            }
        }
        Ok(report)
    }

    /// Adds a new active key for `tenant` to the ring (in Barbican when `in_barbican`;
    /// the ring is saved first), then rewraps every backup of the tenant with it.
    pub fn rotate(
        &self,
        keyring: &mut KeyRing,
        tenant: &str,
        in_barbican: bool,
        progress: &RewrapObserver<'_>,
    ) -> Result<RewrapReport> {
        {
            let _lock = keyring.lock_for_change()?;
            keyring.add_key(tenant, in_barbican)?;
            keyring.save(false)?;
        }
        crate::engine::checkpoint("after-key-added");
        self.rewrap(keyring, tenant, progress)
    }

    /// Removes a key from the ring; refused while a backup needs it, or while it is the
    /// tenant's active key.
    pub fn retire_key(&self, keyring: &mut KeyRing, tenant: &str, key_id: &str) -> Result<()> {
        // Held until the key is gone: a backup cannot commit with it meanwhile.
        let _lock = keyring.lock_for_change()?;
        keyring.get(tenant, key_id)?;
        if keyring.active(tenant)?.id == key_id {
            return Err(OpsError::Refused(format!(
                "key {key_id} is tenant '{tenant}''s active key: `couchvault key rotate --tenant {tenant}` first"
            )));
        }
        let listed = catalog::list(&*self.store, keyring, tenant, None)?;
        // A backup that cannot be read now may be one that needs the key.
        if let Some(l) = listed.iter().find(|l| l.metadata.is_none()) {
            return Err(OpsError::Refused(format!(
                "backup {} of tenant '{tenant}' cannot be read now ({}), so whether it needs key {key_id} is unknown; fix that first",
                l.backup_id,
                l.error.as_deref().unwrap_or("no metadata")
            )));
        }
        let needing: Vec<String> = listed
            .into_iter()
            .filter(|l| {
                l.metadata
                    .as_ref()
                    .is_some_and(|m| m.encryption.key_id == key_id)
            })
            .map(|l| l.backup_id)
            .collect();
        if !needing.is_empty() {
            return Err(OpsError::Refused(format!(
                "key {key_id} still wraps {} backup(s) ({}); run `couchvault key rewrap --tenant {tenant}` to wrap them with the active key, then retire it",
                needing.len(),
                needing.join(", ")
            )));
        }
        keyring.remove_key(tenant, key_id)?;
        keyring.save(false)?;
        Ok(())
    }
}
