//! Object stores. A store holds one container per tenant; backups are written as one large
//! (segmented) data object plus a small metadata object that commits them.
//!
//! Two implementations share this trait: the local directory store (here) and OpenStack Swift.

mod local;
pub mod retry;
pub mod swift;

use std::io::Read;
use std::path::PathBuf;
use std::time::SystemTime;

pub use local::LocalStore;

/// Segments of a container's large objects live in the container named with this suffix.
const SEGMENTS_SUFFIX: &str = "_segments";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object {container}/{name} not found")]
    NotFound { container: String, name: String },
    #[error("store I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("large object {container}/{name} is damaged: {reason}")]
    Damaged {
        container: String,
        name: String,
        reason: String,
    },
    #[error(
        "unsupported store URL '{0}': use file:///absolute/path or swift://CONTAINER[/PREFIX]"
    )]
    Url(String),
    #[error("{0}")]
    Config(String),
    #[error("authentication at {url} failed: {reason}")]
    Auth { url: String, reason: String },
    #[error("cannot reach {what}: {reason}")]
    Unreachable { what: String, reason: String },
    #[error("{what} failed after {attempts} attempts in {secs} s (last: {last}); check that Swift is up and reachable, then retry")]
    Unavailable {
        what: String,
        attempts: u32,
        secs: u64,
        last: String,
    },
    #[error("{what}: Swift answered {status}: {detail}")]
    Http {
        what: String,
        status: u16,
        detail: String,
    },
}

impl StoreError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }
}

/// One object in a listing.
#[derive(Debug, Clone)]
pub struct ObjectInfo {
    pub name: String,
    pub size: u64,
    pub modified: SystemTime,
}

/// A streamed upload of one large object. The store cuts the stream into segments as it
/// sees fit (retrying a failed segment itself) and writes the manifest in `finish`.
/// Dropping it without `finish` leaves only segments, which `gc` removes.
pub trait LargeUpload: Send {
    fn write(&mut self, buf: &[u8]) -> Result<(), StoreError>;
    /// Makes the object visible; returns its size.
    fn finish(self: Box<Self>) -> Result<u64, StoreError>;
}

pub trait Store: Send + Sync {
    /// A human description, e.g. `file:///srv/backups`.
    fn describe(&self) -> String;

    /// Tenants that have a container in this store.
    fn tenants(&self) -> Result<Vec<String>, StoreError>;

    /// Writes a small object atomically (readers see the old or the new object, never a part).
    fn put(&self, tenant: &str, name: &str, bytes: &[u8]) -> Result<(), StoreError>;

    fn get(&self, tenant: &str, name: &str) -> Result<Vec<u8>, StoreError>;

    /// Starts a streamed, segmented upload of a large object. `labels` are shown to operators
    /// with the object (Swift: `X-Object-Meta-Couchvault-<key>` headers on the manifest).
    fn create_large(
        &self,
        tenant: &str,
        name: &str,
        labels: &[(&str, &str)],
    ) -> Result<Box<dyn LargeUpload>, StoreError>;

    /// Streams a large object from byte `offset` to its end.
    fn open_large(
        &self,
        tenant: &str,
        name: &str,
        offset: u64,
    ) -> Result<Box<dyn Read + Send>, StoreError>;

    /// Objects (small objects and large-object manifests) whose name starts with `prefix`.
    fn list(&self, tenant: &str, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError>;

    /// Large objects that have segments, with or without a manifest; `modified` is their
    /// newest segment. Used by `gc` to find abandoned uploads.
    fn list_segmented(&self, tenant: &str) -> Result<Vec<ObjectInfo>, StoreError>;

    /// Deletes an object and, for a large object, its segments. Deleting what is not there is
    /// not an error.
    fn delete(&self, tenant: &str, name: &str) -> Result<(), StoreError>;
}

/// Tenants named by container names `<prefix><tenant>` and `<prefix><tenant>_segments`,
/// sorted, each once.
fn tenants_of<'a>(containers: impl Iterator<Item = &'a str>, prefix: &str) -> Vec<String> {
    let mut out: Vec<String> = containers
        .filter_map(|c| c.strip_prefix(prefix))
        .map(|t| t.strip_suffix(SEGMENTS_SUFFIX).unwrap_or(t).to_string())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Opens the store named by a URL: `file:///path` or `swift://CONTAINER[/PREFIX]`.
pub fn open(
    url: &str,
    segment_size: u64,
    swift: impl FnOnce(String, String) -> Result<swift::SwiftSettings, StoreError>,
) -> Result<Box<dyn Store>, StoreError> {
    if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(StoreError::Url(url.to_string()));
        }
        return Ok(Box::new(LocalStore::new(PathBuf::from(path), segment_size)));
    }
    if url.starts_with("swift://") {
        let (base, prefix) = swift::parse_url(url)?;
        return Ok(Box::new(swift::SwiftStore::new(swift(base, prefix)?)?));
    }
    Err(StoreError::Url(url.to_string()))
}
