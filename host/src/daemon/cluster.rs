//! A daemon's part in cluster backups (`[cluster]`, docs/CLUSTERS.md): its node's agent,
//! which heartbeats and runs the jobs queued for its node (member backups, its share of a
//! restore through the daemons), and, while it holds the
//! lease, the coordinator, which takes the cluster backups asked for one at a time, carries
//! each out and commits its manifest. A request is acknowledged only once settled: a
//! coordinator that dies holding one leaves it to the next leader, which resumes it.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::cluster::agent::{Agent, RunMember, RunRestore};
use crate::cluster::broker::{Broker, Delivery};
use crate::cluster::coordinator::{self, ClusterError, ClusterRequest};
use crate::cluster::job::{result_key, ClusterBackupRequest, ClusterOutcome, COORDINATOR_QUEUE};
use crate::cluster::{manifest, shards};
use crate::ops::{Progress, Vault};

/// Runs until `stop` turns true. Never fails: a broker that is down is retried.
pub async fn run(vault: Arc<Vault>, daemon_url: String, mut stop: watch::Receiver<bool>) {
    let cfg = vault.config.cluster.clone();
    let (Some(url), Some(node)) = (cfg.broker.clone(), cfg.node.clone()) else {
        return;
    };
    let broker = loop {
        match Broker::connect(&url, cfg.timings()).await {
            Ok(b) => break Arc::new(b),
            Err(e) => tracing::warn!(error = %e, "cluster broker unreachable; retrying in 5 s"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stop.changed() => return,
        }
    };
    tracing::info!(%node, broker = %url, "cluster agent started");
    let stopping = Arc::new(AtomicBool::new(false));
    let agent = {
        let agent = Agent::new(broker.clone(), &node, &daemon_url)
            .with_restore(restore_runner(vault.clone()));
        let run = member_runner(vault.clone());
        let stopping = stopping.clone();
        tokio::spawn(async move { agent.run(run, stopping).await })
    };
    let coordinator = cfg.coordinate.then(|| {
        let holder = format!("{node} {daemon_url}");
        tokio::spawn(lead(vault.clone(), broker.clone(), holder))
    });
    let _ = stop.changed().await;
    stopping.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(c) = coordinator {
        c.abort();
    }
    let _ = agent.await;
}

/// A member job's backup, in the blocking pool.
fn member_runner(vault: Arc<Vault>) -> RunMember {
    Arc::new(move |job, id| {
        let spec = vault.config.cluster.source();
        vault
            .cluster_member_backup(job, id, &spec, &Progress::default())
            .map_err(|e| e.to_string())
    })
}

/// A restore job's share of this node, in the blocking pool.
fn restore_runner(vault: Arc<Vault>) -> RunRestore {
    Arc::new(move |job, go| {
        let spec = vault.config.cluster.source();
        vault
            .restore_share(job, &spec, go, &Progress::default())
            .map_err(|e| e.to_string())
    })
}

/// Takes the lead when nobody has it, and while leading, carries out the requests.
async fn lead(vault: Arc<Vault>, broker: Arc<Broker>, holder: String) {
    let beat = broker.timings().lease / 3;
    loop {
        // A coordinator reads the cluster through its own node: one whose CouchDB is down
        // leaves the lead to the others.
        if !couch_up(&vault).await {
            tokio::time::sleep(beat).await;
            continue;
        }
        let mut lease = match broker.try_lead(&holder).await {
            Ok(Some(lease)) => lease,
            Ok(None) => {
                tokio::time::sleep(beat).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cluster lease");
                tokio::time::sleep(beat).await;
                continue;
            }
        };
        tracing::info!("this daemon coordinates cluster backups");
        loop {
            match broker.renew(&mut lease).await {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "renewing the cluster lease");
                    tokio::time::sleep(beat).await;
                    continue;
                }
            }
            if !couch_up(&vault).await {
                tracing::warn!("this node's CouchDB is down: leaving the cluster lead");
                let _ = broker.resign(lease).await;
                break;
            }
            let next = broker
                .next_job::<ClusterBackupRequest>(COORDINATOR_QUEUE, beat)
                .await;
            let delivery = match next {
                Ok(Some(d)) => d,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "taking a cluster backup request");
                    continue;
                }
            };
            if !coordinate(&vault, &broker, &mut lease, delivery).await {
                break;
            }
        }
        tracing::warn!("this daemon no longer coordinates cluster backups");
    }
}

