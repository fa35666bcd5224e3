//! The coordinator of a cluster backup: the daemon holding the lease plans it, queues one
//! member job per node with a share, watches the jobs and the nodes, moves the ranges of a
//! job that fails or whose node disappears onto other replicas, and returns the manifest to
//! commit once every member has committed, all within the backup's deadline.
//!
//! Its progress (the plan, the jobs and their shards) is kept on the broker before anything
//! is queued and after every change: a coordinator that takes over a dead one's lease
//! resumes the same backup from there.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use super::broker::{Broker, BrokerError, Lease};
use super::job::{plan_key, JobEntry, JobState, MemberJob, MemberSettings, Progress};
use super::manifest::{self, ClusterManifest, Member};
use super::plan::{Plan, PlanError};
use super::shards::DbDetail;
use crate::couchdb::http::CouchClient;
use crate::couchdb::shardmap::DbShards;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("cluster backup {backup}: {source}")]
    Plan { backup: String, source: PlanError },
    #[error("cluster backup {backup}: this daemon lost the coordinator lease (another coordinator carries on)")]
    LostLease { backup: String },
    #[error("cluster backup {backup} missed its deadline with {} member jobs unsettled ({}); nothing was committed", pending.len(), pending.join(", "))]
    Deadline {
        backup: String,
        pending: Vec<String>,
    },
}

