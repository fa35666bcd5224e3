//! The catalog of backups, read from the store (its only source of truth): commit, list,
//! load with authentication, delete, and garbage collection of uncommitted leftovers.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::crypto::SecretKey;
use crate::error::{Error, Result};
use crate::format::{self, BackupMetadata, UnverifiedMetadata};
use crate::keyring::{KeyRing, KeyringError};
use crate::store::Store;

const METADATA_FILE: &str = "backup.json";

/// Writes the metadata object: the commit point of a backup.
pub fn commit(store: &dyn Store, tenant_key: &SecretKey, meta: &BackupMetadata) -> Result<()> {
    let bytes = format::seal_metadata(meta, tenant_key);
    store.put(
        &meta.tenant,
        &format::metadata_object(&meta.instance, &meta.backup_id),
        &bytes,
    )?;
    Ok(())
}

/// Wraps a backup's data key with `key` instead of the key that wraps it now, rewriting its
/// metadata only: the data object is never read or written. One atomic put replaces the
/// metadata, so a crash leaves the old or the new, each readable while both keys are in
/// the ring; a child's link to it holds (it names the parent's data, which is the same).
pub fn rewrap(
    store: &dyn Store,
    keyring: &KeyRing,
    meta: &BackupMetadata,
    key: &crate::keyring::TenantKey,
) -> Result<()> {
    let e = &meta.encryption;
    let old = keyring.unlock(keyring.get(&meta.tenant, &e.key_id)?)?;
    let key = keyring.unlock(key)?;
    let data_key = crate::crypto::unwrap_data_key(
        old.secret,
        &e.wrapped()?,
        &meta.tenant,
        old.id,
        &meta.backup_id,
    )?;
    let wrapped =
        crate::crypto::wrap_data_key(key.secret, &data_key, &meta.tenant, key.id, &meta.backup_id)?;
    let mut m = meta.clone();
    m.encryption.key_id = key.id.to_string();
    m.encryption.wrapped_key_nonce = hex::encode(wrapped.nonce);
    m.encryption.wrapped_key = hex::encode(&wrapped.ciphertext);
    crate::engine::checkpoint("rewrap-put");
    commit(store, key.secret, &m)
}

/// Splits `<instance>/<id>/<file>` into its parts.
fn split_name(name: &str) -> Option<(&str, &str, &str)> {
    let mut it = name.splitn(3, '/');
    Some((it.next()?, it.next()?, it.next()?))
}

/// Reads and authenticates one metadata object, checking it belongs where it was found.
/// Returns it with its MAC (what a child records as its parent's).
fn load_object(
    store: &dyn Store,
    keyring: &KeyRing,
    tenant: &str,
    instance: &str,
    id: &str,
) -> Result<(BackupMetadata, String)> {
    let bytes = store.get(tenant, &format::metadata_object(instance, id))?;
    let unverified = UnverifiedMetadata::parse(&bytes)?;
    let key_id = unverified.key_id.clone();
    let key = keyring.unlock(keyring.get(tenant, &key_id)?)?;
    let (meta, mac) = unverified.verify(key.secret)?;
    if meta.backup_id != id || meta.tenant != tenant || meta.instance != instance {
        return Err(Error::Mismatch {
            id: id.to_string(),
            reason: format!(
                "its metadata object describes backup {} of {}/{} (swapped metadata)",
                meta.backup_id, meta.tenant, meta.instance
            ),
        });
    }
    Ok((meta, mac))
}

/// Finds the instance a backup id belongs to, committed or not.
fn locate(store: &dyn Store, tenant: &str, id: &str) -> Result<Option<(String, bool)>> {
    ulid::Ulid::from_string(id).map_err(|_| Error::NotFound {
        tenant: tenant.to_string(),
        id: id.to_string(),
    })?;
    let mut found: Option<(String, bool)> = None;
    for o in store.list(tenant, "")? {
        if let Some((instance, oid, file)) = split_name(&o.name) {
            if oid == id {
                let committed = file == METADATA_FILE;
                let prev = found.get_or_insert((instance.to_string(), false));
                prev.1 |= committed;
            }
        }
    }
    if found.is_none() {
        for o in store.list_segmented(tenant)? {
            if let Some((instance, oid, _)) = split_name(&o.name) {
                if oid == id {
                    found = Some((instance.to_string(), false));
                }
            }
        }
    }
    Ok(found)
}

/// Loads a committed backup by id, authenticated.
pub fn load(
    store: &dyn Store,
    keyring: &KeyRing,
    tenant: &str,
    id: &str,
) -> Result<BackupMetadata> {
    load_sealed(store, keyring, tenant, id).map(|(m, _)| m)
}