/// Whether this daemon's CouchDB ([couchdb] url) answers.
async fn couch_up(vault: &Arc<Vault>) -> bool {
    let vault = vault.clone();
    tokio::task::spawn_blocking(
        move || matches!(vault.couch_client_for(None), Ok(Some(c)) if c.version().is_ok()),
    )
    .await
    .unwrap_or(false)
}

/// Carries out one request; false when the lease was lost (the request is left to the
/// next leader, unacknowledged).
async fn coordinate(
    vault: &Arc<Vault>,
    broker: &Broker,
    lease: &mut crate::cluster::broker::Lease,
    delivery: Delivery<ClusterBackupRequest>,
) -> bool {
    let r = delivery.job.clone();
    let key = result_key(&r.backup);
    if let Ok(Some(done)) = broker.record::<ClusterOutcome>(&key).await {
        tracing::info!(backup = %r.backup, ?done, "cluster backup already settled");
        let _ = delivery.done().await;
        return true;
    }
    let work = async {
        let (maps, details, down, key_id, couch) = {
            let vault = vault.clone();
            let tenant = r.tenant.clone();
            let chosen = r.settings.key_id.clone();
            tokio::task::spawn_blocking(move || -> Result<_, String> {
                let client = vault
                    .couch_client_for(None)
                    .map_err(|e| e.to_string())?
                    .ok_or("a cluster backup reads the shard maps through CouchDB: set [couchdb] url on every daemon of the cluster")?;
                let (maps, details) = shards::read(&client).map_err(|e| e.to_string())?;
                let down = client.down_nodes().map_err(|e| e.to_string())?;
                let keyring = vault.keyring().map_err(|e| e.to_string())?;
                let key_id = match chosen {
                    Some(k) => k,
                    None => keyring.active(&tenant).map_err(|e| e.to_string())?.id.clone(),
                };
                Ok((maps, details, down, key_id, Arc::new(client)))
            })
            .await
            .map_err(|e| Some(e.to_string()))?
            .map_err(Some)?
        };
        let cfg = &vault.config.cluster;
        let req = ClusterRequest {
            backup: r.backup.clone(),
            tenant: r.tenant.clone(),
            instance: r.instance.clone(),
            key_id,
            deadline: cfg.deadline.get(),
            poll: Duration::from_secs(1),
            down,
            settings: r.settings.clone(),
        };
        if !req.down.is_empty() {
            tracing::warn!(backup = %r.backup, down = ?req.down, "CouchDB nodes down: their ranges are read from other replicas");
        }
        // None: the lease was lost, the request is the next leader's.
        let run = coordinator::run(broker, lease, &req, &maps, &details, Some(couch.clone())).await;
        // The blocking client is let go of where blocking is allowed.
        let _ = tokio::task::spawn_blocking(move || drop(couch)).await;
        let m = run.map_err(|e| match e {
            ClusterError::LostLease { .. } => None,
            e => Some(e.to_string()),
        })?;
        let vault = vault.clone();
        tokio::task::spawn_blocking(move || {
            let keyring = vault.keyring()?;
            manifest::commit(&*vault.store, &keyring, &m)?;
            Ok::<_, crate::ops::OpsError>(m)
        })
        .await
        .map_err(|e| Some(e.to_string()))?
        .map_err(|e| Some(e.to_string()))
    };
    tokio::pin!(work);
    // The request stays ours while the backup runs.
    let tick = broker.timings().ack_wait / 3;
    let outcome = loop {
        tokio::select! {
            done = &mut work => break done,
            _ = tokio::time::sleep(tick) => { let _ = delivery.progress().await; }
        }
    };
    let settled = match outcome {
        Ok(m) => {
            tracing::info!(backup = %m.backup_id, members = m.members.len(), "cluster backup committed");
            ClusterOutcome::Committed {
                v: 1,
                members: m.members.len(),
                stored_bytes: m.members.iter().map(|x| x.stored_bytes).sum(),
            }
        }
        Err(None) => return false,
        Err(Some(error)) => {
            tracing::error!(backup = %r.backup, %error, "cluster backup failed");
            ClusterOutcome::Failed { v: 1, error }
        }
    };
    if let Err(e) = broker.put_record(&key, &settled).await {
        tracing::warn!(error = %e, "recording a cluster backup's outcome");
        return true;
    }
    let _ = delivery.done().await;
    true
}
