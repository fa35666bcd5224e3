//! Verify and restore: store → AES-256-GCM STREAM (every tag checked) → zstd → tar, every
//! file checked against the metadata. A restore unpacks into a staging directory beside the
//! target and only swaps it into place once the whole backup has verified.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::{Duration, SystemTime};

use nix::unistd::{Gid, Uid};
use ring::digest::{Context, SHA256};

use super::frames::{self, Decompress, FramePool, FrameReader, Framer, InOrder};
use super::{pick_error, read_full, recycler, reuse, Block, BlockReader, Progress, QUEUE_BLOCKS};
use crate::crypto::{self, StreamOpener, TAG_LEN};
use crate::error::{Error, Result};
use crate::format::{BackupMetadata, DataHeader, FileEntry, Stored, HEADER_LEN};
use crate::keyring::KeyRing;
use crate::store::Store;

const COPY_BUF: usize = 1 << 20;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VerifyReport {
    pub backup_id: String,
    pub files: u64,
    pub bytes: u64,
    pub stored_bytes: u64,
    pub chunks: u64,
    /// Backups read: the backup and those it depends on (`--chain`).
    #[serde(default = "one")]
    pub backups: u64,
    /// True when every file was rebuilt and checked whole (a full backup, or `--chain`).
    #[serde(default = "yes")]
    pub rebuilt: bool,
    /// A cluster backup's member backups, each verified (the fields above are their sums).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<VerifyReport>,
}

impl VerifyReport {
    pub fn of_members(id: &str, members: Vec<VerifyReport>) -> VerifyReport {
        let sum = |f: fn(&VerifyReport) -> u64| members.iter().map(f).sum();
        VerifyReport {
            backup_id: id.to_string(),
            files: sum(|r| r.files),
            bytes: sum(|r| r.bytes),
            stored_bytes: sum(|r| r.stored_bytes),
            chunks: sum(|r| r.chunks),
            backups: sum(|r| r.backups),
            rebuilt: members.iter().all(|r| r.rebuilt),
            members,
        }
    }
}

fn one() -> u64 {
    1
}
fn yes() -> bool {
    true
}

/// Why the caller's `before_swap` refused the swap (a stop hook that failed).
pub type BeforeSwapError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Where the database directory goes.
    pub target: PathBuf,
    /// Where a separate view index directory goes; without it indexes go under `target`.
    pub view_index_target: Option<PathBuf>,
    /// Where the CouchDB config files go; without it they are verified but not written.
    pub config_target: Option<PathBuf>,
    pub force: bool,
    pub discard_old: bool,
    pub owner: Option<(Uid, Gid)>,
    /// Flush the restored files to disk before swapping them in.
    pub sync: bool,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RestoreReport {
    pub backup_id: String,
    pub files: u64,
    pub bytes: u64,
    pub target: PathBuf,
    /// Where the previous contents of each target were moved, when kept.
    pub previous_kept: Vec<PathBuf>,
    /// True when a rerun found this backup's restore into the target already complete and
    /// changed nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub already_restored: bool,
}

pub const JOURNAL_FORMAT: u32 = 1;

/// Written beside the target (`.<name>.couchvault-restore.json`) just before a restore's
/// swap, naming the staging directory by device and inode, and marked complete once the
/// restore has returned. A rename keeps the inode: when a run was cut off after its swap
/// (the target is that directory, the journal not complete), a rerun of the same restore
/// knows the swap happened and does not move the restored data aside again. A restore
/// that completed is not repeated silently: run again with --force, it restores anew.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Journal {
    couchvault_restore: u32,
    dev: u64,
    ino: u64,
    complete: bool,
    written_at: chrono::DateTime<chrono::Utc>,
    report: RestoreReport,
}

/// Where the journal of restores into `target` is kept.
pub fn journal_path(target: &Path) -> PathBuf {
    let name = target.file_name().unwrap_or_default().to_string_lossy();
    target.with_file_name(format!(".{name}.couchvault-restore.json"))
}

/// The finished restore of `meta` into `d`, if that is what its target still holds: the
/// journal names this backup and the target directory by inode, and every restored file
/// has the size and mtime the restore gave it (CouchDB writing to it since changes them, and
/// then a rerun restores again).
fn finished_restore(d: &Destination, meta: &BackupMetadata) -> Option<RestoreReport> {
    use std::os::unix::fs::MetadataExt;
    let text = fs::read(journal_path(&d.target)).ok()?;
    let j: Journal = serde_json::from_slice(&text).ok()?;
    let m = fs::metadata(&d.target).ok()?;
    if j.couchvault_restore != JOURNAL_FORMAT
        || j.complete
        || j.report.backup_id != meta.backup_id
        || (m.dev(), m.ino()) != (j.dev, j.ino)
    {
        return None;
    }
    let untouched =
        meta.files.iter().all(
            |f| match d.prefixes.iter().find_map(|p| f.path.strip_prefix(p)) {
                None => true,
                Some(rest) => fs::symlink_metadata(d.target.join(rest))
                    .is_ok_and(|m| m.is_file() && m.len() == f.size && m.mtime() == f.mtime.max(0)),
            },
        );
    untouched.then_some(j.report)
}

