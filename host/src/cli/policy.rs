//! `couchvault policy …`, and the policies' part in `backup create`.

use std::path::Path;

use anyhow::{anyhow, Context as _, Result};
use chrono::{DateTime, Utc};
use couchvault::catalog;
use couchvault::format::BackupMetadata;
use couchvault::policy::floors::{self, ProtectionDecision, Verdict};
use couchvault::policy::{
    registry, BackupInfo, Policy, PolicyHost, ProtectionInput, RetentionInput,
};
use serde::{Deserialize, Serialize};

use super::args::PolicyCommand;
use super::context::Context;
use super::output::{print_json, table};

pub fn host(ctx: &Context) -> Result<PolicyHost> {
    Ok(PolicyHost::new(
        &ctx.state_dir.join("policy-cache"),
        ctx.config.policy.limits(),
    )?)
}

/// Loads one of the tenant's registered policies, with its parameters.
fn registered(ctx: &Context, host: &PolicyHost, name: &str) -> Result<(Policy, String)> {
    let (entry, wasm) =
        registry::load(&ctx.state_dir, &ctx.tenant, name).map_err(|e| anyhow!(e))?;
    Ok((host.load(name, &wasm)?, entry.params))
}

fn info_of(m: &BackupMetadata) -> BackupInfo {
    BackupInfo {
        id: m.backup_id.clone(),
        created_at: m.started_at.timestamp(),
        size: m.data.size,
        kind: m.kind.clone(),
        tags: m.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        schedule: m.tags.get("schedule").cloned(),
    }
}

/// Asks the tenant's protection policy how to make a backup, then applies the floors.
pub fn protection_before_backup(
    ctx: &Context,
    name: &str,
    instance: &str,
    source_size: u64,
) -> Result<ProtectionDecision> {
    let host = host(ctx)?;
    let (policy, params) = registered(ctx, &host, name)?;
    let answer = host.protect(
        &policy,
        &ProtectionInput {
            now: Utc::now().timestamp(),
            tenant: ctx.tenant.clone(),
            instance: instance.to_string(),
            schedule: None,
            source_size,
            params,
        },
    )?;
    floors::protection(&ctx.config.floors, answer, |k| {
        ctx.keyring.get(&ctx.tenant, k).is_ok()
    })
    .map_err(|e| anyhow!("policy '{name}': {e}"))
}

/// Runs the tenant's retention policy over an instance's committed backups, applies the
/// floors, and deletes what neither keeps. Returns every verdict.
pub fn retention_after_backup(ctx: &Context, name: &str, instance: &str) -> Result<Vec<Verdict>> {
    let host = host(ctx)?;
    let (policy, params) = registered(ctx, &host, name)?;
    let mut metas: Vec<BackupMetadata> =
        catalog::list(&*ctx.store, &ctx.keyring, &ctx.tenant, Some(instance))?
            .into_iter()
            .filter_map(|l| l.metadata)
            .collect();
    metas.sort_by(|a, b| {
        b.started_at
            .cmp(&a.started_at)
            .then(b.backup_id.cmp(&a.backup_id))
    });
    let backups: Vec<BackupInfo> = metas.iter().map(info_of).collect();
    let now = Utc::now().timestamp();
    let keeps = host.retain(
        &policy,
        &RetentionInput {
            now,
            tenant: ctx.tenant.clone(),
            instance: instance.to_string(),
            params,
            backups: backups.clone(),
        },
    )?;
    let verdicts = floors::retention(&ctx.config.floors, now, &backups, &keeps)
        .map_err(|e| anyhow!("policy '{name}': {e}"))?;
    for v in verdicts.iter().filter(|v| !v.keep) {
        catalog::delete(&*ctx.store, &ctx.tenant, &v.id)
            .with_context(|| format!("retention: deleting backup {}", v.id))?;
        tracing::info!(backup = %v.id, reason = %v.reason, "retention deleted a backup");
    }
    Ok(verdicts)
}

pub fn print_verdicts(verdicts: &[Verdict]) {
    let rows: Vec<Vec<String>> = verdicts
        .iter()
        .map(|v| {
            vec![
                if v.keep { "keep" } else { "delete" }.to_string(),
                v.id.clone(),
                v.reason.clone(),
            ]
        })
        .collect();
    table(&["ACTION", "BACKUP", "REASON"], &rows);
}

#[derive(Deserialize)]
struct TestBackup {
    id: String,
    created_at: DateTime<Utc>,
    #[serde(default)]
    size: u64,
    #[serde(default = "full")]
    kind: String,
    #[serde(default)]
    tags: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    schedule: Option<String>,
}

fn full() -> String {
    "full".into()
}

#[derive(Serialize)]
struct TestReport {
    policy: String,
    kinds: String,
    sha256: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    retention: Option<Vec<Verdict>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    protection: Option<ProtectionDecision>,
}

/// Loads a component for `test`/`add`, named after its file.
fn load_file(host: &PolicyHost, name: &str, file: &Path) -> Result<Policy> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    Ok(host.load(name, &bytes)?)
}

/// Sample input for validating a new policy: three backups a day apart.
fn sample_backups(now: i64) -> Vec<BackupInfo> {
    (0..3)
        .map(|i| BackupInfo {
            id: format!("01SAMPLE{i:018}"),
            created_at: now - i * 86_400,
            size: 1 << 20,
            kind: "full".into(),
            tags: vec![],
            schedule: None,
        })
        .collect()
}

/// The made-up situation a dry run puts a policy in.
struct Situation<'a> {
    now: i64,
    backups: Vec<BackupInfo>,
    params: &'a str,
    instance: &'a str,
    source_size: u64,
}

