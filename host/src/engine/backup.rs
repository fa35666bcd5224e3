//! Backup: files → tar → zstd (frames on worker threads) → AES-256-GCM STREAM → store, then
//! commit.
//! A full backup stores every file whole; an incremental or differential one stores, per
//! file, only what was appended since its parent (see [`Base`] and docs/FORMAT.md).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::mpsc::{sync_channel, Receiver};

use chrono::Utc;
use ring::digest::{Context, SHA256};
use ulid::Ulid;

use super::frames::{self, Compress, FramePool, InOrder, FRAME_INPUT};
use super::{pick_error, recycler, BlockWriter, Progress};
use crate::catalog;
use crate::couchdb::{PlannedFile, Source, SourceError};
use crate::crypto::{self, SecretKey, StreamSealer, TAG_LEN};
use crate::error::{Error, Result};
use crate::format::{
    self, BackupMetadata, CompressionInfo, DataHeader, DataInfo, EncryptionInfo, FileEntry,
    Identity, Kind, ParentRef, PrefixCheck, SourceInfo, Stored, Totals, END_CHECK_LEN,
    FORMAT_VERSION, STREAM_VERSION, SUITE_NAME,
};
use crate::keyring::{KeyRing, Unlocked};
use crate::names::validate_name;
use crate::store::{LargeUpload, Store};

/// Read size for source files.
const READ_BUF: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// The new backup's id; None for a fresh one. The daemon picks it first, so that a job
    /// cut off by a crash knows which leftovers are its own.
    pub id: Option<Ulid>,
    pub tenant: String,
    pub instance: String,
    /// A key of the tenant's key ring; None for its active key.
    pub key_id: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub stream: StreamSettings,
    /// Back up even when the shard map names shard files the data dir lacks (or the map
    /// itself is missing or unreadable); the gaps are recorded in the metadata.
    pub allow_incomplete: bool,
    /// What CouchDB said over HTTP at the start, recorded in the metadata.
    pub live: Option<crate::couchdb::http::LiveInfo>,
    /// The parent of an incremental or differential backup; None for a full one.
    pub base: Option<Base>,
}

/// What an incremental or differential backup is stored against.
#[derive(Debug, Clone)]
pub struct Base {
    pub kind: Kind,
    pub check: PrefixCheck,
    /// The parent, authenticated, and its metadata's MAC.
    pub parent: BackupMetadata,
    pub parent_mac: String,
    /// The backups the parent depends on, oldest first (empty when it is a full). Exact mode
    /// checks a file whose parent copy was a fast tail against their records.
    pub ancestors: Vec<BackupMetadata>,
}

/// How the tar stream is compressed and sealed.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    pub compression_level: i32,
    /// Compression threads (engine/frames.rs); 0 counts as 1.
    pub zstd_workers: u32,
    pub chunk_size: u32,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            compression_level: 3,
            zstd_workers: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            chunk_size: 1 << 20,
        }
    }
}

/// What [`store_stream`] wrote.
pub struct Sealed {
    pub compression: CompressionInfo,
    pub encryption: EncryptionInfo,
    pub data: DataInfo,
}

