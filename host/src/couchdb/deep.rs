//! What a `.couch` file of a backup holds, read with [`super::couchfile`]: its header alone
//! (`backup databases`), or every tree, body and attachment (`backup verify --deep`), with
//! any damage named by file, offset and what.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::couchfile::{CouchFile, CouchFileError, DbHeader};
use super::ejson;

/// At most this many problems are listed per file (the count says how many more).
const MAX_PROBLEMS: usize = 50;

/// One `.couch` file of a backup.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ShardCheck {
    /// Its path in the backup, e.g. `data/shards/00000000-7fffffff/orders.1795703450.couch`.
    pub file: String,
    /// The database, e.g. `orders` (`_dbs`, `_nodes`, `_users` for node-local files).
    pub database: String,
    /// The shard's range, e.g. `00000000-7fffffff`; none for a node-local database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<String>,
    pub size: u64,
    /// Live and deleted documents, as the header's by-id tree reduction counts them.
    pub doc_count: u64,
    pub doc_del_count: u64,
    pub update_seq: u64,
    /// Only after a deep check: what walking every tree found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub walked: Option<Walked>,
    /// Damage: what, and where.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// Problems not listed (past the first 50).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub more_problems: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Counts from walking a file's trees.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Walked {
    pub docs: u64,
    pub deleted: u64,
    /// Documents with more than one live leaf.
    pub conflicted: u64,
    /// Revision bodies read (every leaf of every document).
    pub bodies: u64,
    pub attachments: u64,
    pub attachment_bytes: u64,
    pub local_docs: u64,
    /// Entries of the by-sequence tree.
    pub changes: u64,
}

impl ShardCheck {
    fn problem(&mut self, what: String) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(what);
        } else {
            self.more_problems += 1;
        }
    }
}

/// The database and shard range of a backup path: `data/shards/<range>/<db>.<suffix>.couch`
/// or `data/<db>.couch`. None for what is not a database file.
pub fn database_of(archive_path: &str) -> Option<(String, Option<String>)> {
    let rest = archive_path.strip_prefix("data/")?.strip_suffix(".couch")?;
    if let Some(shard) = rest.strip_prefix("shards/") {
        let (range, file) = shard.split_once('/')?;
        let (db, suffix) = file.rsplit_once('.')?;
        if suffix.is_empty() || !suffix.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        return Some((db.to_string(), Some(range.to_string())));
    }
    (!rest.contains('/')).then(|| (rest.to_string(), None))
}

/// The header of a database file: its counts. A file without a valid header is a problem.
pub fn summarize(path: &Path, archive_path: &str) -> ShardCheck {
    opened(path, archive_path).0
}

/// The file opened at its header: its summary, and the file with its header when both read.
fn opened(path: &Path, archive_path: &str) -> (ShardCheck, Option<(CouchFile, DbHeader)>) {
    let (database, range) = database_of(archive_path).unwrap_or_default();
    let mut c = ShardCheck {
        file: archive_path.to_string(),
        database,
        range,
        ..Default::default()
    };
    match open(path).and_then(|f| Ok((f.db_header()?, f))) {
        Ok((h, f)) => {
            c.size = f.len();
            c.doc_count = h.doc_count;
            c.doc_del_count = h.doc_del_count;
            c.update_seq = h.update_seq;
            (c, Some((f, h)))
        }
        Err(e) => {
            c.problem(format!("{archive_path}: {e}"));
            (c, None)
        }
    }
}