/// Writes the journal of `report`, naming `dir` (the staging directory before the swap,
/// the target after it: the same inode).
fn write_journal(report: &RestoreReport, dir: &Path, complete: bool) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
    let j = Journal {
        couchvault_restore: JOURNAL_FORMAT,
        dev: m.dev(),
        ino: m.ino(),
        complete,
        written_at: chrono::Utc::now(),
        report: report.clone(),
    };
    let path = journal_path(&report.target);
    let tmp = path.with_extension("json.tmp");
    let ctx = |e| Error::io(format!("writing {}", path.display()), e);
    let text = serde_json::to_vec_pretty(&j).map_err(|e| ctx(io::Error::other(e)))?;
    let mut f = File::create(&tmp).map_err(ctx)?;
    f.write_all(&text)
        .and_then(|()| f.sync_all())
        .map_err(ctx)?;
    fs::rename(&tmp, &path).map_err(ctx)
}

/// Checks backups end to end (every chunk tag, the stream hash, every stored piece's size
/// and hash) without writing anything. `chain` is one backup alone, or a backup's whole
/// chain oldest first ([`crate::catalog::chain`]): then every file of the last one is also
/// rebuilt (in hashes only) and checked against its recorded size and SHA-256.
pub fn verify(
    store: &dyn Store,
    keyring: &KeyRing,
    chain: &[BackupMetadata],
    progress: &Progress,
) -> Result<VerifyReport> {
    let target = chain.last().ok_or(Error::PipelineAborted)?;
    let rebuilt = chain.len() > 1 || target.parent.is_none();
    // Verify passes exactly what restore accepts.
    check_chain(
        store,
        keyring,
        Rebuild::new(chain, rebuilt)?,
        true,
        &|_| None,
        progress,
    )
}

/// Streams the backups of a chain (`every` one, or those the rebuild needs), placing files
/// where `place` says; then checks the rebuilt files' sizes and hashes.
fn check_chain(
    store: &dyn Store,
    keyring: &KeyRing,
    mut rebuild: Rebuild<'_>,
    every: bool,
    place: &(dyn Fn(&str) -> Option<PathBuf> + Sync),
    progress: &Progress,
) -> Result<VerifyReport> {
    let chain = rebuild.chain.clone();
    let target = chain.last().ok_or(Error::PipelineAborted)?;
    let mut chunks = 0;
    for k in 0..chain.len() {
        if every || rebuild.needs(k) {
            chunks += unpack(store, keyring, &mut rebuild, k, place, progress)
                .map_err(|e| progress.explain(e))?;
        }
    }
    rebuild.finish(&|_| None)?;
    Ok(VerifyReport {
        backup_id: target.backup_id.clone(),
        files: target.totals.files,
        bytes: target.totals.bytes,
        stored_bytes: chain.iter().map(|m| m.data.size).sum(),
        chunks,
        backups: chain.len() as u64,
        rebuilt: rebuild.rebuild,
        members: Vec::new(),
    })
}

/// [`verify`], with every file `select` picks written under `scratch` as it is rebuilt and
/// handed to `on_whole` as soon as it is whole (then it may be removed): what needs a file
/// on disk to read it (a `.couch` file is random-read) gets it without a restore, with
/// scratch space for the files in flight only. `chain` must rebuild its last backup (a
/// full alone, or a whole chain).
pub fn inspect(
    store: &dyn Store,
    keyring: &KeyRing,
    chain: &[BackupMetadata],
    progress: &Progress,
    scratch: &Path,
    select: &(dyn Fn(&str) -> bool + Sync),
    on_whole: &OnWhole<'_>,
) -> Result<VerifyReport> {
    let mut rebuild = Rebuild::new(chain, true)?;
    rebuild.on_whole = Some(on_whole);
    let place = |path: &str| select(path).then(|| scratch.join(path));
    check_chain(store, keyring, rebuild, false, &place, progress)
}

/// One destination: a target directory, the staging directory beside it, and which
/// archive prefixes land there.
struct Destination {
    target: PathBuf,
    staging: PathBuf,
    prefixes: Vec<&'static str>,
}

/// Restores the last backup of `chain` (a full backup alone, or an incremental's whole
/// chain oldest first, as [`crate::catalog::chain`] returns it).
pub fn restore(
    store: &dyn Store,
    keyring: &KeyRing,
    chain: &[BackupMetadata],
    opts: &RestoreOptions,
    progress: &Progress,
) -> Result<RestoreReport> {
    restore_with(store, keyring, chain, opts, progress, &|| Ok(()))
}

