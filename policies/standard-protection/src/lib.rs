//! couchvault's default protection policy: always encrypted with the tenant's active key,
//! zstd level 3, level 1 for very large sources (faster), and a tag naming the policy.
//!
//! Parameters (JSON; every key optional):
//! `{"level": 3, "large_level": 1, "large_bytes": 107374182400, "key_id": null, "tags": {"k": "v"}}`.

wit_bindgen::generate!({ path: "../../wit", world: "protection-policy" });

use std::collections::BTreeMap;

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
}

impl Default for Params {
    fn default() -> Self {
        Params {
            level: 3,
            large_level: 1,
            large_bytes: 100 << 30,
            key_id: None,
            tags: BTreeMap::new(),
        }
    }
}

impl Guest for Standard {
    fn protect(input: ProtectionInput) -> Result<Protection, String> {
        let p: Params = if input.params.trim().is_empty() {
            Params::default()
        } else {
            serde_json::from_str(&input.params).map_err(|e| format!("bad parameters: {e}"))?
        };
        let level = if input.source_size >= p.large_bytes {
            p.large_level
        } else {
            p.level
        };
        let mut tags: Vec<(String, String)> = p.tags.into_iter().collect();
        tags.push(("protection".into(), "standard-protection".into()));
        Ok(Protection {
            compression_level: level,
            encrypt: true,
            key_id: p.key_id,
            tags,
        })
    }
}

export!(Standard);
