//! Backups through a real OpenStack Swift (started by scripts/swift-aio.sh, see .ci/run):
//! segmented round trips, SLO manifests, faults survived, dead Swift, tokens, Keystone,
//! tenants and bad input.

mod common;

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use common::faultproxy::FaultProxy;
use common::swift::{quick_retry, unique, SwiftEnv};
use common::{
    backup_to, fixture_checksums, generate_data, restore_opts, sha256_file, tree, unpack_fixture,
};
use couchvault::catalog;
use couchvault::engine::{self, Progress};
use couchvault::format::BackupMetadata;
use couchvault::keyring::KeyRing;
use couchvault::keystone::Identity;
use couchvault::store::swift::{Credentials, Secret, SwiftStore};
use couchvault::store::Store;

/// Restores `meta` into `target` and checks it equals `source` file by file.
fn restore_and_compare(
    store: &dyn Store,
    keyring: &KeyRing,
    meta: &BackupMetadata,
    source: &std::path::Path,
    target: &std::path::Path,
) {
    engine::restore(
        store,
        keyring,
        std::slice::from_ref(meta),
        &restore_opts(target),
        &Progress::default(),
    )
    .unwrap();
    let files = tree(source);
    assert_eq!(files, tree(target));
    for f in files {
        assert_eq!(
            sha256_file(&source.join(&f)),
            sha256_file(&target.join(&f)),
            "{f}"
        );
    }
}

fn raw_get(env: &SwiftEnv, path: &str) -> reqwest::blocking::Response {
    let (token, url) = env.token();
    reqwest::blocking::Client::new()
        .get(format!("{url}/{path}"))
        .header("X-Auth-Token", token)
        .send()
        .unwrap()
}

#[test]
fn fixture_and_generated_data_round_trip_through_segmented_slo() {
    let Some(env) = SwiftEnv::load() else { return };
    let dir = tempfile::tempdir().unwrap();
    let keyring = KeyRing::create(&dir.path().join("keys.toml"), "default").unwrap();
    let base = unique("rt");
    // Segments of half Swift's max_file_size: the generated set needs many of them.
    let store = env.store(&base, env.max_file_size() / 2);

    let fixture = unpack_fixture(dir.path());
    let meta = backup_to(&store, &keyring, &fixture, "fixture", 4096).unwrap();
    let target = dir.path().join("fixture-restored");
    engine::restore(
        &store,
        &keyring,
        std::slice::from_ref(&meta),
        &restore_opts(&target),
        &Progress::default(),
    )
    .unwrap();
    for (path, (_, sha)) in fixture_checksums() {
        assert_eq!(
            sha256_file(&target.join(path.strip_prefix("data/").unwrap())),
            sha,
            "{path}"
        );
    }

    let data = dir.path().join("gen");
    generate_data(&data, 50, 1);
    let meta = backup_to(&store, &keyring, &data, "gen", 1 << 20).unwrap();
    let segments = meta.data.size.div_ceil(env.max_file_size() as u64 / 2);
    assert!(segments >= 10, "forced segmenting: {segments} segments");
    restore_and_compare(
        &store,
        &keyring,
        &meta,
        &data,
        &dir.path().join("gen-restored"),
    );

    // A valid SLO, visible to an operator with the swift CLI.
    let container = format!("{base}-default");
    let manifest: serde_json::Value = raw_get(
        &env,
        &format!("{container}/{}?multipart-manifest=get", meta.data.object),
    )
    .json()
    .unwrap();
    assert_eq!(manifest.as_array().unwrap().len() as u64, segments);
    let head = raw_get(&env, &format!("{container}/{}", meta.data.object));
    let h = |n: &str| {
        head.headers()
            .get(n)
            .map(|v| v.to_str().unwrap().to_string())
    };
    assert_eq!(h("x-static-large-object").as_deref(), Some("True"));
    assert_eq!(
        h("x-object-meta-couchvault-backup-id").as_deref(),
        Some(meta.backup_id.as_str())
    );
    assert_eq!(
        h("x-object-meta-couchvault-instance").as_deref(),
        Some("gen")
    );
    assert_eq!(
        h("x-object-meta-couchvault-tenant").as_deref(),
        Some("default")
    );
    assert_eq!(h("x-object-meta-couchvault-format").as_deref(), Some("1"));

    // Delete is complete and idempotent.
    catalog::delete(&store, "default", &meta.backup_id).unwrap();
    store.delete("default", &meta.data.object).unwrap();
    assert!(env
        .objects(&format!("{container}_segments"))
        .iter()
        .all(|o| !o.starts_with("gen/")));
}

