//! Bearer tokens: random secrets shown once, stored as their SHA-256.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use chrono::Utc;
use ring::digest::{digest, SHA256};
use ring::rand::{SecureRandom, SystemRandom};

use super::db::{Db, DbError, TokenRecord, DB_FORMAT};
use crate::wire::TokenInfo;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the system random source failed; no token was made")]
    Random,
    #[error("writing {path}: {source}")]
    Write {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Admin,
    Tenant(String),
}

pub fn hash(token: &str) -> String {
    hex::encode(digest(&SHA256, token.as_bytes()))
}

/// A new random token: `cv_` and 64 hex digits.
fn generate() -> Result<String, AuthError> {
    let mut b = [0u8; 32];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| AuthError::Random)?;
    Ok(format!("cv_{}", hex::encode(b)))
}

/// Creates a token for a tenant (or the admin token with None); returns the secret, which
/// is not stored anywhere.
pub fn create(
    db: &Db,
    tenant: Option<&str>,
    label: &str,
) -> Result<(String, TokenRecord), AuthError> {
    let token = generate()?;
    let h = hash(&token);
    let rec = TokenRecord {
        couchvault_token: DB_FORMAT,
        info: TokenInfo {
            id: h[..12].to_string(),
            tenant: tenant.map(str::to_string),
            label: label.to_string(),
            created_at: Utc::now(),
        },
    };
    db.put_token(&h, &rec)?;
    Ok((token, rec))
}

pub fn check(db: &Db, token: &str) -> Result<Option<Principal>, DbError> {
    Ok(db.token(&hash(token))?.map(|r| match r.info.tenant {
        None => Principal::Admin,
        Some(t) => Principal::Tenant(t),
    }))
}

/// On the embedded defaults: makes sure an admin token exists and that `file` (0600) holds
/// it, so a local user needs no set-up. A file whose token is no longer valid is replaced.
pub fn ensure_admin_file(db: &Db, file: &Path) -> Result<(), AuthError> {
    if let Ok(existing) = std::fs::read_to_string(file) {
        if let Ok(Some(Principal::Admin)) = check(db, existing.trim()) {
            return Ok(());
        }
    }
    let (token, _) = create(db, None, "admin (written to admin.token)")?;
    let tmp = file.with_extension("token.tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        writeln!(f, "{token}")?;
        f.sync_all()?;
        std::fs::rename(&tmp, file)
    };
    write().map_err(|source| AuthError::Write {
        path: file.to_path_buf(),
        source,
    })?;
    Ok(db.flush_blocking()?)
}
