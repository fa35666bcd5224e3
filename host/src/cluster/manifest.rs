//! The cluster manifest: the commit point of a cluster backup, written only once every member
//! backup has committed. `<instance>/<id>/cluster.json` in the tenant's container, MAC'd with
//! the tenant's key like backup metadata (docs/CLUSTERS.md).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::shards::DbDetail;
use crate::couchdb::shardmap::DbShards;
use crate::crypto;
use crate::error::{Error, Result};
use crate::format::FormatError;
use crate::keyring::KeyRing;
use crate::store::Store;

pub const MANIFEST_FILE: &str = "cluster.json";
pub const MANIFEST_VERSION: u32 = 1;

pub fn manifest_object(instance: &str, id: &str) -> String {
    format!("{instance}/{id}/{MANIFEST_FILE}")
}

/// One member backup and the shard files it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub node: String,
    /// The member's backup id (a regular backup of instance `member_instance`).
    pub backup_id: String,
    pub member_instance: String,
    pub shards: Vec<String>,
    pub stored_bytes: u64,
}

/// A database's shard map as it was planned: suffix, range → nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbMap {
    pub suffix: String,
    pub by_range: BTreeMap<String, Vec<String>>,
    /// Its size, document count and shard-map properties when the backup started.
    pub detail: DbDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterManifest {
    pub version: u32,
    pub backup_id: String,
    pub tenant: String,
    pub instance: String,
    /// Unix seconds.
    pub started_at: i64,
    pub committed_at: i64,
    pub key_id: String,
    pub members: Vec<Member>,
    pub databases: BTreeMap<String, DbMap>,
}

impl ClusterManifest {
    pub fn maps(&self) -> Vec<DbShards> {
        self.databases
            .iter()
            .map(|(name, m)| DbShards {
                name: name.clone(),
                suffix: m.suffix.clone(),
                by_range: m.by_range.clone(),
            })
            .collect()
    }
}

pub fn db_maps(maps: &[DbShards], details: &BTreeMap<String, DbDetail>) -> BTreeMap<String, DbMap> {
    maps.iter()
        .map(|d| {
            (
                d.name.clone(),
                DbMap {
                    suffix: d.suffix.clone(),
                    by_range: d.by_range.clone(),
                    detail: details.get(&d.name).cloned().unwrap_or_default(),
                },
            )
        })
        .collect()
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    couchvault_cluster: u32,
    key_id: String,
    mac: String,
    document: Box<serde_json::value::RawValue>,
}

/// Seals and writes the manifest: the cluster backup is committed.
pub fn commit(store: &dyn Store, keyring: &KeyRing, m: &ClusterManifest) -> Result<()> {
    let key = keyring.unlock(keyring.get(&m.tenant, &m.key_id)?)?;
    let doc = serde_json::to_string(m).map_err(|e| FormatError::Metadata(e.to_string()))?;
    let mac = crypto::metadata_mac(key.secret, doc.as_bytes());
    let envelope = format!(
        "{{\"couchvault_cluster\":{MANIFEST_VERSION},\"key_id\":{},\"mac\":\"{}\",\"document\":{doc}}}\n",
        serde_json::Value::String(m.key_id.clone()),
        crate::format::mac_label(&mac)
    );
    store.put(
        &m.tenant,
        &manifest_object(&m.instance, &m.backup_id),
        envelope.as_bytes(),
    )?;
    Ok(())
}

/// Reads and authenticates a cluster manifest.
pub fn load(
    store: &dyn Store,
    keyring: &KeyRing,
    tenant: &str,
    instance: &str,
    id: &str,
) -> Result<ClusterManifest> {
    let bytes = store.get(tenant, &manifest_object(instance, id))?;
    let bad = |why: String| Error::from(FormatError::Metadata(format!("cluster manifest: {why}")));
    let env: Envelope = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    if env.couchvault_cluster != MANIFEST_VERSION {
        return Err(bad(format!(
            "version {} is not supported (this couchvault reads {MANIFEST_VERSION})",
            env.couchvault_cluster
        )));
    }
    let mac = crate::format::parse_mac_label(&env.mac)
        .ok_or_else(|| bad("mac is not hmac-sha256:<hex>".into()))?;
    let key = keyring.unlock(keyring.get(tenant, &env.key_id)?)?;
    if !crypto::metadata_mac_verify(key.secret, env.document.get().as_bytes(), &mac) {
        return Err(FormatError::Mac.into());
    }
    let m: ClusterManifest =
        serde_json::from_str(env.document.get()).map_err(|e| bad(e.to_string()))?;
    if m.backup_id != id || m.tenant != tenant || m.instance != instance {
        return Err(Error::Mismatch {
            id: id.to_string(),
            reason: format!(
                "its manifest describes cluster backup {} of {}/{} (swapped manifest)",
                m.backup_id, m.tenant, m.instance
            ),
        });
    }
    Ok(m)
}
