//! A small CouchDB HTTP client: version, node name, per-database stats and security at
//! backup time; waiting for CouchDB, rewriting shard maps and checking databases after a
//! restore. The URL and credentials come from `[couchdb]` or `COUCHDB_URL`,
//! `COUCHDB_USER`, `COUCHDB_PASSWORD`; they never reach argv, logs or error messages.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, RequestBuilder};
use serde_json::Value;

pub use crate::format::{DbStats, LiveInfo};

#[derive(Debug, thiserror::Error)]
pub enum CouchError {
    #[error("CouchDB at {url}: {reason}")]
    Http { url: String, reason: String },
    #[error("CouchDB URL '{0}' is not http(s)://HOST[:PORT][/PREFIX]")]
    Url(String),
}

/// A password that never prints.
#[derive(Clone)]
pub struct Password(pub String);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

pub struct CouchClient {
    /// Without credentials: safe to show.
    base: String,
    user: Option<String>,
    password: Option<Password>,
    http: Client,
}

/// Percent-encodes a database name for a path segment (`/` included, as CouchDB wants).
/// What `POST /_dbs_info` answered.
#[derive(Debug)]
pub enum DbsInfo {
    /// Each database asked for: its size and document count, None when it is gone.
    Each(Vec<(String, Option<(u64, u64)>)>),
    /// More names than the server takes in one request.
    TooMany,
}

