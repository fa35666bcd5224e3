//! Tenant keys held in a real OpenStack Barbican (Debian's barbican-api behind the test
//! Keystone, started by `scripts/swift-aio.sh start --barbican`): a key ring created with
//! a Barbican key, backup and restore with it, rotation to and from a Barbican key, the
//! errors when Barbican is down, the secret deleted or in another project, and the key
//! bytes never in a log, the key ring, the metadata, argv, the environment or the output.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use common::swift::SwiftEnv;
use common::{cli_with_env, fixture_checksums, tree, unpack_fixture};

/// The test Keystone and Barbican, or None (skip) outside CI without them.
fn barbican() -> Option<SwiftEnv> {
    let env = SwiftEnv::load()?;
    if !env.has("BARBICAN_URL") {
        assert!(
            std::env::var("CI").is_err(),
            "CI starts Swift with --barbican"
        );
        eprintln!("skipping: Swift was started without --barbican");
        return None;
    }
    Some(env)
}

struct Tenant {
    dir: tempfile::TempDir,
    vars: Vec<(&'static str, String)>,
    /// Every stdout and stderr the CLI printed.
    printed: std::cell::RefCell<String>,
}

impl Tenant {
    /// A working directory whose CLI authenticates as the test user, logging at debug.
    fn new(env: &SwiftEnv) -> Tenant {
        let dir = tempfile::tempdir().unwrap();
        unpack_fixture(dir.path());
        let vars = vec![
            ("OS_AUTH_URL", env.get("KEYSTONE_AUTH_URL").to_string()),
            ("OS_USERNAME", env.get("KEYSTONE_USERNAME").to_string()),
            ("OS_PASSWORD", env.get("KEYSTONE_PASSWORD").to_string()),
            ("OS_PROJECT_NAME", env.get("KEYSTONE_PROJECT").to_string()),
            ("COUCHVAULT_KEYRING", "keys.toml".to_string()),
            ("RUST_LOG", "debug".to_string()),
        ];
        Tenant {
            dir,
            vars,
            printed: Default::default(),
        }
    }

    fn cwd(&self) -> &Path {
        self.dir.path()
    }

    /// Runs the CLI with the tenant's environment and `over` on top of it.
    fn run(&self, args: &[&str], over: &[(&str, &str)]) -> (Option<i32>, String, String) {
        let mut env: Vec<(&str, &str)> = self.vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        env.retain(|(k, _)| !over.iter().any(|(o, _)| o == k));
        env.extend_from_slice(over);
        let (code, out, err) = cli_with_env(self.cwd(), args, &env);
        self.printed
            .borrow_mut()
            .push_str(&format!("{out}\n{err}\n"));
        (code, out, err)
    }

    fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.run(args, &[]);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        out
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    fn backup(&self) -> String {
        self.json(&["backup", "create", "--instance", "n1", "--data-dir", "data"])["backup_id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn restore_matches_fixture(&self, id: &str, to: &str) {
        let target = self.cwd().join(to);
        self.ok(&["restore", id, "--to", target.to_str().unwrap()]);
        for (path, (_, sha)) in fixture_checksums() {
            let rel = path.strip_prefix("data/").unwrap();
            assert_eq!(common::sha256_file(&target.join(rel)), sha, "{path}");
        }
    }

    fn keyring_text(&self) -> String {
        std::fs::read_to_string(self.cwd().join("keys.toml")).unwrap()
    }

    /// The active key of the default tenant: (id, Barbican secret UUID if held there).
    fn active_key(&self) -> (String, Option<String>) {
        let keys = self.json(&["key", "list"]);
        let k = keys
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["active"] == true)
            .unwrap()
            .clone();
        (
            k["key_id"].as_str().unwrap().into(),
            k["barbican"].as_str().map(String::from),
        )
    }