/// [`restore`], calling `before_swap` once everything is staged and verified, just before
/// the target is replaced (to stop CouchDB as late as possible). Its error cancels the swap.
pub fn restore_with(
    store: &dyn Store,
    keyring: &KeyRing,
    chain: &[BackupMetadata],
    opts: &RestoreOptions,
    progress: &Progress,
    before_swap: &dyn Fn() -> std::result::Result<(), BeforeSwapError>,
) -> Result<RestoreReport> {
    let meta = chain.last().ok_or(Error::PipelineAborted)?;
    let mut rebuild = Rebuild::new(chain, true)?;
    let mut dests = vec![Destination::new(
        &opts.target,
        &meta.backup_id,
        vec!["data/"],
    )?];
    match &opts.view_index_target {
        Some(v) => dests.push(Destination::new(v, &meta.backup_id, vec!["views/"])?),
        None => dests[0].prefixes.push("views/"),
    }
    if let Some(c) = &opts.config_target {
        dests.push(Destination::new(c, &meta.backup_id, vec!["etc/"])?);
    }
    // A rerun of a restore whose swap completed (the process was killed afterwards) must
    // not move the restored data aside again: it is done.
    if let Some(mut done) = finished_restore(&dests[0], meta) {
        tracing::info!(target = %dests[0].target.display(), "an earlier run of this restore completed its swap");
        write_journal(&done, &dests[0].target, true)?;
        done.already_restored = true;
        return Ok(done);
    }
    // Refuse before anything is downloaded or written.
    for d in &dests {
        if !opts.force && !is_empty_or_missing(&d.target)? {
            return Err(Error::TargetNotEmpty {
                path: d.target.clone(),
            });
        }
    }
    for d in &dests {
        check_space(d, meta)?;
    }

    let staged = (|| {
        for d in &dests {
            remove_all(&d.staging)?;
            fs::create_dir(&d.staging).map_err(|e| {
                Error::io(
                    format!("creating staging directory {}", d.staging.display()),
                    e,
                )
            })?;
        }
        let place = |archive_path: &str| -> Option<PathBuf> {
            dests.iter().find_map(|d| {
                d.prefixes.iter().find_map(|p| {
                    archive_path
                        .strip_prefix(p)
                        .map(|rest| d.staging.join(rest))
                })
            })
        };
        // Oldest first; a backup none of whose pieces the target needs is not fetched.
        for k in 0..chain.len() {
            if rebuild.needs(k) {
                unpack(store, keyring, &mut rebuild, k, &place, progress)
                    .map_err(|e| progress.explain(e))?;
            }
        }
        rebuild.finish(&place)?;
        for d in &dests {
            if let Some((uid, gid)) = opts.owner {
                chown_tree(&d.staging, uid, gid)?;
            }
            if opts.sync {
                sync_tree(&d.staging)?;
            }
        }
        super::checkpoint("restore-staged");
        before_swap().map_err(|e| Error::Hook {
            reason: e.to_string(),
        })
    })();
    if let Err(e) = staged {
        for d in &dests {
            if let Err(cleanup) = remove_all(&d.staging) {
                tracing::warn!(error = %cleanup, "could not remove the staging directory");
            }
        }
        return Err(e);
    }

    // Each non-empty target is moved aside under a new name, chosen (and journaled) now.
    let asides = dests
        .iter()
        .map(|d| Ok((!is_empty_or_missing(&d.target)?).then(|| aside_name(&d.target))))
        .collect::<Result<Vec<_>>>()?;
    let report = RestoreReport {
        backup_id: meta.backup_id.clone(),
        files: meta.totals.files,
        bytes: meta.totals.bytes,
        target: dests[0].target.clone(),
        previous_kept: match opts.discard_old {
            true => Vec::new(),
            false => asides.iter().flatten().cloned().collect(),
        },
        already_restored: false,
    };
    write_journal(&report, &dests[0].staging, false)?;
    for (d, aside) in dests.iter().zip(&asides) {
        swap_into_place(d, aside.as_deref(), opts.discard_old)?;
    }
    super::checkpoint("restore-swapped");
    write_journal(&report, &dests[0].target, true)?;
    Ok(report)
}

impl Destination {
    fn new(target: &Path, id: &str, prefixes: Vec<&'static str>) -> Result<Self> {
        let target = std::path::absolute(target)
            .map_err(|e| Error::io(format!("resolving {}", target.display()), e))?;
        let name = target
            .file_name()
            .ok_or_else(|| {
                Error::io(
                    format!("restore target {}", target.display()),
                    io::Error::new(io::ErrorKind::InvalidInput, "needs a directory name"),
                )
            })?
            .to_string_lossy()
            .into_owned();
        let parent = target.parent().unwrap_or(Path::new("/"));
        fs::create_dir_all(parent)
            .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
        Ok(Destination {
            staging: parent.join(format!(".{name}.couchvault-staging-{id}")),
            target,
            prefixes,
        })
    }
}

