//! The daemon end to end, as a real process over HTTP: crash safety (R1, R7), tenant
//! isolation on every route (R6), bad input, and scheduled backups with retention and an
//! on-demand restore against the local store and the real Swift.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::swift::{unique, SwiftEnv};
use common::{couchvault, generate_data, sha256_file, tree, unpack_fixture};
use couchvault::catalog;
use couchvault::keyring::KeyRing;
use couchvault::store::{LocalStore, Store};
use reqwest::Method;
use serde_json::{json, Value};

/// The GFS retention component built by scripts/test.sh; None (skip) outside CI.
fn gfs_wasm() -> Option<Vec<u8>> {
    common::policies::component("gfs_retention.wasm")
}

/// A key ring with keys for `tenants`, at `dir/keyring.toml`.
fn keyring(dir: &Path, tenants: &[&str]) -> KeyRing {
    let path = dir.join("keyring.toml");
    let mut ring = KeyRing::create(&path, tenants[0]).unwrap();
    for t in &tenants[1..] {
        ring.add_key(t, false).unwrap();
    }
    ring.save(false).unwrap();
    ring
}

fn store_line(dir: &Path) -> String {
    format!("store = \"file://{}\"\n", dir.join("store").display())
}

fn backup_body(instance: &str, data: &Path) -> Value {
    // Generated data sets have no real shard map.
    json!({ "instance": instance, "data_dir": data, "allow_incomplete": true })
}

/// Starts a backup and returns its job.
fn start_backup(d: &Daemon, token: &str, instance: &str, data: &Path) -> Value {
    let (s, job) = d.post("/v1/backups", token, &backup_body(instance, data));
    assert_eq!(s, 202, "{job}");
    job
}

/// Registers an instance (admin) of `tenant` backing up `data`.
fn register(d: &Daemon, tenant: &str, name: &str, data: &Path, in_place: bool) -> Value {
    let (s, v) = d.post(
        "/v1/instances",
        &d.admin,
        &json!({ "name": name, "tenant": tenant, "data_dir": data, "restore_in_place": in_place }),
    );
    assert_eq!(s, 201, "{v}");
    v
}

fn backup_ids(d: &Daemon, token: &str) -> Vec<String> {
    let (s, v) = d.get("/v1/backups", token);
    assert_eq!(s, 200, "{v}");
    v.as_array()
        .unwrap()
        .iter()
        .map(|b| b["backup_id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn r7_acknowledged_schedule_changes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    keyring(dir.path(), &["default"]);
    let mut d = Daemon::start(dir.path(), &store_line(dir.path()), "", &[]);
    for round in 0..3 {
        let mut acked = Vec::new();
        for i in 0..15 {
            let (s, v) = d.post(
                "/v1/schedules",
                &d.admin,
                &json!({
                    "name": format!("r{round}-s{i}"),
                    "instance": format!("db{i}"),
                    "data_dir": "/var/lib/couchdb",
                    "cron": "17 3 * * *",
                    "tz": "Europe/Berlin",
                }),
            );
            assert_eq!(s, 201, "{v}");
            acked.push(v["id"].as_str().unwrap().to_string());
        }
        // Pause the last one; kill the daemon the moment the answer arrives.
        let last = acked.last().unwrap().clone();
        let (s, v) = d.post(&format!("/v1/schedules/{last}/pause"), &d.admin, &json!({}));
        assert_eq!(s, 200, "{v}");
        d.kill9();
        d.restart(&[]);
        let (s, list) = d.get("/v1/schedules", &d.admin);
        assert_eq!(s, 200);
        let ids: Vec<&str> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap())
            .collect();
        for id in &acked {
            assert!(
                ids.contains(&id.as_str()),
                "round {round}: schedule {id} lost; have {} of {}",
                ids.len(),
                acked.len()
            );
        }
        assert_eq!(ids.len(), 15 * (round + 1));
        let (_, shown) = d.get(&format!("/v1/schedules/{last}"), &d.admin);
        assert_eq!(shown["paused"], true, "the acknowledged pause was lost");
        assert_eq!(shown["next_run"], Value::Null);
    }
    // SIGTERM: a clean exit.
    let status = d.terminate();
    assert!(status.success(), "{status}: {}", d.log());
    assert!(d.log().contains("daemon stopped"), "{}", d.log());
}

#[test]
fn r1_kill_9_during_backups_leaves_no_trace_and_the_next_run_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    keyring(dir.path(), &["default"]);
    let data = dir.path().join("gen");
    generate_data(&data, 24, 5);
    let extra = format!(
        "{}[backup]\nsegment_size = 1048576\n",
        store_line(dir.path())
    );
    let mut d = Daemon::start(dir.path(), &extra, "", &[]);
    let store = LocalStore::new(dir.path().join("store"), 1 << 20);
    for trial in 0..2 {
        for point in ["after-first-file", "mid-stream", "before-commit"] {
            d.kill9();
            d.restart(&[("COUCHVAULT_TEST_PAUSE", &format!("{point}:120000"))]);
            let pauses = d.log().matches("COUCHVAULT_TEST_PAUSE: pausing").count();
            let job = start_backup(&d, &d.admin, "node1", &data);
            let job_id = job["id"].as_str().unwrap().to_string();
            let backup_id = job["backup_id"].as_str().unwrap().to_string();
            let started = Instant::now();
            while d.log().matches("COUCHVAULT_TEST_PAUSE: pausing").count() == pauses {
                assert!(started.elapsed() < Duration::from_secs(60), "{}", d.log());
                std::thread::sleep(Duration::from_millis(20));
            }
            if trial == 0 && point == "mid-stream" {
                // One job per instance: a second backup of it is refused while one runs.
                let (s, v) = d.post("/v1/backups", &d.admin, &backup_body("node1", &data));
                assert_eq!(s, 409, "{v}");
                assert!(v["error"].as_str().unwrap().contains("busy"), "{v}");
                let segs = store.list_segmented("default").unwrap();
                assert!(!segs.is_empty(), "mid-upload: segments should exist");
            }
            d.kill9();
            d.restart(&[]);

            let job = d.wait_job(&job_id, &d.admin);
            assert_eq!(job["state"], "interrupted", "{point}: {job}");
            assert!(
                job["error"].as_str().unwrap().contains("daemon stopped"),
                "{job}"
            );
            assert!(!backup_ids(&d, &d.admin).contains(&backup_id), "{point}");
            let ring = KeyRing::load(&dir.path().join("keyring.toml")).unwrap();
            let listed = catalog::list(&store, &ring, "default", None).unwrap();
            assert!(listed.iter().all(|l| l.backup_id != backup_id), "{point}");
            let leftovers: Vec<String> = store
                .list_segmented("default")
                .unwrap()
                .into_iter()
                .chain(store.list("default", "").unwrap())
                .map(|o| o.name)
                .filter(|n| n.contains(&backup_id))
                .collect();
            assert!(leftovers.is_empty(), "{point}: orphans {leftovers:?}");
            let gc = catalog::gc(&store, Duration::ZERO, true).unwrap();
            assert!(
                gc.removed.is_empty(),
                "{point}: gc would remove {:?}",
                gc.removed
            );
        }
    }
    // The next run succeeds.
    let job = start_backup(&d, &d.admin, "node1", &data);
    let done = d.wait_job(job["id"].as_str().unwrap(), &d.admin);
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(
        backup_ids(&d, &d.admin),
        vec![done["backup_id"].as_str().unwrap().to_string()]
    );
}

