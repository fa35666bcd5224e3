//! `/v1/restores`: where a restore may write, and who runs hooks.

use std::path::{Component, PathBuf};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;

use super::backups::owned_backup;
use super::jobs::visible_job;
use super::{accepted, tenant_of, ApiError, ApiResult, JsonBody, Shared, TenantQuery};
use crate::daemon::auth::Principal;
use crate::daemon::instances;
use crate::daemon::jobs::{Job, JobRequest};
use crate::daemon::Daemon;
use crate::wire::{DbRestoreParams, RestoreParams};

/// Where a restore may write: anywhere absolute for the admin; for a tenant, only a
/// directory strictly inside `<tenant_restore_root>/<tenant>/`, so that everything a
/// restore writes beside its target (staging, kept-aside data, its journal) stays inside
/// too.
fn restore_path(d: &Daemon, p: &Principal, path: &std::path::Path) -> ApiResult<PathBuf> {
    match p {
        Principal::Admin
            if path.is_absolute() && !path.components().any(|c| c == Component::ParentDir) =>
        {
            Ok(path.to_path_buf())
        }
        Principal::Admin => Err(ApiError::bad(format!(
            "{} is not an absolute path without '..'",
            path.display()
        ))),
        Principal::Tenant(t) => {
            let root = d
                .vault
                .config
                .daemon
                .tenant_restore_root
                .clone()
                .unwrap_or_else(|| d.vault.state_dir.join("restores"));
            tenant_target(&root.join(t), path)
        }
    }
}

/// `rel` inside `base`: plain names only (not empty, no `.`, `..`, absolute paths, hidden
/// names or couchvault's own suffixes), and no symbolic link on the way out of `base`.
fn tenant_target(base: &std::path::Path, rel: &std::path::Path) -> ApiResult<PathBuf> {
    let refuse = |why: &str| {
        ApiError::bad(format!(
            "restore target '{}': {why}; a tenant restores into a directory name under its restore root (daemon.tenant_restore_root), e.g. \"restore-1\"",
            crate::names::escape_control(&rel.to_string_lossy())
        ))
    };
    if rel.as_os_str().is_empty() {
        return Err(refuse("empty"));
    }
    for c in rel.components() {
        match c {
            Component::Normal(n) => {
                let n = n.to_string_lossy();
                if n.starts_with('.') || n.contains(".couchvault-") {
                    return Err(refuse(
                        "hidden names and couchvault's own names are reserved",
                    ));
                }
            }
            _ => {
                return Err(refuse(
                    "only plain names: no '/', '.', '..' or absolute paths",
                ))
            }
        }
    }
    std::fs::create_dir_all(base).map_err(ApiError::internal)?;
    let base = std::fs::canonicalize(base).map_err(ApiError::internal)?;
    // Every existing step must be a real directory inside the base.
    let mut at = base.clone();
    for c in rel.components() {
        at.push(c);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(refuse("a symbolic link is in the way"))
            }
            Ok(m) if !m.is_dir() => return Err(refuse("not a directory")),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    Ok(base.join(rel))
}

/// `POST /v1/restores/database`: a tenant pushes only into its instance's registered
/// CouchDB; the admin may name any URL (credentials by name from the config).
pub(super) async fn restore_database(
    p: Principal,
    State(d): State<Shared>,
    Query(q): Query<TenantQuery>,
    JsonBody(b): JsonBody<DbRestoreParams>,
) -> ApiResult<Response> {
    let tenant = tenant_of(&p, &q)?;
    let meta = owned_backup(&d, &tenant, &b.backup_id).await?;
    if p != Principal::Admin && (b.to_url.is_some() || b.couchdb_credentials.is_some()) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "a tenant restores a database only into its instance's registered CouchDB: give no to_url",
        ));
    }
    if let Some(url) = &b.to_url {
        if crate::couchdb::http::CouchClient::url_has_credentials(url) {
            return Err(ApiError::bad(
                "to_url must not hold credentials: name [couchdb.credentials.NAME] with couchdb_credentials",
            ));
        }
    }
    if b.to_url.is_none() {
        instances::require(&d.db, &tenant, &meta.instance)?;
    }
    let req = JobRequest::RestoreDatabase {
        backup_id: b.backup_id,
        instance: meta.instance,
        database: b.database,
        target_name: b.as_name,
        include_deleted: b.include_deleted,
        to_url: b.to_url,
        couchdb_credentials: b.couchdb_credentials,
    };
    accepted(&d, &tenant, req).await
}

pub(super) async fn restore_create(
    p: Principal,
    State(d): State<Shared>,
    Query(q): Query<TenantQuery>,
    JsonBody(b): JsonBody<RestoreParams>,
) -> ApiResult<Response> {
    let tenant = tenant_of(&p, &q)?;
    let meta = owned_backup(&d, &tenant, &b.backup_id).await?;
    let instance = b.instance.unwrap_or(meta.instance);
    crate::names::validate_name("instance", &instance).map_err(|e| ApiError::bad(e.to_string()))?;
    let (target, view_index_target, config_target) = if b.in_place {
        if b.target.is_some() || b.view_index_target.is_some() || b.config_target.is_some() {
            return Err(ApiError::bad(
                "an in-place restore goes into the instance's own directories: give no target",
            ));
        }
        let inst = instances::require(&d.db, &tenant, &instance)?;
        if p != Principal::Admin && !inst.spec.restore_in_place {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("instance '{instance}' does not allow in-place restores by its tenant (restore_in_place); restore under your restore root instead"),
            ));
        }
        (
            inst.database_dir.clone(),
            inst.view_index_dir_resolved.clone(),
            None,
        )
    } else {
        let Some(target) = &b.target else {
            return Err(ApiError::bad("give a target, or in_place"));
        };
        let opt = |x: Option<PathBuf>| x.map(|x| restore_path(&d, &p, &x)).transpose();
        (
            restore_path(&d, &p, target)?,
            opt(b.view_index_target)?,
            opt(b.config_target)?,
        )
    };
    let req = JobRequest::Restore {
        backup_id: b.backup_id,
        instance,
        target,
        view_index_target,
        config_target,
        force: b.force,
        discard_old: b.discard_old && b.force,
        node_name: b.node_name,
        rename_node: b.rename_node,
        hooks: p == Principal::Admin && !b.in_place,
        in_place: b.in_place,
    };
    accepted(&d, &tenant, req).await
}

pub(super) async fn restore_show(
    p: Principal,
    State(d): State<Shared>,
    Path(id): Path<String>,
) -> ApiResult<Json<Job>> {
    let job = visible_job(&d, &p, &id)?;
    if job.request.kind() != "restore" {
        return Err(ApiError::not_found("restore"));
    }
    Ok(Json(d.runner.show(job)))
}
