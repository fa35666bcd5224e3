//! couchvault against real Apache CouchDB 3.5 nodes (`../shared/couchdb/couch.sh`): a hot
//! backup under a live writer restored onto a fresh node, a restore under another node name
//! with `--rename-node`, the post-restore check and rollback, live stats, an in-place restore
//! through the daemon, a cluster member. Each test runs its own nodes with node names of its
//! own, so the tests run in parallel. Ports: 11100-11282 (a node uses PORT, PORT+2 and
//! PORT+20000): below the kernel's ephemeral range, so no client socket or free-port probe of
//! another test can take one.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine as _;
use common::couch::{encode, script, Couch};
use reqwest::Method;
use serde_json::{json, Value};
/// The CLI with a node's environment (`Couch::env`).
fn run(cwd: &Path, args: &[&str], env: &[(&str, String)]) -> (Option<i32>, String, String) {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    common::cli_with_env(cwd, args, &env)
}

fn ok(cwd: &Path, args: &[&str], env: &[(&str, String)]) -> String {
    let (code, out, err) = run(cwd, args, env);
    assert_eq!(code, Some(0), "{args:?}: {out}\n{err}");
    out
}

/// `backup create --instance INSTANCE SOURCE...` with `env`; returns the backup's id.
fn create_backup(cwd: &Path, instance: &str, source: &[&str], env: &[(&str, String)]) -> String {
    let mut args = vec!["--json", "backup", "create", "--instance", instance];
    args.extend_from_slice(source);
    let out = ok(cwd, &args, env);
    serde_json::from_str::<Value>(&out).unwrap()["backup_id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Backs up node `c` (its etc/, its URL and credentials) as `instance`; returns the id.
fn backup_of(cwd: &Path, c: &Couch, instance: &str) -> String {
    create_backup(
        cwd,
        instance,
        &["--couchdb-config", c.etc.to_str().unwrap()],
        &c.env(),
    )
}

/// A document's payload, derived from what it is: every body read back can be checked.
fn payload(db: &str, id: &str, v: u64) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, format!("{db}/{id}/{v}").as_bytes());
    hex::encode(digest.as_ref())
}

/// An attachment's bytes, derived from its document and name.
fn attachment(db: &str, id: &str, name: &str, len: usize) -> Vec<u8> {
    let seed = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{db}/{id}/{name}").as_bytes(),
    );
    (0..len)
        .map(|i| seed.as_ref()[i % 32] ^ (i / 32) as u8)
        .collect()
}

const DBS: [&str; 3] = ["alpha", "orders/2026", "beta"];
const DOCS: usize = 120;

/// Three databases (q=2, one with `/` in its name) of documents, some with inline and some
/// with standalone attachments, a JavaScript view and a Mango index each (both built).
fn populate(c: &Couch) {
    for db in DBS {
        let path = format!("/{}", encode(db));
        c.send(Method::PUT, &path, &json!({}));
        let docs: Vec<Value> = (0..DOCS)
            .map(|i| {
                let id = format!("d{i:04}");
                let mut doc = json!({ "_id": id, "v": 0, "payload": payload(db, &id, 0) });
                if i % 10 == 0 {
                    let data = base64::engine::general_purpose::STANDARD.encode(attachment(
                        db,
                        &id,
                        "inline.txt",
                        300,
                    ));
                    doc["_attachments"] = json!({
                        "inline.txt": { "content_type": "text/plain", "data": data }
                    });
                }
                doc
            })
            .collect();
        c.send(
            Method::POST,
            &format!("{path}/_bulk_docs"),
            &json!({ "docs": docs }),
        );
        for i in (5..DOCS).step_by(10) {
            let id = format!("d{i:04}");
            let rev = c.get(&format!("{path}/{id}"))["_rev"]
                .as_str()
                .unwrap()
                .to_string();
            let (s, v) = c.call(
                c.req(Method::PUT, &format!("{path}/{id}/blob.bin?rev={rev}"))
                    .header("content-type", "application/octet-stream")
                    .body(attachment(db, &id, "blob.bin", 70_000)),
            );
            assert_eq!(s, 201, "{v}");
        }
        c.send(
            Method::PUT,
            &format!("{path}/_design/v"),
            &json!({ "views": { "by_v": { "map": "function (doc) { if (doc.payload) emit(doc.v, null); }" } } }),
        );
        c.send(
            Method::POST,
            &format!("{path}/_index"),
            &json!({ "index": { "fields": ["v"] }, "name": "v-idx", "type": "json" }),
        );
        // Build both indexes now, so their files are part of the backup.
        c.get(&format!("{path}/_design/v/_view/by_v?limit=1"));
        c.send(
            Method::POST,
            &format!("{path}/_find"),
            &json!({ "selector": { "v": { "$gte": 0 } }, "limit": 1 }),
        );
    }
}

/// The live writer: in every database, rounds of insert A, insert B, update an existing
/// document, delete A, each round under `between` (so counts can be read between rounds).
/// Each shard's document count never drops below where it was at a round's start, and is
/// at most one in-flight A above where it ends.
fn write_until(c: &Couch, stop: &AtomicBool, between: &std::sync::Mutex<()>) -> u64 {
    write_from(c, stop, between, 0)
}