/// Takes a hot, full backup of `source` and commits it. Returns the committed metadata.
pub fn backup(
    store: &dyn Store,
    keyring: &KeyRing,
    source: &Source,
    opts: &BackupOptions,
    progress: &Progress,
) -> Result<BackupMetadata> {
    validate_name("tenant", &opts.tenant)?;
    validate_name("instance", &opts.instance)?;
    // Unlocked first: a key manager that is down fails the backup before any upload.
    let key = keyring.unlock(match &opts.key_id {
        Some(id) => keyring.get(&opts.tenant, id)?,
        None => keyring.active(&opts.tenant)?,
    })?;
    let plan = source.plan()?;
    let (incomplete, map) = match source.check_map(&plan) {
        Ok(c) if c.gaps.is_empty() => (Vec::new(), c),
        Ok(c) if opts.allow_incomplete => (c.gaps.lines(), c),
        Ok(c) => {
            return Err(SourceError::Incomplete {
                gaps: c.gaps.lines(),
            }
            .into())
        }
        Err(e) if opts.allow_incomplete => (vec![e.to_string()], Default::default()),
        Err(e) => return Err(e.into()),
    };
    for gap in &incomplete {
        tracing::info!(gap = %gap, "backing up an incomplete data directory (--allow-incomplete)");
    }
    let total = crate::couchdb::total_size(&plan);
    progress
        .bytes_total
        .store(total, std::sync::atomic::Ordering::Relaxed);
    progress
        .files_total
        .store(plan.len() as u64, std::sync::atomic::Ordering::Relaxed);

    // Not unwrap_or_default: Ulid's default is the nil id.
    let id = match opts.id {
        Some(id) => id,
        None => Ulid::new(),
    };
    let started_at = Utc::now();
    tracing::info!(backup = %id, files = plan.len(), bytes = total, "backup started");
    let (sealed, (files, vanished)) = store_stream(
        store,
        key,
        &opts.tenant,
        &opts.instance,
        id,
        &opts.stream,
        |out| write_tar(source, &plan, opts.base.as_ref(), out, progress),
    )
    .map_err(|e| progress.explain(e))?;
    let gone = match &opts.base {
        Some(b) => {
            let now: std::collections::HashSet<&str> =
                files.iter().map(|f| f.path.as_str()).collect();
            b.parent
                .files
                .iter()
                .filter(|f| !now.contains(f.path.as_str()))
                .map(|f| f.path.clone())
                .collect()
        }
        None => Vec::new(),
    };

    let meta = BackupMetadata {
        format: FORMAT_VERSION,
        tool: format!("couchvault {}", env!("CARGO_PKG_VERSION")),
        backup_id: id.to_string(),
        tenant: opts.tenant.clone(),
        instance: opts.instance.clone(),
        kind: opts.base.as_ref().map_or(Kind::Full, |b| b.kind),
        parent: opts.base.as_ref().map(|b| ParentRef {
            backup_id: b.parent.backup_id.clone(),
            metadata_mac: b.parent_mac.clone(),
            data_sha256: b.parent.data.sha256.clone(),
        }),
        prefix_check: opts.base.as_ref().map(|b| b.check),
        started_at,
        finished_at: Utc::now(),
        source: SourceInfo {
            hostname: nix::unistd::gethostname()
                .ok()
                .map(|h| h.to_string_lossy().into_owned()),
            // vm.args, else what CouchDB said, else the shard map's only node.
            node_name: source
                .node_name
                .clone()
                .or_else(|| opts.live.as_ref().and_then(|l| l.node_name.clone()))
                .or(map.node),
            shard_map_nodes: map.nodes,
            database_dir: source.database_dir.display().to_string(),
            view_index_dir: source
                .view_index_dir
                .as_ref()
                .map(|p| p.display().to_string()),
            config_dir: source.config_dir.as_ref().map(|p| p.display().to_string()),
            ini_files: source
                .ini_files
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
        },
        tags: opts.tags.clone(),
        compression: sealed.compression,
        encryption: sealed.encryption,
        data: sealed.data,
        totals: Totals {
            files: files.len() as u64,
            bytes: files.iter().map(|f| f.size).sum(),
            stored_bytes: files.iter().filter_map(|f| f.piece()).map(|(_, n)| n).sum(),
        },
        files,
        gone,
        vanished,
        incomplete,
        couchdb: opts.live.clone(),
    };
    super::checkpoint("before-commit");
    // A parent deleted (or replaced) while this backup ran would leave it standing on
    // nothing: it is not committed.
    let parent_gone = opts.base.as_ref().and_then(|b| {
        match catalog::load_sealed(store, keyring, &opts.tenant, &b.parent.backup_id) {
            Ok((m, mac)) if mac == b.parent_mac || m.data.sha256 == b.parent.data.sha256 => None,
            _ => Some(b.parent.backup_id.clone()),
        }
    });
    if progress.is_cancelled() || parent_gone.is_some() {
        let _ = store.delete(
            &opts.tenant,
            &format::data_object(&opts.instance, &meta.backup_id),
        );
        return Err(match parent_gone {
            Some(parent) => Error::ParentGone { parent },
            None => Error::Cancelled,
        });
    }
    let _held = keyring.hold_key(&opts.tenant, key.id)?;
    catalog::commit(store, key.secret, &meta)?;
    tracing::info!(backup = %id, stored = meta.data.size, "backup committed");
    Ok(meta)
}

