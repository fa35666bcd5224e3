//! The backups in the store: list, show, verify, delete, and gc of what uncommitted
//! backups left behind.

use std::time::Duration;

use super::{OpsError, Result, Vault};
use crate::catalog;
pub use crate::catalog::{Deleted, GcReport};
pub use crate::engine::VerifyReport;
use crate::engine::{self, Progress};
use crate::format::BackupMetadata;
use crate::wire::{BackupRow, BackupSummary, ClusterSummary, RowStatus};

impl Vault {
    /// A tenant's backups (of one instance), oldest first, including those whose metadata
    /// does not load (`invalid`, with why).
    /// Cluster backups are rows of their own, with their members within them.
    pub fn list_backups(&self, tenant: &str, instance: Option<&str>) -> Result<Vec<BackupRow>> {
        let keyring = self.keyring()?;
        let mut rows: Vec<BackupRow> = catalog::list(&*self.store, &keyring, tenant, instance)?
            .into_iter()
            .map(|l| BackupRow {
                status: match (&l.metadata, l.key_unavailable) {
                    (Some(_), _) => RowStatus::Ok,
                    (None, true) => RowStatus::NoKey,
                    (None, false) => RowStatus::Invalid,
                },
                summary: l.metadata.as_ref().map(BackupSummary::of),
                backup_id: l.backup_id,
                instance: l.instance,
                error: l.error,
                cluster: None,
            })
            .collect();
        let mut clusters = Vec::new();
        for l in self.cluster_listing(tenant, instance)? {
            match l.manifest {
                Ok(m) => clusters.push(ClusterSummary::of(&m)),
                // Listed, never hidden: a damaged manifest (or one whose key cannot be had).
                Err(e) => rows.push(BackupRow {
                    status: match catalog::key_unavailable(&e) {
                        true => RowStatus::NoKey,
                        false => RowStatus::Invalid,
                    },
                    error: Some(format!("cluster backup: {e}")),
                    backup_id: l.backup_id,
                    instance: l.instance,
                    summary: None,
                    cluster: None,
                }),
            }
        }
        Ok(BackupRow::listing(rows, clusters))
    }

    /// The committed backups of a tenant's instance, with their metadata.
    pub fn committed(&self, tenant: &str, instance: Option<&str>) -> Result<Vec<BackupMetadata>> {
        let keyring = self.keyring()?;
        Ok(catalog::list(&*self.store, &keyring, tenant, instance)?
            .into_iter()
            .filter_map(|l| l.metadata)
            .collect())
    }

    /// One backup's metadata, authenticated with the tenant's key; another tenant's id is
    /// NotFound.
    pub fn show_backup(&self, tenant: &str, id: &str) -> Result<BackupMetadata> {
        self.load_backup(&self.keyring()?, tenant, id)
    }

    /// [`catalog::load`]; a cluster backup's id is refused, saying where its data is.
    pub(super) fn load_backup(
        &self,
        keyring: &crate::keyring::KeyRing,
        tenant: &str,
        id: &str,
    ) -> Result<BackupMetadata> {
        match catalog::load(&*self.store, keyring, tenant, id) {
            Err(e @ crate::Error::NotFound { .. }) => match self.find_cluster_backup(tenant, id)? {
                Some(m) => Err(OpsError::Refused(format!(
                    "{id} is a cluster backup of instance '{}': its data is in its {} member backups (`backup list` names them), each readable alone; restore it whole with `couchvault cluster restore {id} --instance {}`",
                    m.instance,
                    m.members.len(),
                    m.instance
                ))),
                None => Err(e.into()),
            },
            other => Ok(other?),
        }
    }

    /// Reads the whole backup back: every chunk authenticated, the stream hash and every
    /// stored piece's hash checked. With `chain`, every backup it depends on too, and each
    /// file rebuilt (in hashes) and checked whole. Nothing is written. A cluster backup's
    /// id verifies every member.
    pub fn verify(
        &self,
        tenant: &str,
        id: &str,
        chain: bool,
        progress: &Progress,
    ) -> Result<VerifyReport> {
        let keyring = self.keyring()?;
        let meta = match catalog::load(&*self.store, &keyring, tenant, id) {
            // A cluster backup's id: every member.
            Err(e @ crate::Error::NotFound { .. }) => match self.find_cluster_backup(tenant, id)? {
                Some(m) => return self.verify_cluster_backup(tenant, &m.instance, id, progress),
                None => return Err(e.into()),
            },
            other => other?,
        };
        let backups = match chain {
            true => catalog::chain(&*self.store, &keyring, meta)?,
            false => vec![meta],
        };
        Ok(engine::verify(&*self.store, &keyring, &backups, progress)?)
    }