/// [`write_until`], numbering its documents from round `first` (a writer run again after
/// another must not reuse ids). Returns the rounds written.
fn write_from(c: &Couch, stop: &AtomicBool, between: &std::sync::Mutex<()>, first: u64) -> u64 {
    let mut round = first;
    while !stop.load(Ordering::Relaxed) {
        let _round = between.lock().unwrap();
        for db in DBS {
            let path = format!("/{}", encode(db));
            let new = |tag: &str| {
                let id = format!("w{round:05}{tag}");
                let body = json!({ "_id": id, "v": 0, "payload": payload(db, &id, 0) });
                let r = c.send(Method::POST, &path, &body);
                (id, r["rev"].as_str().unwrap().to_string())
            };
            let (a, a_rev) = new("a");
            new("b");
            let id = format!("d{:04}", round as usize % DOCS);
            let doc = c.get(&format!("{path}/{id}"));
            let v = doc["v"].as_u64().unwrap() + 1;
            let mut updated = doc.clone();
            updated["v"] = json!(v);
            updated["payload"] = json!(payload(db, &id, v));
            c.send(Method::PUT, &format!("{path}/{id}"), &updated);
            let (s, body) = c.call(c.req(Method::DELETE, &format!("{path}/{a}?rev={a_rev}")));
            assert_eq!(s, 200, "{body}");
        }
        round += 1;
    }
    round - first
}

/// Every database of `c` against what was written: counts within bounds, every document's
/// body, attachments, the view and the Mango query.
fn check_restored(c: &Couch, before: &[u64], after: &[u64]) {
    for (k, db) in DBS.iter().enumerate() {
        let path = format!("/{}", encode(db));
        let n = c.doc_count(db);
        // Shard files are copied one at a time, each as of the moment it was opened: each
        // shard holds at most one in-flight insert (q = 2: two shards).
        assert!(
            before[k] <= n && n <= after[k] + 2,
            "{db}: {n} documents, {} before and {} after the backup",
            before[k],
            after[k]
        );
        let all = c.get(&format!("{path}/_all_docs?include_docs=true"));
        let rows = all["rows"].as_array().unwrap();
        assert_eq!(rows.len() as u64, n, "{db}");
        let mut attachments = 0;
        let mut plain = 0;
        for row in rows {
            let doc = &row["doc"];
            let id = doc["_id"].as_str().unwrap();
            if id.starts_with("_design/") {
                continue;
            }
            plain += 1;
            let v = doc["v"].as_u64().unwrap();
            assert_eq!(doc["payload"], payload(db, id, v), "{db}/{id}");
            if let Some(atts) = doc["_attachments"].as_object() {
                for (name, meta) in atts {
                    let len = meta["length"].as_u64().unwrap() as usize;
                    let r = c
                        .req(Method::GET, &format!("{path}/{id}/{name}"))
                        .send()
                        .unwrap();
                    assert_eq!(r.status().as_u16(), 200, "{db}/{id}/{name}");
                    let bytes = r.bytes().unwrap();
                    assert_eq!(
                        &bytes[..],
                        &attachment(db, id, name, len)[..],
                        "{db}/{id}/{name}"
                    );
                    attachments += 1;
                }
            }
        }
        assert_eq!(
            attachments,
            DOCS / 10 * 2,
            "{db}: every attachment read back"
        );
        let view = c.get(&format!("{path}/_design/v/_view/by_v"));
        // Design documents (the view's and the Mango index's) emit nothing.
        assert_eq!(
            view["total_rows"].as_u64().unwrap(),
            plain,
            "{db}: the view answers"
        );
        let found = c.send(
            Method::POST,
            &format!("{path}/_find"),
            &json!({ "selector": { "v": { "$gte": 0 } }, "limit": 100000, "use_index": "v-idx" }),
        );
        assert_eq!(
            found["docs"].as_array().unwrap().len() as u64,
            plain,
            "{db}: the Mango query answers: {}",
            found["warning"]
        );
    }
}

#[test]
fn a_hot_backup_under_load_restores_onto_a_fresh_node() {
    let Some(sh) = script() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let node = "cvhot@127.0.0.1";
    let src = Couch::start(&sh, "cv-hot-src", 11100, node);
    populate(&src);

    let stop = AtomicBool::new(false);
    let between = std::sync::Mutex::new(());
    let (before, after, id, rounds) = std::thread::scope(|s| {
        let writer = s.spawn(|| write_until(&src, &stop, &between));
        std::thread::sleep(Duration::from_millis(500));
        let before: Vec<u64> = {
            let _between_rounds = between.lock().unwrap();
            DBS.iter().map(|db| src.doc_count(db)).collect()
        };
        let id = backup_of(cwd, &src, "hot");
        stop.store(true, Ordering::Relaxed);
        let rounds = writer.join().unwrap();
        let after: Vec<u64> = DBS.iter().map(|db| src.doc_count(db)).collect();
        (before, after, id, rounds)
    });
    assert!(rounds > 0, "the writer ran during the backup");
    deep_verify_passes(cwd, &id);

    // A fresh node with the same node name (one at a time per host: stop the source).
    src.stop();
    let fresh = Couch::start(&sh, "cv-hot-dst", 11110, node);
    fresh.stop();
    let out = ok(
        cwd,
        &[
            "restore",
            &id,
            "--to",
            fresh.data.to_str().unwrap(),
            "--force",
            "--couchdb-config",
            fresh.etc.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.contains("restored backup"), "{out}");
    // The log of this start only: a brand-new node's first start logs an error of its own
    // (its _users database is created a moment after the auth cache looks for it).
    let first_start = fresh.log().len();
    fresh.restart();
    check_restored(&fresh, &before, &after);
    let log = fresh.log()[first_start..].to_string();
    let lines: Vec<&str> = log.lines().collect();
    let errors: Vec<String> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("[error]"))
        .map(|(i, _)| lines[i..(i + 6).min(lines.len())].join("\n"))
        .collect();
    assert!(
        errors.is_empty(),
        "errors in the new node's log:\n{}",
        errors.join("\n---\n")
    );
}

