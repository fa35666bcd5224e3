//! The `couchvault` binary end to end: first use on the embedded defaults, every command,
//! exit codes, and one clear error line for each kind of bad input.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::{couchvault, fixture_checksums, ok, sha256_file, unpack_fixture};

/// Runs a command that must fail with `code` and exactly one line on stderr containing `expect`.
fn fails(cwd: &Path, args: &[&str], code: i32, expect: &str) {
    let out = couchvault(cwd, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        stderr.contains(expect),
        "{args:?}: expected '{expect}' in: {stderr}"
    );
    if code == 1 {
        assert_eq!(lines.len(), 1, "{args:?}: one error line, got: {stderr}");
        assert!(lines[0].starts_with("error: "), "{stderr}");
    }
}

/// Backs up the unpacked fixture as instance `n`; returns the backup id.
fn backup_fixture(cwd: &Path) -> String {
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
    json(&out)["backup_id"].as_str().unwrap().to_string()
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap()
}

#[test]
fn first_use_backup_list_show_verify_restore_delete() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    unpack_fixture(cwd);

    let out = couchvault(
        cwd,
        &[
            "backup",
            "create",
            "--instance",
            "demo",
            "--data-dir",
            "data",
            "--tag",
            "env=test",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("keyring.toml") && stderr.contains("losing it loses"),
        "{stderr}"
    );
    let keyring = cwd.join("couchvault-data/keyring.toml");
    assert_eq!(
        fs::metadata(&keyring).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let created = json(&ok(
        cwd,
        &[
            "--json",
            "backup",
            "create",
            "--instance",
            "demo",
            "--data-dir",
            "data",
        ],
    ));
    let id = created["backup_id"].as_str().unwrap().to_string();
    assert_eq!(
        created["files"].as_u64().unwrap() as usize,
        fixture_checksums().len()
    );

    let list = json(&ok(
        cwd,
        &["--json", "backup", "list", "--instance", "demo"],
    ));
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[0]["tags"]["env"], "test");
    assert_eq!(list[1]["status"], "ok");
    assert!(ok(cwd, &["backup", "list"]).contains(&id));
    assert_eq!(
        json(&ok(
            cwd,
            &["--json", "backup", "list", "--instance", "other"]
        ))
        .as_array()
        .unwrap()
        .len(),
        0
    );

    let show = json(&ok(cwd, &["--json", "backup", "show", &id]));
    assert_eq!(show["backup_id"], id.as_str());
    assert!(
        !show
            .to_string()
            .contains(&fs::read_to_string(&keyring).unwrap()[100..140]),
        "no key material"
    );
    assert!(ok(cwd, &["backup", "show", &id]).contains("data/_dbs.couch"));
    assert!(ok(cwd, &["backup", "verify", &id]).contains("verified"));

    ok(cwd, &["restore", &id, "--to", "restored"]);
    for (path, (_, sha)) in fixture_checksums() {
        let rel = path.strip_prefix("data/").unwrap();
        assert_eq!(sha256_file(&cwd.join("restored").join(rel)), sha, "{path}");
    }
    fails(cwd, &["restore", &id, "--to", "restored"], 1, "--force");
    let out = ok(cwd, &["restore", &id, "--to", "restored", "--force"]);
    assert!(out.contains("previous contents kept"), "{out}");

    let deleted = json(&ok(cwd, &["--json", "backup", "delete", &id]));
    assert_eq!(deleted[0]["was_committed"], true);
    fails(cwd, &["backup", "delete", &id], 1, "no backup");
    fails(cwd, &["backup", "show", &id], 1, "no backup");
    assert_eq!(
        json(&ok(cwd, &["--json", "backup", "list"]))
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn gc_removes_uncommitted_leftovers_only() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    unpack_fixture(cwd);
    let id = backup_fixture(cwd);
    // An upload that died before its commit: data object, no metadata.
    let store = cwd.join("couchvault-data/store/couchvault-default");
    let committed = store.join(format!("n/{id}"));
    let orphan = store.join("n/01ARZ3NDEKTSV4RRFFQ69G5FAV");
    fs::create_dir_all(&orphan).unwrap();
    fs::copy(committed.join("data"), orphan.join("data")).unwrap();
    let seg_src = cwd.join(format!(
        "couchvault-data/store/couchvault-default_segments/n/{id}/data"
    ));
    let seg_dst = cwd.join(
        "couchvault-data/store/couchvault-default_segments/n/01ARZ3NDEKTSV4RRFFQ69G5FAV/data",
    );
    fs::create_dir_all(&seg_dst).unwrap();
    fs::copy(seg_src.join("00000000"), seg_dst.join("00000000")).unwrap();

    assert_eq!(
        json(&ok(cwd, &["--json", "backup", "list"]))
            .as_array()
            .unwrap()
            .len(),
        1,
        "uncommitted is not listed"
    );
    let report = json(&ok(cwd, &["--json", "gc"]));
    assert_eq!(
        report["kept_young"].as_array().unwrap().len(),
        1,
        "within the default grace period"
    );
    let dry = json(&ok(cwd, &["--json", "gc", "--grace", "0", "--dry-run"]));
    assert_eq!(dry["removed"].as_array().unwrap().len(), 1);
    assert!(orphan.join("data").exists());
    let report = json(&ok(cwd, &["--json", "gc", "--grace", "0"]));
    assert_eq!(report["removed"][0], "default/n/01ARZ3NDEKTSV4RRFFQ69G5FAV");
    assert!(!orphan.exists() && !seg_dst.exists());
    ok(cwd, &["backup", "verify", &id]);
}

#[test]
fn bad_input_gets_one_clear_error_and_the_right_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    unpack_fixture(cwd);
    fs::create_dir_all(cwd.join("empty")).unwrap();

    // A bad first command creates nothing.
    fails(
        cwd,
        &["backup", "create", "--instance", "x", "--data-dir", "nope"],
        1,
        "does not exist",
    );
    assert!(!cwd.join("couchvault-data").exists());
    ok(cwd, &["backup", "list"]);

    // Usage errors: exit 2.
    fails(
        cwd,
        &["backup", "create", "--data-dir", "data"],
        2,
        "--instance",
    );
    fails(
        cwd,
        &["backup", "create", "--instance", "x"],
        2,
        "--couchdb-config",
    );
    fails(
        cwd,
        &[
            "backup",
            "create",
            "--instance",
            "x",
            "--data-dir",
            "data",
            "--tag",
            "novalue",
        ],
        2,
        "K=V",
    );
    fails(
        cwd,
        &[
            "backup",
            "create",
            "--instance",
            "../x",
            "--data-dir",
            "data",
        ],
        2,
        "invalid instance name",
    );
    fails(cwd, &["frobnicate"], 2, "unrecognized subcommand");

    // Failures: exit 1, one line.
    fails(
        cwd,
        &["backup", "create", "--instance", "x", "--data-dir", "nope"],
        1,
        "does not exist",
    );
    fails(
        cwd,
        &["backup", "create", "--instance", "x", "--data-dir", "empty"],
        1,
        "does not look like a CouchDB data directory",
    );
    fails(
        cwd,
        &[
            "backup",
            "create",
            "--instance",
            "x",
            "--couchdb-config",
            "empty",
        ],
        1,
        "no CouchDB ini files",
    );
    fails(
        cwd,
        &["--config", "missing.toml", "backup", "list"],
        1,
        "config file missing.toml does not exist",
    );
    fs::write(cwd.join("garbage.toml"), "this is = = not toml").unwrap();
    fails(
        cwd,
        &["--config", "garbage.toml", "backup", "list"],
        1,
        "is not valid",
    );
    fs::write(
        cwd.join("typo.toml"),
        "couchvault_config = 1\n[backup]\ncompresion_level = 3\n",
    )
    .unwrap();
    fails(
        cwd,
        &["--config", "typo.toml", "backup", "list"],
        1,
        "unknown field `compresion_level`",
    );
    fails(
        cwd,
        &["--store", "ftp://x", "backup", "list"],
        1,
        "unsupported store URL",
    );
    fails(
        cwd,
        &["backup", "show", "01ARZ3NDEKTSV4RRFFQ69G5FAV"],
        1,
        "no backup '01ARZ3NDEKTSV4RRFFQ69G5FAV'",
    );
    fails(
        cwd,
        &["backup", "verify", "not-an-id"],
        1,
        "no backup 'not-an-id'",
    );
    fails(
        cwd,
        &[
            "--tenant",
            "acme",
            "backup",
            "create",
            "--instance",
            "x",
            "--data-dir",
            "data",
        ],
        1,
        "couchvault key add --tenant acme",
    );

    // A group-readable key ring is refused, and nothing is created over it.
    let keyring = cwd.join("couchvault-data/keyring.toml");
    let before = fs::read(&keyring).unwrap();
    fs::set_permissions(&keyring, fs::Permissions::from_mode(0o640)).unwrap();
    fails(cwd, &["backup", "list"], 1, "chmod 600");
    assert_eq!(fs::read(&keyring).unwrap(), before);
    fs::set_permissions(&keyring, fs::Permissions::from_mode(0o600)).unwrap();
    fails(
        cwd,
        &["--keyring", "nokeys.toml", "backup", "list"],
        1,
        "key ring nokeys.toml does not exist",
    );

    // key add makes a second tenant usable.
    ok(cwd, &["--tenant", "acme", "key", "add"]);
    ok(
        cwd,
        &[
            "--tenant",
            "acme",
            "backup",
            "create",
            "--instance",
            "x",
            "--data-dir",
            "data",
        ],
    );
    let keys = json(&ok(cwd, &["--json", "key", "list"]));
    assert_eq!(keys.as_array().unwrap().len(), 2);
    assert_eq!(
        json(&ok(cwd, &["--json", "backup", "list"]))
            .as_array()
            .unwrap()
            .len(),
        0,
        "tenants are separate"
    );
}

