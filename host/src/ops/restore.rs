//! A CouchDB-aware restore around the engine's: the node-name check before anything is
//! downloaded, the stop hook just before the swap, the start hook, the shard-map rewrite
//! for a new node name, and the post-restore check of every database. And its undo,
//! `restore --rollback`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::{restore_owner, OpsError, Result, Vault};
use crate::catalog;
use crate::couchdb::http::{rename_node, CouchClient};
pub use crate::engine::RestoreReport;
use crate::engine::{self, Progress, RestoreOptions};
use crate::format::BackupMetadata;

/// What to restore and how the target node is named.
pub struct RestoreRequest {
    pub opts: RestoreOptions,
    /// The node name the restored CouchDB runs as (`--node-name`, or from its `vm.args`).
    pub target_node: Option<String>,
    /// Rewrite every database's shard map for `target_node` after CouchDB starts.
    pub rename_node: bool,
    /// The stop/start hooks to run. The daemon runs the config's only for the admin, a
    /// registered instance's for an in-place restore, none for a tenant's restore into its
    /// restore root (it must not stop the node's CouchDB).
    pub hooks: Hooks,
    /// The target's CouchDB (a registered instance's); None: the config's and environment's.
    pub couchdb: Option<crate::config::CouchDbConfig>,
}

/// Commands run (with `sh -c`) just before the swap and after it.
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    pub stop: Option<String>,
    pub start: Option<String>,
}

impl Hooks {
    pub fn from_config(c: &crate::config::RestoreConfig) -> Hooks {
        Hooks {
            stop: c.stop_command.clone(),
            start: c.start_command.clone(),
        }
    }
}

/// One database after the restore.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DbCheck {
    pub database: String,
    /// doc_count when the backup started, when recorded.
    pub recorded: Option<u64>,
    pub now: Option<u64>,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreOutcome {
    #[serde(flatten)]
    pub report: RestoreReport,
    /// Databases whose shard map was rewritten for the new node name.
    pub renamed: Vec<String>,
    /// The post-restore check, when CouchDB's URL is configured.
    pub checks: Vec<DbCheck>,
}

/// The node a backup was taken on: what CouchDB said, else `vm.args`.
pub fn backup_node(meta: &BackupMetadata) -> Option<&str> {
    meta.couchdb
        .as_ref()
        .and_then(|c| c.node_name.as_deref())
        .or(meta.source.node_name.as_deref())
}

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{what} command could not start: {source}")]
    Spawn {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{what} command `{command}` failed ({status}): {tail}")]
    Failed {
        what: &'static str,
        command: String,
        status: std::process::ExitStatus,
        /// The last lines it wrote to stderr.
        tail: String,
    },
}

/// Runs a hook with `sh -c`. CouchDB credentials are taken out of its environment, and
/// nothing secret is ever in its command line.
pub fn run_hook(what: &'static str, command: &str) -> std::result::Result<(), HookError> {
    tracing::info!(hook = what, command, "running hook");
    let out = Command::new("sh")
        .arg("-c")
        .arg(command)
        .env_remove("COUCHDB_PASSWORD")
        .env_remove("COUCHDB_URL")
        .env_remove("COUCHVAULT_TOKEN")
        .output()
        .map_err(|source| HookError::Spawn { what, source })?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
    Err(HookError::Failed {
        what,
        command: command.to_string(),
        status: out.status,
        tail: tail.into_iter().rev().collect::<Vec<_>>().join(" / "),
    })
}

/// Where and how to restore, as a caller gives it; `Vault::restore_options` resolves the
/// owner and the config's settings.
#[derive(Debug, Clone, Default)]
pub struct RestoreTarget {
    pub target: PathBuf,
    pub view_index_target: Option<PathBuf>,
    pub config_target: Option<PathBuf>,
    pub force: bool,
    pub discard_old: bool,
    /// `USER:GROUP`; None: `restore.owner`, else the existing target's, else couchdb's.
    pub owner: Option<String>,
}

impl Vault {
    /// The engine's options for `t`: the owner resolved, `restore.sync` applied.
    pub fn restore_options(&self, t: RestoreTarget) -> Result<RestoreOptions> {
        let owner = restore_owner(
            t.owner.as_deref().or(self.config.restore.owner.as_deref()),
            &t.target,
        )?;
        Ok(RestoreOptions {
            target: t.target,
            view_index_target: t.view_index_target,
            config_target: t.config_target,
            force: t.force,
            discard_old: t.discard_old,
            owner,
            sync: self.config.restore.sync,
        })
    }

    /// Loads a tenant's backup and restores it ([`Vault::restore`]).
    pub fn restore_backup(
        &self,
        tenant: &str,
        id: &str,
        req: &RestoreRequest,
        progress: &Progress,
    ) -> Result<RestoreOutcome> {
        let meta = self.show_backup(tenant, id)?;
        self.restore(&meta, req, progress)
    }

