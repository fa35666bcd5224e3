//! Helpers shared by the integration tests: the CouchDB fixture, a local store, a key ring.
#![allow(dead_code)]

pub mod couch;
pub mod daemon;
pub mod fakecouch;
pub mod faultproxy;
pub mod nats;
pub mod policies;
pub mod receiver;
pub mod swift;
pub mod webdriver;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use couchvault::couchdb::{Source, SourceSpec};
use couchvault::engine::{self, backup::StreamSettings, BackupOptions, Progress};
use couchvault::format::BackupMetadata;
use couchvault::keyring::KeyRing;
use couchvault::store::{LocalStore, Store};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// Unpacks the real CouchDB 3.5 data directory into `dir`; returns `dir/data`.
pub fn unpack_fixture(dir: &Path) -> PathBuf {
    let status = Command::new("tar")
        .arg("xzf")
        .arg(fixtures().join("couchdb-3-datadir.tar.gz"))
        .arg("-C")
        .arg(dir)
        .status()
        .expect("run tar");
    assert!(status.success());
    dir.join("data")
}

/// path (relative to the fixture root, e.g. `data/_dbs.couch`) -> (size, sha256)
pub fn fixture_checksums() -> BTreeMap<String, (u64, String)> {
    let text = std::fs::read_to_string(fixtures().join("couchdb-3-datadir.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                (
                    f["size"].as_u64().unwrap(),
                    f["sha256"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

pub fn sha256_file(p: &Path) -> String {
    let bytes = std::fs::read(p).unwrap();
    hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes))
}

/// Serves `app` on `listener` (non-blocking, 127.0.0.1) from a background thread.
pub fn serve_in_background(listener: std::net::TcpListener, app: axum::Router) {
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(l, app).await.unwrap();
        });
    });
}

/// Runs the `couchvault` binary in `cwd`, free of the caller's couchvault environment.
pub fn couchvault(cwd: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_couchvault"))
        .args(args)
        .current_dir(cwd)
        .env_remove("COUCHVAULT_CONFIG")
        .env_remove("COUCHVAULT_STORE")
        .env_remove("COUCHVAULT_KEYRING")
        .env_remove("RUST_LOG")
        .output()
        .expect("run couchvault")
}

/// Runs the `couchvault` binary in `cwd` with extra environment (and none of the caller's
/// couchvault or CouchDB settings); returns (exit code, stdout, stderr).
pub fn cli_with_env(
    cwd: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Option<i32>, String, String) {
    let out = cli_command(cwd, args, env)
        .output()
        .expect("run couchvault");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `cli_with_env`, also giving the process's peak resident memory in KiB (its `VmHWM`,
/// read every 20 ms while it runs).
pub fn cli_peak_rss(
    cwd: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Option<i32>, String, String, u64) {
    let child = cli_command(cwd, args, env)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run couchvault");
    let status = format!("/proc/{}/status", child.id());
    let waiter = std::thread::spawn(move || child.wait_with_output());
    let mut peak = 0;
    while !waiter.is_finished() {
        let hwm = std::fs::read_to_string(&status).ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        });
        peak = peak.max(hwm.unwrap_or(0));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = waiter.join().unwrap().expect("run couchvault");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        peak,
    )
}

