//! Admin routes: tokens, gc, reindex; and `/healthz`, `/metrics`.

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{
    accepted, admin_only, blocking, tenant_of, ApiError, ApiResult, JsonBody, Shared, TenantQuery,
};
use crate::daemon::auth::{self, Principal};
use crate::daemon::jobs::{JobRequest, ADMIN_TENANT};
use crate::ops::keys::KeyUsage;
use crate::wire::{
    GcParams, Health, KeyRotateParams, Reindexed, TokenCreated, TokenInfo, TokenParams, API_VERSION,
};

pub(super) async fn healthz(State(d): State<Shared>) -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        api: API_VERSION.into(),
        store: d.vault.store.describe(),
        schedules: d.schedules.len(),
        jobs_running: d.runner.running(),
    })
}

pub(super) async fn metrics(p: Principal, State(d): State<Shared>) -> ApiResult<Response> {
    admin_only(&p)?;
    d.runner.metrics.set(
        "couchvault_jobs_running",
        String::new(),
        d.runner.running() as f64,
    );
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        d.runner.metrics.render(),
    )
        .into_response())
}

pub(super) async fn token_create(
    p: Principal,
    State(d): State<Shared>,
    JsonBody(b): JsonBody<TokenParams>,
) -> ApiResult<Response> {
    admin_only(&p)?;
    if let Some(t) = &b.tenant {
        crate::names::validate_name("tenant", t).map_err(|e| ApiError::bad(e.to_string()))?;
    }
    let (token, rec) = auth::create(&d.db, b.tenant.as_deref(), &b.label)?;
    d.db.flush().await?;
    let created = TokenCreated {
        token,
        info: rec.info,
    };
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

pub(super) async fn token_list(
    p: Principal,
    State(d): State<Shared>,
) -> ApiResult<Json<Vec<TokenInfo>>> {
    admin_only(&p)?;
    Ok(Json(
        d.db.tokens()?.into_iter().map(|(_, r)| r.info).collect(),
    ))
}

pub(super) async fn token_delete(
    p: Principal,
    State(d): State<Shared>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    admin_only(&p)?;
    let Some((hash, _)) = d.db.tokens()?.into_iter().find(|(_, r)| r.info.id == id) else {
        return Err(ApiError::not_found("token"));
    };
    d.db.remove_token(&hash)?;
    d.db.flush().await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn gc(
    p: Principal,
    State(d): State<Shared>,
    JsonBody(b): JsonBody<GcParams>,
) -> ApiResult<Response> {
    admin_only(&p)?;
    let grace = b.grace.unwrap_or(d.vault.config.gc.grace);
    accepted(&d, ADMIN_TENANT, JobRequest::Gc { grace }).await
}

/// `GET /v1/keys?tenant=`: the key ring's keys (ids, never key material) with how many
/// backups each wraps; every tenant's without `tenant`.
pub(super) async fn key_list(
    p: Principal,
    State(d): State<Shared>,
    Query(q): Query<KeyQuery>,
) -> ApiResult<Json<Vec<KeyUsage>>> {
    admin_only(&p)?;
    blocking(move || {
        let ring = d.vault.keyring().map_err(ApiError::internal)?;
        let mut rows = d.vault.key_usage(&ring).map_err(ApiError::internal)?;
        rows.retain(|k| q.tenant.as_ref().is_none_or(|t| &k.tenant == t));
        Ok(Json(rows))
    })
    .await
}

#[derive(serde::Deserialize)]
pub(super) struct KeyQuery {
    tenant: Option<String>,
}

/// `POST /v1/keys/rotate?tenant=T`: a key rotation (or, with `rewrap_only`, a rewrap) job.
pub(super) async fn key_rotate(
    p: Principal,
    State(d): State<Shared>,
    Query(q): Query<TenantQuery>,
    JsonBody(b): JsonBody<KeyRotateParams>,
) -> ApiResult<Response> {
    admin_only(&p)?;
    let tenant = tenant_of(&p, &q)?;
    let req = JobRequest::KeyRotate {
        barbican: b.barbican,
        rewrap_only: b.rewrap_only,
    };
    accepted(&d, &tenant, req).await
}

pub(super) async fn reindex(p: Principal, State(d): State<Shared>) -> ApiResult<Json<Reindexed>> {
    admin_only(&p)?;
    let d2 = d.clone();
    let indexed = blocking(move || d2.reindex().map_err(ApiError::internal)).await?;
    Ok(Json(Reindexed { indexed }))
}
