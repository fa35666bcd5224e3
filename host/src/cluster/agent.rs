//! A node's agent: heartbeats for its daemon and runs the member jobs queued for its node,
//! acknowledging each only once its member backup has committed.
//!
//! Never twice: a job whose state is already final is acknowledged and dropped, and a member
//! backup's id is derived from its job, so a job redelivered after a crash between the
//! member's commit and the job's acknowledgement finds the member committed.

use std::sync::Arc;
use std::time::Duration;

use ring::digest::{digest, SHA256};

use super::broker::{Broker, BrokerError, NodeRecord};
use super::job::{JobState, MemberJob};

/// Runs a member job's backup (blocking): backs up the job's shards of this node as backup
/// `id`, or finds backup `id` committed already; returns its stored bytes.
pub type RunMember = Arc<dyn Fn(&MemberJob, ulid::Ulid) -> Result<u64, String> + Send + Sync>;

pub struct Agent {
    broker: Arc<Broker>,
    record: NodeRecord,
}

/// The member backup id of a job: the cluster backup's time, the job's hash.
pub fn member_id(job: &MemberJob) -> ulid::Ulid {
    let ms = ulid::Ulid::from_string(&job.backup).map_or(0, |u| u.timestamp_ms());
    let h = digest(&SHA256, job.id.as_bytes());
    let mut random = [0u8; 16];
    random.copy_from_slice(&h.as_ref()[..16]);
    ulid::Ulid::from_parts(ms, u128::from_be_bytes(random))
}

impl Agent {
    pub fn new(broker: Arc<Broker>, node: &str, daemon: &str) -> Agent {
        Agent {
            broker,
            record: NodeRecord {
                v: 1,
                node: node.to_string(),
                daemon: daemon.to_string(),
                incarnation: ulid::Ulid::new().to_string(),
            },
        }
    }

    pub async fn heartbeat(&self) -> Result<(), BrokerError> {
        self.broker.heartbeat(&self.record).await
    }

    /// Takes one job for this node (waiting up to `wait`) and carries it out; returns its id
    /// and final state, None when none came.
    pub async fn step(
        &self,
        wait: Duration,
        run: &RunMember,
    ) -> Result<Option<(String, JobState)>, BrokerError> {
        let Some(delivery) = self
            .broker
            .next_job::<MemberJob>(&self.record.node, wait)
            .await?
        else {
            return Ok(None);
        };
        let job = delivery.job.clone();
        if let Some(state) = self.broker.record::<JobState>(&job.id).await? {
            if state.is_final() {
                tracing::info!(job = %job.id, ?state, "member job already settled: dropped");
                let _ = delivery.done().await;
                return Ok(Some((job.id, state)));
            }
        }
        self.broker
            .put_record(
                &job.id,
                &JobState::Running {
                    v: 1,
                    attempt: delivery.attempt,
                },
            )
            .await?;
        let id = member_id(&job);
        let work = {
            let (run, job) = (run.clone(), job.clone());
            tokio::task::spawn_blocking(move || run(&job, id))
        };
        tokio::pin!(work);
        // While it runs: keep the job from being redelivered, and this node registered.
        let tick = self
            .broker
            .timings()
            .ack_wait
            .min(self.broker.timings().node_ttl)
            / 3;
        let outcome = loop {
            tokio::select! {
                done = &mut work => break done.unwrap_or_else(|e| Err(format!("the backup task failed: {e}"))),
                _ = tokio::time::sleep(tick) => {
                    let _ = delivery.progress().await;
                    let _ = self.heartbeat().await;
                }
            }
        };
        let state = match outcome {
            Ok(stored_bytes) => JobState::Committed {
                v: 1,
                member: id.to_string(),
                stored_bytes,
            },
            Err(error) => JobState::Failed { v: 1, error },
        };
        self.broker.put_record(&job.id, &state).await?;
        if let Err(e) = delivery.done().await {
            // Its state is recorded: a redelivery is dropped as settled.
            tracing::warn!(job = %job.id, error = %e, "acknowledging a settled member job");
        }
        Ok(Some((job.id, state)))
    }

    /// Heartbeats and runs jobs until `stop` is set.
    pub async fn run(&self, run: RunMember, stop: Arc<std::sync::atomic::AtomicBool>) {
        let wait = self.broker.timings().node_ttl / 3;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if let Err(e) = self.heartbeat().await {
                tracing::warn!(error = %e, "cluster heartbeat");
            }
            match self.step(wait, &run).await {
                Ok(Some((job, state))) => tracing::info!(%job, ?state, "member job settled"),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "taking a member job");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}
