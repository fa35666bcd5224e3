//! `GET /v1/openapi.json`: the API as an OpenAPI 3.1 document. Every body and answer schema
//! is generated from the wire types themselves (`utoipa`'s `ToSchema`, derived beside their
//! serde derives), so the document cannot drift from what the daemon reads and writes; the
//! routes are the table below, which a test checks against the router and docs/API.md.

use std::sync::OnceLock;

use axum::Json;
use serde_json::{json, Map, Value};
use utoipa::openapi::schema::{ObjectBuilder, Schema};
use utoipa::openapi::RefOr;
use utoipa::ToSchema;

use crate::daemon::instances::{self, Instance, InstanceSpec};
use crate::daemon::schedules;
use crate::ops::keys::KeyUsage;
use crate::ops::DryRunReport;
use crate::policy::registry::Entry;
use crate::scheduler::{Schedule, ScheduleSpec};
use crate::wire::{
    BackupParams, BackupRow, CronPreview, CronPreviewParams, DbRestoreParams, DryRunParams,
    ErrorBody, GcParams, Health, InstanceApply, Job, KeyRotateParams, Overview, Reindexed,
    RestoreParams, ScheduleApply, ScheduleShown, TokenCreated, TokenInfo, TokenParams, WhoAmI,
    API_VERSION,
};

type Schemas = Vec<(String, RefOr<Schema>)>;

/// A body or an answer.
#[derive(Clone, Copy)]
enum Body {
    None,
    /// JSON of the schema this function registers and refers to.
    Json(fn(&mut Schemas) -> Value),
    /// A WebAssembly component's bytes.
    Wasm,
    /// Prometheus text.
    Text,
}

struct Route {
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    query: &'static [&'static str],
    body: Body,
    status: u16,
    answer: Body,
    /// No token needed.
    public: bool,
}

const TENANT: &[&str] = &["tenant"];

const fn route(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    body: Body,
    status: u16,
    answer: Body,
) -> Route {
    Route {
        method,
        path,
        summary,
        query: TENANT,
        body,
        status,
        answer,
        public: false,
    }
}

