//! Reading CouchDB 3 database files (`.couch`) without CouchDB: the last valid header, the
//! by-id, by-seq and local-docs B-trees, each document's revision tree, bodies and
//! attachments.
//!
//! A file is 4 KiB blocks, each starting with a marker byte (1 for a header block). Every
//! stored item is a 4-byte length (high bit: a 16-byte checksum follows, XXH3-128 or MD5),
//! then the bytes; a term is `term_to_binary`, usually snappy-compressed (first byte 1). The
//! header is `{db_header, DiskVersion, UpdateSeq, _, IdTree, SeqTree, LocalTree, ...,
//! SecurityPtr, RevsLimit, Uuid, ...}`; a tree state is `{RootPtr, Reduction, Size}`; a node
//! is `{kp_node | kv_node, [{Key, Value}]}`.
//!
//! Every length, count and pointer comes from the file and is checked before use: a damaged
//! or hostile file gives an error naming the offset, never a panic, a loop or an allocation
//! larger than the file.

use std::collections::HashSet;
use std::os::unix::fs::FileExt;

use md5::{Digest, Md5};

use super::etf::{self, Term, TermError};

/// Why a `.couch` file could not be read; each says where.
#[derive(Debug, thiserror::Error)]
pub enum CouchFileError {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("pointer {0} is past the end of the file")]
    PastEnd(u64),
    #[error("a length of {len} bytes at {pos} runs past the end of the file")]
    Length { len: usize, pos: u64 },
    #[error("checksum mismatch in the item at {0}")]
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

pub type Result<T, E = CouchFileError> = std::result::Result<T, E>;

const BLOCK: u64 = 4096;
/// Deeper than any B-tree or revision tree CouchDB writes (a B-tree of a billion documents
/// is under 10 levels; revision trees are cut at `revs_limit`, 1000 by default).
const MAX_DEPTH: usize = 4096;

fn malformed(what: impl Into<String>) -> CouchFileError {
    CouchFileError::Malformed(what.into())
}

/// A `.couch` file, read with positioned reads: it is append-only and can be large, so it
/// is never loaded whole.
pub struct CouchFile {
    file: std::fs::File,
    /// The length when opened: what a hot copy of this file holds.
    len: u64,
}