/// Streams what `produce` writes through zstd and the STREAM cipher into the large object
/// `<instance>/<id>/data`. Nothing is committed: the caller writes the metadata. On failure
/// the partial object is removed (best effort; `gc` catches what a crash leaves).
pub fn store_stream<T>(
    store: &dyn Store,
    key: Unlocked<'_>,
    tenant: &str,
    instance: &str,
    id: Ulid,
    settings: &StreamSettings,
    produce: impl FnOnce(&mut dyn Write) -> Result<T>,
) -> Result<(Sealed, T)> {
    let chunk_size = settings
        .chunk_size
        .clamp(format::MIN_CHUNK, format::MAX_CHUNK);
    let data_key = SecretKey::random()?;
    let mut nonce_prefix = [0u8; crypto::NONCE_PREFIX_LEN];
    crypto::fill_random(&mut nonce_prefix)?;
    let header = DataHeader {
        chunk_size,
        nonce_prefix,
        backup_id: id.to_bytes(),
    }
    .to_bytes();
    let id_str = id.to_string();
    let wrapped = crypto::wrap_data_key(key.secret, &data_key, tenant, key.id, &id_str)?;
    let object = format::data_object(instance, &id_str);
    let version = STREAM_VERSION.to_string();
    let tool = format!("couchvault {}", env!("CARGO_PKG_VERSION"));
    let labels = [
        ("Tool", tool.as_str()),
        ("Format", version.as_str()),
        ("Tenant", tenant),
        ("Instance", instance),
        ("Backup-Id", id_str.as_str()),
    ];
    let workers = settings.zstd_workers.max(1) as usize;
    let (tar_spent, tar_free) = recycler();
    let jobs = (0..workers)
        .map(|_| Compress::new(settings.compression_level, tar_spent.clone()))
        .collect::<Result<Vec<_>>>()?;
    let (tar_tx, tar_rx) = sync_channel(workers);
    let (frame_tx, frame_rx) = sync_channel(workers);
    let upload = store.create_large(tenant, &object, &labels)?;
    let sealer = StreamSealer::new(&data_key, nonce_prefix, header.to_vec());

    // This thread writes the tar stream; `zstd_workers` threads compress it frame by frame
    // (frames.rs); a last thread puts the frames in order, seals and uploads. Bounded
    // queues of recycled buffers join them.
    let pool = FramePool::default();
    let result = std::thread::scope(|s| {
        let pool = &pool;
        let consumer = s.spawn(move || {
            seal_and_upload(
                InOrder::new(frame_rx),
                pool,
                chunk_size,
                sealer,
                &header,
                upload,
            )
        });
        let compressors = frames::spawn_workers(s, jobs, tar_rx, pool, frame_tx);
        let produced = (|| {
            let mut tar = CountingWriter {
                inner: BlockWriter::new(tar_tx, tar_free, FRAME_INPUT, 0),
                count: 0,
            };
            let value = produce(&mut tar)?;
            tar.inner
                .finish()
                .map_err(|e| Error::io("ending the tar stream", e))?;
            Ok((value, tar.count))
        })();
        let compressed = frames::join_workers(compressors);
        let consumed = consumer.join().unwrap_or(Err(Error::PipelineAborted));
        match (produced, compressed, consumed) {
            (Ok(p), Ok(()), Ok(c)) => Ok((p, c)),
            (p, z, c) => {
                let cause = pick_error(pick_error(p.map(drop), z), c.map(drop));
                Err(cause.expect_err("a stage failed"))
            }
        }
    });
    let ((value, tar_size), (size, sha256)) = match result {
        Ok(v) => v,
        Err(e) => {
            if let Err(cleanup) = store.delete(tenant, &object) {
                tracing::warn!(error = %cleanup, "could not remove the partial upload; `couchvault gc` will");
            }
            return Err(e);
        }
    };
    Ok((
        Sealed {
            compression: CompressionInfo {
                algorithm: "zstd".into(),
                level: settings.compression_level,
                frame_size: Some(FRAME_INPUT as u32),
            },
            encryption: EncryptionInfo {
                suite: SUITE_NAME.into(),
                chunk_size,
                key_id: key.id.to_string(),
                wrapped_key_nonce: hex::encode(wrapped.nonce),
                wrapped_key: hex::encode(&wrapped.ciphertext),
            },
            data: DataInfo {
                object,
                size,
                sha256,
                tar_size,
            },
        },
        value,
    ))
}

