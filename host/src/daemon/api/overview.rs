//! What the dashboard shows first: `/v1/whoami`, `/v1/overview` (each instance at a
//! glance) and `/v1/schedules/preview` (a cron expression in words, with its next runs).

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::{Query, State};
use axum::Json;
use chrono::{Duration, Utc};

use super::{tenant_of, ApiError, ApiResult, JsonBody, Shared, TenantQuery};
use crate::daemon::auth::Principal;
use crate::daemon::instances;
use crate::format::Kind;
use crate::scheduler::cron::{parse_tz, Cron};
use crate::wire::{
    CronPreview, CronPreviewParams, HistoryPoint, InstanceOverview, JobState, Overview, WhoAmI,
};

type Rows = BTreeMap<(String, String), InstanceOverview>;

/// The row of an instance, made on first mention.
fn row<'a>(rows: &'a mut Rows, tenant: &str, instance: &str) -> &'a mut InstanceOverview {
    rows.entry((tenant.to_string(), instance.to_string()))
        .or_insert_with(|| InstanceOverview {
            tenant: tenant.to_string(),
            instance: instance.to_string(),
            registered: false,
            backups: 0,
            stored_bytes: 0,
            last_success_at: None,
            last_backup_id: None,
            stale: true,
            next_run: None,
            next_run_schedule: None,
            failures_7d: 0,
            running: Vec::new(),
            history: Vec::new(),
        })
}

/// Points of history per instance: enough for a month of daily backups and then some.
const HISTORY_POINTS: usize = 60;

pub(super) async fn whoami(p: Principal) -> Json<WhoAmI> {
    Json(match p {
        Principal::Admin => WhoAmI {
            admin: true,
            tenant: None,
        },
        Principal::Tenant(t) => WhoAmI {
            admin: false,
            tenant: Some(t),
        },
    })
}

pub(super) async fn overview(
    p: Principal,
    State(d): State<Shared>,
    Query(q): Query<TenantQuery>,
) -> ApiResult<Json<Overview>> {
    // The admin without ?tenant sees every tenant; anyone else one.
    let only = match (&p, &q.tenant) {
        (Principal::Admin, None) => None,
        _ => Some(tenant_of(&p, &q)?),
    };
    let mine = |t: &str| only.as_deref().is_none_or(|o| o == t);
    let now = Utc::now();
    let stale_after = d.vault.config.daemon.stale_after.get();
    let mut rows = Rows::new();
    for inst in instances::list(&d.db, only.as_deref())? {
        row(&mut rows, &inst.spec.tenant, &inst.spec.name).registered = true;
    }
    // A cluster backup counts for its cluster's instance, its members within it.
    let clusters: Vec<_> =
        d.db.cluster_all()?
            .into_iter()
            .map(|e| e.cluster)
            .filter(|c| mine(&c.tenant))
            .collect();
    let named: BTreeSet<&str> = clusters
        .iter()
        .flat_map(|c| c.members.iter().map(|m| m.backup_id.as_str()))
        .collect();
    let backups = d.db.index_all()?.into_iter().map(|e| e.summary);
    let points = backups
        .filter(|s| mine(&s.tenant) && !named.contains(s.backup_id.as_str()))
        .map(|s| {
            let point = HistoryPoint {
                duration_secs: (s.finished_at - s.started_at).num_milliseconds() as f64 / 1000.0,
                backup_id: s.backup_id,
                kind: s.kind,
                finished_at: s.finished_at,
                bytes: s.bytes,
                stored_bytes: s.stored_bytes,
            };
            (s.tenant, s.instance, point)
        })
        .chain(clusters.iter().map(|c| {
            let point = HistoryPoint {
                duration_secs: (c.committed_at - c.started_at).num_milliseconds() as f64 / 1000.0,
                backup_id: c.backup_id.clone(),
                kind: Kind::Full,
                finished_at: c.committed_at,
                bytes: c.bytes,
                stored_bytes: c.stored_bytes,
            };
            (c.tenant.clone(), c.instance.clone(), point)
        }));
    for (tenant, instance, point) in points {
        let r = row(&mut rows, &tenant, &instance);
        r.backups += 1;
        r.stored_bytes += point.stored_bytes;
        if r.last_success_at.is_none_or(|t| point.finished_at >= t) {
            r.last_success_at = Some(point.finished_at);
            r.last_backup_id = Some(point.backup_id.clone());
        }
        r.history.push(point);
    }
    for s in d.schedules.list(only.as_deref())? {
        if s.spec.paused {
            continue;
        }
        let next = s.spec.compile().ok().and_then(|c| s.next_due(&c));
        let r = row(&mut rows, &s.tenant, &s.spec.instance);
        if let Some(t) = next.filter(|t| r.next_run.is_none_or(|n| *t < n)) {
            r.next_run = Some(t);
            r.next_run_schedule = Some(s.spec.name.clone());
        }
    }
    let week_ago = now - Duration::days(7);
    for j in d.db.jobs()?.into_iter().filter(|j| mine(&j.tenant)) {
        let Some(inst) = j.request.instance() else {
            continue;
        };
        match j.state {
            JobState::Running => row(&mut rows, &j.tenant, inst).running.push(j.id.clone()),
            JobState::Failed if j.created_at >= week_ago => {
                row(&mut rows, &j.tenant, inst).failures_7d += 1
            }
            _ => {}
        }
    }
    let instances = rows
        .into_values()
        .map(|mut r| {
            r.history.sort_by_key(|h| h.finished_at);
            let skip = r.history.len().saturating_sub(HISTORY_POINTS);
            r.history.drain(..skip);
            r.stale = r
                .last_success_at
                .is_none_or(|t| (now - t).to_std().unwrap_or_default() > stale_after);
            r
        })
        .collect();
    Ok(Json(Overview {
        now,
        stale_after_secs: stale_after.as_secs(),
        instances,
    }))
}

pub(super) async fn schedule_preview(
    _: Principal,
    JsonBody(q): JsonBody<CronPreviewParams>,
) -> ApiResult<Json<CronPreview>> {
    let tz_name = q.tz.unwrap_or_else(|| "UTC".into());
    let tz = parse_tz(&tz_name).map_err(|e| ApiError::bad(e.to_string()))?;
    let cron = Cron::parse(&q.cron, tz).map_err(|e| ApiError::bad(e.to_string()))?;
    let mut next_runs = Vec::new();
    let mut after = Utc::now();
    while next_runs.len() < 5 {
        let Some(t) = cron.next_after(after) else {
            break;
        };
        next_runs.push(t);
        after = t;
    }
    Ok(Json(CronPreview {
        description: cron.describe(),
        next_runs_local: next_runs
            .iter()
            .map(|t| t.with_timezone(&tz).to_rfc3339())
            .collect(),
        next_runs,
        cron: q.cron,
        tz: tz_name,
    }))
}