/// A schema of the components, by reference.
fn one<T: ToSchema>(s: &mut Schemas) -> Value {
    let name = T::name().into_owned();
    if !s.iter().any(|(n, _)| *n == name) {
        s.push((name.clone(), T::schema()));
        T::schemas(s);
    }
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn many<T: ToSchema>(s: &mut Schemas) -> Value {
    json!({ "type": "array", "items": one::<T>(s) })
}

/// A backup's metadata is archive format v2 (v1 still read), documented in docs/FORMAT.md.
fn metadata(s: &mut Schemas) -> Value {
    let name = "BackupMetadata".to_string();
    if !s.iter().any(|(n, _)| *n == name) {
        let schema = ObjectBuilder::new()
            .description(Some(
                "a backup's authenticated metadata, archive format v2 (docs/FORMAT.md)",
            ))
            .into();
        s.push((name.clone(), schema));
    }
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn routes() -> Vec<Route> {
    use Body::{Json as J, None as N, Text, Wasm};
    vec![
        Route {
            query: &[],
            public: true,
            ..route(
                "get",
                "/healthz",
                "liveness and what the daemon serves",
                N,
                200,
                J(one::<Health>),
            )
        },
        Route {
            query: &[],
            public: true,
            ..route("get", "/v1/openapi.json", "this document", N, 200, N)
        },
        Route {
            query: &[],
            ..route(
                "get",
                "/metrics",
                "Prometheus metrics (admin)",
                N,
                200,
                Text,
            )
        },
        Route {
            query: &["tenant", "instance"],
            ..route(
                "get",
                "/v1/backups",
                "the tenant's backups, oldest first",
                N,
                200,
                J(many::<BackupRow>),
            )
        },
        route(
            "post",
            "/v1/backups",
            "start a backup job",
            J(one::<BackupParams>),
            202,
            J(one::<Job>),
        ),
        route(
            "get",
            "/v1/backups/{id}",
            "a backup's metadata",
            N,
            200,
            J(metadata),
        ),
        Route {
            query: &["tenant", "with_dependents"],
            ..route(
                "delete",
                "/v1/backups/{id}",
                "start a delete job",
                N,
                202,
                J(one::<Job>),
            )
        },
        Route {
            query: &["tenant", "chain", "deep"],
            ..route(
                "post",
                "/v1/backups/{id}/verify",
                "start a verify job",
                N,
                202,
                J(one::<Job>),
            )
        },
        Route {
            query: TENANT,
            ..route(
                "post",
                "/v1/backups/{id}/databases",
                "start a job listing the databases in a backup",
                N,
                202,
                J(one::<Job>),
            )
        },
        route(
            "post",
            "/v1/restores/database",
            "start a job pushing one database of a backup into a running CouchDB",
            J(one::<DbRestoreParams>),
            202,
            J(one::<Job>),
        ),
        route(
            "post",
            "/v1/restores",
            "start a restore job",
            J(one::<RestoreParams>),
            202,
            J(one::<Job>),
        ),
        route(
            "get",
            "/v1/restores/{id}",
            "a restore job",
            N,
            200,
            J(one::<Job>),
        ),
        Route {
            query: &["tenant", "instance", "state", "kind", "schedule"],
            ..route(
                "get",
                "/v1/jobs",
                "jobs (admin without ?tenant: all)",
                N,
                200,
                J(many::<Job>),
            )
        },
        route(
            "get",
            "/v1/jobs/{id}",
            "a job, with live progress",
            N,
            200,
            J(one::<Job>),
        ),
        route(
            "post",
            "/v1/jobs/{id}/cancel",
            "ask a running job to stop",
            N,
            202,
            J(one::<Job>),
        ),
        route(
            "get",
            "/v1/instances",
            "registered instances",
            N,
            200,
            J(many::<Instance>),
        ),
        route(
            "post",
            "/v1/instances",
            "register an instance (admin)",
            J(one::<InstanceSpec>),
            201,
            J(one::<Instance>),
        ),
        route(
            "post",
            "/v1/instances/apply",
            "register instances, all or none (admin)",
            J(one::<InstanceApply>),
            200,
            J(one::<instances::ApplyReport>),
        ),
        route(
            "get",
            "/v1/instances/{name}",
            "an instance",
            N,
            200,
            J(one::<Instance>),
        ),
        route(
            "delete",
            "/v1/instances/{name}",
            "unregister an instance (admin)",
            N,
            204,
            N,
        ),
        Route {
            query: &[],
            ..route(
                "get",
                "/v1/whoami",
                "what the token is (admin, or which tenant)",
                N,
                200,
                J(one::<WhoAmI>),
            )
        },
        route(
            "get",
            "/v1/overview",
            "each instance at a glance: last success, staleness, next run, stored bytes, failures in 7 days, running jobs, history (admin without ?tenant: all)",
            N,
            200,
            J(one::<Overview>),
        ),
        Route {
            query: &[],
            ..route(
                "post",
                "/v1/schedules/preview",
                "a cron expression in words, with its next five runs",
                J(one::<CronPreviewParams>),
                200,
                J(one::<CronPreview>),
            )
        },
        route(
            "get",
            "/v1/schedules",
            "schedules (admin without ?tenant: all)",
            N,
            200,
            J(many::<Schedule>),
        ),
        route(
            "post",
            "/v1/schedules",
            "add a schedule",
            J(one::<ScheduleSpec>),
            201,
            J(one::<Schedule>),
        ),
        route(
            "post",
            "/v1/schedules/apply",
            "create or update schedules by tenant and name",
            J(one::<ScheduleApply>),
            200,
            J(one::<schedules::ApplyReport>),
        ),
        route(
            "get",
            "/v1/schedules/{id}",
            "a schedule and its next run",
            N,
            200,
            J(one::<ScheduleShown>),
        ),
        route(
            "put",
            "/v1/schedules/{id}",
            "replace a schedule",
            J(one::<ScheduleSpec>),
            200,
            J(one::<Schedule>),
        ),
        route(
            "delete",
            "/v1/schedules/{id}",
            "remove a schedule",
            N,
            204,
            N,
        ),
        route(
            "post",
            "/v1/schedules/{id}/pause",
            "pause a schedule",
            N,
            200,
            J(one::<Schedule>),
        ),
        route(
            "post",
            "/v1/schedules/{id}/resume",
            "resume a schedule",
            N,
            200,
            J(one::<Schedule>),
        ),
        route(
            "get",
            "/v1/policies",
            "the tenant's policies",
            N,
            200,
            J(many::<Entry>),
        ),
        route(
            "get",
            "/v1/policies/{name}",
            "a policy's entry",
            N,
            200,
            J(one::<Entry>),
        ),
        Route {
            query: &["tenant", "params"],
            ..route(
                "put",
                "/v1/policies/{name}",
                "upload a policy component",
                Wasm,
                201,
                J(one::<Entry>),
            )
        },
        route(
            "delete",
            "/v1/policies/{name}",
            "remove a policy",
            N,
            204,
            N,
        ),
        route(
            "post",
            "/v1/policies/{name}/dry-run",
            "run a policy on real or made-up backups, deleting nothing",
            J(one::<DryRunParams>),
            200,
            J(one::<DryRunReport>),
        ),
        Route {
            query: &[],
            ..route(
                "get",
                "/v1/tokens",
                "API tokens (admin)",
                N,
                200,
                J(many::<TokenInfo>),
            )
        },
        Route {
            query: &[],
            ..route(
                "post",
                "/v1/tokens",
                "create a token, shown only in this answer (admin)",
                J(one::<TokenParams>),
                201,
                J(one::<TokenCreated>),
            )
        },
        Route {
            query: &[],
            ..route(
                "delete",
                "/v1/tokens/{id}",
                "revoke a token (admin)",
                N,
                204,
                N,
            )
        },
        Route {
            query: &[],
            ..route(
                "post",
                "/v1/gc",
                "start a gc job over every tenant (admin)",
                J(one::<GcParams>),
                202,
                J(one::<Job>),
            )
        },
        Route {
            query: &[],
            ..route(
                "post",
                "/v1/reindex",
                "rebuild the backup index from the store (admin)",
                N,
                200,
                J(one::<Reindexed>),
            )
        },
        Route {
            query: TENANT,
            ..route(
                "get",
                "/v1/keys",
                "the key ring's keys and how many backups each wraps (admin)",
                N,
                200,
                J(many::<KeyUsage>),
            )
        },
        Route {
            query: TENANT,
            ..route(
                "post",
                "/v1/keys/rotate",
                "start a key rotation or rewrap job for a tenant (admin)",
                J(one::<KeyRotateParams>),
                202,
                J(one::<Job>),
            )
        },
    ]
}

fn content(body: Body, s: &mut Schemas) -> Option<Value> {
    match body {
        Body::None => None,
        Body::Json(schema) => Some(json!({ "application/json": { "schema": schema(s) } })),
        Body::Wasm => Some(
            json!({ "application/wasm": { "schema": { "type": "string", "format": "binary" } } }),
        ),
        Body::Text => Some(json!({ "text/plain": { "schema": { "type": "string" } } })),
    }
}

fn operation(r: &Route, s: &mut Schemas) -> Value {
    let mut params: Vec<Value> = r
        .path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
        .collect();
    params.extend(r.query.iter().map(|name| {
        json!({ "name": name, "in": "query", "required": false, "schema": { "type": "string" } })
    }));
    let mut ok = json!({ "description": r.summary });
    if let Some(c) = content(r.answer, s) {
        ok["content"] = c;
    }
    let error = json!({
        "description": "the error, with what to do (400 bad request, 401 no token, 403 not allowed, 404 not found or not the tenant's, 409 busy or in use, 413 too large, 429 too many, 503 shutting down)",
        "content": { "application/json": { "schema": one::<ErrorBody>(s) } }
    });
    let mut op = json!({
        "summary": r.summary,
        "parameters": params,
        "responses": { r.status.to_string(): ok, "default": error },
    });
    if let Some(c) = content(r.body, s) {
        op["requestBody"] = json!({ "required": true, "content": c });
    }
    if r.public {
        op["security"] = json!([]);
    }
    op
}

/// The document (built once).
fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut schemas = Schemas::new();
        let mut paths = Map::new();
        for r in routes() {
            let op = operation(&r, &mut schemas);
            let item = paths
                .entry(r.path.to_string())
                .or_insert_with(|| json!({}));
            item[r.method] = op;
        }
        let schemas: Map<String, Value> = schemas
            .into_iter()
            .map(|(n, s)| (n, serde_json::to_value(s).unwrap_or(Value::Null)))
            .collect();
        json!({
            "openapi": "3.1.0",
            "info": {
                "title": "couchvault",
                "version": env!("CARGO_PKG_VERSION"),
                "description": format!("couchvault daemon API {API_VERSION}: backups, restores, jobs, instances, schedules, policies and tokens of CouchDB nodes (docs/API.md)"),
            },
            "paths": paths,
            "components": {
                "schemas": schemas,
                "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            },
            "security": [{ "bearer": [] }],
        })
    })
}

pub(super) async fn openapi() -> Json<&'static Value> {
    Json(document())
}
