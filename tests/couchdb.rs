//! CouchDB-aware checks on the real CouchDB 3.5 fixture: a backup refuses a data directory
//! whose shard files or shard map are missing (naming what), unless told to record the gap.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{couchvault, ok, unpack_fixture, Env};
use couchvault::couchdb::{Source, SourceSpec};
use couchvault::engine::{self, backup::StreamSettings, BackupOptions, Progress};

fn backup(
    env: &Env,
    data: &Path,
    allow_incomplete: bool,
) -> couchvault::Result<couchvault::format::BackupMetadata> {
    let source = Source::discover(&SourceSpec {
        data_dir: Some(data.to_path_buf()),
        ..Default::default()
    })?;
    let opts = BackupOptions {
        id: None,
        allow_incomplete,
        live: None,
        tenant: "default".into(),
        instance: "node1".into(),
        key_id: None,
        tags: BTreeMap::new(),
        stream: StreamSettings::default(),
    };
    engine::backup(
        &env.store,
        &env.keyring,
        &source,
        &opts,
        &Progress::default(),
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
