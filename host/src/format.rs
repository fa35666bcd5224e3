//! Archive format: the data stream header (stream version 1) and the metadata document
//! (version 2: incremental and differential backups; version 1 is still read). docs/FORMAT.md
//! is the normative description; this module is its implementation.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::crypto::{self, SecretKey, WrappedKey, NONCE_PREFIX_LEN};

/// The metadata document's version written now; every version from 1 up to it is read.
pub const FORMAT_VERSION: u16 = 2;
/// The data stream's version (its header and framing did not change with metadata v2).
pub const STREAM_VERSION: u16 = 1;
/// Bytes at the end of a file whose SHA-256 every v2 entry records: CouchDB writes its
/// header into the last 4 KiB blocks, so a fast incremental checks these.
pub const END_CHECK_LEN: u64 = 64 << 10;
pub const MAGIC: &[u8; 8] = b"CVAULT\x00\x01";
pub const HEADER_LEN: usize = 40;
pub const SUITE_AES256GCM_STREAM: u8 = 1;
pub const COMPRESSION_ZSTD: u8 = 1;
pub const SUITE_NAME: &str = "AES-256-GCM-STREAM";
pub const METADATA_ENVELOPE: u32 = 1;

/// Object names inside a tenant's container.
pub fn data_object(instance: &str, id: &str) -> String {
    format!("{instance}/{id}/data")
}
pub fn metadata_object(instance: &str, id: &str) -> String {
    format!("{instance}/{id}/backup.json")
}

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("the data stream is not a couchvault archive (bad magic); is this the right object?")]
    Magic,
    #[error("archive format version {0} is not supported by this couchvault (it reads versions 1 to {FORMAT_VERSION}); upgrade couchvault")]
    Version(u16),
    #[error("the data stream header is damaged: {0}")]
    Header(String),
    #[error("the metadata document is not valid: {0}")]
    Metadata(String),
    #[error("the metadata MAC does not match: the metadata was altered, or the tenant key is not the one it was made with")]
    Mac,
}

/// The fixed 40-byte header at the start of every data stream; it is also the AAD of every chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataHeader {
    pub chunk_size: u32,
    pub nonce_prefix: [u8; NONCE_PREFIX_LEN],
    pub backup_id: [u8; 16],
}

impl DataHeader {
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(MAGIC);
        b[8..10].copy_from_slice(&STREAM_VERSION.to_be_bytes());
        b[10] = SUITE_AES256GCM_STREAM;
        b[11] = COMPRESSION_ZSTD;
        b[12..16].copy_from_slice(&self.chunk_size.to_be_bytes());
        b[16..23].copy_from_slice(&self.nonce_prefix);
        // b[23] reserved, zero
        b[24..40].copy_from_slice(&self.backup_id);
        b
    }

    pub fn parse(b: &[u8; HEADER_LEN]) -> Result<Self, FormatError> {
        if &b[0..8] != MAGIC {
            return Err(FormatError::Magic);
        }
        let version = u16::from_be_bytes([b[8], b[9]]);
        if version != STREAM_VERSION {
            return Err(FormatError::Version(version));
        }
        if b[10] != SUITE_AES256GCM_STREAM {
            return Err(FormatError::Header(format!(
                "unknown cipher suite {}",
                b[10]
            )));
        }
        if b[11] != COMPRESSION_ZSTD {
            return Err(FormatError::Header(format!(
                "unknown compression {}",
                b[11]
            )));
        }
        if b[23] != 0 {
            return Err(FormatError::Header("reserved byte is not zero".into()));
        }
        let chunk_size = u32::from_be_bytes([b[12], b[13], b[14], b[15]]);
        if !(MIN_CHUNK..=MAX_CHUNK).contains(&chunk_size) {
            return Err(FormatError::Header(format!(
                "chunk size {chunk_size} is out of range"
            )));
        }
        let mut nonce_prefix = [0u8; NONCE_PREFIX_LEN];
        nonce_prefix.copy_from_slice(&b[16..23]);
        let mut backup_id = [0u8; 16];
        backup_id.copy_from_slice(&b[24..40]);
        Ok(DataHeader {
            chunk_size,
            nonce_prefix,
            backup_id,
        })
    }
}

pub const MIN_CHUNK: u32 = 4096;
pub const MAX_CHUNK: u32 = 16 << 20;

