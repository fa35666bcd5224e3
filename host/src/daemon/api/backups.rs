//! `/v1/backups`: list (from the daemon's index), create, show, verify, delete.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use serde::Deserialize;

use super::{accepted, blocking, tenant_of, ApiError, ApiResult, JsonBody, Shared, TenantQuery};
use crate::couchdb::SourceSpec;
use crate::daemon::auth::Principal;
use crate::daemon::instances;
use crate::daemon::jobs::{BackupParams, JobRequest};
use crate::daemon::Daemon;
use crate::format::BackupMetadata;
use crate::wire::{BackupRow, RowStatus};

#[derive(Deserialize)]
pub(super) struct ListQuery {
    tenant: Option<String>,
    instance: Option<String>,
}

/// The tenant's committed backups and cluster backups, from the index (rebuilt from the
/// store).
pub(super) async fn backup_list(
    p: Principal,
    State(d): State<Shared>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<BackupRow>>> {
    let tenant = tenant_of(&p, &TenantQuery { tenant: q.tenant })?;
    let of_instance = |i: &String| q.instance.as_ref().is_none_or(|want| i == want);
    let rows =
        d.db.index_list(&tenant)?
            .into_iter()
            .filter(|e| of_instance(&e.summary.instance))
            .map(|e| BackupRow {
                backup_id: e.summary.backup_id.clone(),
                instance: e.summary.instance.clone(),
                status: RowStatus::Ok,
                error: None,
                summary: Some(e.summary),
                cluster: None,
            })
            .collect();
    let clusters =
        d.db.cluster_list(&tenant)?
            .into_iter()
            .map(|e| e.cluster)
            .filter(|c| of_instance(&c.instance))
            .collect();
    Ok(Json(BackupRow::listing(rows, clusters)))
}

pub(super) async fn backup_create(
    p: Principal,
    State(d): State<Shared>,
    Query(q): Query<TenantQuery>,
    JsonBody(b): JsonBody<BackupParams>,
) -> ApiResult<Response> {
    let tenant = tenant_of(&p, &q)?;
    check_source(&d, &p, &tenant, &b.instance, &b.source, b.cluster)?;
    crate::names::validate_tags(&b.tags).map_err(|e| ApiError::bad(e.to_string()))?;
    crate::ops::resolve_policies(&d.vault.state_dir, &tenant, &b.policies)?;
    if let Some(l) = b.compression_level {
        if !(1..=19).contains(&l) {
            return Err(ApiError::bad("compression_level must be 1-19"));
        }
    }
    accepted(&d, &tenant, JobRequest::Backup(b)).await
}

/// Where a backup or schedule reads from. A tenant names one of its registered instances
/// and never a path; the admin names a registered instance or gives the paths itself. A
/// cluster backup reads every node's data: the admin's alone, with no paths.
pub(super) fn check_source(
    d: &Daemon,
    p: &Principal,
    tenant: &str,
    instance: &str,
    s: &SourceSpec,
    cluster: bool,
) -> ApiResult<()> {
    crate::names::validate_name("instance", instance).map_err(|e| ApiError::bad(e.to_string()))?;
    if cluster {
        if matches!(p, Principal::Tenant(_)) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "cluster backups read every node of the cluster: the admin asks for them",
            ));
        }
        if !s.is_empty() {
            return Err(ApiError::bad(
                "a cluster backup reads each node through its daemon's [cluster] settings: give no paths",
            ));
        }
        return Ok(());
    }
    if s.is_empty() {
        instances::require(&d.db, tenant, instance)?;
        return Ok(());
    }
    if matches!(p, Principal::Tenant(_)) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "a tenant names a registered instance, never a path (the admin registers instances: `couchvault instance add`)",
        ));
    }
    s.check_paths().map_err(|e| ApiError::bad(e.to_string()))
}

pub(super) async fn backup_show(
    p: Principal,
    State(d): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<TenantQuery>,
) -> ApiResult<Json<BackupMetadata>> {
    let tenant = tenant_of(&p, &q)?;
    Ok(Json(owned_backup(&d, &tenant, &id).await?))
}

/// Loads a tenant's backup (authenticated); another tenant's id or a bad one is 404.
pub(super) async fn owned_backup(d: &Daemon, tenant: &str, id: &str) -> ApiResult<BackupMetadata> {
    if crate::names::validate_name("backup id", id).is_err() {
        return Err(ApiError::not_found("backup"));
    }
    let (vault, tenant, id) = (d.vault.clone(), tenant.to_string(), id.to_string());
    blocking(move || Ok(vault.show_backup(&tenant, &id)?)).await
}

/// A tenant's backup or cluster backup (verified and deleted whole) by id: its instance.
/// Another tenant's id or a bad one is 404.
async fn owned_id(d: &Daemon, tenant: &str, id: &str) -> ApiResult<String> {
    if crate::names::validate_name("backup id", id).is_err() {
        return Err(ApiError::not_found("backup"));
    }
    let (vault, tenant, id) = (d.vault.clone(), tenant.to_string(), id.to_string());
    blocking(move || match vault.show_backup(&tenant, &id) {
        Ok(meta) => Ok(meta.instance),
        Err(e) => match vault.find_cluster_backup(&tenant, &id)? {
            Some(m) => Ok(m.instance),
            None => Err(e.into()),
        },
    })
    .await
}

#[derive(Deserialize)]
pub(super) struct DeleteQuery {
    tenant: Option<String>,
    /// Also delete the backups that depend on it (else such a delete is refused).
    #[serde(default)]
    with_dependents: bool,
}

pub(super) async fn backup_delete(
    p: Principal,
    State(d): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> ApiResult<Response> {
    let tenant = tenant_of(&p, &TenantQuery { tenant: q.tenant })?;
    let instance = owned_id(&d, &tenant, &id).await?;
    let request = JobRequest::Delete {
        backup_id: id,
        with_dependents: q.with_dependents,
        instance: Some(instance),
    };
    accepted(&d, &tenant, request).await
}

#[derive(Deserialize)]
pub(super) struct VerifyQuery {
    tenant: Option<String>,
    /// Also verify every backup it depends on, and each file rebuilt whole.
    #[serde(default)]
    chain: bool,
    /// Also read every database file whole: trees, bodies, attachments.
    #[serde(default)]
    deep: bool,
}

pub(super) async fn backup_verify(
    p: Principal,
    State(d): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<VerifyQuery>,
) -> ApiResult<Response> {
    let tenant = tenant_of(&p, &TenantQuery { tenant: q.tenant })?;
    owned_id(&d, &tenant, &id).await?;
    let request = JobRequest::Verify {
        backup_id: id,
        chain: q.chain || q.deep,
        deep: q.deep,
    };
    accepted(&d, &tenant, request).await
}

/// `POST /v1/backups/{id}/databases`: a job listing the databases in a backup.
pub(super) async fn backup_databases(
    p: Principal,
    State(d): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<TenantQuery>,
) -> ApiResult<Response> {
    let tenant = tenant_of(&p, &q)?;
    owned_backup(&d, &tenant, &id).await?;
    accepted(&d, &tenant, JobRequest::Databases { backup_id: id }).await
}