fn is_empty_or_missing(dir: &Path) -> Result<bool> {
    match fs::read_dir(dir) {
        Ok(mut rd) => Ok(rd.next().is_none()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(Error::io(
            format!("reading restore target {}", dir.display()),
            e,
        )),
    }
}

fn remove_all(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", dir.display()), e)),
    }
}

/// Fails early when the staging filesystem cannot hold the files bound for it.
fn check_space(d: &Destination, meta: &BackupMetadata) -> Result<()> {
    let needed: u64 = meta
        .files
        .iter()
        .filter(|f| d.prefixes.iter().any(|p| f.path.starts_with(p)))
        .map(|f| f.size)
        .sum();
    let parent = d.staging.parent().unwrap_or(Path::new("/"));
    let st = nix::sys::statvfs::statvfs(parent).map_err(|e| {
        Error::io(
            format!("checking free space in {}", parent.display()),
            e.into(),
        )
    })?;
    let available = st.blocks_available() as u64 * st.fragment_size() as u64;
    if needed > available {
        return Err(Error::InsufficientSpace {
            path: parent.to_path_buf(),
            needed,
            available,
        });
    }
    Ok(())
}

/// Renames without ever replacing what is at `to` (renameat2 RENAME_NOREPLACE).
fn rename_noreplace(from: &Path, to: &Path) -> Result<()> {
    nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        from,
        nix::fcntl::AT_FDCWD,
        to,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    )
    .map_err(|e| {
        Error::io(
            format!("moving {} to {}", from.display(), to.display()),
            e.into(),
        )
    })
}

/// A new, unused name for a target's previous contents: `<target>.couchvault-old-<ULID>`,
/// so names sort by age and none is ever reused.
pub fn aside_name(target: &Path) -> PathBuf {
    let name = target.file_name().unwrap_or_default().to_string_lossy();
    target.with_file_name(format!("{name}.couchvault-old-{}", ulid::Ulid::new()))
}

/// Moves the verified staging directory into place. A non-empty target is first moved to
/// `aside` (a new name: an existing kept-aside directory is never touched or replaced) and
/// put back if the swap fails; it is deleted afterwards only when asked.
fn swap_into_place(d: &Destination, aside: Option<&Path>, discard_old: bool) -> Result<()> {
    let Some(old) = aside else {
        if d.target.exists() {
            fs::remove_dir(&d.target)
                .map_err(|e| Error::io(format!("replacing empty {}", d.target.display()), e))?;
        }
        return rename_noreplace(&d.staging, &d.target);
    };
    rename_noreplace(&d.target, old)?;
    super::checkpoint("restore-moved-aside");
    if let Err(e) = rename_noreplace(&d.staging, &d.target) {
        rename_noreplace(old, &d.target)?;
        return Err(e);
    }
    if discard_old {
        remove_all(old)?;
    }
    Ok(())
}

pub(crate) fn chown_tree(dir: &Path, uid: Uid, gid: Gid) -> Result<()> {
    let chown = |p: &Path| {
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            p,
            Some(uid),
            Some(gid),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| Error::io(format!("changing the owner of {}", p.display()), e.into()))
    };
    chown(dir)?;
    for entry in
        fs::read_dir(dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?
    {
        let entry = entry.map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        let ft = entry
            .file_type()
            .map_err(|e| Error::io(format!("reading {}", entry.path().display()), e))?;
        if ft.is_dir() {
            chown_tree(&entry.path(), uid, gid)?;
        } else {
            chown(&entry.path())?;
        }
    }
    Ok(())
}

/// One syncfs for the whole staging filesystem: far cheaper than an fsync per file.
fn sync_tree(dir: &Path) -> Result<()> {
    let f = File::open(dir).map_err(|e| Error::io(format!("opening {}", dir.display()), e))?;
    nix::unistd::syncfs(&f)
        .map_err(|e| Error::io(format!("flushing {} to disk", dir.display()), e.into()))
}

