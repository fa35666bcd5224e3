//! `couchvault policy …`, and the policies' part in `backup create`.

use std::path::Path;

use anyhow::{anyhow, Context as _, Result};
use chrono::{DateTime, Utc};
use couchvault::ops::{sample_backups, DryRunReport, Situation};
use couchvault::policy::{BackupInfo, Policy, PolicyHost};
use couchvault::wire::DryRunBackup;

use super::args::PolicyCommand;
use super::context::Context;
use super::output::print_json;
use super::render;

/// Loads a component for `test`/`add`, named after its file.
fn load_file(host: &PolicyHost, name: &str, file: &Path) -> Result<Policy> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    Ok(host.load(name, &bytes)?)
}

fn print_report(r: &DryRunReport) {
    println!("policy {} ({}), sha256 {}", r.policy, r.kinds, r.sha256);
    if let Some(v) = &r.retention {
        println!();
        render::verdicts(v);
    }
    if let Some(p) = &r.protection {
        println!();
        println!(
            "protection: {} backup, zstd level {}, encrypted, key {}, tags {}",
            p.kind,
            p.compression_level,
            p.key_id.as_deref().unwrap_or("(the tenant's active key)"),
            render::tags_text(p.tags.iter().map(|(k, v)| (k, v)))
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
                    let parsed: Vec<DryRunBackup> =
                        serde_json::from_str(&text).with_context(|| {
                            format!("{} is not a JSON array of backups", path.display())
                        })?;
                    let mut v: Vec<BackupInfo> =
                        parsed.into_iter().map(DryRunBackup::info).collect();
                    v.sort_by_key(|b| std::cmp::Reverse(b.created_at));
                    v
                }
                None => sample_backups(now),
            };
            let host = ctx.vault.policy_host()?;
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
            render::policy_added(&entry);
            Ok(())
        }
        PolicyCommand::List => {
            let entries = ctx.vault.policies(&ctx.tenant)?;
            if ctx.json {
                return print_json(&entries);
            }
            render::policies(&entries, &ctx.tenant);
            Ok(())
        }
        PolicyCommand::New { .. } => unreachable!("written before the context opens"),
        PolicyCommand::Rm { name } => {
            ctx.vault.remove_policy(&ctx.tenant, &name)?;
            if !ctx.json {
                println!("removed policy {name} of tenant '{}'", ctx.tenant);
            }
            Ok(())
        }
    }
}