/// Mounts a tmpfs (root only; CI runs as root) and unmounts it on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(path: &Path, opts: &str) -> Option<Tmpfs> {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipping tmpfs part: needs root");
            return None;
        }
        fs::create_dir_all(path).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
            .arg(path)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs");
        Some(Tmpfs(path.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn full_disk_on_restore_fails_clearly_and_keeps_the_old_data() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    unpack_fixture(cwd);
    let id = backup_fixture(cwd);

    // Too small for the data: refused before anything is written.
    let Some(_small) = Tmpfs::mount(&cwd.join("small"), "size=64k") else {
        return;
    };
    fails(
        cwd,
        &["restore", &id, "--to", "small/db"],
        1,
        "not enough space",
    );
    assert!(tree_is_empty(&cwd.join("small")));

    // Space enough, but the filesystem fills up mid-restore (out of inodes): the old data stays.
    let _tiny = Tmpfs::mount(&cwd.join("tiny"), "size=8m,nr_inodes=16").unwrap();
    fs::create_dir_all(cwd.join("tiny/db")).unwrap();
    fs::write(cwd.join("tiny/db/old.couch"), b"old").unwrap();
    fails(
        cwd,
        &["restore", &id, "--to", "tiny/db", "--force"],
        1,
        "no space left on device",
    );
    assert_eq!(common::tree(&cwd.join("tiny")), ["db/old.couch"]);
    assert_eq!(fs::read(cwd.join("tiny/db/old.couch")).unwrap(), b"old");
}

fn tree_is_empty(p: &Path) -> bool {
    common::tree(p).is_empty()
}

#[test]
fn restore_sets_the_requested_owner() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipping: chown needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    unpack_fixture(cwd);
    let id = backup_fixture(cwd);
    ok(
        cwd,
        &["restore", &id, "--to", "owned", "--owner", "65534:65533"],
    );
    for f in common::tree(&cwd.join("owned")) {
        let m = fs::metadata(cwd.join("owned").join(&f)).unwrap();
        assert_eq!((m.uid(), m.gid()), (65534, 65533), "{f}");
    }
    let m = fs::metadata(cwd.join("owned/shards")).unwrap();
    assert_eq!((m.uid(), m.gid()), (65534, 65533));
    fails(
        cwd,
        &["restore", &id, "--to", "x", "--owner", "nosuchuser:root"],
        1,
        "no user 'nosuchuser'",
    );
    fails(
        cwd,
        &["restore", &id, "--to", "x", "--owner", "root"],
        1,
        "USER:GROUP",
    );
}