/// Streams backup `k` of the rebuild's chain through decryption, decompression and tar,
/// checking everything. `place` maps an archive path to where it is written (None: verify
/// only). Returns the number of chunks opened.
fn unpack(
    store: &dyn Store,
    keyring: &KeyRing,
    rebuild: &mut Rebuild<'_>,
    k: usize,
    place: &(dyn Fn(&str) -> Option<PathBuf> + Sync),
    progress: &Progress,
) -> Result<u64> {
    let meta = rebuild.chain[k];
    let key = keyring.unlock(keyring.get(&meta.tenant, &meta.encryption.key_id)?)?;
    let data_key = crypto::unwrap_data_key(
        key.secret,
        &meta.encryption.wrapped()?,
        &meta.tenant,
        &meta.encryption.key_id,
        &meta.backup_id,
    )?;
    let source = store.open_large(&meta.tenant, &meta.data.object, 0)?;
    let relaxed = std::sync::atomic::Ordering::Relaxed;
    progress
        .bytes_total
        .store(meta.totals.stored_bytes, relaxed);
    progress.files_total.store(meta.totals.files, relaxed);
    progress.bytes_done.store(0, relaxed);
    progress.files_done.store(0, relaxed);

    // One thread decrypts; a backup of independent frames is decompressed on threads of their
    // own (frames.rs), one of a single frame as a stream on the extracting thread, which
    // checks, writes and hashes the files.
    let (tx, rx) = sync_channel(QUEUE_BLOCKS);
    let (spent, free) = recycler();
    let plain = BlockReader::new(rx, spent);
    let pool = FramePool::default();
    let workers = match meta.compression.frame_size {
        Some(n) if n as usize <= frames::MAX_FRAME_CONTENT => decompressors(),
        _ => 0,
    };
    let jobs = (0..workers)
        .map(|_| Decompress::new(&pool))
        .collect::<Result<Vec<_>>>()?;
    std::thread::scope(|s| {
        let decrypt = s.spawn(move || decrypt_stream(source, meta, &data_key, tx, free));
        let (extracted, decompressed) = if jobs.is_empty() {
            let tar =
                zstd::stream::read::Decoder::new(plain).map_err(|e| Error::io("starting zstd", e));
            (
                tar.and_then(|tar| extract(tar, rebuild, k, place, progress)),
                Ok(()),
            )
        } else {
            let (frame_tx, frame_rx) = sync_channel(jobs.len());
            let framer = Framer::new(plain, &pool);
            let workers = frames::spawn_workers(s, jobs, framer, &pool, frame_tx);
            let tar = FrameReader::new(InOrder::new(frame_rx), &pool);
            let extracted = extract(tar, rebuild, k, place, progress);
            (extracted, frames::join_workers(workers))
        };
        let decrypted = decrypt.join().unwrap_or(Err(Error::PipelineAborted));
        let chunks = decrypted.as_ref().map(|c| *c).unwrap_or(0);
        pick_error(pick_error(extracted, decompressed), decrypted.map(drop)).map(|()| chunks)
    })
}

/// Decompression threads beside the decrypting and extracting ones: one on two cores (two
/// there were slower and took 9 MiB more, docs/PERFORMANCE.md), up to four on more.
fn decompressors() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores.saturating_sub(2).clamp(1, 4)
}

/// Rebuilding the last backup of a chain: which stored pieces its files are made of, and
/// the SHA-256 of each file so far as pieces are applied oldest first.
struct Rebuild<'a> {
    chain: Vec<&'a BackupMetadata>,
    /// Each backup's files by path.
    index: Vec<HashMap<&'a str, &'a FileEntry>>,
    /// (chain index, path) of every piece the target's files are built from.
    needed: HashSet<(usize, &'a str)>,
    /// Per target file: the hash of the bytes applied so far, and their count.
    state: HashMap<&'a str, (Context, u64)>,
    rebuild: bool,
    /// Per target file: the chain index of its last piece (the file is whole after it).
    last_piece: HashMap<&'a str, usize>,
    /// Called with each placed file as soon as it is whole ([`inspect`]).
    on_whole: Option<&'a OnWhole<'a>>,
}

/// What [`inspect`] calls with each selected file once it is whole on scratch disk.
pub type OnWhole<'a> = dyn Fn(&str, &Path) -> Result<()> + Sync + 'a;

impl<'a> Rebuild<'a> {
    /// With `rebuild`, the last backup's files are rebuilt (restore, verify of a whole
    /// chain or of a full); without, only each stored piece is checked (verify of one
    /// incremental alone).
    fn new(chain: &'a [BackupMetadata], rebuild: bool) -> Result<Self> {
        for m in chain {
            check_file_list(m)?;
        }
        let index: Vec<HashMap<&str, &FileEntry>> = chain
            .iter()
            .map(|m| m.files.iter().map(|f| (f.path.as_str(), f)).collect())
            .collect();
        let mut needed = HashSet::new();
        if let (true, Some(target)) = (rebuild, chain.last()) {
            for f in &target.files {
                pieces_of(chain, &index, f, &mut needed)?;
            }
        }
        let mut last_piece: HashMap<&str, usize> = HashMap::new();
        for (k, path) in &needed {
            let last = last_piece.entry(path).or_insert(*k);
            *last = (*last).max(*k);
        }
        Ok(Rebuild {
            chain: chain.iter().collect(),
            index,
            needed,
            state: HashMap::new(),
            rebuild,
            last_piece,
            on_whole: None,
        })
    }

    fn needs(&self, k: usize) -> bool {
        self.needed.iter().any(|(i, _)| *i == k)
    }