impl CouchFile {
    pub fn new(file: std::fs::File) -> std::io::Result<CouchFile> {
        let len = file.metadata()?.len();
        Ok(CouchFile { file, len })
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Exactly `buf.len()` bytes at physical position `pos`.
    fn at(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
        self.file
            .read_exact_at(buf, pos)
            .map_err(|_| CouchFileError::PastEnd(pos))
    }

    /// `n` logical bytes from physical position `pos`, skipping each block's marker byte.
    fn read(&self, pos: u64, n: usize) -> Result<Vec<u8>> {
        // A damaged length must not ask for more memory than the file has bytes.
        if n as u64 > self.len || pos > self.len {
            return Err(CouchFileError::Length { len: n, pos });
        }
        // One read of the whole physical span, then the block markers taken out: an
        // attachment chunk spans many blocks.
        let end = physical_after(pos, n as u64);
        let mut raw = vec![0u8; (end - pos) as usize];
        self.at(pos, &mut raw)?;
        let mut out = Vec::with_capacity(n);
        let mut i = 0usize;
        while out.len() < n {
            if (pos + i as u64) % BLOCK == 0 {
                i += 1;
            }
            let block_end = ((pos + i as u64) / BLOCK + 1) * BLOCK;
            let want = (n - out.len()).min((block_end - pos - i as u64) as usize);
            out.extend_from_slice(&raw[i..i + want]);
            i += want;
        }
        Ok(out)
    }

    /// The bytes of the item at `pos`, its checksum checked (couch_file:pread_binary).
    pub fn chunk_at(&self, pos: u64) -> Result<Vec<u8>> {
        let len = self.read(pos, 4)?;
        let raw = u32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        let (checked, n) = (raw & 0x8000_0000 != 0, (raw & 0x7fff_ffff) as usize);
        let body_pos = physical_after(pos, 4);
        if !checked {
            return self.read(body_pos, n);
        }
        let mut all = self.read(body_pos, 16 + n)?;
        if !checksum_ok(&all[..16], &all[16..]) {
            return Err(CouchFileError::Checksum(pos));
        }
        all.drain(..16);
        Ok(all)
    }

    /// The term stored at `pos` (couch_file:pread_term).
    pub fn term_at(&self, pos: u64) -> Result<Term> {
        decompress(&self.chunk_at(pos)?)
    }

    /// The newest valid header and its position, searching back from the end.
    pub fn last_header(&self) -> Result<(u64, Term)> {
        let mut block = self.len / BLOCK;
        loop {
            let pos = block * BLOCK;
            let mut marker = [0u8];
            if pos < self.len && self.at(pos, &mut marker).is_ok() && marker[0] == 1 {
                if let Ok(t) = self.header_at(pos) {
                    return Ok((pos, t));
                }
            }
            if block == 0 {
                return Err(CouchFileError::NoHeader);
            }
            block -= 1;
        }
    }

    fn header_at(&self, pos: u64) -> Result<Term> {
        let mut size = [0u8; 4];
        self.at(pos + 1, &mut size)
            .map_err(|_| CouchFileError::HeaderTruncated)?;
        let size = u32::from_be_bytes(size) as usize;
        let bin = self.read(pos + 5, size)?;
        if bin.len() < 16 || !checksum_ok(&bin[..16], &bin[16..]) {
            return Err(CouchFileError::HeaderChecksum);
        }
        Ok(etf::decode(&bin[16..])?)
    }

    /// The database header at the end of the file.
    pub fn db_header(&self) -> Result<DbHeader> {
        let (pos, term) = self.last_header()?;
        DbHeader::from_term(pos, &term)
    }

    /// Visits every `{Key, Value}` of the B-tree rooted at `root`, in key order. Each node
    /// is read once: a pointer seen twice (a cycle, or a shared subtree a damaged file could
    /// name) is an error, as is a tree deeper than any CouchDB writes.
    pub fn fold_tree(
        &self,
        root: u64,
        visit: &mut dyn FnMut(&Term, &Term) -> Result<()>,
    ) -> Result<()> {
        let mut seen = HashSet::new();
        let mut stack = vec![(root, 0usize)];
        while let Some((ptr, depth)) = stack.pop() {
            if depth > MAX_DEPTH {
                return Err(malformed(format!(
                    "B-tree deeper than {MAX_DEPTH} at {ptr}"
                )));
            }
            if !seen.insert(ptr) {
                return Err(malformed(format!("B-tree node at {ptr} is reached twice")));
            }
            let node = self
                .term_at(ptr)
                .map_err(|e| malformed(format!("node at {ptr}: {e}")))?;
            let (kind, entries) = match node.as_tuple() {
                Some([k, Term::List(e)]) => (k, e),
                _ => return Err(malformed(format!("B-tree node at {ptr} is malformed"))),
            };
            if kind.is_atom("kp_node") {
                // Children pushed last-first so that they are visited in key order.
                for e in entries.iter().rev() {
                    let child = match e.as_tuple() {
                        Some([_, state]) => tree_root(state),
                        _ => None,
                    };
                    let child = child
                        .ok_or_else(|| malformed(format!("B-tree node at {ptr}: bad child")))?;
                    stack.push((child, depth + 1));
                }
            } else if kind.is_atom("kv_node") {
                for e in entries {
                    match e.as_tuple() {
                        Some([k, v]) => visit(k, v)?,
                        _ => return Err(malformed(format!("B-tree leaf at {ptr}: bad entry"))),
                    }
                }
            } else {
                return Err(malformed(format!(
                    "B-tree node at {ptr} is neither kp nor kv"
                )));
            }
        }
        Ok(())
    }

    /// Every document of the by-id tree (deleted ones too), in id order.
    pub fn fold_docs(
        &self,
        header: &DbHeader,
        visit: &mut dyn FnMut(DocInfo) -> Result<()>,
    ) -> Result<()> {
        let Some(root) = header.id_root else {
            return Ok(());
        };
        self.fold_tree(root, &mut |k, v| visit(DocInfo::from_id_entry(k, v)?))
    }

    /// A document body and its attachments, stored at `ptr` as `{Body, Atts}`.
    pub fn doc_body(&self, ptr: u64) -> Result<(Term, Vec<AttInfo>)> {
        let stored = self.term_at(ptr)?;
        let (body, atts) = match stored.as_tuple() {
            Some([b, a]) => (b, a),
            _ => {
                return Err(malformed(format!(
                    "document body at {ptr} is not {{Body, Atts}}"
                )))
            }
        };
        let body = match body {
            Term::Bin(b) => decompress(b)?,
            t => t.clone(),
        };
        let atts = match atts {
            Term::Bin(b) => decompress(b)?,
            t => t.clone(),
        };
        let atts = atts
            .as_list()
            .ok_or_else(|| malformed(format!("attachments at {ptr} are not a list")))?
            .iter()
            .map(|a| {
                AttInfo::from_term(a)
                    .ok_or_else(|| malformed(format!("attachment at {ptr} is malformed")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((body, atts))
    }

    /// Streams an attachment's stored bytes (gzip-encoded when its encoding says so) to
    /// `sink`, checking their length and MD5.
    pub fn attachment(
        &self,
        att: &AttInfo,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        for chunk in AttChunks::new(self, att.clone()) {
            sink(&chunk?)?;
        }
        Ok(())
    }

    /// The `_security` object (an EJSON object), when the header names one.
    pub fn security(&self, header: &DbHeader) -> Result<Option<Term>> {
        let Some(ptr) = header.security_ptr else {
            return Ok(None);
        };
        // Stored as the object's member list.
        Ok(Some(match self.term_at(ptr)? {
            Term::List(pairs) => Term::Tuple(vec![Term::List(pairs)]),
            other => other,
        }))
    }

    /// Whether the database is partitioned (its properties say `{partitioned, true}`).
    pub fn partitioned(&self, header: &DbHeader) -> Result<bool> {
        let Some(ptr) = header.props_ptr else {
            return Ok(false);
        };
        Ok(match self.term_at(ptr)? {
            Term::List(props) => props.iter().any(|p| {
                p.as_tuple().is_some_and(|kv| {
                    kv.len() == 2 && kv[0].is_atom("partitioned") && kv[1].is_atom("true")
                })
            }),
            _ => false,
        })
    }

    /// Every `_local/` document: (id, body).
    pub fn fold_local_docs(
        &self,
        header: &DbHeader,
        visit: &mut dyn FnMut(String, Term) -> Result<()>,
    ) -> Result<()> {
        let Some(root) = header.local_root else {
            return Ok(());
        };
        self.fold_tree(root, &mut |k, v| {
            let id = k
                .as_text()
                .ok_or_else(|| malformed("a local document id is not text"))?;
            let body = match v.as_tuple() {
                Some([_rev, body]) => body.clone(),
                _ => return Err(malformed(format!("local document {id} is malformed"))),
            };
            visit(id, body)
        })
    }
}

/// What the header of a database file says.
#[derive(Debug, Clone, PartialEq)]
pub struct DbHeader {
    /// Where the header is: everything after it was written later and is not part of
    /// this state.
    pub pos: u64,
    pub disk_version: i64,
    pub update_seq: u64,
    pub id_root: Option<u64>,
    pub seq_root: Option<u64>,
    pub local_root: Option<u64>,
    pub security_ptr: Option<u64>,
    /// `_revs_limit`.
    pub revs_limit: Option<u64>,
    /// Where the database's properties are (`partitioned`), when it has any.
    pub props_ptr: Option<u64>,
    /// Live and deleted documents, from the by-id tree's reduction.
    pub doc_count: u64,
    pub doc_del_count: u64,
}

impl DbHeader {
    pub fn from_term(pos: u64, t: &Term) -> Result<DbHeader> {
        let f = t
            .as_tuple()
            .filter(|f| f.first().is_some_and(|a| a.is_atom("db_header")))
            .ok_or_else(|| malformed("the header is not a db_header"))?;
        let int = |i: usize| f.get(i).and_then(Term::as_int);
        let (doc_count, doc_del_count) = f
            .get(4)
            .and_then(Term::as_tuple)
            .and_then(|s| s.get(1))
            .and_then(Term::as_tuple)
            .map(|r| {
                let n = |i: usize| r.get(i).and_then(Term::as_int).unwrap_or(0).max(0) as u64;
                (n(0), n(1))
            })
            .unwrap_or((0, 0));
        Ok(DbHeader {
            pos,
            disk_version: int(1).unwrap_or(0),
            update_seq: int(2).unwrap_or(0).max(0) as u64,
            id_root: f.get(4).and_then(tree_root),
            seq_root: f.get(5).and_then(tree_root),
            local_root: f.get(6).and_then(tree_root),
            security_ptr: int(9).filter(|p| *p >= 0).map(|p| p as u64),
            revs_limit: int(10).filter(|n| *n > 0).map(|n| n as u64),
            props_ptr: int(15).filter(|p| *p >= 0).map(|p| p as u64),
            doc_count,
            doc_del_count,
        })
    }
}

/// One leaf of a revision tree: a revision with no children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    /// e.g. `3-235adfc7cb263f0da0e200b3ae063819`.
    pub rev: String,
    pub deleted: bool,
    /// Where its body is; None when only its id is known (a revision CouchDB dropped).
    pub body_ptr: Option<u64>,
    pub seq: u64,
    /// Its ancestry, newest first (`_revisions.ids`), starting with its own rev hash.
    pub path: Vec<String>,
}

impl Leaf {
    pub fn pos(&self) -> u64 {
        self.rev
            .split_once('-')
            .and_then(|(p, _)| p.parse().ok())
            .unwrap_or(0)
    }
}

/// A document of the by-id tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocInfo {
    pub id: String,
    pub update_seq: u64,
    pub deleted: bool,
    /// Every leaf of its revision tree, the winner first (CouchDB's rule: live before
    /// deleted, then the longer path, then the greater rev hash).
    pub leaves: Vec<Leaf>,
}

impl DocInfo {
    /// From a by-id leaf entry `{Id, {HighSeq, Deleted, Sizes, DiskTree, ...}}`.
    fn from_id_entry(key: &Term, value: &Term) -> Result<DocInfo> {
        let id = key
            .as_text()
            .ok_or_else(|| malformed("a document id is not UTF-8 text"))?;
        let v = value
            .as_tuple()
            .ok_or_else(|| malformed(format!("document {id}: bad by-id entry")))?;
        let int = |i: usize| v.get(i).and_then(Term::as_int);
        let tree = v
            .get(3)
            .and_then(Term::as_list)
            .ok_or_else(|| malformed(format!("document {id}: no revision tree")))?;
        let mut leaves = Vec::new();
        for path in tree {
            let (start, root) = match path.as_tuple() {
                Some([Term::Int(s), root]) => (*s, root),
                _ => return Err(malformed(format!("document {id}: bad revision path"))),
            };
            collect_leaves(root, start.max(0) as u64, &mut Vec::new(), &mut leaves, 0)
                .map_err(|e| malformed(format!("document {id}: {e}")))?;
        }
        if leaves.is_empty() {
            return Err(malformed(format!("document {id}: no revision")));
        }
        leaves.sort_by(|a, b| (!b.deleted, b.pos(), &b.rev).cmp(&(!a.deleted, a.pos(), &a.rev)));
        Ok(DocInfo {
            id,
            update_seq: int(0).unwrap_or(0).max(0) as u64,
            deleted: int(1) == Some(1),
            leaves,
        })
    }

    pub fn winner(&self) -> &Leaf {
        &self.leaves[0]
    }

    /// Live leaves other than the winner: its conflicts.
    pub fn conflicts(&self) -> impl Iterator<Item = &Leaf> {
        self.leaves.iter().skip(1).filter(|l| !l.deleted)
    }
}

/// Walks `{RevId, Leaf | [], [Children]}` depth-first; `ancestry` holds the rev hashes from
/// the path's start down to this node's parent.
fn collect_leaves(
    node: &Term,
    pos: u64,
    ancestry: &mut Vec<String>,
    out: &mut Vec<Leaf>,
    depth: usize,
) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err("revision tree too deep".into());
    }
    let (rev_id, value, children) = match node.as_tuple() {
        Some([Term::Bin(r), v, Term::List(c)]) => (r, v, c),
        _ => return Err("bad revision tree node".into()),
    };
    let hash = hex::encode(rev_id);
    ancestry.push(hash.clone());
    if children.is_empty() {
        let (deleted, body_ptr, seq) = match value.as_tuple() {
            Some([d, p, s, ..]) => (
                d.as_int() == Some(1),
                p.as_int().filter(|p| *p >= 0).map(|p| p as u64),
                s.as_int().unwrap_or(0).max(0) as u64,
            ),
            _ => (false, None, 0),
        };
        out.push(Leaf {
            rev: format!("{pos}-{hash}"),
            deleted,
            body_ptr,
            seq,
            path: ancestry.iter().rev().cloned().collect(),
        });
    }
    for c in children {
        collect_leaves(c, pos + 1, ancestry, out, depth + 1)?;
    }
    ancestry.pop();
    Ok(())
}

/// An attachment's stored bytes chunk by chunk, checked as they come: no more than it
/// records nor than the file holds (a hostile list may name a chunk again and again), and
/// at the end its length and MD5. `F` is the file, borrowed or shared with another thread.
pub struct AttChunks<F> {
    file: F,
    att: AttInfo,
    next: usize,
    total: u64,
    md5: Md5,
    done: bool,
}

impl<F: std::ops::Deref<Target = CouchFile>> AttChunks<F> {
    pub fn new(file: F, att: AttInfo) -> AttChunks<F> {
        AttChunks {
            file,
            att,
            next: 0,
            total: 0,
            md5: Md5::new(),
            done: false,
        }
    }

