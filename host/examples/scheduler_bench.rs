//! B6: 10,000 schedules in sled. Time to compute the due set per tick (beside the naive
//! baseline that recomputes every schedule's next run each tick), API latency p50/p99 for
//! schedule list and backup list (beside /healthz on the same server), daemon restart time.
//!
//!   cargo run --release --example scheduler_bench

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use couchvault::config::Config;
use couchvault::couchdb::SourceSpec;
use couchvault::daemon::db::{IndexEntry, INDEX_FORMAT};
use couchvault::daemon::{api, Daemon, DaemonOptions};
use couchvault::keyring::KeyRing;
use couchvault::ops::Vault;
use couchvault::scheduler::ScheduleSpec;
use couchvault::wire::BackupSummary;

const SCHEDULES: usize = 10_000;
const TENANTS: usize = 100;
const BACKUPS_PER_TENANT: usize = 500;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn open(dir: &std::path::Path) -> anyhow::Result<Arc<Daemon>> {
    let mut config = Config::embedded();
    config.state_dir = Some(dir.join("state"));
    config.store = Some(format!("file://{}", dir.join("store").display()));
    config.keyring = Some(dir.join("keyring.toml"));
    config.daemon.listen = "127.0.0.1:0".into();
    let vault = Vault::open(config, None, None)?;
    Ok(Daemon::open(
        vault,
        &DaemonOptions {
            admin_token_file: Some(dir.join("state/admin.token")),
            schedules_dir: None,
            instances_dir: None,
        },
    )?)
}

/// Latency of `n` GETs of `path`, sorted.
fn latencies(http: &reqwest::blocking::Client, url: &str, token: &str, n: usize) -> Vec<Duration> {
    let mut out: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            let r = http.get(url).bearer_auth(token).send().expect("request");
            assert!(r.status().is_success(), "{url}: {}", r.status());
            let _ = r.bytes();
            t.elapsed()
        })
        .collect();
    out.sort();
    out
}

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    KeyRing::create(&dir.path().join("keyring.toml"), "t0")?;
    let d = open(dir.path())?;

    // 10,000 schedules over 100 tenants, spread over minutes and hours.
    let zones = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo"];
    let created = Instant::now();
    let now = Utc::now();
    for i in 0..SCHEDULES {
        let spec = ScheduleSpec {
            name: format!("s{i}"),
            tenant: None,
            instance: format!("db{i}"),
            source: SourceSpec {
                data_dir: Some("/var/lib/couchdb".into()),
                ..Default::default()
            },
            cron: format!("{} {} * * *", i % 60, (i / 60) % 24),
            tz: zones[i % zones.len()].into(),
            policies: vec![],
            tags: BTreeMap::new(),
            paused: false,
            backup_kind: None,
            prefix_check: None,
            cluster: false,
            jitter: "0".into(),
            starting_deadline: "1h".into(),
            other: Default::default(),
        };
        d.schedules
            .create(&format!("t{}", i % TENANTS), spec, now)?;
    }
    d.db.flush_blocking()?;
    println!(
        "created {SCHEDULES} schedules in {:.2} s",
        created.elapsed().as_secs_f64()
    );
    for t in 0..TENANTS {
        for b in 0..BACKUPS_PER_TENANT {
            let at = Utc
                .timestamp_opt(1_790_000_000 + (b as i64) * 86_400, 0)
                .unwrap();
            d.db.index_put(&IndexEntry {
                couchvault_index: INDEX_FORMAT,
                summary: BackupSummary {
                    backup_id: format!("01BENCH{t:04}{b:015}"),
                    tenant: format!("t{t}"),
                    instance: "db".into(),
                    kind: Default::default(),
                    parent: None,
                    started_at: at,
                    finished_at: at,
                    files: 22,
                    bytes: 1 << 30,
                    stored_bytes: 1 << 28,
                    compression: "zstd-3".into(),
                    key_id: "k".into(),
                    node_name: None,
                    tags: BTreeMap::new(),
                },
            })?;
        }
    }
    d.db.flush_blocking()?;

    // Per tick: the due set from the timetable, against recomputing every next run.
    let tick_at = now + chrono::Duration::hours(3);
    let mut ticks: Vec<Duration> = (0..1000)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(d.schedules.due(tick_at));
            t.elapsed()
        })
        .collect();
    ticks.sort();
    let due_count = d.schedules.due(tick_at).len();
    let schedules = d.schedules.list(None)?;
    let compiled: Vec<_> = schedules
        .iter()
        .map(|s| s.spec.compile().expect("valid"))
        .collect();
    let mut naive: Vec<Duration> = (0..5)
        .map(|_| {
            let t = Instant::now();
            let n = schedules
                .iter()
                .zip(&compiled)
                .filter(|(s, c)| s.next_due(c).is_some_and(|x| x <= tick_at))
                .count();
            std::hint::black_box(n);
            t.elapsed()
        })
        .collect();
    naive.sort();
    let (tick_p50, naive_p50) = (percentile(&ticks, 0.5), percentile(&naive, 0.5));
    println!(
        "due set per tick ({due_count} due of {SCHEDULES}): p50 {} p99 {} (target 5 ms); naive recompute of every next run {} = {:.0}x slower",
        ms(tick_p50),
        ms(percentile(&ticks, 0.99)),
        ms(naive_p50),
        naive_p50.as_secs_f64() / tick_p50.as_secs_f64().max(1e-9)
    );

    // API latency on a real server.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let base = format!("http://{}", listener.local_addr()?);
    let app = api::router(d.clone());
    rt.spawn(async move { axum::serve(listener, app).await });
    let token = std::fs::read_to_string(dir.path().join("state/admin.token"))?
        .trim()
        .to_string();
    let http = reqwest::blocking::Client::new();
    let n = 300;
    let health = latencies(&http, &format!("{base}/healthz"), &token, n);
    let sched = latencies(&http, &format!("{base}/v1/schedules?tenant=t7"), &token, n);
    let backups = latencies(&http, &format!("{base}/v1/backups?tenant=t7"), &token, n);
    let h50 = percentile(&health, 0.5).as_secs_f64();
    for (name, l) in [
        ("GET /healthz (baseline)", &health),
        ("GET /v1/schedules (100 of 10,000)", &sched),
        ("GET /v1/backups (500 of 50,000)", &backups),
    ] {
        println!(
            "{name:<36} p50 {} p99 {} ({:.1}x /healthz p50)",
            ms(percentile(l, 0.5)),
            ms(percentile(l, 0.99)),
            percentile(l, 0.5).as_secs_f64() / h50
        );
    }
    drop(rt);

    // Restart: open the state again (recovery, schedules loaded, next runs computed).
    drop(d);
    let t = Instant::now();
    let d = open(dir.path())?;
    let restart = t.elapsed();
    println!(
        "restart with {} schedules: {:.3} s (target 2 s)",
        d.schedules.len(),
        restart.as_secs_f64()
    );
    Ok(())
}
