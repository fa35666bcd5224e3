//! How each answer is shown: one function per result, used alike by local mode and by the
//! daemon's client (the data is the same wire type either way). `--json` prints the value
//! itself.

use couchvault::format::{BackupMetadata, Stored};
use couchvault::ops::databases::{DatabasesReport, DbRestoreReport};
use couchvault::ops::keys::{KeyUsage, RewrapReport};
use couchvault::ops::restore::{DbCheck, RestoreOutcome};
use couchvault::ops::{Deleted, GcReport, RestoreReport, VerifyReport};
use couchvault::policy::floors::Verdict;
use couchvault::wire::{BackupRow, BackupSummary, ClusterSummary, RowStatus};

use super::output::{bytes, table};
use couchvault::names::escape_control;

/// Tags as `k=v,k=v`, control characters escaped (tags are tenant text).
pub fn tags_text<'a>(tags: impl IntoIterator<Item = (&'a String, &'a String)>) -> String {
    let text = tags
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    couchvault::names::escape_control(&text).into_owned()
}

pub fn backup_list(rows: &[BackupRow], tenant: &str, store: &str) {
    if rows.is_empty() {
        println!("no backups for tenant '{tenant}' in {store}");
        return;
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .flat_map(|r| match (&r.cluster, &r.summary, r.status) {
            (Some(c), _, _) => cluster_rows(c),
            (None, Some(m), RowStatus::Ok) => vec![vec![
                r.backup_id.clone(),
                r.instance.clone(),
                m.kind.to_string(),
                m.parent.clone().unwrap_or_else(|| "-".into()),
                m.finished_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                m.files.to_string(),
                bytes(m.bytes),
                bytes(m.stored_bytes),
                tags_text(&m.tags),
                "ok".into(),
            ]],
            _ => vec![vec![
                r.backup_id.clone(),
                r.instance.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                format!(
                    "{}: {}",
                    match r.status {
                        RowStatus::NoKey => "NO KEY",
                        _ => "INVALID",
                    },
                    r.error.as_deref().unwrap_or("")
                ),
            ]],
        })
        .collect();
    table(
        &[
            "ID",
            "INSTANCE",
            "KIND",
            "PARENT",
            "FINISHED (UTC)",
            "FILES",
            "SIZE",
            "STORED",
            "TAGS",
            "STATUS",
        ],
        &cells,
    );
}

/// A cluster backup's row, then a row per member under it.
fn cluster_rows(c: &ClusterSummary) -> Vec<Vec<String>> {
    let whole = vec![
        c.backup_id.clone(),
        c.instance.clone(),
        "cluster".into(),
        "-".into(),
        c.committed_at.format("%Y-%m-%d %H:%M:%S").to_string(),
        c.members
            .iter()
            .map(|m| m.shard_files)
            .sum::<usize>()
            .to_string(),
        bytes(c.bytes),
        bytes(c.stored_bytes),
        "-".into(),
        format!(
            "ok: {} databases on {} members",
            c.databases,
            c.members.len()
        ),
    ];
    let members = c.members.iter().map(|m| {
        vec![
            format!("└ {}", m.backup_id),
            m.instance.clone(),
            "member".into(),
            "-".into(),
            "-".into(),
            m.shard_files.to_string(),
            "-".into(),
            bytes(m.stored_bytes),
            "-".into(),
            format!("node {}", m.node),
        ]
    });
    std::iter::once(whole).chain(members).collect()
}

/// `backup create`'s line.
pub fn backup_created(m: &BackupSummary, secs: f64) {
    let parent = match &m.parent {
        Some(p) => format!(" {} of {p}", m.kind),
        None => String::new(),
    };
    println!(
        "backup {}{parent} committed: {}/{}, {} files, {} read, {} stored ({:.1}x smaller), {:.1}s ({}/s)",
        m.backup_id,
        m.tenant,
        m.instance,
        m.files,
        bytes(m.bytes),
        bytes(m.stored_bytes),
        m.bytes as f64 / m.stored_bytes.max(1) as f64,
        secs,
        bytes((m.bytes as f64 / secs.max(1e-3)) as u64),
    );
}

pub fn backup(meta: &BackupMetadata) {
    let s = &meta.source;
    let or_dash = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
    let rows = [
        ("backup", meta.backup_id.clone()),
        (
            "tenant/instance",
            format!("{}/{}", meta.tenant, meta.instance),
        ),
        ("kind", meta.kind.to_string()),
        (
            "parent",
            meta.parent
                .as_ref()
                .map_or("-".into(), |p| p.backup_id.clone()),
        ),
        (
            "prefix check",
            meta.prefix_check.map_or("-".into(), |c| c.to_string()),
        ),
        ("started", meta.started_at.to_rfc3339()),
        ("finished", meta.finished_at.to_rfc3339()),
        ("made by", meta.tool.clone()),
        ("host", or_dash(&s.hostname)),
        ("node name", or_dash(&s.node_name)),
        ("database_dir", s.database_dir.clone()),
        (
            "view_index_dir",
            s.view_index_dir.clone().unwrap_or_else(|| "(same)".into()),
        ),
        ("config", or_dash(&s.config_dir)),
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
            let stored = match &f.stored {
                Stored::Whole => "whole".to_string(),
                Stored::Tail { from, .. } => format!("tail from {from} (+{})", f.size - from),
                Stored::Unchanged => "unchanged".into(),
            };
            let stored = match &f.reason {
                Some(why) if meta.parent.is_some() => format!("{stored}: {why}"),
                _ => stored,
            };
            vec![
                f.path.clone(),
                f.size.to_string(),
                format!("{:o}", f.mode),
                f.sha256.clone().unwrap_or_else(|| "-".into()),
                stored,
            ]
        })
        .collect();
    table(&["PATH", "SIZE", "MODE", "SHA256", "STORED"], &files);
    for g in &meta.gone {
        println!("gone since the parent: {g}");
    }
}