#[test]
fn nested_manifests_past_1000_segments() {
    let Some(env) = SwiftEnv::load() else { return };
    let dir = tempfile::tempdir().unwrap();
    let keyring = KeyRing::create(&dir.path().join("keys.toml"), "default").unwrap();
    let base = unique("nest");
    let store = env.store(&base, 4096);
    let data = dir.path().join("gen");
    generate_data(&data, 9, 2);
    let meta = backup_to(&store, &keyring, &data, "n", 4096).unwrap();
    assert!(meta.data.size > 1000 * 4096, "{} bytes", meta.data.size);
    let top: serde_json::Value = raw_get(
        &env,
        &format!("{base}-default/{}?multipart-manifest=get", meta.data.object),
    )
    .json()
    .unwrap();
    assert_eq!(top.as_array().unwrap().len(), 2, "two sub-manifests");
    restore_and_compare(&store, &keyring, &meta, &data, &dir.path().join("r"));
}

#[test]
fn ten_backups_in_a_row_survive_injected_503s_resets_and_slowness() {
    let Some(env) = SwiftEnv::load() else { return };
    let dir = tempfile::tempdir().unwrap();
    let keyring = KeyRing::create(&dir.path().join("keys.toml"), "default").unwrap();
    let proxy = FaultProxy::start(env.port(), 10, 42);
    let base = unique("faults");
    let store =
        SwiftStore::new(env.settings(env.credentials(proxy.port), &base, 256 << 10)).unwrap();
    let data = dir.path().join("gen");
    generate_data(&data, 3, 3);
    let mut metas = Vec::new();
    for i in 0..10 {
        let meta = backup_to(&store, &keyring, &data, "faulty", 64 << 10)
            .unwrap_or_else(|e| panic!("backup {i}: {e}"));
        metas.push(meta);
    }
    assert_eq!(
        catalog::list(&store, &keyring, "default", None)
            .unwrap()
            .len(),
        10
    );
    for m in &metas {
        engine::verify(
            &store,
            &keyring,
            std::slice::from_ref(m),
            &Progress::default(),
        )
        .unwrap();
    }
    restore_and_compare(&store, &keyring, &metas[9], &data, &dir.path().join("r"));
    eprintln!("fault proxy: {}", proxy.summary());
    assert!(
        proxy.injected() >= 5,
        "faults were injected: {}",
        proxy.summary()
    );
}

#[test]
fn backup_completes_when_the_object_server_is_killed_mid_upload() {
    let Some(env) = SwiftEnv::load_alone() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let keyring = KeyRing::create(&dir.path().join("keys.toml"), "default").unwrap();
    let base = unique("kill");
    let store = env.store(&base, 512 << 10);
    let data = dir.path().join("gen");
    generate_data(&data, 24, 4);
    let meta = std::thread::scope(|s| {
        let job = s.spawn(|| backup_to(&store, &keyring, &data, "k", 1 << 20));
        let seg = format!("{base}-default_segments");
        let deadline = Instant::now() + Duration::from_secs(60);
        while env.objects(&seg).len() < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        env.outage("object", Duration::from_secs(1));
        job.join().unwrap()
    })
    .expect("the backup completes through retries");
    restore_and_compare(&store, &keyring, &meta, &data, &dir.path().join("r"));
}

