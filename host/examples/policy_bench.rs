//! B5: for each policy component given (the default GFS retention in Rust, JavaScript, Python):
//! cold compile, load from the on-disk cache, warm retention over 1,000 backups (median, p99),
//! fuel and memory per call, beside the same decision computed natively in Rust.
//!
//!   bash scripts/build-policies.sh && bash scripts/build-policy-examples.sh
//!   P=$(bash scripts/target-dir.sh)/policies
//!   cargo run --release --example policy_bench -- $P/gfs_retention.wasm $P/gfs_retention_js.wasm $P/gfs_retention_py.wasm

#[path = "../../policies/gfs-retention/src/gfs.rs"]
mod gfs;

use std::time::{Duration, Instant};

use couchvault::policy::{BackupInfo, Limits, PolicyHost, RetentionInput};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() -> anyhow::Result<()> {
    let paths: Vec<String> = std::env::args().skip(1).collect();
    if paths.is_empty() {
        anyhow::bail!("usage: policy_bench COMPONENT.wasm [COMPONENT.wasm ...]");
    }
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

    // The baseline: the same decision computed natively, in this process.
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
    native_times.sort();
    let (nm, np) = (
        percentile(&native_times, 0.5),
        percentile(&native_times, 0.99),
    );
    println!(
        "native Rust, same decision: keeps {native_kept} of 1000, median {nm:.1?}, p99 {np:.1?}"
    );
    println!();
    println!(
        "{:<28} {:>9} {:>11} {:>10} {:>10} {:>10} {:>12} {:>8} {:>10} {:>11} {:>11}",
        "component",
        "size",
        "cold comp.",
        "cached",
        "median",
        "p99",
        "fuel/call",
        "memory",
        "ratio",
        "empty list",
        "fuel"
    );

    for path in &paths {
        let wasm = std::fs::read(path)?;
        let name = std::path::Path::new(path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let cache = tempfile::tempdir()?;
        let t = Instant::now();
        let host = PolicyHost::new(cache.path(), Limits::default())?;
        let policy = host.load("bench", &wasm)?;
        let cold = t.elapsed();
        let t = Instant::now();
        let host2 = PolicyHost::new(cache.path(), Limits::default())?;
        let _ = host2.load("bench", &wasm)?;
        let cached = t.elapsed();

        // Fewer runs for the slow guests; the first one is not counted (page faults).
        let mut wasm_times = Vec::new();
        let mut kept = host.retain(&policy, &input)?.len();
        let first = host.last_usage().map_or(Duration::ZERO, |u| u.elapsed);
        let runs = if first > Duration::from_millis(5) {
            100
        } else {
            500
        };
        for _ in 0..runs {
            let t = Instant::now();
            kept = host.retain(&policy, &input)?.len();
            wasm_times.push(t.elapsed());
        }
        // The fixed cost: an empty backup list.
        let empty = RetentionInput {
            backups: vec![],
            ..input.clone()
        };
        let mut empty_times = Vec::new();
        for _ in 0..runs {
            let t = Instant::now();
            host.retain(&policy, &empty)?;
            empty_times.push(t.elapsed());
        }
        empty_times.sort();
        let empty_fuel = host.last_usage().map_or(0, |u| u.fuel);
        host.retain(&policy, &input)?;
        let usage = host
            .last_usage()
            .ok_or_else(|| anyhow::anyhow!("no usage recorded"))?;
        anyhow::ensure!(
            kept == native_kept,
            "{name} keeps {kept}, the native code {native_kept}"
        );
        wasm_times.sort();
        let (wm, wp) = (percentile(&wasm_times, 0.5), percentile(&wasm_times, 0.99));
        println!(
            "{:<28} {:>6} KiB {:>11.1?} {:>10.1?} {:>10.2?} {:>10.2?} {:>12} {:>4} MiB {:>9.1}x {:>11.2?} {:>11}",
            name,
            wasm.len() >> 10,
            cold,
            cached,
            wm,
            wp,
            usage.fuel,
            usage.memory_bytes >> 20,
            wm.as_secs_f64() / nm.as_secs_f64(),
            percentile(&empty_times, 0.5),
            empty_fuel
        );
    }
    println!();
    println!("ratio: warm median over the native median (issue 18's target for Rust: <= 10x)");
    let l = Limits::default();
    println!(
        "default limits (all met above): fuel {} + {} per backup = {} for 1000 backups; deadline {:?} + {:?} per backup = {:?}; memory {} MiB",
        l.fuel,
        l.fuel_per_backup,
        l.fuel + 1000 * l.fuel_per_backup,
        l.deadline,
        l.deadline_per_backup,
        l.deadline + l.deadline_per_backup * 1000,
        l.memory_bytes >> 20
    );
    Ok(())
}