    /// The bytes it yields when the file is sound: what the attachment records.
    pub fn stored_len(&self) -> u64 {
        self.att.disk_len
    }

    fn chunk(&mut self, pos: u64, len: u64) -> Result<Vec<u8>> {
        let name = &self.att.name;
        let bytes = self
            .file
            .chunk_at(pos)
            .map_err(|e| malformed(format!("attachment '{name}': {e}")))?;
        if bytes.len() as u64 != len {
            return Err(malformed(format!(
                "attachment '{name}': chunk at {pos} is {} bytes, its pointer says {len}",
                bytes.len()
            )));
        }
        self.total += len;
        if self.total > self.file.len {
            return Err(malformed(format!(
                "attachment '{name}': its chunks add up to more than the file holds"
            )));
        }
        if self.total > self.att.disk_len {
            return Err(malformed(format!(
                "attachment '{name}': its chunks add up to more than the {} bytes it records",
                self.att.disk_len
            )));
        }
        self.md5.update(&bytes);
        Ok(bytes)
    }

    fn finish(&mut self) -> Result<()> {
        let name = &self.att.name;
        if self.total != self.att.disk_len {
            return Err(malformed(format!(
                "attachment '{name}': {} bytes stored, {} recorded",
                self.total, self.att.disk_len
            )));
        }
        if self.md5.clone().finalize().as_slice() != self.att.md5.as_slice() {
            return Err(malformed(format!(
                "attachment '{name}': its bytes do not match its MD5"
            )));
        }
        Ok(())
    }
}

impl<F: std::ops::Deref<Target = CouchFile>> Iterator for AttChunks<F> {
    type Item = Result<Vec<u8>>;

