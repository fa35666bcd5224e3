//! B9: key rotation of N backups (default 1,000) on a real Swift: the time per backup,
//! beside the least any rotation must do (read and authenticate every backup's metadata,
//! timed in the same process), and the proof that no data object was read or written:
//! every store call counted by kind of object, and every data manifest's and segment's ETag
//! and Last-Modified compared before and after, straight from Swift.
//!
//!   ST_AUTH=… ST_USER=… ST_KEY=… cargo run --release --example rotation_bench -- [N]
//!
//! bench/rotation.sh starts a Swift for it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{bail, Context as _};
use couchvault::catalog;
use couchvault::config::Config;
use couchvault::couchdb::{Source, SourceSpec};
use couchvault::engine::{self, BackupOptions, Progress};
use couchvault::keyring::KeyRing;
use couchvault::ops::Vault;
use couchvault::store::{LargeUpload, LocalStore, ObjectInfo, Store, StoreError};

/// Store calls, by whether they touch a backup's metadata or its data.
#[derive(Default)]
struct Counts {
    metadata_reads: AtomicU64,
    metadata_writes: AtomicU64,
    data_reads: AtomicU64,
    data_writes: AtomicU64,
    listings: AtomicU64,
}

struct Counting {
    inner: Box<dyn Store>,
    counts: std::sync::Arc<Counts>,
}

fn is_metadata(name: &str) -> bool {
    name.ends_with("/backup.json")
}

impl Store for Counting {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn tenants(&self) -> Result<Vec<String>, StoreError> {
        self.inner.tenants()
    }
    fn put(&self, tenant: &str, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        match is_metadata(name) {
            true => &self.counts.metadata_writes,
            false => &self.counts.data_writes,
        }
        .fetch_add(1, Ordering::Relaxed);
        self.inner.put(tenant, name, bytes)
    }
    fn get(&self, tenant: &str, name: &str) -> Result<Vec<u8>, StoreError> {
        match is_metadata(name) {
            true => &self.counts.metadata_reads,
            false => &self.counts.data_reads,
        }
        .fetch_add(1, Ordering::Relaxed);
        self.inner.get(tenant, name)
    }
    fn create_large(
        &self,
        tenant: &str,
        name: &str,
        labels: &[(&str, &str)],
    ) -> Result<Box<dyn LargeUpload>, StoreError> {
        self.counts.data_writes.fetch_add(1, Ordering::Relaxed);
        self.inner.create_large(tenant, name, labels)
    }
    fn open_large(
        &self,
        tenant: &str,
        name: &str,
        offset: u64,
    ) -> Result<Box<dyn Read + Send>, StoreError> {
        self.counts.data_reads.fetch_add(1, Ordering::Relaxed);
        self.inner.open_large(tenant, name, offset)
    }
    fn list(&self, tenant: &str, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        self.counts.listings.fetch_add(1, Ordering::Relaxed);
        self.inner.list(tenant, prefix)
    }
    fn list_segmented(&self, tenant: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        self.counts.listings.fetch_add(1, Ordering::Relaxed);
        self.inner.list_segmented(tenant)
    }
    fn delete(&self, tenant: &str, name: &str) -> Result<(), StoreError> {
        self.counts.data_writes.fetch_add(1, Ordering::Relaxed);
        self.inner.delete(tenant, name)
    }
}

