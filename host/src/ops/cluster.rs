//! Cluster backups in the service layer: a node's member backup (run by its daemon's
//! agent), listing, verifying and deleting cluster backups as wholes, and restoring one into
//! a new cluster of any size and node names: every member backup unpacked and verified
//! first, then each shard range's files (and its view indexes) placed on n of the new
//! nodes, every shard map written through the new cluster's API, and every database checked
//! on every node that holds it.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::unistd::{Gid, Uid};
use serde::{Deserialize, Serialize};

use super::backup::MemberOf;
use super::restore::{failed_checks, DbCheck};
use super::{restore_owner, BackupRequest, Deleted, OpsError, Result, Vault};
use crate::catalog;
use crate::cluster::agent::Share;
use crate::cluster::broker::Broker;
use crate::cluster::job::{
    go_key, result_key, ClusterBackupRequest, ClusterOutcome, Go, JobState, MemberJob,
    MemberSettings, RestoreJob, COORDINATOR_QUEUE,
};
use crate::cluster::manifest::{self, ClusterManifest, MANIFEST_FILE};
use crate::cluster::restore::{place, shard_map_doc, Placement};
use crate::couchdb::http::{encode_db, CouchClient};
use crate::couchdb::{Source, SourceSpec};
use crate::engine::{self, Progress, RestoreOptions};
use crate::format::Kind;

/// One node of the new cluster and its database directory on this machine.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetNode {
    /// Its Erlang node name, as `/_membership` lists it (`couchdb@db1.example`).
    pub name: String,
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone)]
pub struct ClusterRestoreRequest {
    pub tenant: String,
    /// The cluster instance the backup was taken of.
    pub instance: String,
    pub backup_id: String,
    /// Every node of the new cluster.
    pub nodes: Vec<TargetNode>,
    /// Copies of each range; None: the new cluster's `[cluster] n`. At most the node count.
    pub n: Option<usize>,
    /// Delete databases of the backup that the new cluster has already. Without it only
    /// those holding nothing but design documents (a new cluster's `_users`) are replaced.
    pub replace: bool,
    /// `USER:GROUP` of the placed files; None: `restore.owner`, else each data dir's owner.
    pub owner: Option<String>,
    /// Where member backups are unpacked and verified (removed after); None: beside the
    /// first node's data directory.
    pub staging: Option<PathBuf>,
    /// How long the new shard maps may take to reach every node.
    pub settle: Duration,
}

/// A cluster manifest found in the store, loaded or not.
#[derive(Debug)]
pub struct ClusterListed {
    pub instance: String,
    pub backup_id: String,
    pub manifest: std::result::Result<ClusterManifest, crate::Error>,
}

/// A cluster backup asked for ([`Vault::request_cluster_backup`]).
#[derive(Debug, Clone, Default)]
pub struct ClusterBackupAsk {
    pub tenant: String,
    pub instance: String,
    /// The tenant's protection policy (default: `[policy] protection`), asked once for the
    /// whole: the level, key and tags of every member.
    pub protection: Option<String>,
    /// Wait until it settles (within the deadline).
    pub wait: bool,
}

/// A cluster backup queued: its id, its manifest once committed (when waited for), and
/// what the protection policy's answer needed said.
#[derive(Debug, Clone)]
pub struct ClusterBackupQueued {
    pub id: String,
    pub manifest: Option<ClusterManifest>,
    pub notes: Vec<String>,
}

/// A cluster restore whose files each node's daemon places
/// ([`Vault::restore_cluster_via_daemons`]): the new cluster's nodes are its `/_membership`.
#[derive(Debug, Clone)]
pub struct DaemonRestoreRequest {
    pub tenant: String,
    pub instance: String,
    pub backup_id: String,
    /// Copies of each range; None: the new cluster's `[cluster] n`.
    pub n: Option<usize>,
    /// As [`ClusterRestoreRequest::replace`].
    pub replace: bool,
    /// How long the new shard maps may take to reach every node.
    pub settle: Duration,
}

