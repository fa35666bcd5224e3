//! Incremental and differential backups on the real CouchDB 3.5 fixture: what each file is
//! stored as, chains restored exactly at every step, what exact and fast prefix checks see,
//! hostile chains refused.

mod common;

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::{backup_against, restore_opts, sha256_file, tree, Env};
use couchvault::catalog;
use couchvault::engine::{self, Progress};
use couchvault::format::{BackupMetadata, Kind, PrefixCheck, Stored};
use couchvault::store::Store;

const BASIC: &str = "shards/00000000-7fffffff/fixture_basic.1795703450.couch";
const VIEWS: &str = "shards/00000000-7fffffff/fixture_views.1795703450.couch";
const USERS: &str = "_users.couch";
const NODES: &str = "_nodes.couch";

/// Every file under `dir` with its SHA-256.
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    tree(dir)
        .into_iter()
        .map(|f| {
            let h = sha256_file(&dir.join(&f));
            (f, h)
        })
        .collect()
}

fn append(path: &Path, bytes: &[u8]) {
    let mut f = OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

/// What CouchDB's compaction does: a new file (new inode) renamed over the old name.
fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("compact");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn entry<'a>(m: &'a BackupMetadata, rel: &str) -> &'a couchvault::format::FileEntry {
    let path = format!("data/{rel}");
    m.files.iter().find(|f| f.path == path).unwrap()
}

fn chain(env: &Env, m: &BackupMetadata) -> Vec<BackupMetadata> {
    catalog::chain(&env.store, &env.keyring, m.clone()).unwrap()
}

fn restore_into(env: &Env, m: &BackupMetadata, name: &str) -> PathBuf {
    let target = env.path(name);
    engine::restore(
        &env.store,
        &env.keyring,
        &chain(env, m),
        &restore_opts(&target),
        &Progress::default(),
    )
    .unwrap();
    target
}

fn incremental(env: &Env, parent: &BackupMetadata, check: PrefixCheck) -> BackupMetadata {
    backup_against(
        &env.store,
        &env.keyring,
        &env.data,
        parent,
        Kind::Incremental,
        check,
    )
    .unwrap()
}

fn differential(env: &Env, full: &BackupMetadata) -> BackupMetadata {
    backup_against(
        &env.store,
        &env.keyring,
        &env.data,
        full,
        Kind::Differential,
        PrefixCheck::Exact,
    )
    .unwrap()
}