/// [`load`], with the metadata's MAC.
pub fn load_sealed(
    store: &dyn Store,
    keyring: &KeyRing,
    tenant: &str,
    id: &str,
) -> Result<(BackupMetadata, String)> {
    match locate(store, tenant, id)? {
        Some((instance, true)) => load_object(store, keyring, tenant, &instance, id),
        _ => Err(Error::NotFound {
            tenant: tenant.to_string(),
            id: id.to_string(),
        }),
    }
}

/// One row of a listing: a committed backup, or one whose metadata failed to load.
#[derive(Debug, Serialize)]
pub struct Listed {
    pub backup_id: String,
    pub instance: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BackupMetadata>,
    /// The metadata's MAC, when it loaded.
    #[serde(skip)]
    pub mac: Option<String>,
    /// Whether its data object is in the store.
    #[serde(skip)]
    pub has_data: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The error is that its key cannot be had now (e.g. Barbican is down), not that the
    /// backup is damaged.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub key_unavailable: bool,
}

/// Whether a metadata (or manifest) that did not load failed for its key alone, which
/// cannot be had now (e.g. Barbican is down), not for damage.
pub fn key_unavailable(e: &Error) -> bool {
    matches!(
        e,
        Error::Keyring(KeyringError::Barbican(_) | KeyringError::UnknownKey { .. })
    )
}

/// Committed backups of a tenant, oldest first (ids sort by time).
pub fn list(
    store: &dyn Store,
    keyring: &KeyRing,
    tenant: &str,
    instance: Option<&str>,
) -> Result<Vec<Listed>> {
    let prefix = instance.map(|i| format!("{i}/")).unwrap_or_default();
    let objects = store.list(tenant, &prefix)?;
    let names: BTreeSet<&str> = objects.iter().map(|o| o.name.as_str()).collect();
    let found: Vec<(&str, &str)> = objects
        .iter()
        .filter_map(|o| match split_name(&o.name) {
            Some((inst, id, METADATA_FILE)) => Some((inst, id)),
            _ => None,
        })
        .collect();
    // One round trip per backup: several at once.
    let loaded = crate::parallel::map(&found, crate::parallel::IO_WORKERS, |(inst, id)| {
        load_object(store, keyring, tenant, inst, id)
    });
    let mut out = Vec::new();
    for ((inst, id), result) in found.into_iter().zip(loaded) {
        let (metadata, mac, error) = match result {
            Ok((m, mac)) => (Some(m), Some(mac), None),
            Err(e) => (None, None, Some(e)),
        };
        let key_unavailable = error.as_ref().is_some_and(key_unavailable);
        out.push(Listed {
            has_data: names.contains(format::data_object(inst, id).as_str()),
            backup_id: id.to_string(),
            instance: inst.to_string(),
            metadata,
            mac,
            error: error.map(|e| e.to_string()),
            key_unavailable,
        });
    }
    out.sort_by(|a, b| a.backup_id.cmp(&b.backup_id));
    Ok(out)
}

/// Why a backup's chain cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("backup {child} depends on backup {parent}, which is missing or unreadable ({reason}); restore from an older full backup or a backup outside this chain")]
    Broken {
        child: String,
        parent: String,
        reason: String,
    },
    #[error("backup {child} names parent {parent}, but that backup's metadata is not the one it was made against (a spliced chain); the chain cannot be trusted")]
    Spliced { child: String, parent: String },
    #[error("the chain of backup {0} is longer than {MAX_CHAIN} backups or loops; it is damaged")]
    TooLong(String),
}

/// No chain is longer: the host takes a full long before (floor `max_chain_length`).
pub const MAX_CHAIN: usize = 1000;

/// Every backup `meta` depends on and `meta` itself, oldest (its full) first, each parent
/// authenticated and matched against the MAC its child recorded.
pub fn chain(
    store: &dyn Store,
    keyring: &KeyRing,
    meta: BackupMetadata,
) -> Result<Vec<BackupMetadata>> {
    let mut out = vec![meta];
    while let Some(parent) = out.last().and_then(|m| m.parent.clone()) {
        let child = out.last().map(|m| m.backup_id.clone()).unwrap_or_default();
        if out.len() > MAX_CHAIN {
            return Err(Error::Chain(ChainError::TooLong(out[0].backup_id.clone())));
        }
        let (m, mac) =
            load_sealed(store, keyring, &out[0].tenant, &parent.backup_id).map_err(|e| {
                ChainError::Broken {
                    child: child.clone(),
                    parent: parent.backup_id.clone(),
                    reason: e.to_string(),
                }
            })?;
        if !parent.matches(&m, &mac) || m.instance != out[0].instance {
            return Err(ChainError::Spliced {
                child,
                parent: parent.backup_id,
            }
            .into());
        }
        out.push(m);
    }
    out.reverse();
    Ok(out)
}