#[test]
fn r6_a_tenant_sees_only_its_own_objects_on_every_route() {
    let dir = tempfile::tempdir().unwrap();
    keyring(dir.path(), &["acme", "umbrella"]);
    let data = unpack_fixture(dir.path());
    let d = Daemon::start(dir.path(), &store_line(dir.path()), "", &[]);
    let a = d.tenant_token("acme");
    let b = d.tenant_token("umbrella");
    register(&d, "acme", "shop", &data, false);

    // Tenant A's objects: a backup, a restore job, a schedule, a policy.
    let (s, job) = d.post(
        "/v1/backups",
        &a,
        &json!({ "instance": "shop", "allow_incomplete": true }),
    );
    assert_eq!(s, 202, "{job}");
    let backup_job = d.wait_job(job["id"].as_str().unwrap(), &a);
    assert_eq!(backup_job["state"], "succeeded", "{backup_job}");
    let backup = backup_job["backup_id"].as_str().unwrap().to_string();
    let (s, restore) = d.post(
        "/v1/restores",
        &a,
        &json!({ "backup_id": backup, "target": "r1" }),
    );
    assert_eq!(s, 202, "{restore}");
    let restore_id = restore["id"].as_str().unwrap().to_string();
    assert_eq!(d.wait_job(&restore_id, &a)["state"], "succeeded");
    assert!(dir
        .path()
        .join("state/restores/acme/r1/_dbs.couch")
        .exists());
    let (s, sched) = d.post(
        "/v1/schedules",
        &a,
        &json!({ "name": "nightly", "instance": "shop", "cron": "@daily" }),
    );
    assert_eq!(s, 201, "{sched}");
    let sched = sched["id"].as_str().unwrap().to_string();
    let policy = gfs_wasm();
    if let Some(wasm) = &policy {
        let (s, v) = d.call(
            d.req(Method::PUT, "/v1/policies/keep", Some(&a))
                .body(wasm.clone()),
        );
        assert_eq!(s, 201, "{v}");
    }

    // Tenant B on A's ids: 404, and nothing changes.
    let sched_body = json!({ "name": "x", "instance": "shop", "cron": "@hourly" });
    let restore_body = json!({ "backup_id": backup, "target": "stolen" });
    let mut routes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("/v1/backups/{backup}"), None),
        (Method::DELETE, format!("/v1/backups/{backup}"), None),
        (
            Method::POST,
            format!("/v1/backups/{backup}/verify"),
            Some(json!({})),
        ),
        (Method::POST, "/v1/restores".into(), Some(restore_body)),
        (Method::GET, format!("/v1/restores/{restore_id}"), None),
        (Method::GET, format!("/v1/jobs/{restore_id}"), None),
        (
            Method::POST,
            format!("/v1/jobs/{restore_id}/cancel"),
            Some(json!({})),
        ),
        (Method::GET, format!("/v1/schedules/{sched}"), None),
        (Method::GET, "/v1/instances/shop".into(), None),
        (
            Method::PUT,
            format!("/v1/schedules/{sched}"),
            Some(sched_body),
        ),
        (Method::DELETE, format!("/v1/schedules/{sched}"), None),
        (
            Method::POST,
            format!("/v1/schedules/{sched}/pause"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/v1/schedules/{sched}/resume"),
            Some(json!({})),
        ),
    ];
    if policy.is_some() {
        routes.push((Method::GET, "/v1/policies/keep".into(), None));
        routes.push((Method::DELETE, "/v1/policies/keep".into(), None));
        routes.push((
            Method::POST,
            "/v1/policies/keep/dry-run".into(),
            Some(json!({})),
        ));
    }
    for (m, path, body) in &routes {
        let mut rb = d.req(m.clone(), path, Some(&b));
        if let Some(body) = body {
            rb = rb.json(body);
        }
        let (s, v) = d.call(rb);
        assert_eq!(s, 404, "{m} {path} with the other tenant's token: {v}");
        // No token at all: 401.
        let (s, _) = d.call(d.req(m.clone(), path, None));
        assert_eq!(s, 401, "{m} {path} without a token");
    }
    // Lists show B nothing of A's; naming A's tenant is forbidden.
    for path in [
        "/v1/backups",
        "/v1/jobs",
        "/v1/schedules",
        "/v1/policies",
        "/v1/instances",
    ] {
        let (s, v) = d.get(path, &b);
        assert_eq!(s, 200, "{path}: {v}");
        assert_eq!(v.as_array().unwrap().len(), 0, "{path}: {v}");
        let (s, _) = d.get(&format!("{path}?tenant=acme"), &b);
        assert_eq!(s, 403, "{path}?tenant=acme");
        let (s, _) = d.call(d.req(Method::GET, path, None));
        assert_eq!(s, 401, "{path} without a token");
    }
    // Tenant tokens on admin routes: 403.
    for (m, path) in [
        (Method::GET, "/metrics"),
        (Method::GET, "/v1/tokens"),
        (Method::POST, "/v1/tokens"),
        (Method::DELETE, "/v1/tokens/abc"),
        (Method::POST, "/v1/gc"),
        (Method::POST, "/v1/reindex"),
        (Method::GET, "/v1/keys"),
        (Method::POST, "/v1/keys/rotate"),
        (Method::POST, "/v1/instances"),
        (Method::POST, "/v1/instances/apply"),
        (Method::DELETE, "/v1/instances/shop"),
    ] {
        let (s, v) = d.call(d.req(m.clone(), path, Some(&a)).json(&json!({})));
        assert_eq!(s, 403, "{m} {path}: {v}");
    }
    // Everything of A's is as it was.
    let (s, _) = d.get(&format!("/v1/backups/{backup}"), &a);
    assert_eq!(s, 200);
    assert_eq!(backup_ids(&d, &a), vec![backup.clone()]);
    let (s, v) = d.get(&format!("/v1/schedules/{sched}"), &a);
    assert_eq!(
        (s, &v["paused"], &v["cron"]),
        (200, &json!(false), &json!("@daily"))
    );
    assert_eq!(d.get(&format!("/v1/jobs/{restore_id}"), &a).0, 200);
    assert!(!dir.path().join("state/restores/umbrella").exists());
    if policy.is_some() {
        assert_eq!(d.get("/v1/policies/keep", &a).0, 200);
    }
    // The admin sees both tenants' jobs, and metrics count them.
    let (_, jobs) = d.get("/v1/jobs", &d.admin);
    assert_eq!(jobs.as_array().unwrap().len(), 2);
    let (s, _) = d.get("/metrics", &d.admin);
    assert_eq!(s, 200);
    let text = d
        .req(Method::GET, "/metrics", Some(&d.admin))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        text.contains(r#"couchvault_jobs_total{kind="backup",outcome="succeeded"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(
            "couchvault_last_success_timestamp_seconds{tenant=\"acme\",instance=\"shop\"}"
        ),
        "{text}"
    );
}