fn cli_command(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_couchvault"));
    cmd.args(args).current_dir(cwd);
    for var in [
        "COUCHVAULT_CONFIG",
        "COUCHDB_URL",
        "COUCHDB_USER",
        "COUCHDB_PASSWORD",
        "COUCHDB_INI_FILES",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs `couchvault` and returns its stdout; it must succeed.
pub fn ok(cwd: &Path, args: &[&str]) -> String {
    let out = couchvault(cwd, args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Restore options: into `target`, nothing forced, no owner change, no flush.
pub fn restore_opts(target: &Path) -> engine::RestoreOptions {
    engine::RestoreOptions {
        target: target.to_path_buf(),
        view_index_target: None,
        config_target: None,
        force: false,
        discard_old: false,
        owner: None,
        sync: false,
    }
}

/// Backs up a data directory for tenant `default`. Synthetic data sets have no real shard
/// map, so the completeness check is off here; it has tests of its own (tests/couchdb.rs).
pub fn backup_to(
    store: &dyn Store,
    keyring: &KeyRing,
    data: &Path,
    instance: &str,
    chunk_size: u32,
) -> couchvault::Result<BackupMetadata> {
    backup_checked(store, keyring, data, instance, chunk_size, true)
}

/// [`backup_to`], choosing whether an incomplete data directory is allowed.
pub fn backup_checked(
    store: &dyn Store,
    keyring: &KeyRing,
    data: &Path,
    instance: &str,
    chunk_size: u32,
    allow_incomplete: bool,
) -> couchvault::Result<BackupMetadata> {
    let stream = StreamSettings {
        chunk_size,
        ..Default::default()
    };
    backup_with(store, keyring, data, instance, stream, allow_incomplete)
}

/// A full backup of `data` for tenant `default` with the given stream settings.
pub fn backup_with(
    store: &dyn Store,
    keyring: &KeyRing,
    data: &Path,
    instance: &str,
    stream: StreamSettings,
    allow_incomplete: bool,
) -> couchvault::Result<BackupMetadata> {
    let source = Source::discover(&SourceSpec {
        data_dir: Some(data.to_path_buf()),
        ..Default::default()
    })?;
    backup_source(
        store,
        keyring,
        &source,
        instance,
        None,
        stream,
        allow_incomplete,
    )
}

/// A full backup of a discovered `source` for tenant `default`.
pub fn backup_source(
    store: &dyn Store,
    keyring: &KeyRing,
    source: &Source,
    instance: &str,
    id: Option<ulid::Ulid>,
    stream: StreamSettings,
    allow_incomplete: bool,
) -> couchvault::Result<BackupMetadata> {
    let opts = BackupOptions {
        id,
        allow_incomplete,
        live: None,
        tenant: "default".into(),
        instance: instance.into(),
        key_id: None,
        tags: BTreeMap::new(),
        stream,
        base: None,
    };
    engine::backup(store, keyring, source, &opts, &Progress::default())
}

/// An incremental (or differential) backup of `data` against `parent`, for tenant `default`.
pub fn backup_against(
    store: &dyn Store,
    keyring: &KeyRing,
    data: &Path,
    parent: &BackupMetadata,
    kind: couchvault::format::Kind,
    check: couchvault::format::PrefixCheck,
) -> couchvault::Result<BackupMetadata> {
    let source = Source::discover(&SourceSpec {
        data_dir: Some(data.to_path_buf()),
        ..Default::default()
    })?;
    let (_, mac) = couchvault::catalog::load_sealed(store, keyring, "default", &parent.backup_id)?;
    let mut ancestors = couchvault::catalog::chain(store, keyring, parent.clone())?;
    ancestors.pop();
    let opts = BackupOptions {
        id: None,
        allow_incomplete: true,
        live: None,
        tenant: "default".into(),
        instance: parent.instance.clone(),
        key_id: None,
        tags: BTreeMap::new(),
        stream: StreamSettings::default(),
        base: Some(couchvault::engine::backup::Base {
            kind,
            check,
            parent: parent.clone(),
            parent_mac: mac,
            ancestors,
        }),
    };
    engine::backup(store, keyring, &source, &opts, &Progress::default())
}

/// A CouchDB-shaped data directory of about `mib` MiB of compressible bytes.
pub fn generate_data(dir: &Path, mib: usize, seed: u64) {
    let mut rng = Rng(seed | 1);
    std::fs::create_dir_all(dir.join("shards/00000000-ffffffff")).unwrap();
    std::fs::write(dir.join("_dbs.couch"), b"shard map").unwrap();
    let per_file = 4 << 20;
    let mut left = mib << 20;
    let mut i = 0;
    while left > 0 {
        let n = left.min(per_file);
        let mut bytes = Vec::with_capacity(n);
        while bytes.len() < n {
            let r = rng.next();
            // Half-random bytes: compressible about 2x, like documents.
            bytes.extend((0..8).map(|k| b'a' + ((r >> (k * 8)) & 0x0f) as u8));
        }
        bytes.truncate(n);
        std::fs::write(
            dir.join(format!("shards/00000000-ffffffff/db{i}.1.couch")),
            bytes,
        )
        .unwrap();
        left -= n;
        i += 1;
    }
}

/// A store, key ring and fixture data directory in one temporary directory.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub store: LocalStore,
    pub keyring: KeyRing,
    pub data: PathBuf,
}

impl Env {
    pub fn new(segment_size: u64) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().join("store"), segment_size);
        let keyring = KeyRing::create(&dir.path().join("keys.toml"), "default").unwrap();
        let data = unpack_fixture(dir.path());
        Env {
            dir,
            store,
            keyring,
            data,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn backup_dir(&self, data: &Path, instance: &str, chunk_size: u32) -> BackupMetadata {
        backup_to(&self.store, &self.keyring, data, instance, chunk_size).unwrap()
    }

    pub fn backup(&self, chunk_size: u32) -> BackupMetadata {
        self.backup_dir(&self.data, "node1", chunk_size)
    }

    /// Reads a whole large object.
    pub fn read_data(&self, meta: &BackupMetadata) -> Vec<u8> {
        let mut v = Vec::new();
        self.store
            .open_large("default", &meta.data.object, 0)
            .unwrap()
            .read_to_end(&mut v)
            .unwrap();
        v
    }

    /// Rewrites a large object (manifest and segments consistent) with `bytes`.
    pub fn write_data(&self, meta: &BackupMetadata, bytes: &[u8]) {
        let mut up = self
            .store
            .create_large("default", &meta.data.object, &[])
            .unwrap();
        up.write(bytes).unwrap();
        up.finish().unwrap();
    }
}

/// Every file under `dir`, relative, sorted.
pub fn tree(dir: &Path) -> Vec<String> {
    fn rec(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd {
            let e = e.unwrap();
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                rec(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    rec(dir, dir, &mut out);
    out.sort();
    out
}

/// A small deterministic PRNG (xorshift64*), so failures can be replayed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The cargo target directory this test binary was built in.
pub fn target_dir() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_couchvault"));
    bin.ancestors()
        .nth(2)
        .expect("the binary is in <target>/<profile>/")
        .to_path_buf()
}

/// A policy component built by scripts/build-policies.sh: it copies them to
/// `<target>/policies/`.
pub fn built_policy(file: &str) -> PathBuf {
    target_dir().join("policies").join(file)
}

/// `key list --json` (or `GET /v1/keys`) as (tenant, backups it wraps), in ring order.
pub fn key_counts(keys: &serde_json::Value) -> Vec<(String, u64)> {
    keys.as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["tenant"].as_str().unwrap().into(),
                k["backups"].as_u64().unwrap(),
            )
        })
        .collect()
}