/// Every file under `dir` with its SHA-256.
fn hashes(dir: &Path) -> Vec<(String, String)> {
    common::tree(dir)
        .into_iter()
        .map(|f| {
            let h = sha256_file(&dir.join(&f));
            (f, h)
        })
        .collect()
}

/// The kept-aside directories of `target`, oldest first.
fn kept_aside(target: &Path) -> Vec<std::path::PathBuf> {
    let name = target.file_name().unwrap().to_string_lossy().into_owned();
    let mut v: Vec<_> = fs::read_dir(target.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{name}.couchvault-old-"))
        })
        .collect();
    v.sort();
    v
}

/// Issue 10, finding 4: `restore --force` killed with SIGKILL at every step, then run again
/// (what the interrupted job advises), then `--rollback`: the data it replaced (V1) is never
/// lost, and a rerun after the swap does not move the restored data aside again.
#[test]
fn a_forced_restore_killed_at_every_step_then_rerun_and_rolled_back_never_loses_the_old_data() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    unpack_fixture(cwd);
    let id = backup_fixture(cwd);
    let v2 = hashes(&cwd.join("data"));
    for point in ["restore-staged", "restore-moved-aside", "restore-swapped"] {
        // V1: other data in the target.
        let target = cwd.join(format!("target-{point}"));
        fs::create_dir_all(target.join("shards")).unwrap();
        fs::write(target.join("_dbs.couch"), format!("v1 map {point}")).unwrap();
        fs::write(target.join("shards/a.couch"), b"v1 shard").unwrap();
        let v1 = hashes(&target);
        let to = target.to_str().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_couchvault"))
            .args(["restore", &id, "--to", to, "--force"])
            .current_dir(cwd)
            .env_remove("COUCHVAULT_CONFIG")
            .env("COUCHVAULT_TEST_PAUSE", format!("{point}:60000"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Wait for the pause, then SIGKILL.
        let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            let n = std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
            assert!(n > 0, "{point}: the restore ended before its pause");
            if line.contains("COUCHVAULT_TEST_PAUSE: pausing") {
                break;
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();

        // Run the same restore again: it completes, and V1 is still kept, once.
        let out = ok(cwd, &["restore", &id, "--to", to, "--force"]);
        assert_eq!(hashes(&target), v2, "{point}: the target holds the backup");
        if point == "restore-swapped" {
            assert!(out.contains("already restored"), "{point}: {out}");
        }
        let olds = kept_aside(&target);
        let with_v1: Vec<_> = olds.iter().filter(|o| hashes(o) == v1).collect();
        assert_eq!(
            with_v1.len(),
            1,
            "{point}: V1 kept exactly once in {olds:?}"
        );
        assert_eq!(olds.len(), 1, "{point}: nothing else moved aside: {olds:?}");

        // Rollback puts V1 back.
        ok(cwd, &["restore", "--rollback", "--to", to]);
        assert_eq!(hashes(&target), v1, "{point}: rolled back to V1");
        assert!(kept_aside(&target).is_empty(), "{point}");
    }
}