#[test]
fn bad_input_gets_a_clear_400_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    keyring(dir.path(), &["default"]);
    let d = Daemon::start(
        dir.path(),
        &store_line(dir.path()),
        "max_body_bytes = 4096",
        &[],
    );
    let spec = |k: &str, v: Value| {
        let mut s = json!({ "name": "n", "instance": "db", "data_dir": "/var/lib/couchdb", "cron": "@daily" });
        s[k] = v;
        s
    };
    for (body, expect) in [
        (
            spec("cron", json!("61 * * * *")),
            "minute field: 61 is out of range",
        ),
        (spec("cron", json!("* * *")), "has 3 fields"),
        (
            spec("tz", json!("Mars/Olympus")),
            "unknown time zone 'Mars/Olympus'",
        ),
        (spec("policies", json!(["nope"])), "no policy 'nope'"),
        (spec("jitter", json!("soon")), "jitter"),
        (spec("data_dir", json!("relative/dir")), "absolute"),
        (spec("instance", json!("../etc")), "invalid instance name"),
        (json!({ "name": "n" }), "invalid JSON body"),
        (spec("pasued", json!(true)), "unknown field `pasued`"),
    ] {
        let (s, v) = d.post("/v1/schedules", &d.admin, &body);
        assert_eq!(s, 400, "{body}: {v}");
        let msg = v["error"].as_str().unwrap();
        assert!(
            msg.contains(expect),
            "{body}: expected '{expect}' in '{msg}'"
        );
    }
    let (s, v) = d.call(
        d.req(Method::POST, "/v1/schedules", Some(&d.admin))
            .header("content-type", "application/json")
            .body("{\"name\": \"n\", "),
    );
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("invalid JSON body"),
        "{v}"
    );
    // Oversized: 413, with a message that names the setting.
    // Over the limit, yet small enough to be written whole before the daemon answers.
    let big = "x".repeat(64 << 10);
    let (s, v) = d.call(
        d.req(Method::POST, "/v1/schedules", Some(&d.admin))
            .header("content-type", "application/json")
            .body(format!("{{\"name\": \"{big}\"}}")),
    );
    assert_eq!(s, 413, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("max_body_bytes"),
        "{v}"
    );
    // Neither paths nor a registered instance.
    let (s, v) = d.post("/v1/backups", &d.admin, &json!({ "instance": "db" }));
    assert_eq!(s, 404, "{v}");
    assert!(v["error"].as_str().unwrap().contains("instance add"), "{v}");
    let (s, v) = d.post(
        "/v1/backups",
        &d.admin,
        &json!({ "instance": "db", "data_dir": "/var/lib/couchdb", "bogus": 1 }),
    );
    assert_eq!(s, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("bogus"), "{v}");
    let (s, v) = d.post(
        "/v1/restores",
        &d.admin,
        &json!({ "backup_id": "01NOPE", "target": "/tmp/x" }),
    );
    assert_eq!(s, 404, "{v}");
    // Nothing was stored.
    let (_, list) = d.get("/v1/schedules", &d.admin);
    assert_eq!(list, json!([]));
    let (_, jobs) = d.get("/v1/jobs", &d.admin);
    assert_eq!(jobs, json!([]));

    // The CLI client: one clear error line, exit 1.
    let out = couchvault(
        dir.path(),
        &[
            "--server",
            &d.url,
            "--token",
            &d.admin,
            "schedule",
            "add",
            "--instance",
            "db",
            "--data-dir",
            "/var/lib/couchdb",
            "--cron",
            "0 25 * * *",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("400") && stderr.contains("hour field: 25"),
        "{stderr}"
    );
    let out = couchvault(
        dir.path(),
        &["--server", &d.url, "--token", "wrong", "schedule", "list"],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
}

/// Schedules a backup every minute with keep-last-1 retention, lets two runs happen,
/// checks retention deleted the first, and restores the second on demand.
fn scheduled_backups_with_retention_and_restore(d: &Daemon, dir: &Path, data: &Path, wasm: &[u8]) {
    let params = r#"{"keep_last":1,"keep_hourly":0,"keep_daily":0,"keep_weekly":0,"keep_monthly":0,"keep_yearly":0}"#;
    let (s, v) = d.call(
        d.req(Method::PUT, "/v1/policies/keep1", Some(&d.admin))
            .query(&[("params", params)])
            .body(wasm.to_vec()),
    );
    assert_eq!(s, 201, "{v}");
    let (s, sched) = d.post(
        "/v1/schedules",
        &d.admin,
        &json!({ "name": "every-minute", "instance": "node1", "data_dir": data,
                 "cron": "* * * * *", "policies": ["keep1"] }),
    );
    assert_eq!(s, 201, "{sched}");
    let sched_id = sched["id"].as_str().unwrap();
    // Never at once: no job right after creation.
    let (_, jobs) = d.get("/v1/jobs", &d.admin);
    assert_eq!(jobs, json!([]));
    let started = Instant::now();
    let finished = loop {
        let (_, jobs) = d.get(&format!("/v1/jobs?schedule={sched_id}"), &d.admin);
        let done: Vec<Value> = jobs
            .as_array()
            .unwrap()
            .iter()
            .filter(|j| j["state"] != "running")
            .cloned()
            .collect();
        if done.len() >= 2 {
            break done;
        }
        assert!(
            started.elapsed() < Duration::from_secs(200),
            "two runs did not happen: {jobs}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    // Pause so no third run interferes.
    d.post(
        &format!("/v1/schedules/{sched_id}/pause"),
        &d.admin,
        &json!({}),
    );
    let mut finished = finished;
    finished.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    for j in &finished {
        assert_eq!(j["state"], "succeeded", "{j}");
    }
    let (first, second) = (&finished[0], &finished[1]);
    let first_backup = first["backup_id"].as_str().unwrap();
    let second_backup = second["backup_id"].as_str().unwrap();
    assert_ne!(
        first["scheduled"]["scheduled_for"],
        second["scheduled"]["scheduled_for"]
    );
    let verdicts = second["retention"].as_array().unwrap();
    let deleted: Vec<&str> = verdicts
        .iter()
        .filter(|v| v["keep"] == false)
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    assert_eq!(deleted, vec![first_backup], "{second}");
    let listed = backup_ids(d, &d.admin);
    assert!(!listed.contains(&first_backup.to_string()), "{listed:?}");
    assert!(listed.contains(&second_backup.to_string()), "{listed:?}");
    let (s, _) = d.get(&format!("/v1/backups/{first_backup}"), &d.admin);
    assert_eq!(s, 404, "the deleted backup is gone from the store");

    // Restore on demand into a new directory: byte-identical.
    let target = dir.join("restored");
    let (s, job) = d.post(
        "/v1/restores",
        &d.admin,
        &json!({ "backup_id": second_backup, "target": target }),
    );
    assert_eq!(s, 202, "{job}");
    let done = d.wait_job(job["id"].as_str().unwrap(), &d.admin);
    assert_eq!(done["state"], "succeeded", "{done}");
    let want = tree(data);
    assert_eq!(tree(&target), want);
    for f in &want {
        assert_eq!(
            sha256_file(&data.join(f)),
            sha256_file(&target.join(f)),
            "{f}"
        );
    }
    let (_, shown) = d.get(&format!("/v1/schedules/{sched_id}"), &d.admin);
    let history = shown["history"].as_array().unwrap();
    assert!(
        history.iter().filter(|h| h["outcome"] == "started").count() >= 2,
        "{shown}"
    );
}

#[test]
fn scheduled_backups_retention_and_restore_on_the_local_store() {
    let Some(wasm) = gfs_wasm() else { return };
    let dir = tempfile::tempdir().unwrap();
    keyring(dir.path(), &["default"]);
    let data = unpack_fixture(dir.path());
    let d = Daemon::start(dir.path(), &store_line(dir.path()), "", &[]);
    scheduled_backups_with_retention_and_restore(&d, dir.path(), &data, &wasm);
}

#[test]
fn scheduled_backups_retention_and_restore_on_swift() {
    let Some(env) = SwiftEnv::load() else { return };
    let Some(wasm) = gfs_wasm() else { return };
    let dir = tempfile::tempdir().unwrap();
    keyring(dir.path(), &["default"]);
    let data = unpack_fixture(dir.path());
    let extra = format!(
        "store = \"swift://{}\"\n[backup]\nsegment_size = 1048576\n",
        unique("daemon")
    );
    let d = Daemon::start(
        dir.path(),
        &extra,
        "",
        &[
            ("ST_AUTH", env.get("SWIFT_AUTH_URL")),
            ("ST_USER", env.get("SWIFT_USER")),
            ("ST_KEY", env.get("SWIFT_KEY")),
        ],
    );
    scheduled_backups_with_retention_and_restore(&d, dir.path(), &data, &wasm);
}

/// Issue 10, finding 1: a tenant never names a path. It backs up only instances the admin
/// registered for it; what a backup opens (after ini files and symbolic links) stays in the
/// registered directories; its restores stay under its restore root.
#[test]
fn tenants_never_name_paths_and_backups_stay_in_the_registered_directories() {
    let dir = tempfile::tempdir().unwrap();
    keyring(dir.path(), &["acme", "umbrella"]);
    let data = unpack_fixture(dir.path());
    // Another tenant's data and a root-only secret.
    let other = dir.path().join("umbrella-data");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::copy(data.join("_dbs.couch"), other.join("_dbs.couch")).unwrap();
    let secret = dir.path().join("secret");
    std::fs::create_dir_all(secret.join("x")).unwrap();
    std::fs::write(secret.join("x/key.view"), b"top secret").unwrap();
    let d = Daemon::start(dir.path(), &store_line(dir.path()), "", &[]);
    let a = d.tenant_token("acme");

    // A path from a tenant: refused, whatever it names; an unknown instance: 404.
    for body in [
        json!({ "instance": "x", "data_dir": other }),
        json!({ "instance": "x", "couchdb_config": dir.path() }),
        json!({ "instance": "x", "data_dir": data }),
    ] {
        let (s, v) = d.post("/v1/backups", &a, &body);
        assert_eq!(s, 403, "{body}: {v}");
        assert!(v["error"].as_str().unwrap().contains("never a path"), "{v}");
    }
    let (s, v) = d.post("/v1/backups", &a, &json!({ "instance": "x" }));
    assert_eq!(s, 404, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("couchvault instance add"),
        "{v}"
    );
    let (s, v) = d.post(
        "/v1/schedules",
        &a,
        &json!({ "name": "n", "instance": "x", "data_dir": other, "cron": "@daily" }),
    );
    assert_eq!(s, 403, "{v}");
    // Another tenant's instance is not this tenant's.
    register(&d, "umbrella", "theirs", &other, true);
    let (s, _) = d.post("/v1/backups", &a, &json!({ "instance": "theirs" }));
    assert_eq!(s, 404);

    // The registered instance backs up; a symbolic link planted in it is refused, named.
    let shown = register(&d, "acme", "shop", &data, false);
    assert!(shown["roots"].to_string().contains("data"), "{shown}");
    let run = |body: Value| {
        let (s, job) = d.post("/v1/backups", &a, &body);
        assert_eq!(s, 202, "{job}");
        d.wait_job(job["id"].as_str().unwrap(), &a)
    };
    let ok_job = run(json!({ "instance": "shop", "allow_incomplete": true }));
    assert_eq!(ok_job["state"], "succeeded", "{ok_job}");
    let views = data.join(".shards");
    let _ = std::fs::remove_dir_all(&views);
    std::os::unix::fs::symlink(&secret, &views).unwrap();
    let refused = run(json!({ "instance": "shop", "allow_incomplete": true }));
    assert_eq!(refused["state"], "failed", "{refused}");
    let err = refused["error"].as_str().unwrap();
    assert!(
        err.contains("key.view") && err.contains("outside the instance's registered directories"),
        "{err}"
    );
    std::fs::remove_file(&views).unwrap();
    let second = run(json!({ "instance": "shop", "allow_incomplete": true }));
    assert_eq!(second["state"], "succeeded", "{second}");

    // A CouchDB config whose local.ini is changed (through _config) to point elsewhere.
    let root = dir.path().join("couch");
    let etc = root.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    let node_data = root.join("data");
    std::fs::create_dir_all(&node_data).unwrap();
    std::fs::copy(data.join("_dbs.couch"), node_data.join("_dbs.couch")).unwrap();
    std::fs::write(etc.join("local.ini"), "[couchdb]\ndatabase_dir = ./data\n").unwrap();
    let (s, v) = d.post(
        "/v1/instances",
        &d.admin,
        &json!({ "name": "node", "tenant": "acme", "couchdb_config": etc }),
    );
    assert_eq!(s, 201, "{v}");
    let job = run(json!({ "instance": "node", "allow_incomplete": true }));
    assert_eq!(job["state"], "succeeded", "{job}");
    std::fs::write(
        etc.join("local.ini"),
        format!("[couchdb]\ndatabase_dir = {}\n", secret.display()),
    )
    .unwrap();
    let job = run(json!({ "instance": "node", "allow_incomplete": true }));
    assert_eq!(job["state"], "failed", "{job}");
    assert!(
        job["error"]
            .as_str()
            .unwrap()
            .contains("outside the instance's registered directories"),
        "{job}"
    );
    // A local.ini that is itself a link out is refused before it is read.
    std::fs::remove_file(etc.join("local.ini")).unwrap();
    std::os::unix::fs::symlink(secret.join("x/key.view"), etc.join("local.ini")).unwrap();
    let job = run(json!({ "instance": "node", "allow_incomplete": true }));
    assert_eq!(job["state"], "failed", "{job}");
    assert!(
        job["error"].as_str().unwrap().contains("local.ini"),
        "{job}"
    );

    // Restores by the tenant: only under <root>/acme/, never "", ".", "..", absolute or
    // through a link; nothing is written outside, kept-aside data included.
    let backup = ok_job["backup_id"].as_str().unwrap();
    let restores = dir.path().join("state/restores");
    std::fs::create_dir_all(restores.join("acme")).unwrap();
    std::os::unix::fs::symlink(dir.path(), restores.join("acme/out")).unwrap();
    for target in [
        "",
        ".",
        "..",
        "../umbrella",
        "/tmp/x",
        "a/../..",
        "out",
        "out/x",
        ".hidden",
    ] {
        let (s, v) = d.post(
            "/v1/restores",
            &a,
            &json!({ "backup_id": backup, "target": target }),
        );
        assert_eq!(s, 400, "target {target:?}: {v}");
    }
    let (s, v) = d.post(
        "/v1/restores",
        &a,
        &json!({ "backup_id": backup, "in_place": true }),
    );
    assert_eq!(s, 403, "in place needs restore_in_place: {v}");
    let before: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let second = second["backup_id"].as_str().unwrap();
    for (id, force) in [(backup, false), (second, true), (backup, true)] {
        let (s, job) = d.post(
            "/v1/restores",
            &a,
            &json!({ "backup_id": id, "target": "r1", "force": force }),
        );
        assert_eq!(s, 202, "{job}");
        let done = d.wait_job(job["id"].as_str().unwrap(), &a);
        assert_eq!(done["state"], "succeeded", "{done}");
    }
    let mut after: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    after.retain(|n| !before.contains(n) && n != "daemon.log");
    assert!(
        after.is_empty(),
        "written outside the restore root: {after:?}"
    );
    let kept: Vec<String> = std::fs::read_dir(restores.join("acme"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("couchvault-old"))
        .collect();
    assert_eq!(
        kept.len(),
        2,
        "each forced restore kept its own copy: {kept:?}"
    );
    assert!(!restores.join("acme.couchvault-old").exists());
}

/// Threads of a process, from /proc.
fn threads(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Issue 10, finding 3: one tenant floods the daemon with policy uploads (of a component
/// that sleeps), then holds connections open mid-body; another tenant's requests keep
/// answering, the daemon's threads stay bounded, the flood gets 429 with Retry-After,
/// and SIGTERM ends the daemon within shutdown_timeout plus a few seconds.
#[test]
fn a_flooding_tenant_does_not_starve_others_and_shutdown_ends_in_time() {
    let hostile = common::built_policy("hostile.wasm");
    let Ok(wasm) = std::fs::read(&hostile) else {
        assert!(
            std::env::var("CI").is_err(),
            "CI builds {}",
            hostile.display()
        );
        eprintln!("skipping: {} is not built", hostile.display());
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    keyring(dir.path(), &["flood", "calm"]);
    let data = unpack_fixture(dir.path());
    let mut d = Daemon::start(
        dir.path(),
        &store_line(dir.path()),
        "shutdown_timeout = \"5s\"",
        &[],
    );
    let flood = d.tenant_token("flood");
    let calm = d.tenant_token("calm");
    register(&d, "calm", "db", &data, false);
    let (s, job) = d.post(
        "/v1/backups",
        &calm,
        &json!({ "instance": "db", "allow_incomplete": true }),
    );
    assert_eq!(s, 202, "{job}");
    let done = d.wait_job(job["id"].as_str().unwrap(), &calm);
    let backup = done["backup_id"].as_str().unwrap().to_string();
    let idle_threads = threads(d.pid());

    let stop = std::sync::atomic::AtomicBool::new(false);
    let (too_many, peak_threads, worst) = std::thread::scope(|s| {
        let uploads: Vec<_> = (0..200)
            .map(|i| {
                let (d, flood, wasm, stop) = (&d, &flood, &wasm, &stop);
                s.spawn(move || {
                    let mut statuses = Vec::new();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let r = d
                            .req(Method::PUT, &format!("/v1/policies/p{i}"), Some(flood))
                            .query(&[("params", "sleep")])
                            .body(wasm.clone())
                            .send();
                        let Ok(r) = r else { continue };
                        let retry = r.headers().get("retry-after").is_some();
                        statuses.push((r.status().as_u16(), retry));
                    }
                    statuses
                })
            })
            .collect();
        // The calm tenant, meanwhile: every answer within a bound.
        let mut worst = Duration::ZERO;
        let mut peak = 0;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(8) {
            let t = Instant::now();
            let (s, v) = d.get(&format!("/v1/backups/{backup}"), &calm);
            assert_eq!(s, 200, "{v}");
            let (s, v) = d.post(
                "/v1/restores",
                &calm,
                &json!({ "backup_id": backup, "target": format!("r{}", t.elapsed().as_nanos()) }),
            );
            assert_eq!(s, 202, "{v}");
            d.wait_job(v["id"].as_str().unwrap(), &calm);
            worst = worst.max(t.elapsed());
            peak = peak.max(threads(d.pid()));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let statuses: Vec<(u16, bool)> = uploads
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        assert!(
            statuses.iter().all(|(s, _)| [400, 429].contains(s)),
            "a sleeping policy is refused (its dry run stops at the deadline) or the flood is limited: {statuses:?}"
        );
        let too_many: Vec<_> = statuses.iter().filter(|(s, _)| *s == 429).collect();
        assert!(
            too_many.iter().all(|(_, retry)| *retry),
            "429 carries Retry-After"
        );
        let refused = statuses.iter().filter(|(s, _)| *s == 400).count();
        assert!(
            refused > 0,
            "some uploads ran their dry run (and were refused)"
        );
        (too_many.len(), peak, worst)
    });
    eprintln!("flood: {too_many} answered 429; threads idle {idle_threads}, peak {peak_threads}; the calm tenant's slowest backup show + restore: {worst:?}");
    assert!(too_many > 0, "the flood was limited");
    assert!(
        worst < Duration::from_secs(10),
        "the calm tenant waited {worst:?}"
    );
    assert!(
        peak_threads < idle_threads + 40,
        "threads bounded: idle {idle_threads}, peak {peak_threads}"
    );

    // SIGTERM with connections hung mid-body: the daemon exits within 5 s + a few.
    let mut hung = Vec::new();
    for _ in 0..5 {
        use std::io::Write;
        let mut c = std::net::TcpStream::connect(d.url.trim_start_matches("http://")).unwrap();
        write!(
            c,
            "PUT /v1/policies/slow HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {flood}\r\nContent-Length: 1000000\r\n\r\nxx"
        )
        .unwrap();
        hung.push(c);
    }
    let started = Instant::now();
    let status = d.terminate();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5 + 5),
        "shutdown took {took:?}: {}",
        d.log()
    );
    assert!(status.success(), "{status}: {}", d.log());
}

/// The routes of docs/API.md's table, as `METHOD /path` (query suffixes dropped).
fn documented_routes() -> std::collections::BTreeSet<String> {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/API.md"))
        .unwrap();
    doc.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|r| r.starts_with(|c: char| c.is_ascii_uppercase()))
        .map(|r| r.split('[').next().unwrap().trim().to_string())
        .collect()
}

/// `/v1/openapi.json` is generated from the wire types; its routes are exactly docs/API.md's,
/// each is served by the router (a request without a token is refused with 401, not the
/// fallback's 404), and every schema it refers to is defined.
#[test]
fn the_openapi_document_matches_the_router_and_the_docs() {
    let dir = tempfile::tempdir().unwrap();
    keyring(dir.path(), &["default"]);
    let d = Daemon::start(dir.path(), &store_line(dir.path()), "", &[]);
    let resp = d.req(Method::GET, "/v1/openapi.json", None).send().unwrap();
    assert_eq!(resp.status(), 200, "public, like /healthz");
    let doc: Value = resp.json().unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut served = std::collections::BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            served.insert(format!("{} {path}", method.to_uppercase()));
            let concrete = path.replace("{id}", "x").replace("{name}", "x");
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let status = d
                .req(method.clone(), &concrete, None)
                .send()
                .unwrap()
                .status();
            let public = op["security"] == json!([]);
            assert_eq!(
                status.as_u16(),
                if public { 200 } else { 401 },
                "{method} {path}: not served as documented"
            );
        }
    }
    assert_eq!(
        served,
        documented_routes(),
        "openapi.json against docs/API.md"
    );
    // Every reference resolves to a schema in the document.
    let text = doc.to_string();
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for r in text.split("#/components/schemas/").skip(1) {
        let name = r.split('"').next().unwrap();
        assert!(schemas.contains_key(name), "undefined schema {name}");
    }
    // The wire types' fields are there: a backup request names its instance and (flattened
    // in, by reference) its source.
    let params = schemas["BackupParams"].to_string();
    assert!(
        params.contains("#/components/schemas/SourceSpec"),
        "{params}"
    );
    let fields = params + &schemas["SourceSpec"].to_string();
    for field in ["instance", "data_dir", "couchdb_config", "policies"] {
        assert!(
            fields.contains(field),
            "BackupParams lacks {field}: {fields}"
        );
    }
}

/// Issue 13 through the API: incremental backups with their parent in the index, a parent
/// others depend on refused by a plain delete, deleted with `with_dependents`, and a
/// verify of the whole chain.
#[test]
fn incremental_backups_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    keyring(dir.path(), &["default"]);
    let data = unpack_fixture(dir.path());
    let d = Daemon::start(dir.path(), &store_line(dir.path()), "", &[]);
    let backup = |kind: &str| {
        let mut body = backup_body("node1", &data);
        body["backup_kind"] = json!(kind);
        let (s, job) = d.post("/v1/backups", &d.admin, &body);
        assert_eq!(s, 202, "{job}");
        let done = d.wait_job(job["id"].as_str().unwrap(), &d.admin);
        assert_eq!(done["state"], "succeeded", "{done}");
        done["backup_id"].as_str().unwrap().to_string()
    };
    let full = backup("full");
    let grow = |n: usize| {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("_dbs.couch"))
            .unwrap();
        f.write_all(&vec![0u8; n]).unwrap();
    };
    grow(5000);
    let inc = backup("incremental");
    let (_, rows) = d.get("/v1/backups", &d.admin);
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["backup_id"] == inc.as_str())
        .unwrap()
        .clone();
    assert_eq!(row["kind"], "incremental", "{row}");
    assert_eq!(row["parent"], full.as_str(), "{row}");

    let (s, job) = d.post(
        &format!("/v1/backups/{inc}/verify?chain=true"),
        &d.admin,
        &json!({}),
    );
    assert_eq!(s, 202, "{job}");
    let done = d.wait_job(job["id"].as_str().unwrap(), &d.admin);
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["result"]["backups"], 2, "{done}");

    let delete = |query: &str| {
        let (s, job) = d.call(d.req(
            Method::DELETE,
            &format!("/v1/backups/{full}{query}"),
            Some(&d.admin),
        ));
        assert_eq!(s, 202, "{job}");
        d.wait_job(job["id"].as_str().unwrap(), &d.admin)
    };
    let refused = delete("");
    assert_eq!(refused["state"], "failed", "{refused}");
    let why = refused["error"].as_str().unwrap();
    assert!(
        why.contains(&inc) && why.contains("with-dependents"),
        "{why}"
    );
    let done = delete("?with_dependents=true");
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["result"].as_array().unwrap().len(), 2, "{done}");
    assert!(backup_ids(&d, &d.admin).is_empty());
}

