//! Instances: the CouchDB nodes that tenants' backups, schedules and restores name.
//!
//! Only the admin registers an instance (API, CLI or `instances/*.toml`); a tenant names
//! one of its own and never a path. Registration resolves the source once and records the
//! directories it resolved to: every later backup of the instance may read only inside
//! them (`couchdb::confine`), whatever its ini files or symbolic links say by then.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::db::{Db, DbError};
use super::files::{check_version, parse_toml, toml_files, FileError};
use crate::config::{Config, CouchDbConfig};
use crate::couchdb::confine::Confinement;
use crate::couchdb::{Source, SourceError};

pub use crate::wire::{
    Instance, InstanceApplyReport as ApplyReport, InstanceSpec, INSTANCE_FORMAT,
};

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("{0}")]
    Invalid(String),
    #[error("no instance '{name}' is registered for tenant '{tenant}' (the admin registers instances: `couchvault instance add`)")]
    NotFound { tenant: String, name: String },
    #[error("instance '{name}': a registered directory is gone: {source}")]
    Gone { name: String, source: SourceError },
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl InstanceSpec {
    /// Checks every field against the config; the error says which and why.
    fn check(&self, config: &Config) -> Result<(), InstanceError> {
        let invalid = |m: String| Err(InstanceError::Invalid(m));
        crate::names::validate_name("instance", &self.name)
            .map_err(|e| InstanceError::Invalid(e.to_string()))?;
        crate::names::validate_name("tenant", &self.tenant)
            .map_err(|e| InstanceError::Invalid(e.to_string()))?;
        self.source
            .check_paths()
            .map_err(|e| InstanceError::Invalid(e.to_string()))?;
        if let Some(u) = &self.couchdb_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) || u.contains('@') {
                return invalid(format!(
                    "couchdb_url '{u}' must be http(s)://HOST:PORT without credentials (name them with couchdb_credentials)"
                ));
            }
        }
        if let Some(c) = &self.couchdb_credentials {
            if !config.couchdb.credentials.contains_key(c) {
                return invalid(format!(
                    "couchdb_credentials '{c}': no [couchdb.credentials.{c}] in the daemon's config"
                ));
            }
            if self.couchdb_url.is_none() {
                return invalid("couchdb_credentials needs couchdb_url".into());
            }
        }
        Ok(())
    }
}

impl Instance {
    /// Resolves the source now and records where it is: what confines its backups.
    fn register(
        spec: InstanceSpec,
        config: &Config,
        now: DateTime<Utc>,
    ) -> Result<Instance, InstanceError> {
        spec.check(config)?;
        let src = Source::discover(&spec.source).map_err(|e| {
            InstanceError::Invalid(format!(
                "instance '{}': {e} (an instance is registered where its data is)",
                spec.name
            ))
        })?;
        let mut roots = vec![src.database_dir.clone()];
        roots.extend(src.view_index_dir.clone());
        if let Some(c) = &src.config_dir {
            roots.push(std::fs::canonicalize(c).map_err(|source| SourceError::Io {
                path: c.clone(),
                source,
            })?);
        }
        Ok(Instance {
            couchvault_instance: INSTANCE_FORMAT,
            spec,
            roots,
            database_dir: src.database_dir,
            view_index_dir_resolved: src.view_index_dir,
            created_at: now,
            updated_at: now,
        })
    }

    /// The source of a backup, confined to the registered directories.
    pub fn source(&self) -> Result<Source, InstanceError> {
        let confine = Confinement::new(&self.roots).map_err(|source| InstanceError::Gone {
            name: self.spec.name.clone(),
            source,
        })?;
        Ok(Source::discover_confined(&self.spec.source, confine)?)
    }