#[test]
fn dead_swift_fails_within_the_bound_commits_nothing_and_gc_cleans_up() {
    let Some(env) = SwiftEnv::load() else { return };
    let dir = tempfile::tempdir().unwrap();
    let keyring = KeyRing::create(&dir.path().join("keys.toml"), "default").unwrap();
    let proxy = FaultProxy::start(env.port(), 0, 5);
    let base = unique("dead");
    let mut settings = env.settings(env.credentials(proxy.port), &base, 512 << 10);
    settings.retry = quick_retry(Duration::from_secs(5));
    let store = SwiftStore::new(settings).unwrap();
    let data = dir.path().join("gen");
    generate_data(&data, 24, 6);
    let seg = format!("{base}-default_segments");
    let started = Instant::now();
    let err = std::thread::scope(|s| {
        let job = s.spawn(|| backup_to(&store, &keyring, &data, "d", 1 << 20));
        while env.objects(&seg).len() < 2 && started.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(20));
        }
        proxy.set_down(true);
        job.join().unwrap()
    })
    .expect_err("Swift is down");
    let took = started.elapsed();
    let msg = err.to_string();
    assert!(
        msg.contains("attempts") && msg.contains("check that Swift is up"),
        "{msg}"
    );
    assert!(
        took < Duration::from_secs(45),
        "failed within the bound: {took:?}"
    );

    // Nothing committed; the leftovers are gc's.
    let direct = env.store(&base, 512 << 10);
    assert!(catalog::list(&direct, &keyring, "default", None)
        .unwrap()
        .is_empty());
    let report = catalog::gc(&direct, Duration::ZERO, false).unwrap();
    assert!(
        env.objects(&seg).is_empty(),
        "no orphan segments after gc: {:?}",
        report
    );
    assert!(env.objects(&format!("{base}-default")).is_empty());
}

#[test]
fn expired_tokens_and_a_memcached_restart_are_survived_by_reauth() {
    let Some(env) = SwiftEnv::load_alone() else {
        return;
    };
    let life: u64 = env.get("SWIFT_TOKEN_LIFE").parse().unwrap();
    assert!(
        life <= 30,
        "CI starts Swift with a short token_life (SWIFT_TOKEN_LIFE), got {life}"
    );
    let dir = tempfile::tempdir().unwrap();
    let keyring = KeyRing::create(&dir.path().join("keys.toml"), "default").unwrap();
    let base = unique("tok");
    let store = env.store(&base, 512 << 10);
    let data = dir.path().join("gen");
    generate_data(&data, 4, 7);
    let meta = backup_to(&store, &keyring, &data, "t", 1 << 20).unwrap();
    std::thread::sleep(Duration::from_secs(life + 1));
    engine::verify(
        &store,
        &keyring,
        std::slice::from_ref(&meta),
        &Progress::default(),
    )
    .expect("token expired: re-auth");
    env.outage("memcached", Duration::ZERO);
    restore_and_compare(&store, &keyring, &meta, &data, &dir.path().join("r"));
}