/// A daemon on the fixture whose jobs pause at `pause` (`COUCHVAULT_TEST_PAUSE`), and its
/// first backup of `node1`, finished.
fn paused_daemon_with_a_backup(dir: &Path, pause: &str) -> (std::path::PathBuf, Daemon, Value) {
    keyring(dir, &["default"]);
    let data = unpack_fixture(dir);
    let d = Daemon::start(
        dir,
        &store_line(dir),
        "",
        &[("COUCHVAULT_TEST_PAUSE", pause)],
    );
    let job = start_backup(&d, &d.admin, "node1", &data);
    let done = d.wait_job(job["id"].as_str().unwrap(), &d.admin);
    assert_eq!(done["state"], "succeeded", "{done}");
    (data, d, done)
}

/// A delete holds its backup's instance like a backup does: while an incremental of the
/// instance runs, deleting its parent is refused (409) instead of pulling the parent from
/// under it.
#[test]
fn deleting_a_backup_while_its_instance_backs_up_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (data, d, full) = paused_daemon_with_a_backup(dir.path(), "before-commit:3000");
    let full_id = full["backup_id"].as_str().unwrap();

    let mut body = backup_body("node1", &data);
    body["backup_kind"] = json!("incremental");
    let (s, inc) = d.post("/v1/backups", &d.admin, &body);
    assert_eq!(s, 202, "{inc}");
    let (s, v) = d.call(d.req(
        Method::DELETE,
        &format!("/v1/backups/{full_id}"),
        Some(&d.admin),
    ));
    assert_eq!(s, 409, "{v}");
    let inc = d.wait_job(inc["id"].as_str().unwrap(), &d.admin);
    assert_eq!(inc["state"], "succeeded", "{inc}");
    assert_eq!(inc["backup_id"].as_str().map(|_| ()), Some(()));
    let (_, shown) = d.get(
        &format!("/v1/backups/{}", inc["backup_id"].as_str().unwrap()),
        &d.admin,
    );
    assert_eq!(shown["parent"]["backup_id"], full_id, "{shown}");
}

