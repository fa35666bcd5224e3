//! Where a cluster backup's shard ranges go in a new cluster and how its shard maps read
//! there: every range on n of the new nodes, rotating so that each node holds an even share,
//! and one shard-map document per database in CouchDB's own shape.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::manifest::DbMap;

/// Range → the new nodes that hold it, per database.
pub type Placement = BTreeMap<String, BTreeMap<String, Vec<String>>>;

/// Places every range of every database on `n` of `nodes` (at most all of them): range k
/// of the whole backup goes to nodes k, k+1, …, k+n-1 (mod the node count), in name order.
pub fn place(databases: &BTreeMap<String, DbMap>, nodes: &[String], n: usize) -> Placement {
    let mut nodes = nodes.to_vec();
    nodes.sort();
    nodes.dedup();
    let n = n.clamp(1, nodes.len().max(1));
    let mut k = 0;
    let mut out = Placement::new();
    for (db, map) in databases {
        let ranges = out.entry(db.clone()).or_default();
        for range in map.by_range.keys() {
            let holders = (0..n).map(|j| nodes[(k + j) % nodes.len()].clone());
            ranges.insert(range.clone(), holders.collect());
            k += 1;
        }
    }
    out
}

/// A database's shard-map document for `/_node/_local/_dbs/<db>`: `shard_suffix` as
/// character codes, as CouchDB writes it.
pub fn shard_map_doc(db: &str, map: &DbMap, ranges: &BTreeMap<String, Vec<String>>) -> Value {
    let mut by_node: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut changelog = Vec::new();
    for (range, holders) in ranges {
        for node in holders {
            by_node.entry(node).or_default().push(range);
            changelog.push(json!(["add", range, node]));
        }
    }
    let props = match &map.detail.props {
        Value::Object(_) => map.detail.props.clone(),
        _ => json!({}),
    };
    json!({
        "_id": db,
        "shard_suffix": map.suffix.chars().map(|c| c as u32).collect::<Vec<_>>(),
        "changelog": changelog,
        "by_node": by_node,
        "by_range": ranges,
        "props": props,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::shards::DbDetail;

    fn db(ranges: &[&str]) -> DbMap {
        DbMap {
            suffix: ".17".into(),
            by_range: ranges
                .iter()
                .map(|r| (r.to_string(), vec!["old@h".to_string()]))
                .collect(),
            detail: DbDetail::default(),
        }
    }

    #[test]
    fn ranges_go_to_n_nodes_each_evenly() {
        let dbs: BTreeMap<String, DbMap> = [
            ("a".to_string(), db(&["00-7f", "80-ff"])),
            ("b".to_string(), db(&["00-3f", "40-7f", "80-bf", "c0-ff"])),
        ]
        .into();
        let nodes: Vec<String> = ["n3", "n1", "n2"].map(String::from).to_vec();
        let p = place(&dbs, &nodes, 2);
        let mut held: BTreeMap<&str, usize> = BTreeMap::new();
        for ranges in p.values() {
            for holders in ranges.values() {
                assert_eq!(holders.len(), 2);
                assert_ne!(holders[0], holders[1]);
                for h in holders {
                    *held.entry(h).or_default() += 1;
                }
            }
        }
        assert_eq!(held, [("n1", 4), ("n2", 4), ("n3", 4)].into());
        // n larger than the cluster: every node holds every range once.
        let all = place(&dbs, &nodes[..2], 3);
        assert!(all["b"].values().all(|h| h.len() == 2));
    }

    #[test]
    fn a_shard_map_document_in_couchdbs_shape() {
        let mut m = db(&["00-7f", "80-ff"]);
        m.detail.props = json!({"partitioned": true});
        let ranges: BTreeMap<String, Vec<String>> = [
            (
                "00-7f".to_string(),
                vec!["x@h".to_string(), "y@h".to_string()],
            ),
            ("80-ff".to_string(), vec!["y@h".to_string()]),
        ]
        .into();
        let doc = shard_map_doc("orders", &m, &ranges);
        assert_eq!(doc["shard_suffix"], json!([46, 49, 55]));
        assert_eq!(doc["by_node"]["y@h"], json!(["00-7f", "80-ff"]));
        assert_eq!(doc["changelog"][0], json!(["add", "00-7f", "x@h"]));
        assert_eq!(doc["props"], json!({"partitioned": true}));
        let back = crate::cluster::shards::from_doc("orders", &doc).unwrap();
        assert_eq!(back.suffix, ".17");
        assert_eq!(back.by_range, ranges);
    }
}
