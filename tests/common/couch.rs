//! Real Apache CouchDB 3.5 nodes for tests, through `../shared/couchdb/couch.sh` (see its
//! README): started on 127.0.0.1 with a node name of the test's own (an Erlang node name is
//! unique per host, and tests run in parallel), removed when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use reqwest::blocking::{Client, RequestBuilder};
use reqwest::Method;
use serde_json::Value;

/// `couch.sh`, or None (the test is skipped, saying why) when this machine has no
/// `../shared/couchdb/`. Under CI (`CI=true`) it is always there: missing is a failure.
pub fn script() -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/couchdb/couch.sh");
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "CI has a real CouchDB at {}, but it is missing",
        path.display()
    );
    eprintln!(
        "skipping: this test needs a real CouchDB and {} is not on this machine",
        path.display()
    );
    None
}

pub struct Couch {
    script: PathBuf,
    pub name: String,
    pub url: String,
    pub etc: PathBuf,
    pub data: PathBuf,
    pub node: String,
    pub instance: PathBuf,
    http: Client,
}

fn assignments(out: &str) -> std::collections::HashMap<String, String> {
    out.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Couch {
    /// Starts a fresh single node `name` on `port` named `node`.
    pub fn start(script: &Path, name: &str, port: u16, node: &str) -> Couch {
        let out = couch_sh(script, &["start", name, &port.to_string(), node]);
        Couch::of(script, name, out.trim())
    }

    /// Starts a real cluster of `n` nodes `NAME-1..NAME-n` (n = min(3, N) copies, q = 2).
    pub fn cluster(script: &Path, name: &str, n: usize, port: u16) -> Vec<Couch> {
        let out = couch_sh(
            script,
            &["cluster", name, &n.to_string(), &port.to_string()],
        );
        out.lines()
            .filter(|l| l.contains("COUCHDB_URL="))
            .enumerate()
            .map(|(i, line)| Couch::of(script, &format!("{name}-{}", i + 1), line))
            .collect()
    }

    /// A node from the assignments couch.sh printed for it.
    fn of(script: &Path, name: &str, printed: &str) -> Couch {
        let env = assignments(printed);
        let get = |k: &str| {
            env.get(k)
                .cloned()
                .unwrap_or_else(|| panic!("couch.sh printed no {k}"))
        };
        Couch {
            script: script.to_path_buf(),
            name: name.to_string(),
            url: get("COUCHDB_URL"),
            etc: PathBuf::from(get("COUCH_ETC")),
            data: PathBuf::from(get("COUCH_DATA")),
            node: get("COUCH_NODE"),
            instance: PathBuf::from(get("COUCH_INSTANCE")),
            http: Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
        }
    }

    fn run(&self, verb: &str) {
        let out = Command::new(&self.script)
            .args([verb, &self.name])
            .output()
            .expect("run couch.sh");
        assert!(
            out.status.success(),
            "couch.sh {verb} {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// couchvault's client for this node, as admin.
    pub fn client(&self) -> couchvault::couchdb::http::CouchClient {
        couchvault::couchdb::http::CouchClient::new(
            &self.url,
            Some("admin".into()),
            Some(couchvault::couchdb::http::Password("password".into())),
        )
        .unwrap()
    }

    /// Clean stop (SIGTERM, waits).
    pub fn stop(&self) {
        self.run("stop");
    }

    /// Starts the stopped node again as it is on disk (e.g. after a restore).
    pub fn restart(&self) {
        self.run("restart");
    }

    /// Shell commands that stop and start this node: restore hooks.
    pub fn hooks(&self) -> (String, String) {
        let s = self.script.display();
        (
            format!("{s} stop {} > /dev/null", self.name),
            format!("{s} restart {} > /dev/null", self.name),
        )
    }

    /// The environment that points couchvault at this node.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("COUCHDB_URL", self.url.clone()),
            ("COUCHDB_USER", "admin".into()),
            ("COUCHDB_PASSWORD", "password".into()),
        ]
    }

    pub fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url))
            .basic_auth("admin", Some("password"))
    }

    /// Sends and returns (status, JSON body or Null).
    pub fn call(&self, rb: RequestBuilder) -> (u16, Value) {
        let r = rb.send().expect("CouchDB reachable");
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }

    pub fn get(&self, path: &str) -> Value {
        let (s, v) = self.call(self.req(Method::GET, path));
        assert_eq!(s, 200, "GET {path}: {v}");
        v
    }

    /// PUT or POST JSON; must answer 2xx.
    pub fn send(&self, method: Method, path: &str, body: &Value) -> Value {
        let (s, v) = self.call(self.req(method.clone(), path).json(body));
        assert!((200..300).contains(&s), "{method} {path}: {s} {v}");
        v
    }

    pub fn doc_count(&self, db: &str) -> u64 {
        self.get(&format!("/{}", encode(db)))["doc_count"]
            .as_u64()
            .unwrap()
    }

    /// CouchDB's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.instance.join("log/couchdb.log")).unwrap_or_default()
    }
}

impl Drop for Couch {
    fn drop(&mut self) {
        let _ = Command::new(&self.script).args(["rm", &self.name]).output();
    }
}

fn couch_sh(script: &Path, args: &[&str]) -> String {
    let out = Command::new(script)
        .args(args)
        .output()
        .expect("run couch.sh");
    assert!(
        out.status.success(),
        "couch.sh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A database name as one path segment (`/` included, as CouchDB wants).
pub fn encode(db: &str) -> String {
    db.replace('/', "%2F")
}
