//! `/v1/instances`: registered by the admin only; a tenant may read its own.

use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{admin_only, blocking, tenant_of, ApiError, ApiResult, JsonBody, Shared, TenantQuery};
use crate::daemon::auth::Principal;
use crate::daemon::instances::{self, InstanceSpec};
use crate::wire::InstanceApply;

pub(super) async fn instance_list(
    p: Principal,
    State(d): State<Shared>,
    Query(q): Query<TenantQuery>,
) -> ApiResult<Response> {
    let tenant = match (&p, &q.tenant) {
        (Principal::Admin, None) => None,
        _ => Some(tenant_of(&p, &q)?),
    };
    Ok(Json(instances::list(&d.db, tenant.as_deref())?).into_response())
}

pub(super) async fn instance_show(
    p: Principal,
    State(d): State<Shared>,
    Path(name): Path<String>,
    Query(q): Query<TenantQuery>,
) -> ApiResult<Response> {
    let tenant = tenant_of(&p, &q)?;
    Ok(Json(instances::require(&d.db, &tenant, &name)?).into_response())
}

/// Registers (or re-registers) an instance: admin only. Resolving its source reads the
/// file system, so it runs off the async threads.
pub(super) async fn instance_create(
    p: Principal,
    State(d): State<Shared>,
    req: Request,
) -> ApiResult<Response> {
    // The admin check before the body: a tenant learns nothing from a parse error.
    admin_only(&p)?;
    let JsonBody(spec) = JsonBody::<InstanceSpec>::from_request(req, &()).await?;
    let d2 = d.clone();
    let inst = blocking(move || Ok(instances::put(&d2.db, &d2.vault.config, spec)?)).await?;
    d.db.flush().await?;
    Ok((StatusCode::CREATED, Json(inst)).into_response())
}

pub(super) async fn instance_apply(
    p: Principal,
    State(d): State<Shared>,
    req: Request,
) -> ApiResult<Response> {
    admin_only(&p)?;
    let JsonBody(b) = JsonBody::<InstanceApply>::from_request(req, &()).await?;
    let specs = b
        .instances
        .into_iter()
        .enumerate()
        .map(|(i, s)| (format!("instance #{}", i + 1), s))
        .collect();
    let d2 = d.clone();
    let report = blocking(move || Ok(instances::apply(&d2.db, &d2.vault.config, specs)?)).await?;
    d.db.flush().await?;
    Ok(Json(report).into_response())
}

/// Unregisters an instance (its backups stay); refused while a schedule names it.
pub(super) async fn instance_delete(
    p: Principal,
    State(d): State<Shared>,
    Path(name): Path<String>,
    Query(q): Query<TenantQuery>,
) -> ApiResult<StatusCode> {
    admin_only(&p)?;
    let tenant = tenant_of(&p, &q)?;
    instances::require(&d.db, &tenant, &name)?;
    let users: Vec<String> = d
        .schedules
        .list(Some(&tenant))?
        .into_iter()
        .filter(|s| s.spec.instance == name && s.spec.source.is_empty())
        .map(|s| s.spec.name)
        .collect();
    if !users.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "instance '{name}' is used by schedule(s) {}; remove them first",
                users.join(", ")
            ),
        ));
    }
    instances::remove(&d.db, &tenant, &name)?;
    d.db.flush().await?;
    Ok(StatusCode::NO_CONTENT)
}
