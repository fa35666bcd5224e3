//! The daemon's state in sled: schedules, jobs, hashed API tokens and the backup index.
//! Every record is JSON with a format version field; every acknowledged write is flushed.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::scheduler::Schedule;
use crate::wire::{BackupSummary, ClusterSummary, Job};

pub const DB_FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("the daemon's database {path}: {source}; is another couchvault daemon running on this state directory?")]
    Open { path: String, source: sled::Error },
    #[error("the daemon's database: {0}")]
    Sled(#[from] sled::Error),
    #[error("the daemon's database has a damaged record in {tree}: {reason}")]
    Corrupt { tree: &'static str, reason: String },
    #[error("the daemon's database is format {found}; this couchvault reads format {DB_FORMAT}")]
    Format { found: String },
}

/// A stored API token: only the SHA-256 of the secret is kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRecord {
    pub couchvault_token: u32,
    #[serde(flatten)]
    pub info: crate::wire::TokenInfo,
}

/// The backup index's record format; an index of another format is dropped at open (it
/// is rebuilt from the store, which stays the truth).
pub const INDEX_FORMAT: u32 = 3;

/// One row of the backup index: the backup's summary as the API lists it. Nested, not
/// flattened: listing reads every row, and serde's flatten buffers each one first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexEntry {
    pub couchvault_index: u32,
    pub summary: BackupSummary,
}

impl IndexEntry {
    pub fn of(m: &crate::format::BackupMetadata) -> IndexEntry {
        IndexEntry {
            couchvault_index: INDEX_FORMAT,
            summary: BackupSummary::of(m),
        }
    }
}

/// One committed cluster backup in the index (tree `cluster_index`, same format version).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterIndexEntry {
    pub couchvault_index: u32,
    pub cluster: ClusterSummary,
}

impl ClusterIndexEntry {
    pub fn of(m: &crate::cluster::manifest::ClusterManifest) -> ClusterIndexEntry {
        ClusterIndexEntry {
            couchvault_index: INDEX_FORMAT,
            cluster: ClusterSummary::of(m),
        }
    }
}

#[derive(Clone)]
pub struct Db {
    db: sled::Db,
    pub schedules: sled::Tree,
    pub jobs: sled::Tree,
    pub tokens: sled::Tree,
    pub index: sled::Tree,
    pub clusters: sled::Tree,
    pub instances: sled::Tree,
}

fn get<T: DeserializeOwned>(
    tree: &sled::Tree,
    name: &'static str,
    key: &[u8],
) -> Result<Option<T>, DbError> {
    match tree.get(key)? {
        None => Ok(None),
        Some(v) => serde_json::from_slice(&v)
            .map(Some)
            .map_err(|e| DbError::Corrupt {
                tree: name,
                reason: e.to_string(),
            }),
    }
}

fn all<T: DeserializeOwned>(
    tree: &sled::Tree,
    name: &'static str,
    prefix: &[u8],
) -> Result<Vec<T>, DbError> {
    tree.scan_prefix(prefix)
        .map(|kv| {
            let (_, v) = kv?;
            serde_json::from_slice(&v).map_err(|e| DbError::Corrupt {
                tree: name,
                reason: e.to_string(),
            })
        })
        .collect()
}

fn put<T: Serialize>(tree: &sled::Tree, key: &[u8], value: &T) -> Result<(), DbError> {
    let bytes = serde_json::to_vec(value).map_err(|e| DbError::Corrupt {
        tree: "write",
        reason: e.to_string(),
    })?;
    tree.insert(key, bytes)?;
    Ok(())
}

