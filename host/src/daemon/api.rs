//! The HTTP API (JSON; docs/API.md). Every route but /healthz needs a bearer token; a
//! tenant token sees only its tenant's objects (others' ids answer 404) and gets 403 on
//! admin routes.

use std::path::{Component, PathBuf};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::auth::{self, Principal};
use super::db::IndexEntry;
use super::instances::{self, InstanceError, InstanceSpec};
use super::jobs::{BackupParams, Job, JobRequest, SubmitError, ADMIN_TENANT};
use super::schedules::ScheduleError;
use super::Daemon;
use crate::catalog;
use crate::ops::{sample_backups, Situation};
use crate::policy::{registry, BackupInfo};
use crate::scheduler::{ScheduleSpec, SourceSettings};

pub const API_VERSION: &str = "v1";

/// An error answer: `{"error": "..."}` with a status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

/// Seconds a client is told to wait after a 429.
const RETRY_AFTER_SECS: &str = "5";

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    fn too_many(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, message)
    }
    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    fn not_found(what: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, format!("no such {what}"))
    }
    fn internal(e: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            r.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        // The rest of a refused body is never read: tell the client not to reuse the connection.
        if matches!(
            self.status,
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::TOO_MANY_REQUESTS
        ) {
            r.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        r
    }
}

impl From<super::db::DbError> for ApiError {
    fn from(e: super::db::DbError) -> Self {
        ApiError::internal(e)
    }
}

impl From<ScheduleError> for ApiError {
    fn from(e: ScheduleError) -> Self {
        match e {
            ScheduleError::Invalid(m) => ApiError::bad(m),
            ScheduleError::NotFound => ApiError::not_found("schedule"),
            e @ ScheduleError::Exists { .. } => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            ScheduleError::Db(e) => ApiError::internal(e),
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            e @ SubmitError::Busy { .. } => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            e @ SubmitError::TooMany { .. } => ApiError::too_many(e.to_string()),
            e @ SubmitError::ShuttingDown => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            e @ SubmitError::Thread(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            SubmitError::Db(e) => ApiError::internal(e),
        }
    }
}

impl From<InstanceError> for ApiError {
    fn from(e: InstanceError) -> Self {
        match e {
            InstanceError::Invalid(m) => ApiError::bad(m),
            e @ InstanceError::NotFound { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, e.to_string())
            }
            InstanceError::Db(e) => ApiError::internal(e),
        }
    }
}

fn library_error(e: crate::Error) -> ApiError {
    match e {
        crate::Error::NotFound { .. } => ApiError::not_found("backup"),
        e => ApiError::internal(e),
    }
}

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
struct TenantQuery {
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
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/backups", get(backup_list).post(backup_create))
        .route("/v1/backups/{id}", get(backup_show).delete(backup_delete))
        .route("/v1/backups/{id}/verify", post(backup_verify))
        .route("/v1/restores", post(restore_create))
        .route("/v1/restores/{id}", get(restore_show))
        .route("/v1/jobs", get(job_list))
        .route("/v1/jobs/{id}", get(job_show))
        .route("/v1/jobs/{id}/cancel", post(job_cancel))
        .route("/v1/instances", get(instance_list).post(instance_create))
        .route("/v1/instances/apply", post(instance_apply))
        .route(
            "/v1/instances/{name}",
            get(instance_show).delete(instance_delete),
        )
        .route("/v1/schedules", get(schedule_list).post(schedule_create))
        .route("/v1/schedules/apply", post(schedule_apply))
        .route(
            "/v1/schedules/{id}",
            get(schedule_show)
                .put(schedule_replace)
                .delete(schedule_delete),
        )
        .route("/v1/schedules/{id}/pause", post(schedule_pause))
        .route("/v1/schedules/{id}/resume", post(schedule_resume))
        .route("/v1/policies", get(policy_list))
        .route(
            "/v1/policies/{name}",
            get(policy_show).put(policy_upload).delete(policy_delete),
        )
        .route("/v1/policies/{name}/dry-run", post(policy_dry_run))
        .route("/v1/tokens", get(token_list).post(token_create))
        .route("/v1/tokens/{id}", axum::routing::delete(token_delete))
        .route("/v1/gc", post(gc))
        .route("/v1/reindex", post(reindex))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "no such route (see docs/API.md)")
        })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(d)
}

