//! The key ring: a 0600 TOML file of named 256-bit tenant keys.
//!
//! The newest key of a tenant (the last one in the file) encrypts new backups; every key
//! of the tenant can still open the backups made with it.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::crypto::{CryptoError, SecretKey, KEY_LEN};
use crate::names::validate_name;

pub const KEYRING_FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("key ring {path} does not exist; pass --keyring with the right file, or omit --keyring and --config to use the embedded defaults")]
    Missing { path: PathBuf },
    #[error("cannot read key ring {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key ring {path} is readable or writable by group or others (mode {mode:o}); run `chmod 600 {path}`")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("key ring {path} is not a valid couchvault key ring: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("cannot write key ring {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key ring {path} has no key for tenant '{tenant}'; add one with `couchvault key add --tenant {tenant}`")]
    NoTenantKey { path: PathBuf, tenant: String },
    #[error("key ring {path} has no key '{key_id}' for tenant '{tenant}': the backup was made with a key that is not in this key ring")]
    UnknownKey {
        path: PathBuf,
        tenant: String,
        key_id: String,
    },
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyRingFile {
    couchvault_keyring: u32,
    #[serde(default)]
    keys: Vec<KeyEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    tenant: String,
    id: String,
    created: DateTime<Utc>,
    /// 64 hex digits.
    key: String,
}

#[derive(Debug, Clone)]
pub struct TenantKey {
    pub tenant: String,
    pub id: String,
    pub created: DateTime<Utc>,
    pub secret: SecretKey,
}

#[derive(Debug)]
pub struct KeyRing {
    path: PathBuf,
    keys: Vec<TenantKey>,
}

impl KeyRing {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn load(path: &Path) -> Result<KeyRing, KeyringError> {
        let read_err = |source| KeyringError::Read {
            path: path.to_path_buf(),
            source,
        };
        let meta = match fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(KeyringError::Missing {
                    path: path.to_path_buf(),
                })
            }
            Err(e) => return Err(read_err(e)),
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyringError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = fs::read_to_string(path).map_err(read_err)?;
        let invalid = |reason: String| KeyringError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let file: KeyRingFile = toml::from_str(&text).map_err(|e| invalid(e.message().into()))?;
        if file.couchvault_keyring != KEYRING_FORMAT {
            return Err(invalid(format!(
                "format {} is not supported (this couchvault reads format {KEYRING_FORMAT})",
                file.couchvault_keyring
            )));
        }
        let mut keys = Vec::with_capacity(file.keys.len());
        for e in file.keys {
            validate_name("tenant", &e.tenant).map_err(|err| invalid(err.to_string()))?;
            let bytes = hex::decode(e.key.trim())
                .ok()
                .and_then(|b| <[u8; KEY_LEN]>::try_from(b).ok())
                .ok_or_else(|| {
                    invalid(format!("key '{}' is not 64 hex digits (256 bits)", e.id))
                })?;
            if keys
                .iter()
                .any(|k: &TenantKey| k.tenant == e.tenant && k.id == e.id)
            {
                return Err(invalid(format!(
                    "key id '{}' appears twice for tenant '{}'",
                    e.id, e.tenant
                )));
            }
            keys.push(TenantKey {
                tenant: e.tenant,
                id: e.id,
                created: e.created,
                secret: SecretKey(bytes),
            });
        }
        Ok(KeyRing {
            path: path.to_path_buf(),
            keys,
        })
    }

    /// Creates a new key ring holding one random key for `tenant`. Refuses to overwrite.
    pub fn create(path: &Path, tenant: &str) -> Result<KeyRing, KeyringError> {
        let mut ring = KeyRing {
            path: path.to_path_buf(),
            keys: Vec::new(),
        };
        ring.add_key(tenant)?;
        ring.save(true)?;
        Ok(ring)
    }

    /// Adds a fresh random key for `tenant`; it becomes the tenant's active key.
    pub fn add_key(&mut self, tenant: &str) -> Result<&TenantKey, KeyringError> {
        let created = Utc::now();
        let mut suffix = [0u8; 3];
        crate::crypto::fill_random(&mut suffix)?;
        let id = format!(
            "{tenant}-{}-{}",
            created.format("%Y%m%d"),
            hex::encode(suffix)
        );
        self.keys.push(TenantKey {
            tenant: tenant.to_string(),
            id,
            created,
            secret: SecretKey::random()?,
        });
        Ok(self.keys.last().expect("just pushed"))
    }

    /// Writes the key ring atomically with mode 0600.
    pub fn save(&self, create_new: bool) -> Result<(), KeyringError> {
        let write_err = |source| KeyringError::Write {
            path: self.path.clone(),
            source,
        };
        let file = KeyRingFile {
            couchvault_keyring: KEYRING_FORMAT,
            keys: self
                .keys
                .iter()
                .map(|k| KeyEntry {
                    tenant: k.tenant.clone(),
                    id: k.id.clone(),
                    created: k.created,
                    key: hex::encode(k.secret.0),
                })
                .collect(),
        };
        let text = format!(
            "# couchvault key ring. Keep a copy somewhere safe: losing it loses every backup made with it.\n{}",
            toml::to_string(&file).map_err(|e| write_err(std::io::Error::other(e)))?
        );
        if create_new && self.path.exists() {
            return Err(write_err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "refusing to overwrite an existing key ring",
            )));
        }
        let tmp = self.path.with_extension("tmp");
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(write_err)?;
        f.write_all(text.as_bytes()).map_err(write_err)?;
        f.sync_all().map_err(write_err)?;
        fs::rename(&tmp, &self.path).map_err(write_err)?;
        Ok(())
    }

    /// Removes a key of `tenant` from the ring (the caller saves it).
    pub fn remove_key(&mut self, tenant: &str, key_id: &str) -> Result<TenantKey, KeyringError> {
        let at = self
            .keys
            .iter()
            .position(|k| k.tenant == tenant && k.id == key_id)
            .ok_or_else(|| KeyringError::UnknownKey {
                path: self.path.clone(),
                tenant: tenant.to_string(),
                key_id: key_id.to_string(),
            })?;
        Ok(self.keys.remove(at))
    }

    pub fn keys(&self) -> &[TenantKey] {
        &self.keys
    }

    /// The key that encrypts new backups of `tenant`: its newest.
    pub fn active(&self, tenant: &str) -> Result<&TenantKey, KeyringError> {
        self.keys
            .iter()
            .rev()
            .find(|k| k.tenant == tenant)
            .ok_or_else(|| KeyringError::NoTenantKey {
                path: self.path.clone(),
                tenant: tenant.to_string(),
            })
    }

    pub fn get(&self, tenant: &str, key_id: &str) -> Result<&TenantKey, KeyringError> {
        self.keys
            .iter()
            .find(|k| k.tenant == tenant && k.id == key_id)
            .ok_or_else(|| KeyringError::UnknownKey {
                path: self.path.clone(),
                tenant: tenant.to_string(),
                key_id: key_id.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_load_and_refuse_open_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        let ring = KeyRing::create(&path, "default").unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = KeyRing::load(&path).unwrap();
        assert_eq!(
            loaded.active("default").unwrap().secret,
            ring.active("default").unwrap().secret
        );
        assert!(matches!(
            loaded.active("other"),
            Err(KeyringError::NoTenantKey { .. })
        ));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            KeyRing::load(&path),
            Err(KeyringError::Permissions { .. })
        ));
        assert!(
            KeyRing::create(&path, "default").is_err(),
            "never overwrites"
        );
    }
}