fn dry_run(
    ctx: &Context,
    host: &PolicyHost,
    policy: &Policy,
    sit: Situation<'_>,
) -> Result<TestReport> {
    let Situation {
        now,
        backups,
        params,
        instance,
        source_size,
    } = sit;
    let retention = if policy.has_retention() {
        let keeps = host.retain(
            policy,
            &RetentionInput {
                now,
                tenant: ctx.tenant.clone(),
                instance: instance.to_string(),
                params: params.to_string(),
                backups: backups.clone(),
            },
        )?;
        Some(
            floors::retention(&ctx.config.floors, now, &backups, &keeps)
                .map_err(|e| anyhow!("policy '{}': {e}", policy.name))?,
        )
    } else {
        None
    };
    let protection = if policy.has_protection() {
        let answer = host.protect(
            policy,
            &ProtectionInput {
                now,
                tenant: ctx.tenant.clone(),
                instance: instance.to_string(),
                schedule: None,
                source_size,
                params: params.to_string(),
            },
        )?;
        Some(
            floors::protection(&ctx.config.floors, answer, |k| {
                ctx.keyring.get(&ctx.tenant, k).is_ok()
            })
            .map_err(|e| anyhow!("policy '{}': {e}", policy.name))?,
        )
    } else {
        None
    };
    Ok(TestReport {
        policy: policy.name.clone(),
        kinds: policy.kinds(),
        sha256: policy.sha256.clone(),
        retention,
        protection,
    })
}

fn print_report(r: &TestReport) {
    println!("policy {} ({}), sha256 {}", r.policy, r.kinds, r.sha256);
    if let Some(v) = &r.retention {
        println!();
        print_verdicts(v);
    }
    if let Some(p) = &r.protection {
        println!();
        println!(
            "protection: zstd level {}, encrypted, key {}, tags {}",
            p.compression_level,
            p.key_id.as_deref().unwrap_or("(the tenant's active key)"),
            p.tags
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        for o in &p.overrides {
            println!("  floor applied: {o}");
        }
    }
}

pub fn run(ctx: &Context, cmd: PolicyCommand) -> Result<()> {
    match cmd {
        PolicyCommand::Test {
            file,
            backups,
            now,
            params,
            instance,
            source_size,
        } => {
            let now = match now {
                Some(t) => DateTime::parse_from_rfc3339(&t)
                    .map_err(|e| anyhow!("--now '{t}' is not an RFC 3339 time: {e}"))?
                    .timestamp(),
                None => Utc::now().timestamp(),
            };
            let list: Vec<BackupInfo> = match backups {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    let parsed: Vec<TestBackup> =
                        serde_json::from_str(&text).with_context(|| {
                            format!("{} is not a JSON array of backups", path.display())
                        })?;
                    let mut v: Vec<BackupInfo> = parsed
                        .into_iter()
                        .map(|b| BackupInfo {
                            id: b.id,
                            created_at: b.created_at.timestamp(),
                            size: b.size,
                            kind: b.kind,
                            tags: b.tags.into_iter().collect(),
                            schedule: b.schedule,
                        })
                        .collect();
                    v.sort_by_key(|b| std::cmp::Reverse(b.created_at));
                    v
                }
                None => sample_backups(now),
            };
            let host = host(ctx)?;
            let name = file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let policy = load_file(&host, &name, &file)?;
            let sit = Situation {
                now,
                backups: list,
                params: &params,
                instance: &instance,
                source_size,
            };
            let report = dry_run(ctx, &host, &policy, sit)?;
            if ctx.json {
                return print_json(&report);
            }
            print_report(&report);
            Ok(())
        }
        PolicyCommand::Add { name, file, params } => {
            let host = host(ctx)?;
            let policy = load_file(&host, &name, &file)?;
            let now = Utc::now().timestamp();
            dry_run(
                ctx,
                &host,
                &policy,
                Situation {
                    now,
                    backups: sample_backups(now),
                    params: &params,
                    instance: "sample",
                    source_size: 1 << 30,
                },
            )
            .context("the dry run on sample input failed; the policy was not added")?;
            let wasm =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let entry = registry::Entry {
                couchvault_policy: registry::REGISTRY_FORMAT,
                name: name.clone(),
                tenant: ctx.tenant.clone(),
                sha256: policy.sha256.clone(),
                kinds: policy.kinds(),
                params,
                added: Utc::now(),
            };
            registry::save(&ctx.state_dir, &entry, &wasm).map_err(|e| anyhow!(e))?;
            if ctx.json {
                return print_json(&entry);
            }
            println!(
                "added policy {name} ({}) for tenant '{}'; use it with --{} {name} or [policy] in the config",
                entry.kinds,
                ctx.tenant,
                if policy.has_retention() { "retention" } else { "protection" }
            );
            Ok(())
        }
        PolicyCommand::List => {
            let entries = registry::list(&ctx.state_dir, &ctx.tenant).map_err(|e| anyhow!(e))?;
            if ctx.json {
                return print_json(&entries);
            }
            if entries.is_empty() {
                println!("no policies for tenant '{}'", ctx.tenant);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = entries
                .iter()
                .map(|e| {
                    vec![
                        e.name.clone(),
                        e.kinds.clone(),
                        e.added.format("%Y-%m-%d %H:%M").to_string(),
                        e.sha256[..16].to_string(),
                        e.params.clone(),
                    ]
                })
                .collect();
            table(&["NAME", "KINDS", "ADDED (UTC)", "SHA256", "PARAMS"], &rows);
            Ok(())
        }
        PolicyCommand::Rm { name } => {
            registry::remove(&ctx.state_dir, &ctx.tenant, &name).map_err(|e| anyhow!(e))?;
            if !ctx.json {
                println!("removed policy {name} of tenant '{}'", ctx.tenant);
            }
            Ok(())
        }
    }
}
