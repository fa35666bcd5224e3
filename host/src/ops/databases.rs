//! Reading the databases inside a backup without restoring it: `backup databases` (each
//! file's header) and `backup verify --deep` (every tree, body and attachment). Files are
//! rebuilt one at a time on scratch disk under the state directory and removed as soon as
//! they are read.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::{OpsError, Result, Vault};
use crate::catalog;
use crate::couchdb::deep::{self, ShardCheck};
use crate::engine::{self, Progress, VerifyReport};
use crate::format::{BackupMetadata, Kind};

/// One database of a backup: its shard files summed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DatabaseRow {
    pub name: String,
    pub shards: u64,
    pub doc_count: u64,
    pub doc_del_count: u64,
    /// Bytes of its files.
    pub size: u64,
    /// CouchDB's own count when the backup started, when it was recorded and every range
    /// of the database is in the backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_doc_count: Option<u64>,
    /// Problems found in its files (listed per file).
    pub problems: u64,
    /// A node-local database (`data/<name>.couch`), not a clustered one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub node_local: bool,
}

/// What `backup databases` and `backup verify --deep` found.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DatabasesReport {
    pub backup_id: String,
    /// Whether every tree, body and attachment was read (`verify --deep`), or headers only.
    pub deep: bool,
    pub databases: Vec<DatabaseRow>,
    pub files: Vec<ShardCheck>,
    /// The verify of the whole backup the files were read in (deep only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub verify: Option<VerifyReport>,
    /// Notes that are not damage, e.g. a count that moved while the backup ran.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Damage seen across a database's files, e.g. fewer documents than CouchDB counted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub damage: Vec<String>,
}

impl DatabasesReport {
    /// Problems in every file together.
    pub fn problems(&self) -> u64 {
        let in_files: u64 = self
            .files
            .iter()
            .map(|f| f.problems.len() as u64 + f.more_problems)
            .sum();
        in_files + self.damage.len() as u64
    }
}

/// Removes the scratch directory however the read ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.0.display(), "cannot remove scratch directory: {e}");
            }
        }
    }
}

impl Vault {
    /// The databases of a backup, from each `.couch` file's header.
    pub fn databases(
        &self,
        tenant: &str,
        id: &str,
        progress: &Progress,
    ) -> Result<DatabasesReport> {
        self.read_databases(tenant, id, false, progress)
    }

    /// Everything `verify --chain` checks, and every `.couch` file opened at its last
    /// header, its trees walked, every body and attachment read and checked. Damage is in
    /// the report ([`DatabasesReport::problems`]), not an error.
    pub fn verify_deep(
        &self,
        tenant: &str,
        id: &str,
        progress: &Progress,
    ) -> Result<DatabasesReport> {
        self.read_databases(tenant, id, true, progress)
    }

