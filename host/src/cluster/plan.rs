//! Planning a cluster backup: every shard range of every database is read from exactly one
//! of the nodes that hold it, the nodes that are up, with the bytes spread over them.
//!
//! Greedy by size (largest range first, to the holder with the fewest bytes so far): for
//! n = 3 replicas on 3 nodes every node reads about a third. Deterministic: the same maps,
//! sizes and live nodes give the same plan, whichever coordinator computes it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::couchdb::shardmap::DbShards;

/// One copy of one shard range of one database, as a node holds it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ShardRange {
    pub db: String,
    /// e.g. `.1795703450`, part of the shard file's name.
    pub suffix: String,
    /// e.g. `00000000-7fffffff`.
    pub range: String,
    /// Estimated bytes of this range's shard file.
    pub bytes: u64,
}

impl ShardRange {
    /// The shard file, relative to the node's database directory.
    pub fn file(&self) -> String {
        format!("shards/{}/{}{}.couch", self.range, self.db, self.suffix)
    }

    /// The directory of its view indexes, relative to the database directory.
    pub fn index_dir(&self) -> String {
        format!(".shards/{}/{}{}_design", self.range, self.db, self.suffix)
    }
}

/// What one node reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeShare {
    pub ranges: Vec<ShardRange>,
    pub bytes: u64,
}

/// Which node reads which shard ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub nodes: BTreeMap<String, NodeShare>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("no node that is up holds range {range} of database '{db}' (its replicas: {}); start one of them or restore that range from an earlier backup", holders.join(", "))]
    NoLiveReplica {
        db: String,
        range: String,
        holders: Vec<String>,
    },
}

impl Plan {
    /// Every range of `maps`, each from one node in `up`. `bytes(db)` estimates a database's
    /// size (one copy; its ranges share it evenly).
    pub fn new(
        maps: &[DbShards],
        up: &BTreeSet<String>,
        bytes: impl Fn(&str) -> u64,
    ) -> Result<Plan, PlanError> {
        let mut todo = Vec::new();
        for db in maps {
            let per_range = bytes(&db.name) / db.by_range.len().max(1) as u64;
            for (range, holders) in &db.by_range {
                todo.push((
                    ShardRange {
                        db: db.name.clone(),
                        suffix: db.suffix.clone(),
                        range: range.clone(),
                        bytes: per_range,
                    },
                    holders.clone(),
                ));
            }
        }
        let mut plan = Plan::default();
        plan.assign(todo, up)?;
        Ok(plan)
    }

    /// Moves the ranges of `failed` (a node that went down or failed its share) onto other
    /// holders that are up; every other node keeps its share (it may be done already).
    /// Returns what each node was given on top of its share: the new work.
    pub fn replan(
        &mut self,
        failed: &str,
        maps: &[DbShards],
        up: &BTreeSet<String>,
    ) -> Result<BTreeMap<String, NodeShare>, PlanError> {
        let Some(lost) = self.nodes.remove(failed) else {
            return Ok(BTreeMap::new());
        };
        self.reassign(lost.ranges, failed, maps, up)
    }

    /// Takes `files` (shard files) out of `node`'s share; returns their ranges.
    pub fn take(&mut self, node: &str, files: &BTreeSet<String>) -> Vec<ShardRange> {
        let Some(share) = self.nodes.get_mut(node) else {
            return Vec::new();
        };
        let (taken, kept): (Vec<_>, Vec<_>) = share
            .ranges
            .drain(..)
            .partition(|r| files.contains(&r.file()));
        share.ranges = kept;
        share.bytes = share.ranges.iter().map(|r| r.bytes).sum();
        if share.ranges.is_empty() {
            self.nodes.remove(node);
        }
        taken
    }

    /// Gives `ranges` to holders in `up` other than `failed`, by load, as a plan does;
    /// returns what each node was given.
    pub fn reassign(
        &mut self,
        ranges: Vec<ShardRange>,
        failed: &str,
        maps: &[DbShards],
        up: &BTreeSet<String>,
    ) -> Result<BTreeMap<String, NodeShare>, PlanError> {
        let mut up = up.clone();
        up.remove(failed);
        let holders: BTreeMap<(&str, &str), &Vec<String>> = maps
            .iter()
            .flat_map(|d| {
                d.by_range
                    .iter()
                    .map(move |(r, h)| ((d.name.as_str(), r.as_str()), h))
            })
            .collect();
        let todo = ranges
            .into_iter()
            .map(|r| {
                let h = holders
                    .get(&(r.db.as_str(), r.range.as_str()))
                    .map(|h| (*h).clone())
                    .unwrap_or_default();
                (r, h)
            })
            .collect();
        let had: BTreeMap<String, usize> = self
            .nodes
            .iter()
            .map(|(n, s)| (n.clone(), s.ranges.len()))
            .collect();
        self.assign(todo, &up)?;
        let mut added = BTreeMap::new();
        for (node, share) in &self.nodes {
            let new = &share.ranges[had.get(node).copied().unwrap_or(0)..];
            if !new.is_empty() {
                added.insert(
                    node.clone(),
                    NodeShare {
                        ranges: new.to_vec(),
                        bytes: new.iter().map(|r| r.bytes).sum(),
                    },
                );
            }
        }
        Ok(added)
    }

