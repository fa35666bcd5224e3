//! Reading the databases inside a backup without restoring it: `backup databases` (each
//! file's header), `backup verify --deep` (every tree, body and attachment) and `restore
//! --database` (one database pushed into a running CouchDB). Files are rebuilt one at a time
//! on scratch disk under the state directory and removed as soon as they are read.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{OpsError, Result, Vault};
use crate::catalog;
use crate::couchdb::couchfile::{AttInfo, CouchFile, CouchFileError, DocInfo, Leaf};
use crate::couchdb::deep::{self, ShardCheck};
use crate::couchdb::ejson;
use crate::couchdb::etf::Term;
use crate::couchdb::http::CouchClient;
use crate::couchdb::multipart::{self, MultipartBody};
use crate::engine::{self, Progress, VerifyReport};
use crate::format::BackupMetadata;

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
    /// A backup with every backup it depends on (oldest first), and scratch space for
    /// its files, removed when dropped.
    fn chain_and_scratch(
        &self,
        keyring: &crate::keyring::KeyRing,
        tenant: &str,
        id: &str,
    ) -> Result<(Vec<BackupMetadata>, Scratch)> {
        let meta = self.load_backup(keyring, tenant, id)?;
        let chain = catalog::chain(&*self.store, keyring, meta)?;
        let dir = self
            .state_dir
            .join("scratch")
            .join(format!("{id}-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| OpsError::io(format!("creating {}", dir.display()), e))?;
        Ok((chain, Scratch(dir)))
    }

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
        let (chain, scratch) = self.chain_and_scratch(&keyring, tenant, id)?;
        let Some(target) = chain.last() else {
            return Err(OpsError::Refused(format!("backup {id} has no data")));
        };
        let found = Mutex::new(Vec::new());
        let select = |path: &str| deep::database_of(path).is_some();
        // Each whole file is read on a checker thread while the stream goes on to the next
        // (at most one waits: scratch holds two files and the one being written).
        let (queue, whole) = std::sync::mpsc::sync_channel::<(String, PathBuf)>(1);
        let queue = Mutex::new(Some(queue));
        let on_whole = |path: &str, file: &std::path::Path| -> crate::Result<()> {
            let q = queue.lock().unwrap_or_else(|p| p.into_inner()).clone();
            q.ok_or(crate::Error::PipelineAborted)?
                .send((path.to_string(), file.to_path_buf()))
                .map_err(|_| crate::Error::PipelineAborted)
        };
        let verify = std::thread::scope(|s| {
            let found = &found;
            let checker = s.spawn(move || -> std::io::Result<()> {
                for (path, file) in whole {
                    let c = match deep {
                        true => deep::check(&file, &path),
                        false => deep::summarize(&file, &path),
                    };
                    found.lock().unwrap_or_else(|p| p.into_inner()).push(c);
                    std::fs::remove_file(&file)?;
                }
                Ok(())
            });
            let verify = engine::inspect(
                &*self.store,
                &keyring,
                &chain,
                progress,
                &scratch.0,
                &select,
                &on_whole,
            );
            // Closing the queue ends the checker once it is empty.
            queue.lock().unwrap_or_else(|p| p.into_inner()).take();
            let checked = checker
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the checker stopped")));
            (verify, checked)
        });
        let (verify, checked) = verify;
        let verify = verify?;
        checked.map_err(|e| OpsError::io("removing a scratch file", e))?;
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

/// `restore ID --database NAME --to-url URL`: one database pushed into a running CouchDB.
pub struct DbRestoreRequest {
    /// The database in the backup.
    pub database: String,
    /// Its name in the target (default: the same).
    pub target_name: Option<String>,
    pub couchdb: CouchClient,
    /// Also the tombstones of deleted documents.
    pub include_deleted: bool,
}

/// What a one-database restore did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DbRestoreReport {
    pub backup_id: String,
    pub database: String,
    pub target: String,
    /// The target CouchDB (no credentials).
    pub target_url: String,
    /// Whether the target database was created (else it existed: a rerun adds what is
    /// missing).
    pub created: bool,
    pub shards: u64,
    pub documents: u64,
    /// Leaf revisions written (conflicts included), and those the target already had.
    pub revisions_written: u64,
    pub revisions_present: u64,
    pub deleted_skipped: u64,
    pub attachments: u64,
    pub attachment_bytes: u64,
    pub security: bool,
    /// Revisions the target refused, with its reason (at most 100).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<String>,
}

/// Leaf revisions per `_bulk_docs` request, the body size that sends a batch early, and
/// how many requests are in flight at once.
const BATCH_DOCS: usize = 200;
const BATCH_BYTES: usize = 4 << 20;
const SENDERS: usize = 8;
/// A revision with at least this many attachment bytes goes alone, its attachments as raw
/// `multipart/related` parts streamed from the file: CouchDB then neither parses nor
/// base64-decodes them, and memory stays flat however large they are. Not lower: each such
/// request is a commit of its own (measured: 100 KiB documents one by one took twice as
/// long as in batches).
const MULTIPART_MIN: u64 = 4 << 20;

/// A request for the senders.
enum Request {
    /// A `_bulk_docs` body.
    Bulk(String),
    /// One revision: `PUT /{db}/{id}?new_edits=false`, `multipart/related`.
    Doc {
        id: String,
        rev: String,
        boundary: String,
        body: Box<MultipartBody>,
    },
}

impl Vault {
    /// Pushes one database of a backup into a running CouchDB: every document's leaf
    /// revisions with their histories (`new_edits: false`, so conflicts stay conflicts),
    /// attachments with their bytes and types, design documents, `_security`; tombstones
    /// with `include_deleted`. Revisions the target has are skipped (`_revs_diff`), so a
    /// rerun after a failure sends only what is missing. Shard files are rebuilt one at a
    /// time on scratch disk and pushed as soon as each is whole, a few requests at once.
    pub fn restore_database(
        &self,
        tenant: &str,
        id: &str,
        req: &DbRestoreRequest,
        progress: &Progress,
    ) -> Result<DbRestoreReport> {
        let keyring = self.keyring()?;
        let (chain, scratch) = self.chain_and_scratch(&keyring, tenant, id)?;
        let Some(target) = chain.last() else {
            return Err(OpsError::Refused(format!("backup {id} has no data")));
        };
        let is_ours = |path: &str| matches!(deep::database_of(path), Some((db, Some(_))) if db == req.database);
        let node_local =
            |path: &str| matches!(deep::database_of(path), Some((db, None)) if db == req.database);
        if target.files.iter().any(|f| node_local(&f.path)) {
            return Err(OpsError::Refused(format!(
                "'{}' is a node-local database (data/{}.couch), not a clustered one: restore the node (`couchvault restore {id} --to DIR`) to get it back",
                req.database, req.database
            )));
        }
        if !target.files.iter().any(|f| is_ours(&f.path)) {
            return Err(OpsError::Refused(format!(
                "backup {id} holds no database '{}'; `couchvault backup databases {id}` lists those it holds",
                req.database
            )));
        }
        let name = req
            .target_name
            .clone()
            .unwrap_or_else(|| req.database.clone());
        // Reachable before the stream starts; the database itself is created with the
        // first shard file, whose header says whether it is partitioned.
        req.couchdb.version()?;
        let (queue, bodies) = std::sync::mpsc::sync_channel::<Request>(SENDERS);
        let push = Push {
            req,
            target: &name,
            report: Mutex::new(DbRestoreReport {
                backup_id: target.backup_id.clone(),
                database: req.database.clone(),
                target: name.clone(),
                target_url: req.couchdb.base().to_string(),
                ..Default::default()
            }),
            created: std::sync::OnceLock::new(),
            revs_limit: Mutex::new(None),
            security: Mutex::new(None),
            progress,
            queue: Mutex::new(Some(queue)),
            failure: Mutex::new(None),
        };
        // Each whole shard file is pushed from its own thread while the stream goes on to
        // the next; its bodies go to the senders.
        let (files, whole) = std::sync::mpsc::sync_channel::<(String, PathBuf)>(1);
        let files = Mutex::new(Some(files));
        let on_whole = |path: &str, file: &std::path::Path| -> crate::Result<()> {
            let q = push.lock(&files).clone();
            q.ok_or(crate::Error::PipelineAborted)?
                .send((path.to_string(), file.to_path_buf()))
                .map_err(|_| crate::Error::PipelineAborted)
        };
        let bodies = Mutex::new(bodies);
        let read = std::thread::scope(|s| {
            for _ in 0..SENDERS {
                s.spawn(|| push.send_queued(&bodies));
            }
            let reader = s.spawn(|| {
                for (path, file) in whole {
                    let pushed = push.shard(&file, &path);
                    let removed = std::fs::remove_file(&file);
                    if let Err(why) = pushed.and(removed.map_err(|e| e.to_string())) {
                        push.lock(&push.failure).get_or_insert(why);
                    }
                }
                // Closing the queue ends the senders once it is empty.
                push.lock(&push.queue).take();
            });
            let read = engine::inspect(
                &*self.store,
                &keyring,
                &chain,
                progress,
                &scratch.0,
                &is_ours,
                &on_whole,
            );
            push.lock(&files).take();
            let _ = reader.join();
            // Also when the reader died: the senders must end.
            push.lock(&push.queue).take();
            read
        });
        if let Some(why) = push.lock(&push.failure).take() {
            return Err(OpsError::Refused(why));
        }
        read?;
        let security = push.lock(&push.security).take();
        let revs_limit = push.lock(&push.revs_limit).take();
        let mut report = push.report.into_inner().unwrap_or_else(|p| p.into_inner());
        report.created = matches!(push.created.get(), Some(Ok(true)));
        if let Some(limit) = revs_limit {
            req.couchdb.put_revs_limit(&name, limit)?;
        }
        if let Some(sec) = security {
            req.couchdb.put_security(&name, sec)?;
            report.security = true;
        }
        Ok(report)
    }
}

/// What every shard file's push shares.
struct Push<'a> {
    req: &'a DbRestoreRequest,
    target: &'a str,
    report: Mutex<DbRestoreReport>,
    /// Whether the first shard file created the target database (or the error).
    created: std::sync::OnceLock<std::result::Result<bool, String>>,
    /// A `_revs_limit` other than CouchDB's default, set at the end.
    revs_limit: Mutex<Option<u64>>,
    security: Mutex<Option<String>>,
    progress: &'a Progress,
    /// `_bulk_docs` bodies for the senders; taken (closed) when every file is read.
    queue: Mutex<Option<std::sync::mpsc::SyncSender<Request>>>,
    /// The first failure of a sender: everything stops.
    failure: Mutex<Option<String>>,
}