/// One node of the backed-up cluster to restore in place ([`Vault::restore_cluster_node`]).
#[derive(Debug, Clone)]
pub struct NodeRestoreRequest {
    pub tenant: String,
    pub instance: String,
    pub backup_id: String,
    /// The node, by the name the backup's shard maps give it.
    pub node: TargetNode,
    pub owner: Option<String>,
    pub staging: Option<PathBuf>,
    /// Stop CouchDB on the node before its files are replaced, start it after.
    pub hooks: super::restore::Hooks,
    /// How long CouchDB may take to answer after the start hook.
    pub settle: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRestoreReport {
    pub backup_id: String,
    pub node: String,
    pub files: u64,
    pub bytes: u64,
    /// Where the node's replaced files were moved (delete it once the node is healthy).
    pub previous: Option<PathBuf>,
    /// Every placed shard opened on the node (when CouchDB's URL is known).
    pub checks: Vec<DbCheck>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterRestoreReport {
    pub backup_id: String,
    pub members: usize,
    /// Shard files placed (each copy counts) and their bytes.
    pub files: u64,
    pub bytes: u64,
    pub placement: Placement,
    /// Databases the new cluster had, deleted before the restore.
    pub replaced: Vec<String>,
    pub checks: Vec<DbCheck>,
}

impl ClusterRestoreReport {
    /// Before the maps are written and checked: what the nodes placed.
    fn of(
        m: &ClusterManifest,
        placement: Placement,
        replaced: Vec<String>,
        placed: &[Share],
    ) -> ClusterRestoreReport {
        ClusterRestoreReport {
            backup_id: m.backup_id.clone(),
            members: m.members.len(),
            files: placed.iter().map(|p| p.files).sum(),
            bytes: placed.iter().map(|p| p.bytes).sum(),
            placement,
            replaced,
            checks: Vec::new(),
        }
    }
}

impl Vault {
    /// A node's share of a cluster backup, as backup `id` of the job's member instance;
    /// a backup `id` committed already (the job delivered again after a crash) is kept.
    /// Returns its stored bytes.
    pub fn cluster_member_backup(
        &self,
        job: &MemberJob,
        id: ulid::Ulid,
        spec: &SourceSpec,
        progress: &Progress,
    ) -> Result<u64> {
        let keyring = self.keyring()?;
        if let Ok(meta) = catalog::load(&*self.store, &keyring, &job.tenant, &id.to_string()) {
            return Ok(meta.data.size);
        }
        let mut source = Source::discover(spec).map_err(crate::Error::from)?;
        source.shards = Some(job.shards.iter().cloned().collect());
        let req = BackupRequest {
            backup_id: Some(id),
            tenant: job.tenant.clone(),
            instance: job.member_instance(),
            protection: None,
            retention: None,
            schedule: None,
            compression_level: None,
            tags: Default::default(),
            allow_incomplete: false,
            couchdb: None,
            kind: Some(Kind::Full),
            prefix_check: None,
            cluster_member: Some(MemberOf {
                cluster_backup: job.backup.clone(),
                cluster_instance: job.instance.clone(),
                settings: job.settings.clone(),
            }),
        };
        Ok(self.backup(&req, &source, progress)?.meta.data.size)
    }

    /// Queues a cluster backup of `instance` for the coordinating daemon ([cluster] broker)
    /// and, with `wait`, waits until it settles (within the deadline, plus a takeover's
    /// margin; `progress` cancels the wait, not the backup). Returns its id and, when waited
    /// for, the committed manifest.
    pub fn request_cluster_backup(
        &self,
        req: &ClusterBackupAsk,
        progress: &Progress,
    ) -> Result<ClusterBackupQueued> {
        let (tenant, instance) = (req.tenant.as_str(), req.instance.as_str());
        crate::names::validate_name("instance", instance).map_err(crate::Error::from)?;
        let cfg = &self.config.cluster;
        let Some(url) = &cfg.broker else {
            return Err(OpsError::Refused(
                "cluster backups go through the cluster's broker: set [cluster] broker".into(),
            ));
        };
        let protection = req
            .protection
            .as_ref()
            .or(self.config.policy.protection.as_ref());
        let (settings, notes) = match protection {
            Some(name) => self.cluster_protection(tenant, instance, name, progress)?,
            None => Default::default(),
        };
        let request = ClusterBackupRequest {
            v: 1,
            backup: ulid::Ulid::new().to_string(),
            tenant: tenant.to_string(),
            instance: instance.to_string(),
            settings,
        };
        let wait = req.wait;
        let id = request.backup.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| OpsError::io("starting a runtime for the broker", e))?;
        let outcome = runtime.block_on(async {
            let broker = Broker::connect(url, cfg.timings()).await?;
            broker.dispatch(COORDINATOR_QUEUE, &id, &request).await?;
            if !wait {
                return Ok(None);
            }
            let until = Instant::now() + cfg.deadline.get() + broker.timings().lease * 2;
            loop {
                if let Some(o) = broker.record::<ClusterOutcome>(&result_key(&id)).await? {
                    return Ok(Some(o));
                }
                if progress.is_cancelled() {
                    return Err(OpsError::Refused(format!(
                        "stopped waiting for cluster backup {id}; it goes on: see `cluster list`"
                    )));
                }
                if Instant::now() > until {
                    return Err(OpsError::Refused(format!(
                        "cluster backup {id} did not settle within its deadline: is a daemon with [cluster] broker and coordinate = true running?"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })?;
        let manifest = match outcome {
            None => None,
            Some(ClusterOutcome::Failed { error, .. }) => {
                return Err(OpsError::Refused(format!(
                    "cluster backup {id} failed, nothing was committed: {error}"
                )))
            }
            Some(ClusterOutcome::Committed { .. }) => Some(manifest::load(
                &*self.store,
                &self.keyring()?,
                tenant,
                instance,
                &id,
            )?),
        };
        Ok(ClusterBackupQueued {
            id,
            manifest,
            notes,
        })
    }

    /// The tenant's protection policy `name`, asked once for a whole cluster backup of
    /// `instance` (its size: the cluster's databases now through [couchdb] url, else 0),
    /// floors applied: the level, key and tags of every member. A cluster backup is full
    /// whatever kind it asks for.
    fn cluster_protection(
        &self,
        tenant: &str,
        instance: &str,
        name: &str,
        progress: &Progress,
    ) -> Result<(MemberSettings, Vec<String>)> {
        let mut notes = Vec::new();
        let read = match self.couch_client_for(None)? {
            Some(client) => crate::cluster::shards::read(&client).map_err(|e| e.to_string()),
            None => Err("no [couchdb] url".into()),
        };
        // The size informs the policy; the coordinator reads the cluster through its own node.
        let size = match read {
            Ok((_, details)) => details.values().map(|d| d.size).sum(),
            Err(why) => {
                notes.push(format!(
                    "protection policy '{name}' was told the cluster's size is 0: it could not be read here ({why})"
                ));
                0
            }
        };
        let mut host = self.policy_host()?;
        host.cancel_on(progress.cancel_flag());
        let req = BackupRequest {
            tenant: tenant.to_string(),
            instance: instance.to_string(),
            ..Default::default()
        };
        let decision = self
            .protection(&host, &self.keyring()?, name, &req, size, &[])
            .map_err(|e| OpsError::Protection {
                name: name.to_string(),
                source: Box::new(e),
            })?;
        notes.extend(
            decision
                .overrides
                .iter()
                .map(|o| format!("protection policy '{name}': {o}")),
        );
        if decision.kind != Kind::Full {
            notes.push(format!(
                "protection policy '{name}' asked for a {} backup: a cluster backup is full",
                decision.kind
            ));
        }
        let mut tags = std::collections::BTreeMap::new();
        for (k, v) in decision.tags {
            match crate::names::validate_tags([(&k, &v)]) {
                Ok(()) => {
                    tags.insert(k, v);
                }
                Err(why) => notes.push(format!("protection policy '{name}': tag dropped: {why}")),
            }
        }
        let settings = MemberSettings {
            compression_level: Some(decision.compression_level),
            key_id: decision.key_id,
            tags,
            protection_policy: Some(name.to_string()),
        };
        Ok((settings, notes))
    }

    /// Retention over a cluster instance's backups as wholes: the tenant's retention policy
    /// decides over them (each a full backup of its members' size), the floors hold, and
    /// each one not kept is deleted with its members.
    pub fn cluster_retention(
        &self,
        tenant: &str,
        name: &str,
        instance: &str,
        cancel: &Progress,
    ) -> Result<Vec<crate::policy::floors::Verdict>> {
        let mut host = self.policy_host()?;
        host.cancel_on(cancel.cancel_flag());
        let mut backups: Vec<crate::policy::BackupInfo> = self
            .cluster_backups(tenant, Some(instance))?
            .iter()
            .map(|m| crate::policy::BackupInfo {
                id: m.backup_id.clone(),
                created_at: m.started_at,
                size: m.members.iter().map(|x| x.stored_bytes).sum(),
                kind: Kind::Full.to_string(),
                parent: None,
                tags: Vec::new(),
                schedule: None,
            })
            .collect();
        backups.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        let verdicts = self.decide_retention(&host, tenant, name, instance, backups)?;
        for v in verdicts.iter().filter(|v| !v.keep) {
            self.delete_cluster_backup(tenant, instance, &v.id)?;
            tracing::info!(backup = %v.id, reason = %v.reason, "retention deleted a cluster backup");
        }
        Ok(verdicts)
    }

    /// A tenant's committed cluster backups (of one instance), oldest first; one whose
    /// manifest does not load is left out (`cluster_listing` says why).
    pub fn cluster_backups(
        &self,
        tenant: &str,
        instance: Option<&str>,
    ) -> Result<Vec<ClusterManifest>> {
        Ok(self
            .cluster_listing(tenant, instance)?
            .into_iter()
            .filter_map(|l| l.manifest.ok())
            .collect())
    }

    /// Every cluster manifest of a tenant (of one instance), oldest first, each loaded and
    /// authenticated or with why it did not load; several read at once.
    pub fn cluster_listing(
        &self,
        tenant: &str,
        instance: Option<&str>,
    ) -> Result<Vec<ClusterListed>> {
        let keyring = self.keyring()?;
        let prefix = instance.map(|i| format!("{i}/")).unwrap_or_default();
        let found: Vec<(String, String)> = self
            .store
            .list(tenant, &prefix)?
            .into_iter()
            .filter_map(|o| {
                let mut parts = o.name.split('/');
                match (parts.next(), parts.next(), parts.next(), parts.next()) {
                    (Some(inst), Some(id), Some(MANIFEST_FILE), None) => {
                        Some((inst.to_string(), id.to_string()))
                    }
                    _ => None,
                }
            })
            .collect();
        let loaded = crate::parallel::map(&found, crate::parallel::IO_WORKERS, |(inst, id)| {
            manifest::load(&*self.store, &keyring, tenant, inst, id)
        });
        let mut out: Vec<ClusterListed> = found
            .into_iter()
            .zip(loaded)
            .map(|((instance, backup_id), manifest)| ClusterListed {
                instance,
                backup_id,
                manifest,
            })
            .collect();
        out.sort_by(|a, b| a.backup_id.cmp(&b.backup_id));
        Ok(out)
    }

    /// Verifies every member of a cluster backup (nothing is written): one report for the
    /// whole, with each member's.
    pub fn verify_cluster_backup(
        &self,
        tenant: &str,
        instance: &str,
        id: &str,
        progress: &Progress,
    ) -> Result<super::VerifyReport> {
        let m = manifest::load(&*self.store, &self.keyring()?, tenant, instance, id)?;
        let members = m
            .members
            .iter()
            .map(|member| self.verify(tenant, &member.backup_id, false, progress))
            .collect::<Result<Vec<_>>>()?;
        Ok(super::VerifyReport::of_members(id, members))
    }

    /// The committed cluster backup `id` of a tenant, of whichever instance.
    pub fn find_cluster_backup(&self, tenant: &str, id: &str) -> Result<Option<ClusterManifest>> {
        let suffix = format!("/{id}/{MANIFEST_FILE}");
        let Some(o) = self
            .store
            .list(tenant, "")?
            .into_iter()
            .find(|o| o.name.ends_with(&suffix) && o.name.matches('/').count() == 2)
        else {
            return Ok(None);
        };
        let instance = &o.name[..o.name.len() - suffix.len()];
        Ok(Some(manifest::load(
            &*self.store,
            &self.keyring()?,
            tenant,
            instance,
            id,
        )?))
    }

    /// Deletes a cluster backup: its manifest first (it is no longer committed), then every
    /// member backup made for it (also those of jobs moved elsewhere). A delete cut off
    /// half-way is finished by `gc`, which removes members without a manifest.
    pub fn delete_cluster_backup(
        &self,
        tenant: &str,
        instance: &str,
        id: &str,
    ) -> Result<Vec<Deleted>> {
        manifest::load(&*self.store, &self.keyring()?, tenant, instance, id)?;
        let members = self.cluster_members(tenant, Some(id))?;
        self.store
            .delete(tenant, &manifest::manifest_object(instance, id))?;
        let mut deleted = Vec::new();
        for (meta, _) in &members {
            deleted.extend(self.delete(tenant, &meta.backup_id, false)?);
        }
        Ok(deleted)
    }

    /// Restores cluster backup `req.backup_id` into the cluster `client` talks to.
    pub fn restore_cluster(
        &self,
        client: &CouchClient,
        req: &ClusterRestoreRequest,
        progress: &Progress,
    ) -> Result<ClusterRestoreReport> {
        let keyring = self.keyring()?;
        let m = manifest::load(
            &*self.store,
            &keyring,
            &req.tenant,
            &req.instance,
            &req.backup_id,
        )?;
        let names = check_nodes(client, &req.nodes)?;
        let n = copies(client, req.n, names.len())?;
        let replaced = self.databases_to_replace(client, &m, req.replace)?;

        // Every member unpacked and verified before the new cluster is touched.
        let staging = staging_dir(req.staging.as_ref(), &req.nodes[0].data_dir, &m);
        let sources = self.unpack_members(&keyring, &m, |_| true, &staging, progress)?;

        let placement = place(&m.databases, &names, n);
        for db in &replaced {
            tracing::info!(%db, "deleting the new cluster's database before restoring it");
            client.delete_db(db)?;
        }
        let owner_spec = req
            .owner
            .as_deref()
            .or(self.config.restore.owner.as_deref());
        let mut placed = Vec::new();
        for node in &req.nodes {
            let owner = restore_owner(owner_spec, &node.data_dir)?;
            let dirs = (node.data_dir.as_path(), node.data_dir.as_path());
            placed.push(place_share(
                &m, &placement, &node.name, &sources, dirs, owner,
            )?);
        }
        fs::remove_dir_all(&staging)
            .map_err(|e| OpsError::io(format!("removing {}", staging.display()), e))?;
        let report = ClusterRestoreReport::of(&m, placement, replaced, &placed);
        finish_restore(client, &m, &names, report, req.settle)
    }

    /// Restores cluster backup `req.backup_id` into the cluster `client` talks to, each
    /// node's files placed by that node's daemon (`[cluster] broker`, a daemon registered
    /// for every node of `/_membership`): each stages its share (the members holding its
    /// ranges unpacked and verified) and places it only once every node has staged; when
    /// one fails, every node drops what it staged and nothing is placed. Then, as
    /// [`Vault::restore_cluster`], the shard maps and the checks.
    pub fn restore_cluster_via_daemons(
        &self,
        client: &CouchClient,
        req: &DaemonRestoreRequest,
        progress: &Progress,
    ) -> Result<ClusterRestoreReport> {
        let keyring = self.keyring()?;
        let m = manifest::load(
            &*self.store,
            &keyring,
            &req.tenant,
            &req.instance,
            &req.backup_id,
        )?;
        let cfg = &self.config.cluster;
        let Some(url) = &cfg.broker else {
            return Err(OpsError::Refused(
                "a restore through the new cluster's daemons goes through their broker: set [cluster] broker".into(),
            ));
        };
        let mut names = client.membership()?;
        names.sort();
        let n = copies(client, req.n, names.len())?;
        let replaced = self.databases_to_replace(client, &m, req.replace)?;
        let placement = place(&m.databases, &names, n);
        let restore = ulid::Ulid::new().to_string();
        let deadline = chrono::Utc::now().timestamp() + cfg.deadline.get().as_secs() as i64;
        let jobs: Vec<RestoreJob> = names
            .iter()
            .map(|node| RestoreJob {
                v: 1,
                id: RestoreJob::id_for(&restore, node),
                restore: restore.clone(),
                tenant: m.tenant.clone(),
                instance: m.instance.clone(),
                backup: m.backup_id.clone(),
                node: node.clone(),
                nodes: names.clone(),
                n,
                deadline,
            })
            .collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| OpsError::io("starting a runtime for the broker", e))?;
        let broker = runtime.block_on(Broker::connect(url, cfg.timings()))?;
        runtime.block_on(async {
            let registered: Vec<String> =
                broker.nodes().await?.into_iter().map(|r| r.node).collect();
            if let Some(missing) = names.iter().find(|n| !registered.contains(n)) {
                return Err(OpsError::Refused(format!(
                    "no daemon serves node {missing} of the new cluster: run `couchvault daemon` there with [cluster] broker = \"{url}\" and node = \"{missing}\" (registered: {})",
                    registered.join(", ")
                )));
            }
            for job in &jobs {
                broker.dispatch(&job.node, &job.id, job).await?;
            }
            let staged = settle(&broker, &jobs, deadline, progress, |s| {
                matches!(s, JobState::Staged { .. })
            })
            .await;
            if let Err(e) = staged {
                broker
                    .put_record(&go_key(&restore), &Go::Abort { v: 1 })
                    .await?;
                return Err(e.context("nothing was placed: every node drops what it staged"));
            }
            Ok(())
        })?;
        for db in &replaced {
            tracing::info!(%db, "deleting the new cluster's database before restoring it");
            client.delete_db(db)?;
        }
        let placed = runtime.block_on(async {
            broker
                .put_record(&go_key(&restore), &Go::Place { v: 1 })
                .await?;
            settle(&broker, &jobs, deadline, progress, |s| {
                matches!(s, JobState::Placed { .. })
            })
            .await
            .map_err(|e| {
                e.context("the other nodes placed theirs: once it is fixed, run the restore again (it places every file again)")
            })
        })?;
        let placed: Vec<Share> = placed
            .into_iter()
            .filter_map(|state| match state {
                JobState::Placed { files, bytes, .. } => Some(Share { files, bytes }),
                _ => None,
            })
            .collect();
        let report = ClusterRestoreReport::of(&m, placement, replaced, &placed);
        finish_restore(client, &m, &names, report, req.settle)
    }

    /// A node's share of a restore through the daemons (its agent's restore job): the
    /// members holding its ranges unpacked and verified into a staging directory beside its
    /// database directory, then `go` asked: placed into the node's directories when it says
    /// so, else dropped (None). The staging directory is removed either way.
    pub fn restore_share(
        &self,
        job: &RestoreJob,
        spec: &SourceSpec,
        go: &dyn Fn(Share) -> bool,
        progress: &Progress,
    ) -> Result<Option<Share>> {
        let keyring = self.keyring()?;
        let m = manifest::load(
            &*self.store,
            &keyring,
            &job.tenant,
            &job.instance,
            &job.backup,
        )?;
        let source = Source::discover(spec).map_err(crate::Error::from)?;
        let data_dir = source.database_dir.clone();
        let index_dir = source
            .view_index_dir
            .clone()
            .unwrap_or_else(|| data_dir.clone());
        let placement = place(&m.databases, &job.nodes, job.n);
        let mine: std::collections::BTreeSet<String> = shards_on(&m, &placement, &job.node)
            .map(|(shard, _, _)| shard)
            .collect();
        let staging = data_dir
            .parent()
            .unwrap_or(Path::new("/"))
            .join(format!(".couchvault-restore-{}", job.restore));
        let remove = || match fs::remove_dir_all(&staging) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(OpsError::io(format!("removing {}", staging.display()), e))
            }
            _ => Ok(()),
        };
        // A job delivered again starts over.
        remove()?;
        let unpacked = self.unpack_members(
            &keyring,
            &m,
            |member| member.shards.iter().any(|s| mine.contains(s)),
            &staging,
            progress,
        );
        let sources = match unpacked {
            Ok(s) => s,
            Err(e) => {
                let _ = remove();
                return Err(e);
            }
        };
        let size = |shard: &String| {
            sources
                .get(shard)
                .and_then(|dir| fs::metadata(dir.join(shard)).ok())
                .map_or(0, |md| md.len())
        };
        let share = Share {
            files: mine.len() as u64,
            bytes: mine.iter().map(size).sum(),
        };
        if !go(share) {
            remove()?;
            return Ok(None);
        }
        let placed =
            restore_owner(self.config.restore.owner.as_deref(), &data_dir).and_then(|owner| {
                let dirs = (data_dir.as_path(), index_dir.as_path());
                place_share(&m, &placement, &job.node, &sources, dirs, owner)
            });
        remove()?;
        placed.map(Some)
    }

    /// Unpacks and verifies the members `wanted` picks into `staging/<index>/data`; returns
    /// each shard file (`shards/<range>/<db><suffix>.couch`) with the directory holding it.
    fn unpack_members(
        &self,
        keyring: &crate::keyring::KeyRing,
        m: &ClusterManifest,
        wanted: impl Fn(&manifest::Member) -> bool,
        staging: &Path,
        progress: &Progress,
    ) -> Result<BTreeMap<String, PathBuf>> {
        let mut sources = BTreeMap::new();
        for (i, member) in m.members.iter().enumerate().filter(|(_, x)| wanted(x)) {
            let meta = catalog::load(&*self.store, keyring, &m.tenant, &member.backup_id)?;
            if meta.instance != member.member_instance {
                return Err(OpsError::Refused(format!(
                    "cluster backup {}: member {} belongs to instance '{}', not '{}' (a swapped member)",
                    m.backup_id, member.backup_id, meta.instance, member.member_instance
                )));
            }
            let chain = catalog::chain(&*self.store, keyring, meta)?;
            let dir = staging.join(i.to_string()).join("data");
            fs::create_dir_all(staging)
                .map_err(|e| OpsError::io(format!("creating {}", staging.display()), e))?;
            let opts = RestoreOptions {
                target: dir.clone(),
                view_index_target: None,
                config_target: None,
                force: true,
                discard_old: true,
                owner: None,
                sync: false,
            };
            engine::restore_with(&*self.store, keyring, &chain, &opts, progress, &|| Ok(()))?;
            for shard in &member.shards {
                sources.insert(shard.clone(), dir.clone());
            }
        }
        Ok(sources)
    }

    /// Restores one node of the cluster a backup was taken of (its disk lost, the other
    /// nodes alive): every shard range the backup's maps place on it, from whichever member
    /// read it, with its view indexes. CouchDB on the node is stopped and started with the
    /// hooks around the swap; the files it had are kept aside; once it is up, CouchDB's
    /// internal replication brings it the writes made since the backup.
    pub fn restore_cluster_node(
        &self,
        client: Option<&CouchClient>,
        req: &NodeRestoreRequest,
        progress: &Progress,
    ) -> Result<NodeRestoreReport> {
        let keyring = self.keyring()?;
        let m = manifest::load(
            &*self.store,
            &keyring,
            &req.tenant,
            &req.instance,
            &req.backup_id,
        )?;
        let node = &req.node;
        let mut shards = Vec::new();
        for (db, map) in &m.databases {
            for (range, holders) in &map.by_range {
                if holders.contains(&node.name) {
                    shards.push((db.clone(), range.clone(), map.suffix.clone()));
                }
            }
        }
        if shards.is_empty() {
            let mut names: Vec<&String> = m
                .databases
                .values()
                .flat_map(|d| d.by_range.values().flatten())
                .collect();
            names.sort();
            names.dedup();
            return Err(OpsError::Refused(format!(
                "cluster backup {} places no shard on node '{}'; its nodes were {}",
                m.backup_id,
                node.name,
                names
                    .iter()
                    .map(|n| format!("'{n}'"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if !node.data_dir.is_dir() {
            return Err(OpsError::Refused(format!(
                "node {}: its database directory {} does not exist",
                node.name,
                node.data_dir.display()
            )));
        }
        let files: Vec<String> = shards
            .iter()
            .map(|(db, range, suffix)| format!("shards/{range}/{db}{suffix}.couch"))
            .collect();
        let staging = staging_dir(req.staging.as_ref(), &node.data_dir, &m);
        let sources = self.unpack_members(
            &keyring,
            &m,
            |x| x.shards.iter().any(|s| files.contains(s)),
            &staging,
            progress,
        )?;
        if let Some(missing) = files.iter().find(|f| !sources.contains_key(*f)) {
            return Err(OpsError::Refused(format!(
                "cluster backup {}: no member holds {missing} (a damaged manifest)",
                m.backup_id
            )));
        }
        let owner = restore_owner(
            req.owner
                .as_deref()
                .or(self.config.restore.owner.as_deref()),
            &node.data_dir,
        )?;
        if let Some(stop) = &req.hooks.stop {
            super::restore::run_hook("stop", stop)?;
        }
        // Beside the directory, not in it: CouchDB looks for databases all through it.
        let mut aside = node.data_dir.clone().into_os_string();
        aside.push(format!(".couchvault-old-{}", m.backup_id));
        let aside = PathBuf::from(aside);
        let (mut placed, mut bytes) = (0, 0);
        for ((db, range, suffix), file) in shards.iter().zip(&files) {
            let from = &sources[file];
            let index = format!(".shards/{range}/{db}{suffix}_design");
            for rel in [file.as_str(), index.as_str()] {
                let current = node.data_dir.join(rel);
                if current.exists() {
                    let to = aside.join(rel);
                    let parent = to.parent().unwrap_or(&aside);
                    fs::create_dir_all(parent)
                        .map_err(|e| OpsError::io(format!("creating {}", parent.display()), e))?;
                    fs::rename(&current, &to).map_err(|e| {
                        OpsError::io(format!("moving {} aside", current.display()), e)
                    })?;
                }
            }
            bytes += place_file(&from.join(file), &node.data_dir.join(file), owner)?;
            placed += 1;
            if from.join(&index).is_dir() {
                place_dir(&from.join(&index), &node.data_dir.join(&index), owner)?;
            }
        }
        if let Some(start) = &req.hooks.start {
            super::restore::run_hook("start", start)?;
        }
        let mut checks = Vec::new();
        if let Some(client) = client {
            client.wait_up(req.settle)?;
            for (db, range, suffix) in &shards {
                let shard = format!("shards/{range}/{db}{suffix}");
                let opened = client.node_get(&node.name, &format!("/{}", encode_db(&shard)));
                checks.push(DbCheck {
                    database: format!("{db} {range}"),
                    recorded: None,
                    now: opened
                        .as_ref()
                        .ok()
                        .and_then(|v| v.get("doc_count").and_then(serde_json::Value::as_u64)),
                    ok: opened.is_ok(),
                    error: opened.err().map(|e| e.to_string()),
                });
            }
        }
        fs::remove_dir_all(&staging)
            .map_err(|e| OpsError::io(format!("removing {}", staging.display()), e))?;
        let report = NodeRestoreReport {
            backup_id: m.backup_id.clone(),
            node: node.name.clone(),
            files: placed,
            bytes,
            previous: aside.exists().then_some(aside),
            checks,
        };
        if report.checks.iter().any(|c| !c.ok) {
            return Err(OpsError::PostCheck {
                message: format!(
                    "node {} was restored from cluster backup {}, but shards do not open on it; its previous files are in {}",
                    report.node,
                    report.backup_id,
                    report
                        .previous
                        .as_ref()
                        .map_or("(none)".into(), |p| p.display().to_string())
                ),
                checks: report.checks,
            });
        }
        Ok(report)
    }

    /// The backup's databases that the new cluster has: replaced when they hold only design
    /// documents or `replace` is set; any other is refused before anything changes.
    fn databases_to_replace(
        &self,
        client: &CouchClient,
        m: &ClusterManifest,
        replace: bool,
    ) -> Result<Vec<String>> {
        let mut replaced = Vec::new();
        let mut refused = Vec::new();
        for db in client.all_dbs()? {
            if !m.databases.contains_key(&db) {
                continue;
            }
            if replace || client.only_design_docs(&db)? {
                replaced.push(db);
            } else {
                refused.push(db);
            }
        }
        if !refused.is_empty() {
            return Err(OpsError::Refused(format!(
                "the new cluster already has database(s) {} with documents: restore into a cluster without them, delete them, or pass --replace to delete them first",
                refused.join(", ")
            )));
        }
        Ok(replaced)
    }
}

/// Copies of each range in the new cluster: as asked, else its `[cluster] n`, at most its
/// node count.
fn copies(client: &CouchClient, asked: Option<usize>, nodes: usize) -> Result<usize> {
    let n = match asked {
        Some(n) => n,
        None => client.cluster_n()?.unwrap_or(3),
    };
    Ok(n.clamp(1, nodes.max(1)))
}

/// The shard files `placement` puts on `node`: (shard file, database, range).
fn shards_on<'a>(
    m: &'a ClusterManifest,
    placement: &'a Placement,
    node: &'a str,
) -> impl Iterator<Item = (String, &'a str, &'a str)> + 'a {
    placement.iter().flat_map(move |(db, ranges)| {
        let suffix = &m.databases[db].suffix;
        ranges
            .iter()
            .filter(move |(_, holders)| holders.iter().any(|h| h == node))
            .map(move |(range, _)| {
                (
                    format!("shards/{range}/{db}{suffix}.couch"),
                    db.as_str(),
                    range.as_str(),
                )
            })
    })
}

/// Places `node`'s share: each of its shard files from the member that holds it
/// (`sources`) into the database directory, with the range's view indexes into the view
/// index directory.
fn place_share(
    m: &ClusterManifest,
    placement: &Placement,
    node: &str,
    sources: &BTreeMap<String, PathBuf>,
    (data_dir, index_dir): (&Path, &Path),
    owner: Option<(Uid, Gid)>,
) -> Result<Share> {
    let mut placed = Share { files: 0, bytes: 0 };
    for (shard, db, range) in shards_on(m, placement, node) {
        let from = sources.get(&shard).ok_or_else(|| {
            OpsError::Refused(format!(
                "cluster backup {}: no member holds {shard} (a damaged manifest)",
                m.backup_id
            ))
        })?;
        placed.bytes += place_file(&from.join(&shard), &data_dir.join(&shard), owner)?;
        placed.files += 1;
        let index = format!(".shards/{range}/{db}{}_design", m.databases[db].suffix);
        if from.join(&index).is_dir() {
            place_dir(&from.join(&index), &index_dir.join(&index), owner)?;
        }
    }
    Ok(placed)
}

/// With every node's files in place: the shard maps written, seen by every node, and every
/// database checked on every node that holds it.
fn finish_restore(
    client: &CouchClient,
    m: &ClusterManifest,
    names: &[String],
    mut report: ClusterRestoreReport,
    settle: Duration,
) -> Result<ClusterRestoreReport> {
    for (db, ranges) in &report.placement {
        let doc = shard_map_doc(db, &m.databases[db], ranges);
        write_map(client, db, &doc, report.replaced.contains(db))?;
    }
    for (db, ranges) in &report.placement {
        wait_for_map(client, names, db, ranges, settle)?;
    }
    report.checks = check_cluster(client, m, &report.placement);
    let failed = failed_checks(&report.checks);
    if !failed.is_empty() {
        return Err(OpsError::PostCheck {
            message: format!(
                "cluster backup {} was restored, but the check failed for {} database(s): {}",
                m.backup_id,
                failed.len(),
                failed.join("; ")
            ),
            checks: report.checks,
        });
    }
    Ok(report)
}

/// Waits until every job's state is `reached`; a failed job, or the deadline, is an error
/// naming the node and why. Returns the states.
async fn settle(
    broker: &Broker,
    jobs: &[RestoreJob],
    deadline: i64,
    progress: &Progress,
    reached: impl Fn(&JobState) -> bool,
) -> std::result::Result<Vec<JobState>, Unsettled> {
    loop {
        let mut states = Vec::new();
        for job in jobs {
            let state = broker
                .record::<JobState>(&job.id)
                .await
                .map_err(|e| Unsettled(e.to_string()))?;
            if let Some(JobState::Failed { error, .. }) = &state {
                return Err(Unsettled(format!("node {}: {error}", job.node)));
            }
            states.push(state);
        }
        if states.iter().all(|s| s.as_ref().is_some_and(&reached)) {
            return Ok(states.into_iter().flatten().collect());
        }
        if progress.is_cancelled() {
            return Err(Unsettled("stopped".into()));
        }
        if chrono::Utc::now().timestamp() > deadline {
            let late: Vec<&str> = jobs
                .iter()
                .zip(&states)
                .filter(|(_, s)| !s.as_ref().is_some_and(&reached))
                .map(|(j, _)| j.node.as_str())
                .collect();
            return Err(Unsettled(format!(
                "node(s) {} did not finish within [cluster] deadline: are their daemons running?",
                late.join(", ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Why the nodes of a restore did not all get where they were asked.
#[derive(Debug)]
struct Unsettled(String);

impl Unsettled {
    fn context(self, then: &str) -> OpsError {
        OpsError::Refused(format!(
            "cluster restore through the daemons: {}; {then}",
            self.0
        ))
    }
}

/// Where members are unpacked: as asked, else beside `near`.
fn staging_dir(asked: Option<&PathBuf>, near: &Path, m: &ClusterManifest) -> PathBuf {
    asked.cloned().unwrap_or_else(|| {
        near.parent()
            .unwrap_or(Path::new("/"))
            .join(format!(".couchvault-cluster-{}", m.backup_id))
    })
}

/// The nodes named must be exactly the cluster's (`/_membership`): every range is placed on
/// nodes CouchDB knows, and every node CouchDB knows gets its share.
fn check_nodes(client: &CouchClient, nodes: &[TargetNode]) -> Result<Vec<String>> {
    if nodes.is_empty() {
        return Err(OpsError::Refused(
            "a cluster restore needs the new cluster's nodes: --node NAME=DATA_DIR for each".into(),
        ));
    }
    let mut members = client.membership()?;
    members.sort();
    let mut named: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    named.sort();
    if members != named {
        return Err(OpsError::Refused(format!(
            "the nodes given ({}) are not the cluster's ({}): name every node of the new cluster once, with its database directory",
            named.join(", "),
            members.join(", ")
        )));
    }
    for node in nodes {
        if !node.data_dir.is_dir() {
            return Err(OpsError::Refused(format!(
                "node {}: its database directory {} does not exist",
                node.name,
                node.data_dir.display()
            )));
        }
    }
    Ok(named)
}

/// Copies a shard file in under a temporary name, flushed and owned, then renames it in:
/// CouchDB never sees half a file.
fn place_file(from: &Path, to: &Path, owner: Option<(Uid, Gid)>) -> Result<u64> {
    let io = |what: &str, p: &Path, e| OpsError::io(format!("{what} {}", p.display()), e);
    let dir = to.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(dir).map_err(|e| io("creating", dir, e))?;
    let tmp = dir.join(format!(
        ".{}.couchvault-tmp",
        to.file_name().unwrap_or_default().to_string_lossy()
    ));
    let bytes = {
        let mut src = fs::File::open(from).map_err(|e| io("reading", from, e))?;
        let mut dst = fs::File::create(&tmp).map_err(|e| io("writing", &tmp, e))?;
        let n = std::io::copy(&mut src, &mut dst).map_err(|e| io("writing", &tmp, e))?;
        dst.flush().map_err(|e| io("writing", &tmp, e))?;
        dst.sync_all().map_err(|e| io("flushing", &tmp, e))?;
        n
    };
    if let Some((uid, gid)) = owner {
        nix::unistd::chown(&tmp, Some(uid), Some(gid))
            .map_err(|e| io("changing the owner of", &tmp, e.into()))?;
    }
    fs::rename(&tmp, to).map_err(|e| io("renaming into place", to, e))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("flushing", dir, e))?;
    Ok(bytes)
}

/// A shard's view index directory, copied whole and renamed in (replacing a stale one).
fn place_dir(from: &Path, to: &Path, owner: Option<(Uid, Gid)>) -> Result<()> {
    let io = |what: &str, p: &Path, e| OpsError::io(format!("{what} {}", p.display()), e);
    let tmp = to.with_extension("couchvault-tmp");
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| io("removing", &tmp, e))?;
    }
    copy_tree(from, &tmp)?;
    if let Some((uid, gid)) = owner {
        engine::restore::chown_tree(&tmp, uid, gid)?;
    }
    if to.exists() {
        fs::remove_dir_all(to).map_err(|e| io("removing", to, e))?;
    }
    fs::rename(&tmp, to).map_err(|e| io("renaming into place", to, e))
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let io = |what: &str, p: &Path, e| OpsError::io(format!("{what} {}", p.display()), e);
    fs::create_dir_all(to).map_err(|e| io("creating", to, e))?;
    for entry in fs::read_dir(from).map_err(|e| io("reading", from, e))? {
        let entry = entry.map_err(|e| io("reading", from, e))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry
            .file_type()
            .map_err(|e| io("reading", &src, e))?
            .is_dir()
        {
            copy_tree(&src, &dst)?;
        } else {
            fs::copy(&src, &dst).map_err(|e| io("copying", &src, e))?;
            fs::File::open(&dst)
                .and_then(|f| f.sync_all())
                .map_err(|e| io("flushing", &dst, e))?;
        }
    }
    Ok(())
}

/// Writes a database's shard map once (the cluster replicates `_dbs` to every node); a
/// rerun finds its own map there and leaves it. A database being replaced may have been
/// created again since its delete (CouchDB recreates `_users` at once, with a new
/// suffix): it is deleted again, so the backup's files are the ones opened.
fn write_map(
    client: &CouchClient,
    db: &str,
    doc: &serde_json::Value,
    replacing: bool,
) -> Result<()> {
    let ours = |d: &serde_json::Value| {
        d.get("by_range") == doc.get("by_range") && d.get("shard_suffix") == doc.get("shard_suffix")
    };
    for _ in 0..10 {
        match client.shard_map(db) {
            Ok(existing) if ours(&existing) => return Ok(()),
            Ok(_) if replacing => client.delete_db(db)?,
            Ok(_) => {
                return Err(OpsError::Refused(format!(
                    "database '{db}' appeared in the new cluster while restoring: nothing else may create it during a restore"
                )))
            }
            // Absent, or deleted: ours to write (a conflict with a recreation loops).
            Err(_) => {
                if client.put_shard_map(db, doc).is_ok() {
                    return Ok(());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(OpsError::Refused(format!(
        "the shard map of '{db}' could not be written: something in the new cluster keeps creating it"
    )))
}

/// Waits until every node holds the database's new shard map.
fn wait_for_map(
    client: &CouchClient,
    nodes: &[String],
    db: &str,
    ranges: &BTreeMap<String, Vec<String>>,
    within: Duration,
) -> Result<()> {
    let want = serde_json::to_value(ranges).unwrap_or_default();
    let deadline = Instant::now() + within;
    for node in nodes {
        loop {
            let doc = client.node_get(node, &format!("/_dbs/{}", encode_db(db)));
            if doc.as_ref().is_ok_and(|d| d.get("by_range") == Some(&want)) {
                break;
            }
            if Instant::now() >= deadline {
                return Err(OpsError::Refused(format!(
                    "the shard map of '{db}' did not reach node {node} within {}s ({}); the files are in place: check the node and its `_dbs` replication, then run the restore again",
                    within.as_secs(),
                    doc.err().map_or("another map there".into(), |e| e.to_string())
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(())
}

/// Every database through the cluster (at least the documents it had when the backup
/// started), and every placed shard opened on its node.
fn check_cluster(client: &CouchClient, m: &ClusterManifest, placement: &Placement) -> Vec<DbCheck> {
    placement
        .iter()
        .map(|(db, ranges)| {
            let map = &m.databases[db];
            let want = map.detail.doc_count;
            let mut error = None;
            let now = match client.doc_count(db) {
                Ok(now) if now < want => {
                    error = Some(format!("{now} documents, fewer than the {want} recorded"));
                    Some(now)
                }
                Ok(now) => Some(now),
                Err(e) => {
                    error = Some(e.to_string());
                    None
                }
            };
            for (range, holders) in ranges {
                for node in holders {
                    let shard = format!("shards/{range}/{db}{}", map.suffix);
                    if let Err(e) = client.node_get(node, &format!("/{}", encode_db(&shard))) {
                        error.get_or_insert(format!("{shard} does not open on {node}: {e}"));
                    }
                }
            }
            DbCheck {
                database: db.clone(),
                recorded: Some(want),
                now,
                ok: error.is_none(),
                error,
            }
        })
        .collect()
}
