//! What the coordinator and the agents tell each other through the broker: member jobs,
//! restore jobs, their states, and the plan of a cluster backup in progress. JSON, each with
//! `v`.

use serde::{Deserialize, Serialize};

use super::broker::token;
use super::plan::Plan;

/// One node's share of a cluster backup, queued for that node's agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberJob {
    pub v: u32,
    /// `<cluster backup>.<node token>.<round>`: unique, and a KV key.
    pub id: String,
    /// The cluster backup's id (a ULID).
    pub backup: String,
    pub tenant: String,
    /// The cluster instance.
    pub instance: String,
    /// The CouchDB node whose daemon runs it.
    pub node: String,
    /// Shard files, relative to the node's database directory.
    pub shards: Vec<String>,
    #[serde(default, skip_serializing_if = "MemberSettings::is_default")]
    pub settings: MemberSettings,
}

/// How every member of a cluster backup is made, as the tenant's protection policy decided
/// once for the whole (evaluated where the backup was asked for: `cluster backup
/// --protection`, a daemon job's or schedule's policies).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression_level: Option<i32>,
    /// The tenant key that wraps each member's data key and seals the manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub tags: std::collections::BTreeMap<String, String>,
    /// The protection policy that decided (each member's `protection-policy` tag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protection_policy: Option<String>,
}

impl MemberSettings {
    pub fn is_default(&self) -> bool {
        *self == MemberSettings::default()
    }
}

impl MemberJob {
    pub fn id_for(backup: &str, node: &str, round: u32) -> String {
        format!("{backup}.{}.{round}", token(node))
    }

    /// The instance its member backup is filed under: `<cluster instance>--<node token>`.
    pub fn member_instance(&self) -> String {
        format!("{}--{}", self.instance, token(&self.node).replace('=', "_"))
    }
}

/// Where a member job is, kept in the broker's `couchvault_jobs` bucket under the job's id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum JobState {
    /// An agent took it (`attempt`: its delivery count).
    Running {
        v: u32,
        attempt: u64,
    },
    /// Its member backup committed.
    Committed {
        v: u32,
        member: String,
        stored_bytes: u64,
    },
    Failed {
        v: u32,
        error: String,
    },
    /// The coordinator moved its ranges elsewhere: an agent that gets it late drops it.
    Superseded {
        v: u32,
    },
    /// A restore job's members are unpacked and verified on its node; it waits for the
    /// restore's go (`<restore>.go`) before placing anything.
    Staged {
        v: u32,
        files: u64,
        bytes: u64,
    },
    /// A restore job's files are in place on its node.
    Placed {
        v: u32,
        files: u64,
        bytes: u64,
    },
}

impl JobState {
    pub fn is_final(&self) -> bool {
        !matches!(self, JobState::Running { .. } | JobState::Staged { .. })
    }
}

/// One node's share of a cluster restore driven through the new cluster's daemons
/// (`cluster restore --via-daemons`), queued for that node's agent: unpack and verify the
/// members holding the node's ranges, wait for the go, place the files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreJob {
    pub v: u32,
    /// `<restore>.<node token>`: unique, and a KV key.
    pub id: String,
    /// The restore's id (a ULID): its go is `<restore>.go`.
    pub restore: String,
    pub tenant: String,
    /// The cluster instance the backup was taken of.
    pub instance: String,
    /// The cluster backup.
    pub backup: String,
    /// The CouchDB node whose daemon runs it.
    pub node: String,
    /// Every node of the new cluster and the copies of each range: the placement is
    /// computed from them alike on every node (`cluster::restore::place`).
    pub nodes: Vec<String>,
    pub n: usize,
    /// Unix seconds after which a job still waiting for its go gives up.
    pub deadline: i64,
}

impl RestoreJob {
    pub fn id_for(restore: &str, node: &str) -> String {
        format!("{restore}.{}", token(node))
    }
}

/// Any job queued for a node's agent. Untagged: a member job is the JSON it always was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum NodeJob {
    Member(MemberJob),
    Restore(RestoreJob),
}

impl NodeJob {
    pub fn id(&self) -> &str {
        match self {
            NodeJob::Member(j) => &j.id,
            NodeJob::Restore(j) => &j.id,
        }
    }
}

/// Whether the nodes of a restore place their files: written once every node staged
/// (`place`) or once one failed (`abort`: every node drops what it staged).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "go", rename_all = "snake_case")]
pub enum Go {
    Place { v: u32 },
    Abort { v: u32 },
}

pub fn go_key(restore: &str) -> String {
    format!("{restore}.go")
}

/// A cluster backup in progress, kept under `<backup>.plan` so that a coordinator taking
/// over finishes the same plan rather than starting another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub v: u32,
    pub backup: String,
    pub tenant: String,
    pub instance: String,
    pub plan: Plan,
    /// Jobs that carry the plan's current shares, in the order they were queued.
    pub jobs: Vec<JobEntry>,
    /// Jobs queued so far per node (the round of its next job id: 0 for the first plan,
    /// one more each time ranges move to it).
    pub rounds: std::collections::BTreeMap<String, u32>,
    /// Unix seconds by which every member must have committed.
    pub deadline: i64,
    #[serde(default)]
    pub settings: MemberSettings,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEntry {
    pub node: String,
    pub id: String,
    pub shards: Vec<String>,
}

impl Progress {
    /// The job as queued for its agent.
    pub fn job(&self, e: &JobEntry) -> MemberJob {
        MemberJob {
            v: 1,
            id: e.id.clone(),
            backup: self.backup.clone(),
            tenant: self.tenant.clone(),
            instance: self.instance.clone(),
            node: e.node.clone(),
            shards: e.shards.clone(),
            settings: self.settings.clone(),
        }
    }
}

pub fn plan_key(backup: &str) -> String {
    format!("{backup}.plan")
}

/// Tags of a member backup: its cluster backup's id and instance (`gc` removes members
/// whose cluster backup never committed).
/// Reserved (`couchvault*`): a tenant cannot set them.
pub const MEMBER_OF_TAG: &str = "couchvault-cluster-backup";
pub const CLUSTER_INSTANCE_TAG: &str = "couchvault-cluster-instance";

/// The queue a cluster backup request waits in until the leading coordinator takes it.
pub const COORDINATOR_QUEUE: &str = "_coordinator";

/// A cluster backup asked for (`couchvault cluster backup`), queued for the coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterBackupRequest {
    pub v: u32,
    /// The cluster backup's id (a ULID), chosen by whoever asks.
    pub backup: String,
    pub tenant: String,
    pub instance: String,
    #[serde(default)]
    pub settings: MemberSettings,
}

/// How a cluster backup ended, kept under `<backup>.result`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ClusterOutcome {
    Committed {
        v: u32,
        members: usize,
        stored_bytes: u64,
    },
    Failed {
        v: u32,
        error: String,
    },
}

pub fn result_key(backup: &str) -> String {
    format!("{backup}.result")
}
