//! Reading the shard map from `_dbs.couch` without CouchDB running, and checking a backup
//! plan against it. `_dbs.couch` holds one document per database: `shard_suffix`,
//! `by_range` ([`super::couchfile`] reads it).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::couchfile::CouchFile;
pub use super::couchfile::CouchFileError as ShardMapError;
use super::etf::Term;

type Result<T, E = ShardMapError> = std::result::Result<T, E>;

/// One database of the shard map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbShards {
    pub name: String,
    /// e.g. `.1795703450`, part of every shard file's name.
    pub suffix: String,
    /// Range (e.g. `00000000-7fffffff`) → the nodes holding it.
    pub by_range: BTreeMap<String, Vec<String>>,
}

impl DbShards {
    /// The shard files of this database on `node` (every range when `node` is None),
    /// relative to `database_dir`.
    pub fn files_on(&self, node: Option<&str>) -> Vec<String> {
        self.by_range
            .iter()
            .filter(|(_, nodes)| node.is_none_or(|n| nodes.iter().any(|x| x == n)))
            .map(|(range, _)| format!("shards/{range}/{}{}.couch", self.name, self.suffix))
            .collect()
    }
}

/// Reads every live database's shard map from a `_dbs.couch` file.
pub fn read(path: &Path) -> Result<Vec<DbShards>> {
    let file = std::fs::File::open(path).map_err(|source| ShardMapError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    read_file(file, path)
}

/// [`read`] on a file already opened (`path` names it in errors).
pub fn read_file(file: std::fs::File, path: &Path) -> Result<Vec<DbShards>> {
    let file = CouchFile::new(file).map_err(|source| ShardMapError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let header = file.db_header()?;
    let malformed = ShardMapError::Malformed;
    let mut out = Vec::new();
    file.fold_docs(&header, &mut |doc| {
        let winner = doc.winner();
        if doc.id.starts_with("_design/") || winner.deleted {
            return Ok(());
        }
        let Some(body_ptr) = winner.body_ptr else {
            return Ok(());
        };
        let (body, _) = file.doc_body(body_ptr)?;
        let name = doc.id;
        let suffix = body
            .field("shard_suffix")
            .and_then(Term::as_text)
            .ok_or_else(|| malformed(format!("database '{name}' has no shard_suffix")))?;
        let mut by_range = BTreeMap::new();
        if let Some(ranges) = body.field("by_range") {
            for range in ranges.keys() {
                let nodes = ranges
                    .field(&range)
                    .and_then(Term::as_list)
                    .map(|l| l.iter().filter_map(Term::as_text).collect())
                    .unwrap_or_default();
                by_range.insert(range, nodes);
            }
        }
        out.push(DbShards {
            name,
            suffix,
            by_range,
        });
        Ok(())
    })?;
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// What a backup plan lacks, by the shard map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gaps {
    /// `_dbs.couch` is absent while shard files are present.
    pub no_shard_map: bool,
    /// `database: shards/<range>/<file>` for each shard file the map names but the plan lacks.
    pub missing: Vec<String>,
}

impl Gaps {
    pub fn is_empty(&self) -> bool {
        !self.no_shard_map && self.missing.is_empty()
    }

    /// One line per gap, for messages and the metadata.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.no_shard_map {
            out.push("_dbs.couch (the shard map) is missing while shard files are present: restored, every database would vanish".into());
        }
        out.extend(self.missing.iter().cloned());
        out
    }
}

/// Checks that every shard file the map names for `node` is among `present` (paths
/// relative to the database dir), and that the map is there whenever shards are.
pub fn gaps(map: Option<&[DbShards]>, present: &BTreeSet<String>, node: Option<&str>) -> Gaps {
    let any_shard = present.iter().any(|p| p.starts_with("shards/"));
    let Some(map) = map else {
        return Gaps {
            no_shard_map: any_shard,
            missing: Vec::new(),
        };
    };
    let mut missing = Vec::new();
    for db in map {
        for f in db.files_on(node) {
            if !present.contains(&f) {
                missing.push(format!("database '{}': {f}", db.name));
            }
        }
    }
    Gaps {
        no_shard_map: false,
        missing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fixture's `_dbs.couch` (unpacked by the integration tests' helper path).
    fn fixture_map() -> Option<Vec<DbShards>> {
        let tgz = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/couchdb-3-datadir.tar.gz");
        let dir = tempfile::tempdir().ok()?;
        let ok = std::process::Command::new("tar")
            .arg("xzf")
            .arg(&tgz)
            .arg("-C")
            .arg(dir.path())
            .arg("data/_dbs.couch")
            .status()
            .ok()?
            .success();
        assert!(ok, "unpacking the fixture's _dbs.couch");
        Some(read(&dir.path().join("data/_dbs.couch")).expect("the fixture's shard map reads"))
    }

    #[test]
    fn reads_the_real_shard_map() {
        let Some(map) = fixture_map() else { return };
        let names: Vec<&str> = map.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "_replicator",
                "_users",
                "fixture/nested+name$(x)",
                "fixture_basic",
                "fixture_compacted",
                "fixture_partitioned",
                "fixture_q1",
                "fixture_views"
            ]
        );
        let basic = map
            .iter()
            .find(|d| d.name == "fixture_basic")
            .expect("basic");
        assert_eq!(basic.suffix, ".1795703450");
        assert_eq!(
            basic.files_on(Some("couchdb@127.0.0.1")),
            vec![
                "shards/00000000-7fffffff/fixture_basic.1795703450.couch",
                "shards/80000000-ffffffff/fixture_basic.1795703450.couch"
            ]
        );
        let q1 = map.iter().find(|d| d.name == "fixture_q1").expect("q1");
        assert_eq!(
            q1.by_range.keys().collect::<Vec<_>>(),
            vec!["00000000-ffffffff"]
        );
        assert!(basic.files_on(Some("couchdb@elsewhere")).is_empty());
    }

    #[test]
    fn damaged_files_are_errors_not_panics() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("_dbs.couch");
        std::fs::write(&p, vec![0u8; 10_000]).expect("write");
        assert!(read(&p).is_err());
        std::fs::write(&p, b"").expect("write");
        assert!(read(&p).is_err());
    }
}