/// Everything known about one committed backup. Serialized as JSON inside the MAC envelope.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupMetadata {
    pub format: u16,
    pub tool: String,
    pub backup_id: String,
    pub tenant: String,
    pub instance: String,
    pub kind: Kind,
    /// The backup this one is stored against (incremental and differential only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentRef>,
    /// How unchanged prefixes were checked (incremental and differential only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_check: Option<PrefixCheck>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub source: SourceInfo,
    pub tags: BTreeMap<String, String>,
    pub compression: CompressionInfo,
    pub encryption: EncryptionInfo,
    pub data: DataInfo,
    pub totals: Totals,
    /// Every file as it is at this backup, however it was stored.
    pub files: Vec<FileEntry>,
    /// Files the parent had that this backup does not (a restore does not bring them back).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gone: Vec<String>,
    /// Files listed at the start that were gone when their turn came (e.g. a deleted database).
    #[serde(default)]
    pub vanished: Vec<String>,
    /// Shard files (or the shard map) missing by the shard map, backed up anyway with
    /// `--allow-incomplete`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub incomplete: Vec<String>,
    /// What CouchDB answered over HTTP at backup start (version, node, per-database counts
    /// and security), when a CouchDB URL was configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub couchdb: Option<LiveInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceInfo {
    pub hostname: Option<String>,
    pub node_name: Option<String>,
    /// Every node the shard maps in `_dbs.couch` name (a cluster member's map names all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shard_map_nodes: Vec<String>,
    pub database_dir: String,
    pub view_index_dir: Option<String>,
    pub config_dir: Option<String>,
    pub ini_files: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompressionInfo {
    pub algorithm: String,
    pub level: i32,
    /// Tar bytes per independent zstd frame, each declaring its content size: a restore
    /// decompresses such frames on several threads. None: one frame for the whole stream
    /// (backups before 2026-12-02), decompressed as a stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_size: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EncryptionInfo {
    pub suite: String,
    pub chunk_size: u32,
    pub key_id: String,
    pub wrapped_key_nonce: String,
    pub wrapped_key: String,
}

impl EncryptionInfo {
    pub fn wrapped(&self) -> Result<WrappedKey, FormatError> {
        let nonce = hex::decode(&self.wrapped_key_nonce)
            .ok()
            .and_then(|n| <[u8; 12]>::try_from(n).ok())
            .ok_or_else(|| {
                FormatError::Metadata("wrapped_key_nonce is not 24 hex digits".into())
            })?;
        let ciphertext = hex::decode(&self.wrapped_key)
            .map_err(|_| FormatError::Metadata("wrapped_key is not hex".into()))?;
        Ok(WrappedKey { nonce, ciphertext })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataInfo {
    pub object: String,
    /// Bytes of the stored data stream (header + frames).
    pub size: u64,
    /// SHA-256 of the stored data stream.
    pub sha256: String,
    /// Bytes of the tar stream before compression.
    pub tar_size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Totals {
    pub files: u64,
    /// Bytes of the files as they are at this backup.
    pub bytes: u64,
    /// Bytes of file content this backup's own archive holds (all of `bytes` for a full).
    #[serde(default)]
    pub stored_bytes: u64,
}

/// Full, incremental (against the instance's previous backup) or differential (against
/// its last full).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    #[default]
    Full,
    Incremental,
    Differential,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Full => "full",
            Kind::Incremental => "incremental",
            Kind::Differential => "differential",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an incremental decides that a file's recorded prefix is unchanged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PrefixCheck {
    /// Read and hash the whole file; compare with the parent's whole-file SHA-256.
    #[default]
    Exact,
    /// Identity, size and the SHA-256 of the last `END_CHECK_LEN` bytes before the parent's end.
    Fast,
}

impl std::fmt::Display for PrefixCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PrefixCheck::Exact => "exact",
            PrefixCheck::Fast => "fast",
        })
    }
}

/// The parent of an incremental or differential backup: its id and the MAC of its sealed
/// metadata, so that a chain cannot be spliced with another backup of the same id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentRef {
    pub backup_id: String,
    /// `hmac-sha256:<hex>` exactly as in the parent's envelope.
    pub metadata_mac: String,
    /// The parent's `data.sha256`: what still binds the child to it once the parent's
    /// metadata is sealed anew (a key rotation rewraps metadata and never touches data).
    pub data_sha256: String,
}

impl ParentRef {
    /// Whether `parent`, authenticated, with its envelope's `mac`, is the backup this one
    /// was made against: the very metadata, or the same backup's data re-sealed.
    pub fn matches(&self, parent: &BackupMetadata, mac: &str) -> bool {
        parent.backup_id == self.backup_id
            && (mac == self.metadata_mac || parent.data.sha256 == self.data_sha256)
    }
}

/// What of a file this backup's archive holds.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "how", rename_all = "snake_case")]
pub enum Stored {
    /// The whole file (every file of a full backup; metadata v1 knows nothing else).
    #[default]
    Whole,
    /// Bytes `from..size`; the first `from` bytes are the parent's copy of the file.
    Tail {
        from: u64,
        /// SHA-256 of the stored bytes.
        sha256: String,
    },
    /// Nothing: the file is exactly the parent's copy.
    Unchanged,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path inside the archive: `data/…`, `views/…` or `etc/…`.
    pub path: String,
    pub size: u64,
    pub mode: u32,
    pub mtime: i64,
    /// SHA-256 of the whole file at this backup; None only where a fast incremental stored
    /// a tail without reading the prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "is_whole")]
    pub stored: Stored,
    /// Why a file the parent had was stored whole (replaced, shrunk, prefix changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Device and inode when it was read: an appended file keeps both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
    /// SHA-256 of the last `END_CHECK_LEN` bytes (or the whole file, when shorter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_sha256: Option<String>,
}

fn is_whole(s: &Stored) -> bool {
    *s == Stored::Whole
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub dev: u64,
    pub ino: u64,
}