    /// After every piece is applied: each file of the target has its size and SHA-256 (and
    /// its mode and mtime where it was written).
    fn finish(&mut self, place: &(dyn Fn(&str) -> Option<PathBuf> + Sync)) -> Result<()> {
        let Some(target) = self.chain.last() else {
            return Ok(());
        };
        if !self.rebuild {
            return Ok(());
        }
        for f in &target.files {
            let mismatch = |reason: String| Error::Mismatch {
                id: target.backup_id.clone(),
                reason: format!("{}: {reason}", f.path),
            };
            let Some((hash, len)) = self.state.remove(f.path.as_str()) else {
                return Err(mismatch("no stored copy was found in its chain".into()));
            };
            if len != f.size {
                return Err(mismatch(format!(
                    "rebuilt to {len} bytes, the metadata says {}",
                    f.size
                )));
            }
            if f.sha256
                .as_ref()
                .is_some_and(|w| *w != hex::encode(hash.finish()))
            {
                return Err(mismatch(
                    "the rebuilt file does not match its SHA-256".into(),
                ));
            }
            if let Some(dest) = place(&f.path) {
                let ctx = |e| Error::io(format!("writing {}", dest.display()), e);
                let file = OpenOptions::new().write(true).open(&dest).map_err(ctx)?;
                // Setuid, setgid and sticky bits are never restored.
                file.set_permissions(fs::Permissions::from_mode(f.mode & 0o777))
                    .map_err(ctx)?;
                let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(f.mtime.max(0) as u64);
                file.set_modified(mtime).map_err(ctx)?;
            }
        }
        Ok(())
    }
}

/// Walks from the target's record of `f` back through the chain to its whole copy, adding
/// each piece it is built from; every step must continue exactly where its parent ended.
fn pieces_of<'a>(
    chain: &'a [BackupMetadata],
    index: &[HashMap<&'a str, &'a FileEntry>],
    f: &'a FileEntry,
    needed: &mut HashSet<(usize, &'a str)>,
) -> Result<()> {
    let broken = |reason: String| Error::Mismatch {
        id: chain[chain.len() - 1].backup_id.clone(),
        reason: format!("{}: {reason}", f.path),
    };
    let (mut k, mut e) = (chain.len() - 1, f);
    loop {
        if e.piece().is_some() {
            needed.insert((k, f.path.as_str()));
        }
        let continues_at = match e.stored {
            Stored::Whole => return Ok(()),
            Stored::Tail { from, .. } => from,
            Stored::Unchanged => e.size,
        };
        let parent = k
            .checked_sub(1)
            .and_then(|p| index[p].get(f.path.as_str()).map(|pe| (p, *pe)));
        match parent {
            Some((p, pe)) if pe.size == continues_at => (k, e) = (p, pe),
            Some((p, pe)) => {
                return Err(broken(format!(
                    "continues a {continues_at}-byte copy, but backup {} has {} bytes",
                    chain[p].backup_id, pe.size
                )))
            }
            None => {
                return Err(broken(
                    "stored against a parent copy that the chain does not have".into(),
                ))
            }
        }
    }
}

/// The decryption thread: checks the header, opens every chunk in order and hashes the
/// stored bytes. Plaintext is released only after its chunk's tag verified.
fn decrypt_stream(
    source: Box<dyn Read + Send>,
    meta: &BackupMetadata,
    data_key: &crypto::SecretKey,
    tx: SyncSender<Block>,
    free: Receiver<Vec<u8>>,
) -> Result<u64> {
    let mismatch = |reason: String| Error::Mismatch {
        id: meta.backup_id.clone(),
        reason,
    };
    let mut r = BufReader::with_capacity(64 << 10, source);
    let read_err = |e| Error::io(format!("reading {}", meta.data.object), e);
    let mut hb = [0u8; HEADER_LEN];
    if read_full(&mut r, &mut hb).map_err(read_err)? < HEADER_LEN {
        return Err(mismatch(
            "the data stream is shorter than its header (truncated)".into(),
        ));
    }
    let header = DataHeader::parse(&hb)?;
    if header.backup_id != ulid_bytes(&meta.backup_id)? {
        return Err(mismatch(
            "the data stream belongs to another backup (swapped objects)".into(),
        ));
    }
    if header.chunk_size != meta.encryption.chunk_size {
        return Err(mismatch("chunk size differs from the metadata".into()));
    }
    let mut hash = Context::new(&SHA256);
    hash.update(&hb);
    let mut size = HEADER_LEN as u64;
    let mut opener = StreamOpener::new(data_key, header.nonce_prefix, hb.to_vec());
    let frame = header.chunk_size as usize + TAG_LEN;
    loop {
        let mut buf = reuse(&free, frame);
        buf.resize(frame, 0);
        let n = read_full(&mut r, &mut buf).map_err(read_err)?;
        if n < TAG_LEN {
            return Err(mismatch(format!(
                "the data stream ends after chunk {} without its final chunk (truncated)",
                opener.chunks_opened()
            )));
        }
        let last = n < frame || r.fill_buf().map_err(read_err)?.is_empty();
        hash.update(&buf[..n]);
        size += n as u64;
        let plain = opener.open(&mut buf[..n], last)?;
        buf.truncate(plain);
        if tx.send(Block::Data(buf)).is_err() {
            return Err(Error::PipelineAborted);
        }
        if last {
            break;
        }
    }
    let sha = hex::encode(hash.finish());
    if size != meta.data.size || sha != meta.data.sha256 {
        return Err(mismatch(format!(
            "the data stream has {size} bytes with SHA-256 {sha}, the metadata says {} bytes with {}",
            meta.data.size, meta.data.sha256
        )));
    }
    let _ = tx.send(Block::End);
    Ok(opener.chunks_opened())
}