/// The backups that depend on `id`, directly or not, newest first: a chain stays within
/// one instance, so only that instance's backups are read.
pub fn dependents_of(
    store: &dyn Store,
    keyring: &KeyRing,
    tenant: &str,
    id: &str,
) -> Result<Vec<String>> {
    match locate(store, tenant, id)? {
        Some((instance, _)) => Ok(dependents(
            &list(store, keyring, tenant, Some(&instance))?,
            id,
        )),
        None => Ok(Vec::new()),
    }
}

/// The backups among `listed` that depend on `id`, directly or not, newest first.
pub fn dependents(listed: &[Listed], id: &str) -> Vec<String> {
    let mut found: BTreeSet<String> = BTreeSet::new();
    let mut frontier = vec![id.to_string()];
    while let Some(p) = frontier.pop() {
        for l in listed {
            let Some(m) = &l.metadata else { continue };
            if m.parent.as_ref().is_some_and(|r| r.backup_id == p)
                && found.insert(l.backup_id.clone())
            {
                frontier.push(l.backup_id.clone());
            }
        }
    }
    found.into_iter().rev().collect()
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Deleted {
    pub backup_id: String,
    pub instance: String,
    pub was_committed: bool,
}

/// Deletes a backup: uncommit (metadata) first, then the data. Safe to repeat after a
/// failure part-way; an id with nothing left is NotFound.
pub fn delete(store: &dyn Store, tenant: &str, id: &str) -> Result<Deleted> {
    let Some((instance, committed)) = locate(store, tenant, id)? else {
        return Err(Error::NotFound {
            tenant: tenant.to_string(),
            id: id.to_string(),
        });
    };
    store.delete(tenant, &format::metadata_object(&instance, id))?;
    store.delete(tenant, &format::data_object(&instance, id))?;
    Ok(Deleted {
        backup_id: id.to_string(),
        instance,
        was_committed: committed,
    })
}

#[derive(Debug, Default, Serialize, serde::Deserialize)]
pub struct GcReport {
    /// `tenant/instance/id` of each removed leftover.
    pub removed: Vec<String>,
    /// Leftovers younger than the grace period, left alone (an upload may be running).
    pub kept_young: Vec<String>,
    pub bytes_freed: u64,
}

/// Removes leftovers of uncommitted backups (data without metadata) older than `grace`,
/// in every tenant's container.
pub fn gc(store: &dyn Store, grace: Duration, dry_run: bool) -> Result<GcReport> {
    let now = SystemTime::now();
    let mut report = GcReport::default();
    for tenant in store.tenants()? {
        let mut committed = BTreeSet::new();
        // (instance, id) -> (newest modification, bytes)
        let mut leftovers: BTreeMap<(String, String), (SystemTime, u64)> = BTreeMap::new();
        let objects = store.list(&tenant, "")?;
        let segmented = store.list_segmented(&tenant)?;
        for o in objects.iter().chain(segmented.iter()) {
            let Some((inst, id, file)) = split_name(&o.name) else {
                continue;
            };
            // A cluster manifest commits its cluster backup (docs/CLUSTERS.md).
            if file == METADATA_FILE || file == crate::cluster::manifest::MANIFEST_FILE {
                committed.insert((inst.to_string(), id.to_string()));
            } else {
                let e = leftovers
                    .entry((inst.to_string(), id.to_string()))
                    .or_insert((SystemTime::UNIX_EPOCH, 0));
                e.0 = e.0.max(o.modified);
                e.1 += o.size;
            }
        }
        for ((inst, id), (modified, bytes)) in leftovers {
            if committed.contains(&(inst.clone(), id.clone())) {
                continue;
            }
            let label = format!("{tenant}/{inst}/{id}");
            let age = now.duration_since(modified).unwrap_or_default();
            if age < grace {
                report.kept_young.push(label);
                continue;
            }
            if !dry_run {
                store.delete(&tenant, &format::data_object(&inst, &id))?;
            }
            tracing::info!(leftover = %label, bytes, dry_run, "gc: uncommitted backup data");
            report.removed.push(label);
            report.bytes_freed += bytes;
        }
    }
    Ok(report)
}