    /// Restores `meta` with the node check, hooks and post-restore check around the
    /// engine's staged, verified swap. A failed check leaves the restored data in place,
    /// the previous data aside, and says how to roll back.
    pub fn restore(
        &self,
        meta: &BackupMetadata,
        req: &RestoreRequest,
        progress: &Progress,
    ) -> Result<RestoreOutcome> {
        let client = self.couch_client_for(req.couchdb.as_ref())?;
        let from = backup_node(meta);
        let renaming = match (from, req.target_node.as_deref()) {
            (Some(b), Some(t)) if b != t => {
                if !req.rename_node {
                    return Err(OpsError::Refused(format!(
                        "backup {} was taken on node '{b}' but the target node is '{t}': CouchDB would answer 500 \"No DB shards could be opened\" for every database. Either run the target as '{b}' (-name in vm.args), or pass --rename-node to rewrite every database's shard map for '{t}' after CouchDB starts",
                        meta.backup_id
                    )));
                }
                if client.is_none() {
                    return Err(OpsError::Refused(
                        "--rename-node needs the target CouchDB's URL ([couchdb] url or COUCHDB_URL) to rewrite the shard maps".into(),
                    ));
                }
                // The rename talks to the restored CouchDB: something must start it, or the
                // restore would swap the data in and then wait for nobody.
                if req.hooks.start.is_none() {
                    return Err(OpsError::Refused(
                        "--rename-node rewrites the shard maps through the restored CouchDB once it is up, and nothing would start it: set restore.start_command (and stop_command), e.g. `systemctl start couchdb`, or restore without --rename-node and run the target as the backup's node".into(),
                    ));
                }
                Some((b.to_string(), t.to_string()))
            }
            // A cluster member's data without a node name of its own: the target must be
            // one of the nodes its shard maps name.
            (None, Some(t))
                if !meta.source.shard_map_nodes.is_empty()
                    && !meta.source.shard_map_nodes.iter().any(|n| n == t) =>
            {
                return Err(OpsError::Refused(format!(
                    "backup {} holds shards placed on {} by its shard maps, but the target node is '{t}': CouchDB would answer 500 \"No DB shards could be opened\". Run the target as one of those nodes (-name in vm.args); --rename-node needs a backup of one node",
                    meta.backup_id,
                    meta.source
                        .shard_map_nodes
                        .iter()
                        .map(|n| format!("'{n}'"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            _ => None,
        };
        let cfg = &self.config.restore;
        let (stop_command, start_command) = (req.hooks.stop.as_ref(), req.hooks.start.as_ref());
        // With a check to come, the old data stays until it passes.
        let checking = client.is_some() && (start_command.is_some() || renaming.is_some());
        let mut opts = req.opts.clone();
        if checking {
            opts.discard_old = false;
        }
        let keyring = self.keyring()?;
        let stop = || match stop_command {
            Some(c) => run_hook("stop", c).map_err(Into::into),
            None => Ok(()),
        };
        // An incremental is rebuilt from its chain: every backup it depends on, checked.
        let chain = catalog::chain(&*self.store, &keyring, meta.clone())?;
        let report = engine::restore_with(&*self.store, &keyring, &chain, &opts, progress, &stop)?;
        let rollback_hint = |why: String| {
            OpsError::AfterSwap(format!(
                "{why}; the restored data of backup {} is in {}; {}",
                meta.backup_id,
                report.target.display(),
                match report.previous_kept.first() {
                    Some(old) => format!(
                        "the previous data is kept at {}: undo with `couchvault restore --rollback --to {}`",
                        old.display(),
                        report.target.display()
                    ),
                    None => "there was no previous data to go back to".into(),
                }
            ))
        };
        if let Some(c) = start_command {
            run_hook("start", c).map_err(|e| rollback_hint(e.to_string()))?;
        }
        let mut outcome = RestoreOutcome {
            report: report.clone(),
            renamed: Vec::new(),
            checks: Vec::new(),
        };
        if let (Some(client), true) = (&client, start_command.is_some() || renaming.is_some()) {
            let timeout = cfg.start_timeout.get();
            client
                .wait_up(timeout)
                .map_err(|e| rollback_hint(e.to_string()))?;
            if let Some((from, to)) = &renaming {
                outcome.renamed =
                    rename_all(client, from, to).map_err(|e| rollback_hint(e.to_string()))?;
            }
            outcome.checks = check_databases(client, meta);
            let failed = failed_checks(&outcome.checks);
            if !failed.is_empty() {
                return Err(OpsError::PostCheck {
                    checks: outcome.checks,
                    message: rollback_hint(format!(
                        "the post-restore check failed for {} database(s): {}",
                        failed.len(),
                        failed.join("; ")
                    ))
                    .to_string(),
                });
            }
        }
        if checking && req.opts.discard_old {
            for old in &outcome.report.previous_kept {
                std::fs::remove_dir_all(old).map_err(|e| {
                    OpsError::io(format!("removing the previous data {}", old.display()), e)
                })?;
            }
            outcome.report.previous_kept.clear();
        }
        Ok(outcome)
    }

    /// Undoes the last restore into `target`: puts back the newest
    /// `<target>.couchvault-old-*` (stopping and starting CouchDB with the hooks) and keeps
    /// the replaced data at `<target>.couchvault-rolled-back-<id>`. Returns that path.
    pub fn rollback(&self, target: &Path) -> Result<PathBuf> {
        let target = std::path::absolute(target)
            .map_err(|e| OpsError::io(target.display().to_string(), e))?;
        let (parent, name) = match (target.parent(), target.file_name()) {
            (Some(p), Some(n)) => (p, n.to_string_lossy().into_owned()),
            _ => {
                return Err(OpsError::Refused(format!(
                    "{} has no parent",
                    target.display()
                )))
            }
        };
        let prefix = format!("{name}.couchvault-old-");
        let mut olds: Vec<String> = std::fs::read_dir(parent)
            .map_err(|e| OpsError::io(parent.display().to_string(), e))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&prefix))
            .collect();
        olds.sort();
        let Some(old) = olds.pop() else {
            return Err(OpsError::Refused(format!(
                "nothing to roll back to: no {}/{prefix}* (a restore with --force keeps the previous data there unless --discard-old)",
                parent.display()
            )));
        };
        let id = &old[prefix.len()..];
        let aside = parent.join(format!("{name}.couchvault-rolled-back-{id}"));
        let cfg = &self.config.restore;
        if let Some(c) = &cfg.stop_command {
            run_hook("stop", c)?;
        }
        let io = |what: &str, e: std::io::Error| OpsError::io(what, e);
        // A restore killed between its two renames leaves no target: nothing to move aside.
        let had_target = target.exists();
        if had_target {
            std::fs::rename(&target, &aside)
                .map_err(|e| io("moving the restored data aside", e))?;
        }
        if let Err(e) = std::fs::rename(parent.join(&old), &target) {
            if had_target {
                let _ = std::fs::rename(&aside, &target);
            }
            return Err(io("putting the previous data back", e));
        }
        let _ = std::fs::remove_file(engine::restore::journal_path(&target));
        if let Some(c) = &cfg.start_command {
            run_hook("start", c)?;
        }
        Ok(aside)
    }
}

/// Rewrites every database's shard map from node `from` to `to`. Returns the databases
/// changed.
fn rename_all(client: &CouchClient, from: &str, to: &str) -> Result<Vec<String>> {
    let mut renamed = Vec::new();
    for db in client.all_dbs()? {
        let doc = client.shard_map(&db)?;
        let new = rename_node(&doc, from, to);
        if new != doc {
            client.put_shard_map(&db, &new)?;
            renamed.push(db);
        }
    }
    Ok(renamed)
}

/// Every database recorded at backup time must open with at least its recorded doc count;
/// without a record, every database CouchDB lists must open.
/// `database: why` of each check that failed.
pub fn failed_checks(checks: &[DbCheck]) -> Vec<String> {
    checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{}: {}", c.database, c.error.as_deref().unwrap_or("failed")))
        .collect()
}

fn check_databases(client: &CouchClient, meta: &BackupMetadata) -> Vec<DbCheck> {
    let recorded: Vec<(String, Option<u64>)> = match meta.couchdb.as_ref().filter(|c| c.reachable) {
        Some(live) => live
            .databases
            .iter()
            .map(|(db, s)| (db.clone(), Some(s.doc_count)))
            .collect(),
        None => client
            .all_dbs()
            .unwrap_or_default()
            .into_iter()
            .map(|db| (db, None))
            .collect(),
    };
    recorded
        .into_iter()
        .map(|(db, want)| match client.doc_count(&db) {
            Ok(now) => {
                let ok = want.is_none_or(|w| now >= w);
                DbCheck {
                    error: (!ok).then(|| {
                        format!(
                            "{now} documents, fewer than the {} recorded",
                            want.unwrap_or(0)
                        )
                    }),
                    database: db,
                    recorded: want,
                    now: Some(now),
                    ok,
                }
            }
            Err(e) => DbCheck {
                database: db,
                recorded: want,
                now: None,
                ok: false,
                error: Some(e.to_string()),
            },
        })
        .collect()
}

/// The node name in a CouchDB config directory's `vm.args`; an error when there is none.
pub fn node_from_config(dir: &Path) -> Result<String> {
    crate::couchdb::node_name(dir).ok_or_else(|| {
        OpsError::Refused(format!(
            "no -name in {}: give the target's node name with --node-name",
            dir.join("vm.args").display()
        ))
    })
}