pub fn verified(report: &VerifyReport) {
    let what = match report.backups {
        _ if !report.members.is_empty() => format!(
            "cluster backup {} ({} member backups)",
            report.backup_id,
            report.members.len()
        ),
        1 => format!("backup {}", report.backup_id),
        n => format!(
            "backup {} and the {} it depends on",
            report.backup_id,
            n - 1
        ),
    };
    let files = match report.rebuilt {
        true => format!(
            "{} files ({}) match their hashes",
            report.files,
            bytes(report.bytes)
        ),
        false => {
            "every stored piece matches its hash (add --chain to rebuild and check every file)"
                .into()
        }
    };
    println!(
        "{what} verified: {} chunk(s) authenticated, stream SHA-256 matches, {files}",
        report.chunks
    );
}

pub fn deleted(all: &[Deleted]) {
    for d in all {
        deleted_one(d);
    }
}

fn deleted_one(d: &Deleted) {
    if d.was_committed {
        println!("backup {} of {} deleted", d.backup_id, d.instance);
    } else {
        println!(
            "removed the leftovers of uncommitted backup {} of {}",
            d.backup_id, d.instance
        );
    }
}

pub fn gc(report: &GcReport, dry_run: bool, grace: &str) {
    let verb = if dry_run { "would remove" } else { "removed" };
    for r in &report.removed {
        println!("{verb} uncommitted {r}");
    }
    println!(
        "gc: {verb} {} leftover(s), {}; kept {} younger than {grace}",
        report.removed.len(),
        bytes(report.bytes_freed),
        report.kept_young.len()
    );
}

pub fn restored(outcome: &RestoreOutcome, backup_node: Option<&str>) {
    let report: &RestoreReport = &outcome.report;
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
        checks(&outcome.checks);
    }
    for old in &report.previous_kept {
        println!(
            "previous contents kept at {} (delete it when satisfied)",
            old.display()
        );
    }
    if outcome.checks.is_empty() {
        if let Some(node) = backup_node {
            println!("the backup was taken on node {node}: start CouchDB with the same node name (or restore with --rename-node)");
        }
    }
}

pub fn checks(checks: &[DbCheck]) {
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

pub fn verdicts(verdicts: &[Verdict]) {
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

pub fn policies(entries: &[couchvault::policy::registry::Entry], tenant: &str) {
    if entries.is_empty() {
        println!("no policies for tenant '{tenant}'");
        return;
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.name.clone(),
                e.kinds.clone(),
                e.added.format("%Y-%m-%d %H:%M").to_string(),
                e.sha256.chars().take(16).collect(),
                e.params.clone(),
            ]
        })
        .collect();
    table(&["NAME", "KINDS", "ADDED (UTC)", "SHA256", "PARAMS"], &rows);
}

