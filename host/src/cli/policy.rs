//! `couchvault policy …`, and the policies' part in `backup create`.

use std::path::Path;

use anyhow::{anyhow, Context as _, Result};
use chrono::{DateTime, Utc};
use couchvault::ops::{sample_backups, DryRunReport, Situation};
use couchvault::policy::floors::Verdict;
use couchvault::policy::{registry, BackupInfo, Policy, PolicyHost};
use serde::Deserialize;

use super::args::PolicyCommand;
use super::context::Context;
use super::output::{print_json, table};

pub fn host(ctx: &Context) -> Result<PolicyHost> {
    Ok(ctx.vault.policy_host()?)
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

/// Loads a component for `test`/`add`, named after its file.
fn load_file(host: &PolicyHost, name: &str, file: &Path) -> Result<Policy> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    Ok(host.load(name, &bytes)?)
}

fn print_report(r: &DryRunReport) {
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
            super::commands::tags_text(p.tags.iter().map(|(k, v)| (k, v)))
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
                tenant: &ctx.tenant,
                now,
                backups: list,
                params: &params,
                instance: &instance,
                source_size,
            };
            let report = ctx.vault.dry_run(&host, &ctx.keyring, &policy, sit)?;
            if ctx.json {
                return print_json(&report);
            }
            print_report(&report);
            Ok(())
        }
        PolicyCommand::Add { name, file, params } => {
            let wasm =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let entry = ctx.vault.add_policy(&ctx.tenant, &name, &wasm, &params)?;
            if ctx.json {
                return print_json(&entry);
            }
            println!(
                "added policy {name} ({}) for tenant '{}'; use it with --{} {name} or [policy] in the config",
                entry.kinds,
                ctx.tenant,
                if entry.kinds.contains("retention") { "retention" } else { "protection" }
            );
            Ok(())
        }
        PolicyCommand::List => {
            let entries =
                registry::list(&ctx.vault.state_dir, &ctx.tenant).map_err(|e| anyhow!(e))?;
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
            registry::remove(&ctx.vault.state_dir, &ctx.tenant, &name).map_err(|e| anyhow!(e))?;
            if !ctx.json {
                println!("removed policy {name} of tenant '{}'", ctx.tenant);
            }
            Ok(())
        }
    }
}
