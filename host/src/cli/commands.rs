//! One function per local command: resolve the context, call the service layer (`ops`),
//! print the result with `render` (the same printers the daemon's client uses).

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, Result};
use couchvault::config::Config;
use couchvault::couchdb::http::{CouchClient, Password};
use couchvault::couchdb::Source;
use couchvault::keyring::barbican::Barbican;
use couchvault::keyring::KeyRing;
use couchvault::ops::databases::DbRestoreRequest;
use couchvault::ops::keys::RewrapProgress;
use couchvault::ops::restore::{
    backup_node, node_from_config, Hooks, RestoreRequest, RestoreTarget,
};
use couchvault::ops::{BackupRequest, OpsError, Progress};
use couchvault::wire::{BackupCreated, BackupSummary};

use super::args::{
    BackupCommand, Cli, Command, CreateArgs, GcArgs, KeyCommand, PolicyCommand, RestoreArgs,
};
use super::context::Context;
use super::output::{print_json, with_progress};
use super::render;

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
    // Writes files only: no state, no store.
    if let Command::Policy(PolicyCommand::New {
        name,
        lang,
        world,
        dir,
    }) = &cli.command
    {
        let dir = super::starter::new(name, *lang, *world, dir.clone())?;
        println!(
            "wrote a {} starter for policy '{name}' in {} (see its README.md to build it)",
            lang.title(),
            dir.display()
        );
        return Ok(());
    }
    // A bad source is reported before first use creates anything.
    let source = match &cli.command {
        Command::Backup(BackupCommand::Create(args)) => {
            if args.source.is_empty() {
                // A usage error, as clap reports one (exit 2): only a daemon knows instances.
                use clap::CommandFactory;
                Cli::command()
                    .error(
                        clap::error::ErrorKind::MissingRequiredArgument,
                        "give --couchdb-config or --data-dir (or, with --server, name an instance the daemon has registered)",
                    )
                    .exit();
            }
            Some(Source::discover(&args.source)?)
        }
        _ => None,
    };
    // `key add` names a key ring that does not exist yet: it creates it.
    if let Command::Key(KeyCommand::Add(place)) = &cli.command {
        if let Some(path) = cli.keyring.clone().or_else(|| config.keyring.clone()) {
            if !path.exists() {
                let tenant = cli.tenant.clone().unwrap_or_else(|| "default".into());
                return key_init(&path, &tenant, place.barbican, &config, cli.json);
            }
        }
    }
    let ctx = Context::open(&cli, config)?;
    match cli.command {
        Command::Backup(BackupCommand::Create(args)) => {
            backup_create(&ctx, args, source.expect("discovered above"))
        }
        Command::Backup(BackupCommand::List { instance }) => backup_list(&ctx, instance),
        Command::Backup(BackupCommand::Show { id }) => backup_show(&ctx, &id),
        Command::Backup(BackupCommand::Verify {
            id,
            chain: _,
            deep: true,
        }) => backup_databases(&ctx, &id, true),
        Command::Backup(BackupCommand::Verify { id, chain, .. }) => backup_verify(&ctx, &id, chain),
        Command::Backup(BackupCommand::Databases { id }) => backup_databases(&ctx, &id, false),
        Command::Backup(BackupCommand::Delete {
            id,
            with_dependents,
        }) => backup_delete(&ctx, &id, with_dependents),
        Command::Restore(args) if args.database.is_some() => restore_database(&ctx, args),
        Command::Restore(args) => restore(&ctx, args),
        Command::Gc(args) => gc(&ctx, args),
        Command::Key(KeyCommand::Add(place)) => key_add(ctx, place.barbican),
        Command::Key(KeyCommand::List) => key_list(&ctx),
        Command::Key(KeyCommand::Rotate(place)) => key_rewrap(ctx, Some(place.barbican)),
        Command::Key(KeyCommand::Rewrap) => key_rewrap(ctx, None),
        Command::Key(KeyCommand::Retire { id }) => key_retire(ctx, &id),
        Command::Policy(cmd) => super::policy::run(&ctx, cmd),
        Command::Cluster(cmd) => super::cluster::run(&ctx, cmd),
        Command::Daemon(_)
        | Command::Instance(_)
        | Command::Schedule(_)
        | Command::Job(_)
        | Command::Token(_) => {
            unreachable!("daemon commands are dispatched above")
        }
    }
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
        kind: args.kind.kind(),
        prefix_check: args.kind.prefix_check(),
        cluster_member: None,
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
    let retention = outcome.retention.transpose()?;
    let created = BackupCreated {
        summary: BackupSummary::of(meta),
        retention,
    };
    if ctx.json {
        return print_json(&created);
    }
    render::backup_created(&created.summary, secs);
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
    if let Some(verdicts) = &created.retention {
        println!("retention:");
        render::verdicts(verdicts);
    }
    Ok(())
}

