//! A node's agent: heartbeats for its daemon and runs the jobs queued for its node (member
//! backups, and a daemon's share of a restore), acknowledging each only once settled.
//!
//! Never twice: a job whose state is already final is acknowledged and dropped, and a member
//! backup's id is derived from its job, so a job redelivered after a crash between the
//! member's commit and the job's acknowledgement finds the member committed.

use std::sync::Arc;
use std::time::Duration;

use ring::digest::{digest, SHA256};

use super::broker::{Broker, BrokerError, Delivery, NodeRecord};
use super::job::{go_key, Go, JobState, MemberJob, NodeJob, RestoreJob};

/// Runs a member job's backup (blocking): backs up the job's shards of this node as backup
/// `id`, or finds backup `id` committed already; returns its stored bytes.
pub type RunMember = Arc<dyn Fn(&MemberJob, ulid::Ulid) -> Result<u64, String> + Send + Sync>;

/// Runs a restore job (blocking): stages the node's share, asks `go` (which blocks until
/// the restore's go) and places it then, or drops what it staged. Returns what it placed,
/// None when told to abort.
pub type RunRestore =
    Arc<dyn Fn(&RestoreJob, &dyn Fn(Share) -> bool) -> Result<Option<Share>, String> + Send + Sync>;

/// Files and bytes of a node's share of a restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub files: u64,
    pub bytes: u64,
}

pub struct Agent {
    broker: Arc<Broker>,
    record: NodeRecord,
    restore: Option<RunRestore>,
}

/// The member backup id of a job: the cluster backup's time, the job's hash.
pub fn member_id(job: &MemberJob) -> ulid::Ulid {
    let ms = ulid::Ulid::from_string(&job.backup).map_or(0, |u| u.timestamp_ms());
    let h = digest(&SHA256, job.id.as_bytes());
    let mut random = [0u8; 16];
    random.copy_from_slice(&h.as_ref()[..16]);
    ulid::Ulid::from_parts(ms, u128::from_be_bytes(random))
}

/// How often a restore job waiting for its go looks for it.
const GO_POLL: Duration = Duration::from_millis(250);

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
            restore: None,
        }
    }

    /// Also takes restore jobs (a daemon: it knows its node's directories).
    pub fn with_restore(mut self, run: RunRestore) -> Agent {
        self.restore = Some(run);
        self
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
            .next_job::<NodeJob>(&self.record.node, wait)
            .await?
        else {
            return Ok(None);
        };
        let id = delivery.job.id().to_string();
        if let Some(state) = self.broker.record::<JobState>(&id).await? {
            if state.is_final() {
                tracing::info!(job = %id, ?state, "job already settled: dropped");
                let _ = delivery.done().await;
                return Ok(Some((id, state)));
            }
        }
        self.broker
            .put_record(
                &id,
                &JobState::Running {
                    v: 1,
                    attempt: delivery.attempt,
                },
            )
            .await?;
        let state = match &delivery.job {
            NodeJob::Member(job) => self.member(&delivery, job, run).await,
            NodeJob::Restore(job) => self.restore(&delivery, job).await,
        };
        self.broker.put_record(&id, &state).await?;
        if let Err(e) = delivery.done().await {
            // Its state is recorded: a redelivery is dropped as settled.
            tracing::warn!(job = %id, error = %e, "acknowledging a settled job");
        }
        Ok(Some((id, state)))
    }

    /// Every third of the ack wait (or node ttl): the job kept from redelivery, this node
    /// registered.
    fn tick(&self) -> Duration {
        let t = self.broker.timings();
        t.ack_wait.min(t.node_ttl) / 3
    }

    async fn keep_alive(&self, delivery: &Delivery<NodeJob>) {
        let _ = delivery.progress().await;
        let _ = self.heartbeat().await;
    }

    async fn member(
        &self,
        delivery: &Delivery<NodeJob>,
        job: &MemberJob,
        run: &RunMember,
    ) -> JobState {
        let id = member_id(job);
        let work = {
            let (run, job) = (run.clone(), job.clone());
            tokio::task::spawn_blocking(move || run(&job, id))
        };
        tokio::pin!(work);
        let outcome = loop {
            tokio::select! {
                done = &mut work => break done.unwrap_or_else(|e| Err(format!("the backup task failed: {e}"))),
                _ = tokio::time::sleep(self.tick()) => self.keep_alive(delivery).await,
            }
        };
        match outcome {
            Ok(stored_bytes) => JobState::Committed {
                v: 1,
                member: id.to_string(),
                stored_bytes,
            },
            Err(error) => JobState::Failed { v: 1, error },
        }
    }

    /// A restore job: staged, recorded `staged`, then placed or dropped as the restore's go
    /// says (dropped when none came by the job's deadline).
    async fn restore(&self, delivery: &Delivery<NodeJob>, job: &RestoreJob) -> JobState {
        let Some(run) = self.restore.clone() else {
            return JobState::Failed {
                v: 1,
                error: format!("the agent of {} takes no restore jobs", job.node),
            };
        };
        let (staged_tx, mut staged_rx) = tokio::sync::mpsc::unbounded_channel::<Share>();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<bool>();
        let work = {
            let job = job.clone();
            tokio::task::spawn_blocking(move || {
                run(&job, &|share| {
                    let _ = staged_tx.send(share);
                    go_rx.recv().unwrap_or(false)
                })
            })
        };
        tokio::pin!(work);
        // Staged and not yet recorded as such (the broker may fail for a while).
        let mut unrecorded: Option<Share> = None;
        let mut waiting = false;
        let mut alive = tokio::time::Instant::now();
        let outcome = loop {
            tokio::select! {
                done = &mut work => break done.unwrap_or_else(|e| Err(format!("the restore task failed: {e}"))),
                Some(share) = staged_rx.recv() => unrecorded = Some(share),
                _ = tokio::time::sleep(GO_POLL) => {}
            }
            if alive.elapsed() >= self.tick() {
                self.keep_alive(delivery).await;
                alive = tokio::time::Instant::now();
            }
            if let Some(share) = unrecorded {
                let staged = JobState::Staged {
                    v: 1,
                    files: share.files,
                    bytes: share.bytes,
                };
                if self.broker.put_record(&job.id, &staged).await.is_ok() {
                    (unrecorded, waiting) = (None, true);
                }
            }
            if waiting {
                let go = match self.broker.record::<Go>(&go_key(&job.restore)).await {
                    Ok(Some(Go::Place { .. })) => Some(true),
                    Ok(Some(Go::Abort { .. })) => Some(false),
                    _ if chrono::Utc::now().timestamp() > job.deadline => Some(false),
                    _ => None,
                };
                if let Some(place) = go {
                    let _ = go_tx.send(place);
                    waiting = false;
                }
            }
        };
        match outcome {
            Ok(Some(share)) => JobState::Placed {
                v: 1,
                files: share.files,
                bytes: share.bytes,
            },
            Ok(None) => JobState::Failed {
                v: 1,
                error: "not placed: the restore was aborted (another node failed, or no go came by the deadline); what was staged is removed".into(),
            },
            Err(error) => JobState::Failed { v: 1, error },
        }
    }

    /// Heartbeats and runs jobs until `stop` is set.
    pub async fn run(&self, run: RunMember, stop: Arc<std::sync::atomic::AtomicBool>) {
        let wait = self.broker.timings().node_ttl / 3;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if let Err(e) = self.heartbeat().await {
                tracing::warn!(error = %e, "cluster heartbeat");
            }
            match self.step(wait, &run).await {
                Ok(Some((job, state))) => tracing::info!(%job, ?state, "job settled"),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "taking a job");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}
