//! CouchDB-aware checks on the real CouchDB 3.5 fixture: a backup refuses a data directory
//! whose shard files or shard map are missing (naming what), unless told to record the gap.

mod common;

use std::path::Path;

use common::{backup_checked, cli_with_env as run, couchvault, ok, unpack_fixture, Env};

fn backup(
    env: &Env,
    data: &Path,
    allow_incomplete: bool,
) -> couchvault::Result<couchvault::format::BackupMetadata> {
    backup_checked(
        &env.store,
        &env.keyring,
        data,
        "node1",
        1 << 20,
        allow_incomplete,
    )
}

const BASIC_80: &str = "shards/80000000-ffffffff/fixture_basic.1795703450.couch";

#[test]
fn the_complete_fixture_backs_up() {
    let env = Env::new(1 << 20);
    let meta = backup(&env, &env.data, false).expect("complete");
    assert!(meta.incomplete.is_empty());
}

#[test]
fn a_missing_shard_file_is_refused_by_name() {
    let env = Env::new(1 << 20);
    std::fs::remove_file(env.data.join(BASIC_80)).unwrap();
    let err = backup(&env, &env.data, false)
        .expect_err("refused")
        .to_string();
    assert!(err.contains("incomplete"), "{err}");
    assert!(
        err.contains(&format!("database 'fixture_basic': {BASIC_80}")),
        "{err}"
    );
    assert!(err.contains("--allow-incomplete"), "{err}");
    // A name with '/' in it becomes directories; its shards are checked too.
    std::fs::remove_file(
        env.data
            .join("shards/00000000-7fffffff/fixture/nested+name$(x).1795703453.couch"),
    )
    .unwrap();
    let err = backup(&env, &env.data, false)
        .expect_err("refused")
        .to_string();
    assert!(err.contains("database 'fixture/nested+name$(x)'"), "{err}");
    // Nothing was committed.
    assert!(
        couchvault::catalog::list(&env.store, &env.keyring, "default", None)
            .unwrap()
            .is_empty()
    );

    // With --allow-incomplete: backed up, the gaps recorded in the metadata.
    let meta = backup(&env, &env.data, true).expect("allowed");
    assert_eq!(meta.incomplete.len(), 2, "{:?}", meta.incomplete);
    assert!(meta.incomplete.iter().any(|g| g.ends_with(BASIC_80)));
}

#[test]
fn a_missing_shard_map_is_refused() {
    let env = Env::new(1 << 20);
    std::fs::remove_file(env.data.join("_dbs.couch")).unwrap();
    let err = backup(&env, &env.data, false)
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("_dbs.couch (the shard map) is missing"),
        "{err}"
    );
    // A damaged shard map cannot vouch for anything either.
    std::fs::write(env.data.join("_dbs.couch"), vec![7u8; 9000]).unwrap();
    let err = backup(&env, &env.data, false)
        .expect_err("refused")
        .to_string();
    assert!(err.contains("cannot read the shard map"), "{err}");
    let meta = backup(&env, &env.data, true).expect("allowed");
    assert!(meta.incomplete[0].contains("cannot read the shard map"));
}

#[test]
fn the_cli_names_what_is_missing_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let data = unpack_fixture(cwd);
    std::fs::remove_file(data.join(BASIC_80)).unwrap();
    let out = couchvault(
        cwd,
        &["backup", "create", "--instance", "n", "--data-dir", "data"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains(BASIC_80), "{stderr}");
    let out = ok(
        cwd,
        &[
            "backup",
            "create",
            "--instance",
            "n",
            "--data-dir",
            "data",
            "--allow-incomplete",
        ],
    );
    assert!(
        out.contains("warning: backed up with --allow-incomplete"),
        "{out}"
    );
    assert!(out.contains(BASIC_80), "{out}");
}

/// The fixture as a node: `data/` plus `etc/` with vm.args (node couchdb@127.0.0.1) and a
/// local.ini naming the data dir. Backs it up; returns the backup id.
fn backup_node_fixture(cwd: &Path, env: &[(&str, &str)]) -> String {
    let data = unpack_fixture(cwd);
    std::fs::create_dir_all(cwd.join("etc")).unwrap();
    std::fs::write(
        cwd.join("etc/vm.args"),
        "-name couchdb@127.0.0.1\n-setcookie monster\n",
    )
    .unwrap();
    std::fs::write(
        cwd.join("etc/local.ini"),
        format!("[couchdb]\ndatabase_dir = {}\n", data.display()),
    )
    .unwrap();
    let (code, out, err) = run(
        cwd,
        &[
            "--json",
            "backup",
            "create",
            "--instance",
            "n",
            "--couchdb-config",
            "etc",
        ],
        env,
    );
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["node_name"], "couchdb@127.0.0.1");
    v["backup_id"].as_str().unwrap().to_string()
}

