//! A running cluster's shard maps and databases, read through its HTTP API: what a cluster
//! backup is planned from and what its manifest records.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::couchdb::http::{encode_db, CouchClient, CouchError, DbsInfo};
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

/// Shard maps read per request, and database names per `/_dbs_info` request (CouchDB's
/// default `max_db_number_for_dbs_info_req`).
pub const MAPS_PER_PAGE: usize = 1000;
pub const INFO_PER_REQUEST: usize = 100;
/// `/_dbs_info` requests at a time: a few, to leave the cluster its capacity.
const INFO_WORKERS: usize = 4;

/// Every database's shard map (from the node-local `_dbs`, a page at a time), sorted by
/// name, and its size, document count and properties (`/_dbs_info`, a batch at a time):
/// about 110 requests for 10,000 databases. A database created while they are read is
/// read alone; one deleted meanwhile is left out.
pub fn read(
    client: &CouchClient,
) -> Result<(Vec<DbShards>, BTreeMap<String, DbDetail>), CouchError> {
    read_paged(client, MAPS_PER_PAGE, INFO_PER_REQUEST)
}

/// [`read`], `page` shard maps and `batch` names per request.
pub fn read_paged(
    client: &CouchClient,
    page: usize,
    batch: usize,
) -> Result<(Vec<DbShards>, BTreeMap<String, DbDetail>), CouchError> {
    let names = client.all_dbs()?;
    let mut docs: BTreeMap<String, Value> = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let got = client.shard_maps_after(after.as_deref(), page.max(1))?;
        let full = got.len() >= page.max(1);
        for doc in got {
            let Some(id) = doc["_id"].as_str().map(str::to_string) else {
                continue;
            };
            after = Some(id.clone());
            if !id.starts_with("_design/") {
                docs.insert(id, doc);
            }
        }
        if !full {
            break;
        }
    }
    let sizes = sizes_and_counts(client, &names, batch.max(1))?;
    let mut maps = Vec::new();
    let mut details = BTreeMap::new();
    for db in names {
        let Some((size, doc_count)) = sizes.get(&db).copied().flatten() else {
            continue;
        };
        let doc = match docs.remove(&db) {
            Some(doc) => doc,
            None => client.shard_map(&db)?,
        };
        maps.push(from_doc(&db, &doc).ok_or_else(|| CouchError::Http {
            url: format!("{}/_node/_local/_dbs/{}", client.base(), encode_db(&db)),
            reason: "a shard map without shard_suffix or by_range".into(),
        })?);
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

/// Size and document count of every database of `names` (None: deleted since listed), in
/// batches of `batch` (fewer when the server takes fewer names per request, as the first
/// batch finds), `INFO_WORKERS` requests at a time: CouchDB gathers each database's info
/// from its shards, and that, not the request, is most of the time.
fn sizes_and_counts(
    client: &CouchClient,
    names: &[String],
    mut batch: usize,
) -> Result<BTreeMap<String, Option<(u64, u64)>>, CouchError> {
    let mut out = BTreeMap::new();
    if names.is_empty() {
        return Ok(out);
    }
    let first = loop {
        let chunk = &names[..batch.min(names.len())];
        match client.dbs_info(chunk)? {
            DbsInfo::Each(rows) => break rows,
            DbsInfo::TooMany if batch > 1 => batch /= 2,
            DbsInfo::TooMany => {
                return Err(CouchError::Http {
                    url: format!("{}/_dbs_info", client.base()),
                    reason: "the server takes no database names per request (chttpd max_db_number_for_dbs_info_req)".into(),
                })
            }
        }
    };
    out.extend(first);
    let rest: Vec<&[String]> = names[batch.min(names.len())..].chunks(batch).collect();
    for answer in crate::parallel::map(&rest, INFO_WORKERS, |chunk| client.dbs_info(chunk)) {
        match answer? {
            DbsInfo::Each(rows) => out.extend(rows),
            DbsInfo::TooMany => {
                return Err(CouchError::Http {
                    url: format!("{}/_dbs_info", client.base()),
                    reason: format!("the server took {batch} names per request, then fewer"),
                })
            }
        }
    }
    Ok(out)
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