fn backup_list(ctx: &Context, instance: Option<String>) -> Result<()> {
    let rows = ctx.vault.list_backups(&ctx.tenant, instance.as_deref())?;
    if ctx.json {
        return print_json(&rows);
    }
    render::backup_list(&rows, &ctx.tenant, &ctx.vault.store.describe());
    Ok(())
}

fn backup_show(ctx: &Context, id: &str) -> Result<()> {
    let meta = ctx.vault.show_backup(&ctx.tenant, id)?;
    if ctx.json {
        return print_json(&meta);
    }
    render::backup(&meta);
    Ok(())
}

fn backup_verify(ctx: &Context, id: &str, chain: bool) -> Result<()> {
    let progress = Progress::default();
    let report = with_progress("verify", &progress, ctx.json, || {
        ctx.vault.verify(&ctx.tenant, id, chain, &progress)
    })
    .with_context(|| format!("backup {id} failed verification"))?;
    if ctx.json {
        return print_json(&report);
    }
    render::verified(&report);
    Ok(())
}

/// `backup databases` (headers), or `backup verify --deep` (everything; damage fails it).
fn backup_databases(ctx: &Context, id: &str, deep: bool) -> Result<()> {
    let progress = Progress::default();
    let label = if deep {
        "deep verify"
    } else {
        "reading databases"
    };
    let report = with_progress(label, &progress, ctx.json, || match deep {
        true => ctx.vault.verify_deep(&ctx.tenant, id, &progress),
        false => ctx.vault.databases(&ctx.tenant, id, &progress),
    })
    .with_context(|| format!("backup {id} failed verification"))?;
    if ctx.json {
        print_json(&report)?;
    } else {
        render::databases(&report);
    }
    render::deep_outcome(&report)
}

fn backup_delete(ctx: &Context, id: &str, with_dependents: bool) -> Result<()> {
    let deleted = ctx.vault.delete(&ctx.tenant, id, with_dependents)?;
    if ctx.json {
        return print_json(&deleted);
    }
    render::deleted(&deleted);
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
    let meta = ctx.vault.show_backup(&ctx.tenant, &id)?;
    let target_node = match (&args.node_name, &args.couchdb_config) {
        (Some(n), _) => Some(n.clone()),
        (None, Some(dir)) => Some(node_from_config(dir)?),
        (None, None) => None,
    };
    let req = RestoreRequest {
        opts: ctx.vault.restore_options(RestoreTarget {
            target: to,
            view_index_target: args.view_index_to,
            config_target: args.config_to,
            force: args.force,
            discard_old: args.discard_old,
            owner: args.owner,
        })?,
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
                render::checks(&checks);
            }
            anyhow::bail!("restore of backup {id} failed: {message}");
        }
        other => other.with_context(|| format!("restore of backup {id} failed"))?,
    };
    if ctx.json {
        return print_json(&outcome);
    }
    render::restored(&outcome, backup_node(&meta));
    Ok(())
}

/// `restore ID --database NAME --to-url URL`.
fn restore_database(ctx: &Context, args: RestoreArgs) -> Result<()> {
    let (Some(id), Some(database), Some(url)) = (&args.id, &args.database, &args.to_url) else {
        anyhow::bail!(
            "restore --database needs a backup id and --to-url (or --server, to push into the backup's registered instance)"
        );
    };
    if CouchClient::url_has_credentials(url) {
        anyhow::bail!(
            "--to-url must not hold credentials (they would be on the command line): set COUCHDB_USER and COUCHDB_PASSWORD, or [couchdb] user and password"
        );
    }
    let c = &ctx.vault.config.couchdb;
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let user = env("COUCHDB_USER").or_else(|| c.user.clone());
    let password = env("COUCHDB_PASSWORD")
        .or_else(|| c.password.clone())
        .map(Password);
    let req = DbRestoreRequest {
        database: database.clone(),
        target_name: args.as_name.clone(),
        couchdb: CouchClient::new(url, user, password)?,
        include_deleted: args.include_deleted,
    };
    let progress = Progress::default();
    let report = with_progress("restoring database", &progress, ctx.json, || {
        ctx.vault.restore_database(&ctx.tenant, id, &req, &progress)
    })
    .with_context(|| format!("restore of database '{database}' from backup {id} failed"))?;
    if ctx.json {
        print_json(&report)?;
    } else {
        render::database_restored(&report);
    }
    if !report.refused.is_empty() {
        anyhow::bail!(
            "{} revision(s) were refused by the target (listed above)",
            report.refused.len()
        );
    }
    Ok(())
}

