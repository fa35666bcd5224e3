//! `/v1/schedules`.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;

use super::backups::check_source;
use super::{scope, tenant_of, ApiError, ApiResult, JsonBody, Shared, TenantQuery};
use crate::daemon::auth::Principal;
use crate::scheduler::ScheduleSpec;
use crate::wire::{ScheduleApply, ScheduleShown};

pub(super) async fn schedule_list(
    p: Principal,
    State(d): State<Shared>,
    Query(q): Query<TenantQuery>,
) -> ApiResult<Response> {
    let tenant = match (&p, &q.tenant) {
        (Principal::Admin, None) => None,
        _ => Some(tenant_of(&p, &q)?),
    };
    let list = d.schedules.list(tenant.as_deref())?;
    Ok(Json(list).into_response())
}

/// A spec's tenant: a tenant token's own; for the admin, the spec's or `?tenant=`.
fn spec_tenant(p: &Principal, q: &TenantQuery, spec: &ScheduleSpec) -> ApiResult<String> {
    match (p, &spec.tenant) {
        (Principal::Admin, Some(t)) => {
            crate::names::validate_name("tenant", t).map_err(|e| ApiError::bad(e.to_string()))?;
            Ok(t.clone())
        }
        (Principal::Tenant(own), Some(t)) if t != own => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "a tenant token acts only on its own tenant",
        )),
        _ => tenant_of(p, q),
    }
}

pub(super) async fn schedule_create(
    p: Principal,
    State(d): State<Shared>,
    Query(q): Query<TenantQuery>,
    JsonBody(spec): JsonBody<ScheduleSpec>,
) -> ApiResult<Response> {
    let tenant = spec_tenant(&p, &q, &spec)?;
    check_source(&d, &p, &tenant, &spec.instance, &spec.source, spec.cluster)?;
    let s = d.schedules.create(&tenant, spec, Utc::now())?;
    d.db.flush().await?;
    Ok((StatusCode::CREATED, Json(s)).into_response())
}

pub(super) async fn schedule_apply(
    p: Principal,
    State(d): State<Shared>,
    Query(q): Query<TenantQuery>,
    JsonBody(b): JsonBody<ScheduleApply>,
) -> ApiResult<Response> {
    let default_tenant = tenant_of(&p, &q)?;
    let mut specs = Vec::new();
    for (i, spec) in b.schedules.into_iter().enumerate() {
        let tenant = spec_tenant(&p, &q, &spec)?;
        check_source(&d, &p, &tenant, &spec.instance, &spec.source, spec.cluster)?;
        specs.push((format!("schedule #{}", i + 1), spec));
    }
    let report = d.schedules.apply(specs, &default_tenant, Utc::now())?;
    d.db.flush().await?;
    Ok(Json(report).into_response())
}

pub(super) async fn schedule_show(
    p: Principal,
    State(d): State<Shared>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let s = d.schedules.get(scope(&p), &id)?;
    let next_run = s.spec.compile().ok().and_then(|c| s.next_due(&c));
    Ok(Json(ScheduleShown {
        schedule: s,
        next_run,
    })
    .into_response())
}

pub(super) async fn schedule_replace(
    p: Principal,
    State(d): State<Shared>,
    Path(id): Path<String>,
    JsonBody(spec): JsonBody<ScheduleSpec>,
) -> ApiResult<Response> {
    let existing = d.schedules.get(scope(&p), &id)?;
    if spec.tenant.as_ref().is_some_and(|t| t != &existing.tenant) {
        return Err(ApiError::bad("a schedule cannot move to another tenant"));
    }
    check_source(
        &d,
        &p,
        &existing.tenant,
        &spec.instance,
        &spec.source,
        spec.cluster,
    )?;
    let s = d.schedules.replace(scope(&p), &id, spec, Utc::now())?;
    d.db.flush().await?;
    Ok(Json(s).into_response())
}

pub(super) async fn schedule_delete(
    p: Principal,
    State(d): State<Shared>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    d.schedules.remove(scope(&p), &id)?;
    d.db.flush().await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn schedule_pause(
    p: Principal,
    State(d): State<Shared>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let s = d.schedules.set_paused(scope(&p), &id, true, Utc::now())?;
    d.db.flush().await?;
    Ok(Json(s).into_response())
}

pub(super) async fn schedule_resume(
    p: Principal,
    State(d): State<Shared>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let s = d.schedules.set_paused(scope(&p), &id, false, Utc::now())?;
    d.db.flush().await?;
    Ok(Json(s).into_response())
}