#[test]
fn another_node_name_is_refused_then_renamed_and_every_database_answers() {
    let Some(sh) = script() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let src = Couch::start(&sh, "cv-ren-src", 11120, "cvren@127.0.0.1");
    populate(&src);
    let id = backup_of(cwd, &src, "ren");
    let counts: Vec<u64> = DBS.iter().map(|db| src.doc_count(db)).collect();
    src.stop();

    let dst = Couch::start(&sh, "cv-ren-dst", 11130, "cvren2@127.0.0.1");
    let target = dst.data.to_str().unwrap().to_string();
    let dst_etc = dst.etc.to_str().unwrap().to_string();
    // Refused, naming both nodes; nothing touched.
    let (code, _, err) = run(
        cwd,
        &[
            "restore",
            &id,
            "--to",
            &target,
            "--force",
            "--couchdb-config",
            &dst_etc,
        ],
        &[],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("'cvren@127.0.0.1'") && err.contains("'cvren2@127.0.0.1'"),
        "{err}"
    );
    // With the node's hooks and --rename-node: every database answers afterwards.
    let (stop_cmd, start_cmd) = dst.hooks();
    std::fs::write(
        cwd.join("config.toml"),
        format!(
            "couchvault_config = 1\n[restore]\nstop_command = \"{stop_cmd}\"\nstart_command = \"{start_cmd}\"\nstart_timeout = \"60s\"\n"
        ),
    )
    .unwrap();
    let dst_env = dst.env();
    let out = ok(
        cwd,
        &[
            "--config",
            "config.toml",
            "restore",
            &id,
            "--to",
            &target,
            "--force",
            "--couchdb-config",
            &dst_etc,
            "--rename-node",
        ],
        &dst_env,
    );
    assert!(out.contains("rewrote the shard maps"), "{out}");
    for (k, db) in DBS.iter().enumerate() {
        assert_eq!(dst.doc_count(db), counts[k], "{db}");
        let all = dst.get(&format!("/{}/_all_docs", encode(db)));
        assert_eq!(
            all["rows"].as_array().unwrap().len() as u64,
            counts[k],
            "{db}"
        );
    }
}

#[test]
fn live_stats_post_restore_check_and_rollback_on_real_couchdb() {
    let Some(sh) = script() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let c = Couch::start(&sh, "cv-chk", 11140, "cvchk@127.0.0.1");
    populate(&c);
    let security = json!({ "admins": { "names": ["boss"], "roles": [] }, "members": { "names": [], "roles": ["staff"] } });
    c.send(Method::PUT, "/beta/_security", &security);
    let id = backup_of(cwd, &c, "chk");
    let env = c.env();

    // Live stats as the real node reported them.
    let meta: Value =
        serde_json::from_str(&ok(cwd, &["--json", "backup", "show", &id], &[])).unwrap();
    let live = &meta["couchdb"];
    assert_eq!(live["reachable"], true, "{live}");
    assert_eq!(live["version"], "3.5.0", "{live}");
    assert_eq!(live["node_name"], "cvchk@127.0.0.1", "{live}");
    for db in DBS {
        let want = c.doc_count(db);
        assert_eq!(live["databases"][db]["doc_count"], want, "{db}: {live}");
        assert!(
            live["databases"][db]["update_seq"].is_string()
                || live["databases"][db]["update_seq"].is_number(),
            "{live}"
        );
    }
    assert_eq!(live["databases"]["beta"]["security"], security, "{live}");

    // In place, with the node's hooks: the check passes.
    let (stop_cmd, start_cmd) = c.hooks();
    let target = c.data.to_str().unwrap().to_string();
    let config = |start: &str| {
        std::fs::write(
            cwd.join("config.toml"),
            format!(
                "couchvault_config = 1\n[restore]\nstop_command = \"{stop_cmd}\"\nstart_command = \"{start}\"\nstart_timeout = \"60s\"\n"
            ),
        )
        .unwrap();
    };
    config(&start_cmd);
    let restore = || {
        run(
            cwd,
            &[
                "--config",
                "config.toml",
                "restore",
                &id,
                "--to",
                &target,
                "--force",
            ],
            &env,
        )
    };
    let (code, out, err) = restore();
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("beta") && l.ends_with("ok")),
        "{out}"
    );

    // CouchDB comes back with fewer documents than recorded (a document lost after the
    // start): the restore fails naming it, keeps the previous data, and rolls back.
    let curl = format!("curl -sf -u admin:password -X DELETE {}", c.url);
    let rev = c.get("/beta/d0001")["_rev"].as_str().unwrap().to_string();
    config(&format!(
        "{start_cmd} && {curl}/beta/d0001?rev={rev} > /dev/null"
    ));
    let (code, out, err) = restore();
    assert_eq!(code, Some(1), "{out}\n{err}");
    let recorded = live["databases"]["beta"]["doc_count"].as_u64().unwrap();
    assert!(
        err.contains(&format!(
            "beta: {} documents, fewer than the {recorded} recorded",
            recorded - 1
        )),
        "{err}"
    );
    assert!(err.contains("couchvault restore --rollback --to"), "{err}");
    assert!(out.contains("FAILED"), "{out}");
    let (code, out, err) = run(
        cwd,
        &[
            "--config",
            "config.toml",
            "restore",
            "--rollback",
            "--to",
            &target,
        ],
        &env,
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("rolled back"), "{out}");

    // A database gone after the start: named, with CouchDB's answer.
    config(&format!("{start_cmd} && {curl}/alpha > /dev/null"));
    let (code, _, err) = restore();
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("alpha: CouchDB at") && err.contains("404"),
        "{err}"
    );
}

