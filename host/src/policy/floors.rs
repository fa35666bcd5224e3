//! The operator's floors: applied to every policy's answer, whatever the policy says.

use serde::{Deserialize, Serialize};

use super::{BackupInfo, BackupKind, Keep, Protection};
use crate::duration::Span;
use crate::format::{Kind, PrefixCheck};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Floors {
    /// Archive format v1 always encrypts; with this set, a policy's "no encryption" is also
    /// reported as overridden by the operator.
    pub encryption_required: bool,
    pub compression_min: i32,
    pub compression_max: i32,
    /// Never keep fewer than this many backups of an instance (the newest ones).
    pub keep_min: usize,
    /// Never delete a backup younger than this, e.g. "7d".
    pub keep_younger_than: Span,
    /// At most this many incremental or differential backups after a full; the next is full.
    pub max_chain_length: usize,
    /// A chain whose full is older than this ends: the next backup is full.
    pub full_max_age: Span,
}

impl Default for Floors {
    fn default() -> Self {
        Floors {
            encryption_required: true,
            compression_min: 1,
            compression_max: 19,
            keep_min: 1,
            keep_younger_than: Span::ZERO,
            max_chain_length: 30,
            full_max_age: Span::secs(31 * 86_400),
        }
    }
}

/// A policy's answer that the floors cannot accept.
#[derive(Debug, thiserror::Error)]
pub enum FloorError {
    #[error("it kept backup '{0}', which is not one of the instance's backups")]
    UnknownBackup(String),
    #[error("it chose key '{0}', which is not in the tenant's key ring")]
    UnknownKey(String),
}

/// The outcome for one backup.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Verdict {
    pub id: String,
    pub keep: bool,
    pub reason: String,
}

/// Applies the floors to a retention answer. `backups` is newest first; every backup gets a
/// verdict. The newest backup is always kept.
pub fn retention(
    floors: &Floors,
    now: i64,
    backups: &[BackupInfo],
    keeps: &[Keep],
) -> Result<Vec<Verdict>, FloorError> {
    for k in keeps {
        if !backups.iter().any(|b| b.id == k.id) {
            return Err(FloorError::UnknownBackup(k.id.clone()));
        }
    }
    let young = floors.keep_younger_than.get().as_secs() as i64;
    Ok(backups
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let mut reasons: Vec<String> = keeps
                .iter()
                .filter(|k| k.id == b.id)
                .map(|k| k.reason.clone())
                .collect();
            let policy_keeps = !reasons.is_empty();
            if i == 0 {
                reasons.push("floor: the newest backup is never deleted".into());
            } else if i < floors.keep_min {
                reasons.push(format!("floor: keep at least {}", floors.keep_min));
            }
            if young > 0 && now - b.created_at < young {
                reasons.push(format!("floor: younger than {}", floors.keep_younger_than));
            }
            let keep = !reasons.is_empty();
            if !keep {
                reasons.push("not kept by the policy".into());
            } else if !policy_keeps {
                reasons.insert(0, "policy would delete it".into());
            }
            Verdict {
                id: b.id.clone(),
                keep,
                reason: reasons.join("; "),
            }
        })
        .collect::<Vec<_>>())
    .map(|mut verdicts| {
        keep_parents(backups, &mut verdicts);
        verdicts
    })
}

/// No backup that a kept one depends on is deleted: newest first, each kept backup keeps
/// its parent (which, older, comes later and keeps its own).
fn keep_parents(backups: &[BackupInfo], verdicts: &mut [Verdict]) {
    for i in 0..backups.len() {
        if !verdicts[i].keep {
            continue;
        }
        let Some(parent) = &backups[i].parent else {
            continue;
        };
        if let Some(j) = backups.iter().position(|b| b.id == *parent) {
            if !verdicts[j].keep {
                verdicts[j].keep = true;
                verdicts[j].reason = format!(
                    "policy would delete it; floor: backup {} depends on it",
                    backups[i].id
                );
            }
        }
    }
}