/// A cluster backup to take (or to resume, with the same `backup` id).
#[derive(Debug, Clone)]
pub struct ClusterRequest {
    /// A ULID.
    pub backup: String,
    pub tenant: String,
    pub instance: String,
    /// The tenant key that seals the manifest.
    pub key_id: String,
    /// From the start of the backup.
    pub deadline: Duration,
    /// How often jobs and nodes are looked at.
    pub poll: Duration,
    /// CouchDB nodes that were down when the backup began: their copies may be stale, so
    /// none is read, whatever their daemons say.
    pub down: BTreeSet<String>,
    /// How every member is made (the protection policy's decision).
    pub settings: MemberSettings,
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Plans (or resumes) and carries out `req` while holding `lease`; `maps` and `details` are
/// the cluster's shard maps and databases ([`super::shards::read`] when the backup starts).
/// With `couch` (the cluster's API), a node whose CouchDB drops out of the cluster while
/// the backup runs has its unfinished ranges moved, as a node whose daemon disappears.
pub async fn run(
    broker: &Broker,
    lease: &mut Lease,
    req: &ClusterRequest,
    maps: &[DbShards],
    details: &BTreeMap<String, DbDetail>,
    couch: Option<Arc<CouchClient>>,
) -> Result<ClusterManifest, ClusterError> {
    let backup = req.backup.clone();
    let plan_err = |source| ClusterError::Plan {
        backup: backup.clone(),
        source,
    };
    let key = plan_key(&backup);
    let mut progress = match broker.record::<Progress>(&key).await? {
        Some(p) => {
            tracing::info!(%backup, "resuming a cluster backup another coordinator began");
            p
        }
        None => {
            let up = live(broker, &req.down).await?;
            let plan = Plan::new(maps, &up, |db| details.get(db).map_or(0, |d| d.size))
                .map_err(plan_err)?;
            let jobs = plan
                .nodes
                .iter()
                .map(|(node, share)| JobEntry {
                    node: node.clone(),
                    id: MemberJob::id_for(&backup, node, 0),
                    shards: share.ranges.iter().map(|r| r.file()).collect(),
                })
                .collect();
            let p = Progress {
                v: 1,
                backup: backup.clone(),
                tenant: req.tenant.clone(),
                instance: req.instance.clone(),
                rounds: plan.nodes.keys().map(|n| (n.clone(), 1)).collect(),
                plan,
                jobs,
                deadline: now() + req.deadline.as_secs() as i64,
                settings: req.settings.clone(),
            };
            // Recorded before anything is queued: a successor resumes rather than re-plans.
            broker.put_record(&key, &p).await?;
            p
        }
    };
    // A broker that fails for a while (restarted, a network blip) is waited out within the
    // deadline: the next round sends again every job nobody has taken.
    let mut resend = true;
    let mut pending = Vec::new();
    loop {
        match round(
            broker,
            lease,
            req,
            maps,
            &mut progress,
            resend,
            couch.as_ref(),
        )
        .await
        {
            Ok(None) => break,
            Ok(Some(p)) => (pending, resend) = (p, false),
            Err(ClusterError::Broker(e)) => {
                tracing::warn!(%backup, error = %e, "broker unavailable: retrying");
                resend = true;
            }
            Err(e) => return Err(e),
        }
        if now() > progress.deadline {
            return Err(ClusterError::Deadline { backup, pending });
        }
        tokio::time::sleep(req.poll).await;
    }

    let mut members = Vec::new();
    for e in &progress.jobs {
        if let Some(JobState::Committed {
            member,
            stored_bytes,
            ..
        }) = broker.record::<JobState>(&e.id).await?
        {
            members.push(Member {
                node: e.node.clone(),
                backup_id: member,
                member_instance: progress.job(e).member_instance(),
                shards: e.shards.clone(),
                stored_bytes,
            });
        }
    }
    Ok(ClusterManifest {
        version: manifest::MANIFEST_VERSION,
        backup_id: backup,
        tenant: req.tenant.clone(),
        instance: req.instance.clone(),
        started_at: progress.deadline - req.deadline.as_secs() as i64,
        committed_at: now(),
        key_id: req.key_id.clone(),
        members,
        databases: manifest::db_maps(maps, details),
    })
}

/// One look at the jobs: the lease renewed, unsent jobs sent (after a takeover or a broker
/// failure: the broker drops a job id it queued in the last two minutes, and an agent drops
/// a settled one), the ranges of failed or vanished jobs moved. None once every member has
/// committed, else the jobs still running.
async fn round(
    broker: &Broker,
    lease: &mut Lease,
    req: &ClusterRequest,
    maps: &[DbShards],
    progress: &mut Progress,
    resend: bool,
    couch: Option<&Arc<CouchClient>>,
) -> Result<Option<Vec<String>>, ClusterError> {
    let backup = &req.backup;
    if !broker.renew(lease).await? {
        return Err(ClusterError::LostLease {
            backup: backup.clone(),
        });
    }
    if resend {
        broker.put_record(&plan_key(backup), &*progress).await?;
        for e in &progress.jobs {
            if broker.record::<JobState>(&e.id).await?.is_none() {
                broker.dispatch(&e.node, &e.id, &progress.job(e)).await?;
            }
        }
    }
    let mut down = req.down.clone();
    if let Some(couch) = couch {
        down.extend(couch_down(couch.clone()).await);
    }
    let up = live(broker, &down).await?;
    let (mut pending, mut failed) = (Vec::new(), Vec::new());
    for e in &progress.jobs {
        match broker.record::<JobState>(&e.id).await? {
            Some(JobState::Committed { .. }) => {}
            Some(JobState::Failed { error, .. }) => {
                tracing::warn!(job = %e.id, %error, "member job failed: moving its ranges");
                failed.push(e.clone());
            }
            // Moved by a coordinator that died before recording where.
            Some(JobState::Superseded { .. }) => failed.push(e.clone()),
            _ if !up.contains(&e.node) => {
                tracing::warn!(job = %e.id, node = %e.node, "node gone: moving its ranges");
                failed.push(e.clone());
            }
            _ => pending.push(e.id.clone()),
        }
    }
    if failed.is_empty() && pending.is_empty() {
        return Ok(None);
    }
    for e in failed {
        // Only this job's ranges move: the node may have committed another job.
        let files: BTreeSet<String> = e.shards.iter().cloned().collect();
        let lost = progress.plan.take(&e.node, &files);
        let added = progress
            .plan
            .reassign(lost, &e.node, maps, &up)
            .map_err(|source| ClusterError::Plan {
                backup: backup.clone(),
                source,
            })?;
        progress.jobs.retain(|j| j.id != e.id);
        let mut queue = Vec::new();
        for (node, share) in added {
            let round = progress.rounds.entry(node.clone()).or_insert(0);
            let entry = JobEntry {
                id: MemberJob::id_for(backup, &node, *round),
                node,
                shards: share.ranges.iter().map(|r| r.file()).collect(),
            };
            *round += 1;
            progress.jobs.push(entry.clone());
            queue.push(entry);
        }
        // Where the ranges went is recorded before the old job is told it is superseded,
        // and both before the new jobs are queued.
        broker.put_record(&plan_key(backup), &*progress).await?;
        broker
            .put_record(&e.id, &JobState::Superseded { v: 1 })
            .await?;
        for entry in &queue {
            broker
                .dispatch(&entry.node, &entry.id, &progress.job(entry))
                .await?;
        }
    }
    Ok(Some(pending))
}

/// The cluster's nodes whose CouchDB the coordinator's node is not connected to now; none
/// when that cannot be read (the daemons' registrations still count).
async fn couch_down(couch: Arc<CouchClient>) -> BTreeSet<String> {
    let read = tokio::task::spawn_blocking(move || couch.down_nodes()).await;
    match read {
        Ok(Ok(down)) => down,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "reading which CouchDB nodes are up");
            BTreeSet::new()
        }
        Err(_) => BTreeSet::new(),
    }
}

/// The nodes whose daemons are registered now, but for those whose CouchDB was down.
async fn live(broker: &Broker, down: &BTreeSet<String>) -> Result<BTreeSet<String>, BrokerError> {
    Ok(broker
        .nodes()
        .await?
        .into_iter()
        .map(|r| r.node)
        .filter(|n| !down.contains(n))
        .collect())
}
