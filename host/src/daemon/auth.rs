//! Bearer tokens: random secrets shown once, stored as their SHA-256.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use chrono::Utc;
use ring::digest::{digest, SHA256};
use ring::rand::{SecureRandom, SystemRandom};

use super::db::{Db, DbError, TokenRecord, DB_FORMAT};

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
fn generate() -> Result<String, String> {
    let mut b = [0u8; 32];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| "the system random source failed".to_string())?;
    Ok(format!("cv_{}", hex::encode(b)))
}

/// Creates a token for a tenant (or the admin token with None); returns the secret, which
/// is not stored anywhere.
pub fn create(db: &Db, tenant: Option<&str>, label: &str) -> Result<(String, TokenRecord), String> {
    let token = generate()?;
    let h = hash(&token);
    let rec = TokenRecord {
        couchvault_token: DB_FORMAT,
        id: h[..12].to_string(),
        tenant: tenant.map(str::to_string),
        label: label.to_string(),
        created_at: Utc::now(),
    };
    db.put_token(&h, &rec).map_err(|e| e.to_string())?;
    Ok((token, rec))
}

pub fn check(db: &Db, token: &str) -> Result<Option<Principal>, DbError> {
    Ok(db.token(&hash(token))?.map(|r| match r.tenant {
        None => Principal::Admin,
        Some(t) => Principal::Tenant(t),
    }))
}

/// On the embedded defaults: makes sure an admin token exists and that `file` (0600) holds
/// it, so a local user needs no set-up. A file whose token is no longer valid is replaced.
pub fn ensure_admin_file(db: &Db, file: &Path) -> Result<(), String> {
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
    write().map_err(|e| format!("writing {}: {e}", file.display()))?;
    db.flush_blocking().map_err(|e| e.to_string())
}