/// The consumer thread: takes the compressed frames in order, cuts them into chunks of
/// `chunk_size`, seals each (the last one with the last-chunk flag), hashes the stored bytes
/// and uploads them. Returns the stored size and SHA-256.
fn seal_and_upload(
    mut frames: InOrder,
    pool: &FramePool,
    chunk_size: u32,
    mut sealer: StreamSealer,
    header: &[u8],
    mut upload: Box<dyn LargeUpload>,
) -> Result<(u64, String)> {
    let chunk_size = chunk_size as usize;
    let mut hash = Context::new(&SHA256);
    let mut size = header.len() as u64;
    hash.update(header);
    upload.write(header)?;
    let mut chunk = Vec::with_capacity(chunk_size + TAG_LEN);
    let mut emit = |chunk: &mut Vec<u8>, last: bool| -> Result<()> {
        sealer.seal(chunk, last)?;
        hash.update(chunk);
        size += chunk.len() as u64;
        upload.write(chunk)?;
        chunk.clear();
        Ok(())
    };
    while let Some(frame) = frames.next_frame()? {
        let mut rest = &frame[..];
        while !rest.is_empty() {
            // A full chunk is sealed only once more data follows: the last one is flagged.
            if chunk.len() == chunk_size {
                emit(&mut chunk, false)?;
            }
            let n = (chunk_size - chunk.len()).min(rest.len());
            chunk.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
        }
        pool.give(frame);
    }
    emit(&mut chunk, true)?;
    upload.finish()?;
    Ok((size, hex::encode(hash.finish())))
}

struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Files prepared ahead of the tar writer, per worker.
const LOOKAHEAD: usize = 4;

