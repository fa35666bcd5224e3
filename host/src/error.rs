//! The library's error type: one variant per thing that can go wrong, each worded so the
//! user knows what failed and what to do.

use std::path::PathBuf;

use crate::couchdb::SourceError;
use crate::crypto::CryptoError;
use crate::format::FormatError;
use crate::keyring::KeyringError;
use crate::names::NameError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Tag(#[from] crate::names::TagError),
    #[error(transparent)]
    Chain(#[from] crate::catalog::ChainError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("no space left on device while {context}; free space on that filesystem or restore elsewhere (the target was not touched)")]
    NoSpace { context: String },
    #[error("not enough space for the restore: {needed} bytes needed in {path}, {available} available; free space or restore elsewhere (the target was not touched)")]
    InsufficientSpace {
        path: PathBuf,
        needed: u64,
        available: u64,
    },
    #[error("{path} shrank from {expected} to {got} bytes while it was copied; CouchDB files only grow, so something else is rewriting this directory")]
    Shrank {
        path: PathBuf,
        expected: u64,
        got: u64,
    },
    #[error("backup {id} does not match its data: {reason}")]
    Mismatch { id: String, reason: String },
    #[error("refusing archive entry '{path}': {reason}; the backup is hostile or damaged (nothing was written outside the staging directory)")]
    Hostile { path: String, reason: String },
    #[error("restore target {path} is not empty; pass --force to move its contents aside and replace them")]
    TargetNotEmpty { path: PathBuf },
    #[error("no backup '{id}' for tenant '{tenant}' (see `couchvault backup list`)")]
    NotFound { tenant: String, id: String },
    #[error("the backup pipeline stopped before the end of the stream")]
    PipelineAborted,
    #[error(
        "{reason}; the restored data was verified but not swapped in (the target is as it was)"
    )]
    Hook { reason: String },
    #[error("cancelled; nothing was committed or swapped in")]
    Cancelled,
    #[error("the parent backup {parent} was deleted while this incremental ran, so nothing was committed; run the backup again (it will be a full one)")]
    ParentGone { parent: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with what was being done, recognising a full disk.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        let context = context.into();
        if source.raw_os_error() == Some(nix::libc::ENOSPC) {
            Error::NoSpace { context }
        } else {
            Error::Io { context, source }
        }
    }
}