#[test]
fn a_chain_of_appends_compactions_deletions_and_new_databases_restores_each_backup_exactly() {
    let env = Env::new(1 << 20);
    let full = env.backup(1 << 16);
    let at_full = snapshot(&env.data);

    // Writes, one compaction, one deleted database, one new one.
    append(&env.data.join(BASIC), &[7u8; 10_000]);
    replace(&env.data.join(VIEWS), &vec![3u8; 20_000]);
    std::fs::remove_file(env.data.join(USERS)).unwrap();
    std::fs::write(
        env.data.join("shards/00000000-7fffffff/new.1.couch"),
        [9u8; 5000],
    )
    .unwrap();
    let inc1 = incremental(&env, &full, PrefixCheck::Exact);
    let at_inc1 = snapshot(&env.data);

    assert_eq!(inc1.kind, Kind::Incremental);
    assert_eq!(inc1.parent.as_ref().unwrap().backup_id, full.backup_id);
    let basic = entry(&inc1, BASIC);
    let basic_full = entry(&full, BASIC);
    assert_eq!(
        basic.stored,
        Stored::Tail {
            from: basic_full.size,
            sha256: hex::encode(ring::digest::digest(&ring::digest::SHA256, &[7u8; 10_000]))
        }
    );
    assert_eq!(basic.sha256.as_deref(), Some(at_inc1[BASIC].as_str()));
    let views = entry(&inc1, VIEWS);
    assert_eq!(views.stored, Stored::Whole);
    assert!(
        views.reason.as_deref().unwrap().contains("replaced"),
        "{views:?}"
    );
    assert_eq!(entry(&inc1, NODES).stored, Stored::Unchanged);
    assert_eq!(inc1.gone, vec![format!("data/{USERS}")]);
    // Stored: the tail, the replaced file and the new one; not the rest.
    assert_eq!(inc1.totals.stored_bytes, 10_000 + 20_000 + 5000);
    assert!(
        inc1.data.size < full.data.size,
        "{} {}",
        inc1.data.size,
        full.data.size
    );

    append(&env.data.join(BASIC), &[8u8; 3000]);
    append(&env.data.join(VIEWS), &[4u8; 100]);
    let inc2 = incremental(&env, &inc1, PrefixCheck::Fast);
    let at_inc2 = snapshot(&env.data);
    assert_eq!(inc2.prefix_check, Some(PrefixCheck::Fast));
    assert!(matches!(entry(&inc2, BASIC).stored, Stored::Tail { .. }));
    // A fast tail does not read the prefix: no whole-file hash.
    assert_eq!(entry(&inc2, BASIC).sha256, None);
    assert_eq!(inc2.totals.stored_bytes, 3000 + 100);

    // Exact after fast: the prefix is checked against the chain's whole-file hash and the
    // fast tail's own hash, and only the new tail is stored, with the whole-file hash again.
    append(&env.data.join(BASIC), &[9u8; 700]);
    let inc3 = incremental(&env, &inc2, PrefixCheck::Exact);
    let at_inc3 = snapshot(&env.data);
    let e = entry(&inc3, BASIC);
    assert!(matches!(e.stored, Stored::Tail { .. }), "{e:?}");
    assert_eq!(e.sha256.as_deref(), Some(at_inc3[BASIC].as_str()));

    for (m, want, name) in [
        (&full, &at_full, "r-full"),
        (&inc1, &at_inc1, "r-inc1"),
        (&inc2, &at_inc2, "r-inc2"),
        (&inc3, &at_inc3, "r-inc3"),
    ] {
        let target = restore_into(&env, m, name);
        assert_eq!(&snapshot(&target), want, "restore of {name}");
        let report = engine::verify(
            &env.store,
            &env.keyring,
            &chain(&env, m),
            &Progress::default(),
        )
        .unwrap();
        assert_eq!(report.files, m.totals.files);
    }
    // The deleted database does not come back.
    assert!(!env.path("r-inc1").join(USERS).exists());
}

