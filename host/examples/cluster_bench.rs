//! Issue 19's scale on paper, measured where it can be: planning a cluster backup of a
//! simulated shard map of 100 nodes and 10,000 databases (n = 3; q of 2, 4, 8 or 16), and
//! re-planning when one node fails, beside reading the map into memory.
//!
//!   cargo run --release --example cluster_bench [NODES] [DATABASES]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use couchvault::cluster::plan::Plan;
use couchvault::couchdb::shardmap::DbShards;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let nodes: usize = args.next().map_or(Ok(100), |a| a.parse())?;
    let dbs: usize = args.next().map_or(Ok(10_000), |a| a.parse())?;
    let names: Vec<String> = (0..nodes)
        .map(|i| format!("couchdb@10.0.{}.{}", i / 250, i % 250))
        .collect();
    let t = Instant::now();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut sizes = BTreeMap::new();
    let maps: Vec<DbShards> = (0..dbs)
        .map(|d| {
            let q = [2u32, 4, 8, 16][(next() % 4) as usize];
            let step = (1u64 << 32) / q as u64;
            let by_range = (0..q as u64)
                .map(|i| {
                    let range = format!("{:08x}-{:08x}", i * step, (i + 1) * step - 1);
                    let first = (next() % nodes as u64) as usize;
                    let holders = (0..3.min(nodes))
                        .map(|k| names[(first + k) % nodes].clone())
                        .collect();
                    (range, holders)
                })
                .collect();
            let name = format!("tenant{:04}/db{d:05}", d % 1000);
            // Sizes from 1 MiB to 4 GiB, most small.
            sizes.insert(name.clone(), 1u64 << (20 + next() % 13));
            DbShards {
                name,
                suffix: ".1795703450".into(),
                by_range,
            }
        })
        .collect();
    let ranges: usize = maps.iter().map(|m| m.by_range.len()).sum();
    let built = t.elapsed();
    let up: BTreeSet<String> = names.iter().cloned().collect();
    let mut times = Vec::new();
    let mut plan = Plan::default();
    for _ in 0..5 {
        let t = Instant::now();
        plan = Plan::new(&maps, &up, |db| sizes[db])?;
        times.push(t.elapsed());
    }
    times.sort();
    let bytes: Vec<u64> = plan.nodes.values().map(|s| s.bytes).collect();
    let (min, max) = (
        bytes.iter().min().copied().unwrap_or(0),
        bytes.iter().max().copied().unwrap_or(0),
    );
    let reading = plan.nodes.len();
    let t = Instant::now();
    let failed = names[nodes / 2].clone();
    let moved = plan.replan(&failed, &maps, &up)?;
    let replan = t.elapsed();
    let json = serde_json::to_vec(&plan)?;
    println!(
        "{nodes} nodes, {dbs} databases, {ranges} shard ranges (n = 3): map built in {built:.1?}"
    );
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    println!(
        "plan: median {:.1?} of 5 runs; {reading} nodes read; {:.1} to {:.1} GiB each (max/min {:.3})",
        times[2],
        gib(min),
        gib(max),
        max as f64 / min.max(1) as f64
    );
    println!(
        "replan after {failed} failed: {replan:.1?}, {} ranges moved",
        moved.values().map(|s| s.ranges.len()).sum::<usize>()
    );
    println!(
        "the plan as JSON: {} KiB ({} KiB per node job on average)",
        json.len() >> 10,
        (json.len() / plan.nodes.len().max(1)) >> 10
    );
    Ok(())
}