impl Push<'_> {
    fn lock<'m, T>(&self, m: &'m Mutex<T>) -> std::sync::MutexGuard<'m, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pushes every document of one shard file.
    fn shard(&self, file: &std::path::Path, path: &str) -> std::result::Result<(), String> {
        let at = |e: &dyn std::fmt::Display| format!("{path}: {e}");
        // Shared with the senders: a multipart body reads its attachments while it is sent.
        let f = std::fs::File::open(file)
            .and_then(CouchFile::new)
            .map(Arc::new)
            .map_err(|e| at(&e))?;
        let header = f.db_header().map_err(|e| at(&e))?;
        let partitioned = f.partitioned(&header).map_err(|e| at(&e))?;
        self.created
            .get_or_init(|| {
                let made = self.req.couchdb.create_db(self.target, partitioned);
                made.map_err(|e| e.to_string())
            })
            .clone()?;
        if let Some(limit) = header.revs_limit.filter(|n| *n != 1000) {
            self.lock(&self.revs_limit).get_or_insert(limit);
        }
        if let Some(sec) = f.security(&header).map_err(|e| at(&e))? {
            let json = ejson::to_json(&sec).map_err(|e| at(&e))?;
            self.lock(&self.security).get_or_insert(json);
        }
        self.lock(&self.report).shards += 1;
        let mut batch = Vec::new();
        let mut failed = None;
        let folded = f.fold_docs(&header, &mut |doc| {
            batch.push(doc);
            if batch.len() >= BATCH_DOCS {
                self.batch(&f, &std::mem::take(&mut batch)).map_err(|e| {
                    failed = Some(e);
                    CouchFileError::Malformed("stopped".into())
                })?;
            }
            Ok(())
        });
        if let Some(e) = failed {
            return Err(at(&e));
        }
        folded.map_err(|e| at(&e))?;
        self.batch(&f, &batch).map_err(|e| at(&e))
    }

    /// Asks the target which of these documents' leaf revisions it lacks, then queues
    /// those for the senders.
    fn batch(&self, f: &Arc<CouchFile>, docs: &[DocInfo]) -> std::result::Result<(), String> {
        let mut wanted = serde_json::Map::new();
        let mut skipped = 0;
        for d in docs {
            let revs: Vec<Value> = d
                .leaves
                .iter()
                .filter(|l| {
                    let keep = !l.deleted || self.req.include_deleted;
                    skipped += u64::from(!keep);
                    keep && l.body_ptr.is_some()
                })
                .map(|l| Value::String(l.rev.clone()))
                .collect();
            if !revs.is_empty() {
                wanted.insert(d.id.clone(), Value::Array(revs));
            }
        }
        let asked: u64 = wanted
            .values()
            .filter_map(Value::as_array)
            .map(|a| a.len() as u64)
            .sum();
        let missing = match wanted.is_empty() {
            true => Value::Object(Default::default()),
            false => self
                .req
                .couchdb
                .revs_diff(self.target, &Value::Object(wanted))
                .map_err(|e| e.to_string())?,
        };
        const OPEN: &str = r#"{"new_edits":false,"docs":["#;
        let mut body = String::from(OPEN);
        let mut in_body = 0;
        let mut written = 0;
        for d in docs {
            let Some(revs) = missing.get(&d.id).and_then(|m| m["missing"].as_array()) else {
                continue;
            };
            for leaf in d
                .leaves
                .iter()
                .filter(|l| revs.iter().any(|r| r == l.rev.as_str()))
            {
                written += 1;
                let ptr = leaf.body_ptr.unwrap_or_default();
                let (doc, atts) = f
                    .doc_body(ptr)
                    .map_err(|e| format!("document {}: {e}", d.id))?;
                // Either length may be a hostile file's lie: the larger decides.
                let att_bytes: u64 = atts.iter().map(|a| a.att_len.max(a.disk_len)).sum();
                if att_bytes >= MULTIPART_MIN {
                    let request = self.multipart(f, d, leaf, &doc, &atts)?;
                    self.enqueue(request)?;
                    continue;
                }
                if in_body > 0 {
                    body.push(',');
                }
                self.write_doc(f, d, leaf, &doc, &atts, false, &mut body)?;
                in_body += 1;
                if body.len() >= BATCH_BYTES {
                    let full = std::mem::replace(&mut body, String::from(OPEN));
                    self.enqueue(Request::Bulk(full + "]}"))?;
                    in_body = 0;
                }
            }
        }
        if in_body > 0 {
            self.enqueue(Request::Bulk(body + "]}"))?;
        }
        let mut r = self.lock(&self.report);
        r.documents += docs.len() as u64;
        r.revisions_written += written;
        r.revisions_present += asked - written;
        r.deleted_skipped += skipped;
        self.progress
            .files_done
            .fetch_add(docs.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    fn enqueue(&self, request: Request) -> std::result::Result<(), String> {
        if let Some(why) = self.lock(&self.failure).clone() {
            return Err(why);
        }
        let queue = self.lock(&self.queue).clone();
        match queue.map(|q| q.send(request)) {
            Some(Ok(())) => Ok(()),
            _ => Err("the senders stopped".into()),
        }
    }

    /// A sender: posts queued bodies until the queue closes; the first failure stops all.
    fn send_queued(&self, requests: &Mutex<std::sync::mpsc::Receiver<Request>>) {
        loop {
            let next = self.lock(requests).recv();
            let Ok(request) = next else { return };
            if self.lock(&self.failure).is_some() {
                continue;
            }
            if let Err(e) = self.post(request) {
                self.lock(&self.failure).get_or_insert(e);
            }
        }
    }

    fn post(&self, request: Request) -> std::result::Result<(), String> {
        let answers = match request {
            Request::Bulk(body) => self.req.couchdb.bulk_docs(self.target, body),
            Request::Doc {
                id,
                rev,
                boundary,
                body,
            } => self
                .req
                .couchdb
                .put_multipart(self.target, &id, &boundary, *body)
                .map(|answer| {
                    // One answer, as _bulk_docs gives them.
                    let mut a = answer;
                    a["id"] = Value::String(id);
                    a["rev"] = Value::String(rev);
                    Value::Array(vec![a])
                }),
        }
        .map_err(|e| e.to_string())?;
        let mut r = self.lock(&self.report);
        for a in answers.as_array().into_iter().flatten() {
            if let Some(err) = a.get("error").and_then(Value::as_str) {
                if r.refused.len() < 100 {
                    r.refused.push(format!(
                        "{} {}: {err}: {}",
                        a["id"].as_str().unwrap_or("?"),
                        a["rev"].as_str().unwrap_or("?"),
                        a["reason"].as_str().unwrap_or("")
                    ));
                }
            }
        }
        Ok(())
    }

    /// One revision with its attachments as raw `multipart/related` parts, read from the
    /// file while the request is sent.
    fn multipart(
        &self,
        f: &Arc<CouchFile>,
        d: &DocInfo,
        leaf: &Leaf,
        doc: &Term,
        atts: &[AttInfo],
    ) -> std::result::Result<Request, String> {
        let boundary = format!("couchvault-{}", ulid::Ulid::new());
        let mut json = String::new();
        self.write_doc(f, d, leaf, doc, atts, true, &mut json)?;
        let body = Box::new(MultipartBody::new(&boundary, json, f, atts));
        Ok(Request::Doc {
            id: d.id.clone(),
            rev: leaf.rev.clone(),
            boundary,
            body,
        })
    }

    /// One leaf revision as JSON: its history, and its attachments inline (base64) or,
    /// with `follows`, as parts that follow the JSON in order.
    #[allow(clippy::too_many_arguments)]
    fn write_doc(
        &self,
        f: &CouchFile,
        d: &DocInfo,
        leaf: &Leaf,
        body: &Term,
        atts: &[AttInfo],
        follows: bool,
        out: &mut String,
    ) -> std::result::Result<(), String> {
        out.push_str(r#"{"_id":"#);
        ejson::string(&d.id, out);
        out.push_str(r#","_rev":"#);
        ejson::string(&leaf.rev, out);
        out.push_str(&format!(
            r#","_revisions":{{"start":{},"ids":["#,
            leaf.pos()
        ));
        for (i, h) in leaf.path.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            ejson::string(h, out);
        }
        out.push_str("]}");
        if leaf.deleted {
            out.push_str(r#","_deleted":true"#);
        }
        if !atts.is_empty() {
            out.push_str(r#","_attachments":{"#);
            for (i, att) in atts.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                ejson::string(&att.name, out);
                out.push_str(r#":{"content_type":"#);
                ejson::string(&att.content_type, out);
                if follows {
                    multipart::follows_json(att, out);
                } else {
                    // Lengths come from the file: never allocated ahead from them.
                    let mut stored = Vec::new();
                    f.attachment(att, &mut |b| {
                        stored.extend_from_slice(b);
                        Ok(())
                    })
                    .map_err(|e| format!("document {}: {e}", d.id))?;
                    let data = identity_bytes(att, stored).map_err(|e| {
                        format!("document {}: attachment '{}': {e}", d.id, att.name)
                    })?;
                    out.push_str(r#","data":""#);
                    base64::engine::general_purpose::STANDARD.encode_string(&data, out);
                    out.push('"');
                }
                out.push('}');
                let mut r = self.lock(&self.report);
                r.attachments += 1;
                r.attachment_bytes += att.att_len;
            }
            out.push('}');
        }
        if let Some(pairs) = ejson::pairs(body).filter(|p| !p.is_empty()) {
            out.push(',');
            ejson::write_pairs(pairs, out).map_err(|e| format!("document {}: {e}", d.id))?;
        }
        out.push('}');
        Ok(())
    }
}

/// An attachment's own bytes: its stored bytes, gunzipped when stored gzip-encoded. A
/// hostile file's gzip cannot inflate past the length the attachment records, nor past what
/// deflate can hold (about 1,032 bytes per stored byte).
fn identity_bytes(att: &AttInfo, stored: Vec<u8>) -> std::result::Result<Vec<u8>, String> {
    if att.encoding != "gzip" {
        return Ok(stored);
    }
    let most = (stored.len() as u64)
        .saturating_mul(1032)
        .saturating_add(64);
    if att.att_len > most {
        return Err(format!(
            "records {} bytes, more than its {} gzip bytes can hold",
            att.att_len,
            stored.len()
        ));
    }
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(stored.as_slice())
        .take(att.att_len + 1)
        .read_to_end(&mut plain)
        .map_err(|e| e.to_string())?;
    if plain.len() as u64 != att.att_len {
        return Err(format!(
            "inflates to {}{} bytes, it records {}",
            if plain.len() as u64 > att.att_len {
                "more than "
            } else {
                ""
            },
            plain.len().min(att.att_len as usize),
            att.att_len
        ));
    }
    Ok(plain)
}

#[cfg(test)]
mod attachment_tests {
    use super::*;
    use std::io::Write as _;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    fn att(att_len: u64) -> AttInfo {
        AttInfo {
            name: "a".into(),
            content_type: "text/plain".into(),
            chunks: vec![],
            att_len,
            disk_len: 0,
            revpos: 1,
            md5: vec![],
            encoding: "gzip".into(),
        }
    }

    /// A hostile file's gzip attachment: a bomb recorded as small, or a length no gzip can
    /// hold, is an error; nothing is allocated from the recorded length.
    #[test]
    fn gzip_attachments_inflate_only_to_their_recorded_length() {
        let text = b"hello, attachment ".repeat(100);
        assert_eq!(
            identity_bytes(&att(text.len() as u64), gzip(&text)).unwrap(),
            text
        );
        let bomb = gzip(&vec![0u8; 50 << 20]);
        let e = identity_bytes(&att(100), bomb.clone()).unwrap_err();
        assert!(e.contains("more than 100"), "{e}");
        let e = identity_bytes(&att(u64::MAX), bomb).unwrap_err();
        assert!(e.contains("can hold"), "{e}");
    }
}