#[test]
fn exact_mode_catches_a_changed_byte_anywhere_and_fast_mode_one_in_the_last_blocks() {
    let env = Env::new(1 << 20);
    let path = env.data.join(BASIC);
    // Longer than the fast check's window, so a change can be outside it.
    append(
        &path,
        &(0..300_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>(),
    );
    let full = env.backup(1 << 16);
    let size = std::fs::metadata(&path).unwrap().len();

    // One byte in the middle of the prefix, in place (same inode), then an append.
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.write_at(b"X", size / 3).unwrap();
    drop(f);
    append(&path, &[1u8; 500]);
    let fast = incremental(&env, &full, PrefixCheck::Fast);
    // Documented blind spot: fast mode checks identity, size and the last blocks only.
    assert!(matches!(entry(&fast, BASIC).stored, Stored::Tail { .. }));
    let exact = incremental(&env, &full, PrefixCheck::Exact);
    let e = entry(&exact, BASIC);
    assert_eq!(e.stored, Stored::Whole);
    assert!(
        e.reason
            .as_deref()
            .unwrap()
            .contains("changed within its first"),
        "{e:?}"
    );
    let target = restore_into(&env, &exact, "r-exact");
    assert_eq!(sha256_file(&target.join(BASIC)), sha256_file(&path));

    // A byte changed in the last blocks before the parent's end: fast mode sees it.
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.write_at(b"Y", size - 10).unwrap();
    drop(f);
    append(&path, &[2u8; 500]);
    let fast = incremental(&env, &exact, PrefixCheck::Fast);
    let e = entry(&fast, BASIC);
    assert_eq!(e.stored, Stored::Whole);
    assert!(e.reason.as_deref().unwrap().contains("fast check"), "{e:?}");
    let target = restore_into(&env, &fast, "r-fast");
    assert_eq!(sha256_file(&target.join(BASIC)), sha256_file(&path));

    // A fast tail, then a byte changed inside it: exact mode checks that tail's own hash.
    let at = std::fs::metadata(&path).unwrap().len();
    append(&path, &[3u8; 500]);
    let fast = incremental(&env, &fast, PrefixCheck::Fast);
    assert!(matches!(entry(&fast, BASIC).stored, Stored::Tail { .. }));
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.write_at(b"Z", at + 10).unwrap();
    drop(f);
    append(&path, &[4u8; 500]);
    let exact = incremental(&env, &fast, PrefixCheck::Exact);
    let e = entry(&exact, BASIC);
    assert_eq!(e.stored, Stored::Whole);
    assert!(
        e.reason.as_deref().unwrap().contains("changed within"),
        "{e:?}"
    );
    let target = restore_into(&env, &exact, "r-exact-after-fast");
    assert_eq!(sha256_file(&target.join(BASIC)), sha256_file(&path));
}

#[test]
fn a_shrunk_file_is_stored_whole_and_a_differential_reads_only_the_full() {
    let env = Env::new(1 << 20);
    let full = env.backup(1 << 16);
    let path = env.data.join(BASIC);
    append(&path, &[5u8; 4000]);
    let diff1 = differential(&env, &full);
    // Shrunk in place (same inode): stored whole, saying why.
    let size = std::fs::metadata(&path).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(size - 8000)
        .unwrap();
    append(&env.data.join(NODES), &[6u8; 100]);
    let diff2 = differential(&env, &full);
    assert_eq!(diff2.parent.as_ref().unwrap().backup_id, full.backup_id);
    let e = entry(&diff2, BASIC);
    assert_eq!(e.stored, Stored::Whole);
    assert!(e.reason.as_deref().unwrap().contains("shrank"), "{e:?}");
    let want = snapshot(&env.data);
    // The other differential is not needed: its data can be gone.
    env.store.delete("default", &diff1.data.object).unwrap();
    let target = restore_into(&env, &diff2, "r-diff2");
    assert_eq!(snapshot(&target), want);
}

#[test]
fn a_missing_parent_is_named_and_a_spliced_or_hostile_chain_is_refused() {
    let env = Env::new(1 << 20);
    let full = env.backup(1 << 16);
    append(&env.data.join(BASIC), &[1u8; 100]);
    let inc = incremental(&env, &full, PrefixCheck::Exact);

    let key = env
        .keyring
        .unlock(env.keyring.active("default").unwrap())
        .unwrap()
        .secret;
    // The parent's metadata sealed anew, its data the same (what a key rotation does): the
    // recorded MAC no longer matches, the data stream does, and the chain holds.
    let mut resealed = full.clone();
    resealed.tags.insert("resealed".into(), "yes".into());
    catalog::commit(&env.store, key, &resealed).unwrap();
    let chain = catalog::chain(&env.store, &env.keyring, inc.clone()).unwrap();
    assert_eq!(
        chain[0].tags.get("resealed").map(String::as_str),
        Some("yes")
    );
    // Another backup's data under the parent's id (sealed with the right key, so it
    // authenticates): a spliced chain.
    let other = env.backup(1 << 16);
    let mut spliced = full.clone();
    spliced.data = other.data.clone();
    spliced.encryption = other.encryption.clone();
    catalog::commit(&env.store, key, &spliced).unwrap();
    let err = catalog::chain(&env.store, &env.keyring, inc.clone()).unwrap_err();
    assert!(err.to_string().contains("spliced"), "{err}");

    // The parent deleted out of band.
    catalog::delete(&env.store, "default", &full.backup_id).unwrap();
    let err = catalog::chain(&env.store, &env.keyring, inc.clone()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&full.backup_id) && msg.contains("missing"),
        "{msg}"
    );

    // Verified alone, an incremental checks its own pieces; restoring it alone is refused.
    engine::verify(
        &env.store,
        &env.keyring,
        std::slice::from_ref(&inc),
        &Progress::default(),
    )
    .unwrap();
    let err = engine::restore(
        &env.store,
        &env.keyring,
        std::slice::from_ref(&inc),
        &restore_opts(&env.path("r")),
        &Progress::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("parent copy"), "{err}");
    assert!(!env.path("r").exists());

    // A hostile tail outside its file is refused before anything is read.
    let mut hostile = inc.clone();
    let f = hostile
        .files
        .iter_mut()
        .find(|f| f.path.ends_with(BASIC))
        .unwrap();
    f.stored = Stored::Tail {
        from: f.size + 1,
        sha256: String::new(),
    };
    let err =
        engine::verify(&env.store, &env.keyring, &[hostile], &Progress::default()).unwrap_err();
    assert!(err.to_string().contains("tail outside the file"), "{err}");
}

