//! One function per command: resolve the context, call the library, print the result.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context as _, Result};
use chrono::{DateTime, Utc};
use couchvault::catalog;
use couchvault::config::{parse_duration, Config};
use couchvault::couchdb::{Source, SourceSpec};
use couchvault::engine::{self, Progress, RestoreOptions};
use couchvault::format::BackupMetadata;
use couchvault::ops::restore::{backup_node, node_from_config, DbCheck, Hooks, RestoreRequest};
use couchvault::ops::{restore_owner, BackupRequest, OpsError};
use serde::Serialize;

use super::args::{BackupCommand, Cli, Command, CreateArgs, GcArgs, KeyCommand, RestoreArgs};
use super::context::Context;
use super::output::{bytes, print_json, table, with_progress};

pub fn run(cli: Cli) -> Result<()> {
    let config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::embedded(),
    };
    if super::client::wants_server(&cli, &config) {
        return super::client::run(cli, config);
    }
    if let Command::Daemon(args) = &cli.command {
        return super::daemon::run(&cli, config, args);
    }
    // A bad source is reported before first use creates anything.
    let source = match &cli.command {
        Command::Backup(BackupCommand::Create(args)) => Some(Source::discover(&SourceSpec {
            couchdb_config: args.source.couchdb_config.clone(),
            data_dir: args.source.data_dir.clone(),
            view_index_dir: args.source.view_index_dir.clone(),
        })?),
        _ => None,
    };
    let ctx = Context::open(&cli, config)?;
    match cli.command {
        Command::Backup(BackupCommand::Create(args)) => {
            backup_create(&ctx, args, source.expect("discovered above"))
        }
        Command::Backup(BackupCommand::List { instance }) => backup_list(&ctx, instance),
        Command::Backup(BackupCommand::Show { id }) => backup_show(&ctx, &id),
        Command::Backup(BackupCommand::Verify { id }) => backup_verify(&ctx, &id),
        Command::Backup(BackupCommand::Delete { id }) => backup_delete(&ctx, &id),
        Command::Restore(args) => restore(&ctx, args),
        Command::Gc(args) => gc(&ctx, args),
        Command::Key(KeyCommand::Add) => key_add(ctx),
        Command::Key(KeyCommand::List) => key_list(&ctx),
        Command::Policy(cmd) => super::policy::run(&ctx, cmd),
        Command::Daemon(_)
        | Command::Instance(_)
        | Command::Schedule(_)
        | Command::Job(_)
        | Command::Token(_) => {
            unreachable!("daemon commands are dispatched above")
        }
    }
}

/// The stable JSON shape of a backup in `create`, `list` and `show`.
#[derive(Serialize)]
struct Summary<'a> {
    backup_id: &'a str,
    tenant: &'a str,
    instance: &'a str,
    kind: &'a str,
    started_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
    files: u64,
    bytes: u64,
    stored_bytes: u64,
    compression: String,
    key_id: &'a str,
    node_name: Option<&'a str>,
    tags: &'a BTreeMap<String, String>,
}

impl<'a> Summary<'a> {
    fn of(m: &'a BackupMetadata) -> Self {
        Summary {
            backup_id: &m.backup_id,
            tenant: &m.tenant,
            instance: &m.instance,
            kind: &m.kind,
            started_at: m.started_at,
            finished_at: m.finished_at,
            files: m.totals.files,
            bytes: m.totals.bytes,
            stored_bytes: m.data.size,
            compression: format!("{}-{}", m.compression.algorithm, m.compression.level),
            key_id: &m.encryption.key_id,
            node_name: m.source.node_name.as_deref(),
            tags: &m.tags,
        }
    }
}

/// Tags as `k=v,k=v`, control characters escaped (tags are tenant text).
pub fn tags_text<'a>(tags: impl IntoIterator<Item = (&'a String, &'a String)>) -> String {
    let text = tags
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    couchvault::names::escape_control(&text).into_owned()
}