fn ulid_bytes(id: &str) -> Result<[u8; 16]> {
    ulid::Ulid::from_string(id)
        .map(|u| u.to_bytes())
        .map_err(|_| {
            crate::format::FormatError::Metadata(format!("backup id '{id}' is not a ULID")).into()
        })
}

/// Checks an archive path: relative, plain components only, under a known prefix.
fn safe_relative(path: &Path) -> std::result::Result<(), &'static str> {
    if path.is_absolute() {
        return Err("absolute path");
    }
    let mut n = 0;
    for c in path.components() {
        match c {
            Component::Normal(_) => n += 1,
            Component::ParentDir => return Err("path contains '..'"),
            _ => return Err("path is not a plain relative path"),
        }
    }
    if n < 2 {
        return Err("path is too short");
    }
    Ok(())
}

/// The metadata's file list, held to restore's rules before anything is read, so that
/// verify passes exactly the backups restore accepts: every path plain, relative, spelled
/// one way only (no `.`, empty or `..` components), under `data/`, `views/` or `etc/`, and
/// listed once.
fn check_file_list(meta: &BackupMetadata) -> Result<()> {
    let mut seen = std::collections::HashSet::with_capacity(meta.files.len());
    for f in &meta.files {
        let hostile = |reason: &str| Error::Hostile {
            path: crate::names::escape_control(&f.path).into_owned(),
            reason: format!("in the backup's file list: {reason}"),
        };
        let p = f.path.as_str();
        safe_relative(Path::new(p)).map_err(hostile)?;
        if p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            return Err(hostile("not spelled plainly (empty or '.' components)"));
        }
        if !["data/", "views/", "etc/"]
            .iter()
            .any(|pre| p.starts_with(pre))
        {
            return Err(hostile("not under data/, views/ or etc/"));
        }
        if !seen.insert(p) {
            return Err(hostile("listed twice"));
        }
        match f.stored {
            Stored::Tail { from, .. } if from == 0 || from > f.size => {
                return Err(hostile("a stored tail outside the file"))
            }
            Stored::Tail { .. } | Stored::Unchanged if meta.parent.is_none() => {
                return Err(hostile("stored against a parent, in a backup without one"))
            }
            Stored::Whole if f.sha256.is_none() => {
                return Err(hostile("stored whole without its SHA-256"))
            }
            _ => {}
        }
    }
    Ok(())
}

