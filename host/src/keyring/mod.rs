//! The key ring: a 0600 TOML file of named 256-bit tenant keys, each held in the file or
//! in OpenStack Barbican ([`barbican`]).
//!
//! The newest key of a tenant (the last one in the file) encrypts new backups; every key
//! of the tenant can still open the backups made with it.

pub mod barbican;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::crypto::{CryptoError, SecretKey, KEY_LEN};
use crate::names::validate_name;
use barbican::{Barbican, BarbicanError};

/// Format 2 adds entries held in Barbican; a ring without any is still written as 1, so
/// older couchvaults read it.
pub const KEYRING_FORMAT: u32 = 2;

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
    #[error(transparent)]
    Barbican(#[from] BarbicanError),
    #[error("key {key_id} was retired from the key ring while this backup ran; nothing was committed: run the backup again")]
    Retired { key_id: String },
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
    /// 64 hex digits; or, instead:
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    /// The UUID of the Barbican secret holding the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    barbican: Option<String>,
}

#[derive(Debug, Clone)]
pub struct TenantKey {
    pub tenant: String,
    pub id: String,
    pub created: DateTime<Utc>,
    /// The Barbican secret holding the key; `None` for a key held in the file.
    pub barbican: Option<String>,
    /// The key bytes: read from the file, or fetched from Barbican when first needed (a
    /// failed fetch is remembered too: one try per key per job, not per backup).
    secret: OnceLock<Result<SecretKey, BarbicanError>>,
}

/// A held flock on the key ring's lock file; dropping it unlocks.
#[derive(Debug)]
pub struct RingLock(#[allow(dead_code)] Flock<fs::File>);

/// A key with its bytes at hand.
#[derive(Debug, Clone, Copy)]
pub struct Unlocked<'a> {
    pub id: &'a str,
    pub secret: &'a SecretKey,
}