#[test]
fn keystone_v3_round_trip() {
    let Some(env) = SwiftEnv::load() else { return };
    if !env.has("KEYSTONE_AUTH_URL") {
        assert!(
            std::env::var("CI").is_err(),
            "CI starts Swift with --keystone"
        );
        eprintln!("skipping: Swift was started without --keystone");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let keyring = KeyRing::create(&dir.path().join("keys.toml"), "default").unwrap();
    let creds = Credentials::V3(Identity {
        auth_url: env.get("KEYSTONE_AUTH_URL").into(),
        username: env.get("KEYSTONE_USERNAME").into(),
        password: Secret(env.get("KEYSTONE_PASSWORD").into()),
        project_name: env.get("KEYSTONE_PROJECT").into(),
        user_domain_name: "Default".into(),
        project_domain_name: "Default".into(),
        region: Some("RegionOne".into()),
        interface: "public".into(),
    });
    let store = SwiftStore::new(env.settings(creds, &unique("ks"), 512 << 10)).unwrap();
    let data = dir.path().join("gen");
    generate_data(&data, 3, 8);
    let meta = backup_to(&store, &keyring, &data, "ks", 1 << 20).unwrap();
    restore_and_compare(&store, &keyring, &meta, &data, &dir.path().join("r"));
}

fn cli(
    env: &SwiftEnv,
    cwd: &std::path::Path,
    args: &[&str],
    overrides: &[(&str, &str)],
) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_couchvault"));
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("COUCHVAULT_CONFIG")
        .env_remove("OS_AUTH_URL")
        .env("ST_AUTH", env.get("SWIFT_AUTH_URL"))
        .env("ST_USER", env.get("SWIFT_USER"))
        .env("ST_KEY", env.get("SWIFT_KEY"));
    for (k, v) in overrides {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn one_error_line(out: &std::process::Output, expect: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines: Vec<_> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(expect),
        "expected '{expect}': {stderr}"
    );
}

#[test]
fn cli_tenants_are_isolated_and_bad_input_gets_one_clear_error() {
    let Some(env) = SwiftEnv::load() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    unpack_fixture(cwd);
    let url = format!("swift://{}", unique("cli"));
    let run = |args: &[&str]| {
        let out = cli(&env, cwd, args, &[]);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    run(&[
        "--store",
        &url,
        "backup",
        "create",
        "--instance",
        "a",
        "--data-dir",
        "data",
    ]);
    run(&["--tenant", "acme", "key", "add"]);
    for _ in 0..2 {
        run(&[
            "--store",
            &url,
            "--tenant",
            "acme",
            "backup",
            "create",
            "--instance",
            "b",
            "--data-dir",
            "data",
        ]);
    }
    let list = |tenant: &str| -> Vec<serde_json::Value> {
        serde_json::from_str::<serde_json::Value>(&run(&[
            "--store", &url, "--tenant", tenant, "--json", "backup", "list",
        ]))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
    };
    let (mine, theirs) = (list("default"), list("acme"));
    assert_eq!((mine.len(), theirs.len()), (1, 2));
    assert!(
        mine.iter().all(|b| b["instance"] == "a") && theirs.iter().all(|b| b["instance"] == "b")
    );
    let acme_id = theirs[0]["backup_id"].as_str().unwrap();
    one_error_line(
        &cli(
            &env,
            cwd,
            &["--store", &url, "backup", "show", acme_id],
            &[],
        ),
        "no backup",
    );

    // A store with an object prefix: a missing object is named as Swift names it (issue 11).
    let prefixed = format!("{url}/pre");
    let out = run(&[
        "--store",
        &prefixed,
        "--json",
        "backup",
        "create",
        "--instance",
        "p",
        "--data-dir",
        "data",
    ]);
    let id = serde_json::from_str::<serde_json::Value>(&out).unwrap()["backup_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (token, account) = env.token();
    let container = format!("{}-default", url.trim_start_matches("swift://"));
    let object = format!("pre/p/{id}/data");
    let deleted = reqwest::blocking::Client::new()
        .delete(format!(
            "{account}/{container}/{object}?multipart-manifest=delete"
        ))
        .header("X-Auth-Token", token)
        .send()
        .unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());
    one_error_line(
        &cli(
            &env,
            cwd,
            &["--store", &prefixed, "backup", "verify", &id],
            &[],
        ),
        &format!("object {container}/{object} not found"),
    );

    // Bad input.
    one_error_line(
        &cli(
            &env,
            cwd,
            &["--store", &url, "backup", "list"],
            &[("ST_KEY", "wrong")],
        ),
        "refused user",
    );
    let dead = format!("http://127.0.0.1:{}/auth/v1.0", env.port() + 40);
    fs::write(
        cwd.join("fast.toml"),
        "couchvault_config = 1\n[swift]\nmax_retry_time = \"2s\"\n",
    )
    .unwrap();
    let started = Instant::now();
    one_error_line(
        &cli(
            &env,
            cwd,
            &["--config", "fast.toml", "--store", &url, "backup", "list"],
            &[("ST_AUTH", &dead)],
        ),
        "check that Swift is up",
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    let long = format!("swift://{}", "c".repeat(250));
    one_error_line(
        &cli(&env, cwd, &["--store", &long, "backup", "list"], &[]),
        "invalid Swift container name",
    );
    one_error_line(
        &cli(
            &env,
            cwd,
            &["--store", "swift://bad/name/../x", "backup", "list"],
            &[],
        ),
        "invalid object prefix",
    );
    // Segments larger than Swift's max_file_size: Swift answers 413.
    let big = env.max_file_size() * 2;
    fs::write(
        cwd.join("big.toml"),
        format!("couchvault_config = 1\n[backup]\nsegment_size = {big}\n"),
    )
    .unwrap();
    generate_data(&cwd.join("gen"), 12, 9);
    one_error_line(
        &cli(
            &env,
            cwd,
            &[
                "--config",
                "big.toml",
                "--store",
                &url,
                "backup",
                "create",
                "--instance",
                "big",
                "--data-dir",
                "gen",
                "--allow-incomplete",
            ],
            &[],
        ),
        "413",
    );
}

/// Issue 13 on Swift: a chain (full, incremental, differential) restored exactly, verified
/// whole, a parent kept while others depend on it, then deleted with them.
#[test]
fn incremental_chains_round_trip_and_delete_through_swift() {
    use couchvault::format::{Kind, PrefixCheck};
    let Some(env) = SwiftEnv::load() else { return };
    let dir = tempfile::tempdir().unwrap();
    let keyring = KeyRing::create(&dir.path().join("keys.toml"), "default").unwrap();
    let store = env.store(&unique("inc"), env.max_file_size() / 2);
    let data = dir.path().join("gen");
    generate_data(&data, 6, 7);
    let full = backup_to(&store, &keyring, &data, "gen", 1 << 16).unwrap();
    let grow = |name: &str, n: usize| {
        use std::io::Write;
        let path = data.join(format!("shards/00000000-ffffffff/{name}"));
        let mut f = fs::OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(&vec![b'z'; n]).unwrap();
    };
    grow("db0.1.couch", 300_000);
    let inc = common::backup_against(
        &store,
        &keyring,
        &data,
        &full,
        Kind::Incremental,
        PrefixCheck::Exact,
    )
    .unwrap();
    assert_eq!(inc.totals.stored_bytes, 300_000);
    let inc_dir = dir.path().join("at-inc");
    restore_chain(&store, &keyring, &inc, &inc_dir);
    assert_same(&data, &inc_dir);

    grow("db1.1.couch", 1000);
    let diff = common::backup_against(
        &store,
        &keyring,
        &data,
        &full,
        Kind::Differential,
        PrefixCheck::Fast,
    )
    .unwrap();
    assert_eq!(diff.totals.stored_bytes, 300_000 + 1000);
    restore_chain(&store, &keyring, &diff, &dir.path().join("at-diff"));
    assert_same(&data, &dir.path().join("at-diff"));
    let chain = catalog::chain(&store, &keyring, inc.clone()).unwrap();
    engine::verify(&store, &keyring, &chain, &Progress::default()).unwrap();

    let listed = catalog::list(&store, &keyring, "default", None).unwrap();
    let mut deps = catalog::dependents(&listed, &full.backup_id);
    deps.sort();
    let mut want = vec![inc.backup_id.clone(), diff.backup_id.clone()];
    want.sort();
    assert_eq!(deps, want);
    for id in deps.iter().chain([&full.backup_id]) {
        catalog::delete(&store, "default", id).unwrap();
    }
    assert!(catalog::list(&store, &keyring, "default", None)
        .unwrap()
        .is_empty());
}

fn restore_chain(
    store: &dyn Store,
    keyring: &KeyRing,
    m: &BackupMetadata,
    target: &std::path::Path,
) {
    let chain = catalog::chain(store, keyring, m.clone()).unwrap();
    assert_eq!(chain.len(), 2);
    engine::restore(
        store,
        keyring,
        &chain,
        &restore_opts(target),
        &Progress::default(),
    )
    .unwrap();
}

fn assert_same(a: &std::path::Path, b: &std::path::Path) {
    let files = tree(a);
    assert_eq!(files, tree(b));
    for f in files {
        assert_eq!(sha256_file(&a.join(&f)), sha256_file(&b.join(&f)), "{f}");
    }
}

/// Found by CI: tempauth answers a re-auth with its cached token while it has not expired,
/// so a fresh token can be refused a moment later; a backup failed with "refused a fresh
/// token". Two refusals in a row are now survived; three mean the credentials are wrong.
#[test]
fn a_fresh_token_refused_once_more_is_survived_and_wrong_access_still_fails() {
    let Some(env) = SwiftEnv::load() else { return };
    let dir = tempfile::tempdir().unwrap();
    let keyring = KeyRing::create(&dir.path().join("keys.toml"), "default").unwrap();
    let proxy = FaultProxy::start(env.port(), 0, 9);
    let store =
        SwiftStore::new(env.settings(env.credentials(proxy.port), &unique("reauth"), 256 << 10))
            .unwrap();
    let data = dir.path().join("gen");
    generate_data(&data, 1, 4);
    proxy.refuse_tokens(2);
    let meta = backup_to(&store, &keyring, &data, "n", 64 << 10).unwrap();
    engine::verify(
        &store,
        &keyring,
        std::slice::from_ref(&meta),
        &Progress::default(),
    )
    .unwrap();
    proxy.refuse_tokens(100);
    let err = backup_to(&store, &keyring, &data, "n", 64 << 10).unwrap_err();
    assert!(err.to_string().contains("refused 3 fresh tokens"), "{err}");
}
