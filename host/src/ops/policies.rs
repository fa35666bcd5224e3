//! Tenants' policies: adding (validated by a dry run), listing, removing, dry runs, and
//! resolving a schedule's policy names.

use std::path::Path;

use chrono::Utc;
use serde::Serialize;

use super::{OpsError, Result, Vault};
use crate::keyring::KeyRing;
use crate::policy::floors::{self, ProtectionDecision, Verdict};
use crate::policy::{registry, BackupInfo, Policy, PolicyHost, ProtectionInput, RetentionInput};

impl Vault {
    /// Loads one of the tenant's registered policies, with its parameters.
    pub fn registered(
        &self,
        host: &PolicyHost,
        tenant: &str,
        name: &str,
    ) -> Result<(Policy, String)> {
        let (entry, wasm) = registry::load(&self.state_dir, tenant, name)?;
        Ok((host.load(name, &wasm)?, entry.params))
    }

    pub fn policies(&self, tenant: &str) -> Result<Vec<registry::Entry>> {
        Ok(registry::list(&self.state_dir, tenant)?)
    }

    pub fn policy(&self, tenant: &str, name: &str) -> Result<registry::Entry> {
        Ok(registry::load(&self.state_dir, tenant, name)?.0)
    }

    pub fn remove_policy(&self, tenant: &str, name: &str) -> Result<()> {
        Ok(registry::remove(&self.state_dir, tenant, name)?)
    }

    /// Dry-runs a registered policy: on `backups`, or the instance's real backups, or a
    /// sample when neither is given.
    pub fn dry_run_registered(
        &self,
        tenant: &str,
        name: &str,
        instance: Option<&str>,
        backups: Option<Vec<BackupInfo>>,
        now: i64,
        source_size: u64,
    ) -> Result<DryRunReport> {
        let host = self.policy_host()?;
        let keyring = self.keyring()?;
        let (policy, params) = self.registered(&host, tenant, name)?;
        let mut backups = match (backups, instance) {
            (Some(list), _) => list,
            (None, Some(i)) => self
                .committed(tenant, Some(i))?
                .iter()
                .map(super::backup::info_of)
                .collect(),
            (None, None) => sample_backups(now),
        };
        backups.sort_by_key(|x| std::cmp::Reverse(x.created_at));
        self.dry_run(
            &host,
            &keyring,
            &policy,
            Situation {
                tenant,
                now,
                backups,
                params: &params,
                instance: instance.unwrap_or("instance"),
                source_size,
            },
        )
    }
}

/// The made-up situation a policy dry run puts a policy in.
pub struct Situation<'a> {
    pub tenant: &'a str,
    pub now: i64,
    pub backups: Vec<BackupInfo>,
    pub params: &'a str,
    pub instance: &'a str,
    pub source_size: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DryRunReport {
    pub policy: String,
    pub kinds: String,
    pub sha256: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention: Option<Vec<Verdict>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protection: Option<ProtectionDecision>,
}

/// Sample input for validating a new policy: three backups a day apart.
pub fn sample_backups(now: i64) -> Vec<BackupInfo> {
    (0..3)
        .map(|i| BackupInfo {
            id: format!("01SAMPLE{i:018}"),
            created_at: now - i * 86_400,
            size: 1 << 20,
            kind: "full".into(),
            parent: None,
            tags: vec![],
            schedule: None,
        })
        .collect()
}

/// The newest backup of `backups` (newest first) and those it depends on, down to a full.
fn chain_of(backups: &[BackupInfo]) -> Vec<BackupInfo> {
    let mut chain: Vec<BackupInfo> = backups.first().cloned().into_iter().collect();
    while let Some(parent) = chain.last().and_then(|b| b.parent.clone()) {
        match backups.iter().find(|b| b.id == parent) {
            Some(b) if chain.len() <= backups.len() => chain.push(b.clone()),
            _ => break,
        }
    }
    chain
}

impl Vault {
    /// Runs a policy on made-up input, floors applied, deleting nothing.
    pub fn dry_run(
        &self,
        host: &PolicyHost,
        keyring: &KeyRing,
        policy: &Policy,
        sit: Situation<'_>,
    ) -> Result<DryRunReport> {
        let failed = |reason: String| OpsError::Policy {
            name: policy.name.clone(),
            reason,
        };
        let retention = if policy.has_retention() {
            let keeps = host.retain(
                policy,
                &RetentionInput {
                    now: sit.now,
                    tenant: sit.tenant.to_string(),
                    instance: sit.instance.to_string(),
                    params: sit.params.to_string(),
                    backups: sit.backups.clone(),
                },
            )?;
            Some(
                floors::retention(&self.config.floors, sit.now, &sit.backups, &keeps)
                    .map_err(|e| failed(e.to_string()))?,
            )
        } else {
            None
        };
        let protection = if policy.has_protection() {
            let answer = host.protect(
                policy,
                &ProtectionInput {
                    now: sit.now,
                    tenant: sit.tenant.to_string(),
                    instance: sit.instance.to_string(),
                    schedule: None,
                    source_size: sit.source_size,
                    params: sit.params.to_string(),
                    chain: chain_of(&sit.backups),
                },
            )?;
            Some(
                floors::protection(&self.config.floors, answer, |k| {
                    keyring.get(sit.tenant, k).is_ok()
                })
                .map_err(|e| failed(e.to_string()))?,
            )
        } else {
            None
        };
        Ok(DryRunReport {
            policy: policy.name.clone(),
            kinds: policy.kinds(),
            sha256: policy.sha256.clone(),
            retention,
            protection,
        })
    }

    /// Validates a component (right world, compiles, a dry run on sample input) and adds
    /// it to the tenant's policies.
    pub fn add_policy(
        &self,
        tenant: &str,
        name: &str,
        wasm: &[u8],
        params: &str,
    ) -> Result<registry::Entry> {
        crate::names::validate_name("policy", name).map_err(crate::Error::from)?;
        let host = self.policy_host()?;
        let policy = host.load(name, wasm)?;
        let now = Utc::now().timestamp();
        self.dry_run(
            &host,
            &self.keyring()?,
            &policy,
            Situation {
                tenant,
                now,
                backups: sample_backups(now),
                params,
                instance: "sample",
                source_size: 1 << 30,
            },
        )
        .map_err(|e| OpsError::Policy {
            name: name.to_string(),
            reason: format!("the dry run on sample input failed ({e}); the policy was not added"),
        })?;
        let entry = registry::Entry {
            couchvault_policy: registry::REGISTRY_FORMAT,
            name: name.to_string(),
            tenant: tenant.to_string(),
            sha256: policy.sha256.clone(),
            kinds: policy.kinds(),
            params: params.to_string(),
            added: Utc::now(),
        };
        registry::save(&self.state_dir, &entry, wasm)?;
        Ok(entry)
    }
}

/// Splits a schedule's policy names into (protection, retention) by what each implements.
pub fn resolve_policies(
    state_dir: &Path,
    tenant: &str,
    names: &[String],
) -> Result<(Option<String>, Option<String>)> {
    let (mut protection, mut retention) = (None, None);
    for name in names {
        let (entry, _) = registry::load(state_dir, tenant, name)?;
        for (kind, slot) in [
            ("protection", &mut protection),
            ("retention", &mut retention),
        ] {
            if entry.kinds.contains(kind) {
                if let Some(other) = slot.replace(name.clone()) {
                    return Err(OpsError::Refused(format!(
                        "policies '{other}' and '{name}' are both {kind} policies; give one"
                    )));
                }
            }
        }
    }
    Ok((protection, retention))
}