pub fn policy_added(e: &couchvault::policy::registry::Entry) {
    println!(
        "added policy {} ({}) for tenant '{}'; use it with --{} {} or [policy] in the config",
        e.name,
        e.kinds,
        e.tenant,
        if e.kinds.contains("retention") {
            "retention"
        } else {
            "protection"
        },
        e.name
    );
}

pub fn keys(rows: &[KeyUsage]) {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.tenant.clone(),
                r.key_id.clone(),
                r.created.to_rfc3339(),
                if r.active { "yes" } else { "" }.to_string(),
                r.backups.to_string(),
                match &r.barbican {
                    Some(uuid) => format!("barbican {uuid}"),
                    None => "key ring".into(),
                },
            ]
        })
        .collect();
    table(
        &[
            "TENANT", "KEY ID", "CREATED", "ACTIVE", "BACKUPS", "HELD IN",
        ],
        &cells,
    );
}

pub fn rewrapped(report: &RewrapReport) {
    println!(
        "tenant '{}': {} backup(s) rewrapped with key {}, {} already were; data objects untouched",
        report.tenant,
        report.rewrapped.len(),
        report.key_id,
        report.already
    );
    for (id, why) in &report.failed {
        println!("  {id}: not rewrapped: {why}");
    }
}

pub fn databases(report: &DatabasesReport) {
    let cells: Vec<Vec<String>> = report
        .databases
        .iter()
        .map(|d| {
            vec![
                match d.node_local {
                    true => format!("{} (node-local)", escape_control(&d.name)),
                    false => escape_control(&d.name).into_owned(),
                },
                d.shards.to_string(),
                d.doc_count.to_string(),
                d.doc_del_count.to_string(),
                d.live_doc_count
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "-".into()),
                bytes(d.size),
                match d.problems {
                    0 => "ok".into(),
                    n => format!("DAMAGED ({n})"),
                },
            ]
        })
        .collect();
    table(
        &[
            "DATABASE",
            "SHARDS",
            "DOCS",
            "DELETED",
            "LIVE AT START",
            "SIZE",
            "STATUS",
        ],
        &cells,
    );
    for f in &report.files {
        for p in &f.problems {
            println!("  {}", escape_control(p));
        }
        if f.more_problems > 0 {
            println!(
                "  {}: {} more problem(s)",
                escape_control(&f.file),
                f.more_problems
            );
        }
    }
    for d in &report.damage {
        println!("  {}", escape_control(d));
    }
    for n in &report.notes {
        println!("note: {}", escape_control(n));
    }
    if let Some(v) = &report.verify {
        verified(v);
        let walked: Vec<_> = report
            .files
            .iter()
            .filter_map(|f| f.walked.as_ref())
            .collect();
        println!(
            "{} database file(s) read whole: {} documents ({} with conflicts), {} revision bodies, {} attachments ({})",
            walked.len(),
            walked.iter().map(|w| w.docs).sum::<u64>(),
            walked.iter().map(|w| w.conflicted).sum::<u64>(),
            walked.iter().map(|w| w.bodies).sum::<u64>(),
            walked.iter().map(|w| w.attachments).sum::<u64>(),
            bytes(walked.iter().map(|w| w.attachment_bytes).sum()),
        );
    }
}

/// A deep verify with damage fails, naming how much.
pub fn deep_outcome(report: &DatabasesReport) -> anyhow::Result<()> {
    match report.problems() {
        0 => Ok(()),
        n => anyhow::bail!(
            "backup {}: {n} problem(s) in its database files (listed above); restore from another backup",
            report.backup_id
        ),
    }
}

pub fn database_restored(r: &DbRestoreReport) {
    println!(
        "restored database '{}' of backup {} into '{}' at {}{}: {} documents from {} shard file(s), {} revision(s) written ({} the target had), {} attachment(s) ({}){}{}",
        escape_control(&r.database),
        r.backup_id,
        escape_control(&r.target),
        r.target_url,
        if r.created { " (created)" } else { "" },
        r.documents,
        r.shards,
        r.revisions_written,
        r.revisions_present,
        r.attachments,
        bytes(r.attachment_bytes),
        if r.security { ", _security set" } else { "" },
        match r.deleted_skipped {
            0 => String::new(),
            n => format!(", {n} deleted revision(s) left out (--include-deleted brings them)"),
        }
    );
    for x in &r.refused {
        println!("  refused: {}", escape_control(x));
    }
}