fn gc(ctx: &Context, args: GcArgs) -> Result<()> {
    let grace = args.grace.unwrap_or(ctx.vault.config.gc.grace);
    let report = ctx.vault.gc(grace.get(), args.dry_run)?;
    if ctx.json {
        return print_json(&report);
    }
    render::gc(&report, args.dry_run, &grace.to_string());
    Ok(())
}

fn key_add(mut ctx: Context, in_barbican: bool) -> Result<()> {
    let _lock = ctx.keyring.lock_for_change()?;
    let key = ctx.keyring.add_key(&ctx.tenant, in_barbican)?;
    let (id, barbican) = (key.id.clone(), key.barbican.clone());
    ctx.keyring.save(false)?;
    if ctx.json {
        return print_json(
            &serde_json::json!({"tenant": ctx.tenant, "key_id": id, "barbican": barbican}),
        );
    }
    println!(
        "added key {id}{} for tenant '{}' to {}; it encrypts the tenant's new backups",
        held_in(barbican.as_deref()),
        ctx.tenant,
        ctx.keyring.path().display()
    );
    Ok(())
}

/// " (held in Barbican secret UUID)" for a key held there.
fn held_in(barbican: Option<&str>) -> String {
    barbican
        .map(|uuid| format!(" (held in Barbican secret {uuid})"))
        .unwrap_or_default()
}

fn key_list(ctx: &Context) -> Result<()> {
    let rows = ctx.vault.key_usage(&ctx.keyring)?;
    if ctx.json {
        return print_json(&rows);
    }
    render::keys(&rows);
    Ok(())
}

/// `key add` where the key ring does not exist yet: creates it, with the tenant's key.
fn key_init(
    path: &Path,
    tenant: &str,
    in_barbican: bool,
    config: &Config,
    json: bool,
) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the key ring's directory {}", dir.display()))?;
    }
    let barbican = in_barbican.then(|| {
        Arc::new(Barbican::from_config(&config.barbican, &|var| {
            std::env::var(var).ok().filter(|v| !v.is_empty())
        }))
    });
    let ring = KeyRing::create_with(path, tenant, barbican)?;
    let key = ring.active(tenant)?;
    if json {
        return print_json(&serde_json::json!({
            "tenant": tenant, "key_id": key.id, "barbican": key.barbican, "created_keyring": path
        }));
    }
    println!(
        "created key ring {} (mode 0600) with key {}{} for tenant '{tenant}'; keep a copy somewhere safe: losing it loses every backup made with it",
        path.display(),
        key.id,
        held_in(key.barbican.as_deref()),
    );
    Ok(())
}

/// `key rotate` (`rotate` = Some(in Barbican)) or `key rewrap`, with progress on stderr.
fn key_rewrap(mut ctx: Context, rotate: Option<bool>) -> Result<()> {
    let tenant = ctx.tenant.clone();
    // A line that updates on a terminal; otherwise a line per hundred backups.
    let tty = std::io::stderr().is_terminal();
    let progress = |p: &RewrapProgress| {
        let last = p.done == p.total;
        if ctx.json || !(last || p.done % if tty { 10 } else { 100 } == 0) {
            return;
        }
        let line = format!("rewrapping: {}/{} backup(s) looked at", p.done, p.total);
        match (tty, last) {
            (true, false) => eprint!("\r{line}"),
            (true, true) => eprintln!("\r{line}"),
            (false, _) => eprintln!("{line}"),
        }
    };
    let report = match rotate {
        Some(in_barbican) => {
            let r = ctx
                .vault
                .rotate(&mut ctx.keyring, &tenant, in_barbican, &progress)?;
            let key = ctx.keyring.active(&tenant)?;
            if !ctx.json {
                println!(
                    "new active key {}{} for tenant '{tenant}'",
                    key.id,
                    held_in(key.barbican.as_deref())
                );
            }
            r
        }
        None => ctx.vault.rewrap(&ctx.keyring, &tenant, &progress)?,
    };
    if ctx.json {
        print_json(&report)?;
    } else {
        render::rewrapped(&report);
    }
    if !report.failed.is_empty() {
        anyhow::bail!(
            "{} backup(s) of tenant '{}' are not wrapped with the active key; fix what is named above and run `couchvault key rewrap --tenant {}` again",
            report.failed.len(),
            report.tenant,
            report.tenant
        );
    }
    Ok(())
}

fn key_retire(mut ctx: Context, id: &str) -> Result<()> {
    let tenant = ctx.tenant.clone();
    ctx.vault.retire_key(&mut ctx.keyring, &tenant, id)?;
    if ctx.json {
        return print_json(&serde_json::json!({"tenant": tenant, "retired": id}));
    }
    println!(
        "retired key {id} of tenant '{tenant}': removed from {}",
        ctx.keyring.path().display()
    );
    Ok(())
}
