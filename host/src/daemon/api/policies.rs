//! `/v1/policies`: uploads and dry runs run on a bounded pool, a few per tenant at a time.

use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde::Deserialize;

use super::{body_bytes, tenant_of, ApiError, ApiResult, JsonBody, Shared, TenantQuery};
use crate::daemon::auth::Principal;
use crate::daemon::Daemon;
use crate::ops::DryRunReport;
use crate::policy::registry;
use crate::wire::{DryRunBackup, DryRunParams};

pub(super) async fn policy_list(
    p: Principal,
    State(d): State<Shared>,
    Query(q): Query<TenantQuery>,
) -> ApiResult<Json<Vec<registry::Entry>>> {
    let tenant = tenant_of(&p, &q)?;
    Ok(Json(d.vault.policies(&tenant)?))
}

fn policy_name(name: &str) -> ApiResult<()> {
    crate::names::validate_name("policy", name).map_err(|e| ApiError::bad(e.to_string()))
}

pub(super) async fn policy_show(
    p: Principal,
    State(d): State<Shared>,
    Path(name): Path<String>,
    Query(q): Query<TenantQuery>,
) -> ApiResult<Json<registry::Entry>> {
    let tenant = tenant_of(&p, &q)?;
    policy_name(&name).map_err(|_| ApiError::not_found("policy"))?;
    Ok(Json(d.vault.policy(&tenant, &name)?))
}

#[derive(Deserialize)]
pub(super) struct UploadQuery {
    tenant: Option<String>,
    #[serde(default)]
    params: String,
}

/// A slot for one of the tenant's policy uploads or dry runs, or 429 at once.
fn policy_slot(d: &Daemon, tenant: &str) -> ApiResult<crate::daemon::limits::Slot> {
    d.policy_slots.try_take(tenant).ok_or_else(|| {
        ApiError::too_many(format!(
            "tenant '{tenant}' already has {} policy uploads or dry runs in progress (daemon.tenant_policy_uploads); try again when they have finished",
            d.policy_slots.per_tenant()
        ))
    })
}

/// Runs policy work on the shared policy pool (bounded threads for all tenants).
async fn on_policy_pool<T: Send + 'static>(
    d: &Daemon,
    work: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    let permit = d
        .policy_pool
        .clone()
        .acquire_owned()
        .await
        .map_err(ApiError::internal)?;
    super::blocking(move || {
        let _permit = permit;
        work()
    })
    .await
}

pub(super) async fn policy_upload(
    p: Principal,
    State(d): State<Shared>,
    Path(name): Path<String>,
    Query(q): Query<UploadQuery>,
    req: Request,
) -> ApiResult<Response> {
    let tenant = tenant_of(&p, &TenantQuery { tenant: q.tenant })?;
    policy_name(&name)?;
    // The slot first: a flood is refused before its bodies are read.
    let _slot = policy_slot(&d, &tenant)?;
    let wasm = body_bytes(req, &()).await?;
    let vault = d.vault.clone();
    let entry = on_policy_pool(&d, move || {
        Ok(vault.add_policy(&tenant, &name, &wasm, &q.params)?)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(entry)).into_response())
}

pub(super) async fn policy_delete(
    p: Principal,
    State(d): State<Shared>,
    Path(name): Path<String>,
    Query(q): Query<TenantQuery>,
) -> ApiResult<StatusCode> {
    let tenant = tenant_of(&p, &q)?;
    policy_name(&name).map_err(|_| ApiError::not_found("policy"))?;
    let in_use: Vec<String> = d
        .schedules
        .list(Some(&tenant))?
        .into_iter()
        .filter(|s| s.spec.policies.contains(&name))
        .map(|s| s.spec.name)
        .collect();
    if !in_use.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "policy '{name}' is used by schedule(s) {}; change them first",
                in_use.join(", ")
            ),
        ));
    }
    d.vault.remove_policy(&tenant, &name)?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn policy_dry_run(
    p: Principal,
    State(d): State<Shared>,
    Path(name): Path<String>,
    Query(q): Query<TenantQuery>,
    JsonBody(b): JsonBody<DryRunParams>,
) -> ApiResult<Json<DryRunReport>> {
    let tenant = tenant_of(&p, &q)?;
    policy_name(&name).map_err(|_| ApiError::not_found("policy"))?;
    let _slot = policy_slot(&d, &tenant)?;
    let now = b.now.unwrap_or_else(Utc::now).timestamp();
    let vault = d.vault.clone();
    let report = on_policy_pool(&d, move || {
        let backups = b
            .backups
            .map(|list| list.into_iter().map(DryRunBackup::info).collect());
        Ok(vault.dry_run_registered(
            &tenant,
            &name,
            b.instance.as_deref(),
            backups,
            now,
            b.source_size.unwrap_or(1 << 30),
        )?)
    })
    .await?;
    Ok(Json(report))
}