async fn healthz(State(d): State<Shared>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "api": API_VERSION,
        "store": d.vault.store.describe(),
        "schedules": d.schedules.len(),
        "jobs_running": d.runner.running(),
    }))
}

async fn metrics(p: Principal, State(d): State<Shared>) -> ApiResult<Response> {
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

/// Submits a job and answers 202 once its record is durable.
async fn accepted(d: &Daemon, tenant: &str, req: JobRequest) -> ApiResult<Response> {
    let job = d.runner.submit(tenant, req, None, 1)?;
    d.db.flush().await?;
    Ok((StatusCode::ACCEPTED, Json(job)).into_response())
}

// ---- backups ----

#[derive(Deserialize)]
struct ListQuery {
    tenant: Option<String>,
    instance: Option<String>,
}

async fn backup_list(
    p: Principal,
    State(d): State<Shared>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<IndexEntry>>> {
    let tenant = tenant_of(&p, &TenantQuery { tenant: q.tenant })?;
    let mut list = d.db.index_list(&tenant)?;
    if let Some(i) = q.instance {
        list.retain(|e| e.instance == i);
    }
    Ok(Json(list))
}

async fn backup_create(
    p: Principal,
    State(d): State<Shared>,
    Query(q): Query<TenantQuery>,
    JsonBody(b): JsonBody<BackupParams>,
) -> ApiResult<Response> {
    let tenant = tenant_of(&p, &q)?;
    check_source(&d, &p, &tenant, &b.instance, &b.source())?;
    crate::names::validate_tags(&b.tags).map_err(ApiError::bad)?;
    crate::ops::resolve_policies(&d.vault.state_dir, &tenant, &b.policies)
        .map_err(ApiError::bad)?;
    if let Some(l) = b.compression_level {
        if !(1..=19).contains(&l) {
            return Err(ApiError::bad("compression_level must be 1-19"));
        }
    }
    accepted(&d, &tenant, JobRequest::Backup(b)).await
}

/// Where a backup or schedule reads from. A tenant names one of its registered instances
/// and never a path; the admin names a registered instance or gives the paths itself.
fn check_source(
    d: &Daemon,
    p: &Principal,
    tenant: &str,
    instance: &str,
    s: &SourceSettings,
) -> ApiResult<()> {
    crate::names::validate_name("instance", instance).map_err(|e| ApiError::bad(e.to_string()))?;
    let paths: Vec<&PathBuf> = [&s.couchdb_config, &s.data_dir, &s.view_index_dir]
        .into_iter()
        .flatten()
        .collect();
    if paths.is_empty() {
        instances::require(&d.db, tenant, instance)?;
        return Ok(());
    }
    if matches!(p, Principal::Tenant(_)) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "a tenant names a registered instance, never a path (the admin registers instances: `couchvault instance add`)",
        ));
    }
    if s.couchdb_config.is_some() == s.data_dir.is_some() {
        return Err(ApiError::bad(
            "give couchdb_config or data_dir (one of them)",
        ));
    }
    for path in &paths {
        if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
            return Err(ApiError::bad(format!(
                "{} must be an absolute path without '..'",
                path.display()
            )));
        }
    }
    Ok(())
}

async fn backup_show(
    p: Principal,
    State(d): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<TenantQuery>,
) -> ApiResult<Response> {
    let tenant = tenant_of(&p, &q)?;
    Ok(Json(owned_backup(&d, &tenant, &id).await?).into_response())
}