/// What a backup will be made with, after the floors.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ProtectionDecision {
    pub compression_level: i32,
    pub key_id: Option<String>,
    /// `[key, value]` pairs.
    #[schema(value_type = Vec<Vec<String>>)]
    pub tags: Vec<(String, String)>,
    /// What the policy asked for; the host may still take a full (its chain floors, or a
    /// parent it cannot read).
    pub kind: Kind,
    pub prefix_check: PrefixCheck,
    /// Where the floors changed the policy's answer.
    pub overrides: Vec<String>,
}

/// Applies the floors to a protection answer; `key_exists` checks a key id in the tenant's ring.
pub fn protection(
    floors: &Floors,
    p: Protection,
    key_exists: impl Fn(&str) -> bool,
) -> Result<ProtectionDecision, FloorError> {
    let mut overrides = Vec::new();
    let level = p
        .compression_level
        .clamp(floors.compression_min, floors.compression_max);
    if level != p.compression_level {
        overrides.push(format!(
            "compression level {} raised or lowered to {level} (floors: {}-{})",
            p.compression_level, floors.compression_min, floors.compression_max
        ));
    }
    if !p.encrypt {
        overrides.push(if floors.encryption_required {
            "encryption kept on (floor: encryption required)".to_string()
        } else {
            "encryption kept on (archive format v1 is always encrypted)".to_string()
        });
    }
    if let Some(k) = &p.key_id {
        if !key_exists(k) {
            return Err(FloorError::UnknownKey(k.clone()));
        }
    }
    Ok(ProtectionDecision {
        compression_level: level,
        key_id: p.key_id,
        tags: p.tags,
        kind: match p.kind {
            BackupKind::Full => Kind::Full,
            BackupKind::Incremental => Kind::Incremental,
            BackupKind::Differential => Kind::Differential,
        },
        prefix_check: match p.prefix_check {
            super::PrefixCheck::Exact => PrefixCheck::Exact,
            super::PrefixCheck::Fast => PrefixCheck::Fast,
        },
        overrides,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str, age_days: i64, kind: &str, parent: Option<&str>) -> BackupInfo {
        BackupInfo {
            id: id.into(),
            created_at: 1_000_000_000 - age_days * 86_400,
            size: 1,
            kind: kind.into(),
            parent: parent.map(Into::into),
            tags: vec![],
            schedule: None,
        }
    }

    #[test]
    fn no_backup_a_kept_one_depends_on_is_deleted() {
        // Newest first: a chain full <- inc1 <- inc2, an older full, and a differential
        // hanging off the older full.
        let backups = vec![
            info("inc2", 0, "incremental", Some("inc1")),
            info("inc1", 1, "incremental", Some("full")),
            info("full", 2, "full", None),
            info("diff", 3, "differential", Some("old")),
            info("old", 4, "full", None),
        ];
        let keeps = vec![Keep {
            id: "diff".into(),
            reason: "monthly".into(),
        }];
        let v = retention(&Floors::default(), 1_000_000_000, &backups, &keeps).unwrap();
        let by_id = |id: &str| v.iter().find(|x| x.id == id).unwrap();
        // The newest (a floor) keeps its chain; the policy's differential keeps its full.
        for id in ["inc2", "inc1", "full", "diff", "old"] {
            assert!(by_id(id).keep, "{id}: {:?}", by_id(id));
        }
        assert!(by_id("inc1").reason.contains("backup inc2 depends on it"));
        assert!(by_id("full").reason.contains("backup inc1 depends on it"));
        assert!(by_id("old").reason.contains("backup diff depends on it"));

        // Without the policy's keep, the differential and its full go.
        let v = retention(&Floors::default(), 1_000_000_000, &backups, &[]).unwrap();
        let kept: Vec<&str> = v.iter().filter(|x| x.keep).map(|x| x.id.as_str()).collect();
        assert_eq!(kept, vec!["inc2", "inc1", "full"]);
    }
}