    /// How to reach its CouchDB: its URL with the credentials its entry names, never the
    /// config's or the environment's.
    pub fn couchdb(&self, config: &Config) -> CouchDbConfig {
        let creds = self
            .spec
            .couchdb_credentials
            .as_ref()
            .and_then(|c| config.couchdb.credentials.get(c));
        CouchDbConfig {
            url: self.spec.couchdb_url.clone(),
            user: creds.and_then(|c| c.user.clone()),
            password: creds.and_then(|c| c.password.clone()),
            credentials: BTreeMap::new(),
        }
    }
}

fn key(tenant: &str, name: &str) -> Vec<u8> {
    format!("{tenant}/{name}").into_bytes()
}

pub fn get(db: &Db, tenant: &str, name: &str) -> Result<Option<Instance>, DbError> {
    db.get(&db.instances, "instances", &key(tenant, name))
}

/// A tenant's instance, or NotFound with what to do.
pub fn require(db: &Db, tenant: &str, name: &str) -> Result<Instance, InstanceError> {
    get(db, tenant, name)?.ok_or_else(|| InstanceError::NotFound {
        tenant: tenant.into(),
        name: name.into(),
    })
}

/// Every instance, or one tenant's.
pub fn list(db: &Db, tenant: Option<&str>) -> Result<Vec<Instance>, DbError> {
    let prefix = tenant.map(|t| format!("{t}/")).unwrap_or_default();
    db.all(&db.instances, "instances", prefix.as_bytes())
}

/// Registers (or re-registers, resolving the source again) an instance.
pub fn put(db: &Db, config: &Config, spec: InstanceSpec) -> Result<Instance, InstanceError> {
    let inst = Instance::register(spec, config, Utc::now())?;
    store(db, inst)
}

/// Stores a registered instance, keeping the creation time of the one it replaces.
fn store(db: &Db, mut inst: Instance) -> Result<Instance, InstanceError> {
    if let Some(old) = get(db, &inst.spec.tenant, &inst.spec.name)? {
        inst.created_at = old.created_at;
    }
    db.put(
        &db.instances,
        &key(&inst.spec.tenant, &inst.spec.name),
        &inst,
    )?;
    Ok(inst)
}

pub fn remove(db: &Db, tenant: &str, name: &str) -> Result<bool, DbError> {
    Ok(db.instances.remove(key(tenant, name))?.is_some())
}

/// Registers every spec, checking all first: one bad entry applies nothing.
pub fn apply(
    db: &Db,
    config: &Config,
    specs: Vec<(String, InstanceSpec)>,
) -> Result<ApplyReport, InstanceError> {
    // Resolve every entry first (once): one bad entry registers nothing.
    let now = Utc::now();
    let registered = specs
        .into_iter()
        .map(|(file, spec)| {
            Instance::register(spec, config, now)
                .map_err(|e| InstanceError::Invalid(format!("{file}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut report = ApplyReport::default();
    for inst in registered {
        let label = format!("{}/{}", inst.spec.tenant, inst.spec.name);
        match get(db, &inst.spec.tenant, &inst.spec.name)? {
            Some(old) if old.spec == inst.spec => report.unchanged.push(label),
            _ => {
                store(db, inst)?;
                report.registered.push(label);
            }
        }
    }
    Ok(report)
}

/// An instance file: `couchvault_instances = 1` and one or more `[[instance]]` tables.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InstanceFile {
    couchvault_instances: u32,
    #[serde(default)]
    instance: Vec<InstanceSpec>,
}

/// Reads every `*.toml` in `dir` (sorted), each entry labelled with its file.
pub fn read_dir_specs(dir: &Path) -> Result<Vec<(String, InstanceSpec)>, FileError> {
    let mut out = Vec::new();
    for (f, text) in toml_files(dir)? {
        let parsed: InstanceFile = parse_toml(&f, &text)?;
        check_version(&f, "couchvault_instances", parsed.couchvault_instances)?;
        out.extend(
            parsed
                .instance
                .into_iter()
                .map(|s| (f.display().to_string(), s)),
        );
    }
    Ok(out)
}