/// Loads a tenant's backup (authenticated); another tenant's id or a bad one is 404.
async fn owned_backup(
    d: &Daemon,
    tenant: &str,
    id: &str,
) -> ApiResult<crate::format::BackupMetadata> {
    if crate::names::validate_name("backup id", id).is_err() {
        return Err(ApiError::not_found("backup"));
    }
    let (vault, tenant, id) = (d.vault.clone(), tenant.to_string(), id.to_string());
    tokio::task::spawn_blocking(move || {
        let keyring = vault.keyring().map_err(ApiError::internal)?;
        catalog::load(&*vault.store, &keyring, &tenant, &id).map_err(library_error)
    })
    .await
    .map_err(ApiError::internal)?
}

async fn backup_delete(
    p: Principal,
    State(d): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<TenantQuery>,
) -> ApiResult<Response> {
    let tenant = tenant_of(&p, &q)?;
    owned_backup(&d, &tenant, &id).await?;
    accepted(&d, &tenant, JobRequest::Delete { backup_id: id }).await
}

async fn backup_verify(
    p: Principal,
    State(d): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<TenantQuery>,
) -> ApiResult<Response> {
    let tenant = tenant_of(&p, &q)?;
    owned_backup(&d, &tenant, &id).await?;
    accepted(&d, &tenant, JobRequest::Verify { backup_id: id }).await
}

// ---- restores ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreBody {
    backup_id: String,
    /// Absolute for the admin; for a tenant, a directory name under its restore root.
    /// Not with `in_place`.
    #[serde(default)]
    target: Option<PathBuf>,
    /// The instance being restored (default: the backup's).
    #[serde(default)]
    instance: Option<String>,
    /// Into the registered instance's own directories, with its hooks (a tenant needs the
    /// instance's `restore_in_place`).
    #[serde(default)]
    in_place: bool,
    #[serde(default)]
    view_index_target: Option<PathBuf>,
    #[serde(default)]
    config_target: Option<PathBuf>,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    discard_old: bool,
    #[serde(default)]
    node_name: Option<String>,
    #[serde(default)]
    rename_node: bool,
}

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

async fn restore_create(
    p: Principal,
    State(d): State<Shared>,
    Query(q): Query<TenantQuery>,
    JsonBody(b): JsonBody<RestoreBody>,
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

async fn restore_show(
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

// ---- jobs ----

fn visible_job(d: &Daemon, p: &Principal, id: &str) -> ApiResult<Job> {
    match d.db.job(id)? {
        Some(j) if scope(p).is_none_or(|t| j.tenant == t) => Ok(j),
        _ => Err(ApiError::not_found("job")),
    }
}

#[derive(Deserialize)]
struct JobQuery {
    tenant: Option<String>,
    instance: Option<String>,
    state: Option<String>,
    kind: Option<String>,
    schedule: Option<String>,
}

async fn job_list(
    p: Principal,
    State(d): State<Shared>,
    Query(q): Query<JobQuery>,
) -> ApiResult<Json<Vec<Job>>> {
    let tenant = match (&p, &q.tenant) {
        (Principal::Admin, None) => None,
        _ => Some(tenant_of(
            &p,
            &TenantQuery {
                tenant: q.tenant.clone(),
            },
        )?),
    };
    let jobs =
        d.db.jobs()?
            .into_iter()
            .filter(|j| tenant.as_ref().is_none_or(|t| &j.tenant == t))
            .filter(|j| {
                q.instance
                    .as_ref()
                    .is_none_or(|i| j.request.instance() == Some(i.as_str()))
            })
            .filter(|j| q.state.as_ref().is_none_or(|s| j.state.as_str() == s))
            .filter(|j| q.kind.as_ref().is_none_or(|k| j.request.kind() == k))
            .filter(|j| {
                q.schedule
                    .as_ref()
                    .is_none_or(|s| j.scheduled.as_ref().is_some_and(|r| &r.schedule_id == s))
            })
            .map(|j| d.runner.show(j))
            .collect();
    Ok(Json(jobs))
}

async fn job_show(
    p: Principal,
    State(d): State<Shared>,
    Path(id): Path<String>,
) -> ApiResult<Json<Job>> {
    let job = visible_job(&d, &p, &id)?;
    Ok(Json(d.runner.show(job)))
}

async fn job_cancel(
    p: Principal,
    State(d): State<Shared>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let job = visible_job(&d, &p, &id)?;
    if !d.runner.cancel(&job.id) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("job {id} is not running (it is {})", job.state.as_str()),
        ));
    }
    Ok((StatusCode::ACCEPTED, Json(d.runner.show(job))).into_response())
}