    fn store(&self) -> PathBuf {
        self.cwd().join("couchvault-data/store")
    }
}

/// Barbican's REST API as the test sees it, with its own token.
struct Api {
    http: reqwest::blocking::Client,
    url: String,
    token: String,
}

impl Api {
    fn new(env: &SwiftEnv, user: &str, password: &str, project: &str) -> Api {
        let http = reqwest::blocking::Client::new();
        let body = serde_json::json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"name": "Default"}, "password": password}}},
            "scope": {"project": {"name": project, "domain": {"name": "Default"}}}}});
        let resp = http
            .post(format!("{}/auth/tokens", env.get("KEYSTONE_AUTH_URL")))
            .json(&body)
            .send()
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
        let token = resp.headers()["x-subject-token"].to_str().unwrap().into();
        Api {
            http,
            url: env.get("BARBICAN_URL").into(),
            token,
        }
    }

    fn tester(env: &SwiftEnv) -> Api {
        Api::new(
            env,
            env.get("KEYSTONE_USERNAME"),
            env.get("KEYSTONE_PASSWORD"),
            env.get("KEYSTONE_PROJECT"),
        )
    }

    fn payload(&self, uuid: &str) -> Vec<u8> {
        let resp = self
            .http
            .get(format!("{}/v1/secrets/{uuid}/payload", self.url))
            .header("X-Auth-Token", &self.token)
            .header("Accept", "application/octet-stream")
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().unwrap().to_vec()
    }

    fn delete(&self, uuid: &str) {
        let resp = self
            .http
            .delete(format!("{}/v1/secrets/{uuid}", self.url))
            .header("X-Auth-Token", &self.token)
            .send()
            .unwrap();
        assert_eq!(resp.status(), 204);
    }
}

/// The ways a key's bytes could be written down: hex (either case) and base64.
fn spellings(key: &[u8]) -> Vec<String> {
    let hex = hex::encode(key);
    vec![
        hex.clone(),
        hex.to_uppercase(),
        base64::engine::general_purpose::STANDARD.encode(key),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key),
    ]
}

fn assert_absent(key: &[u8], what: &str, text: &str) {
    for s in spellings(key) {
        assert!(!text.contains(&s), "the key appears in {what}");
    }
}