#[test]
fn a_restore_under_another_node_name_is_refused_with_both_names() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let id = backup_node_fixture(cwd, &[]);
    let (code, _, err) = run(
        cwd,
        &["restore", &id, "--to", "t1", "--node-name", "couchdb@other"],
        &[],
    );
    assert_eq!(code, Some(1), "{err}");
    for needle in [
        "'couchdb@127.0.0.1'",
        "'couchdb@other'",
        "--rename-node",
        "vm.args",
        "No DB shards could be opened",
    ] {
        assert!(err.contains(needle), "expected {needle} in: {err}");
    }
    assert!(!cwd.join("t1").exists(), "nothing restored");
    // The target node named by its own vm.args.
    std::fs::create_dir_all(cwd.join("other-etc")).unwrap();
    std::fs::write(cwd.join("other-etc/vm.args"), "-name couchdb@other\n").unwrap();
    let (code, _, err) = run(
        cwd,
        &[
            "restore",
            &id,
            "--to",
            "t1",
            "--couchdb-config",
            "other-etc",
        ],
        &[],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("'couchdb@other'"), "{err}");
    // --rename-node without a CouchDB to talk to: refused before anything is written.
    let (code, _, err) = run(
        cwd,
        &[
            "restore",
            &id,
            "--to",
            "t1",
            "--node-name",
            "couchdb@other",
            "--rename-node",
        ],
        &[],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("COUCHDB_URL"), "{err}");
    // The same node name restores.
    let (code, _, err) = run(
        cwd,
        &[
            "restore",
            &id,
            "--to",
            "t1",
            "--node-name",
            "couchdb@127.0.0.1",
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn rename_node_rewrites_every_shard_map_exactly_and_leaks_no_credentials() {
    use common::fakecouch::{serve, Couch};
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let id = backup_node_fixture(cwd, &[]);
    let couch = std::sync::Arc::new(Couch::from_fixture("couchdb@other"));
    let before = couch.maps.lock().unwrap().clone();
    let url = serve(couch.clone());
    let secret = "Sup3r-S3cret-pw";
    // The hooks record what a process listing and their environment show.
    std::fs::write(
        cwd.join("config.toml"),
        format!(
            "couchvault_config = 1\n[restore]\nstop_command = \"ps -eo args > {0}/ps.txt; env > {0}/env.txt\"\nstart_command = \"ps -eo args >> {0}/ps.txt\"\nstart_timeout = \"10s\"\n",
            cwd.display()
        ),
    )
    .unwrap();
    let env = [
        ("COUCHDB_URL", url.as_str()),
        ("COUCHDB_USER", "admin"),
        ("COUCHDB_PASSWORD", secret),
    ];
    let (code, out, err) = run(
        cwd,
        &[
            "-vv",
            "--config",
            "config.toml",
            "restore",
            &id,
            "--to",
            "t2",
            "--node-name",
            "couchdb@other",
            "--rename-node",
        ],
        &env,
    );
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        out.contains("rewrote the shard maps of 8 database(s)"),
        "{out}"
    );
    // Every database answers afterwards: the post-restore table.
    assert_eq!(
        out.lines().filter(|l| l.ends_with(" ok")).count(),
        8,
        "{out}"
    );

    // The rewrite requests, exactly: the node replaced in by_node and by_range, nothing else.
    let puts = couch.puts.lock().unwrap().clone();
    assert_eq!(puts.len(), 8);
    for (db, doc) in &puts {
        let mut want = before[db].clone();
        let ranges = want["by_node"]["couchdb@127.0.0.1"].take();
        want["by_node"] = serde_json::json!({ "couchdb@other": ranges });
        for nodes in want["by_range"].as_object_mut().unwrap().values_mut() {
            *nodes = serde_json::json!(["couchdb@other"]);
        }
        assert_eq!(doc, &want, "{db}");
    }
    assert!(puts.iter().any(|(db, _)| db == "fixture/nested+name$(x)"));

    // Credentials reached CouchDB (basic auth) and nowhere else.
    assert!(!couch.auth_seen.lock().unwrap().is_empty());
    for (what, text) in [
        ("stdout", out.clone()),
        ("stderr (-vv logs)", err.clone()),
        (
            "ps in the hooks",
            std::fs::read_to_string(cwd.join("ps.txt")).unwrap(),
        ),
        (
            "the hooks' environment",
            std::fs::read_to_string(cwd.join("env.txt")).unwrap(),
        ),
    ] {
        assert!(!text.contains(secret), "the password leaked into {what}");
    }
    // A CouchDB URL with the password inside: not in errors or the metadata either.
    let bad = format!("http://admin:{secret}@127.0.0.1:9");
    let (code, out, err) = run(
        cwd,
        &[
            "-vv",
            "--json",
            "backup",
            "create",
            "--instance",
            "n",
            "--couchdb-config",
            "etc",
        ],
        &[("COUCHDB_URL", bad.as_str())],
    );
    assert_eq!(code, Some(0), "an unreachable CouchDB is not fatal: {err}");
    assert!(
        !out.contains(secret) && !err.contains(secret),
        "{out}\n{err}"
    );
    assert!(err.contains("CouchDB did not answer"), "{err}");
    let backup: serde_json::Value = serde_json::from_str(&out).unwrap();
    let (_, shown, _) = run(
        cwd,
        &[
            "--json",
            "backup",
            "show",
            backup["backup_id"].as_str().unwrap(),
        ],
        &[],
    );
    assert!(!shown.contains(secret), "{shown}");
    let meta: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(meta["couchdb"]["reachable"], false, "{shown}");
}

/// A real CouchDB-compatible server: PouchDB Server (npm `pouchdb-server`, installed by
/// .ci/run), in memory on a free loopback port.
struct Pouch {
    child: std::process::Child,
    url: String,
}

impl Drop for Pouch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pouchdb_server(dir: &Path) -> Option<Pouch> {
    let found = std::process::Command::new("sh")
        .args(["-c", "command -v pouchdb-server"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("CI").is_err(),
            "CI installs pouchdb-server (.ci/run)"
        );
        eprintln!("skipping: pouchdb-server is not installed (npm install -g pouchdb-server)");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new("pouchdb-server")
        .args([
            "--in-memory",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start pouchdb-server");
    let pouch = Pouch {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let http = reqwest::blocking::Client::new();
    let started = std::time::Instant::now();
    while http.get(&pouch.url).send().is_err() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "pouchdb-server did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    Some(pouch)
}

/// Real CouchDB 3.5 covers live stats, the post-restore check and rollback in
/// tests/realcouch.rs. This one stays because PouchDB Server answers without `/_up`: it is
/// what exercises the post-restore wait falling back to `/`, and a CouchDB-compatible
/// server that is not CouchDB.
#[test]
fn live_stats_and_the_post_restore_check_against_a_real_server() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let Some(pouch) = pouchdb_server(cwd) else {
        return;
    };
    let http = reqwest::blocking::Client::new();
    let url = |p: &str| format!("{}{p}", pouch.url);
    let mut beta_docs = Vec::new();
    for (db, n) in [("alpha", 3), ("beta", 2)] {
        assert!(http
            .put(url(&format!("/{db}")))
            .send()
            .unwrap()
            .status()
            .is_success());
        for i in 0..n {
            let r: serde_json::Value = http
                .post(url(&format!("/{db}")))
                .json(&serde_json::json!({ "i": i }))
                .send()
                .unwrap()
                .json()
                .unwrap();
            if db == "beta" {
                beta_docs.push((
                    r["id"].as_str().unwrap().to_string(),
                    r["rev"].as_str().unwrap().to_string(),
                ));
            }
        }
    }
    unpack_fixture(cwd);
    let env = [("COUCHDB_URL", pouch.url.as_str())];
    let (code, out, err) = run(
        cwd,
        &[
            "--json",
            "backup",
            "create",
            "--instance",
            "n",
            "--data-dir",
            "data",
        ],
        &env,
    );
    assert_eq!(code, Some(0), "{err}");
    let id = serde_json::from_str::<serde_json::Value>(&out).unwrap()["backup_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, shown, _) = run(cwd, &["--json", "backup", "show", &id], &[]);
    let meta: serde_json::Value = serde_json::from_str(&shown).unwrap();
    let live = &meta["couchdb"];
    assert_eq!(live["reachable"], true, "{live}");
    assert_eq!(live["version"], "4.2.0");
    assert_eq!(live["databases"]["alpha"]["doc_count"], 3, "{live}");
    assert_eq!(live["databases"]["beta"]["doc_count"], 2, "{live}");
    assert!(
        live["databases"]["beta"]["update_seq"].is_number(),
        "{live}"
    );
    assert_eq!(
        live["databases"]["alpha"]["security"],
        serde_json::json!({})
    );

    // The server is already running: the start hook is a no-op, the check is real.
    std::fs::write(
        cwd.join("config.toml"),
        "couchvault_config = 1\n[restore]\nstart_command = \"true\"\nstart_timeout = \"20s\"\n",
    )
    .unwrap();
    let restore = |args: &[&str]| {
        let mut a = vec!["--config", "config.toml", "restore"];
        a.extend_from_slice(args);
        run(cwd, &a, &env)
    };
    let (code, out, err) = restore(&[&id, "--to", "r1"]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("alpha") && l.ends_with("ok")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("beta") && l.ends_with("ok")),
        "{out}"
    );

    // Fewer documents than recorded: the restore fails, says which, and how to roll back.
    let (doc, rev) = &beta_docs[0];
    assert!(http
        .delete(url(&format!("/beta/{doc}?rev={rev}")))
        .send()
        .unwrap()
        .status()
        .is_success());
    let (code, out, err) = restore(&[&id, "--to", "r1", "--force"]);
    assert_eq!(code, Some(1), "{out}\n{err}");
    assert!(
        err.contains("beta: 1 documents, fewer than the 2 recorded"),
        "{err}"
    );
    assert!(err.contains("couchvault restore --rollback --to"), "{err}");
    assert!(out.contains("FAILED"), "{out}");
    let (code, out, err) = restore(&["--rollback", "--to", "r1"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("rolled back"), "{out}");
    assert!(cwd.join("r1/_dbs.couch").exists());

    // A database gone: named, with CouchDB's answer.
    assert!(http
        .delete(url("/alpha"))
        .send()
        .unwrap()
        .status()
        .is_success());
    let (code, _, err) = restore(&[&id, "--to", "r3"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("alpha: CouchDB at") && err.contains("404"),
        "{err}"
    );
    assert!(
        err.contains("there was no previous data to go back to"),
        "{err}"
    );
}

#[test]
fn restored_files_belong_to_the_owner_of_the_existing_data_dir() {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipping: chown needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    unpack_fixture(cwd);
    let out = ok(
        cwd,
        &[
            "--json",
            "backup",
            "create",
            "--instance",
            "n",
            "--data-dir",
            "data",
        ],
    );
    let id = serde_json::from_str::<serde_json::Value>(&out).unwrap()["backup_id"]
        .as_str()
        .unwrap()
        .to_string();
    let target = cwd.join("live");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("old.couch"), b"old").unwrap();
    nix::unistd::chown(&target, Some(4321.into()), Some(4322.into())).unwrap();
    ok(cwd, &["restore", &id, "--to", "live", "--force"]);
    for f in [
        "_dbs.couch",
        "shards/00000000-ffffffff/fixture_q1.1795703453.couch",
    ] {
        let m = std::fs::metadata(target.join(f)).unwrap();
        assert_eq!((m.uid(), m.gid()), (4321, 4322), "{f}");
    }
}

/// Issue 11: a data directory backed up alone (no vm.args, no CouchDB) still records its
/// node, from the shard maps in `_dbs.couch`, so a restore under another name is refused.
#[test]
fn a_data_dir_backup_records_its_node_from_the_shard_map() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    unpack_fixture(cwd);
    let (code, out, err) = run(
        cwd,
        &[
            "--json",
            "backup",
            "create",
            "--instance",
            "n",
            "--data-dir",
            "data",
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let node = fixture_node();
    assert_eq!(v["node_name"], node.as_str(), "{v}");
    let id = v["backup_id"].as_str().unwrap();
    let (_, shown, _) = run(cwd, &["--json", "backup", "show", id], &[]);
    let meta: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(meta["source"]["shard_map_nodes"], serde_json::json!([node]));
    let (code, _, err) = run(
        cwd,
        &[
            "restore",
            id,
            "--to",
            "t",
            "--node-name",
            "couchdb@other.example",
        ],
        &[],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("'{node}'")) && err.contains("'couchdb@other.example'"),
        "{err}"
    );
    assert!(!cwd.join("t").exists());
}

/// Issue 11: `--rename-node` without a start hook would swap the data in and then wait for a
/// CouchDB nobody starts: refused before anything is downloaded, saying what it needs.
#[test]
fn rename_node_without_a_start_hook_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let id = backup_node_fixture(cwd, &[]);
    let started = std::time::Instant::now();
    let (code, _, err) = run(
        cwd,
        &[
            "restore",
            &id,
            "--to",
            "t",
            "--node-name",
            "couchdb@other",
            "--rename-node",
        ],
        &[("COUCHDB_URL", "http://127.0.0.1:9")],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("start_command"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert!(!cwd.join("t").exists(), "nothing restored");
}

/// The node name the fixture was made on (its description).
fn fixture_node() -> String {
    let text = std::fs::read_to_string(common::fixtures().join("couchdb-3-datadir.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["node_name"].as_str().unwrap().to_string()
}