/// Issue 14: a rotation job on Swift, killed with SIGKILL after its key was added, just
/// before a metadata write, and after a rewrap: every backup verifies after each kill, a
/// rewrap job finishes it, and no data object is read or written (Swift's request log
/// through a proxy, and every manifest's and segment's ETag and Last-Modified unchanged).
#[test]
fn key_rotation_job_on_swift_survives_kill_9_and_rewrites_metadata_only() {
    let Some(env) = SwiftEnv::load() else { return };
    let proxy = common::faultproxy::FaultProxy::start(env.port(), 0, 1);
    let dir = tempfile::tempdir().unwrap();
    keyring(dir.path(), &["default"]);
    let data = unpack_fixture(dir.path());
    let base = unique("rotate");
    let extra = format!("store = \"swift://{base}\"\n[backup]\nsegment_size = 1048576\n");
    let auth = format!("http://127.0.0.1:{}/auth/v1.0", proxy.port);
    let mut d = Daemon::start(
        dir.path(),
        &extra,
        "",
        &[
            ("ST_AUTH", &auth),
            ("ST_USER", env.get("SWIFT_USER")),
            ("ST_KEY", env.get("SWIFT_KEY")),
        ],
    );
    // More backups than a rewrap writes at once, so a cut-off rotation is half done.
    let ids: Vec<String> = (0..10)
        .map(|_| {
            let job = start_backup(&d, &d.admin, "n1", &data);
            let done = d.wait_job(job["id"].as_str().unwrap(), &d.admin);
            assert_eq!(done["state"], "succeeded", "{done}");
            done["backup_id"].as_str().unwrap().to_string()
        })
        .collect();
    let containers = [
        format!("{base}-default"),
        format!("{base}-default_segments"),
    ];
    let snapshot = || -> BTreeMap<String, (String, String)> {
        containers
            .iter()
            .flat_map(|c| {
                env.listing(c)
                    .into_iter()
                    .map(move |(name, v)| (format!("{c}/{name}"), v))
            })
            .collect()
    };
    let before = snapshot();
    assert!(
        before.keys().any(|k| k.contains("_segments/")),
        "{before:?}"
    );
    let verify_all = |d: &Daemon| {
        for id in &ids {
            let (s, job) = d.post(&format!("/v1/backups/{id}/verify"), &d.admin, &json!({}));
            assert_eq!(s, 202, "{job}");
            let done = d.wait_job(job["id"].as_str().unwrap(), &d.admin);
            assert_eq!(done["state"], "succeeded", "{id}: {done}");
        }
    };
    // Only metadata objects, listings and auth: never a data manifest or a segment.
    let metadata_only = |lines: Vec<String>| {
        assert!(
            lines.iter().any(|l| l.contains("/backup.json")),
            "{lines:?}"
        );
        for l in lines {
            let path = l.split(' ').nth(1).unwrap_or_default();
            let object = path.split('?').next().unwrap_or_default();
            assert!(
                !object.contains("_segments/") && !object.ends_with("/data"),
                "a data object was touched: {l}"
            );
        }
    };
    let pauses = |d: &Daemon| d.log().matches("COUCHVAULT_TEST_PAUSE: pausing").count();

    for (point, body) in [
        ("after-key-added", json!({})),
        ("rewrap-put", json!({ "rewrap_only": true })),
        ("after-rewrap", json!({ "rewrap_only": true })),
    ] {
        d.kill9();
        d.restart(&[("COUCHVAULT_TEST_PAUSE", &format!("{point}:60000"))]);
        let paused = pauses(&d);
        proxy.take_requests();
        let (s, job) = d.post("/v1/keys/rotate", &d.admin, &body);
        assert_eq!(
            (s, &job["request"]["kind"]),
            (202, &json!("key_rotate")),
            "{job}"
        );
        let started = Instant::now();
        while pauses(&d) == paused {
            assert!(started.elapsed().as_secs() < 60, "{point}: {}", d.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        d.kill9();
        if point != "after-key-added" {
            metadata_only(proxy.take_requests());
        }
        d.restart(&[]);
        verify_all(&d);
    }
    let (_, keys) = d.get("/v1/keys", &d.admin);
    let on_active = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["active"] == true)
        .unwrap()["backups"]
        .as_u64()
        .unwrap();
    assert!(
        (1..10).contains(&on_active),
        "half rotated at the last kill: {keys}"
    );

    proxy.take_requests();
    let (s, job) = d.post("/v1/keys/rotate", &d.admin, &json!({ "rewrap_only": true }));
    assert_eq!(s, 202, "{job}");
    let done = d.wait_job(job["id"].as_str().unwrap(), &d.admin);
    assert_eq!(done["state"], "succeeded", "{done}");
    let rewrapped = done["result"]["rewrapped"].as_array().unwrap().len() as u64;
    assert_eq!(rewrapped, 10 - on_active, "{done}");
    assert_eq!(done["result"]["already"], on_active, "{done}");
    assert_eq!(done["progress"]["files_done"], 10, "{done}");
    metadata_only(proxy.take_requests());
    let (_, keys) = d.get("/v1/keys", &d.admin);
    let counts: Vec<u64> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["backups"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, vec![0, 10], "{keys}");
    verify_all(&d);

    let after = snapshot();
    let data_of = |m: &BTreeMap<String, (String, String)>| -> BTreeMap<String, (String, String)> {
        m.iter()
            .filter(|(k, _)| !k.ends_with("/backup.json"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    assert_eq!(data_of(&after), data_of(&before), "data objects untouched");
    for (name, (etag, _)) in before.iter().filter(|(k, _)| k.ends_with("/backup.json")) {
        assert_ne!(&after[name].0, etag, "{name} rewritten");
    }
}

/// `key list`, `key rotate` and `key rewrap` with `--server` run on the daemon (admin) and
/// print what local mode prints.
#[test]
fn key_commands_through_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    keyring(dir.path(), &["default", "acme"]);
    let data = unpack_fixture(dir.path());
    let d = Daemon::start(dir.path(), &store_line(dir.path()), "", &[]);
    for _ in 0..2 {
        let job = start_backup(&d, &d.admin, "n1", &data);
        let done = d.wait_job(job["id"].as_str().unwrap(), &d.admin);
        assert_eq!(done["state"], "succeeded", "{done}");
    }
    let cli = |args: &[&str]| {
        let mut all = vec!["--server", &d.url, "--token", &d.admin];
        all.extend_from_slice(args);
        let out = couchvault(dir.path(), &all);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let out = cli(&["key", "rotate"]);
    assert!(
        out.contains("tenant 'default': 2 backup(s) rewrapped") && out.contains("untouched"),
        "{out}"
    );
    let out = cli(&["key", "rewrap"]);
    assert!(
        out.contains("0 backup(s) rewrapped") && out.contains("2 already"),
        "{out}"
    );
    let keys: Value = serde_json::from_str(&cli(&["--json", "key", "list"])).unwrap();
    let rows = common::key_counts(&keys);
    let want: Vec<(String, u64)> = vec![
        ("default".into(), 0),
        ("acme".into(), 0),
        ("default".into(), 2),
    ];
    assert_eq!(rows, want, "{keys}");
    assert!(cli(&["--tenant", "acme", "key", "list"]).contains("acme"));
    // A tenant token may not rotate keys.
    let t = d.tenant_token("default");
    let (s, _) = d.post("/v1/keys/rotate", &t, &json!({}));
    assert_eq!(s, 403);
}

/// Issue 16: finished jobs reach their webhooks (a Slack-style `text` and the job record)
/// and backups ping a dead-man's switch (`/start`, then success or `/fail`); a receiver that
/// fails is retried until it answers, a dead one never holds a job up; a tenant's rule hears
/// nothing of another tenant; the URLs' secrets never reach the daemon's log.
#[test]
fn jobs_notify_webhooks_and_pings_and_a_dead_receiver_holds_nothing_up() {
    let dir = tempfile::tempdir().unwrap();
    keyring(dir.path(), &["default", "acme"]);
    let data = unpack_fixture(dir.path());
    let (rx, url) = common::receiver::Receiver::start(2);
    let extra = format!(
        "{}[notify]\nretry_delay = \"1s\"\nmax_attempts = 3\n\
         [[notify.rules]]\ntenant = \"default\"\nwebhook = \"{url}/hook/secret-hook-token\"\nping = \"{url}/ping/secret-ping-token\"\n\
         [[notify.rules]]\nwebhook = \"http://127.0.0.1:1/dead/secret-dead-token\"\n\
         [[notify.rules]]\ntenant = \"acme\"\nwebhook = \"{url}/acme\"\nfailures_only = true\n",
        store_line(dir.path())
    );
    let d = Daemon::start(dir.path(), &extra, "", &[]);
    let job = start_backup(&d, &d.admin, "node1", &data);
    let done = d.wait_job(job["id"].as_str().unwrap(), &d.admin);
    assert_eq!(done["state"], "succeeded", "{done}");
    let first_done = std::time::Instant::now();
    let mut bad = backup_body("node1", &dir.path().join("no-such-dir"));
    bad["allow_incomplete"] = json!(true);
    let (s, job) = d.post("/v1/backups", &d.admin, &bad);
    assert_eq!(s, 202, "{job}");
    let failed = d.wait_job(job["id"].as_str().unwrap(), &d.admin);
    assert_eq!(failed["state"], "failed", "{failed}");
    // The dead destination's tries (1 s, then 2 s apart) and the failing receiver's held
    // neither job: the second ended long before they did.
    assert!(
        first_done.elapsed() < Duration::from_millis(2500),
        "{failed}"
    );

    // The first two requests failed (500) and were tried again, in order.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while (rx.seen("/ping/").len() < 6 || rx.seen("/hook/").len() < 2)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let pings: Vec<String> = rx
        .seen("/ping/")
        .into_iter()
        .map(|(m, p, _)| format!("{m} {p}"))
        .collect();
    assert_eq!(
        pings,
        [
            "GET /ping/secret-ping-token/start",
            "GET /ping/secret-ping-token/start",
            "GET /ping/secret-ping-token/start",
            "GET /ping/secret-ping-token",
            "GET /ping/secret-ping-token/start",
            "GET /ping/secret-ping-token/fail",
        ],
        "{pings:?}"
    );
    let hooks = rx.seen("/hook/");
    assert_eq!(hooks.len(), 2, "{hooks:?}");
    let first: Value = serde_json::from_str(&hooks[0].2).unwrap();
    assert_eq!(first["couchvault_notification"], 1);
    assert_eq!(first["event"], "job_finished");
    assert_eq!(first["state"], "succeeded");
    assert_eq!(first["instance"], "node1");
    assert_eq!(first["backup_id"], done["backup_id"]);
    assert_eq!(first["job"]["id"], done["id"]);
    assert!(first["duration_secs"].as_f64().unwrap() > 0.0);
    let text = first["text"].as_str().unwrap();
    assert!(
        text.starts_with("couchvault: backup of default/node1 succeeded in "),
        "{text}"
    );
    let second: Value = serde_json::from_str(&hooks[1].2).unwrap();
    assert_eq!(second["state"], "failed");
    assert_eq!(second["error"], failed["error"]);
    assert!(rx.seen("/acme").is_empty(), "another tenant's jobs");

    // The dead destination was given up after its tries; the counts are in /metrics.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let m = d
            .req(Method::GET, "/metrics", Some(&d.admin))
            .send()
            .unwrap()
            .text()
            .unwrap();
        if m.contains("couchvault_notifications_total{outcome=\"failed\"} 2")
            || std::time::Instant::now() > deadline
        {
            break m;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        metrics.contains("couchvault_notifications_total{outcome=\"failed\"} 2"),
        "{metrics}"
    );
    let log = d.log();
    assert!(
        log.contains("notify rule 2 (http://127.0.0.1:1/…)"),
        "{log}"
    );
    for secret in [
        "secret-hook-token",
        "secret-ping-token",
        "secret-dead-token",
    ] {
        assert!(!log.contains(secret), "{secret} in the log");
    }
}

/// Issue 16, end to end in headless Chromium against a daemon with real backups on the
/// local store: sign in, the overview, a running backup's progress updating without a
/// reload until it ends, a schedule added with its cron expression in words and its next
/// five runs, a restore reviewed then confirmed, and a tenant that sees only its own
/// instance (the dashboard's requests obey the API's tenant rules). A screenshot of each
/// page lands in `target/tmp/dashboard/`.
#[test]
fn the_dashboard_in_a_real_browser() {
    let Some((chromium, driver)) = common::webdriver::available() else {
        return;
    };
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    let dir = tempfile::tempdir().unwrap();
    keyring(dir.path(), &["default", "acme"]);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let (data, shop) = (unpack_fixture(&a), unpack_fixture(&b));
    // Each backup stops for 3 s half way: long enough to watch it run.
    let d = Daemon::start(
        dir.path(),
        &store_line(dir.path()),
        "",
        &[("COUCHVAULT_TEST_PAUSE", "mid-stream:3000")],
    );
    register(&d, "default", "node1", &data, false);
    register(&d, "acme", "shop", &shop, false);
    let first = start_backup(&d, &d.admin, "node1", &data);
    let first = d.wait_job(first["id"].as_str().unwrap(), &d.admin);
    assert_eq!(first["state"], "succeeded", "{first}");

    let web = common::webdriver::Browser::start(&chromium, &driver);
    web.goto(&format!("{}/", d.url));
    web.fill("#token", &d.admin);
    web.click("#signin-submit");
    web.wait_text("#who", |t| t == "admin");
    let card = "section[aria-label='instance default/node1']";
    let last = web.wait_text(&format!("{card} dd.fresh"), |t| t.ends_with("ago"));
    assert!(last.contains("s ago"), "{last}");
    assert!(web
        .try_find("section[aria-label='instance acme/shop']")
        .is_some());
    // Every form control has a label.
    let unlabelled = web.script(
        "return [...document.querySelectorAll('input, select')].filter(e => !e.labels?.length && !e.getAttribute('aria-label')).length",
        json!([]),
    );
    assert_eq!(unlabelled, 0);
    web.screenshot(&shots.join("1-overview.png"));

    // A backup started from its card: its progress shows while it runs, then it ends.
    web.click_button(card, "Back up now");
    let running = web.wait_text("tr[data-job] progress + div", |t| t.contains(" / "));
    let (done, total) = running
        .split_once(", files")
        .unwrap()
        .0
        .split_once(" / ")
        .unwrap();
    assert_ne!(done, total, "caught half way: {running}");
    web.screenshot(&shots.join("2-jobs-running.png"));
    let job_id = web.script(
        "return document.querySelector('tr[data-job] progress').closest('tr').dataset.job",
        json!([]),
    );
    let job_id = job_id.as_str().unwrap().to_string();
    web.wait_text(
        &format!("tr[data-job='{job_id}'] td.state-succeeded"),
        |t| t == "succeeded",
    );
    web.screenshot(&shots.join("3-jobs-done.png"));

    // A schedule: the expression in words and its next five runs before it is saved.
    web.goto(&format!("{}/#/schedules", d.url));
    web.fill("#schedule-name", "nightly");
    web.fill("#schedule-instance", "node1");
    web.fill("#schedule-cron", "30 2 * * 1-5");
    web.fill("#schedule-tz", "Europe/Berlin");
    web.wait_text("#cron-words", |t| {
        t == "At 02:30 on Monday to Friday (Europe/Berlin)"
    });
    let runs = web.script(
        "return document.querySelectorAll('#cron-next li').length",
        json!([]),
    );
    assert_eq!(runs, 5);
    web.fill("#schedule-cron", "61 2 * * *");
    web.wait_text("#cron-words", |t| t.contains("minute") && t.contains("61"));
    web.fill("#schedule-cron", "30 2 * * 1-5");
    web.wait_text("#cron-words", |t| t.starts_with("At 02:30"));
    web.screenshot(&shots.join("4-schedule-preview.png"));
    web.click("#schedule-save");
    web.find("tr[data-schedule='nightly']");
    let (_, list) = d.get("/v1/schedules", &d.admin);
    assert_eq!(list[0]["cron"], "30 2 * * 1-5", "{list}");
    assert_eq!(list[0]["tz"], "Europe/Berlin", "{list}");
    let schedule_id = list[0]["id"].as_str().unwrap().to_string();
    web.click_button("tr[data-schedule='nightly']", "Pause");
    web.wait_text("tr[data-schedule='nightly'] td:nth-child(5)", |t| {
        t == "paused"
    });
    let (_, s) = d.get(&format!("/v1/schedules/{schedule_id}"), &d.admin);
    assert_eq!(s["paused"], true, "{s}");
    web.click_button("tr[data-schedule='nightly']", "Resume");
    web.wait_text("tr[data-schedule='nightly'] td:nth-child(5)", |t| {
        t == "active"
    });
    web.screenshot(&shots.join("4b-schedules.png"));

    // Verify, and delete after the confirmation.
    let backups_before = backup_ids(&d, &d.admin);
    assert_eq!(backups_before.len(), 2);
    web.goto(&format!("{}/#/backups/default%2Fnode1", d.url));
    let oldest = format!("tr[data-backup='{}']", backups_before[0]);
    web.click_button(&oldest, "Verify");
    // The first job of a kind the page started, once it has ended.
    let ended = |kind: &str| {
        let id = web.wait(&format!("the {kind} job"), || {
            let (_, jobs) = d.get(&format!("/v1/jobs?kind={kind}"), &d.admin);
            jobs.as_array()?.first()?["id"].as_str().map(str::to_string)
        });
        d.wait_job(&id, &d.admin)
    };
    let verified = ended("verify");
    assert_eq!(verified["state"], "succeeded", "{verified}");
    web.click_button(&oldest, "Delete");
    let asked = web.accept_alert();
    assert!(asked.contains("cannot be undone"), "{asked}");
    web.wait("the backup deleted", || {
        (backup_ids(&d, &d.admin).len() == 1).then_some(())
    });

    // A policy uploaded and dry-run against the instance's real backups.
    if let Some(gfs) = gfs_wasm() {
        let wasm = dir.path().join("gfs.wasm");
        std::fs::write(&wasm, gfs).unwrap();
        web.goto(&format!("{}/#/policies", d.url));
        web.fill("#policy-name", "gfs");
        web.upload("#policy-file", &wasm);
        web.click("#policy-upload button[type=submit]");
        web.click_button("tr[data-policy='gfs']", "Dry run");
        let verdicts = web.wait_text("#dry-run table", |t| t.contains("keep"));
        assert!(
            verdicts.contains(&backup_ids(&d, &d.admin)[0]),
            "{verdicts}"
        );
        web.screenshot(&shots.join("7-policy-dry-run.png"));
    }

    // A restore: what will happen is shown first, then it runs when confirmed.
    let target = dir.path().join("restored");
    web.goto(&format!("{}/#/backups/default%2Fnode1", d.url));
    web.click_button("tr[data-backup]", "Restore…");
    web.fill("#restore-target", target.to_str().unwrap());
    web.click("#restore-review-button");
    let review = web.wait_text("#restore-review", |t| t.contains("What will happen"));
    assert!(
        review.contains(&format!("into {}", target.display())),
        "{review}"
    );
    assert!(review.contains("node check"), "{review}");
    assert!(review.contains("hooks: none"), "{review}");
    web.screenshot(&shots.join("5-restore-review.png"));
    assert!(!target.exists(), "nothing happens before it is confirmed");
    web.click("#restore-confirm");
    let restored = ended("restore");
    assert_eq!(restored["state"], "succeeded", "{restored}");
    assert!(target.join("_dbs.couch").exists() || target.join("data").exists());

    // A tenant sees its own instance only, and the API refuses it another tenant's.
    web.click("#signout");
    web.fill("#token", &d.tenant_token("acme"));
    web.click("#signin-submit");
    web.wait_text("#who", |t| t == "tenant acme");
    web.goto(&format!("{}/#/overview", d.url));
    web.find("section[aria-label='instance acme/shop']");
    assert!(web
        .try_find("section[aria-label='instance default/node1']")
        .is_none());
    web.screenshot(&shots.join("6-tenant-overview.png"));
    web.goto(&format!("{}/#/backups/default%2Fnode1", d.url));
    let options = web.script(
        "return [...document.querySelectorAll('#backup-instance option')].map(o => o.value)",
        json!([]),
    );
    assert_eq!(options, json!(["acme/shop"]));
    let answer = web.script_async(
        "fetch('/v1/backups?tenant=default', { headers: { Authorization: 'Bearer ' + sessionStorage.getItem('couchvault-token') } }).then(r => arguments[0](r.status))",
        json!([]),
    );
    assert_eq!(answer, 403);
    // The same rules as the API's (R6): another tenant's objects are not found.
    let admin_job = restored["id"].as_str().unwrap();
    let backup = &backup_ids(&d, &d.admin)[0];
    for (path, want) in [
        (format!("/v1/jobs/{admin_job}"), 404),
        (format!("/v1/backups/{backup}"), 404),
        (format!("/v1/schedules/{schedule_id}"), 404),
        ("/v1/overview?tenant=default".to_string(), 403),
    ] {
        let got = web.script_async(
            "fetch(arguments[0], { headers: { Authorization: 'Bearer ' + sessionStorage.getItem('couchvault-token') } }).then(r => arguments[1](r.status))",
            json!([path]),
        );
        assert_eq!(got, want, "{path}");
    }
}

/// A job seen ended has freed its instance: the next job of the instance, asked for at
/// once, starts (the daemon used to record the end first and free the instance after, so
/// a client that saw the end could be answered 409; the pause widens that window).
#[test]
fn a_job_seen_ended_has_freed_its_instance() {
    let dir = tempfile::tempdir().unwrap();
    let (data, d, _) = paused_daemon_with_a_backup(dir.path(), "job-recorded:3000");
    let (s, next) = d.post("/v1/backups", &d.admin, &backup_body("node1", &data));
    assert_eq!(s, 202, "{next}");
}