pub fn encode_db(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl CouchClient {
    /// A client for `url`; user info inside the URL is taken out and used as credentials.
    pub fn new(
        url: &str,
        user: Option<String>,
        password: Option<Password>,
    ) -> Result<CouchClient, CouchError> {
        let parsed = reqwest::Url::parse(url).map_err(|_| CouchError::Url(redact(url)))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(CouchError::Url(redact(url)));
        }
        let url_user = (!parsed.username().is_empty()).then(|| parsed.username().to_string());
        let url_pass = parsed.password().map(|p| Password(p.to_string()));
        let mut clean = parsed.clone();
        let _ = clean.set_username("");
        let _ = clean.set_password(None);
        Ok(CouchClient {
            base: clean.as_str().trim_end_matches('/').to_string(),
            user: user.or(url_user),
            password: password.or(url_pass),
            http: Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .map_err(|e| CouchError::Http {
                    url: String::new(),
                    reason: e.to_string(),
                })?,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn req(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        let rb = self.http.request(method, format!("{}{path}", self.base));
        match &self.user {
            Some(u) => rb.basic_auth(u, self.password.as_ref().map(|p| &p.0)),
            None => rb,
        }
    }

    fn fail(&self, path: &str, reason: impl fmt::Display) -> CouchError {
        CouchError::Http {
            url: format!("{}{path}", self.base),
            reason: reason.to_string(),
        }
    }

    /// Sends; a non-2xx answer is an error with CouchDB's reason.
    fn send(&self, rb: RequestBuilder, path: &str) -> Result<(u16, Value), CouchError> {
        // reqwest's errors name the URL, which holds no credentials; their causes say
        // what failed (e.g. a request body that could not be read).
        let resp = rb.send().map_err(|e| {
            let mut causes = String::new();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                causes = format!("{causes}: {c}");
                cause = c.source();
            }
            self.fail(path, format!("{}{causes}", e.without_url()))
        })?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().unwrap_or(Value::Null);
        Ok((status, body))
    }

    fn get(&self, path: &str) -> Result<Value, CouchError> {
        let (status, body) = self.send(self.req(reqwest::Method::GET, path), path)?;
        if !(200..300).contains(&status) {
            return Err(self.fail(path, format!("HTTP {status} {}", reason_of(&body))));
        }
        Ok(body)
    }

    pub fn version(&self) -> Result<String, CouchError> {
        let w = self.get("/")?;
        Ok(w.get("version")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string())
    }

    /// This node's name from `/_membership` (the only node, or the one matching `hint`).
    pub fn node_name(&self, hint: Option<&str>) -> Result<Option<String>, CouchError> {
        let m = self.get("/_membership")?;
        let nodes: Vec<String> = m
            .get("all_nodes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str().map(str::to_string))
            .collect();
        Ok(match (nodes.len(), hint) {
            (1, _) => nodes.into_iter().next(),
            (_, Some(h)) => nodes.into_iter().find(|n| n == h),
            _ => None,
        })
    }

    pub fn all_dbs(&self) -> Result<Vec<String>, CouchError> {
        let v = self.get("/_all_dbs")?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d.as_str().map(str::to_string))
            .collect())
    }

    /// Bytes of a database's files (`sizes.file`: one copy of each shard range) and its
    /// document count, in one request.
    pub fn db_size_and_count(&self, db: &str) -> Result<(u64, u64), CouchError> {
        let info = self.get(&format!("/{}", encode_db(db)))?;
        let field = |p: &str| info.pointer(p).and_then(Value::as_u64).unwrap_or(0);
        Ok((field("/sizes/file"), field("/doc_count")))
    }

    pub fn db_stats(&self, db: &str) -> Result<DbStats, CouchError> {
        let path = format!("/{}", encode_db(db));
        let info = self.get(&path)?;
        let count = |k: &str| info.get(k).and_then(Value::as_u64).unwrap_or(0);
        let security = self
            .get(&format!("{path}/_security"))
            .unwrap_or(Value::Null);
        Ok(DbStats {
            doc_count: count("doc_count"),
            doc_del_count: count("doc_del_count"),
            update_seq: info.get("update_seq").cloned().unwrap_or(Value::Null),
            security,
        })
    }

    /// Everything recorded at backup start. Never fails: an unreachable CouchDB is recorded
    /// as such, and the backup goes on.
    pub fn live_info(&self, node_hint: Option<&str>) -> LiveInfo {
        let collect = || -> Result<LiveInfo, CouchError> {
            let version = self.version()?;
            let node_name = self.node_name(node_hint).unwrap_or(None);
            let mut databases = BTreeMap::new();
            for db in self.all_dbs()? {
                databases.insert(db.clone(), self.db_stats(&db)?);
            }
            Ok(LiveInfo {
                reachable: true,
                error: None,
                version: Some(version),
                node_name,
                databases,
            })
        };
        collect().unwrap_or_else(|e| LiveInfo {
            reachable: false,
            error: Some(e.to_string()),
            ..LiveInfo::default()
        })
    }

    /// Waits until CouchDB answers `/_up` (or `/` for servers without it, like PouchDB
    /// Server).
    pub fn wait_up(&self, timeout: Duration) -> Result<(), CouchError> {
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            match self.send(self.req(reqwest::Method::GET, "/_up"), "/_up") {
                Ok((200, _)) => return Ok(()),
                Ok((404, _)) | Ok((400, _)) => match self.get("/") {
                    Ok(_) => return Ok(()),
                    Err(e) => last = e.to_string(),
                },
                Ok((s, b)) => last = format!("HTTP {s} {}", reason_of(&b)),
                Err(e) => last = e.to_string(),
            }
            if Instant::now() >= deadline {
                return Err(self.fail(
                    "/_up",
                    format!("not up after {}s ({last})", timeout.as_secs()),
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Shard map documents of the node-local `_dbs`, in id order: at most `limit`, after
    /// the id `after`.
    pub fn shard_maps_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Value>, CouchError> {
        let mut path = format!("/_node/_local/_dbs/_all_docs?include_docs=true&limit={limit}");
        if let Some(id) = after {
            let key = Value::String(id.to_string()).to_string();
            path.push_str(&format!("&skip=1&startkey={}", encode_db(&key)));
        }
        let page = self.get(&path)?;
        Ok(page["rows"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|row| row.get("doc").cloned())
            .collect())
    }

    /// The size (`sizes.file`) and document count of each of `dbs` in one request
    /// (`POST /_dbs_info`, at most `max_db_number_for_dbs_info_req` names, 100 by default);
    /// None for a database that is gone. A server refusing that many is `TooMany`.
    pub fn dbs_info(&self, dbs: &[String]) -> Result<DbsInfo, CouchError> {
        let path = "/_dbs_info";
        let rb = self
            .req(reqwest::Method::POST, path)
            .json(&serde_json::json!({ "keys": dbs }));
        let (status, body) = self.send(rb, path)?;
        if status == 400 && body["reason"] == "too_many_keys" {
            return Ok(DbsInfo::TooMany);
        }
        if !(200..300).contains(&status) {
            return Err(self.fail(path, format!("HTTP {status} {}", reason_of(&body))));
        }
        let field = |info: &Value, p: &str| info.pointer(p).and_then(Value::as_u64).unwrap_or(0);
        Ok(DbsInfo::Each(
            body.as_array()
                .into_iter()
                .flatten()
                .filter_map(|row| {
                    let name = row["key"].as_str()?.to_string();
                    let info = row.get("info");
                    Some((
                        name,
                        info.map(|i| (field(i, "/sizes/file"), field(i, "/doc_count"))),
                    ))
                })
                .collect(),
        ))
    }

    pub fn shard_map(&self, db: &str) -> Result<Value, CouchError> {
        self.get(&format!("/_node/_local/_dbs/{}", encode_db(db)))
    }

    pub fn put_shard_map(&self, db: &str, doc: &Value) -> Result<(), CouchError> {
        let path = format!("/_node/_local/_dbs/{}", encode_db(db));
        let (status, body) = self.send(self.req(reqwest::Method::PUT, &path).json(doc), &path)?;
        if !(200..300).contains(&status) {
            return Err(self.fail(&path, format!("HTTP {status} {}", reason_of(&body))));
        }
        Ok(())
    }

    /// A node-local resource through the cluster's API: `/_node/<node>/<path>`.
    pub fn node_get(&self, node: &str, path: &str) -> Result<Value, CouchError> {
        self.get(&format!("/_node/{}{path}", encode_db(node)))
    }

    /// The nodes joined in the cluster (`/_membership`'s `cluster_nodes`).
    pub fn membership(&self) -> Result<Vec<String>, CouchError> {
        self.membership_of("cluster_nodes")
    }

    /// The cluster's nodes this node is connected to now (`all_nodes`): the others are down.
    pub fn connected_nodes(&self) -> Result<Vec<String>, CouchError> {
        self.membership_of("all_nodes")
    }

    /// The cluster's nodes this node is not connected to now (joined, but down).
    pub fn down_nodes(&self) -> Result<std::collections::BTreeSet<String>, CouchError> {
        let connected = self.connected_nodes()?;
        Ok(self
            .membership()?
            .into_iter()
            .filter(|n| !connected.contains(n))
            .collect())
    }

    fn membership_of(&self, list: &str) -> Result<Vec<String>, CouchError> {
        let v = self.get("/_membership")?;
        Ok(v.get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str().map(str::to_string))
            .collect())
    }

    /// The cluster's default replica count (`[cluster] n`).
    pub fn cluster_n(&self) -> Result<Option<usize>, CouchError> {
        let v = self.get("/_node/_local/_config/cluster/n")?;
        Ok(v.as_str().and_then(|n| n.parse().ok()))
    }

    /// Deletes a database (every shard on every node).
    pub fn delete_db(&self, db: &str) -> Result<(), CouchError> {
        let path = format!("/{}", encode_db(db));
        let (status, body) = self.send(self.req(reqwest::Method::DELETE, &path), &path)?;
        if !(200..300).contains(&status) {
            return Err(self.fail(&path, format!("HTTP {status} {}", reason_of(&body))));
        }
        Ok(())
    }

    /// Whether a database holds nothing but design documents (as a new cluster's `_users`).
    pub fn only_design_docs(&self, db: &str) -> Result<bool, CouchError> {
        let v = self.get(&format!("/{}/_all_docs?limit=11", encode_db(db)))?;
        let rows = v.get("rows").and_then(Value::as_array);
        Ok(
            v.get("total_rows").and_then(Value::as_u64).unwrap_or(0) <= 10
                && rows.into_iter().flatten().all(|r| {
                    r.get("id")
                        .and_then(Value::as_str)
                        .is_some_and(|id| id.starts_with("_design/"))
                }),
        )
    }

    /// Creates a database; false when it exists already.
    pub fn create_db(&self, db: &str, partitioned: bool) -> Result<bool, CouchError> {
        let query = if partitioned { "?partitioned=true" } else { "" };
        let path = format!("/{}{query}", encode_db(db));
        let (status, body) = self.send(self.req(reqwest::Method::PUT, &path), &path)?;
        match status {
            201 | 202 => Ok(true),
            412 => Ok(false),
            _ => Err(self.fail(&path, format!("HTTP {status} {}", reason_of(&body)))),
        }
    }

    /// `POST /{db}/_revs_diff`: which of these revisions the database lacks.
    pub fn revs_diff(&self, db: &str, revs: &Value) -> Result<Value, CouchError> {
        self.post(&format!("/{}/_revs_diff", encode_db(db)), revs.to_string())
    }

    /// `POST /{db}/_bulk_docs` with a JSON body already written; the per-document answers.
    pub fn bulk_docs(&self, db: &str, body: String) -> Result<Value, CouchError> {
        self.post(&format!("/{}/_bulk_docs", encode_db(db)), body)
    }

    /// `PUT /{db}/{id}?new_edits=false` of one revision as `multipart/related` (its JSON,
    /// then each attachment's raw bytes). A refusal (4xx) is an answer with `error`, as
    /// `_bulk_docs` gives per document; a failure of the server is an error.
    pub fn put_multipart(
        &self,
        db: &str,
        id: &str,
        boundary: &str,
        body: super::multipart::MultipartBody,
    ) -> Result<Value, CouchError> {
        let doc = match id.strip_prefix("_design/") {
            Some(name) => format!("_design/{}", encode_db(name)),
            None => encode_db(id),
        };
        let path = format!("/{}/{doc}?new_edits=false", encode_db(db));
        let len = body.content_length();
        let rb = self
            .req(reqwest::Method::PUT, &path)
            .header(
                "content-type",
                format!("multipart/related; boundary=\"{boundary}\""),
            )
            .timeout(Duration::from_secs(600))
            .body(reqwest::blocking::Body::sized(body, len));
        let (status, answer) = self.send(rb, &path)?;
        match status {
            200..=299 => Ok(answer),
            400..=499 => Ok(serde_json::json!({
                "error": answer.get("error").cloned().unwrap_or(Value::String(format!("HTTP {status}"))),
                "reason": answer.get("reason").cloned().unwrap_or(Value::Null),
            })),
            _ => Err(self.fail(&path, format!("HTTP {status} {}", reason_of(&answer)))),
        }
    }

    /// `PUT /{db}/_revs_limit`.
    pub fn put_revs_limit(&self, db: &str, limit: u64) -> Result<(), CouchError> {
        self.put_json(
            &format!("/{}/_revs_limit", encode_db(db)),
            limit.to_string(),
        )
    }

    /// `PUT /{db}/_security`.
    pub fn put_security(&self, db: &str, security: String) -> Result<(), CouchError> {
        self.put_json(&format!("/{}/_security", encode_db(db)), security)
    }

    fn put_json(&self, path: &str, body: String) -> Result<(), CouchError> {
        let rb = self
            .req(reqwest::Method::PUT, path)
            .header("content-type", "application/json")
            .body(body);
        let (status, body) = self.send(rb, path)?;
        if !(200..300).contains(&status) {
            return Err(self.fail(path, format!("HTTP {status} {}", reason_of(&body))));
        }
        Ok(())
    }

    fn post(&self, path: &str, body: String) -> Result<Value, CouchError> {
        // Large batches (attachments inline) take longer than the default timeout.
        let rb = self
            .req(reqwest::Method::POST, path)
            .header("content-type", "application/json")
            .timeout(Duration::from_secs(600))
            .body(body);
        let (status, body) = self.send(rb, path)?;
        if !(200..300).contains(&status) {
            return Err(self.fail(path, format!("HTTP {status} {}", reason_of(&body))));
        }
        Ok(body)
    }

    /// Whether credentials were given inside the URL (refused where the URL is argv).
    pub fn url_has_credentials(url: &str) -> bool {
        reqwest::Url::parse(url)
            .map(|u| !u.username().is_empty() || u.password().is_some())
            .unwrap_or(false)
    }

    /// A database's doc count now, or why it cannot be opened.
    pub fn doc_count(&self, db: &str) -> Result<u64, CouchError> {
        let info = self.get(&format!("/{}", encode_db(db)))?;
        Ok(info.get("doc_count").and_then(Value::as_u64).unwrap_or(0))
    }
}

fn reason_of(body: &Value) -> String {
    let e = body.get("error").and_then(Value::as_str).unwrap_or("");
    let r = body.get("reason").and_then(Value::as_str).unwrap_or("");
    format!("{e} {r}").trim().to_string()
}

/// A URL with any password replaced, for messages about a URL that did not parse.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

/// A shard map with node `from` renamed to `to` in `by_node` and `by_range`; everything
/// else (suffix, changelog, props, `_rev`) unchanged.
pub fn rename_node(doc: &Value, from: &str, to: &str) -> Value {
    let mut doc = doc.clone();
    if let Some(by_node) = doc.get_mut("by_node").and_then(Value::as_object_mut) {
        if let Some(ranges) = by_node.remove(from) {
            by_node.insert(to.to_string(), ranges);
        }
    }
    if let Some(by_range) = doc.get_mut("by_range").and_then(Value::as_object_mut) {
        for nodes in by_range.values_mut() {
            for n in nodes.as_array_mut().into_iter().flatten() {
                if n.as_str() == Some(from) {
                    *n = Value::String(to.to_string());
                }
            }
        }
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_urls_are_encoded_and_redacted() {
        assert_eq!(
            encode_db("fixture/nested+name$(x)"),
            "fixture%2Fnested%2Bname%24%28x%29"
        );
        assert_eq!(
            redact("http://admin:s3cret@host:5984"),
            "http://***@host:5984"
        );
        let c = CouchClient::new("http://admin:s3cret@127.0.0.1:5984/", None, None).expect("url");
        assert_eq!(c.base(), "http://127.0.0.1:5984");
        assert_eq!(c.user.as_deref(), Some("admin"));
        assert!(!format!("{:?}", c.password).contains("s3cret"));
        assert!(CouchClient::new("ftp://x", None, None).is_err());
    }

    #[test]
    fn renaming_a_node_touches_only_the_node() {
        let doc = serde_json::json!({
            "_id": "db", "_rev": "1-a", "shard_suffix": [46, 49],
            "changelog": [["add", "00000000-7fffffff", "couchdb@127.0.0.1"]],
            "by_node": {"couchdb@127.0.0.1": ["00000000-7fffffff"]},
            "by_range": {"00000000-7fffffff": ["couchdb@127.0.0.1"]},
            "props": {}
        });
        let r = rename_node(&doc, "couchdb@127.0.0.1", "couchdb@other");
        assert_eq!(
            r["by_node"],
            serde_json::json!({"couchdb@other": ["00000000-7fffffff"]})
        );
        assert_eq!(
            r["by_range"]["00000000-7fffffff"],
            serde_json::json!(["couchdb@other"])
        );
        assert_eq!(r["changelog"], doc["changelog"]);
        assert_eq!(r["_rev"], "1-a");
    }
}
