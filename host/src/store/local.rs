//! The local directory store: the same layout as Swift, on a filesystem.
//!
//! ```text
//! ROOT/couchvault-<tenant>/<name>                 small objects and large-object manifests
//! ROOT/couchvault-<tenant>_segments/<name>/NNNNNNNN  segments of large object <name>
//! ```

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{LargeUpload, ObjectInfo, Store, StoreError, SEGMENTS_SUFFIX};

const CONTAINER_PREFIX: &str = "couchvault-";
const TMP_PREFIX: &str = ".tmp-";
const MANIFEST_FORMAT: u32 = 1;

pub struct LocalStore {
    root: PathBuf,
    segment_size: u64,
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    couchvault_local_manifest: u32,
    size: u64,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
    segments: Vec<SegmentRef>,
}

#[derive(Serialize, Deserialize)]
struct SegmentRef {
    name: String,
    size: u64,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl LocalStore {
    pub fn new(root: PathBuf, segment_size: u64) -> Self {
        LocalStore {
            root,
            segment_size: segment_size.max(1),
        }
    }

    fn container(&self, tenant: &str) -> PathBuf {
        self.root.join(format!("{CONTAINER_PREFIX}{tenant}"))
    }

    fn segments_dir(&self, tenant: &str, name: &str) -> PathBuf {
        self.root
            .join(format!("{CONTAINER_PREFIX}{tenant}{SEGMENTS_SUFFIX}"))
            .join(name)
    }

    fn not_found(tenant: &str, name: &str) -> StoreError {
        StoreError::NotFound {
            container: format!("{CONTAINER_PREFIX}{tenant}"),
            name: name.to_string(),
        }
    }

    fn read_manifest(&self, tenant: &str, name: &str) -> Result<Manifest, StoreError> {
        let bytes = self.get(tenant, name)?;
        serde_json::from_slice::<Manifest>(&bytes)
            .ok()
            .filter(|m| m.couchvault_local_manifest == MANIFEST_FORMAT)
            .ok_or_else(|| StoreError::Damaged {
                container: format!("{CONTAINER_PREFIX}{tenant}"),
                name: name.to_string(),
                reason: "its manifest is not a valid couchvault local manifest".into(),
            })
    }
}

/// Writes `bytes` to `path` through a temporary file, fsync and rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("object");
    let tmp = dir.join(format!("{TMP_PREFIX}{file_name}-{}", std::process::id()));
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Removes empty directories from `dir` up to (not including) `stop`.
fn prune_empty_parents(mut dir: &Path, stop: &Path) {
    while dir.starts_with(stop) && dir != stop {
        if fs::remove_dir(dir).is_err() {
            break;
        }
        match dir.parent() {
            Some(p) => dir = p,
            None => break,
        }
    }
}

/// Lists files under `base` recursively as '/'-separated names relative to `base`.
fn walk_files(base: &Path, out: &mut Vec<(String, fs::Metadata)>) -> Result<(), StoreError> {
    fn rec(
        base: &Path,
        dir: &Path,
        out: &mut Vec<(String, fs::Metadata)>,
    ) -> Result<(), StoreError> {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err(dir))?;
            let path = entry.path();
            let meta = entry.metadata().map_err(io_err(&path))?;
            if meta.is_dir() {
                rec(base, &path, out)?;
            } else if meta.is_file() {
                let fname = entry.file_name();
                if fname.to_string_lossy().starts_with(TMP_PREFIX) {
                    continue;
                }
                let rel = path.strip_prefix(base).unwrap_or(&path);
                out.push((rel.to_string_lossy().into_owned(), meta));
            }
        }
        Ok(())
    }
    rec(base, base, out)
}