    fn read_databases(
        &self,
        tenant: &str,
        id: &str,
        deep: bool,
        progress: &Progress,
    ) -> Result<DatabasesReport> {
        let keyring = self.keyring()?;
        let meta = catalog::load(&*self.store, &keyring, tenant, id)?;
        let chain = match meta.kind {
            Kind::Full => vec![meta],
            _ => catalog::chain(&*self.store, &keyring, meta)?,
        };
        let Some(target) = chain.last() else {
            return Err(OpsError::Refused(format!("backup {id} has no data")));
        };
        let dir = self
            .state_dir
            .join("scratch")
            .join(format!("{id}-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| OpsError::io(format!("creating {}", dir.display()), e))?;
        let scratch = Scratch(dir);
        let found = Mutex::new(Vec::new());
        let select = |path: &str| deep::database_of(path).is_some();
        let on_whole = |path: &str, file: &std::path::Path| -> crate::Result<()> {
            let c = match deep {
                true => deep::check(file, path),
                false => deep::summarize(file, path),
            };
            found.lock().unwrap_or_else(|p| p.into_inner()).push(c);
            std::fs::remove_file(file)
                .map_err(|e| crate::Error::io(format!("removing {}", file.display()), e))
        };
        let verify = engine::inspect(
            &*self.store,
            &keyring,
            &chain,
            progress,
            &scratch.0,
            &select,
            &on_whole,
        )?;
        let mut files = found.into_inner().unwrap_or_else(|p| p.into_inner());
        files.sort_by(|a, b| a.file.cmp(&b.file));
        let (databases, notes, damage) = summarize(target, &files);
        Ok(DatabasesReport {
            backup_id: target.backup_id.clone(),
            deep,
            databases,
            files,
            verify: deep.then_some(verify),
            notes,
            damage,
        })
    }
}

/// Per database: its files summed, and CouchDB's count at backup start beside them. Live
/// and deleted documents together only grow while a backup runs (a purge aside): files
/// holding fewer than CouchDB counted at the start are damage (cut short, or lost).
fn summarize(
    meta: &BackupMetadata,
    files: &[ShardCheck],
) -> (Vec<DatabaseRow>, Vec<String>, Vec<String>) {
    // Node-local databases (`data/_users.couch`) are not the clustered ones of that name.
    let mut rows: BTreeMap<(&str, bool), (DatabaseRow, Vec<&str>)> = BTreeMap::new();
    for f in files {
        let local = f.range.is_none();
        let (row, ranges) = rows.entry((&f.database, local)).or_insert_with(|| {
            (
                DatabaseRow {
                    name: f.database.clone(),
                    node_local: local,
                    ..Default::default()
                },
                Vec::new(),
            )
        });
        row.shards += 1;
        row.doc_count += f.doc_count;
        row.doc_del_count += f.doc_del_count;
        row.size += f.size;
        row.problems += f.problems.len() as u64 + f.more_problems;
        ranges.extend(f.range.as_deref());
    }
    let (mut notes, mut damage) = (Vec::new(), Vec::new());
    let live = meta.couchdb.as_ref().map(|c| &c.databases);
    let out = rows
        .into_values()
        .map(|(mut row, ranges)| {
            let recorded = live.and_then(|l| l.get(&row.name));
            if let (Some(stats), true) = (recorded.filter(|_| !row.node_local), covers_ring(&ranges)) {
                row.live_doc_count = Some(stats.doc_count);
                let (had, has) = (
                    stats.doc_count + stats.doc_del_count,
                    row.doc_count + row.doc_del_count,
                );
                if has < had {
                    row.problems += 1;
                    damage.push(format!(
                        "{}: its files hold {has} documents (live and deleted), CouchDB counted {had} when the backup started: files cut short or lost",
                        row.name
                    ));
                } else if stats.doc_count != row.doc_count {
                    notes.push(format!(
                        "{}: CouchDB counted {} documents when the backup started, its files hold {} (written while the backup ran)",
                        row.name, stats.doc_count, row.doc_count
                    ));
                }
            }
            row
        })
        .collect();
    (out, notes, damage)
}

/// Whether shard ranges `bbbbbbbb-eeeeeeee` cover the whole hash ring, each once.
fn covers_ring(ranges: &[&str]) -> bool {
    let mut spans: Vec<(u64, u64)> = ranges
        .iter()
        .filter_map(|r| {
            let (b, e) = r.split_once('-')?;
            Some((
                u64::from_str_radix(b, 16).ok()?,
                u64::from_str_radix(e, 16).ok()?,
            ))
        })
        .collect();
    spans.sort_unstable();
    let mut next = 0u64;
    for (b, e) in spans {
        if b != next || e < b {
            return false;
        }
        next = e + 1;
    }
    next == 1 << 32
}

#[cfg(test)]
mod tests {
    #[test]
    fn rings() {
        assert!(super::covers_ring(&[
            "00000000-7fffffff",
            "80000000-ffffffff"
        ]));
        assert!(super::covers_ring(&["00000000-ffffffff"]));
        assert!(!super::covers_ring(&["00000000-7fffffff"]));
        assert!(!super::covers_ring(&[]));
    }
}