#[derive(Debug)]
pub struct KeyRing {
    path: PathBuf,
    keys: Vec<TenantKey>,
    barbican: Option<Arc<Barbican>>,
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
        if !(1..=KEYRING_FORMAT).contains(&file.couchvault_keyring) {
            return Err(invalid(format!(
                "format {} is not supported (this couchvault reads format {KEYRING_FORMAT})",
                file.couchvault_keyring
            )));
        }
        let mut keys = Vec::with_capacity(file.keys.len());
        for e in file.keys {
            validate_name("tenant", &e.tenant).map_err(|err| invalid(err.to_string()))?;
            let secret = OnceLock::new();
            match (&e.key, &e.barbican) {
                (Some(hex_key), None) => {
                    let bytes = hex::decode(hex_key.trim())
                        .ok()
                        .and_then(|b| <[u8; KEY_LEN]>::try_from(b).ok())
                        .ok_or_else(|| {
                            invalid(format!("key '{}' is not 64 hex digits (256 bits)", e.id))
                        })?;
                    let _ = secret.set(Ok(SecretKey(bytes)));
                }
                (None, Some(uuid)) => {
                    barbican::check_uuid(uuid).map_err(|err| invalid(err.to_string()))?
                }
                _ => {
                    return Err(invalid(format!(
                    "key '{}' needs exactly one of key (64 hex digits) or barbican (a secret UUID)",
                    e.id
                )))
                }
            }
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
                barbican: e.barbican,
                secret,
            });
        }
        Ok(KeyRing {
            path: path.to_path_buf(),
            keys,
            barbican: None,
        })
    }

    /// The Barbican client that fetches (and, for [`KeyRing::add_key`], stores) the keys
    /// held there.
    pub fn with_barbican(mut self, barbican: Arc<Barbican>) -> KeyRing {
        self.barbican = Some(barbican);
        self
    }

    /// Creates a new key ring holding one random key for `tenant`. Refuses to overwrite.
    pub fn create(path: &Path, tenant: &str) -> Result<KeyRing, KeyringError> {
        KeyRing::create_with(path, tenant, None)
    }

    /// [`KeyRing::create`], with the key held in Barbican when `barbican` is given.
    pub fn create_with(
        path: &Path,
        tenant: &str,
        barbican: Option<Arc<Barbican>>,
    ) -> Result<KeyRing, KeyringError> {
        let in_barbican = barbican.is_some();
        let mut ring = KeyRing {
            path: path.to_path_buf(),
            keys: Vec::new(),
            barbican,
        };
        let _lock = ring.lock(FlockArg::LockExclusive)?;
        ring.add_key(tenant, in_barbican)?;
        ring.save(true)?;
        Ok(ring)
    }

    /// Locks the ring for a change (an flock on `<ring>.lock`, against other processes
    /// and threads) and reloads it from disk, so that no other writer's key is lost. Keys
    /// already unlocked stay unlocked. The change is made while the lock is held.
    pub fn lock_for_change(&mut self) -> Result<RingLock, KeyringError> {
        let lock = self.lock(FlockArg::LockExclusive)?;
        let mut fresh = KeyRing::load(&self.path)?.keys;
        for k in &mut fresh {
            let had = self
                .keys
                .iter_mut()
                .find(|o| o.tenant == k.tenant && o.id == k.id);
            if let Some(old) = had {
                k.secret = std::mem::take(&mut old.secret);
            }
        }
        self.keys = fresh;
        Ok(lock)
    }

    /// A shared lock under which key `key_id` of `tenant` is still in the ring file: a
    /// backup commits under it, so a key is never retired between the check and the commit.
    pub fn hold_key(&self, tenant: &str, key_id: &str) -> Result<RingLock, KeyringError> {
        let lock = self.lock(FlockArg::LockShared)?;
        KeyRing::load(&self.path)?
            .get(tenant, key_id)
            .map_err(|_| KeyringError::Retired {
                key_id: key_id.to_string(),
            })?;
        Ok(lock)
    }

    fn lock(&self, how: FlockArg) -> Result<RingLock, KeyringError> {
        let lock_path = self.path.with_extension("lock");
        let err = |source| KeyringError::Write {
            path: lock_path.clone(),
            source,
        };
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(err)?;
        let held = Flock::lock(file, how).map_err(|(_, e)| err(e.into()))?;
        Ok(RingLock(held))
    }

    /// Adds a fresh random key for `tenant` (the caller holds [`KeyRing::lock_for_change`]
    /// and saves); it becomes the tenant's active key. With `in_barbican`, the key is
    /// stored as a new Barbican secret and the ring records only the secret's UUID.
    pub fn add_key(&mut self, tenant: &str, in_barbican: bool) -> Result<&TenantKey, KeyringError> {
        let created = Utc::now();
        let mut suffix = [0u8; 3];
        crate::crypto::fill_random(&mut suffix)?;
        let id = format!(
            "{tenant}-{}-{}",
            created.format("%Y%m%d"),
            hex::encode(suffix)
        );
        let key = SecretKey::random()?;
        let barbican = match in_barbican {
            false => None,
            true => {
                let client = self.barbican_client(&id)?;
                Some(client.store_key(&id, &format!("couchvault {id}"), &key)?)
            }
        };
        self.keys.push(TenantKey {
            tenant: tenant.to_string(),
            id,
            created,
            barbican,
            secret: OnceLock::from(Ok(key)),
        });
        Ok(self.keys.last().expect("just pushed"))
    }

    /// `key` with its bytes: from the file, or fetched from Barbican once per key ring.
    pub fn unlock<'k>(&self, key: &'k TenantKey) -> Result<Unlocked<'k>, KeyringError> {
        let secret = key.secret.get_or_init(|| {
            let uuid = key.barbican.as_deref().unwrap_or_default();
            let fetched = self.barbican_client(&key.id)?.fetch_key(&key.id, uuid);
            if fetched.is_ok() {
                tracing::debug!(key = %key.id, "fetched the key from Barbican");
            }
            fetched
        });
        match secret {
            Ok(secret) => Ok(Unlocked {
                id: &key.id,
                secret,
            }),
            Err(e) => Err(e.clone().into()),
        }
    }

    fn barbican_client(&self, key_id: &str) -> Result<&Barbican, BarbicanError> {
        self.barbican
            .as_deref()
            .ok_or_else(|| BarbicanError::NotConfigured {
                key_id: key_id.to_string(),
                missing: "client".into(),
            })
    }

    /// Writes the key ring atomically with mode 0600.
    pub fn save(&self, create_new: bool) -> Result<(), KeyringError> {
        let write_err = |source| KeyringError::Write {
            path: self.path.clone(),
            source,
        };
        let in_barbican = self.keys.iter().any(|k| k.barbican.is_some());
        let file = KeyRingFile {
            couchvault_keyring: if in_barbican { KEYRING_FORMAT } else { 1 },
            keys: self
                .keys
                .iter()
                .map(|k| KeyEntry {
                    tenant: k.tenant.clone(),
                    id: k.id.clone(),
                    created: k.created,
                    key: match &k.barbican {
                        None => match k.secret.get() {
                            Some(Ok(s)) => Some(hex::encode(s.0)),
                            _ => None,
                        },
                        Some(_) => None,
                    },
                    barbican: k.barbican.clone(),
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

    /// Removes a key of `tenant` from the ring (the caller holds
    /// [`KeyRing::lock_for_change`] and saves).
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
        let secret = |r: &KeyRing| {
            r.unlock(r.active("default").unwrap())
                .unwrap()
                .secret
                .clone()
        };
        assert_eq!(secret(&loaded), secret(&ring));
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