    /// Deletes a backup (or the leftovers of an uncommitted one). A backup others depend on
    /// is refused, naming them, unless `with_dependents`: then they go first, newest first.
    /// A member of a committed cluster backup is refused: it goes with its cluster backup.
    /// A cluster backup's id deletes the cluster backup whole.
    pub fn delete(&self, tenant: &str, id: &str, with_dependents: bool) -> Result<Vec<Deleted>> {
        let keyring = self.keyring()?;
        let loaded = catalog::load(&*self.store, &keyring, tenant, id);
        if let Err(crate::Error::NotFound { .. }) = loaded {
            if let Some(m) = self.find_cluster_backup(tenant, id)? {
                return self.delete_cluster_backup(tenant, &m.instance, id);
            }
        }
        if let Ok(meta) = loaded {
            use crate::cluster::job::{CLUSTER_INSTANCE_TAG, MEMBER_OF_TAG};
            if let (Some(cluster), Some(instance)) = (
                meta.tags.get(MEMBER_OF_TAG),
                meta.tags.get(CLUSTER_INSTANCE_TAG),
            ) {
                let named = crate::cluster::manifest::load(
                    &*self.store,
                    &keyring,
                    tenant,
                    instance,
                    cluster,
                )
                .is_ok_and(|m| m.members.iter().any(|x| x.backup_id == id));
                if named {
                    return Err(OpsError::Refused(format!(
                        "backup {id} is a member of cluster backup {cluster}, which cannot be restored without it: delete the cluster backup whole with `couchvault cluster delete --instance {instance} {cluster}`"
                    )));
                }
            }
        }
        let dependents = catalog::dependents_of(&*self.store, &keyring, tenant, id)?;
        if !dependents.is_empty() && !with_dependents {
            return Err(OpsError::Refused(format!(
                "backup {id} is the parent of {} (incremental or differential backups that cannot be restored without it): delete with --with-dependents to delete them too",
                dependents.join(", ")
            )));
        }
        let mut deleted = Vec::new();
        for d in dependents.iter().chain(std::iter::once(&id.to_string())) {
            deleted.push(catalog::delete(&*self.store, tenant, d)?);
        }
        Ok(deleted)
    }

    /// Removes what uncommitted backups left, older than `grace` (every tenant).
    /// Also removes member backups whose cluster backup never committed (its coordinator
    /// failed or died for good), once older than the grace period and the cluster deadline,
    /// and members its committed cluster backup does not name (a job moved elsewhere after
    /// its member had committed).
    pub fn gc(&self, grace: Duration, dry_run: bool) -> Result<GcReport> {
        let mut report = catalog::gc(&*self.store, grace, dry_run)?;
        let grace = grace.max(self.config.cluster.deadline.get());
        let now = chrono::Utc::now();
        for tenant in self.store.tenants()? {
            for (meta, named) in self.cluster_members(&tenant, None)? {
                let label = format!("{tenant}/{}/{}", meta.instance, meta.backup_id);
                let age = (now - meta.finished_at).to_std().unwrap_or_default();
                match named {
                    Some(true) => continue,
                    None if age < grace => {
                        report.kept_young.push(label);
                        continue;
                    }
                    _ => {}
                }
                if !dry_run {
                    catalog::delete(&*self.store, &tenant, &meta.backup_id)?;
                }
                report.bytes_freed += meta.data.size;
                report.removed.push(label);
            }
        }
        Ok(report)
    }

    /// A tenant's member backups (of cluster backup `of`, or all), each with whether its
    /// cluster backup's manifest names it (None: no manifest, not committed or deleted).
    pub fn cluster_members(
        &self,
        tenant: &str,
        of: Option<&str>,
    ) -> Result<Vec<(BackupMetadata, Option<bool>)>> {
        use crate::cluster::job::{CLUSTER_INSTANCE_TAG, MEMBER_OF_TAG};
        use crate::cluster::manifest;
        let keyring = self.keyring()?;
        let mut out = Vec::new();
        for meta in self.committed(tenant, None)? {
            let (Some(cluster), Some(instance)) = (
                meta.tags.get(MEMBER_OF_TAG).cloned(),
                meta.tags.get(CLUSTER_INSTANCE_TAG).cloned(),
            ) else {
                continue;
            };
            if of.is_some_and(|o| o != cluster) {
                continue;
            }
            let named = match manifest::load(&*self.store, &keyring, tenant, &instance, &cluster) {
                Ok(m) => Some(m.members.iter().any(|x| x.backup_id == meta.backup_id)),
                Err(crate::Error::Store(e)) if e.is_not_found() => None,
                Err(e) => return Err(e.into()),
            };
            out.push((meta, named));
        }
        Ok(out)
    }

    /// Every tenant that has anything in the store.
    pub fn tenants(&self) -> Result<Vec<String>> {
        Ok(self.store.tenants()?)
    }
}