/// Writes the tar stream of `plan`. Each file is opened once and exactly the length it had
/// when opened is read: CouchDB files are append-only, so that prefix is a valid file, and
/// a file swapped by compaction is read from the inode we opened. Against a `base`, only
/// what each file gained since the parent goes into the stream (see [`decide`]).
///
/// Files are opened and checked against the parent ([`prepare`]) on worker threads, in
/// plan order and a few files ahead: an exact incremental reads and hashes every file, and
/// that runs on every core while this thread writes the stream.
fn write_tar(
    source: &Source,
    plan: &[PlannedFile],
    base: Option<&Base>,
    out: &mut dyn Write,
    progress: &Progress,
) -> Result<(Vec<FileEntry>, Vec<String>)> {
    // Each backup of the parent's chain by path, oldest first, the parent last.
    let records: Vec<Records> = base
        .map(|b| {
            b.ancestors
                .iter()
                .chain([&b.parent])
                .map(|m| m.files.iter().map(|f| (f.path.as_str(), f)).collect())
                .collect()
        })
        .unwrap_or_default();
    let workers = match base {
        Some(b) if b.check == PrefixCheck::Exact => {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
        _ => 1,
    };
    std::thread::scope(|s| {
        let mut queues = Vec::with_capacity(workers);
        for w in 0..workers {
            let (tx, rx) = sync_channel(LOOKAHEAD);
            queues.push(rx);
            let records = &records;
            s.spawn(move || {
                for f in plan.iter().skip(w).step_by(workers) {
                    let ready = prepare(source, f, base, records, progress);
                    let failed = ready.is_err();
                    // A closed queue: the writer stopped (an error); so does this worker.
                    if tx.send(ready).is_err() || failed {
                        return;
                    }
                }
            });
        }
        // The queues are dropped when this returns, which stops the workers early on error.
        write_entries(plan, queues, out, progress)
    })
}

/// The tar writer: takes each prepared file in plan order and appends what it stores.
fn write_entries(
    plan: &[PlannedFile],
    queues: Vec<Receiver<Result<Ready<'_>>>>,
    out: &mut dyn Write,
    progress: &Progress,
) -> Result<(Vec<FileEntry>, Vec<String>)> {
    let mut tar = tar::Builder::new(out);
    let mut files = Vec::with_capacity(plan.len());
    let mut vanished = Vec::new();
    for (i, f) in plan.iter().enumerate() {
        match i {
            1 => super::checkpoint("after-first-file"),
            i if i == plan.len() / 2 => super::checkpoint("mid-stream"),
            _ => {}
        }
        let ready = queues[i % queues.len()]
            .recv()
            .map_err(|_| Error::PipelineAborted)??;
        let Prepared {
            mut file,
            mut entry,
            decision: d,
        } = match ready {
            Ready::File(p) => *p,
            Ready::Vanished => {
                tracing::warn!(path = %f.source.display(), "file vanished before it was copied (deleted database?)");
                vanished.push(f.archive_path.clone());
                continue;
            }
            Ready::NotAFile => continue,
        };
        if let Some(parent) = d.unchanged {
            entry.stored = Stored::Unchanged;
            entry.sha256 = d.prefix.map(finish).or(parent.sha256.clone());
            progress.file_done();
            files.push(entry);
            continue;
        }
        let len = entry.size;
        let read_err = |e| Error::io(format!("reading {}", f.source.display()), e);
        file.seek(SeekFrom::Start(d.from)).map_err(read_err)?;
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(len - d.from);
        header.set_mode(entry.mode);
        header.set_mtime(entry.mtime.max(0) as u64);
        let mut reader = BufReader::with_capacity(
            READ_BUF,
            PrefixReader {
                file,
                left: len - d.from,
                hash: Context::new(&SHA256),
                whole: d.prefix,
                progress,
            },
        );
        if let Err(e) = tar.append_data(&mut header, &f.archive_path, &mut reader) {
            let left = reader.get_ref().left;
            return Err(if e.kind() == io::ErrorKind::UnexpectedEof && left > 0 {
                Error::Shrank {
                    path: f.source.clone(),
                    expected: len,
                    got: len - left,
                }
            } else {
                Error::io(format!("copying {}", f.source.display()), e)
            });
        }
        let PrefixReader {
            left, hash, whole, ..
        } = reader.into_inner();
        debug_assert_eq!(left, 0);
        let piece = finish(hash);
        if d.from == 0 {
            entry.sha256 = Some(piece);
        } else {
            // Exact: the prefix's hash ran on through the tail. Fast: the prefix was not read.
            entry.sha256 = whole.map(finish);
            entry.stored = Stored::Tail {
                from: d.from,
                sha256: piece,
            };
        }
        progress.file_done();
        files.push(entry);
    }
    tar.finish()
        .map_err(|e| Error::io("ending the tar stream", e))?;
    Ok((files, vanished))
}

/// One file of the plan, ready for the tar writer.
enum Ready<'a> {
    File(Box<Prepared<'a>>),
    /// Listed, but gone when its turn came (a deleted database).
    Vanished,
    NotAFile,
}

struct Prepared<'a> {
    file: File,
    /// Its record, all but how it is stored and its whole-file hash.
    entry: FileEntry,
    decision: Decision<'a>,
}