fn cli(cwd: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    common::cli_with_env(cwd, args, &[])
}

fn cli_ok(cwd: &Path, args: &[&str]) -> (String, String) {
    let (code, out, err) = cli(cwd, args);
    assert_eq!(code, Some(0), "{args:?}: {err}");
    (out, err)
}

/// `backup create` of instance n1 from `data`, with `extra` flags and environment;
/// returns the JSON summary and what was said on stderr.
fn created_env(cwd: &Path, extra: &[&str], env: &[(&str, &str)]) -> (serde_json::Value, String) {
    let mut args = vec!["--json", "backup", "create", "--instance", "n1"];
    args.extend_from_slice(&["--data-dir", "data"]);
    args.extend_from_slice(extra);
    let (code, out, err) = common::cli_with_env(cwd, &args, env);
    assert_eq!(code, Some(0), "{args:?}: {err}");
    (serde_json::from_str(&out).unwrap(), err)
}

fn created(cwd: &Path, extra: &[&str]) -> (serde_json::Value, String) {
    created_env(cwd, extra, &[])
}

/// `backup create --incremental` of instance n1 in the background, paused at `pause`
/// (`POINT:MS`, see COUCHVAULT_TEST_PAUSE).
fn paused_incremental(cwd: &Path, pause: &str) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_couchvault"))
        .args(["backup", "create", "--instance", "n1", "--data-dir", "data"])
        .arg("--incremental")
        .current_dir(cwd)
        .env("COUCHVAULT_TEST_PAUSE", pause)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn through_the_cli_chains_survive_a_kill_a_lost_parent_and_deletes_keep_them_whole() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let data = common::unpack_fixture(cwd);
    let (full, _) = created(cwd, &[]);
    assert_eq!(full["kind"], "full");
    let full_id = full["backup_id"].as_str().unwrap().to_string();
    append(&data.join(BASIC), &[1u8; 20_000]);
    replace(&data.join(VIEWS), &[2u8; 3000]);
    let (inc1, said) = created(cwd, &["--incremental"]);
    assert!(
        said.contains(&format!("data/{VIEWS} stored whole: replaced")),
        "the reason is in the output: {said}"
    );
    let inc1_id = inc1["backup_id"].as_str().unwrap().to_string();
    assert_eq!(inc1["kind"], "incremental");
    assert_eq!(inc1["parent"], full_id.as_str());
    let at_inc1 = snapshot(&data);

    let (list, _) = cli_ok(cwd, &["backup", "list"]);
    assert!(
        list.contains("KIND") && list.contains("incremental"),
        "{list}"
    );
    let (show, _) = cli_ok(cwd, &["backup", "show", &inc1_id]);
    assert!(
        show.contains("tail from") && show.contains("unchanged"),
        "{show}"
    );
    let (out, _) = cli_ok(cwd, &["backup", "verify", "--chain", &inc1_id]);
    assert!(out.contains("verified"), "{out}");

    // kill -9 in the middle of an incremental: nothing of it is committed, the chain holds.
    append(&data.join(BASIC), &[2u8; 20_000]);
    let mut child = paused_incremental(cwd, "mid-stream:30000");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    child.kill().unwrap();
    child.wait().unwrap();
    let (inc2, _) = created(cwd, &["--incremental", "--fast"]);
    let inc2_id = inc2["backup_id"].as_str().unwrap().to_string();
    assert_eq!(
        inc2["parent"],
        inc1_id.as_str(),
        "the killed run is no parent"
    );
    let at_inc2 = snapshot(&data);
    for (id, want) in [(&inc1_id, &at_inc1), (&inc2_id, &at_inc2)] {
        let target = cwd.join(format!("r-{id}"));
        cli_ok(cwd, &["restore", id, "--to", target.to_str().unwrap()]);
        assert_eq!(&snapshot(&target), want);
    }

    // A parent others depend on is not deleted, unless with them.
    let (code, _, err) = cli(cwd, &["backup", "delete", &full_id]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&inc1_id) && err.contains("--with-dependents"),
        "{err}"
    );

    // The middle of the chain lost out of band: its restore names it, the next backup is full.
    let store = cwd.join("couchvault-data/store/couchvault-default");
    std::fs::remove_file(store.join(format!("n1/{inc1_id}/backup.json"))).unwrap();
    let (code, _, err) = cli(cwd, &["restore", &inc2_id, "--to", "r-lost"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&inc1_id) && err.contains("missing"), "{err}");
    let (next, notes) = created(cwd, &["--incremental"]);
    assert_eq!(next["kind"], "full", "{notes}");
    assert!(
        notes.contains("taking a full backup instead of incremental"),
        "{notes}"
    );
    assert!(notes.contains(&inc1_id), "{notes}");

    let (out, _) = cli_ok(
        cwd,
        &["--json", "backup", "delete", &full_id, "--with-dependents"],
    );
    let deleted: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let ids: Vec<&str> = deleted
        .iter()
        .map(|d| d["backup_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![full_id.as_str()],
        "inc1 was already gone; inc2 hangs off inc1"
    );
}