/// The extraction side: tar entries of backup `k` checked against its metadata; the
/// pieces the rebuild needs are applied (written where `place` says, hashed as they are
/// written), the others only checked.
fn extract(
    tar: impl Read,
    rebuild: &mut Rebuild<'_>,
    k: usize,
    place: &(dyn Fn(&str) -> Option<PathBuf> + Sync),
    progress: &Progress,
) -> Result<()> {
    let meta = rebuild.chain[k];
    let mismatch = |reason: String| Error::Mismatch {
        id: meta.backup_id.clone(),
        reason,
    };
    let stream_err = |e: io::Error| {
        if e.kind() == io::ErrorKind::BrokenPipe {
            Error::PipelineAborted
        } else {
            Error::io("decompressing and reading the archive", e)
        }
    };
    let expected = rebuild.index[k].clone();
    let mut seen: HashSet<&str> = HashSet::with_capacity(expected.len());
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().map_err(stream_err)? {
        let mut entry = entry.map_err(stream_err)?;
        let raw_path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let hostile = |reason: &str| Error::Hostile {
            path: raw_path.clone(),
            reason: reason.to_string(),
        };
        let kind = entry.header().entry_type();
        if !kind.is_file() {
            return Err(hostile(match kind {
                tar::EntryType::Symlink => "symbolic links are not allowed",
                tar::EntryType::Link => "hard links are not allowed",
                tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                    "device and fifo entries are not allowed"
                }
                tar::EntryType::Directory => "directory entries are not expected",
                _ => "only regular files are allowed",
            }));
        }
        let path = entry.path().map_err(stream_err)?.into_owned();
        safe_relative(&path).map_err(hostile)?;
        let Some((path_str, want)) = expected.get_key_value(raw_path.as_str()) else {
            return Err(hostile("not in the backup's file list"));
        };
        let Some((from, len)) = want.piece() else {
            return Err(hostile("recorded as unchanged, yet stored"));
        };
        if !seen.insert(path_str) {
            return Err(hostile("appears twice"));
        }
        let size = entry.header().size().map_err(stream_err)?;
        if size != len {
            return Err(mismatch(format!(
                "{} has {size} bytes in the archive, {len} in the metadata",
                want.path
            )));
        }
        let mut whole_at = None;
        let sha = if rebuild.needed.contains(&(k, *path_str)) {
            let (hash, done) = rebuild
                .state
                .entry(path_str)
                .or_insert_with(|| (Context::new(&SHA256), 0));
            if *done != from {
                return Err(mismatch(format!(
                    "{} continues at byte {from}, but {done} bytes were rebuilt",
                    want.path
                )));
            }
            let sha = match place(&want.path) {
                Some(dest) => {
                    let sha = write_piece(&mut entry, &dest, from, hash, progress)?;
                    if rebuild.last_piece.get(path_str) == Some(&k) {
                        whole_at = Some(dest);
                    }
                    sha
                }
                None => {
                    let mut w = HashingWriter::new(io::sink(), Some(hash), progress);
                    copy_large(&mut entry, &mut w).map_err(stream_err)?;
                    w.finish()
                }
            };
            *done += len;
            // A whole-file hash recorded here holds for the file as rebuilt so far.
            if want
                .sha256
                .as_ref()
                .is_some_and(|w| *w != hex::encode(hash.clone().finish()))
            {
                return Err(mismatch(format!(
                    "{} does not match its SHA-256 once rebuilt",
                    want.path
                )));
            }
            sha
        } else {
            let mut w = HashingWriter::new(io::sink(), None, progress);
            copy_large(&mut entry, &mut w).map_err(stream_err)?;
            w.finish()
        };
        if Some(sha.as_str()) != want.piece_sha256() {
            return Err(mismatch(format!(
                "{} does not match its SHA-256",
                want.path
            )));
        }
        if let (Some(dest), Some(on_whole)) = (whole_at, rebuild.on_whole) {
            on_whole(&want.path, &dest)?;
        }
        progress.file_done();
    }
    // Read to the very end so the final chunk's tag and the stream hash are checked.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(stream_err)?;
    if let Some(missing) = meta
        .files
        .iter()
        .find(|f| f.piece().is_some() && !seen.contains(f.path.as_str()))
    {
        return Err(mismatch(format!(
            "{} is missing from the archive",
            missing.path
        )));
    }
    Ok(())
}

/// Writes one piece: a new file for a whole copy, appended to the copy rebuilt so far for
/// a tail. `whole` carries the file's hash on. Returns the piece's SHA-256.
fn write_piece(
    entry: &mut impl Read,
    dest: &Path,
    from: u64,
    whole: &mut Context,
    progress: &Progress,
) -> Result<String> {
    let ctx = || format!("writing {}", dest.display());
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(|e| Error::io(ctx(), e))?;
    }
    let file = match from {
        0 => OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dest),
        _ => OpenOptions::new().append(true).open(dest),
    }
    .map_err(|e| Error::io(ctx(), e))?;
    let mut w = HashingWriter::new(file, Some(whole), progress);
    copy_large(entry, &mut w).map_err(|e| {
        if e.kind() == io::ErrorKind::BrokenPipe {
            Error::PipelineAborted
        } else {
            Error::io(ctx(), e)
        }
    })?;
    Ok(w.finish())
}

/// `io::copy` with a large buffer: fewer, larger writes and hash updates.
fn copy_large(r: &mut impl Read, w: &mut impl Write) -> io::Result<u64> {
    let mut buf = vec![0u8; COPY_BUF];
    let mut total = 0;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        w.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// Hashes what it writes, and carries a second hash (a file's, across its pieces) along.
struct HashingWriter<'a, 'h, W> {
    inner: W,
    hash: Context,
    whole: Option<&'h mut Context>,
    progress: &'a Progress,
}

impl<'a, 'h, W: Write> HashingWriter<'a, 'h, W> {
    fn new(inner: W, whole: Option<&'h mut Context>, progress: &'a Progress) -> Self {
        HashingWriter {
            inner,
            hash: Context::new(&SHA256),
            whole,
            progress,
        }
    }
    fn finish(self) -> String {
        hex::encode(self.hash.finish())
    }
}

impl<W: Write> Write for HashingWriter<'_, '_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        if let Some(w) = &mut self.whole {
            w.update(&buf[..n]);
        }
        self.progress.add_bytes(n as u64)?;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::safe_relative;
    use std::path::Path;

    #[test]
    fn archive_paths() {
        assert!(safe_relative(Path::new("data/shards/x.couch")).is_ok());
        for bad in ["/etc/passwd", "data/../../x", "../x", "data", "./data/x"] {
            assert!(safe_relative(Path::new(bad)).is_err(), "{bad}");
        }
    }
}
