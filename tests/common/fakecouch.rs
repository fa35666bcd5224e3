//! A local HTTP server that answers like CouchDB 3.5 for the routes couchvault uses, built
//! from the shard maps recorded in the fixture JSON. Like CouchDB, a database whose shard
//! map does not name the node the server runs as answers 500 "No DB shards could be
//! opened". Every PUT of a shard map is recorded for the test to check.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

#[derive(Default)]
pub struct Couch {
    pub node: String,
    pub maps: Mutex<BTreeMap<String, Value>>,
    pub doc_counts: BTreeMap<String, u64>,
    pub puts: Mutex<Vec<(String, Value)>>,
    /// Basic-auth headers seen, to check credentials went only where they should.
    pub auth_seen: Mutex<Vec<String>>,
}

/// The shard map document CouchDB 3.5 keeps for a database (`/_node/_local/_dbs/{db}`).
fn shard_map_doc(name: &str, db: &Value) -> Value {
    let suffix = db["shard_suffix"].as_str().unwrap();
    let shards = db["shards"].as_object().unwrap();
    let mut by_node: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut changelog = Vec::new();
    for (range, nodes) in shards {
        for n in nodes.as_array().unwrap() {
            let n = n.as_str().unwrap().to_string();
            by_node.entry(n.clone()).or_default().push(range.clone());
            changelog.push(json!(["add", range, n]));
        }
    }
    json!({
        "_id": name,
        "_rev": "1-5e2ab9bf0e1e0a5f3a3c3ce1a6f4b2a1",
        "shard_suffix": suffix.bytes().collect::<Vec<u8>>(),
        "changelog": changelog,
        "by_node": by_node,
        "by_range": shards,
        "props": {}
    })
}

impl Couch {
    /// A server running as `node`, with the fixture's databases.
    pub fn from_fixture(node: &str) -> Couch {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/couchdb-3-datadir.json");
        let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let dbs = fixture["databases"].as_object().unwrap();
        Couch {
            node: node.to_string(),
            maps: Mutex::new(
                dbs.iter()
                    .map(|(n, d)| (n.clone(), shard_map_doc(n, d)))
                    .collect(),
            ),
            doc_counts: dbs
                .iter()
                .map(|(n, d)| (n.clone(), d["doc_count"].as_u64().unwrap()))
                .collect(),
            ..Couch::default()
        }
    }

    fn opens(&self, db: &str) -> bool {
        let maps = self.maps.lock().unwrap();
        maps.get(db).is_some_and(|m| {
            m["by_range"].as_object().unwrap().values().all(|nodes| {
                nodes
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|n| n == self.node.as_str())
            })
        })
    }
}

type Shared = Arc<Couch>;

fn note_auth(c: &Couch, headers: &axum::http::HeaderMap) {
    if let Some(v) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        c.auth_seen.lock().unwrap().push(v.to_string());
    }
}

async fn db_route(
    State(c): State<Shared>,
    headers: axum::http::HeaderMap,
    Path(path): Path<String>,
) -> (StatusCode, Json<Value>) {
    note_auth(&c, &headers);
    let (db, security) = match path.strip_suffix("/_security") {
        Some(db) => (db.to_string(), true),
        None => (path, false),
    };
    if !c.maps.lock().unwrap().contains_key(&db) {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "not_found", "reason": "Database does not exist."})),
        );
    }
    if !c.opens(&db) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(
                json!({"error": "internal_server_error", "reason": "No DB shards could be opened."}),
            ),
        );
    }
    if security {
        return (StatusCode::OK, Json(json!({})));
    }
    (
        StatusCode::OK,
        Json(json!({
            "db_name": db,
            "doc_count": c.doc_counts[&db],
            "doc_del_count": 0,
            "update_seq": "1-g1AAAA",
        })),
    )
}

async fn get_map(State(c): State<Shared>, Path(db): Path<String>) -> (StatusCode, Json<Value>) {
    match c.maps.lock().unwrap().get(&db) {
        Some(m) => (StatusCode::OK, Json(m.clone())),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "not_found", "reason": "missing"})),
        ),
    }
}

async fn put_map(
    State(c): State<Shared>,
    Path(db): Path<String>,
    Json(doc): Json<Value>,
) -> (StatusCode, Json<Value>) {
    c.puts.lock().unwrap().push((db.clone(), doc.clone()));
    c.maps.lock().unwrap().insert(db.clone(), doc);
    (
        StatusCode::CREATED,
        Json(json!({"ok": true, "id": db, "rev": "2-x"})),
    )
}

/// Serves on a free 127.0.0.1 port in a background thread; returns the URL.
pub fn serve(couch: Shared) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let node = couch.node.clone();
    let app = Router::new()
        .route(
            "/",
            get(|| async { Json(json!({"couchdb": "Welcome", "version": "3.5.0"})) }),
        )
        .route("/_up", get(|| async { Json(json!({"status": "ok"})) }))
        .route(
            "/_membership",
            get(move || async move { Json(json!({"all_nodes": [node], "cluster_nodes": []})) }),
        )
        .route(
            "/_all_dbs",
            get(|State(c): State<Shared>| async move {
                Json(json!(c
                    .maps
                    .lock()
                    .unwrap()
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()))
            }),
        )
        .route("/_node/_local/_dbs/{*db}", get(get_map).put(put_map))
        .route("/{*path}", get(db_route))
        .with_state(couch);
    super::serve_in_background(listener, app);
    url
}