fn backup_create(ctx: &Context, args: CreateArgs, source: Source) -> Result<()> {
    let req = BackupRequest {
        backup_id: None,
        tenant: ctx.tenant.clone(),
        instance: args.instance.clone(),
        protection: args.protection,
        retention: args.retention,
        schedule: None,
        compression_level: args.compression_level,
        tags: args.tags.into_iter().collect(),
        allow_incomplete: args.allow_incomplete,
        couchdb: None,
    };
    let progress = Progress::default();
    let started = Instant::now();
    let outcome = with_progress("backup", &progress, ctx.json, || {
        ctx.vault.backup(&req, &source, &progress)
    })
    .context("backup failed; nothing was committed")?;
    let secs = started.elapsed().as_secs_f64();
    for note in &outcome.notes {
        eprintln!("couchvault: {note}");
    }
    let meta = &outcome.meta;
    let retention = outcome.retention.transpose().map_err(anyhow::Error::msg)?;
    if ctx.json {
        #[derive(Serialize)]
        struct Created<'a> {
            #[serde(flatten)]
            summary: Summary<'a>,
            #[serde(skip_serializing_if = "Option::is_none")]
            retention: Option<&'a Vec<couchvault::policy::floors::Verdict>>,
        }
        return print_json(&Created {
            summary: Summary::of(meta),
            retention: retention.as_ref(),
        });
    }
    println!(
        "backup {} committed: {}/{}, {} files, {} read, {} stored ({:.1}x smaller), {:.1}s ({}/s)",
        meta.backup_id,
        meta.tenant,
        meta.instance,
        meta.totals.files,
        bytes(meta.totals.bytes),
        bytes(meta.data.size),
        meta.totals.bytes as f64 / meta.data.size.max(1) as f64,
        secs,
        bytes((meta.totals.bytes as f64 / secs.max(1e-3)) as u64),
    );
    if !meta.incomplete.is_empty() {
        println!(
            "warning: backed up with --allow-incomplete; missing by the shard map:\n  {}",
            meta.incomplete.join("\n  ")
        );
    }
    if !meta.vanished.is_empty() {
        println!(
            "note: {} file(s) vanished during the copy (deleted databases): {}",
            meta.vanished.len(),
            meta.vanished.join(", ")
        );
    }
    if let Some(verdicts) = &retention {
        println!("retention:");
        super::policy::print_verdicts(verdicts);
    }
    Ok(())
}

#[derive(Serialize)]
struct ListRow<'a> {
    backup_id: &'a str,
    instance: &'a str,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    summary: Option<Summary<'a>>,
}

fn backup_list(ctx: &Context, instance: Option<String>) -> Result<()> {
    let listed = catalog::list(
        &*ctx.vault.store,
        &ctx.keyring,
        &ctx.tenant,
        instance.as_deref(),
    )?;
    if ctx.json {
        let rows: Vec<ListRow<'_>> = listed
            .iter()
            .map(|l| ListRow {
                backup_id: &l.backup_id,
                instance: &l.instance,
                status: if l.error.is_some() { "invalid" } else { "ok" },
                error: l.error.as_deref(),
                summary: l.metadata.as_ref().map(Summary::of),
            })
            .collect();
        return print_json(&rows);
    }
    if listed.is_empty() {
        println!(
            "no backups for tenant '{}' in {}",
            ctx.tenant,
            ctx.vault.store.describe()
        );
        return Ok(());
    }
    let rows: Vec<Vec<String>> = listed
        .iter()
        .map(|l| match &l.metadata {
            Some(m) => vec![
                l.backup_id.clone(),
                l.instance.clone(),
                m.finished_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                m.totals.files.to_string(),
                bytes(m.totals.bytes),
                bytes(m.data.size),
                tags_text(&m.tags),
                "ok".into(),
            ],
            None => vec![
                l.backup_id.clone(),
                l.instance.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                format!("INVALID: {}", l.error.as_deref().unwrap_or("")),
            ],
        })
        .collect();
    table(
        &[
            "ID",
            "INSTANCE",
            "FINISHED (UTC)",
            "FILES",
            "SIZE",
            "STORED",
            "TAGS",
            "STATUS",
        ],
        &rows,
    );
    Ok(())
}