/// Opens a file of the plan (confined for a registered instance: a link out is refused,
/// named), records what it is, and decides what of it to store against the parent.
fn prepare<'a>(
    source: &Source,
    f: &PlannedFile,
    base: Option<&Base>,
    records: &[Records<'a>],
    progress: &Progress,
) -> Result<Ready<'a>> {
    let file = match source.open(&f.source) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Ready::Vanished),
        Err(e) => return Err(Error::io(format!("opening {}", f.source.display()), e)),
    };
    let read_err = |e| Error::io(format!("reading {}", f.source.display()), e);
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Ok(Ready::NotAFile);
    }
    let len = meta.len();
    let identity = Identity {
        dev: meta.dev(),
        ino: meta.ino(),
    };
    let path = f.archive_path.as_str();
    let parent = records.last().and_then(|r| r.get(path));
    let mut decision = match (base, parent) {
        (Some(b), Some(p)) => {
            let prefix = Prefix { records, path, p };
            decide(&file, len, identity, prefix, b.check, progress).map_err(read_err)?
        }
        _ => Decision::whole(None),
    };
    let entry = FileEntry {
        path: f.archive_path.clone(),
        size: len,
        mode: meta.mode() & 0o7777,
        mtime: meta.mtime(),
        sha256: None,
        stored: Stored::Whole,
        reason: decision.reason.take(),
        identity: Some(identity),
        end_sha256: Some(end_sha256(&file, len).map_err(read_err)?),
    };
    Ok(Ready::File(Box::new(Prepared {
        file,
        entry,
        decision,
    })))
}

fn finish(c: Context) -> String {
    hex::encode(c.finish())
}

/// How much of a file the parent already holds.
struct Decision<'a> {
    /// Bytes before this offset are the parent's; 0 stores the whole file.
    from: u64,
    /// Exact mode: the SHA-256 state after the first `from` bytes.
    prefix: Option<Context>,
    /// The file is exactly the parent's copy (no bytes stored).
    unchanged: Option<&'a FileEntry>,
    /// Why a file the parent had is stored whole.
    reason: Option<String>,
}

impl Decision<'_> {
    fn whole(reason: Option<String>) -> Self {
        Decision {
            from: 0,
            prefix: None,
            unchanged: None,
            reason,
        }
    }
}

/// Decides what of a file to store against its parent's record `p`: only the tail when it
/// is the same file (device and inode), no shorter, and its first `p.size` bytes are what
/// the parent stored (exact: their SHA-256; fast: that of the last blocks before `p.size`).
fn decide<'a>(
    file: &File,
    len: u64,
    identity: Identity,
    prefix: Prefix<'a, '_>,
    check: PrefixCheck,
    progress: &Progress,
) -> io::Result<Decision<'a>> {
    let p = prefix.p;
    if p.identity != Some(identity) {
        return Ok(Decision::whole(Some(match p.identity {
            None => "the parent recorded no file identity".into(),
            Some(_) => {
                "replaced: a new file (compaction, or a recreated or restored database)".into()
            }
        })));
    }
    if len < p.size {
        return Ok(Decision::whole(Some(format!(
            "shrank from {} to {len} bytes",
            p.size
        ))));
    }
    let prefix = match check {
        PrefixCheck::Exact => {
            let Some(pieces) = prefix.pieces() else {
                return Ok(Decision::whole(Some(
                    "the parent's chain has no whole-file hash of its copy; exact mode stores it whole".into(),
                )));
            };
            match exact_prefix(file, &pieces, progress)? {
                Some(hash) => Some(hash),
                None => {
                    return Ok(Decision::whole(Some(format!(
                        "changed within its first {} bytes (exact check)",
                        p.size
                    ))))
                }
            }
        }
        PrefixCheck::Fast => {
            let at = p.size - p.size.min(END_CHECK_LEN);
            let same = match &p.end_sha256 {
                Some(want) => finish(hash_range(file, at, p.size, None)?) == *want,
                None => false,
            };
            if !same {
                return Ok(Decision::whole(Some(format!(
                    "bytes {at}..{} changed (fast check of the last blocks)",
                    p.size
                ))));
            }
            // Not read, but accounted for, so progress reaches its total.
            progress
                .bytes_done
                .fetch_add(p.size, std::sync::atomic::Ordering::Relaxed);
            None
        }
    };
    Ok(Decision {
        from: p.size,
        unchanged: (len == p.size).then_some(p),
        prefix,
        reason: None,
    })
}

/// A file's record in the parent's chain, oldest backup first, the parent last.
type Records<'a> = HashMap<&'a str, &'a FileEntry>;

/// What the parent's chain says a file's first `p.size` bytes are.
struct Prefix<'a, 'r> {
    records: &'r [Records<'a>],
    path: &'r str,
    /// The parent's record.
    p: &'a FileEntry,
}

