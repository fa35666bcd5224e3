//! `couchvault cluster …`: cluster backups through the broker and the store, restored into
//! a new cluster through its API (docs/CLUSTERS.md).

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use couchvault::cluster::broker::Broker;
use couchvault::ops::cluster::{
    ClusterBackupAsk, ClusterRestoreReport, ClusterRestoreRequest, DaemonRestoreRequest,
    NodeRestoreRequest, TargetNode,
};
use couchvault::ops::restore::Hooks;
use couchvault::ops::{OpsError, Progress};

use super::args::{ClusterCommand, ClusterRestoreArgs};
use super::context::Context;
use super::output::{bytes, print_json, with_progress};
use super::render;

pub fn run(ctx: &Context, cmd: ClusterCommand) -> Result<()> {
    match cmd {
        ClusterCommand::Backup {
            instance,
            no_wait,
            retention,
            protection,
        } => {
            let ask = ClusterBackupAsk {
                tenant: ctx.tenant.clone(),
                instance,
                protection,
                wait: !no_wait,
            };
            backup(ctx, &ask, retention)
        }
        ClusterCommand::List { instance } => list(ctx, instance.as_deref()),
        ClusterCommand::Verify { instance, id } => {
            let progress = Progress::default();
            let report = with_progress("verify", &progress, ctx.json, || {
                ctx.vault
                    .verify_cluster_backup(&ctx.tenant, &instance, &id, &progress)
            })
            .with_context(|| format!("cluster backup {id} did not verify"))?;
            if ctx.json {
                return print_json(&report);
            }
            render::verified(&report);
            Ok(())
        }
        ClusterCommand::Delete { instance, id } => {
            let deleted = ctx
                .vault
                .delete_cluster_backup(&ctx.tenant, &instance, &id)?;
            if ctx.json {
                return print_json(&deleted);
            }
            println!(
                "deleted cluster backup {id} and its {} member backups",
                deleted.len()
            );
            Ok(())
        }
        ClusterCommand::Restore(args) => restore(ctx, args),
        ClusterCommand::Status => status(ctx),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

async fn connect(ctx: &Context) -> Result<Broker> {
    let cfg = &ctx.vault.config.cluster;
    let Some(url) = &cfg.broker else {
        bail!("no broker: set [cluster] broker (the NATS server the cluster's daemons share) in the config");
    };
    Ok(Broker::connect(url, cfg.timings()).await?)
}

fn backup(ctx: &Context, ask: &ClusterBackupAsk, retention: Option<String>) -> Result<()> {
    let progress = Progress::default();
    let instance = &ask.instance;
    let queued = ctx.vault.request_cluster_backup(ask, &progress)?;
    let (id, notes) = (queued.id, queued.notes);
    if !ctx.json {
        for note in &notes {
            println!("note: {note}");
        }
    }
    let Some(m) = queued.manifest else {
        if ctx.json {
            return print_json(
                &serde_json::json!({"backup_id": id, "queued": true, "notes": notes}),
            );
        }
        println!("cluster backup {id} queued");
        return Ok(());
    };
    let retention = retention.or_else(|| ctx.vault.config.policy.retention.clone());
    let verdicts = match &retention {
        Some(name) => Some(
            ctx.vault
                .cluster_retention(&ctx.tenant, name, instance, &progress)
                .with_context(|| {
                    format!("cluster backup {id} committed, but retention policy '{name}' failed; nothing was deleted by it")
                })?,
        ),
        None => None,
    };
    if ctx.json {
        return print_json(
            &serde_json::json!({"backup_id": id, "manifest": m, "retention": verdicts, "notes": notes}),
        );
    }
    let stored: u64 = m.members.iter().map(|x| x.stored_bytes).sum();
    println!(
        "cluster backup {id} committed: {} member backups, {} stored",
        m.members.len(),
        bytes(stored)
    );
    for v in verdicts.iter().flatten().filter(|v| !v.keep) {
        println!("retention deleted cluster backup {}: {}", v.id, v.reason);
    }
    Ok(())
}

fn list(ctx: &Context, instance: Option<&str>) -> Result<()> {
    let mut backups = Vec::new();
    for l in ctx.vault.cluster_listing(&ctx.tenant, instance)? {
        match l.manifest {
            Ok(m) => backups.push(m),
            // Never hidden: said on stderr, so that --json stays the manifests.
            Err(e) => eprintln!(
                "cluster backup {} of {}: INVALID: {e}",
                l.backup_id, l.instance
            ),
        }
    }
    if ctx.json {
        return print_json(&backups);
    }
    if backups.is_empty() {
        println!("no cluster backups");
    }
    for m in &backups {
        let stored: u64 = m.members.iter().map(|x| x.stored_bytes).sum();
        println!(
            "{}  {}  {} databases  {} stored",
            m.backup_id,
            m.instance,
            m.databases.len(),
            bytes(stored)
        );
        for member in &m.members {
            println!(
                "    {}  {}  {} shards",
                member.backup_id,
                member.node,
                member.shards.len()
            );
        }
    }
    Ok(())
}

fn restore(ctx: &Context, args: ClusterRestoreArgs) -> Result<()> {
    if args.via_daemons {
        return restore_via_daemons(ctx, args);
    }
    let nodes = args
        .nodes
        .iter()
        .map(|spec| match spec.split_once('=') {
            Some((name, dir)) if !name.is_empty() && !dir.is_empty() => Ok(TargetNode {
                name: name.to_string(),
                data_dir: PathBuf::from(dir),
            }),
            _ => bail!("--node {spec}: expected NAME=DIR (e.g. couchdb@db1=/var/lib/couchdb)"),
        })
        .collect::<Result<Vec<_>>>()?;
    if args.one_node {
        return restore_one_node(ctx, args, nodes);
    }
    let client = ctx.vault.couch_client_for(None)?.context(
        "a cluster restore writes the shard maps through the new cluster: set [couchdb] url (or COUCHDB_URL)",
    )?;
    let req = ClusterRestoreRequest {
        tenant: ctx.tenant.clone(),
        instance: args.instance,
        backup_id: args.id.clone(),
        nodes,
        n: args.n,
        replace: args.replace,
        owner: args.owner,
        staging: args.staging,
        settle: ctx.vault.config.restore.start_timeout.get(),
    };
    let progress = Progress::default();
    let report = with_progress("restore", &progress, ctx.json, || {
        ctx.vault.restore_cluster(&client, &req, &progress)
    });
    restored(ctx, &args.id, report)
}

/// `cluster restore --via-daemons`: the new cluster's daemons place their own node's files.
fn restore_via_daemons(ctx: &Context, args: ClusterRestoreArgs) -> Result<()> {
    let client = ctx.vault.couch_client_for(None)?.context(
        "a cluster restore writes the shard maps through the new cluster: set [couchdb] url (or COUCHDB_URL)",
    )?;
    let req = DaemonRestoreRequest {
        tenant: ctx.tenant.clone(),
        instance: args.instance,
        backup_id: args.id.clone(),
        n: args.n,
        replace: args.replace,
        settle: ctx.vault.config.restore.start_timeout.get(),
    };
    let progress = Progress::default();
    let report = with_progress("restore", &progress, ctx.json, || {
        ctx.vault
            .restore_cluster_via_daemons(&client, &req, &progress)
    });
    restored(ctx, &args.id, report)
}

/// A cluster restore's outcome: its checks, then a line (or the report as JSON).
fn restored(ctx: &Context, id: &str, report: Result<ClusterRestoreReport, OpsError>) -> Result<()> {
    let report = match report {
        Err(OpsError::PostCheck { checks, message }) => {
            if !ctx.json {
                render::checks(&checks);
            }
            bail!("{message}");
        }
        other => other.with_context(|| format!("restore of cluster backup {id} failed"))?,
    };
    if ctx.json {
        return print_json(&report);
    }
    render::checks(&report.checks);
    let nodes: std::collections::BTreeSet<&String> = report
        .placement
        .values()
        .flat_map(|r| r.values().flatten())
        .collect();
    println!(
        "restored cluster backup {} from {} members: {} shard files ({}) on {} nodes{}",
        report.backup_id,
        report.members,
        report.files,
        bytes(report.bytes),
        nodes.len(),
        match report.replaced.is_empty() {
            true => String::new(),
            false => format!("; replaced {}", report.replaced.join(", ")),
        }
    );
    Ok(())
}

fn restore_one_node(ctx: &Context, args: ClusterRestoreArgs, nodes: Vec<TargetNode>) -> Result<()> {
    let [node] = <[TargetNode; 1]>::try_from(nodes).map_err(|_| {
        anyhow::anyhow!("--one-node restores one node: give exactly one --node NAME=DIR")
    })?;
    if args.n.is_some() || args.replace {
        bail!("--n and --replace are for a restore into a new cluster, not --one-node");
    }
    let client = ctx.vault.couch_client_for(None)?;
    let cfg = &ctx.vault.config.restore;
    let req = NodeRestoreRequest {
        tenant: ctx.tenant.clone(),
        instance: args.instance,
        backup_id: args.id.clone(),
        node,
        owner: args.owner,
        staging: args.staging,
        hooks: Hooks::from_config(cfg),
        settle: cfg.start_timeout.get(),
    };
    let progress = Progress::default();
    let report = match with_progress("restore", &progress, ctx.json, || {
        ctx.vault
            .restore_cluster_node(client.as_ref(), &req, &progress)
    }) {
        Err(OpsError::PostCheck { checks, message }) => {
            if !ctx.json {
                render::checks(&checks);
            }
            bail!("{message}");
        }
        other => other.with_context(|| {
            format!(
                "restore of node {} from cluster backup {} failed",
                req.node.name, args.id
            )
        })?,
    };
    if ctx.json {
        return print_json(&report);
    }
    println!(
        "restored node {} from cluster backup {}: {} shard files ({}){}",
        report.node,
        report.backup_id,
        report.files,
        bytes(report.bytes),
        match &report.previous {
            Some(p) => format!(
                "; its previous files are in {} (delete it once the node is healthy)",
                p.display()
            ),
            None => String::new(),
        }
    );
    Ok(())
}

fn status(ctx: &Context) -> Result<()> {
    let (nodes, leader) = runtime()?.block_on(async {
        let broker = connect(ctx).await?;
        Ok::<_, anyhow::Error>((broker.nodes().await?, broker.leader().await?))
    })?;
    if ctx.json {
        return print_json(&serde_json::json!({"nodes": nodes, "coordinator": leader}));
    }
    println!("coordinator: {}", leader.as_deref().unwrap_or("none"));
    for n in &nodes {
        println!("{}  {}", n.node, n.daemon);
    }
    Ok(())
}
