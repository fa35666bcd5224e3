//! The key life cycle through the CLI on the local store: a key ring created from nothing,
//! rotation that rewrites metadata only (every data object byte-identical), a rotation cut
//! off by kill -9 and resumed, retire refused then allowed, chains intact throughout.

mod common;

use std::path::Path;

use common::{cli_with_env, tree, unpack_fixture};

fn cli(cwd: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    cli_with_env(cwd, args, &[])
}

fn ok(cwd: &Path, args: &[&str]) -> String {
    let (code, out, err) = cli(cwd, args);
    assert_eq!(code, Some(0), "{args:?}: {err}");
    out
}

fn json(cwd: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&ok(cwd, &all)).unwrap()
}

/// Every data object (manifests and segments) of the store with its bytes.
fn data_objects(cwd: &Path) -> Vec<(String, Vec<u8>)> {
    let store = cwd.join("couchvault-data/store");
    tree(&store)
        .into_iter()
        .filter(|p| !p.ends_with("backup.json"))
        .map(|p| {
            let bytes = std::fs::read(store.join(&p)).unwrap();
            (p, bytes)
        })
        .collect()
}

fn key_of(cwd: &Path, id: &str) -> String {
    json(cwd, &["backup", "show", id])["encryption"]["key_id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn key_add_creates_a_key_ring_that_does_not_exist_yet() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("etc/couchvault/keyring.toml");
    let p = path.to_str().unwrap();
    let out = ok(
        dir.path(),
        &["--keyring", p, "--tenant", "acme", "key", "add"],
    );
    assert!(
        out.contains("created key ring") && out.contains("losing it"),
        "{out}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let keys = json(dir.path(), &["--keyring", p, "key", "list"]);
    assert_eq!(keys.as_array().unwrap().len(), 1);
    assert_eq!(keys[0]["tenant"], "acme");
    // A second add adds to it.
    ok(
        dir.path(),
        &["--keyring", p, "--tenant", "acme", "key", "add"],
    );
    let keys = json(dir.path(), &["--keyring", p, "key", "list"]);
    assert_eq!(keys.as_array().unwrap().len(), 2);
}

#[test]
fn rotation_rewrites_metadata_only_survives_kill_9_and_retire_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let data = unpack_fixture(cwd);
    let create = |extra: &[&str]| {
        let mut args = vec!["backup", "create", "--instance", "n1", "--data-dir", "data"];
        args.extend_from_slice(extra);
        json(cwd, &args)["backup_id"].as_str().unwrap().to_string()
    };
    let full = create(&[]);
    std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("_dbs.couch"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, &[1u8; 4000]))
        .unwrap();
    let inc = create(&["--incremental"]);
    // More backups than a rewrap writes at once, so a cut-off rotation is half done.
    let mut ids = vec![full.clone(), inc.clone()];
    ids.extend((0..8).map(|_| create(&[])));
    let total = ids.len();
    let old_key = key_of(cwd, &full);
    let before = data_objects(cwd);
    let keys = json(cwd, &["key", "list"]);
    assert_eq!(keys[0]["backups"], total, "{keys}");

    // Cut off after the first rewraps (each writer pauses after its first).
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_couchvault"))
        .args(["key", "rotate"])
        .current_dir(cwd)
        .env("COUCHVAULT_TEST_PAUSE", "after-rewrap:30000")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = child;
    let started = std::time::Instant::now();
    let new_key = loop {
        let keys = json(cwd, &["key", "list"]);
        let moved = keys.as_array().unwrap().iter().find(|k| {
            k["active"] == true
                && k["key_id"] != old_key.as_str()
                && k["backups"].as_u64() > Some(0)
        });
        if let Some(k) = moved {
            // The writers are paused now, each after its one rewrap.
            std::thread::sleep(std::time::Duration::from_millis(500));
            break k["key_id"].as_str().unwrap().to_string();
        }
        assert!(started.elapsed().as_secs() < 30, "no rewrap: {keys}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert_ne!(new_key, old_key);
    // Half rotated: every backup restores, the chain too, each with its own key.
    let on_new = ids.iter().filter(|id| key_of(cwd, id) == new_key).count();
    assert!(
        on_new >= 1 && on_new < total,
        "{on_new} of {total} rewrapped"
    );
    for id in &ids {
        ok(cwd, &["backup", "verify", "--chain", id]);
    }
    let (code, _, err) = cli(cwd, &["key", "retire", &old_key]);
    assert_eq!(code, Some(1), "{err}");
    let left = total - on_new;
    assert!(
        err.contains(&format!("still wraps {left} backup(s)")) && err.contains("key rewrap"),
        "{err}"
    );

    let out = ok(cwd, &["key", "rewrap"]);
    assert!(
        out.contains(&format!("{left} backup(s) rewrapped"))
            && out.contains(&format!("{on_new} already")),
        "{out}"
    );
    for id in &ids {
        assert_eq!(&key_of(cwd, id), &new_key);
    }
    assert_eq!(
        data_objects(cwd),
        before,
        "no data object was read into or rewritten"
    );
    ok(cwd, &["key", "retire", &old_key]);
    let keys = json(cwd, &["key", "list"]);
    assert_eq!(keys.as_array().unwrap().len(), 1, "{keys}");
    assert_eq!(keys[0]["backups"], total);
    // Without the old key, everything restores, the incremental's chain too.
    let target = cwd.join("restored");
    ok(cwd, &["restore", &inc, "--to", target.to_str().unwrap()]);
    assert_eq!(
        common::sha256_file(&target.join("_dbs.couch")),
        common::sha256_file(&data.join("_dbs.couch"))
    );
    let (code, _, err) = cli(cwd, &["key", "retire", &new_key]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("active key"), "{err}");
}

/// A tenant's keys need not be next to each other in the ring: each backup is counted once.
#[test]
fn key_list_counts_each_backup_once_when_tenants_keys_interleave() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    unpack_fixture(cwd);
    ok(
        cwd,
        &["backup", "create", "--instance", "n1", "--data-dir", "data"],
    );
    ok(cwd, &["--tenant", "acme", "key", "add"]);
    ok(cwd, &["key", "add"]);
    let keys = json(cwd, &["key", "list"]);
    let counts = common::key_counts(&keys);
    let want: Vec<(String, u64)> = vec![
        ("default".into(), 1),
        ("acme".into(), 0),
        ("default".into(), 0),
    ];
    assert_eq!(counts, want, "{keys}");
}

/// A backup that started with a key retired before it commits is not committed (it could
/// never be opened), and says to run it again.
#[test]
fn a_key_retired_while_a_backup_runs_is_never_committed_with() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    unpack_fixture(cwd);
    let args = ["backup", "create", "--instance", "n1", "--data-dir", "data"];
    let first = json(cwd, &args)["backup_id"].as_str().unwrap().to_string();
    let old_key = key_of(cwd, &first);
    let running = std::process::Command::new(env!("CARGO_BIN_EXE_couchvault"))
        .args(args)
        .current_dir(cwd)
        .env("COUCHVAULT_TEST_PAUSE", "before-commit:4000")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    ok(cwd, &["key", "rotate"]);
    ok(cwd, &["key", "retire", &old_key]);
    let out = running.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("key {old_key} was retired")) && err.contains("run the backup again"),
        "{err}"
    );
    let listed = json(cwd, &["backup", "list"]);
    let rows = listed.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{listed}");
    assert_eq!(rows[0]["status"], "ok");
    ok(cwd, &["backup", "verify", &first]);
}

/// Keys added at once by several processes are all kept: each change is made to the ring
/// on disk under its lock, not to the copy a process read when it started.
#[test]
fn keys_added_at_once_are_all_kept() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    ok(cwd, &["key", "list"]);
    let children: Vec<_> = (0..8)
        .map(|_| {
            std::process::Command::new(env!("CARGO_BIN_EXE_couchvault"))
                .args(["key", "add"])
                .current_dir(cwd)
                .env("COUCHVAULT_TEST_PAUSE", "key-ring-loaded:300")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let keys = json(cwd, &["key", "list"]);
    assert_eq!(keys.as_array().unwrap().len(), 9, "{keys}");
}
