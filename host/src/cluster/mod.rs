//! Clusters: one consistent backup of a multi-node CouchDB, planned from the shard maps and
//! carried out by the daemon on each node, coordinated over NATS JetStream (docs/CLUSTERS.md).
//!
//! `shards` reads the shard maps through the cluster's API, `plan` chooses which node reads
//! which shard range, `broker` keeps membership, the coordinator's lease and the node jobs
//! on the broker; `agent` and `coordinator` carry a cluster backup out, `manifest` commits it,
//! `restore` places its ranges on a new cluster.

pub mod agent;
pub mod broker;
pub mod coordinator;
pub mod job;
pub mod manifest;
pub mod plan;
pub mod restore;
pub mod shards;