/// Everything: the header, every document's revision tree, every leaf's body (valid
/// JSON), every attachment's bytes against its length and MD5, the by-sequence and local
/// trees and `_security`; the counts walked against the header's.
pub fn check(path: &Path, archive_path: &str) -> ShardCheck {
    let (mut c, f, h) = match opened(path, archive_path) {
        (c, Some((f, h))) => (c, f, h),
        (c, None) => return c,
    };
    let mut w = Walked::default();
    // Revisions are gathered a few thousand at a time (memory stays flat), then their
    // bodies and attachments, the bulk of the bytes, are read on two threads.
    let seen_atts = Mutex::new(HashSet::new());
    let mut problems = Vec::new();
    let mut revisions = Vec::new();
    let mut check = |revisions: &mut Vec<(String, String, u64)>, w: &mut Walked| {
        let read = crate::parallel::map(revisions, 2, |(id, rev, ptr)| {
            check_revision(&f, &seen_atts, *ptr)
                .map_err(|e| format!("document {id} revision {rev}: {e}"))
        });
        for r in read {
            w.bodies += 1;
            match r {
                Ok((atts, bytes)) => {
                    w.attachments += atts;
                    w.attachment_bytes += bytes;
                }
                Err(p) => problems.push(p),
            }
        }
        revisions.clear();
    };
    let walked = f.fold_docs(&h, &mut |doc| {
        w.docs += 1;
        if doc.deleted {
            w.deleted += 1;
        }
        if doc.conflicts().next().is_some() {
            w.conflicted += 1;
        }
        for leaf in doc.leaves {
            if let Some(ptr) = leaf.body_ptr {
                revisions.push((doc.id.clone(), leaf.rev, ptr));
            }
        }
        if revisions.len() >= 4096 {
            check(&mut revisions, &mut w);
        }
        Ok(())
    });
    check(&mut revisions, &mut w);
    for p in problems {
        c.problem(format!("{archive_path}: {p}"));
    }
    if let Err(e) = walked {
        c.problem(format!("{archive_path}: by-id tree: {e}"));
    } else if (w.docs - w.deleted, w.deleted) != (c.doc_count, c.doc_del_count) {
        c.problem(format!(
            "{archive_path}: the by-id tree holds {} live and {} deleted documents, the header counts {} and {}",
            w.docs - w.deleted,
            w.deleted,
            c.doc_count,
            c.doc_del_count
        ));
    }
    if let Some(root) = h.seq_root {
        match f.fold_tree(root, &mut |_, _| {
            w.changes += 1;
            Ok(())
        }) {
            Err(e) => c.problem(format!("{archive_path}: by-sequence tree: {e}")),
            Ok(()) if w.changes != w.docs => c.problem(format!(
                "{archive_path}: the by-sequence tree has {} entries for {} documents",
                w.changes, w.docs
            )),
            Ok(()) => {}
        }
    }
    if let Err(e) = f.fold_local_docs(&h, &mut |_, _| {
        w.local_docs += 1;
        Ok(())
    }) {
        c.problem(format!("{archive_path}: local documents: {e}"));
    }
    if let Err(e) = f.security(&h) {
        c.problem(format!("{archive_path}: _security: {e}"));
    }
    c.walked = Some(w);
    c
}

/// One revision's body (it must be JSON) and its attachments not read yet (bytes against
/// length and MD5): how many were read, and their bytes.
fn check_revision(
    f: &CouchFile,
    seen: &Mutex<HashSet<Option<(u64, u64)>>>,
    ptr: u64,
) -> Result<(u64, u64), CouchFileError> {
    let (body, atts) = f.doc_body(ptr)?;
    ejson::to_json(&body)
        .map_err(|e| CouchFileError::Malformed(format!("the body at {ptr} is not JSON: {e}")))?;
    let (mut read, mut bytes) = (0, 0);
    for att in atts {
        // Revisions share attachments: each stored stream is read once.
        let first = att.chunks.first().copied();
        if !seen.lock().unwrap_or_else(|p| p.into_inner()).insert(first) {
            continue;
        }
        f.attachment(&att, &mut |_| Ok(()))?;
        read += 1;
        bytes += att.disk_len;
    }
    Ok((read, bytes))
}

fn open(path: &Path) -> Result<CouchFile, CouchFileError> {
    let file = std::fs::File::open(path).map_err(|source| CouchFileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    CouchFile::new(file).map_err(|source| CouchFileError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::database_of;

    #[test]
    fn database_names_from_paths() {
        assert_eq!(
            database_of("data/shards/00000000-7fffffff/fixture/nested+name$(x).1795703453.couch"),
            Some((
                "fixture/nested+name$(x)".into(),
                Some("00000000-7fffffff".into())
            ))
        );
        assert_eq!(database_of("data/_dbs.couch"), Some(("_dbs".into(), None)));
        assert_eq!(database_of("views/x.view"), None);
        assert_eq!(database_of("data/shards/r/noSuffix.couch"), None);
    }
}
