//! A tenant's uploaded policies, on disk in the state directory:
//! `<state>/policies/<tenant>/<name>.wasm` and `<name>.json` (what was validated, and its
//! parameters).

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub const REGISTRY_FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
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

fn dir(root: &Path, tenant: &str) -> PathBuf {
    root.join("policies").join(tenant)
}

fn io(path: &Path, e: std::io::Error) -> String {
    format!("{}: {e}", path.display())
}

pub fn save(root: &Path, entry: &Entry, wasm: &[u8]) -> Result<(), String> {
    let d = dir(root, &entry.tenant);
    std::fs::create_dir_all(&d).map_err(|e| io(&d, e))?;
    let w = d.join(format!("{}.wasm", entry.name));
    std::fs::write(&w, wasm).map_err(|e| io(&w, e))?;
    let j = d.join(format!("{}.json", entry.name));
    let text = serde_json::to_string_pretty(entry).map_err(|e| e.to_string())?;
    std::fs::write(&j, text).map_err(|e| io(&j, e))
}

pub fn load(root: &Path, tenant: &str, name: &str) -> Result<(Entry, Vec<u8>), String> {
    let d = dir(root, tenant);
    let j = d.join(format!("{name}.json"));
    let text = std::fs::read_to_string(&j).map_err(|_| {
        format!("no policy '{name}' for tenant '{tenant}' (see `couchvault policy list`)")
    })?;
    let entry: Entry = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", j.display()))?;
    let w = d.join(format!("{name}.wasm"));
    let wasm = std::fs::read(&w).map_err(|e| io(&w, e))?;
    Ok((entry, wasm))
}

pub fn list(root: &Path, tenant: &str) -> Result<Vec<Entry>, String> {
    let d = dir(root, tenant);
    let rd = match std::fs::read_dir(&d) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(&d, e)),
    };
    let mut out = Vec::new();
    for e in rd {
        let p = e.map_err(|e| io(&d, e))?.path();
        if p.extension().is_some_and(|x| x == "json") {
            let text = std::fs::read_to_string(&p).map_err(|e| io(&p, e))?;
            out.push(
                serde_json::from_str::<Entry>(&text)
                    .map_err(|e| format!("{}: {e}", p.display()))?,
            );
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

pub fn remove(root: &Path, tenant: &str, name: &str) -> Result<(), String> {
    let d = dir(root, tenant);
    let j = d.join(format!("{name}.json"));
    if !j.exists() {
        return Err(format!("no policy '{name}' for tenant '{tenant}'"));
    }
    for ext in ["json", "wasm"] {
        let p = d.join(format!("{name}.{ext}"));
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&p, e)),
        }
    }
    Ok(())
}
