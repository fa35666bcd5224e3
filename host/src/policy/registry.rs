//! A tenant's uploaded policies, on disk in the state directory:
//! `<state>/policies/<tenant>/<name>.wasm` and `<name>.json` (what was validated, and its
//! parameters).

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub const REGISTRY_FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Entry {
    pub couchvault_policy: u32,
    pub name: String,
    pub tenant: String,
    pub sha256: String,
    /// "retention", "protection" or "retention+protection".
    pub kinds: String,
    /// Passed to the policy as its `params`.
    pub params: String,
    pub added: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("no policy '{name}' for tenant '{tenant}' (see `couchvault policy list`)")]
    NotFound { tenant: String, name: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is damaged: {source}; remove the policy and add it again")]
    Damaged {
        path: PathBuf,
        source: serde_json::Error,
    },
}

type Result<T, E = RegistryError> = std::result::Result<T, E>;

fn dir(root: &Path, tenant: &str) -> PathBuf {
    root.join("policies").join(tenant)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RegistryError + '_ {
    move |source| RegistryError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn parse(path: &Path, text: &str) -> Result<Entry> {
    serde_json::from_str(text).map_err(|source| RegistryError::Damaged {
        path: path.to_path_buf(),
        source,
    })
}

pub fn save(root: &Path, entry: &Entry, wasm: &[u8]) -> Result<()> {
    let d = dir(root, &entry.tenant);
    std::fs::create_dir_all(&d).map_err(io(&d))?;
    let w = d.join(format!("{}.wasm", entry.name));
    std::fs::write(&w, wasm).map_err(io(&w))?;
    let j = d.join(format!("{}.json", entry.name));
    let text = serde_json::to_string_pretty(entry).map_err(|source| RegistryError::Damaged {
        path: j.clone(),
        source,
    })?;
    std::fs::write(&j, text).map_err(io(&j))
}

pub fn load(root: &Path, tenant: &str, name: &str) -> Result<(Entry, Vec<u8>)> {
    let d = dir(root, tenant);
    let j = d.join(format!("{name}.json"));
    let text = match std::fs::read_to_string(&j) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(RegistryError::NotFound {
                tenant: tenant.into(),
                name: name.into(),
            })
        }
        Err(e) => return Err(io(&j)(e)),
    };
    let entry = parse(&j, &text)?;
    let w = d.join(format!("{name}.wasm"));
    let wasm = std::fs::read(&w).map_err(io(&w))?;
    Ok((entry, wasm))
}

pub fn list(root: &Path, tenant: &str) -> Result<Vec<Entry>> {
    let d = dir(root, tenant);
    let rd = match std::fs::read_dir(&d) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(&d)(e)),
    };
    let mut out = Vec::new();
    for e in rd {
        let p = e.map_err(io(&d))?.path();
        if p.extension().is_some_and(|x| x == "json") {
            let text = std::fs::read_to_string(&p).map_err(io(&p))?;
            out.push(parse(&p, &text)?);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

pub fn remove(root: &Path, tenant: &str, name: &str) -> Result<()> {
    let d = dir(root, tenant);
    let j = d.join(format!("{name}.json"));
    if !j.exists() {
        return Err(RegistryError::NotFound {
            tenant: tenant.into(),
            name: name.into(),
        });
    }
    for ext in ["json", "wasm"] {
        let p = d.join(format!("{name}.{ext}"));
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&p)(e)),
        }
    }
    Ok(())
}