impl Store for LocalStore {
    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    fn tenants(&self) -> Result<Vec<String>, StoreError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&self.root)(e)),
        };
        let names = entries
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(io_err(&self.root))?;
        Ok(super::tenants_of(
            names.iter().map(String::as_str),
            CONTAINER_PREFIX,
        ))
    }

    fn put(&self, tenant: &str, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        write_atomic(&self.container(tenant).join(name), bytes)
    }

    fn get(&self, tenant: &str, name: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.container(tenant).join(name);
        fs::read(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Self::not_found(tenant, name)
            } else {
                io_err(&path)(e)
            }
        })
    }

    fn create_large(
        &self,
        tenant: &str,
        name: &str,
        labels: &[(&str, &str)],
    ) -> Result<Box<dyn LargeUpload>, StoreError> {
        let dir = self.segments_dir(tenant, name);
        // A leftover of an earlier attempt at the same name must not leak into this one.
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&dir)(e)),
        }
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(Box::new(LocalUpload {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            manifest_path: self.container(tenant).join(name),
            syncer: Syncer::start(dir.clone()),
            dir,
            segment_size: self.segment_size,
            current: None,
            segments: Vec::new(),
        }))
    }

    fn open_large(
        &self,
        tenant: &str,
        name: &str,
        offset: u64,
    ) -> Result<Box<dyn Read + Send>, StoreError> {
        let manifest = self.read_manifest(tenant, name)?;
        let dir = self.segments_dir(tenant, name);
        let mut skip = offset;
        let mut parts = Vec::new();
        for seg in &manifest.segments {
            let path = dir.join(&seg.name);
            let actual = fs::metadata(&path).map_err(io_err(&path))?.len();
            if actual != seg.size {
                return Err(StoreError::Damaged {
                    container: format!("{CONTAINER_PREFIX}{tenant}"),
                    name: name.to_string(),
                    reason: format!(
                        "segment {} has {actual} bytes, the manifest says {}",
                        seg.name, seg.size
                    ),
                });
            }
            if skip >= seg.size {
                skip -= seg.size;
                continue;
            }
            parts.push((path, skip));
            skip = 0;
        }
        Ok(Box::new(SegmentReader {
            parts: parts.into_iter(),
            current: None,
        }))
    }

    fn list(&self, tenant: &str, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let mut files = Vec::new();
        walk_files(&self.container(tenant), &mut files)?;
        let mut out: Vec<ObjectInfo> = files
            .into_iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(name, meta)| ObjectInfo {
                name,
                size: meta.len(),
                modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn list_segmented(&self, tenant: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let base = self.segments_dir(tenant, "");
        let mut files = Vec::new();
        walk_files(&base, &mut files)?;
        let mut out: Vec<ObjectInfo> = Vec::new();
        for (seg, meta) in files {
            let Some((name, _)) = seg.rsplit_once('/') else {
                continue;
            };
            let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            match out.iter_mut().find(|o| o.name == name) {
                Some(o) => {
                    o.size += meta.len();
                    o.modified = o.modified.max(modified);
                }
                None => out.push(ObjectInfo {
                    name: name.to_string(),
                    size: meta.len(),
                    modified,
                }),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn delete(&self, tenant: &str, name: &str) -> Result<(), StoreError> {
        let container = self.container(tenant);
        let path = container.join(name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
        let segs = self.segments_dir(tenant, name);
        match fs::remove_dir_all(&segs) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&segs)(e)),
        }
        if let Some(parent) = path.parent() {
            prune_empty_parents(parent, &container);
        }
        if let Some(parent) = segs.parent() {
            prune_empty_parents(parent, &self.segments_dir(tenant, ""));
        }
        Ok(())
    }
}

struct LocalUpload {
    labels: std::collections::BTreeMap<String, String>,
    manifest_path: PathBuf,
    dir: PathBuf,
    segment_size: u64,
    current: Option<(File, PathBuf, u64)>,
    segments: Vec<SegmentRef>,
    syncer: Syncer,
}

/// Flushes full segments to disk on a thread of its own while the next one is written, so
/// the disk works while the pipeline computes (a backup of 1.2 GB waited 2.4 s on fsync
/// when each segment was flushed in turn). `finish` waits for every flush before the
/// manifest is written: the object is durable when it exists, as before.
struct Syncer {
    tx: Option<std::sync::mpsc::SyncSender<(File, PathBuf)>>,
    done: Option<std::thread::JoinHandle<Result<(), StoreError>>>,
    dir: PathBuf,
}

/// Full segments waiting for their flush; beyond that the writer waits for the disk.
const SYNCS_QUEUED: usize = 4;

impl Syncer {
    fn start(dir: PathBuf) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(File, PathBuf)>(SYNCS_QUEUED);
        let done = std::thread::spawn(move || {
            for (f, path) in rx {
                f.sync_all().map_err(io_err(&path))?;
            }
            Ok(())
        });
        Syncer {
            tx: Some(tx),
            done: Some(done),
            dir,
        }
    }

    fn sync(&mut self, f: File, path: PathBuf) -> Result<(), StoreError> {
        let sent = self.tx.as_ref().map(|tx| tx.send((f, path)));
        match sent {
            Some(Ok(())) => Ok(()),
            // The thread stopped at a failed flush: its error says which.
            _ => self.wait(),
        }
    }

    /// Waits for every flush asked for; the first failure is the error.
    fn wait(&mut self) -> Result<(), StoreError> {
        self.tx = None;
        match self.done.take().map(|t| t.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(StoreError::Io {
                path: self.dir.clone(),
                source: io::Error::other("the thread flushing segments panicked"),
            }),
            None => Ok(()),
        }
    }
}

impl LocalUpload {
    fn close_current(&mut self) -> Result<(), StoreError> {
        if let Some((f, path, size)) = self.current.take() {
            self.syncer.sync(f, path.clone())?;
            self.segments.push(SegmentRef {
                name: path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                size,
            });
        }
        Ok(())
    }
}

impl LargeUpload for LocalUpload {
    fn write(&mut self, mut buf: &[u8]) -> Result<(), StoreError> {
        while !buf.is_empty() {
            if self.current.is_none() {
                let path = self.dir.join(format!("{:08}", self.segments.len()));
                let f = File::create(&path).map_err(io_err(&path))?;
                self.current = Some((f, path, 0));
            }
            let (f, path, size) = self.current.as_mut().expect("segment just opened");
            let room = (self.segment_size - *size) as usize;
            let n = room.min(buf.len());
            f.write_all(&buf[..n]).map_err(io_err(path))?;
            *size += n as u64;
            buf = &buf[n..];
            if *size == self.segment_size {
                self.close_current()?;
            }
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<u64, StoreError> {
        self.close_current()?;
        self.syncer.wait()?;
        sync_dir(&self.dir)?;
        let size = self.segments.iter().map(|s| s.size).sum();
        let manifest = Manifest {
            couchvault_local_manifest: MANIFEST_FORMAT,
            size,
            labels: std::mem::take(&mut self.labels),
            segments: std::mem::take(&mut self.segments),
        };
        let bytes = serde_json::to_vec(&manifest).map_err(|e| StoreError::Io {
            path: self.manifest_path.clone(),
            source: io::Error::other(e),
        })?;
        write_atomic(&self.manifest_path, &bytes)?;
        Ok(size)
    }
}

struct SegmentReader {
    parts: std::vec::IntoIter<(PathBuf, u64)>,
    current: Option<File>,
}

impl Read for SegmentReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.current.is_none() {
                let Some((path, skip)) = self.parts.next() else {
                    return Ok(0);
                };
                let mut f = File::open(&path)?;
                if skip > 0 {
                    io::Seek::seek(&mut f, io::SeekFrom::Start(skip))?;
                }
                self.current = Some(f);
            }
            let n = self.current.as_mut().expect("opened above").read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            self.current = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_object_roundtrip_ranges_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().to_path_buf(), 10);
        let data: Vec<u8> = (0..95u8).collect();
        let mut up = store.create_large("t", "i/b/data", &[]).unwrap();
        up.write(&data[..33]).unwrap();
        up.write(&data[33..]).unwrap();
        assert_eq!(up.finish().unwrap(), 95);
        for offset in [0u64, 9, 10, 55, 94, 95] {
            let mut got = Vec::new();
            store
                .open_large("t", "i/b/data", offset)
                .unwrap()
                .read_to_end(&mut got)
                .unwrap();
            assert_eq!(got, &data[offset as usize..]);
        }
        assert_eq!(store.list_segmented("t").unwrap().len(), 1);
        store.put("t", "i/b/backup.json", b"{}").unwrap();
        let names: Vec<_> = store
            .list("t", "i/")
            .unwrap()
            .into_iter()
            .map(|o| o.name)
            .collect();
        assert_eq!(names, ["i/b/backup.json", "i/b/data"]);
        store.delete("t", "i/b/data").unwrap();
        store.delete("t", "i/b/data").unwrap();
        assert!(store.list_segmented("t").unwrap().is_empty());
        assert_eq!(store.tenants().unwrap(), ["t"]);
    }
}