impl Db {
    pub fn open(dir: &Path) -> Result<Db, DbError> {
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::LowSpace)
            .open()
            .map_err(|source| DbError::Open {
                path: dir.display().to_string(),
                source,
            })?;
        match db.get("couchvault_db")? {
            None => {
                db.insert("couchvault_db", DB_FORMAT.to_string().as_bytes())?;
            }
            Some(v) if v.as_ref() == DB_FORMAT.to_string().as_bytes() => {}
            Some(v) => {
                return Err(DbError::Format {
                    found: String::from_utf8_lossy(&v).into_owned(),
                })
            }
        }
        let index = db.open_tree("backup_index")?;
        let current = |v: &[u8]| {
            serde_json::from_slice::<IndexEntry>(v)
                .is_ok_and(|e| e.couchvault_index == INDEX_FORMAT)
        };
        if let Some((_, v)) = index.first()? {
            if !current(&v) {
                index.clear()?;
            }
        }
        let clusters = db.open_tree("cluster_index")?;
        if let Some((_, v)) = clusters.first()? {
            if !serde_json::from_slice::<ClusterIndexEntry>(&v)
                .is_ok_and(|e| e.couchvault_index == INDEX_FORMAT)
            {
                clusters.clear()?;
            }
        }
        Ok(Db {
            schedules: db.open_tree("schedules")?,
            jobs: db.open_tree("jobs")?,
            tokens: db.open_tree("tokens")?,
            index,
            clusters,
            instances: db.open_tree("instances")?,
            db,
        })
    }

    /// One JSON record of `tree` (named `name` in errors).
    pub fn get<T: DeserializeOwned>(
        &self,
        tree: &sled::Tree,
        name: &'static str,
        key: &[u8],
    ) -> Result<Option<T>, DbError> {
        get(tree, name, key)
    }
    /// Every record of `tree` under `prefix`, in key order.
    pub fn all<T: DeserializeOwned>(
        &self,
        tree: &sled::Tree,
        name: &'static str,
        prefix: &[u8],
    ) -> Result<Vec<T>, DbError> {
        all(tree, name, prefix)
    }
    pub fn put<T: Serialize>(
        &self,
        tree: &sled::Tree,
        key: &[u8],
        value: &T,
    ) -> Result<(), DbError> {
        put(tree, key, value)
    }

    /// Makes every write so far durable; called before the API acknowledges one.
    pub async fn flush(&self) -> Result<(), DbError> {
        self.db.flush_async().await?;
        Ok(())
    }

    pub fn flush_blocking(&self) -> Result<(), DbError> {
        self.db.flush()?;
        Ok(())
    }

    pub fn schedules(&self) -> Result<Vec<Schedule>, DbError> {
        all(&self.schedules, "schedules", b"")
    }
    pub fn put_schedule(&self, s: &Schedule) -> Result<(), DbError> {
        put(&self.schedules, s.id.as_bytes(), s)
    }
    pub fn remove_schedule(&self, id: &str) -> Result<bool, DbError> {
        Ok(self.schedules.remove(id)?.is_some())
    }

    pub fn job(&self, id: &str) -> Result<Option<Job>, DbError> {
        get(&self.jobs, "jobs", id.as_bytes())
    }
    pub fn jobs(&self) -> Result<Vec<Job>, DbError> {
        all(&self.jobs, "jobs", b"")
    }
    pub fn put_job(&self, j: &Job) -> Result<(), DbError> {
        put(&self.jobs, j.id.as_bytes(), j)
    }
    pub fn remove_job(&self, id: &str) -> Result<(), DbError> {
        self.jobs.remove(id)?;
        Ok(())
    }

    pub fn token(&self, hash: &str) -> Result<Option<TokenRecord>, DbError> {
        get(&self.tokens, "tokens", hash.as_bytes())
    }
    pub fn tokens(&self) -> Result<Vec<(String, TokenRecord)>, DbError> {
        self.tokens
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                let rec = serde_json::from_slice(&v).map_err(|e| DbError::Corrupt {
                    tree: "tokens",
                    reason: e.to_string(),
                })?;
                Ok((String::from_utf8_lossy(&k).into_owned(), rec))
            })
            .collect()
    }
    pub fn put_token(&self, hash: &str, t: &TokenRecord) -> Result<(), DbError> {
        put(&self.tokens, hash.as_bytes(), t)
    }
    pub fn remove_token(&self, hash: &str) -> Result<(), DbError> {
        self.tokens.remove(hash)?;
        Ok(())
    }

    fn index_key(tenant: &str, id: &str) -> Vec<u8> {
        format!("{tenant}/{id}").into_bytes()
    }
    pub fn index_put(&self, e: &IndexEntry) -> Result<(), DbError> {
        put(
            &self.index,
            &Self::index_key(&e.summary.tenant, &e.summary.backup_id),
            e,
        )
    }
    pub fn index_remove(&self, tenant: &str, id: &str) -> Result<(), DbError> {
        self.index.remove(Self::index_key(tenant, id))?;
        Ok(())
    }
    /// A tenant's indexed backups, oldest first (ids sort by time).
    pub fn index_list(&self, tenant: &str) -> Result<Vec<IndexEntry>, DbError> {
        all(&self.index, "backup_index", format!("{tenant}/").as_bytes())
    }
    /// Every tenant's indexed backups.
    pub fn index_all(&self) -> Result<Vec<IndexEntry>, DbError> {
        all(&self.index, "backup_index", b"")
    }
    /// Replaces a tenant's index (backups and cluster backups) with what the store holds.
    pub fn index_replace(
        &self,
        tenant: &str,
        entries: &[IndexEntry],
        clusters: &[ClusterIndexEntry],
    ) -> Result<(), DbError> {
        replace_prefix(
            &self.index,
            tenant,
            entries.iter().map(|e| (&e.summary.backup_id, e)),
        )?;
        replace_prefix(
            &self.clusters,
            tenant,
            clusters.iter().map(|e| (&e.cluster.backup_id, e)),
        )
    }

    pub fn cluster_put(&self, e: &ClusterIndexEntry) -> Result<(), DbError> {
        put(
            &self.clusters,
            &Self::index_key(&e.cluster.tenant, &e.cluster.backup_id),
            e,
        )
    }
    pub fn cluster_remove(&self, tenant: &str, id: &str) -> Result<(), DbError> {
        self.clusters.remove(Self::index_key(tenant, id))?;
        Ok(())
    }
    /// Every tenant's indexed cluster backups.
    pub fn cluster_all(&self) -> Result<Vec<ClusterIndexEntry>, DbError> {
        all(&self.clusters, "cluster_index", b"")
    }
    /// A tenant's indexed cluster backups, oldest first.
    pub fn cluster_list(&self, tenant: &str) -> Result<Vec<ClusterIndexEntry>, DbError> {
        all(
            &self.clusters,
            "cluster_index",
            format!("{tenant}/").as_bytes(),
        )
    }
}

/// Replaces the records of `tree` under `<tenant>/` with `records` (id, record), at once.
fn replace_prefix<'a, T: Serialize + 'a>(
    tree: &sled::Tree,
    tenant: &str,
    records: impl Iterator<Item = (&'a String, &'a T)>,
) -> Result<(), DbError> {
    let mut batch = sled::Batch::default();
    for kv in tree.scan_prefix(format!("{tenant}/").as_bytes()) {
        batch.remove(kv?.0);
    }
    for (id, r) in records {
        let bytes = serde_json::to_vec(r).map_err(|e| DbError::Corrupt {
            tree: "index",
            reason: e.to_string(),
        })?;
        batch.insert(Db::index_key(tenant, id), bytes);
    }
    tree.apply_batch(batch)?;
    Ok(())
}