/// Through the daemon, as Trove would: the admin registers both nodes as instances of a
/// tenant (CouchDB credentials by reference to the config, hooks on the target); the tenant
/// backs one up by name and restores it in place into the other, renamed.
#[test]
fn a_tenant_restores_in_place_into_a_registered_instance_with_its_hooks() {
    let Some(sh) = script() else { return };
    let dir = tempfile::tempdir().unwrap();
    let src = Couch::start(&sh, "cv-inst-src", 11150, "cvinst@127.0.0.1");
    populate(&src);
    let counts: Vec<u64> = DBS.iter().map(|db| src.doc_count(db)).collect();
    let dst = Couch::start(&sh, "cv-inst-dst", 11160, "cvinst2@127.0.0.1");
    let path = dir.path().join("keyring.toml");
    couchvault::keyring::KeyRing::create(&path, "acme").unwrap();
    let d = common::daemon::Daemon::start(
        dir.path(),
        &format!(
            "store = \"file://{}\"\n[couchdb.credentials.nodes]\nuser = \"admin\"\npassword = \"password\"\n",
            dir.path().join("store").display()
        ),
        "",
        &[],
    );
    let (stop_cmd, start_cmd) = dst.hooks();
    for (name, c, hooks) in [("src", &src, false), ("dst", &dst, true)] {
        let mut spec = json!({
            "name": name, "tenant": "acme", "couchdb_config": c.etc,
            "couchdb_url": c.url, "couchdb_credentials": "nodes",
        });
        if hooks {
            spec["stop_command"] = json!(stop_cmd);
            spec["start_command"] = json!(start_cmd);
            spec["restore_in_place"] = json!(true);
        }
        let (s, v) = d.post("/v1/instances", &d.admin, &spec);
        assert_eq!(s, 201, "{v}");
        assert!(!v.to_string().contains("password"), "no secret stored: {v}");
    }
    let acme = d.tenant_token("acme");
    let (s, job) = d.post("/v1/backups", &acme, &json!({ "instance": "src" }));
    assert_eq!(s, 202, "{job}");
    let job = d.wait_job(job["id"].as_str().unwrap(), &acme);
    assert_eq!(job["state"], "succeeded", "{job}");
    let id = job["backup_id"].as_str().unwrap();
    let (_, meta) = d.get(&format!("/v1/backups/{id}"), &acme);
    assert_eq!(
        meta["couchdb"]["reachable"], true,
        "live stats with the referenced credentials: {meta}"
    );

    let (s, job) = d.post(
        "/v1/restores",
        &acme,
        &json!({ "backup_id": id, "instance": "dst", "in_place": true, "force": true,
                 "node_name": "cvinst2@127.0.0.1", "rename_node": true }),
    );
    assert_eq!(s, 202, "{job}");
    let job = d.wait_job(job["id"].as_str().unwrap(), &acme);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert!(
        !job["result"]["renamed"].as_array().unwrap().is_empty(),
        "{job}"
    );
    for (k, db) in DBS.iter().enumerate() {
        assert_eq!(dst.doc_count(db), counts[k], "{db}");
    }
}

/// A member of a real 3-node cluster backed up by its data directory alone: its shard maps
/// name all three nodes, all are recorded, and a restore under a node outside them is
/// refused naming them.
#[test]
fn a_cluster_members_data_dir_records_every_node_of_its_shard_maps() {
    let Some(sh) = script() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let nodes = Couch::cluster(&sh, "cvcl", 3, 11200);
    assert_eq!(nodes.len(), 3);
    nodes[0].send(Method::PUT, "/shared", &json!({}));
    for i in 0..20 {
        nodes[i % 3].send(Method::POST, "/shared", &json!({ "i": i }));
    }
    let data = nodes[0].data.to_str().unwrap().to_string();
    let id = create_backup(cwd, "member", &["--data-dir", &data], &[]);
    let meta: Value =
        serde_json::from_str(&ok(cwd, &["--json", "backup", "show", &id], &[])).unwrap();
    let names: Vec<String> = nodes.iter().map(|n| n.node.clone()).collect();
    assert_eq!(
        meta["source"]["shard_map_nodes"],
        json!(names),
        "{}",
        meta["source"]
    );
    let (code, _, err) = run(
        cwd,
        &[
            "restore",
            &id,
            "--to",
            "t",
            "--node-name",
            "couchdb@elsewhere",
        ],
        &[],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        names.iter().all(|n| err.contains(&format!("'{n}'"))),
        "{err}"
    );
    assert!(!cwd.join("t").exists());
    ok(
        cwd,
        &["restore", &id, "--to", "t", "--node-name", &names[1]],
        &[],
    );
}

