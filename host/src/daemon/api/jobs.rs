//! `/v1/jobs`: a tenant sees its own jobs, the admin all.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::{scope, tenant_of, ApiError, ApiResult, Shared, TenantQuery};
use crate::daemon::auth::Principal;
use crate::daemon::jobs::Job;
use crate::daemon::Daemon;

pub(super) fn visible_job(d: &Daemon, p: &Principal, id: &str) -> ApiResult<Job> {
    match d.db.job(id)? {
        Some(j) if scope(p).is_none_or(|t| j.tenant == t) => Ok(j),
        _ => Err(ApiError::not_found("job")),
    }
}

#[derive(Deserialize)]
pub(super) struct JobQuery {
    tenant: Option<String>,
    instance: Option<String>,
    state: Option<String>,
    kind: Option<String>,
    schedule: Option<String>,
}

pub(super) async fn job_list(
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

pub(super) async fn job_show(
    p: Principal,
    State(d): State<Shared>,
    Path(id): Path<String>,
) -> ApiResult<Json<Job>> {
    let job = visible_job(&d, &p, &id)?;
    Ok(Json(d.runner.show(job)))
}

pub(super) async fn job_cancel(
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