#[test]
fn the_chain_floors_take_a_full_whatever_is_asked() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let data = common::unpack_fixture(cwd);
    // The embedded defaults create the key ring and store; the config adds a floor.
    cli_ok(cwd, &["backup", "list"]);
    std::fs::write(
        cwd.join("c.toml"),
        "couchvault_config = 1\nkeyring = \"couchvault-data/keyring.toml\"\nstore = \"file://"
            .to_string()
            + cwd.join("couchvault-data/store").to_str().unwrap()
            + "\"\n[floors]\nmax_chain_length = 1\n",
    )
    .unwrap();
    let mut kinds = Vec::new();
    for _ in 0..3 {
        append(&data.join(BASIC), &[3u8; 1000]);
        let (v, err) = created_env(cwd, &["--incremental"], &[("COUCHVAULT_CONFIG", "c.toml")]);
        kinds.push((v["kind"].as_str().unwrap().to_string(), err));
    }
    assert_eq!(kinds[0].0, "full", "no parent yet");
    assert!(kinds[0].1.contains("has no backup yet"), "{}", kinds[0].1);
    assert_eq!(kinds[1].0, "incremental");
    assert_eq!(kinds[2].0, "full");
    assert!(
        kinds[2].1.contains("max_chain_length = 1"),
        "{}",
        kinds[2].1
    );
}

/// A parent deleted while an incremental runs (a delete job does not hold the instance):
/// the incremental is not committed, and says so, rather than standing on nothing.
#[test]
fn a_parent_deleted_while_an_incremental_runs_is_not_built_on() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let data = common::unpack_fixture(cwd);
    let (full, _) = created(cwd, &[]);
    let full_id = full["backup_id"].as_str().unwrap().to_string();
    append(&data.join(BASIC), &[1u8; 1000]);
    let child = paused_incremental(cwd, "before-commit:3000");
    std::thread::sleep(std::time::Duration::from_millis(1000));
    cli_ok(cwd, &["backup", "delete", &full_id]);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&full_id) && err.contains("deleted while"),
        "{err}"
    );
    let (list, _) = cli_ok(cwd, &["--json", "backup", "list"]);
    assert_eq!(list.trim(), "[]");
    // Nothing of it is left behind either.
    let segments = cwd.join("couchvault-data/store/couchvault-default_segments");
    assert!(
        common::tree(&segments).is_empty(),
        "{:?}",
        common::tree(&segments)
    );
}

/// A parent whose metadata is there but whose data is not (removed out of band) is no
/// parent: the next backup is full, saying why.
#[test]
fn a_parent_without_its_data_makes_the_next_backup_full() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let data = common::unpack_fixture(cwd);
    let (full, _) = created(cwd, &[]);
    let full_id = full["backup_id"].as_str().unwrap().to_string();
    let store = cwd.join("couchvault-data/store/couchvault-default");
    std::fs::remove_file(store.join(format!("n1/{full_id}/data"))).unwrap();
    append(&data.join(BASIC), &[1u8; 1000]);
    let (next, notes) = created(cwd, &["--incremental"]);
    assert_eq!(next["kind"], "full", "{notes}");
    assert!(
        notes.contains(&format!("the data of backup {full_id} is missing")),
        "{notes}"
    );
}