/// Hashed ranges that make up a prefix: `(from, to, SHA-256 of bytes from..to)`, in order,
/// the first from 0 (a whole-file hash at that size), the others the tails stored since.
type Pieces = Vec<(u64, u64, String)>;

impl Prefix<'_, '_> {
    /// The parent's whole-file hash; or, when the parent (a fast incremental) has none, the
    /// newest whole-file hash back in the chain and the tails stored after it. None when the
    /// chain has no whole-file hash of this copy.
    fn pieces(&self) -> Option<Pieces> {
        let mut tails = Vec::new();
        let mut e = self.p;
        let mut k = self.records.len().checked_sub(1)?;
        loop {
            if let Some(sha) = &e.sha256 {
                tails.push((0, e.size, sha.clone()));
                tails.reverse();
                return Some(tails);
            }
            let continues_at = match &e.stored {
                Stored::Tail { from, sha256 } => {
                    tails.push((*from, e.size, sha256.clone()));
                    *from
                }
                Stored::Unchanged => e.size,
                Stored::Whole => return None,
            };
            k = k.checked_sub(1)?;
            e = self.records[k]
                .get(self.path)
                .filter(|o| o.size == continues_at)?;
        }
    }
}

/// Reads the prefix `pieces` cover, checking each piece's hash; returns the SHA-256 state
/// over the whole prefix, or None when a byte changed.
fn exact_prefix(file: &File, pieces: &Pieces, progress: &Progress) -> io::Result<Option<Context>> {
    let mut whole = Context::new(&SHA256);
    for (from, to, want) in pieces {
        // The first piece is the file up to its size: its hash is the running one.
        let mut piece = (*from > 0).then(|| Context::new(&SHA256));
        read_range(file, *from, *to, Some(progress), |bytes| {
            whole.update(bytes);
            if let Some(p) = &mut piece {
                p.update(bytes);
            }
        })?;
        let got = match piece {
            Some(p) => finish(p),
            None => finish(whole.clone()),
        };
        if got != *want {
            return Ok(None);
        }
    }
    Ok(Some(whole))
}

/// SHA-256 state over bytes `from..to` of `file`.
fn hash_range(file: &File, from: u64, to: u64, progress: Option<&Progress>) -> io::Result<Context> {
    let mut hash = Context::new(&SHA256);
    read_range(file, from, to, progress, |bytes| hash.update(bytes))?;
    Ok(hash)
}

/// Reads bytes `from..to` of `file` into `take` (positional reads: the cursor stays).
fn read_range(
    file: &File,
    from: u64,
    to: u64,
    progress: Option<&Progress>,
    mut take: impl FnMut(&[u8]),
) -> io::Result<()> {
    let mut buf = vec![0u8; READ_BUF.min((to - from) as usize).max(1)];
    let mut at = from;
    while at < to {
        let want = buf.len().min((to - at) as usize);
        let n = file.read_at(&mut buf[..want], at)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        take(&buf[..n]);
        at += n as u64;
        if let Some(p) = progress {
            p.add_bytes(n as u64)?;
        }
    }
    Ok(())
}

/// SHA-256 of a file's last `END_CHECK_LEN` bytes (of all of it, when shorter).
fn end_sha256(file: &File, len: u64) -> io::Result<String> {
    hash_range(file, len - len.min(END_CHECK_LEN), len, None).map(finish)
}

/// Reads exactly `left` bytes of a file, hashing them (and into `whole`, when given);
/// fewer is an error.
struct PrefixReader<'a> {
    file: File,
    left: u64,
    hash: Context,
    whole: Option<Context>,
    progress: &'a Progress,
}

impl Read for PrefixReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = (buf.len() as u64).min(self.left) as usize;
        let n = self.file.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while it was read",
            ));
        }
        self.hash.update(&buf[..n]);
        if let Some(w) = &mut self.whole {
            w.update(&buf[..n]);
        }
        self.left -= n as u64;
        self.progress.add_bytes(n as u64)?;
        Ok(n)
    }
}