/// One backup of `c` while the writer runs; returns the document counts just before and
/// just after it, and its id.
fn backup_under_writer(
    cwd: &Path,
    c: &Couch,
    extra: &[&str],
    first_round: u64,
    between_backups: impl FnOnce(),
) -> (Vec<u64>, Vec<u64>, String) {
    let stop = AtomicBool::new(false);
    let between = std::sync::Mutex::new(());
    std::thread::scope(|s| {
        let writer = s.spawn(|| write_from(c, &stop, &between, first_round));
        std::thread::sleep(Duration::from_millis(300));
        between_backups();
        let before: Vec<u64> = {
            let _between_rounds = between.lock().unwrap();
            DBS.iter().map(|db| c.doc_count(db)).collect()
        };
        let mut args = vec!["--json", "backup", "create", "--instance", "inc"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--couchdb-config", c.etc.to_str().unwrap()]);
        let out = ok(cwd, &args, &c.env());
        stop.store(true, Ordering::Relaxed);
        assert!(
            writer.join().unwrap() > 0,
            "the writer ran during the backup"
        );
        let after: Vec<u64> = DBS.iter().map(|db| c.doc_count(db)).collect();
        let v: Value = serde_json::from_str(&out).unwrap();
        (before, after, v["backup_id"].as_str().unwrap().to_string())
    })
}

/// Issue 13: a full and two incrementals of a node under a writer, with a compaction, a
/// deleted and a created database and updated views between them; each restored onto a
/// fresh node answers as it was, and nothing the chain dropped comes back.
#[test]
fn incrementals_of_a_node_under_a_writer_each_restore_onto_a_fresh_node() {
    let Some(sh) = script() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let node = "cvinc@127.0.0.1";
    let src = Couch::start(&sh, "cv-inc-src", 11170, node);
    populate(&src);
    src.send(Method::PUT, "/gamma", &json!({}));
    src.send(Method::PUT, "/gamma/g1", &json!({ "x": 1 }));

    let full = backup_under_writer(cwd, &src, &[], 0, || {});
    let inc1 = backup_under_writer(cwd, &src, &["--incremental"], 100_000, || {
        // A compaction (new shard files), a deleted and a created database, views updated.
        src.send(Method::POST, "/alpha/_compact", &json!({}));
        for _ in 0..100 {
            if src.get("/alpha")["compact_running"] == json!(false) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        src.call(src.req(Method::DELETE, "/gamma"));
        src.send(Method::PUT, "/delta", &json!({}));
        src.send(Method::PUT, "/delta/d1", &json!({ "x": 2 }));
        for db in DBS {
            src.get(&format!("/{}/_design/v/_view/by_v?limit=1", encode(db)));
        }
    });
    let inc2 = backup_under_writer(cwd, &src, &["--incremental"], 200_000, || {});

    let show: Value =
        serde_json::from_str(&ok(cwd, &["--json", "backup", "show", &inc1.2], &[])).unwrap();
    assert_eq!(show["kind"], "incremental");
    assert_eq!(show["parent"]["backup_id"], full.2.as_str());
    let how = |f: &Value| f["stored"]["how"].as_str().unwrap_or("whole").to_string();
    let files = show["files"].as_array().unwrap();
    let alpha: Vec<&Value> = files
        .iter()
        .filter(|f| {
            let p = f["path"].as_str().unwrap();
            p.starts_with("data/shards/") && p.contains("/alpha.") && p.ends_with(".couch")
        })
        .collect();
    assert!(!alpha.is_empty());
    for f in &alpha {
        assert_eq!(how(f), "whole", "compacted: {f}");
        assert!(f["reason"].as_str().unwrap().contains("replaced"), "{f}");
    }
    assert!(
        files.iter().any(|f| how(f) == "tail"),
        "the writer's databases grew: their tails are stored"
    );
    assert!(show["gone"]
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g.as_str().unwrap().contains("/gamma.")));
    let totals = &show["totals"];
    assert!(
        totals["stored_bytes"].as_u64() < totals["bytes"].as_u64(),
        "{totals}"
    );

    // The databases of an incremental are read through its chain.
    deep_verify_passes(cwd, &inc2.2);

    src.stop();
    let fresh = Couch::start(&sh, "cv-inc-dst", 11180, node);
    for (label, (before, after, id)) in [("full", &full), ("inc1", &inc1), ("inc2", &inc2)] {
        fresh.stop();
        ok(
            cwd,
            &[
                "restore",
                id,
                "--to",
                fresh.data.to_str().unwrap(),
                "--force",
                "--discard-old",
                "--couchdb-config",
                fresh.etc.to_str().unwrap(),
            ],
            &[],
        );
        fresh.restart();
        check_restored(&fresh, before, after);
        let (gamma, _) = fresh.call(fresh.req(Method::GET, "/gamma"));
        let (delta, _) = fresh.call(fresh.req(Method::GET, "/delta"));
        match label {
            "full" => assert_eq!((gamma, delta), (200, 404), "{label}"),
            _ => {
                assert_eq!(
                    (gamma, delta),
                    (404, 200),
                    "{label}: nothing dropped comes back"
                );
                assert_eq!(fresh.doc_count("delta"), 1);
            }
        }
    }
}

/// Issue 15: `backup verify --deep` of a hot backup under a writer passes: every database
/// file read whole, CouchDB's counts at the start recorded beside the files', every
/// attachment read.
fn deep_verify_passes(cwd: &Path, id: &str) {
    let out = ok(cwd, &["--json", "backup", "verify", "--deep", id], &[]);
    let report: Value = serde_json::from_str(&out).unwrap();
    for db in DBS {
        let row = report["databases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == db && d["node_local"] != true)
            .unwrap_or_else(|| panic!("{db} in {out}"));
        assert_eq!(row["problems"], 0, "{row}");
        assert_eq!(row["shards"], 2, "{row}");
        assert!(row["live_doc_count"].as_u64().is_some(), "{row}");
    }
    let attachments: u64 = report["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["walked"]["attachments"].as_u64())
        .sum();
    // Per database: 12 inline, 12 standalone 70 kB ones (and their older revisions').
    assert!(attachments >= 3 * 24, "{attachments} attachments read");
}

/// Issue 15: database files holding fewer documents than CouchDB counted when the backup
/// started (here: a copy taken before more were written) are named as damage.
#[test]
fn deep_verify_names_files_that_hold_fewer_documents_than_couchdb_counted() {
    let Some(sh) = script() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let c = Couch::start(&sh, "cv-cut", 11190, "cvcut@127.0.0.1");
    c.send(Method::PUT, "/shop", &json!({}));
    let batch = |from: usize| {
        let docs: Vec<Value> = (from..from + 50)
            .map(|i| json!({ "_id": format!("d{i:04}"), "n": i }))
            .collect();
        c.send(Method::POST, "/shop/_bulk_docs", &json!({ "docs": docs }));
    };
    batch(0);
    let stale = cwd.join("stale");
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(&c.data)
        .arg(&stale)
        .status()
        .unwrap();
    assert!(copied.success());
    batch(50);
    let id = create_backup(
        cwd,
        "cut",
        &["--data-dir", stale.to_str().unwrap()],
        &c.env(),
    );
    c.stop();
    let (code, out, err) = run(cwd, &["backup", "verify", "--deep", &id], &[]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains("shop: its files hold 50 documents") && out.contains("CouchDB counted 100"),
        "{out}"
    );
}

/// A database whose restore is checked in every detail: documents with inline text
/// (compressed by CouchDB) and binary attachments, updated documents, conflicts made with
/// `new_edits: false`, deleted documents, a design document with a view, `_security`.
fn populate_one(c: &Couch, db: &str) {
    let path = format!("/{}", encode(db));
    c.send(Method::PUT, &path, &json!({}));
    let docs: Vec<Value> = (0..60)
        .map(|i| {
            let id = format!("o{i:03}");
            let mut doc = json!({ "_id": id, "n": i, "big": 123456789012345678u64, "f": 0.1 * i as f64,
                                  "nested": { "a": [1, "two", null, true], "s": "é\"\\\n" } });
            if i % 7 == 0 {
                let text = "a line of text that compresses well\n".repeat(40);
                let bin = attachment(db, &id, "blob.bin", 5000 + i);
                doc["_attachments"] = json!({
                    "notes.txt": { "content_type": "text/plain", "data": base64::engine::general_purpose::STANDARD.encode(text) },
                    "blob.bin": { "content_type": "application/octet-stream", "data": base64::engine::general_purpose::STANDARD.encode(bin) }
                });
            }
            doc
        })
        .collect();
    c.send(
        Method::POST,
        &format!("{path}/_bulk_docs"),
        &json!({ "docs": docs }),
    );
    // Large attachments (sent as raw multipart parts), one stored gzip-encoded by CouchDB,
    // on a document with a history.
    let big_text = "a longer line of text, compressible, for the big attachment\n".repeat(3000);
    let big_bin = attachment(db, "big", "big.bin", 4_300_000);
    c.send(
        Method::PUT,
        &format!("{path}/big"),
        &json!({ "kind": "big", "_attachments": {
            "big.txt": { "content_type": "text/plain", "data": base64::engine::general_purpose::STANDARD.encode(&big_text) },
            "big.bin": { "content_type": "application/octet-stream", "data": base64::engine::general_purpose::STANDARD.encode(&big_bin) }
        } }),
    );
    let mut big = c.get(&format!("{path}/big"));
    big["kind"] = json!("bigger");
    c.send(Method::PUT, &format!("{path}/big"), &big);
    // Updates (histories longer than one), deletions, conflicts.
    for i in (1..60).step_by(5) {
        let id = format!("o{i:03}");
        let mut doc = c.get(&format!("{path}/{id}"));
        doc["n"] = json!(i * 100);
        c.send(Method::PUT, &format!("{path}/{id}"), &doc);
    }
    for i in (2..60).step_by(9) {
        let id = format!("o{i:03}");
        let rev = c.get(&format!("{path}/{id}"))["_rev"]
            .as_str()
            .unwrap()
            .to_string();
        let (s, v) = c.call(c.req(Method::DELETE, &format!("{path}/{id}?rev={rev}")));
        assert_eq!(s, 200, "{v}");
    }
    for i in (3..60).step_by(11) {
        let id = format!("o{i:03}");
        c.send(
            Method::POST,
            &format!("{path}/_bulk_docs"),
            &json!({ "new_edits": false, "docs": [{ "_id": id, "_rev": "1-c0ffee0000000000000000000000000a", "n": -1 }] }),
        );
    }
    c.send(
        Method::PUT,
        &format!("{path}/_design/q"),
        &json!({ "views": { "by_n": { "map": "function (doc) { emit(doc.n, null); }", "reduce": "_count" } } }),
    );
    c.send(
        Method::PUT,
        &format!("{path}/_security"),
        &json!({ "admins": { "names": ["boss"], "roles": [] }, "members": { "names": [], "roles": ["staff"] } }),
    );
}

/// Every document of `db` as CouchDB answers it: winning revision, conflicts, history,
/// body and attachments (bytes and content types; digests of the uncompressed ones).
fn snapshot(c: &Couch, db: &str) -> std::collections::BTreeMap<String, Value> {
    let path = format!("/{}", encode(db));
    let ids = c.get(&format!("{path}/_all_docs"));
    ids["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let id = r["id"].as_str().unwrap().to_string();
            let mut doc = c.get(&format!(
                "{path}/{}?revs=true&conflicts=true&attachments=true",
                id.replace('/', "%2F")
            ));
            if let Some(atts) = doc["_attachments"].as_object_mut() {
                for a in atts.values_mut() {
                    let o = a.as_object_mut().unwrap();
                    o.remove("revpos");
                    if o.contains_key("encoding") {
                        // CouchDB compresses again: its digest covers its own gzip bytes.
                        o.remove("digest");
                        o.remove("encoded_length");
                    }
                }
            }
            if let Some(c) = doc["_conflicts"].as_array_mut() {
                c.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            }
            (id, doc)
        })
        .collect()
}

/// Issue 15: one database of a backup pushed into a fresh node and, renamed, into a 3-node
/// cluster: the same ids, winning revisions, histories, conflicts, bodies, attachments,
/// design documents (their view answers) and `_security`; a rerun writes nothing; deleted
/// documents' tombstones on request.
#[test]
fn one_database_restores_into_a_fresh_node_and_a_cluster() {
    let Some(sh) = script() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let src = Couch::start(&sh, "cv-onedb-src", 11230, "cvonedb@127.0.0.1");
    let db = "sales/2026";
    populate_one(&src, db);
    let want = snapshot(&src, db);
    let view = |c: &Couch, name: &str| {
        c.get(&format!(
            "/{}/_design/q/_view/by_n?group=true",
            encode(name)
        ))
    };
    let want_view = view(&src, db);
    let want_security = src.get(&format!("/{}/_security", encode(db)));
    // A revision limit of its own, and a partitioned database beside it.
    let (s, v) = src.call(
        src.req(Method::PUT, &format!("/{}/_revs_limit", encode(db)))
            .body("50"),
    );
    assert_eq!(s, 200, "{v}");
    src.send(Method::PUT, "/parts?partitioned=true", &json!({}));
    src.send(
        Method::POST,
        "/parts/_bulk_docs",
        &json!({ "docs": [{ "_id": "p1:a", "v": 1 }, { "_id": "p2:b", "v": 2 }] }),
    );
    let want_parts = snapshot(&src, "parts");
    let id = backup_of(cwd, &src, "onedb");
    let deleted_in_src = src.get(&format!("/{}", encode(db)))["doc_del_count"]
        .as_u64()
        .unwrap();
    src.stop();

    let fresh = Couch::start(&sh, "cv-onedb-dst", 11240, "cvonedb2@127.0.0.1");
    let creds = |c: &Couch| {
        vec![
            ("COUCHDB_USER", "admin".to_string()),
            ("COUCHDB_PASSWORD", "password".to_string()),
            ("COUCHDB_URL", c.url.clone()),
        ]
    };
    let restore = |c: &Couch, extra: &[&str]| -> Value {
        let mut args = vec![
            "--json",
            "restore",
            id.as_str(),
            "--database",
            db,
            "--to-url",
            c.url.as_str(),
        ];
        args.extend_from_slice(extra);
        serde_json::from_str(&ok(cwd, &args, &creds(c))).unwrap()
    };
    let first = restore(&fresh, &[]);
    assert_eq!(first["created"], true, "{first}");
    assert_eq!(
        first["revisions_written"], 61,
        "55 live documents and 6 conflicts: {first}"
    );
    assert_eq!(
        snapshot(&fresh, db),
        want,
        "documents as the source had them"
    );
    assert_eq!(view(&fresh, db), want_view, "the design document answers");
    assert_eq!(
        fresh.get(&format!("/{}/_security", encode(db))),
        want_security
    );
    assert_eq!(
        fresh.get(&format!("/{}", encode(db)))["doc_del_count"],
        0,
        "no tombstones unless asked"
    );
    assert_eq!(fresh.get(&format!("/{}/_revs_limit", encode(db))), 50);
    ok(
        cwd,
        &[
            "restore",
            &id,
            "--database",
            "parts",
            "--to-url",
            &fresh.url,
        ],
        &creds(&fresh),
    );
    assert_eq!(fresh.get("/parts")["props"]["partitioned"], true);
    assert_eq!(snapshot(&fresh, "parts"), want_parts);

    // A rerun: everything is there, nothing is written.
    let again = restore(&fresh, &[]);
    assert_eq!(
        (
            again["created"].as_bool(),
            again["revisions_written"].as_u64()
        ),
        (Some(false), Some(0)),
        "{again}"
    );
    // Tombstones on request.
    let with = restore(&fresh, &["--as", "with-tombstones", "--include-deleted"]);
    assert_eq!(with["deleted_skipped"], 0, "{with}");
    assert_eq!(
        fresh.get("/with-tombstones")["doc_del_count"].as_u64(),
        Some(deleted_in_src)
    );
    // Credentials never on the command line.
    let url_with_password = fresh.url.replace("http://", "http://admin:password@");
    let (code, _, err) = run(
        cwd,
        &[
            "restore",
            &id,
            "--database",
            db,
            "--to-url",
            &url_with_password,
        ],
        &[],
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("must not hold credentials"), "{err}");
    // A database the backup does not hold.
    let (code, _, err) = run(
        cwd,
        &["restore", &id, "--database", "nope", "--to-url", &fresh.url],
        &creds(&fresh),
    );
    assert_eq!(code, Some(1));
    assert!(
        err.contains("holds no database 'nope'") && err.contains("backup databases"),
        "{err}"
    );
    let (code, _, err) = run(
        cwd,
        &["restore", &id, "--database", "_dbs", "--to-url", &fresh.url],
        &creds(&fresh),
    );
    assert_eq!(code, Some(1));
    assert!(
        err.contains("node-local database") && err.contains("--to DIR"),
        "{err}"
    );

    // Through the daemon: a tenant pushes into its registered instance's CouchDB only.
    let ddir = tempfile::tempdir().unwrap();
    std::fs::copy(
        cwd.join("couchvault-data/keyring.toml"),
        ddir.path().join("keyring.toml"),
    )
    .unwrap();
    let extra = format!(
        "store = \"file://{}\"\n[couchdb.credentials.fresh]\nuser = \"admin\"\npassword = \"password\"\n",
        cwd.join("couchvault-data/store").display()
    );
    let d = common::daemon::Daemon::start(ddir.path(), &extra, "", &[]);
    let (s, v) = d.post(
        "/v1/instances",
        &d.admin,
        &json!({ "name": "onedb", "tenant": "default", "data_dir": fresh.data, "couchdb_url": fresh.url, "couchdb_credentials": "fresh" }),
    );
    assert_eq!(s, 201, "{v}");
    let tenant = d.tenant_token("default");
    let (s, v) = d.post(
        "/v1/restores/database",
        &tenant,
        &json!({ "backup_id": id, "database": db, "to_url": "http://127.0.0.1:1" }),
    );
    assert_eq!(s, 403, "{v}");
    let (s, job) = d.post(
        "/v1/restores/database",
        &tenant,
        &json!({ "backup_id": id, "database": db, "as": "via-daemon" }),
    );
    assert_eq!(s, 202, "{job}");
    let done = d.wait_job(job["id"].as_str().unwrap(), &tenant);
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["result"]["revisions_written"], 61, "{done}");
    assert_eq!(snapshot(&fresh, "via-daemon"), want);
    drop(d);
    fresh.stop();

    // Into a 3-node cluster (q=2, n=3) under another name.
    let nodes = Couch::cluster(&sh, "cvod", 3, 11250);
    let into = restore(&nodes[0], &["--as", "sales-restored"]);
    assert_eq!(into["target"], "sales-restored", "{into}");
    assert_eq!(snapshot(&nodes[2], "sales-restored"), want);
    assert_eq!(view(&nodes[1], "sales-restored"), want_view);
    let out = std::process::Command::new(&sh)
        .args(["stop-cluster", "cvod", "3"])
        .output()
        .unwrap();
    assert!(out.status.success());
}

/// Issue 15, memory flat: a revision with a 192 MiB attachment and a 20 MiB one CouchDB
/// stores gzip-encoded is pushed into another database with the process's peak memory far
/// below the attachment (it is streamed from the shard file, not held), the bytes, lengths,
/// digests and encodings as the source has them.
#[test]
fn a_revision_with_a_large_attachment_restores_in_flat_memory() {
    let Some(sh) = script() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let c = Couch::start(&sh, "cv-bigatt", 11280, "cvbigatt@127.0.0.1");
    c.send(Method::PUT, "/big", &json!({}));
    let mut rev = c.send(Method::PUT, "/big/doc", &json!({ "v": 1 }))["rev"]
        .as_str()
        .unwrap()
        .to_string();
    let blob = attachment("big", "doc", "blob.bin", 192 << 20);
    let text = "line of text that CouchDB compresses when it stores it\n".repeat(20 << 20 >> 6);
    for (name, kind, bytes) in [
        ("blob.bin", "application/octet-stream", blob.as_slice()),
        ("notes.txt", "text/plain", text.as_bytes()),
    ] {
        let (s, v) = c.call(
            c.req(Method::PUT, &format!("/big/doc/{name}?rev={rev}"))
                .header("content-type", kind)
                .timeout(Duration::from_secs(300))
                .body(bytes.to_vec()),
        );
        assert_eq!(s, 201, "{v}");
        rev = v["rev"].as_str().unwrap().to_string();
    }
    drop(blob);
    let id = backup_of(cwd, &c, "bigatt");

    let env: Vec<(&str, String)> = c.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let args = [
        "--json",
        "restore",
        &id,
        "--database",
        "big",
        "--to-url",
        &c.url,
        "--as",
        "copy",
    ];
    let (code, out, err, peak_kib) = common::cli_peak_rss(cwd, &args, &env);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["revisions_written"], 1, "{report}");
    eprintln!("peak RSS of the restore: {peak_kib} KiB");
    assert!(
        peak_kib < 64 << 10,
        "peak RSS {peak_kib} KiB while pushing a 192 MiB attachment"
    );

    let info = |db: &str| {
        let mut doc = c.get(&format!("/{db}/doc?att_encoding_info=true&revs=true"));
        for a in doc["_attachments"].as_object_mut().unwrap().values_mut() {
            a.as_object_mut().unwrap().remove("revpos");
        }
        doc
    };
    let want = info("big");
    assert_eq!(
        want["_attachments"]["notes.txt"]["encoding"], "gzip",
        "{want}"
    );
    assert_eq!(info("copy"), want);
    for name in ["blob.bin", "notes.txt"] {
        let bytes = |db: &str| {
            let r = c
                .req(Method::GET, &format!("/{db}/doc/{name}"))
                .timeout(Duration::from_secs(300))
                .send()
                .unwrap();
            assert_eq!(r.status().as_u16(), 200);
            ring::digest::digest(&ring::digest::SHA256, &r.bytes().unwrap())
                .as_ref()
                .to_vec()
        };
        assert_eq!(bytes("copy"), bytes("big"), "{name}");
    }
    c.stop();
}