fn backup_show(ctx: &Context, id: &str) -> Result<()> {
    let meta = catalog::load(&*ctx.vault.store, &ctx.keyring, &ctx.tenant, id)?;
    if ctx.json {
        return print_json(&meta);
    }
    let s = &meta.source;
    let rows = [
        ("backup", meta.backup_id.clone()),
        (
            "tenant/instance",
            format!("{}/{}", meta.tenant, meta.instance),
        ),
        ("kind", meta.kind.clone()),
        ("started", meta.started_at.to_rfc3339()),
        ("finished", meta.finished_at.to_rfc3339()),
        ("made by", meta.tool.clone()),
        ("host", s.hostname.clone().unwrap_or_else(|| "-".into())),
        (
            "node name",
            s.node_name.clone().unwrap_or_else(|| "-".into()),
        ),
        ("database_dir", s.database_dir.clone()),
        (
            "view_index_dir",
            s.view_index_dir.clone().unwrap_or_else(|| "(same)".into()),
        ),
        ("config", s.config_dir.clone().unwrap_or_else(|| "-".into())),
        (
            "files",
            format!("{} ({})", meta.totals.files, bytes(meta.totals.bytes)),
        ),
        (
            "stored",
            format!("{} in {}", bytes(meta.data.size), meta.data.object),
        ),
        ("stored sha256", meta.data.sha256.clone()),
        (
            "compression",
            format!(
                "{} level {}",
                meta.compression.algorithm, meta.compression.level
            ),
        ),
        (
            "encryption",
            format!(
                "{}, {} byte chunks, key {}",
                meta.encryption.suite, meta.encryption.chunk_size, meta.encryption.key_id
            ),
        ),
        ("tags", tags_text(&meta.tags)),
    ];
    for (k, v) in rows {
        println!("{k:<16} {v}");
    }
    println!();
    let files: Vec<Vec<String>> = meta
        .files
        .iter()
        .map(|f| {
            vec![
                f.path.clone(),
                f.size.to_string(),
                format!("{:o}", f.mode),
                f.sha256.clone(),
            ]
        })
        .collect();
    table(&["PATH", "SIZE", "MODE", "SHA256"], &files);
    Ok(())
}

fn backup_verify(ctx: &Context, id: &str) -> Result<()> {
    let meta = catalog::load(&*ctx.vault.store, &ctx.keyring, &ctx.tenant, id)?;
    let progress = Progress::default();
    let report = with_progress("verify", &progress, ctx.json, || {
        engine::verify(&*ctx.vault.store, &ctx.keyring, &meta, &progress)
    })
    .with_context(|| format!("backup {id} failed verification"))?;
    if ctx.json {
        return print_json(&report);
    }
    println!(
        "backup {} verified: {} chunk(s) authenticated, stream SHA-256 matches, {} files ({}) match their hashes",
        report.backup_id,
        report.chunks,
        report.files,
        bytes(report.bytes)
    );
    Ok(())
}

fn backup_delete(ctx: &Context, id: &str) -> Result<()> {
    let deleted = catalog::delete(&*ctx.vault.store, &ctx.tenant, id)?;
    if ctx.json {
        return print_json(&deleted);
    }
    if deleted.was_committed {
        println!(
            "backup {} of {} deleted",
            deleted.backup_id, deleted.instance
        );
    } else {
        println!(
            "removed the leftovers of uncommitted backup {} of {}",
            deleted.backup_id, deleted.instance
        );
    }
    Ok(())
}

