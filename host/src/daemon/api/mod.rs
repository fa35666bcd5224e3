//! The HTTP API (JSON; docs/API.md, `/v1/openapi.json`). Every route but /healthz and the
//! OpenAPI document needs a bearer token; a tenant token sees only its tenant's objects (others' ids answer 404)
//! and gets 403 on admin routes. One module per resource; the wire types are
//! `crate::wire`, shared with the CLI's client.

mod admin;
mod backups;
mod error;
mod instances;
mod jobs;
mod openapi;
mod overview;
mod policies;
mod restores;
mod schedules;
mod ui;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::auth::{self, Principal};
use super::jobs::JobRequest;
use super::Daemon;
pub use crate::wire::API_VERSION;
pub use error::ApiError;

type Shared = Arc<Daemon>;
type ApiResult<T> = Result<T, ApiError>;

/// A JSON body: a body over the limit is 413, anything unparsable 400, both with a message.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = body_bytes(req, state).await?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::bad(format!("invalid JSON body: {e}")))
    }
}

async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> ApiResult<Bytes> {
    Bytes::from_request(req, state).await.map_err(|e| {
        let status = e.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(status, "request body too large (see daemon.max_body_bytes)")
        } else {
            ApiError::new(status, e.body_text())
        }
    })
}

impl FromRequestParts<Shared> for Principal {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, d: &Shared) -> Result<Self, ApiError> {
        let unauthorized = || {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or unknown bearer token (Authorization: Bearer <token>)",
            )
        };
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(unauthorized)?;
        auth::check(&d.db, token.trim())?.ok_or_else(unauthorized)
    }
}

/// `?tenant=` for admin calls; a tenant token always means its own tenant.
#[derive(Deserialize)]
pub(super) struct TenantQuery {
    tenant: Option<String>,
}

fn tenant_of(p: &Principal, q: &TenantQuery) -> ApiResult<String> {
    match (p, &q.tenant) {
        (Principal::Tenant(t), None) => Ok(t.clone()),
        (Principal::Tenant(t), Some(asked)) if asked == t => Ok(t.clone()),
        (Principal::Tenant(_), Some(_)) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "a tenant token acts only on its own tenant",
        )),
        (Principal::Admin, t) => {
            let t = t.clone().unwrap_or_else(|| "default".into());
            crate::names::validate_name("tenant", &t).map_err(|e| ApiError::bad(e.to_string()))?;
            Ok(t)
        }
    }
}

/// The tenant a principal is limited to (None for admin: all).
fn scope(p: &Principal) -> Option<&str> {
    match p {
        Principal::Admin => None,
        Principal::Tenant(t) => Some(t),
    }
}

fn admin_only(p: &Principal) -> ApiResult<()> {
    match p {
        Principal::Admin => Ok(()),
        Principal::Tenant(_) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "this route needs the admin token",
        )),
    }
}

pub fn router(d: Shared) -> Router {
    let limit = d.vault.config.daemon.max_body_bytes;
    Router::new()
        .route("/", get(ui::index))
        .route("/ui/{file}", get(ui::asset))
        .route("/healthz", get(admin::healthz))
        .route("/v1/whoami", get(overview::whoami))
        .route("/v1/overview", get(overview::overview))
        .route("/v1/schedules/preview", post(overview::schedule_preview))
        .route("/metrics", get(admin::metrics))
        .route("/v1/openapi.json", get(openapi::openapi))
        .route(
            "/v1/backups",
            get(backups::backup_list).post(backups::backup_create),
        )
        .route(
            "/v1/backups/{id}",
            get(backups::backup_show).delete(backups::backup_delete),
        )
        .route("/v1/backups/{id}/verify", post(backups::backup_verify))
        .route(
            "/v1/backups/{id}/databases",
            post(backups::backup_databases),
        )
        .route("/v1/restores", post(restores::restore_create))
        .route("/v1/restores/database", post(restores::restore_database))
        .route("/v1/restores/{id}", get(restores::restore_show))
        .route("/v1/jobs", get(jobs::job_list))
        .route("/v1/jobs/{id}", get(jobs::job_show))
        .route("/v1/jobs/{id}/cancel", post(jobs::job_cancel))
        .route(
            "/v1/instances",
            get(instances::instance_list).post(instances::instance_create),
        )
        .route("/v1/instances/apply", post(instances::instance_apply))
        .route(
            "/v1/instances/{name}",
            get(instances::instance_show).delete(instances::instance_delete),
        )
        .route(
            "/v1/schedules",
            get(schedules::schedule_list).post(schedules::schedule_create),
        )
        .route("/v1/schedules/apply", post(schedules::schedule_apply))
        .route(
            "/v1/schedules/{id}",
            get(schedules::schedule_show)
                .put(schedules::schedule_replace)
                .delete(schedules::schedule_delete),
        )
        .route("/v1/schedules/{id}/pause", post(schedules::schedule_pause))
        .route(
            "/v1/schedules/{id}/resume",
            post(schedules::schedule_resume),
        )
        .route("/v1/policies", get(policies::policy_list))
        .route(
            "/v1/policies/{name}",
            get(policies::policy_show)
                .put(policies::policy_upload)
                .delete(policies::policy_delete),
        )
        .route(
            "/v1/policies/{name}/dry-run",
            post(policies::policy_dry_run),
        )
        .route(
            "/v1/tokens",
            get(admin::token_list).post(admin::token_create),
        )
        .route(
            "/v1/tokens/{id}",
            axum::routing::delete(admin::token_delete),
        )
        .route("/v1/gc", post(admin::gc))
        .route("/v1/reindex", post(admin::reindex))
        .route("/v1/keys", get(admin::key_list))
        .route("/v1/keys/rotate", post(admin::key_rotate))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "no such route (see docs/API.md)")
        })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(d)
}

/// Submits a job and answers 202 once its record is durable.
async fn accepted(d: &Daemon, tenant: &str, req: JobRequest) -> ApiResult<Response> {
    let job = d.runner.submit(tenant, req, None, 1)?;
    d.db.flush().await?;
    Ok((StatusCode::ACCEPTED, Json(job)).into_response())
}

/// Runs blocking work (the store, the file system) off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(work).await?
}
