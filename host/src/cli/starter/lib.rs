//! @NAME@: a couchvault policy, world `@WORLD@` of wit/policy.wit.
//!
//! Parameters (JSON, every key optional):
@@retain
//!   retention: {"keep_last": 7, "hold_tag": "legal-hold"}
@@end
@@protect
//!   protection: {"level": 3, "tags": {"team": "billing"}}
@@end
//!
//! Build:  cargo build --release --target wasm32-wasip2
//! Try:    couchvault policy test target/wasm32-wasip2/release/@CRATE@.wasm --params '{}'
//! Give:   couchvault --tenant TENANT policy add @NAME@ target/wasm32-wasip2/release/@CRATE@.wasm

wit_bindgen::generate!({ path: "wit", world: "@WORLD@" });

@@protect
use std::collections::BTreeMap;

use couchvault::policy::types::{BackupKind, PrefixCheck};
@@end
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Params {
@@retain
    keep_last: usize,
    hold_tag: String,
@@end
@@protect
    level: i32,
    tags: BTreeMap<String, String>,
@@end
}

impl Default for Params {
    fn default() -> Self {
        Params {
@@retain
            keep_last: 7,
            hold_tag: "legal-hold".into(),
@@end
@@protect
            level: 3,
            tags: BTreeMap::new(),
@@end
        }
    }
}

/// An error returned is what the tenant sees: say what is wrong and how to fix it.
fn params(text: &str) -> Result<Params, String> {
    if text.trim().is_empty() {
        return Ok(Params::default());
    }
    serde_json::from_str(text).map_err(|e| format!("bad parameters: {e}"))
}

struct Policy;

impl Guest for Policy {
@@retain
    /// Keeps the newest `keep_last` backups and every backup tagged `hold_tag`; the host
    /// deletes the others (never one that a kept backup depends on).
    fn retain(input: RetentionInput) -> Result<Vec<Keep>, String> {
        let p = params(&input.params)?;
        let mut keeps = Vec::new();
        // Backups come newest first.
        for (nr, b) in input.backups.iter().enumerate() {
            let held = b.tags.iter().find(|(k, _)| *k == p.hold_tag);
            let reason = match held {
                Some((k, v)) => format!("{k}: {v}"),
                None if nr < p.keep_last => format!("one of the newest {}", p.keep_last),
                None => continue,
            };
            keeps.push(Keep {
                id: b.id.clone(),
                reason,
            });
        }
        Ok(keeps)
    }
@@end
@@protect

    /// Every backup full, encrypted with the tenant's active key, at zstd `level`, with
    /// `tags`. The host's floors still apply (encryption stays on, levels are clamped).
    fn protect(input: ProtectionInput) -> Result<Protection, String> {
        let p = params(&input.params)?;
        if !(1..=19).contains(&p.level) {
            return Err(format!("bad parameters: level {} is not 1-19", p.level));
        }
        Ok(Protection {
            compression_level: p.level,
            encrypt: true,
            key_id: None,
            tags: p.tags.into_iter().collect(),
            kind: BackupKind::Full,
            prefix_check: PrefixCheck::Exact,
        })
    }
@@end
}

export!(Policy);
