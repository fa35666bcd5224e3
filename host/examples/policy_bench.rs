//! B5: warm retention evaluation over 1,000 backups (median, p99) and cold compile time of a
//! policy component, beside the same decision computed natively in Rust.
//!
//!   bash scripts/build-policies.sh
//!   cargo run --release --example policy_bench -- policies/gfs-retention/target/wasm32-wasip2/release/gfs_retention.wasm

#[path = "../../policies/gfs-retention/src/gfs.rs"]
mod gfs;

use std::time::{Duration, Instant};

use couchvault::policy::{BackupInfo, Limits, PolicyHost, RetentionInput};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: policy_bench COMPONENT.wasm"))?;
    let wasm = std::fs::read(&path)?;
    let now = 1_795_000_000i64;
    // 1,000 backups, one every 6 hours, newest first.
    let backups: Vec<BackupInfo> = (0..1000)
        .map(|i| BackupInfo {
            id: format!("01BACKUP{i:018}"),
            created_at: now - i * 6 * 3600,
            size: 1 << 30,
            kind: "full".into(),
            parent: None,
            tags: vec![("schedule".into(), "nightly".into())],
            schedule: Some("nightly".into()),
        })
        .collect();
    let input = RetentionInput {
        now,
        tenant: "t".into(),
        instance: "i".into(),
        params: String::new(),
        backups: backups.clone(),
    };

    let cache = tempfile::tempdir()?;
    let t = Instant::now();
    let host = PolicyHost::new(cache.path(), Limits::default())?;
    let policy = host.load("bench", &wasm)?;
    let cold = t.elapsed();
    let t = Instant::now();
    let host2 = PolicyHost::new(cache.path(), Limits::default())?;
    let _ = host2.load("bench", &wasm)?;
    let cached = t.elapsed();

    let mut wasm_times = Vec::new();
    let mut kept = 0;
    for _ in 0..500 {
        let t = Instant::now();
        kept = host.retain(&policy, &input)?.len();
        wasm_times.push(t.elapsed());
    }
    let snaps: Vec<gfs::Snapshot<'_>> = backups
        .iter()
        .map(|b| gfs::Snapshot {
            id: &b.id,
            created_at: b.created_at,
        })
        .collect();
    let mut native_times = Vec::new();
    let mut native_kept = 0;
    for _ in 0..500 {
        let t = Instant::now();
        native_kept = gfs::retain("", &snaps).map_err(anyhow::Error::msg)?.len();
        native_times.push(t.elapsed());
    }
    assert_eq!(kept, native_kept, "the component and the native code agree");
    wasm_times.sort();
    native_times.sort();
    let (wm, wp) = (percentile(&wasm_times, 0.5), percentile(&wasm_times, 0.99));
    let (nm, np) = (
        percentile(&native_times, 0.5),
        percentile(&native_times, 0.99),
    );
    println!("policy {path}: keeps {kept} of 1000 backups");
    println!("cold compile {cold:.1?}, load from cache {cached:.1?}");
    println!("warm retention (fresh sandbox, 1000 backups): median {wm:.1?}, p99 {wp:.1?}  (target: median <= 1 ms)");
    println!("native Rust, same decision:                   median {nm:.1?}, p99 {np:.1?}");
    println!(
        "ratio wasm / native (median): {:.1}x",
        wm.as_secs_f64() / nm.as_secs_f64()
    );
    Ok(())
}
