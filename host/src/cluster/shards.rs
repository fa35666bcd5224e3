//! A running cluster's shard maps and databases, read through its HTTP API: what a cluster
//! backup is planned from and what its manifest records.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::couchdb::http::{encode_db, CouchClient, CouchError};
use crate::couchdb::shardmap::DbShards;

/// A database when the backup started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbDetail {
    /// Bytes of one copy (`sizes.file`): what planning balances.
    pub size: u64,
    /// Documents at the start: a restore must have at least as many.
    pub doc_count: u64,
    /// The shard map's `props` (e.g. `partitioned`), written back on restore.
    #[serde(default)]
    pub props: Value,
}

/// Every database's shard map (`/_node/_local/_dbs/<db>`), sorted by name, and its size,
/// document count and properties (`/<db>`).
pub fn read(
    client: &CouchClient,
) -> Result<(Vec<DbShards>, BTreeMap<String, DbDetail>), CouchError> {
    let mut maps = Vec::new();
    let mut details = BTreeMap::new();
    for db in client.all_dbs()? {
        let doc = client.shard_map(&db)?;
        maps.push(from_doc(&db, &doc).ok_or_else(|| CouchError::Http {
            url: format!("{}/_node/_local/_dbs/{}", client.base(), encode_db(&db)),
            reason: "a shard map without shard_suffix or by_range".into(),
        })?);
        let (size, doc_count) = client.db_size_and_count(&db)?;
        details.insert(
            db.clone(),
            DbDetail {
                size,
                doc_count,
                props: doc
                    .get("props")
                    .cloned()
                    .unwrap_or(Value::Object(Default::default())),
            },
        );
    }
    maps.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((maps, details))
}

/// A shard map document as the API returns it. `shard_suffix` is an Erlang string there:
/// a list of character codes.
pub fn from_doc(db: &str, doc: &Value) -> Option<DbShards> {
    let suffix = match doc.get("shard_suffix")? {
        Value::String(s) => s.clone(),
        Value::Array(codes) => codes
            .iter()
            .map(|c| c.as_u64().and_then(|c| char::from_u32(c as u32)))
            .collect::<Option<String>>()?,
        _ => return None,
    };
    let by_range = doc
        .get("by_range")?
        .as_object()?
        .iter()
        .map(|(range, nodes)| {
            let nodes = nodes
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n.as_str().map(str::to_string))
                .collect();
            (range.clone(), nodes)
        })
        .collect();
    Some(DbShards {
        name: db.to_string(),
        suffix,
        by_range,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn a_shard_map_document_with_the_suffix_as_character_codes() {
        let doc = json!({
            "_id": "orders",
            "shard_suffix": [46, 49, 55, 57],
            "by_range": {"00000000-7fffffff": ["a@h", "b@h"], "80000000-ffffffff": ["b@h"]},
            "by_node": {"a@h": ["00000000-7fffffff"]}
        });
        let m = super::from_doc("orders", &doc).unwrap();
        assert_eq!(m.suffix, ".179");
        assert_eq!(m.by_range["00000000-7fffffff"], ["a@h", "b@h"]);
        assert_eq!(m.files_on(Some("b@h")).len(), 2);
        assert!(super::from_doc("x", &json!({"by_range": {}})).is_none());
    }
}