/// Every object of a container as Swift lists it: name -> (ETag, Last-Modified).
fn swift_listing(container: &str) -> anyhow::Result<BTreeMap<String, (String, String)>> {
    let env = |k: &str| std::env::var(k).with_context(|| format!("{k} is not set"));
    let http = reqwest::blocking::Client::new();
    let auth = http
        .get(env("ST_AUTH")?)
        .header("X-Auth-User", env("ST_USER")?)
        .header("X-Auth-Key", env("ST_KEY")?)
        .send()?;
    let header = |n: &str| -> anyhow::Result<String> {
        Ok(auth
            .headers()
            .get(n)
            .with_context(|| format!("no {n} from Swift auth"))?
            .to_str()?
            .to_string())
    };
    let (token, url) = (header("x-auth-token")?, header("x-storage-url")?);
    let mut out = BTreeMap::new();
    let mut marker = String::new();
    loop {
        let rows: Vec<serde_json::Value> = http
            .get(format!("{url}/{container}"))
            .query(&[("format", "json"), ("marker", marker.as_str())])
            .header("X-Auth-Token", &token)
            .send()?
            .error_for_status()?
            .json()?;
        let Some(last) = rows.last() else { break };
        marker = last["name"].as_str().unwrap_or_default().to_string();
        for o in &rows {
            let s = |k: &str| o[k].as_str().unwrap_or_default().to_string();
            out.insert(
                format!("{container}/{}", s("name")),
                (s("hash"), s("last_modified")),
            );
        }
    }
    Ok(out)
}

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1000);
    let dir = tempfile_dir()?;
    let data = dir.join("data");
    std::fs::create_dir_all(data.join("shards/00000000-ffffffff"))?;
    std::fs::write(data.join("_dbs.couch"), vec![7u8; 8 << 10])?;
    std::fs::write(
        data.join("shards/00000000-ffffffff/db.1.couch"),
        vec![9u8; 32 << 10],
    )?;
    let base = format!("rotbench{}", std::process::id());
    let mut config = Config::embedded();
    config.store = Some(format!("swift://{base}"));
    config.keyring = Some(dir.join("keyring.toml"));
    config.state_dir = Some(dir.join("state"));
    KeyRing::create(&dir.join("keyring.toml"), "default")?;
    let mut vault = Vault::open(config, None, None)?;
    let counts = std::sync::Arc::new(Counts::default());
    let swift = std::mem::replace(
        &mut vault.store,
        Box::new(LocalStore::new(dir.join("unused"), 1 << 20)),
    );
    vault.store = Box::new(Counting {
        inner: swift,
        counts: counts.clone(),
    });
    let mut keyring = vault.keyring()?;

    println!("making {n} backups on {} ...", vault.store.describe());
    let source = Source::discover(&SourceSpec {
        data_dir: Some(data.clone()),
        ..Default::default()
    })?;
    let opts = BackupOptions {
        id: None,
        allow_incomplete: true,
        live: None,
        tenant: "default".into(),
        instance: "b".into(),
        key_id: None,
        tags: BTreeMap::new(),
        stream: Default::default(),
        base: None,
    };
    let t = Instant::now();
    for _ in 0..n {
        engine::backup(
            &*vault.store,
            &keyring,
            &source,
            &opts,
            &Progress::default(),
        )?;
    }
    let made = t.elapsed();
    let containers = [
        format!("{base}-default"),
        format!("{base}-default_segments"),
    ];
    let snapshot = || -> anyhow::Result<BTreeMap<String, (String, String)>> {
        let mut all = BTreeMap::new();
        for c in &containers {
            all.extend(swift_listing(c)?);
        }
        Ok(all)
    };
    let before = snapshot()?;

    // Baseline: read and authenticate every backup's metadata, as any rotation must.
    let t = Instant::now();
    let listed = catalog::list(&*vault.store, &keyring, "default", None)?;
    let read_all = t.elapsed();
    if listed.len() != n || listed.iter().any(|l| l.metadata.is_none()) {
        bail!("{} backups listed, some unreadable", listed.len());
    }

    let zero = |c: &AtomicU64| c.swap(0, Ordering::Relaxed);
    for c in [
        &counts.metadata_reads,
        &counts.metadata_writes,
        &counts.data_reads,
        &counts.data_writes,
        &counts.listings,
    ] {
        zero(c);
    }
    let t = Instant::now();
    let report = vault.rotate(&mut keyring, "default", false, &|_| {})?;
    let rotated = t.elapsed();
    if report.rewrapped.len() != n || !report.failed.is_empty() {
        bail!("rotation rewrapped {} of {n}", report.rewrapped.len());
    }
    let after = snapshot()?;

    let data_names: BTreeSet<&String> = before
        .keys()
        .filter(|k| !k.ends_with("/backup.json"))
        .collect();
    let changed_data = data_names
        .iter()
        .filter(|k| before.get(**k) != after.get(**k))
        .count();
    let metadata_changed = before
        .iter()
        .filter(|(k, v)| k.ends_with("/backup.json") && after.get(*k) != Some(*v))
        .count();
    let per = |d: std::time::Duration| d.as_secs_f64() * 1e3 / n as f64;
    println!("B9 key rotation, {n} backups on a loopback Swift (one process, same store)");
    println!(
        "  making the backups:            {:8.2} s  ({:.2} ms per backup)",
        made.as_secs_f64(),
        per(made)
    );
    println!(
        "  baseline, read every metadata: {:8.2} s  ({:.2} ms per backup)",
        read_all.as_secs_f64(),
        per(read_all)
    );
    println!(
        "  rotation (list + rewrap):      {:8.2} s  ({:.2} ms per backup)  {:.2}x the baseline",
        rotated.as_secs_f64(),
        per(rotated),
        rotated.as_secs_f64() / read_all.as_secs_f64()
    );
    println!(
        "  store calls during rotation: metadata {} read, {} written; data {} read, {} written; {} listings",
        counts.metadata_reads.load(Ordering::Relaxed),
        counts.metadata_writes.load(Ordering::Relaxed),
        counts.data_reads.load(Ordering::Relaxed),
        counts.data_writes.load(Ordering::Relaxed),
        counts.listings.load(Ordering::Relaxed),
    );
    println!(
        "  Swift listing: {} data objects (manifests and segments), {changed_data} with another ETag or Last-Modified; {metadata_changed} of {n} metadata objects rewritten",
        data_names.len()
    );
    if changed_data != 0
        || counts.data_reads.load(Ordering::Relaxed) != 0
        || counts.data_writes.load(Ordering::Relaxed) != 0
    {
        bail!("a data object was read or written");
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("couchvault-rotbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