#[test]
fn barbican_keys_round_trip_rotate_to_and_from_and_never_leak() {
    let Some(env) = barbican() else { return };
    let api = Api::tester(&env);
    let t = Tenant::new(&env);

    // A key ring created from nothing, its key in Barbican.
    let out = t.ok(&["key", "add", "--barbican"]);
    assert!(
        out.contains("created key ring") && out.contains("held in Barbican secret"),
        "{out}"
    );
    let (k1, uuid1) = t.active_key();
    let uuid1 = uuid1.expect("held in Barbican");
    let ring = t.keyring_text();
    assert!(ring.contains(&format!("barbican = \"{uuid1}\"")), "{ring}");
    assert!(!ring.contains("key = "), "no key bytes in the ring: {ring}");
    let key1 = api.payload(&uuid1);
    assert_eq!(key1.len(), 32);

    let first = t.backup();
    t.restore_matches_fixture(&first, "r1");
    t.ok(&["backup", "verify", &first]);

    // From Barbican to a key in the ring, then to a new Barbican key.
    let out = t.ok(&["key", "rotate"]);
    assert!(out.contains("1 backup(s) rewrapped"), "{out}");
    let (k2, uuid2) = t.active_key();
    assert!(uuid2.is_none() && k2 != k1);
    let second = t.backup();
    t.ok(&["key", "rotate", "--barbican"]);
    let (k3, uuid3) = t.active_key();
    let uuid3 = uuid3.expect("held in Barbican");
    assert_ne!(uuid3, uuid1);
    let key3 = api.payload(&uuid3);
    for id in [&first, &second] {
        let shown = t.json(&["backup", "show", id]);
        assert_eq!(shown["encryption"]["key_id"], k3.as_str());
    }
    t.restore_matches_fixture(&second, "r2");
    // The retired keys are no longer needed; the secret itself stays in Barbican.
    t.ok(&["key", "retire", &k1]);
    t.ok(&["key", "retire", &k2]);
    assert_eq!(api.payload(&uuid1), key1);
    t.restore_matches_fixture(&first, "r3");

    // While a rotation runs, the process's argv and environment hold no key.
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_couchvault"))
        .args(["key", "rotate", "--barbican"])
        .current_dir(t.cwd())
        .envs(t.vars.iter().map(|(k, v)| (*k, v.as_str())))
        .env("COUCHVAULT_TEST_PAUSE", "after-rewrap:3000")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    for f in ["cmdline", "environ"] {
        let raw = std::fs::read(format!("/proc/{}/{f}", child.id())).unwrap_or_default();
        let text = String::from_utf8_lossy(&raw);
        assert_absent(&key3, &format!("/proc/PID/{f}"), &text);
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    t.printed
        .borrow_mut()
        .push_str(&String::from_utf8_lossy(&out.stderr));
    let (_, uuid4) = t.active_key();
    let key4 = api.payload(&uuid4.unwrap());

    // Nowhere: not printed (debug logs included), not in the key ring, not in metadata.
    let mut written = t.keyring_text();
    for p in tree(&t.store()) {
        if p.ends_with("backup.json") {
            written.push_str(&std::fs::read_to_string(t.store().join(p)).unwrap());
        }
    }
    for key in [&key1, &key3, &key4] {
        assert_absent(key, "the output", &t.printed.borrow());
        assert_absent(key, "the key ring or a backup's metadata", &written);
    }
    assert!(
        t.printed.borrow().contains("fetched the key from Barbican"),
        "debug logs were captured"
    );
}

#[test]
fn barbican_down_deleted_or_another_project_fails_clearly_and_loses_nothing() {
    let Some(env) = barbican() else { return };
    let api = Api::tester(&env);
    let t = Tenant::new(&env);
    t.ok(&["key", "add", "--barbican"]);
    let (_, uuid) = t.active_key();
    let uuid = uuid.unwrap();
    let id = t.backup();
    let before = tree(&t.store());
    let fail = |args: &[&str], over: &[(&str, &str)], want: &[&str]| {
        let (code, _, err) = t.run(args, over);
        assert_eq!(code, Some(1), "{args:?} succeeded");
        for w in want {
            assert!(err.contains(w), "{args:?}: want '{w}' in: {err}");
        }
        assert_eq!(tree(&t.store()), before, "{args:?} changed the store");
    };

    // Barbican not answering (its endpoint set to a closed port), Keystone not answering.
    std::fs::write(
        t.cwd().join("down.toml"),
        "couchvault_config = 1\n[barbican]\nendpoint = \"http://127.0.0.1:9\"\nmax_attempts = 2\n",
    )
    .unwrap();
    let store = format!("file://{}", t.store().display());
    for args in [
        &["backup", "create", "--instance", "n1", "--data-dir", "data"][..],
        &["backup", "verify", &id],
        &["key", "rewrap"],
    ] {
        let mut all = vec!["--config", "down.toml", "--store", &store];
        all.extend_from_slice(args);
        fail(
            &all,
            &[],
            &["cannot reach Barbican at http://127.0.0.1:9", "try again"],
        );
    }
    fail(
        &["backup", "verify", &id],
        &[("OS_AUTH_URL", "http://127.0.0.1:9/v3")],
        &["cannot reach Keystone at http://127.0.0.1:9/v3"],
    );
    fail(
        &["backup", "verify", &id],
        &[("OS_PASSWORD", "wrong")],
        &["refused user 'tester'", "OS_PASSWORD"],
    );
    fail(
        &["backup", "verify", &id],
        &[("OS_PASSWORD", "")],
        &["no Barbican password (OS_PASSWORD)"],
    );

    // A user of another project may not read the secret.
    let other = [
        ("OS_USERNAME", env.get("BARBICAN_OTHER_USERNAME")),
        ("OS_PASSWORD", env.get("BARBICAN_OTHER_PASSWORD")),
        ("OS_PROJECT_NAME", env.get("BARBICAN_OTHER_PROJECT")),
    ];
    fail(
        &["backup", "verify", &id],
        &other,
        &[&format!("refused secret {uuid}"), "'other'", "403"],
    );
    let (_, listed, _) = t.run(&["--json", "backup", "list"], &other);
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed[0]["status"], "no_key", "{listed}");
    let target = t.cwd().join("never");
    fail(
        &["restore", &id, "--to", target.to_str().unwrap()],
        &other,
        &["403"],
    );
    assert!(!target.exists(), "nothing restored");

    // Still all fine with the right identity.
    t.ok(&["backup", "verify", &id]);

    // The secret deleted: a clear error, and retiring the key is refused.
    api.delete(&uuid);
    fail(
        &["backup", "verify", &id],
        &[],
        &[&format!("Barbican has no secret {uuid} (404)"), "deleted"],
    );
    fail(
        &["key", "rotate"],
        &[],
        &["not wrapped with the active key", "key rewrap"],
    );
    let (active, _) = t.active_key();
    let keys = t.json(&["key", "list"]);
    let old = keys.as_array().unwrap()[0]["key_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(old, active);
    fail(&["key", "retire", &old], &[], &["cannot be read now"]);
}