fn restore(ctx: &Context, args: RestoreArgs) -> Result<()> {
    let Some(to) = args.to.clone() else {
        anyhow::bail!("--in-place restores a daemon's registered instance: add --server");
    };
    if args.rollback {
        let aside = ctx.vault.rollback(&to)?;
        if ctx.json {
            return print_json(&serde_json::json!({"target": to, "rolled_back_to": aside}));
        }
        println!(
            "rolled back {}: the previous data is back; the restored data was moved to {}",
            to.display(),
            aside.display()
        );
        return Ok(());
    }
    let id = args.id.clone().unwrap_or_default();
    let meta = catalog::load(&*ctx.vault.store, &ctx.keyring, &ctx.tenant, &id)?;
    let owner = restore_owner(
        args.owner
            .as_deref()
            .or(ctx.vault.config.restore.owner.as_deref()),
        &to,
    )?;
    let target_node = match (&args.node_name, &args.couchdb_config) {
        (Some(n), _) => Some(n.clone()),
        (None, Some(dir)) => Some(node_from_config(dir)?),
        (None, None) => None,
    };
    let req = RestoreRequest {
        opts: RestoreOptions {
            target: to,
            view_index_target: args.view_index_to,
            config_target: args.config_to,
            force: args.force,
            discard_old: args.discard_old,
            owner,
            sync: ctx.vault.config.restore.sync,
        },
        target_node,
        rename_node: args.rename_node,
        hooks: Hooks::from_config(&ctx.vault.config.restore),
        couchdb: None,
    };
    let progress = Progress::default();
    let outcome = with_progress("restore", &progress, ctx.json, || {
        ctx.vault.restore(&meta, &req, &progress)
    });
    let outcome = match outcome {
        Err(OpsError::PostCheck { checks, message }) => {
            if !ctx.json {
                print_checks(&checks);
            }
            anyhow::bail!("restore of backup {id} failed: {message}");
        }
        other => other.with_context(|| format!("restore of backup {id} failed"))?,
    };
    if ctx.json {
        return print_json(&outcome);
    }
    let report = &outcome.report;
    if report.already_restored {
        println!(
            "backup {} was already restored into {} (an earlier run completed its swap); nothing was moved",
            report.backup_id,
            report.target.display()
        );
    } else {
        println!(
            "restored backup {} into {}: {} files ({}) verified",
            report.backup_id,
            report.target.display(),
            report.files,
            bytes(report.bytes)
        );
    }
    if !outcome.renamed.is_empty() {
        println!(
            "rewrote the shard maps of {} database(s) for the new node name",
            outcome.renamed.len()
        );
    }
    if !outcome.checks.is_empty() {
        print_checks(&outcome.checks);
    }
    for old in &report.previous_kept {
        println!(
            "previous contents kept at {} (delete it when satisfied)",
            old.display()
        );
    }
    if outcome.checks.is_empty() {
        if let Some(node) = backup_node(&meta) {
            println!("the backup was taken on node {node}: start CouchDB with the same node name (or restore with --rename-node)");
        }
    }
    Ok(())
}

fn print_checks(checks: &[DbCheck]) {
    let rows: Vec<Vec<String>> = checks
        .iter()
        .map(|c| {
            vec![
                c.database.clone(),
                c.recorded.map_or("-".into(), |n| n.to_string()),
                c.now.map_or("-".into(), |n| n.to_string()),
                if c.ok {
                    "ok".into()
                } else {
                    format!("FAILED: {}", c.error.as_deref().unwrap_or(""))
                },
            ]
        })
        .collect();
    table(&["DATABASE", "DOCS AT BACKUP", "DOCS NOW", "CHECK"], &rows);
}

fn gc(ctx: &Context, args: GcArgs) -> Result<()> {
    let grace_text = args
        .grace
        .unwrap_or_else(|| ctx.vault.config.gc.grace.clone());
    let grace = parse_duration(&grace_text).map_err(|e| anyhow::anyhow!("--grace: {e}"))?;
    let report = catalog::gc(&*ctx.vault.store, grace, args.dry_run)?;
    if ctx.json {
        return print_json(&report);
    }
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    for r in &report.removed {
        println!("{verb} uncommitted {r}");
    }
    println!(
        "gc: {verb} {} leftover(s), {}; kept {} younger than {grace_text}",
        report.removed.len(),
        bytes(report.bytes_freed),
        report.kept_young.len()
    );
    Ok(())
}

fn key_add(mut ctx: Context) -> Result<()> {
    let id = ctx.keyring.add_key(&ctx.tenant)?.id.clone();
    ctx.keyring.save(false)?;
    if ctx.json {
        return print_json(&serde_json::json!({"tenant": ctx.tenant, "key_id": id}));
    }
    println!(
        "added key {id} for tenant '{}' to {}; it encrypts the tenant's new backups",
        ctx.tenant,
        ctx.keyring.path().display()
    );
    Ok(())
}

fn key_list(ctx: &Context) -> Result<()> {
    #[derive(Serialize)]
    struct Row<'a> {
        tenant: &'a str,
        key_id: &'a str,
        created: DateTime<Utc>,
        active: bool,
    }
    let rows: Vec<Row<'_>> = ctx
        .keyring
        .keys()
        .iter()
        .map(|k| Row {
            tenant: &k.tenant,
            key_id: &k.id,
            created: k.created,
            active: ctx.keyring.active(&k.tenant).is_ok_and(|a| a.id == k.id),
        })
        .collect();
    if ctx.json {
        return print_json(&rows);
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.tenant.to_string(),
                r.key_id.to_string(),
                r.created.to_rfc3339(),
                if r.active { "yes" } else { "" }.to_string(),
            ]
        })
        .collect();
    table(&["TENANT", "KEY ID", "CREATED", "ACTIVE"], &cells);
    Ok(())
}