impl FileEntry {
    /// The bytes of this file that its backup's archive holds, and where they start.
    pub fn piece(&self) -> Option<(u64, u64)> {
        match self.stored {
            Stored::Whole => Some((0, self.size)),
            Stored::Tail { from, .. } => Some((from, self.size - from.min(self.size))),
            Stored::Unchanged => None,
        }
    }

    /// The SHA-256 the stored piece must have.
    pub fn piece_sha256(&self) -> Option<&str> {
        match &self.stored {
            Stored::Whole => self.sha256.as_deref(),
            Stored::Tail { sha256, .. } => Some(sha256),
            Stored::Unchanged => None,
        }
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    couchvault_metadata: u32,
    mac: String,
    #[serde(borrow)]
    document: &'a RawValue,
}

/// Serializes the metadata object: `{"couchvault_metadata":1,"mac":"hmac-sha256:<hex>","document":{…}}`.
/// The MAC covers the exact bytes of the document member.
pub fn seal_metadata(meta: &BackupMetadata, tenant_key: &SecretKey) -> Vec<u8> {
    let doc = serde_json::to_string(meta).expect("metadata serializes");
    let mac = crypto::metadata_mac(tenant_key, doc.as_bytes());
    format!(
        "{{\"couchvault_metadata\":{METADATA_ENVELOPE},\"mac\":\"{}\",\"document\":{doc}}}\n",
        mac_label(&mac)
    )
    .into_bytes()
}

/// A metadata object whose envelope was read but whose document is not yet authenticated:
/// only the key id that made its MAC is read from it before the MAC verifies.
pub struct UnverifiedMetadata {
    pub key_id: String,
    document: String,
    mac: Vec<u8>,
}

/// The MAC of a sealed metadata object as a child records it (`hmac-sha256:<hex>`).
pub fn mac_label(mac: &[u8]) -> String {
    format!("hmac-sha256:{}", hex::encode(mac))
}

/// The MAC bytes of a `hmac-sha256:<hex>` label; None when it is not one.
pub fn parse_mac_label(label: &str) -> Option<Vec<u8>> {
    label
        .strip_prefix("hmac-sha256:")
        .and_then(|h| hex::decode(h).ok())
}

/// What is read of a document before its MAC is checked.
#[derive(Deserialize)]
struct KeyOf {
    encryption: KeyIdOf,
}
#[derive(Deserialize)]
struct KeyIdOf {
    key_id: String,
}

impl UnverifiedMetadata {
    pub fn parse(bytes: &[u8]) -> Result<Self, FormatError> {
        let env: Envelope<'_> =
            serde_json::from_slice(bytes).map_err(|e| FormatError::Metadata(e.to_string()))?;
        if env.couchvault_metadata != METADATA_ENVELOPE {
            return Err(FormatError::Metadata(format!(
                "envelope version {} is not supported; upgrade couchvault",
                env.couchvault_metadata
            )));
        }
        let mac = parse_mac_label(&env.mac)
            .ok_or_else(|| FormatError::Metadata("mac is not hmac-sha256:<hex>".into()))?;
        let key: KeyOf = serde_json::from_str(env.document.get())
            .map_err(|e| FormatError::Metadata(e.to_string()))?;
        Ok(UnverifiedMetadata {
            key_id: key.encryption.key_id,
            document: env.document.get().to_string(),
            mac,
        })
    }

    /// Authenticates the document, then reads it; returns it with its MAC as a child would
    /// record it.
    pub fn verify(self, tenant_key: &SecretKey) -> Result<(BackupMetadata, String), FormatError> {
        if !crypto::metadata_mac_verify(tenant_key, self.document.as_bytes(), &self.mac) {
            return Err(FormatError::Mac);
        }
        let meta: BackupMetadata = serde_json::from_str(&self.document)
            .map_err(|e| FormatError::Metadata(e.to_string()))?;
        if !(1..=FORMAT_VERSION).contains(&meta.format) {
            return Err(FormatError::Version(meta.format));
        }
        Ok((meta, mac_label(&self.mac)))
    }
}

/// Per-database counts recorded at backup start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DbStats {
    pub doc_count: u64,
    pub doc_del_count: u64,
    /// Opaque (a string in CouchDB 3, an integer in PouchDB Server).
    pub update_seq: serde_json::Value,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub security: serde_json::Value,
}

/// What CouchDB said over HTTP when the backup started (recorded in the metadata).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LiveInfo {
    pub reachable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default)]
    pub databases: BTreeMap<String, DbStats>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip() {
        let h = DataHeader {
            chunk_size: 1 << 20,
            nonce_prefix: [1, 2, 3, 4, 5, 6, 7],
            backup_id: [9; 16],
        };
        assert_eq!(DataHeader::parse(&h.to_bytes()).unwrap(), h);
        let mut b = h.to_bytes();
        b[9] = 2;
        assert!(matches!(
            DataHeader::parse(&b),
            Err(FormatError::Version(2))
        ));
        b = h.to_bytes();
        b[0] = b'X';
        assert!(matches!(DataHeader::parse(&b), Err(FormatError::Magic)));
    }
}