// ---- instances ----

async fn instance_list(
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

async fn instance_show(
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
async fn instance_create(
    p: Principal,
    State(d): State<Shared>,
    req: Request,
) -> ApiResult<Response> {
    // The admin check before the body: a tenant learns nothing from a parse error.
    admin_only(&p)?;
    let JsonBody(spec) = JsonBody::<InstanceSpec>::from_request(req, &()).await?;
    let d2 = d.clone();
    let inst = tokio::task::spawn_blocking(move || instances::put(&d2.db, &d2.vault.config, spec))
        .await
        .map_err(ApiError::internal)??;
    d.db.flush().await?;
    Ok((StatusCode::CREATED, Json(inst)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InstanceApplyBody {
    instances: Vec<InstanceSpec>,
}

async fn instance_apply(
    p: Principal,
    State(d): State<Shared>,
    req: Request,
) -> ApiResult<Response> {
    admin_only(&p)?;
    let JsonBody(b) = JsonBody::<InstanceApplyBody>::from_request(req, &()).await?;
    let specs = b
        .instances
        .into_iter()
        .enumerate()
        .map(|(i, s)| (format!("instance #{}", i + 1), s))
        .collect();
    let d2 = d.clone();
    let report =
        tokio::task::spawn_blocking(move || instances::apply(&d2.db, &d2.vault.config, specs))
            .await
            .map_err(ApiError::internal)??;
    d.db.flush().await?;
    Ok(Json(report).into_response())
}

/// Unregisters an instance (its backups stay); refused while a schedule names it.
async fn instance_delete(
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
        .filter(|s| s.spec.instance == name && s.spec.source() == SourceSettings::default())
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

// ---- schedules ----

async fn schedule_list(
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

async fn schedule_create(
    p: Principal,
    State(d): State<Shared>,
    Query(q): Query<TenantQuery>,
    JsonBody(spec): JsonBody<ScheduleSpec>,
) -> ApiResult<Response> {
    let tenant = spec_tenant(&p, &q, &spec)?;
    check_source(&d, &p, &tenant, &spec.instance, &spec.source())?;
    let s = d.schedules.create(&tenant, spec, Utc::now())?;
    d.db.flush().await?;
    Ok((StatusCode::CREATED, Json(s)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplyBody {
    schedules: Vec<ScheduleSpec>,
}

async fn schedule_apply(
    p: Principal,
    State(d): State<Shared>,
    Query(q): Query<TenantQuery>,
    JsonBody(b): JsonBody<ApplyBody>,
) -> ApiResult<Response> {
    let default_tenant = tenant_of(&p, &q)?;
    let mut specs = Vec::new();
    for (i, spec) in b.schedules.into_iter().enumerate() {
        let tenant = spec_tenant(&p, &q, &spec)?;
        check_source(&d, &p, &tenant, &spec.instance, &spec.source())?;
        specs.push((format!("schedule #{}", i + 1), spec));
    }
    let report = d.schedules.apply(specs, &default_tenant, Utc::now())?;
    d.db.flush().await?;
    Ok(Json(report).into_response())
}

async fn schedule_show(
    p: Principal,
    State(d): State<Shared>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let s = d.schedules.get(scope(&p), &id)?;
    #[derive(Serialize)]
    struct Shown<'a> {
        #[serde(flatten)]
        schedule: &'a crate::scheduler::Schedule,
        next_run: Option<DateTime<Utc>>,
    }
    let next_run = s.spec.compile().ok().and_then(|c| s.next_due(&c));
    Ok(Json(Shown {
        schedule: &s,
        next_run,
    })
    .into_response())
}

async fn schedule_replace(
    p: Principal,
    State(d): State<Shared>,
    Path(id): Path<String>,
    JsonBody(spec): JsonBody<ScheduleSpec>,
) -> ApiResult<Response> {
    let existing = d.schedules.get(scope(&p), &id)?;
    if spec.tenant.as_ref().is_some_and(|t| t != &existing.tenant) {
        return Err(ApiError::bad("a schedule cannot move to another tenant"));
    }
    check_source(&d, &p, &existing.tenant, &spec.instance, &spec.source())?;
    let s = d.schedules.replace(scope(&p), &id, spec, Utc::now())?;
    d.db.flush().await?;
    Ok(Json(s).into_response())
}

async fn schedule_delete(
    p: Principal,
    State(d): State<Shared>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    d.schedules.remove(scope(&p), &id)?;
    d.db.flush().await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn schedule_pause(
    p: Principal,
    State(d): State<Shared>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let s = d.schedules.set_paused(scope(&p), &id, true, Utc::now())?;
    d.db.flush().await?;
    Ok(Json(s).into_response())
}

async fn schedule_resume(
    p: Principal,
    State(d): State<Shared>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let s = d.schedules.set_paused(scope(&p), &id, false, Utc::now())?;
    d.db.flush().await?;
    Ok(Json(s).into_response())
}

// ---- policies ----

async fn policy_list(
    p: Principal,
    State(d): State<Shared>,
    Query(q): Query<TenantQuery>,
) -> ApiResult<Json<Vec<registry::Entry>>> {
    let tenant = tenant_of(&p, &q)?;
    registry::list(&d.vault.state_dir, &tenant)
        .map(Json)
        .map_err(ApiError::internal)
}

fn policy_name(name: &str) -> ApiResult<()> {
    crate::names::validate_name("policy", name).map_err(|e| ApiError::bad(e.to_string()))
}

async fn policy_show(
    p: Principal,
    State(d): State<Shared>,
    Path(name): Path<String>,
    Query(q): Query<TenantQuery>,
) -> ApiResult<Json<registry::Entry>> {
    let tenant = tenant_of(&p, &q)?;
    policy_name(&name).map_err(|_| ApiError::not_found("policy"))?;
    registry::load(&d.vault.state_dir, &tenant, &name)
        .map(|(e, _)| Json(e))
        .map_err(|_| ApiError::not_found("policy"))
}

#[derive(Deserialize)]
struct UploadQuery {
    tenant: Option<String>,
    #[serde(default)]
    params: String,
}

/// A slot for one of the tenant's policy uploads or dry runs, or 429 at once.
fn policy_slot(d: &Daemon, tenant: &str) -> ApiResult<super::limits::Slot> {
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
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        work()
    })
    .await
    .map_err(ApiError::internal)?
}

async fn policy_upload(
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
        vault
            .add_policy(&tenant, &name, &wasm, &q.params)
            .map_err(|e| ApiError::bad(e.to_string()))
    })
    .await?;
    Ok((StatusCode::CREATED, Json(entry)).into_response())
}

async fn policy_delete(
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
    registry::remove(&d.vault.state_dir, &tenant, &name)
        .map_err(|_| ApiError::not_found("policy"))?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DryRunBody {
    /// Default: the instance's real backups when `instance` is given, else a sample.
    #[serde(default)]
    backups: Option<Vec<DryRunBackup>>,
    #[serde(default)]
    instance: Option<String>,
    #[serde(default)]
    now: Option<DateTime<Utc>>,
    #[serde(default)]
    source_size: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DryRunBackup {
    id: String,
    created_at: DateTime<Utc>,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    tags: std::collections::BTreeMap<String, String>,
}

async fn policy_dry_run(
    p: Principal,
    State(d): State<Shared>,
    Path(name): Path<String>,
    Query(q): Query<TenantQuery>,
    JsonBody(b): JsonBody<DryRunBody>,
) -> ApiResult<Response> {
    let tenant = tenant_of(&p, &q)?;
    policy_name(&name).map_err(|_| ApiError::not_found("policy"))?;
    let _slot = policy_slot(&d, &tenant)?;
    let now = b.now.unwrap_or_else(Utc::now).timestamp();
    let vault = d.vault.clone();
    let report = on_policy_pool(&d, move || -> ApiResult<_> {
        let host = vault.policy_host().map_err(ApiError::internal)?;
        let keyring = vault.keyring().map_err(ApiError::internal)?;
        let (policy, params) = vault
            .registered(&host, &tenant, &name)
            .map_err(|_| ApiError::not_found("policy"))?;
        let instance = b.instance.clone().unwrap_or_else(|| "instance".into());
        let mut backups: Vec<BackupInfo> = match (b.backups, &b.instance) {
            (Some(list), _) => list
                .into_iter()
                .map(|x| BackupInfo {
                    id: x.id,
                    created_at: x.created_at.timestamp(),
                    size: x.size,
                    kind: "full".into(),
                    schedule: x.tags.get("schedule").cloned(),
                    tags: x.tags.into_iter().collect(),
                })
                .collect(),
            (None, Some(i)) => catalog::list(&*vault.store, &keyring, &tenant, Some(i))
                .map_err(ApiError::internal)?
                .into_iter()
                .filter_map(|l| l.metadata)
                .map(|m| crate::ops::info_of(&m))
                .collect(),
            (None, None) => sample_backups(now),
        };
        backups.sort_by_key(|x| std::cmp::Reverse(x.created_at));
        vault
            .dry_run(
                &host,
                &keyring,
                &policy,
                Situation {
                    tenant: &tenant,
                    now,
                    backups,
                    params: &params,
                    instance: &instance,
                    source_size: b.source_size.unwrap_or(1 << 30),
                },
            )
            .map_err(|e| ApiError::bad(e.to_string()))
    })
    .await?;
    Ok(Json(report).into_response())
}

// ---- admin ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    /// None creates another admin token.
    tenant: Option<String>,
    #[serde(default)]
    label: String,
}

async fn token_create(
    p: Principal,
    State(d): State<Shared>,
    JsonBody(b): JsonBody<TokenBody>,
) -> ApiResult<Response> {
    admin_only(&p)?;
    if let Some(t) = &b.tenant {
        crate::names::validate_name("tenant", t).map_err(|e| ApiError::bad(e.to_string()))?;
    }
    let (token, rec) =
        auth::create(&d.db, b.tenant.as_deref(), &b.label).map_err(ApiError::internal)?;
    d.db.flush().await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "token": token, "id": rec.id, "tenant": rec.tenant, "label": rec.label, "created_at": rec.created_at })),
    )
        .into_response())
}

async fn token_list(p: Principal, State(d): State<Shared>) -> ApiResult<Response> {
    admin_only(&p)?;
    let list: Vec<_> = d.db.tokens()?.into_iter().map(|(_, r)| r).collect();
    Ok(Json(list).into_response())
}

async fn token_delete(
    p: Principal,
    State(d): State<Shared>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    admin_only(&p)?;
    let Some((hash, _)) = d.db.tokens()?.into_iter().find(|(_, r)| r.id == id) else {
        return Err(ApiError::not_found("token"));
    };
    d.db.remove_token(&hash)?;
    d.db.flush().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct GcBody {
    grace: Option<String>,
}

async fn gc(
    p: Principal,
    State(d): State<Shared>,
    JsonBody(b): JsonBody<GcBody>,
) -> ApiResult<Response> {
    admin_only(&p)?;
    let grace = b.grace.unwrap_or_else(|| d.vault.config.gc.grace.clone());
    crate::config::parse_duration(&grace).map_err(|e| ApiError::bad(format!("grace: {e}")))?;
    accepted(&d, ADMIN_TENANT, JobRequest::Gc { grace }).await
}

async fn reindex(p: Principal, State(d): State<Shared>) -> ApiResult<Response> {
    admin_only(&p)?;
    let d2 = d.clone();
    let n = tokio::task::spawn_blocking(move || d2.reindex())
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    Ok(Json(serde_json::json!({ "indexed": n })).into_response())
}
