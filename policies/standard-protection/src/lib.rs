//! couchvault's default protection policy: always encrypted with the tenant's active key,
//! zstd level 3, level 1 for very large sources (faster), a tag naming the policy, and, when
//! asked, a full backup every `full_every_days` with incrementals in between.
//!
//! Parameters (JSON; every key optional):
//! `{"level": 3, "large_level": 1, "large_bytes": 107374182400, "key_id": null, "tags": {"k": "v"},
//!   "incremental": false, "differential": false, "full_every_days": 7, "fast": false}`.
//! With `incremental` (or `differential`), a daily schedule gives a weekly full and daily
//! incrementals (differentials against the full): the backup is full when the instance has
//! no chain or its full is `full_every_days` old (an hour early, so a daily run that starts a
//! little early still takes it).

wit_bindgen::generate!({ path: "../../wit", world: "protection-policy" });

use std::collections::BTreeMap;

use couchvault::policy::types::{BackupKind, PrefixCheck};
use serde::Deserialize;

struct Standard;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Params {
    level: i32,
    large_level: i32,
    large_bytes: u64,
    key_id: Option<String>,
    tags: BTreeMap<String, String>,
    incremental: bool,
    differential: bool,
    full_every_days: u32,
    fast: bool,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            level: 3,
            large_level: 1,
            large_bytes: 100 << 30,
            key_id: None,
            tags: BTreeMap::new(),
            incremental: false,
            differential: false,
            full_every_days: 7,
            fast: false,
        }
    }
}

const SLACK_SECS: i64 = 3600;

impl Guest for Standard {
    fn protect(input: ProtectionInput) -> Result<Protection, String> {
        let p: Params = if input.params.trim().is_empty() {
            Params::default()
        } else {
            serde_json::from_str(&input.params).map_err(|e| format!("bad parameters: {e}"))?
        };
        if p.incremental && p.differential {
            return Err("bad parameters: incremental and differential exclude each other".into());
        }
        let level = if input.source_size >= p.large_bytes {
            p.large_level
        } else {
            p.level
        };
        // The chain is newest first and ends at its full.
        let full_age = input
            .chain
            .last()
            .filter(|b| b.kind == "full")
            .map(|b| input.now - b.created_at);
        let due = match full_age {
            Some(age) => age >= i64::from(p.full_every_days) * 86_400 - SLACK_SECS,
            None => true,
        };
        let kind = match (p.incremental, p.differential, due) {
            (_, _, true) | (false, false, _) => BackupKind::Full,
            (true, _, false) => BackupKind::Incremental,
            (_, true, false) => BackupKind::Differential,
        };
        let mut tags: Vec<(String, String)> = p.tags.into_iter().collect();
        tags.push(("protection".into(), "standard-protection".into()));
        Ok(Protection {
            compression_level: level,
            encrypt: true,
            key_id: p.key_id,
            tags,
            kind,
            prefix_check: if p.fast {
                PrefixCheck::Fast
            } else {
                PrefixCheck::Exact
            },
        })
    }
}

export!(Standard);
