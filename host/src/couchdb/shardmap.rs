//! Reading the shard map from `_dbs.couch` without CouchDB running, and checking a backup
//! plan against it.
//!
//! A CouchDB file is 4 KiB blocks, each starting with a marker byte (1 for a header block).
//! The last valid header names the root of the by-id B-tree; its leaves hold each document's
//! revision tree, whose winning leaf points at the document body. Every term is a length
//! (high bit: a checksum follows, XXH3-128 or MD5), then `term_to_binary`, usually snappy-compressed (a 1 byte
//! first). `_dbs.couch` holds one document per database: `shard_suffix`, `by_range`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use md5::{Digest, Md5};

use super::etf::{self, Term, TermError};

/// Why `_dbs.couch` could not be read; each says where.
#[derive(Debug, thiserror::Error)]
pub enum ShardMapError {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("pointer {0} is past the end of the file")]
    PastEnd(u64),
    #[error("a length of {len} bytes at {pos} runs past the end of the file")]
    Length { len: usize, pos: u64 },
    #[error("checksum mismatch in the term at {0}")]
    Checksum(u64),
    #[error("no valid header in the file")]
    NoHeader,
    #[error("header truncated")]
    HeaderTruncated,
    #[error("header checksum mismatch")]
    HeaderChecksum,
    #[error(transparent)]
    Term(#[from] TermError),
    #[error("snappy: {0}")]
    Snappy(#[from] snap::Error),
    #[error("unknown term encoding")]
    Encoding,
    #[error("{0}")]
    Malformed(String),
}

type Result<T, E = ShardMapError> = std::result::Result<T, E>;

const BLOCK: u64 = 4096;

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

/// Read with positioned reads: `_dbs.couch` is append-only and can grow large, so it is
/// never loaded whole.
struct CouchFile {
    file: std::fs::File,
    /// The length when opened: what a hot copy of this file will hold.
    len: u64,
}

impl CouchFile {
    /// Exactly `buf.len()` bytes at physical position `pos`.
    fn at(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        self.file
            .read_exact_at(buf, pos)
            .map_err(|_| ShardMapError::PastEnd(pos))
    }

    /// `n` logical bytes from physical position `pos`, skipping each block's marker byte.
    fn read(&self, mut pos: u64, n: usize) -> Result<Vec<u8>> {
        // A damaged length must not ask for more memory than the file has bytes.
        if n as u64 > self.len {
            return Err(ShardMapError::Length { len: n, pos });
        }
        let mut out = vec![0u8; n];
        let mut filled = 0;
        while filled < n {
            if pos % BLOCK == 0 {
                pos += 1;
            }
            let block_end = (pos / BLOCK + 1) * BLOCK;
            let want = (n - filled).min((block_end - pos) as usize);
            self.at(pos, &mut out[filled..filled + want])?;
            filled += want;
            pos += want as u64;
        }
        Ok(out)
    }

    /// The term stored at `pos` (couch_file:pread_term).
    fn term_at(&self, pos: u64) -> Result<Term> {
        let len = self.read(pos, 4)?;
        let raw = u32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        let (md5, n) = (raw & 0x8000_0000 != 0, (raw & 0x7fff_ffff) as usize);
        let body_pos = physical_after(pos, 4);
        let data = if md5 {
            let all = self.read(body_pos, 16 + n)?;
            if !checksum_ok(&all[..16], &all[16..]) {
                return Err(ShardMapError::Checksum(pos));
            }
            all[16..].to_vec()
        } else {
            self.read(body_pos, n)?
        };
        decompress(&data)
    }

    /// The newest valid header, searching back from the end.
    fn last_header(&self) -> Result<Term> {
        let mut block = self.len / BLOCK;
        loop {
            let pos = block * BLOCK;
            let mut marker = [0u8];
            if pos < self.len && self.at(pos, &mut marker).is_ok() && marker[0] == 1 {
                if let Ok(t) = self.header_at(pos) {
                    return Ok(t);
                }
            }
            if block == 0 {
                return Err(ShardMapError::NoHeader);
            }
            block -= 1;
        }
    }

    fn header_at(&self, pos: u64) -> Result<Term> {
        let mut size = [0u8; 4];
        self.at(pos + 1, &mut size)
            .map_err(|_| ShardMapError::HeaderTruncated)?;
        let size = u32::from_be_bytes(size) as usize;
        let bin = self.read(pos + 5, size)?;
        if bin.len() < 16 || !checksum_ok(&bin[..16], &bin[16..]) {
            return Err(ShardMapError::HeaderChecksum);
        }
        Ok(etf::decode(&bin[16..])?)
    }
}

/// CouchDB 3.4+ writes XXH3-128 checksums (big-endian); older files MD5.
fn checksum_ok(stored: &[u8], data: &[u8]) -> bool {
    stored == xxhash_rust::xxh3::xxh3_128(data).to_be_bytes()
        || stored == Md5::digest(data).as_slice()
}

/// The physical position `n` logical bytes after `pos`.
fn physical_after(mut pos: u64, mut n: u64) -> u64 {
    while n > 0 {
        if pos % BLOCK == 0 {
            pos += 1;
        }
        let step = n.min((pos / BLOCK + 1) * BLOCK - pos);
        pos += step;
        n -= step;
    }
    pos
}

fn decompress(data: &[u8]) -> Result<Term> {
    match data.first() {
        Some(1) => {
            let plain = snap::raw::Decoder::new().decompress_vec(&data[1..])?;
            Ok(etf::decode(&plain)?)
        }
        Some(131) => Ok(etf::decode(data)?),
        _ => Err(ShardMapError::Encoding),
    }
}

/// The pointer of a B-tree state `{Ptr, Reduction, Size}` (or nil for an empty tree).
fn root_pointer(state: &Term) -> Option<u64> {
    state.as_tuple()?.first()?.as_int().map(|p| p as u64)
}

/// The body pointer of a document's winning revision: the live leaf with the highest
/// update sequence in its (disk) revision tree.
fn winning_body(tree: &Term) -> Option<u64> {
    fn walk(node: &Term, best: &mut Option<(i64, u64)>) {
        // {RevId, Leaf | missing, [Children]}
        let Some([_, leaf, children]) = node.as_tuple() else {
            return;
        };
        if let Some([deleted, ptr, seq, ..]) = leaf.as_tuple() {
            if deleted.as_int() == Some(0) {
                if let (Some(p), Some(s)) = (ptr.as_int(), seq.as_int()) {
                    if best.is_none_or(|(bs, _)| s > bs) {
                        *best = Some((s, p as u64));
                    }
                }
            }
        }
        for c in children.as_list().unwrap_or(&[]) {
            walk(c, best);
        }
    }
    let mut best = None;
    for path in tree.as_list()? {
        if let Some([_, node]) = path.as_tuple() {
            walk(node, &mut best);
        }
    }
    best.map(|(_, p)| p)
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
    let len = file
        .metadata()
        .map_err(|source| ShardMapError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let file = CouchFile { file, len };
    let header = file.last_header()?;
    let malformed = |m: String| ShardMapError::Malformed(m);
    let fields = header
        .as_tuple()
        .ok_or_else(|| malformed("the header is not a record".into()))?;
    if !fields.first().is_some_and(|f| f.is_atom("db_header")) {
        return Err(malformed("the header is not a db_header".into()));
    }
    let root = fields.get(4).and_then(root_pointer);
    let mut out = Vec::new();
    let mut stack: Vec<u64> = root.into_iter().collect();
    let mut seen = BTreeSet::new();
    while let Some(ptr) = stack.pop() {
        if !seen.insert(ptr) {
            return Err(malformed("the by-id tree has a cycle".into()));
        }
        let node = file.term_at(ptr)?;
        let (kind, entries) = match node.as_tuple() {
            Some([k, Term::List(e)]) => (k, e),
            _ => return Err(malformed(format!("B-tree node at {ptr} is malformed"))),
        };
        for e in entries {
            let Some([key, value]) = e.as_tuple() else {
                continue;
            };
            if kind.is_atom("kp_node") {
                stack.extend(root_pointer(value));
                continue;
            }
            // Leaf: {Id, {Seq, Deleted, Sizes, DiskTree}}.
            let Some(name) = key.as_text() else { continue };
            let Some(info) = value.as_tuple() else {
                continue;
            };
            if name.starts_with("_design/") || info.get(1).and_then(Term::as_int) != Some(0) {
                continue;
            }
            let Some(body_ptr) = info.get(3).and_then(winning_body) else {
                continue;
            };
            // The stored body is {Body, Attachments}; Body is itself a compressed term.
            let stored = file.term_at(body_ptr)?;
            let body = match stored.as_tuple().and_then(|t| t.first()) {
                Some(Term::Bin(b)) => decompress(b)?,
                Some(t) => t.clone(),
                None => {
                    return Err(malformed(format!(
                        "database '{name}': malformed document body"
                    )))
                }
            };
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
        }
    }
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