    fn next(&mut self) -> Option<Result<Vec<u8>>> {
        if self.done {
            return None;
        }
        let step = match self.att.chunks.get(self.next).copied() {
            Some((pos, len)) => {
                self.next += 1;
                self.chunk(pos, len).map(Some)
            }
            None => self.finish().map(|()| None),
        };
        match step {
            Ok(Some(bytes)) => Some(Ok(bytes)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// An attachment as a document body records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttInfo {
    pub name: String,
    pub content_type: String,
    /// `(position, length)` of each stored chunk, in order.
    pub chunks: Vec<(u64, u64)>,
    /// Length of the attachment itself.
    pub att_len: u64,
    /// Length as stored (gzip-encoded when `encoding` is gzip).
    pub disk_len: u64,
    pub revpos: u64,
    /// MD5 of the stored bytes.
    pub md5: Vec<u8>,
    /// `identity` or `gzip`.
    pub encoding: String,
}

impl AttInfo {
    /// `{Name, Type, Sp, AttLen, DiskLen, RevPos, Md5, Enc}`, or the pre-0.11
    /// `{Name, Type, Sp, AttLen, RevPos, Md5}`.
    fn from_term(t: &Term) -> Option<AttInfo> {
        let f = t.as_tuple()?;
        let (att_len, disk_len, revpos, md5, encoding) = match f.len() {
            // AttLen is the stored (encoded) length, DiskLen the attachment's own.
            8 => (
                f[4].as_int()?,
                f[3].as_int()?,
                f[5].as_int()?,
                &f[6],
                match &f[7] {
                    Term::Atom(a) if a == "true" => "gzip".to_string(),
                    Term::Atom(a) if a == "false" => "identity".to_string(),
                    Term::Atom(a) => a.clone(),
                    _ => return None,
                },
            ),
            6 => (
                f[3].as_int()?,
                f[3].as_int()?,
                f[4].as_int()?,
                &f[5],
                "identity".to_string(),
            ),
            _ => return None,
        };
        let chunks = f[2]
            .as_list()?
            .iter()
            .map(|c| match c.as_tuple() {
                Some([Term::Int(p), Term::Int(l)]) if *p >= 0 && *l >= 0 => {
                    Some((*p as u64, *l as u64))
                }
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?;
        let md5 = match md5 {
            Term::Bin(b) => b.clone(),
            _ => return None,
        };
        Some(AttInfo {
            name: f[0].as_text()?,
            content_type: f[1].as_text()?,
            chunks,
            att_len: att_len.max(0) as u64,
            disk_len: disk_len.max(0) as u64,
            revpos: revpos.max(0) as u64,
            md5,
            encoding,
        })
    }
}

/// The root pointer of a B-tree state `{Ptr, Reduction, Size}` (nil for an empty tree).
fn tree_root(state: &Term) -> Option<u64> {
    state
        .as_tuple()?
        .first()?
        .as_int()
        .filter(|p| *p >= 0)
        .map(|p| p as u64)
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

/// A stored term: snappy-compressed (first byte 1) or plain `term_to_binary` (131).
pub fn decompress(data: &[u8]) -> Result<Term> {
    match data.first() {
        Some(1) => {
            let rest = &data[1..];
            // The decompressed length is in the data: bound it before allocating.
            let n = snap::raw::decompress_len(rest)?;
            if n > rest.len().saturating_mul(64).max(1 << 20) {
                return Err(malformed(format!(
                    "a snappy block claims {n} bytes from {}",
                    rest.len()
                )));
            }
            let plain = snap::raw::Decoder::new().decompress_vec(rest)?;
            Ok(etf::decode(&plain)?)
        }
        Some(131) => Ok(etf::decode(data)?),
        _ => Err(CouchFileError::Encoding),
    }
}