    fn assign(
        &mut self,
        mut todo: Vec<(ShardRange, Vec<String>)>,
        up: &BTreeSet<String>,
    ) -> Result<(), PlanError> {
        todo.sort_by(|(a, _), (b, _)| b.bytes.cmp(&a.bytes).then_with(|| a.cmp(b)));
        for (range, holders) in todo {
            let node = holders
                .iter()
                .filter(|h| up.contains(*h))
                .min_by_key(|h| (self.nodes.get(*h).map_or(0, |s| s.bytes), (*h).clone()))
                .cloned()
                .ok_or_else(|| PlanError::NoLiveReplica {
                    db: range.db.clone(),
                    range: range.range.clone(),
                    holders: holders.clone(),
                })?;
            let share = self.nodes.entry(node).or_default();
            share.bytes += range.bytes;
            share.ranges.push(range);
        }
        Ok(())
    }

    /// (database, range) pairs over all nodes: each exactly once in a whole plan.
    pub fn ranges(&self) -> impl Iterator<Item = (&str, &ShardRange)> {
        self.nodes
            .iter()
            .flat_map(|(n, s)| s.ranges.iter().map(move |r| (n.as_str(), r)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RANGES: [&str; 2] = ["00000000-7fffffff", "80000000-ffffffff"];

    fn cluster(dbs: usize, nodes: &[&str]) -> Vec<DbShards> {
        (0..dbs)
            .map(|i| DbShards {
                name: format!("db{i:03}"),
                suffix: ".1795703450".into(),
                by_range: RANGES
                    .iter()
                    .map(|r| (r.to_string(), nodes.iter().map(|n| n.to_string()).collect()))
                    .collect(),
            })
            .collect()
    }

    fn set(nodes: &[&str]) -> BTreeSet<String> {
        nodes.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn every_range_is_read_once_and_the_bytes_are_spread() {
        let nodes = ["a@h", "b@h", "c@h"];
        let maps = cluster(30, &nodes);
        let plan = Plan::new(&maps, &set(&nodes), |db| {
            1000 + db[2..].parse::<u64>().unwrap() * 10
        })
        .unwrap();
        let mut seen = BTreeSet::new();
        for (_, r) in plan.ranges() {
            assert!(seen.insert((r.db.clone(), r.range.clone())), "{r:?} twice");
        }
        assert_eq!(seen.len(), 60);
        let bytes: Vec<u64> = plan.nodes.values().map(|s| s.bytes).collect();
        let (min, max) = (bytes.iter().min().unwrap(), bytes.iter().max().unwrap());
        assert_eq!(bytes.len(), 3);
        // Largest first to the lightest node: no two nodes differ by more than one range.
        let largest = plan.ranges().map(|(_, r)| r.bytes).max().unwrap();
        assert!(max - min <= largest, "spread: {bytes:?}");
        assert_eq!(
            plan,
            Plan::new(&maps, &set(&nodes), |db| 1000
                + db[2..].parse::<u64>().unwrap() * 10)
            .unwrap()
        );
    }

    #[test]
    fn down_nodes_are_avoided_and_a_range_without_a_live_replica_is_an_error() {
        let maps = cluster(4, &["a@h", "b@h", "c@h"]);
        let plan = Plan::new(&maps, &set(&["a@h", "c@h"]), |_| 100).unwrap();
        assert!(!plan.nodes.contains_key("b@h"));
        assert_eq!(plan.ranges().count(), 8);
        let mut lonely = cluster(1, &["a@h"]);
        lonely[0].name = "solo".into();
        let err = Plan::new(&lonely, &set(&["b@h"]), |_| 1).unwrap_err();
        assert!(err
            .to_string()
            .contains("range 00000000-7fffffff of database 'solo'"));
        assert!(err.to_string().contains("a@h"));
    }

    #[test]
    fn a_failed_node_s_ranges_move_to_other_holders_and_the_rest_stay() {
        let nodes = ["a@h", "b@h", "c@h"];
        let maps = cluster(9, &nodes);
        let mut plan = Plan::new(&maps, &set(&nodes), |_| 100).unwrap();
        let kept_a = plan.nodes["a@h"].clone();
        let lost = plan.nodes["b@h"].ranges.clone();
        let added = plan.replan("b@h", &maps, &set(&nodes)).unwrap();
        assert!(!plan.nodes.contains_key("b@h"));
        assert_eq!(plan.ranges().count(), 18);
        let mut moved: Vec<ShardRange> = added.into_values().flat_map(|s| s.ranges).collect();
        moved.sort();
        let mut lost = lost;
        lost.sort();
        assert_eq!(moved, lost);
        assert_eq!(
            plan.nodes["a@h"].ranges[..kept_a.ranges.len()],
            kept_a.ranges[..]
        );
        // No holder left: the ranges only b held cannot move.
        let mut plan = Plan::new(&cluster(1, &["b@h"]), &set(&["b@h"]), |_| 1).unwrap();
        assert!(plan
            .replan("b@h", &cluster(1, &["b@h"]), &set(&["a@h"]))
            .is_err());
    }
}
