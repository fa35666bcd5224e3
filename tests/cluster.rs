//! Clusters: a plan over a real 3-node CouchDB 3.5 cluster (`../shared/couchdb/couch.sh
//! cluster`) whose member backups read every shard range once; coordination on a real NATS
//! server with JetStream (Debian's nats-server, started by scripts/nats.sh on 127.0.0.1):
//! membership that expires, one coordinator at a time with takeover, node jobs that survive
//! an agent's death and a broker's crash.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::couch::{script, Couch};
use common::nats::Nats;
use couchvault::cluster::agent::{Agent, RunMember};
use couchvault::cluster::broker::{Broker, NodeRecord, Timings};
use couchvault::cluster::coordinator::{self, ClusterRequest};
use couchvault::cluster::job::{JobState, MemberJob};
use couchvault::cluster::manifest;
use couchvault::cluster::plan::Plan;
use couchvault::cluster::shards;
use couchvault::couchdb::{Source, SourceSpec};
use couchvault::engine::backup::StreamSettings;
use couchvault::keyring::KeyRing;
use couchvault::store::LocalStore;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// A 3-node cluster (n=3, q=2, and one database of q=4) with documents and a built view:
/// planned with every node up, the three member backups hold every shard range of every
/// database exactly once between them, each only its share (and its indexes), and store
/// about a third of what backing up all three nodes whole stores.
#[test]
fn member_backups_read_every_shard_range_once() {
    let Some(sh) = script() else { return };
    let nodes = Couch::cluster(&sh, "cvpl", 3, 11350);
    let stop = || {
        let _ = std::process::Command::new(&sh)
            .args(["stop-cluster", "cvpl", "3"])
            .output();
    };
    nodes[0].send(Method::PUT, "/orders", &json!({}));
    nodes[0].send(Method::PUT, "/wide?q=4", &json!({}));
    for (i, db) in ["orders", "wide"].iter().enumerate() {
        let docs: Vec<_> = (0..400)
            .map(|k| json!({"_id": format!("d{k:04}"), "k": k, "pad": "x".repeat(200 + i)}))
            .collect();
        nodes[i % 3].send(
            Method::POST,
            &format!("/{db}/_bulk_docs"),
            &json!({ "docs": docs }),
        );
    }
    nodes[1].send(
        Method::PUT,
        "/orders/_design/v",
        &json!({"views": {"by_k": {"map": "function(d){ emit(d.k, null); }"}}}),
    );
    let rows = nodes[2].send(
        Method::GET,
        "/orders/_design/v/_view/by_k?limit=1",
        &json!(null),
    );
    assert_eq!(rows["total_rows"], 400, "{rows}");

    let (maps, details) = shards::read(&nodes[0].client()).unwrap();
    let wide = maps.iter().find(|m| m.name == "wide").expect("wide's map");
    assert_eq!(wide.by_range.len(), 4);
    assert!(wide.by_range.values().all(|h| h.len() == 3));
    let b9 = members_and_wholes(&nodes, &maps, &details);
    stop();
    let mut read_by: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (node, share, member) in &b9.members {
        for f in &member.files {
            if let Some(shard) = f.path.strip_prefix("data/shards/") {
                read_by
                    .entry(shard.to_string())
                    .or_default()
                    .push(node.clone());
            } else if let Some(index) = f.path.strip_prefix("data/.shards/") {
                assert!(
                    share
                        .ranges
                        .iter()
                        .any(|r| index.starts_with(&r.index_dir()[8..])),
                    "{node} holds an index outside its share: {index}"
                );
            } else {
                assert!(
                    f.path == "data/_dbs.couch" || f.path.starts_with("etc/"),
                    "{node} read {} outside its share",
                    f.path
                );
            }
        }
    }
    // Every range of every database, each read by exactly one node.
    let expected: BTreeSet<String> = maps
        .iter()
        .flat_map(|m| m.files_on(None))
        .map(|f| f["shards/".len()..].to_string())
        .collect();
    assert_eq!(read_by.keys().cloned().collect::<BTreeSet<_>>(), expected);
    for (shard, by) in &read_by {
        assert_eq!(by.len(), 1, "{shard} read by {by:?}");
    }
    let ratio = b9.print();
    assert!(
        ratio < 0.5,
        "members store {ratio:.2}x of three whole nodes"
    );
}

/// B9: each node's member backup and its whole-node backup, with bytes and wall times.
struct B9 {
    members: Vec<(
        String,
        couchvault::cluster::plan::NodeShare,
        couchvault::format::BackupMetadata,
    )>,
    member_bytes: u64,
    whole_bytes: u64,
    member_time: Duration,
    slowest_member: Duration,
    whole_time: Duration,
}

impl B9 {
    /// Prints the ratios; returns stored bytes, members over whole nodes.
    fn print(&self) -> f64 {
        let ratio = self.member_bytes as f64 / self.whole_bytes as f64;
        println!(
            "B9 stored: members {} B, every node whole {} B: {ratio:.2}x",
            self.member_bytes, self.whole_bytes
        );
        println!(
            "B9 wall: members {:.0} ms one after another (slowest {:.0} ms, the time when each node runs its own), every node whole {:.0} ms one after another (slowest member / whole in turn {:.2}x)",
            self.member_time.as_secs_f64() * 1e3,
            self.slowest_member.as_secs_f64() * 1e3,
            self.whole_time.as_secs_f64() * 1e3,
            self.slowest_member.as_secs_f64() / self.whole_time.as_secs_f64()
        );
        ratio
    }
}

/// Plans with every node up, then on each node in turn takes its member backup and a
/// backup of the whole node (one machine here: on a cluster, members run at once).
fn members_and_wholes(
    nodes: &[Couch],
    maps: &[couchvault::couchdb::shardmap::DbShards],
    details: &BTreeMap<String, shards::DbDetail>,
) -> B9 {
    let names: BTreeSet<String> = nodes.iter().map(|n| n.node.clone()).collect();
    let plan = Plan::new(maps, &names, |db| details[db].size).unwrap();
    assert_eq!(plan.nodes.len(), nodes.len(), "every node reads a share");
    let dir = tempfile::tempdir().unwrap();
    let keyring = KeyRing::create(&dir.path().join("keys.toml"), "default").unwrap();
    let store = LocalStore::new(dir.path().join("store"), 1 << 20);
    let mut b9 = B9 {
        members: Vec::new(),
        member_bytes: 0,
        whole_bytes: 0,
        member_time: Duration::ZERO,
        slowest_member: Duration::ZERO,
        whole_time: Duration::ZERO,
    };
    for node in nodes {
        let mut source = Source::discover(&SourceSpec {
            data_dir: Some(node.data.clone()),
            ..Default::default()
        })
        .unwrap();
        let share = plan.nodes[&node.node].clone();
        source.shards = Some(share.ranges.iter().map(|r| r.file()).collect());
        let backup = |source: &Source, instance: &str| {
            let t = Instant::now();
            let meta = common::backup_source(
                &store,
                &keyring,
                source,
                instance,
                None,
                StreamSettings::default(),
                false,
            )
            .unwrap();
            (meta, t.elapsed())
        };
        let (member, took) = backup(&source, "member");
        b9.member_time += took;
        b9.slowest_member = b9.slowest_member.max(took);
        b9.member_bytes += member.data.size;
        source.shards = None;
        let (whole, took) = backup(&source, "whole");
        b9.whole_time += took;
        b9.whole_bytes += whole.data.size;
        b9.members.push((node.node.clone(), share, member));
    }
    b9
}

/// Benchmark B9 (docs/PERFORMANCE.md), not run by default: `cargo test --release --test
/// cluster b9 -- --ignored --nocapture`. A 3-node cluster (n=3, q=2) with three databases
/// of 20,000 documents of about 1 KiB each.
#[test]
#[ignore]
fn b9_cluster_backup_against_every_node_whole() {
    let Some(sh) = script() else { return };
    let nodes = Couch::cluster(&sh, "cvb9", 3, 11540);
    for (i, db) in ["orders", "users", "events"].iter().enumerate() {
        nodes[0].send(Method::PUT, &format!("/{db}"), &json!({}));
        for batch in 0..20 {
            let docs: Vec<_> = (0..1000)
                .map(|k| {
                    let n = batch * 1000 + k;
                    json!({"_id": format!("d{n:06}"), "n": n, "body": format!("{n:x}-{}", "abcdefghij".repeat(95 + i))})
                })
                .collect();
            nodes[batch % 3].send(
                Method::POST,
                &format!("/{db}/_bulk_docs"),
                &json!({ "docs": docs }),
            );
        }
    }
    // Every replica written before the backups read them.
    std::thread::sleep(Duration::from_secs(5));
    let (maps, details) = shards::read(&nodes[0].client()).unwrap();
    let b9 = members_and_wholes(&nodes, &maps, &details);
    let _ = std::process::Command::new(&sh)
        .args(["stop-cluster", "cvb9", "3"])
        .output();
    b9.print();
}

/// Planning's read of the cluster, not run by default: `cargo test --release --test cluster
/// planning_read -- --ignored --nocapture`. A 3-node cluster with 1,000 databases (q=2):
/// shard maps and sizes in bulk (pages of `_dbs`, batches of `/_dbs_info`) against one
/// request each per database, best of 3 each, in the same process.
#[test]
#[ignore]
fn planning_read_bulk_against_per_database() {
    let Some(sh) = script() else { return };
    let nodes = Couch::cluster(&sh, "cvpr", 3, 11720);
    let client = nodes[0].client();
    for i in 0..1000 {
        nodes[i % 3].send(Method::PUT, &format!("/db{i:04}"), &json!({}));
    }
    let per_database = || {
        let mut read = 0;
        for db in client.all_dbs().unwrap() {
            let doc = client.shard_map(&db).unwrap();
            let _ = shards::from_doc(&db, &doc).unwrap();
            let _ = client.db_size_and_count(&db).unwrap();
            read += 1;
        }
        read
    };
    let best = |f: &dyn Fn() -> usize| {
        (0..3)
            .map(|_| {
                let t = Instant::now();
                let n = f();
                (t.elapsed(), n)
            })
            .min()
            .unwrap()
    };
    let (one_each, n) = best(&per_database);
    let (bulk, m) = best(&|| shards::read(&client).unwrap().0.len());
    let _ = std::process::Command::new(&sh)
        .args(["stop-cluster", "cvpr", "3"])
        .output();
    assert_eq!(n, m);
    println!(
        "planning read of {n} databases: bulk {:.0} ms (about {} requests), one request each {:.0} ms ({} requests): {:.3}x",
        bulk.as_secs_f64() * 1000.0,
        2 + n.div_ceil(shards::MAPS_PER_PAGE) + n.div_ceil(shards::INFO_PER_REQUEST),
        one_each.as_secs_f64() * 1000.0,
        1 + 2 * n,
        bulk.as_secs_f64() / one_each.as_secs_f64()
    );
}

/// A cluster backup of `instance` for tenant `default`, as a coordinator takes it.
fn request(backup: String, instance: &str, key_id: String) -> ClusterRequest {
    ClusterRequest {
        backup,
        tenant: "default".into(),
        instance: instance.into(),
        key_id,
        deadline: Duration::from_secs(120),
        poll: Duration::from_millis(200),
        down: BTreeSet::new(),
        settings: Default::default(),
    }
}

/// A runtime for agents and a coordinator side by side.
fn threads() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

fn fast() -> Timings {
    Timings {
        node_ttl: Duration::from_secs(2),
        lease: Duration::from_secs(2),
        ack_wait: Duration::from_secs(2),
    }
}

fn record(node: &str) -> NodeRecord {
    NodeRecord {
        v: 1,
        node: node.into(),
        daemon: "http://127.0.0.1:1".into(),
        incarnation: ulid::Ulid::new().to_string(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Job {
    v: u32,
    id: String,
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Polls `f` until it is true or `within` passes.
async fn eventually(within: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < within {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[test]
fn daemons_register_and_a_silent_one_expires() {
    let Some(nats) = Nats::start("cv-members", 14301) else {
        return;
    };
    rt().block_on(async {
        let a = Broker::connect(&nats.url, fast()).await.unwrap();
        let b = Broker::connect(&nats.url, fast()).await.unwrap();
        // Node names hold '@' and '.', which keys and subjects may not.
        a.heartbeat(&record("cl-1@127.0.0.1")).await.unwrap();
        b.heartbeat(&record("cl-2@127.0.0.1")).await.unwrap();
        let names = |v: Vec<NodeRecord>| v.into_iter().map(|r| r.node).collect::<Vec<_>>();
        assert_eq!(
            names(a.nodes().await.unwrap()),
            ["cl-1@127.0.0.1", "cl-2@127.0.0.1"]
        );
        // b keeps beating, a stops: a is gone within its TTL and some.
        let gone = eventually(Duration::from_secs(8), async || {
            b.heartbeat(&record("cl-2@127.0.0.1")).await.unwrap();
            names(b.nodes().await.unwrap()) == ["cl-2@127.0.0.1"]
        })
        .await;
        assert!(gone, "a silent daemon's entry expires");
    });
}

#[test]
fn one_coordinator_at_a_time_and_another_takes_over_a_dead_one() {
    let Some(nats) = Nats::start("cv-leader", 14302) else {
        return;
    };
    rt().block_on(async {
        let a = Broker::connect(&nats.url, fast()).await.unwrap();
        let b = Broker::connect(&nats.url, fast()).await.unwrap();
        let mut lease = a.try_lead("daemon-a").await.unwrap().expect("a leads");
        assert!(b.try_lead("daemon-b").await.unwrap().is_none());
        assert!(a.renew(&mut lease).await.unwrap());
        assert_eq!(b.leader().await.unwrap().as_deref(), Some("daemon-a"));
        // a stops renewing (dies): b leads once the lease runs out, not before.
        let started = Instant::now();
        let mut b_lease = None;
        assert!(
            eventually(Duration::from_secs(10), async || {
                b_lease = b.try_lead("daemon-b").await.unwrap();
                b_lease.is_some()
            })
            .await,
            "b takes over a dead coordinator's lease"
        );
        assert!(started.elapsed() >= Duration::from_secs(1));
        // a comes back: its lease is lost, and it knows.
        assert!(!a.renew(&mut lease).await.unwrap());
        assert_eq!(a.leader().await.unwrap().as_deref(), Some("daemon-b"));
        // A clean stop hands over at once.
        b.resign(b_lease.unwrap()).await.unwrap();
        assert!(a.try_lead("daemon-a").await.unwrap().is_some());
    });
}

#[test]
fn a_job_is_queued_once_redelivered_when_its_agent_dies_and_kept_across_a_broker_crash() {
    let Some(nats) = Nats::start("cv-jobs", 14303) else {
        return;
    };
    let node = "cl-3@127.0.0.1";
    let wait = Duration::from_millis(500);
    rt().block_on(async {
        let coord = Broker::connect(&nats.url, fast()).await.unwrap();
        let job = Job {
            v: 1,
            id: "job-1".into(),
        };
        // A new coordinator queueing the same job again: deduplicated by its id.
        coord.dispatch(node, "job-1", &job).await.unwrap();
        coord.dispatch(node, "job-1", &job).await.unwrap();
        // Another node's queue is its own.
        coord
            .dispatch(
                "cl-1@127.0.0.1",
                "job-2",
                &Job {
                    v: 1,
                    id: "job-2".into(),
                },
            )
            .await
            .unwrap();

        let agent = Broker::connect(&nats.url, fast()).await.unwrap();
        let first = agent
            .next_job::<Job>(node, wait)
            .await
            .unwrap()
            .expect("the job");
        assert_eq!((first.job.clone(), first.attempt), (job.clone(), 1));
        // The agent dies holding it (never acknowledged): delivered again after the ack wait.
        drop(first);
        assert!(agent.next_job::<Job>(node, wait).await.unwrap().is_none());
        let mut again = None;
        assert!(
            eventually(Duration::from_secs(8), async || {
                again = agent.next_job::<Job>(node, wait).await.unwrap();
                again.is_some()
            })
            .await,
            "an unacknowledged job comes back"
        );
        let again = again.unwrap();
        assert_eq!((again.job.clone(), again.attempt), (job.clone(), 2));
        // Progress keeps it from coming back while the work goes on.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(900)).await;
            again.progress().await.unwrap();
        }
        assert!(agent.next_job::<Job>(node, wait).await.unwrap().is_none());
        again.done().await.unwrap();
        assert!(agent
            .next_job::<Job>(node, Duration::from_secs(3))
            .await
            .unwrap()
            .is_none());
    });

    // The broker crashes with job-2 queued; restarted on the same files, it still has it.
    nats.kill();
    nats.up();
    rt().block_on(async {
        let agent = Broker::connect(&nats.url, fast()).await.unwrap();
        let d = agent
            .next_job::<Job>("cl-1@127.0.0.1", wait)
            .await
            .unwrap()
            .expect("the queued job survives the crash");
        assert_eq!(d.job.id, "job-2");
        d.done().await.unwrap();
    });
}

#[test]
fn a_dead_broker_is_a_clear_error() {
    let started = Instant::now();
    let err = rt()
        .block_on(Broker::connect("nats://127.0.0.1:14309", fast()))
        .err()
        .expect("nothing listens there");
    let msg = err.to_string();
    assert!(
        msg.contains("nats://127.0.0.1:14309") && msg.contains("connecting"),
        "{msg}"
    );
    assert!(msg.contains("scripts/nats.sh"), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// Backs up a member job's shards of the node whose data is `data` into `store` as backup
/// `id`, or finds it committed; `hold` set: blocks until `release` (an agent that hangs).
fn member_runner(
    store: Arc<LocalStore>,
    ring: PathBuf,
    data: PathBuf,
    hold: Option<Arc<AtomicBool>>,
) -> RunMember {
    Arc::new(move |job: &MemberJob, id: ulid::Ulid| {
        if let Some(release) = &hold {
            while !release.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
            }
            return Err("released".into());
        }
        let keyring = KeyRing::load(&ring).map_err(|e| e.to_string())?;
        if let Ok(m) = couchvault::catalog::load(&*store, &keyring, &job.tenant, &id.to_string()) {
            return Ok(m.data.size);
        }
        let mut source = Source::discover(&SourceSpec {
            data_dir: Some(data.clone()),
            ..Default::default()
        })
        .map_err(|e| e.to_string())?;
        source.shards = Some(job.shards.iter().cloned().collect());
        common::backup_source(
            &*store,
            &keyring,
            &source,
            &job.member_instance(),
            Some(id),
            StreamSettings::default(),
            false,
        )
        .map(|m| m.data.size)
        .map_err(|e| e.to_string())
    })
}

/// One agent per node on the broker at `url`, running member backups into `store`; the
/// agent of node `held` holds its job until `release` is set. Returns once all are
/// registered, with each agent's task by node.
async fn spawn_agents(
    url: &str,
    timings: Timings,
    nodes: &[Couch],
    store: &Arc<LocalStore>,
    ring: &std::path::Path,
    held: Option<(&str, &Arc<AtomicBool>)>,
    stop: &Arc<AtomicBool>,
) -> BTreeMap<String, tokio::task::JoinHandle<()>> {
    let mut agents = BTreeMap::new();
    for node in nodes {
        let broker = Arc::new(Broker::connect(url, timings).await.unwrap());
        let agent = Agent::new(broker, &node.node, "http://127.0.0.1:1");
        let hold = held
            .filter(|(n, _)| *n == node.node)
            .map(|(_, release)| release.clone());
        let run = member_runner(store.clone(), ring.to_path_buf(), node.data.clone(), hold);
        let stop = stop.clone();
        agents.insert(
            node.node.clone(),
            tokio::spawn(async move { agent.run(run, stop).await }),
        );
    }
    let watch = Broker::connect(url, timings).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || watch
            .nodes()
            .await
            .unwrap()
            .len()
            == nodes.len())
        .await,
        "every agent registered"
    );
    agents
}

/// Creates each database in `dbs` with `count` documents `d0000`… (`k`: their number).
fn seed(nodes: &[Couch], dbs: &[&str], count: usize) {
    for db in dbs {
        nodes[0].send(Method::PUT, &format!("/{db}"), &json!({}));
        let docs: Vec<_> = (0..count)
            .map(|k| json!({"_id": format!("d{k:04}"), "k": k}))
            .collect();
        nodes[1].send(
            Method::POST,
            &format!("/{db}/_bulk_docs"),
            &json!({ "docs": docs }),
        );
    }
}

/// A cluster backup end to end on a real 3-node cluster and a real broker, one agent per
/// node and a coordinator: the agent of one node dies holding its job, and the coordinator
/// dies after planning. A second coordinator takes the lease over, resumes the same backup,
/// moves the dead node's ranges to the other replicas and commits the manifest: its members
/// hold every shard range once. The dead agent, back, drops its superseded job.
#[test]
fn a_cluster_backup_survives_a_dead_agent_and_a_dead_coordinator() {
    let Some(sh) = script() else { return };
    let Some(nats) = Nats::start("cv-cluster", 14304) else {
        return;
    };
    let nodes = Couch::cluster(&sh, "cvcb", 3, 11380);
    seed(&nodes, &["orders", "users"], 200);
    let client = nodes[0].client();
    let (maps, details) = shards::read(&client).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ring = dir.path().join("keys.toml");
    let keyring = KeyRing::create(&ring, "default").unwrap();
    let key_id = keyring.active("default").unwrap().id.clone();
    let store = Arc::new(LocalStore::new(dir.path().join("store"), 1 << 20));
    let timings = Timings {
        node_ttl: Duration::from_secs(3),
        lease: Duration::from_secs(3),
        ack_wait: Duration::from_secs(3),
    };
    let victim = nodes[2].node.clone();
    let release = Arc::new(AtomicBool::new(false));
    let rt = threads();
    let backup = ulid::Ulid::new().to_string();
    let req = request(backup.clone(), "shop", key_id);
    let manifest = rt.block_on(async {
        let stop = Arc::new(AtomicBool::new(false));
        let held = Some((victim.as_str(), &release));
        let mut agents = spawn_agents(&nats.url, timings, &nodes, &store, &ring, held, &stop).await;
        let watch = Broker::connect(&nats.url, timings).await.unwrap();

        // The first coordinator plans and queues, then dies once the victim took its job.
        let first = {
            let (url, req, maps, details) =
                (nats.url.clone(), req.clone(), maps.clone(), details.clone());
            tokio::spawn(async move {
                let broker = Broker::connect(&url, timings).await.unwrap();
                let mut lease = broker
                    .try_lead("coordinator-1")
                    .await
                    .unwrap()
                    .expect("leads");
                coordinator::run(&broker, &mut lease, &req, &maps, &details, None).await
            })
        };
        let victim_job = MemberJob::id_for(&backup, &victim, 0);
        assert!(
            eventually(Duration::from_secs(20), async || matches!(
                watch.record::<JobState>(&victim_job).await.unwrap(),
                Some(JobState::Running { .. })
            ))
            .await,
            "the victim's agent took its job"
        );
        first.abort();
        agents.remove(&victim).unwrap().abort();

        // The second takes over once the lease runs out, and finishes the same backup.
        let broker = Broker::connect(&nats.url, timings).await.unwrap();
        let mut lease = None;
        assert!(
            eventually(Duration::from_secs(10), async || {
                lease = broker.try_lead("coordinator-2").await.unwrap();
                lease.is_some()
            })
            .await
        );
        let mut lease = lease.unwrap();
        let m = coordinator::run(&broker, &mut lease, &req, &maps, &details, None)
            .await
            .unwrap();
        assert_eq!(
            watch.record::<JobState>(&victim_job).await.unwrap(),
            Some(JobState::Superseded { v: 1 })
        );
        stop.store(true, Ordering::Relaxed);
        release.store(true, Ordering::Relaxed);

        // The victim's agent comes back: its old job is redelivered and dropped, unrun.
        let back = Agent::new(
            Arc::new(Broker::connect(&nats.url, timings).await.unwrap()),
            &victim,
            "http://127.0.0.1:1",
        );
        let run = member_runner(store.clone(), ring.clone(), nodes[2].data.clone(), None);
        let mut settled = None;
        assert!(
            eventually(Duration::from_secs(15), async || {
                settled = back.step(Duration::from_millis(500), &run).await.unwrap();
                settled.is_some()
            })
            .await,
            "the superseded job comes back to its node"
        );
        assert_eq!(
            settled.unwrap(),
            (victim_job.clone(), JobState::Superseded { v: 1 })
        );
        for (_, a) in agents {
            a.abort();
        }
        m
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    let _ = std::process::Command::new(&sh)
        .args(["stop-cluster", "cvcb", "3"])
        .output();

    // Every range of every database once, none from the dead node.
    let mut read: BTreeMap<String, String> = BTreeMap::new();
    for member in &manifest.members {
        assert_ne!(member.node, victim);
        let meta =
            couchvault::catalog::load(&*store, &keyring, "default", &member.backup_id).unwrap();
        assert_eq!(meta.instance, member.member_instance);
        let held: BTreeSet<String> = meta
            .files
            .iter()
            .filter_map(|f| {
                f.path
                    .strip_prefix("data/")
                    .filter(|p| p.starts_with("shards/"))
            })
            .map(str::to_string)
            .collect();
        assert_eq!(
            held,
            member.shards.iter().cloned().collect(),
            "{}",
            member.node
        );
        for s in &member.shards {
            assert!(
                read.insert(s.clone(), member.node.clone()).is_none(),
                "{s} twice"
            );
        }
    }
    let all: BTreeSet<String> = maps.iter().flat_map(|m| m.files_on(None)).collect();
    assert_eq!(read.keys().cloned().collect::<BTreeSet<_>>(), all);

    // Committed: sealed, read back authenticated, and nothing left for gc.
    manifest::commit(&*store, &keyring, &manifest).unwrap();
    let loaded = manifest::load(&*store, &keyring, "default", "shop", &backup).unwrap();
    assert_eq!(loaded, manifest);
    let gc = couchvault::catalog::gc(&*store, Duration::ZERO, true).unwrap();
    assert!(gc.removed.is_empty(), "{:?}", gc.removed);
}

/// Takes a cluster backup of `nodes` with one agent per node and one coordinator, and
/// commits its manifest.
fn cluster_backup(
    nats: &Nats,
    nodes: &[Couch],
    store: &Arc<LocalStore>,
    ring: &std::path::Path,
    instance: &str,
) -> manifest::ClusterManifest {
    let keyring = KeyRing::load(ring).unwrap();
    let client = nodes[0].client();
    let (maps, details) = shards::read(&client).unwrap();
    let req = request(
        ulid::Ulid::new().to_string(),
        instance,
        keyring.active("default").unwrap().id.clone(),
    );
    let rt = threads();
    let m = rt.block_on(async {
        let stop = Arc::new(AtomicBool::new(false));
        let agents = spawn_agents(&nats.url, fast(), nodes, store, ring, None, &stop).await;
        let broker = Broker::connect(&nats.url, fast()).await.unwrap();
        let mut lease = broker
            .try_lead("coordinator")
            .await
            .unwrap()
            .expect("leads");
        let m = coordinator::run(&broker, &mut lease, &req, &maps, &details, None)
            .await
            .unwrap();
        stop.store(true, Ordering::Relaxed);
        for a in agents.into_values() {
            a.abort();
        }
        m
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    manifest::commit(&**store, &keyring, &m).unwrap();
    m
}

/// A plan and member jobs bigger than the broker takes in one message (here a nats-server
/// with `max_payload` 2 KiB; at the default 1 MiB, about 10,000 shard ranges): they go
/// through the broker's object store, the records and messages name them, and the backup
/// commits with every range once (before, the plan was refused and nothing was backed up).
#[test]
fn a_plan_and_jobs_past_the_brokers_message_limit_go_through_its_object_store() {
    let Some(sh) = script() else { return };
    let Some(nats) = Nats::start_with("cv-large", 14308, Some(2048)) else {
        return;
    };
    let nodes = Couch::cluster(&sh, "cvlg", 3, 11600);
    let dbs: Vec<String> = (0..30).map(|i| format!("db{i:02}")).collect();
    seed(
        &nodes,
        &dbs.iter().map(String::as_str).collect::<Vec<_>>(),
        1,
    );
    let dir = tempfile::tempdir().unwrap();
    let ring = dir.path().join("keys.toml");
    KeyRing::create(&ring, "default").unwrap();
    let store = Arc::new(LocalStore::new(dir.path().join("store"), 1 << 20));
    let m = cluster_backup(&nats, &nodes, &store, &ring, "shop");
    let (maps, _) = shards::read(&nodes[0].client()).unwrap();
    let _ = std::process::Command::new(&sh)
        .args(["stop-cluster", "cvlg", "3"])
        .output();

    let all: BTreeSet<String> = maps.iter().flat_map(|m| m.files_on(None)).collect();
    let mut read = BTreeSet::new();
    for member in &m.members {
        for s in &member.shards {
            assert!(read.insert(s.clone()), "{s} twice");
        }
    }
    assert_eq!(read, all);
    assert!(m.databases.len() >= 30);

    // The plan record and the jobs were references to objects in the broker's store.
    let objects: Vec<String> = rt().block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(&nats.url).await.unwrap());
        let plan = js
            .get_key_value("couchvault_jobs")
            .await
            .unwrap()
            .get(couchvault::cluster::job::plan_key(&m.backup_id))
            .await
            .unwrap()
            .unwrap();
        let plan = String::from_utf8_lossy(&plan).into_owned();
        assert!(plan.contains("couchvault_large"), "{plan}");
        let mut list = js
            .get_object_store("couchvault_large")
            .await
            .unwrap()
            .list()
            .await
            .unwrap();
        let mut names = Vec::new();
        while let Some(o) = futures_util::StreamExt::next(&mut list).await {
            names.push(o.unwrap().name);
        }
        names
    });
    let plan = format!("{}.plan.", m.backup_id);
    assert!(objects.iter().any(|o| o.starts_with(&plan)), "{objects:?}");

    // `backup list` shows it as one row with its members; its manifest damaged, it is
    // listed INVALID with why, never hidden, and its members are rows again.
    let mut config = couchvault::config::Config::embedded();
    config.state_dir = Some(dir.path().join("state"));
    let vault = couchvault::ops::Vault::open(
        config,
        Some(format!("file://{}", dir.path().join("store").display())),
        Some(ring.clone()),
    )
    .unwrap();
    let rows = vault.list_backups("default", None).unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        rows[0].cluster.as_ref().unwrap().members.len(),
        m.members.len()
    );
    let sealed = dir
        .path()
        .join("store/couchvault-default/shop")
        .join(&m.backup_id)
        .join("cluster.json");
    let text = std::fs::read_to_string(&sealed).unwrap();
    std::fs::write(&sealed, text.replacen("\"db00\"", "\"db99\"", 1)).unwrap();
    let rows = vault.list_backups("default", None).unwrap();
    assert_eq!(rows.len(), 1 + m.members.len(), "{rows:?}");
    let bad = rows.iter().find(|r| r.backup_id == m.backup_id).unwrap();
    assert_eq!(bad.status, couchvault::wire::RowStatus::Invalid);
    assert!(
        bad.error.as_ref().unwrap().contains("cluster backup"),
        "{bad:?}"
    );
    assert!(vault.cluster_backups("default", None).unwrap().is_empty());
    for member in &m.members {
        let job = MemberJob::id_for(&m.backup_id, &member.node, 0);
        assert!(
            objects.iter().any(|o| o.starts_with(&format!("{job}."))),
            "{job}: {objects:?}"
        );
    }
}

/// A cluster backup of a 3-node cluster (n=3, q=2) taken under a writer, with a binary
/// attachment and a built view, restored into a fresh 3-node cluster with other node names
/// and into a 2-node cluster: every database opens on every node with at least the
/// documents it had when the backup started and no more than the writer wrote, the
/// attachment is byte-exact and the view answers on every node. A new cluster's own
/// `_users` is replaced; a database with documents in the way is refused untouched. And one
/// node of the original cluster that lost its disk is restored in place from the members
/// while its peers are down (it then holds what the backup held), then caught up by CouchDB.
#[test]
fn a_cluster_backup_restores_into_clusters_of_other_names_and_sizes() {
    let Some(sh) = script() else { return };
    let Some(nats) = Nats::start("cv-restore", 14305) else {
        return;
    };
    let src = Couch::cluster(&sh, "cvsrc", 3, 11410);
    src[0].send(Method::PUT, "/orders", &json!({}));
    src[0].send(Method::PUT, "/files", &json!({}));
    let docs: Vec<_> = (0..300)
        .map(|k| json!({"_id": format!("d{k:04}"), "k": k}))
        .collect();
    src[1].send(Method::POST, "/orders/_bulk_docs", &json!({ "docs": docs }));
    src[2].send(
        Method::PUT,
        "/orders/_design/v",
        &json!({"views": {"by_k": {"map": "function(d){ if (d.k !== undefined) emit(d.k, null); }"}}}),
    );
    let rows = src[0].send(
        Method::GET,
        "/orders/_design/v/_view/by_k?limit=1",
        &json!(null),
    );
    assert_eq!(rows["total_rows"], 300, "{rows}");
    let blob: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let (status, _) = src[0].call(
        src[0]
            .req(Method::PUT, "/files/photo/raw.bin")
            .header("content-type", "application/octet-stream")
            .body(blob.clone()),
    );
    assert_eq!(status, 201);

    // A writer adds orders all through the backup.
    let start_count = src[0].doc_count("orders");
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let (url, writing) = (src[0].url.clone(), writing.clone());
        std::thread::spawn(move || {
            let http = reqwest::blocking::Client::new();
            let mut k = 0;
            while writing.load(Ordering::Relaxed) {
                let _ = http
                    .put(format!("{url}/orders/w{k:06}"))
                    .basic_auth("admin", Some("password"))
                    .json(&json!({"w": k}))
                    .send();
                k += 1;
            }
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let ring = dir.path().join("keys.toml");
    KeyRing::create(&ring, "default").unwrap();
    let store = Arc::new(LocalStore::new(dir.path().join("store"), 1 << 20));
    let m = cluster_backup(&nats, &src, &store, &ring, "shop");
    writing.store(false, Ordering::Relaxed);
    writer.join().unwrap();
    // A write is acknowledged by 2 of the 3 copies and a count reads one: the count once
    // every node says the same.
    let t = Instant::now();
    let end_count = loop {
        let counts: BTreeSet<u64> = src.iter().map(|n| n.doc_count("orders")).collect();
        if counts.len() == 1 {
            break counts.into_iter().next().unwrap();
        }
        assert!(t.elapsed() < Duration::from_secs(30), "{counts:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(m.databases["orders"].detail.doc_count >= start_count);
    let mut config = couchvault::config::Config::embedded();
    config.state_dir = Some(dir.path().join("state"));
    let vault = couchvault::ops::Vault::open(
        config,
        Some(format!("file://{}", dir.path().join("store").display())),
        Some(ring.clone()),
    )
    .unwrap();

    // One node loses its disk and comes back empty while the others take 50 more orders:
    // restored in place from the members, CouchDB's internal replication brings the rest.
    let lost = &src[2];
    lost.stop();
    for d in ["shards", ".shards"] {
        let _ = std::fs::remove_dir_all(lost.data.join(d));
    }
    lost.restart();
    for k in 0..50 {
        src[0].send(
            Method::PUT,
            &format!("/orders/late{k:03}"),
            &json!({"late": k}),
        );
    }
    // The other nodes are down while it is restored: what it has then came from the backup.
    src[0].stop();
    src[1].stop();
    let (stop, start) = lost.hooks();
    let report = vault
        .restore_cluster_node(
            Some(&lost.client()),
            &couchvault::ops::cluster::NodeRestoreRequest {
                tenant: "default".into(),
                instance: "shop".into(),
                backup_id: m.backup_id.clone(),
                node: couchvault::ops::cluster::TargetNode {
                    name: lost.node.clone(),
                    data_dir: lost.data.clone(),
                },
                owner: None,
                staging: Some(dir.path().join("staging-node")),
                hooks: couchvault::ops::restore::Hooks {
                    stop: Some(stop),
                    start: Some(start),
                },
                settle: Duration::from_secs(60),
            },
            &couchvault::ops::Progress::default(),
        )
        .unwrap();
    assert_eq!(
        report.files, 8,
        "both ranges of _replicator, _users, orders and files"
    );
    let local_orders = || -> u64 {
        let map = lost.get("/_node/_local/_dbs/orders");
        let suffix = &m.databases["orders"].suffix;
        map["by_range"]
            .as_object()
            .unwrap()
            .keys()
            .map(|r| {
                let shard = format!("shards%2F{r}%2Forders{suffix}");
                lost.get(&format!("/_node/{}/{shard}", lost.node))["doc_count"]
                    .as_u64()
                    .unwrap_or(0)
            })
            .sum()
    };
    let restored = local_orders();
    assert!(
        (start_count..=end_count).contains(&restored),
        "{restored} orders restored, not within {start_count}..={end_count}"
    );
    let rows = lost.send(
        Method::GET,
        "/orders/_design/v/_view/by_k?limit=1",
        &json!(null),
    );
    assert_eq!(rows["total_rows"], 300, "{rows}");
    // The others back: internal replication brings it the orders taken since.
    src[0].restart();
    src[1].restart();
    let t = Instant::now();
    while local_orders() != end_count + 50 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{} orders on the restored node, not {}",
            local_orders(),
            end_count + 50
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let _ = std::process::Command::new(&sh)
        .args(["stop-cluster", "cvsrc", "3"])
        .output();

    for (name, size, port) in [("cvnew", 3, 11440), ("cvtwo", 2, 11470)] {
        let new = Couch::cluster(&sh, name, size, port);
        let client = new[0].client();
        let mut req = couchvault::ops::cluster::ClusterRestoreRequest {
            tenant: "default".into(),
            instance: "shop".into(),
            backup_id: m.backup_id.clone(),
            nodes: new
                .iter()
                .map(|n| couchvault::ops::cluster::TargetNode {
                    name: n.node.clone(),
                    data_dir: n.data.clone(),
                })
                .collect(),
            n: None,
            replace: false,
            owner: None,
            staging: Some(dir.path().join(format!("staging-{name}"))),
            settle: Duration::from_secs(60),
        };
        let progress = couchvault::ops::Progress::default();
        if size == 3 {
            // A database with documents in the way: refused before anything changes.
            new[0].send(Method::PUT, "/files", &json!({}));
            new[0].send(Method::PUT, "/files/mine", &json!({"keep": true}));
            let err = vault.restore_cluster(&client, &req, &progress).unwrap_err();
            assert!(err.to_string().contains("--replace"), "{err}");
            assert_eq!(new[1].doc_count("files"), 1);
            assert!(!new[0].get("/_all_dbs").to_string().contains("orders"));
            req.replace = true;
        }
        let report = vault.restore_cluster(&client, &req, &progress).unwrap();
        assert!(report.checks.iter().all(|c| c.ok), "{:?}", report.checks);
        assert!(
            report.replaced.contains(&"_users".to_string()),
            "{:?}",
            report.replaced
        );
        // Every range on n = min(3, size) nodes.
        for ranges in report.placement.values() {
            assert!(ranges.values().all(|h| h.len() == size));
        }
        for node in &new {
            let count = node.doc_count("orders");
            assert!(
                (start_count..=end_count).contains(&count),
                "{}: {count} orders, not within {start_count}..={end_count}",
                node.node
            );
            let rows = node.send(
                Method::GET,
                "/orders/_design/v/_view/by_k?limit=1",
                &json!(null),
            );
            assert_eq!(rows["total_rows"], 300, "{}: {rows}", node.node);
            let got = node
                .req(Method::GET, "/files/photo/raw.bin")
                .send()
                .unwrap()
                .bytes()
                .unwrap();
            assert!(
                got.as_ref() == blob.as_slice(),
                "{}: attachment differs",
                node.node
            );
            assert_eq!(node.doc_count("files"), 1);
            // This node's own copies open (not only the cluster's answer).
            let map = node.get("/_node/_local/_dbs/orders");
            assert!(map["by_node"].get(&node.node).is_some(), "{map}");
        }
        let _ = std::process::Command::new(&sh)
            .args(["stop-cluster", name, &size.to_string()])
            .output();
    }
}

/// Runs the couchvault CLI with `dir/config.toml`; returns (success, stdout, stderr).
fn cli(dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_couchvault"))
        .arg("--config")
        .arg(dir.join("config.toml"))
        .args(args)
        .current_dir(dir)
        .env_remove("COUCHVAULT_CONFIG")
        .env_remove("COUCHDB_URL")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The user's path end to end with real processes: three `couchvault daemon`s, one per node
/// of a real 3-node cluster, sharing a broker and a store. `couchvault cluster backup` is
/// queued while one node's CouchDB is down (none of its copies is read); the daemon
/// coordinating it is killed (SIGKILL) once it has planned, taking its node's agent with
/// it: the only other daemon whose CouchDB is up takes the lead, resumes the plan, moves the
/// dead node's ranges to its replicas and commits. `cluster list` shows the backup with its
/// members, `cluster verify` reads it all, `cluster restore` puts it into a new 2-node
/// cluster, `cluster delete` removes it whole and `gc` finds nothing left.
#[test]
fn daemons_take_a_cluster_backup_when_the_coordinator_dies_and_the_cli_restores_it() {
    use common::daemon::Daemon;
    use couchvault::cluster::job::{plan_key, result_key};
    let Some(sh) = script() else { return };
    let Some(nats) = Nats::start("cv-daemons", 14306) else {
        return;
    };
    let nodes = Couch::cluster(&sh, "cvdm", 3, 11490);
    seed(&nodes, &["orders", "users"], 250);
    // CouchDB writes `_users`' design document a few seconds after start, then copies it
    // between replicas: a member reads one replica, so wait until every copy has it (a
    // write not yet on the replica read is not in the backup: docs/CLUSTERS.md).
    let t = Instant::now();
    while nodes.iter().any(|n| {
        let maps = n.get("/_node/_local/_dbs/_users");
        let suffix: String = maps["shard_suffix"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| char::from_u32(c.as_u64().unwrap() as u32).unwrap())
            .collect();
        let mut count = 0;
        for range in maps["by_range"].as_object().unwrap().keys() {
            let shard = format!("shards%2F{range}%2F_users{suffix}");
            count += n.get(&format!("/_node/{}/{shard}", n.node))["doc_count"]
                .as_u64()
                .unwrap_or(0);
        }
        count < 1
    }) {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "_users never got its design doc"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let root = tempfile::tempdir().unwrap();
    let store = root.path().join("store");
    KeyRing::create(&root.path().join("keyring.toml"), "default").unwrap();
    let config = |node: &Couch| {
        format!(
            "store = \"file://{}\"\n[couchdb]\nurl = \"{}\"\nuser = \"admin\"\npassword = \"password\"\n[cluster]\nbroker = \"{}\"\nnode = \"{}\"\ndata_dir = \"{}\"\nnode_ttl = \"3s\"\nlease = \"3s\"\nack_wait = \"5s\"\ndeadline = \"180s\"\n",
            store.display(),
            node.url,
            nats.url,
            node.node,
            node.data.display()
        )
    };
    let mut daemons: Vec<Daemon> = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let dir = root.path().join(format!("d{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::copy(root.path().join("keyring.toml"), dir.join("keyring.toml")).unwrap();
            // Each member backup waits before its commit: the coordinator is killed while
            // its own node's member still runs, whatever the machine's speed.
            Daemon::start(
                &dir,
                &config(node),
                "",
                &[("COUCHVAULT_TEST_PAUSE", "before-commit:1500")],
            )
        })
        .collect();
    let d0 = daemons[0].dir.clone();
    let status = || -> Value {
        let (ok, out, err) = cli(&d0, &["--json", "cluster", "status"]);
        assert!(ok, "{err}");
        serde_json::from_str(&out).unwrap()
    };
    let t = Instant::now();
    while status()["nodes"].as_array().unwrap().len() < 3 || status()["coordinator"].is_null() {
        assert!(t.elapsed() < Duration::from_secs(20), "{}", status());
        std::thread::sleep(Duration::from_millis(200));
    }
    let leader = status()["coordinator"].as_str().unwrap().to_string();
    let victim = daemons
        .iter()
        .position(|d| leader.ends_with(&d.url))
        .expect("a daemon leads");
    // Another node's CouchDB is down before the backup: none of its copies is read.
    let down = (victim + 1) % 3;
    nodes[down].stop();

    let request = || {
        let (ok, out, err) = cli(
            &d0,
            &[
                "--json",
                "cluster",
                "backup",
                "--instance",
                "shop",
                "--no-wait",
            ],
        );
        assert!(ok, "{err}");
        serde_json::from_str::<Value>(&out).unwrap()["backup_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let rt = rt();
    // A connection per look: the broker is restarted below.
    let look = |key: String| -> Option<Value> {
        rt.block_on(async {
            let broker = Broker::connect(&nats.url, fast()).await.ok()?;
            broker.record::<Value>(&key).await.ok().flatten()
        })
    };
    let wait = |what: &str, key: String| -> Value {
        let t = Instant::now();
        loop {
            if let Some(v) = look(key.clone()) {
                return v;
            }
            assert!(t.elapsed() < Duration::from_secs(120), "{what}: never");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let id = request();
    wait("planned", plan_key(&id));
    daemons[victim].kill9();
    let dead = nodes[victim].node.clone();
    let settled = wait("settled", result_key(&id));
    assert_eq!(settled["state"], "committed", "{settled}");

    // The broker crashes mid-backup and comes back on its files: the backup carries on and
    // commits (the one daemon left both coordinates and reads every range).
    let second = request();
    wait("planned", plan_key(&second));
    nats.kill();
    std::thread::sleep(Duration::from_secs(1));
    nats.up();
    let settled = wait("settled", result_key(&second));
    assert_eq!(settled["state"], "committed", "{settled}");

    let live = [0, 1, 2].into_iter().find(|i| *i != victim).unwrap();
    let dir = root.path().join(format!("d{live}"));
    let (ok, out, err) = cli(&dir, &["--json", "cluster", "list", "--instance", "shop"]);
    assert!(ok, "{err}");
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    assert_eq!(list[0]["backup_id"], id.as_str());
    assert_eq!(list[1]["backup_id"], second.as_str());
    let members = list[0]["members"].as_array().unwrap();
    assert!(
        members
            .iter()
            .all(|m| m["node"] != dead.as_str() && m["node"] != nodes[down].node.as_str()),
        "{list}"
    );
    let shards: usize = members
        .iter()
        .map(|m| m["shards"].as_array().unwrap().len())
        .sum();
    assert_eq!(
        shards,
        2 * 2 + 2 * 2,
        "every range of _replicator, _users, orders, users once"
    );
    let (ok, _, err) = cli(&dir, &["cluster", "verify", "--instance", "shop", &id]);
    assert!(ok, "{err}");
    // A member goes with its cluster backup, never alone.
    let member = members[0]["backup_id"].as_str().unwrap();
    let (ok, _, err) = cli(&dir, &["backup", "delete", member]);
    assert!(!ok && err.contains("cluster delete"), "{err}");

    let new = Couch::cluster(&sh, "cvd2", 2, 11520);
    std::fs::write(
        dir.join("config.toml"),
        format!(
            "couchvault_config = 1\nstate_dir = \"state\"\nkeyring = \"keyring.toml\"\nstore = \"file://{}\"\n[couchdb]\nurl = \"{}\"\nuser = \"admin\"\npassword = \"password\"\n",
            store.display(),
            new[0].url
        ),
    )
    .unwrap();
    let node_args: Vec<String> = new
        .iter()
        .flat_map(|n| {
            [
                "--node".to_string(),
                format!("{}={}", n.node, n.data.display()),
            ]
        })
        .collect();
    let mut args = vec!["cluster", "restore", &id, "--instance", "shop"];
    args.extend(node_args.iter().map(String::as_str));
    let (ok, out, err) = cli(&dir, &args);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("restored cluster backup"), "{out}");
    for node in &new {
        assert_eq!(node.doc_count("orders"), 250, "{}", node.node);
        assert_eq!(node.doc_count("users"), 250, "{}", node.node);
    }
    let _ = std::process::Command::new(&sh)
        .args(["stop-cluster", "cvd2", "2"])
        .output();

    // Through the daemon's API: a tenant may not ask for a cluster backup (it reads every
    // node's data); the admin's job, with a retention policy keeping the newest, commits a
    // third and deletes the first two whole.
    let api = &daemons[live];
    let tenant = api.tenant_token("default");
    let (s, v) = api.post(
        "/v1/backups",
        &tenant,
        &json!({"instance": "shop", "cluster": true}),
    );
    assert_eq!(s, 403, "{v}");
    let mut remaining = vec![id.clone(), second.clone()];
    if let Some(gfs) = common::policies::component("gfs_retention.wasm") {
        std::fs::write(dir.join("gfs.wasm"), gfs).unwrap();
        let params =
            r#"{"keep_last":1,"keep_daily":0,"keep_weekly":0,"keep_monthly":0,"keep_yearly":0}"#;
        let (ok, _, err) = cli(
            &dir,
            &["policy", "add", "newest", "gfs.wasm", "--params", params],
        );
        assert!(ok, "{err}");
        // The tenant's protection policy decides once for the whole: every member is made
        // at its level, with its tags.
        let std = common::policies::component("standard_protection.wasm").unwrap();
        std::fs::write(dir.join("std.wasm"), std).unwrap();
        let params = r#"{"level":9,"tags":{"tier":"gold"}}"#;
        let (ok, _, err) = cli(
            &dir,
            &["policy", "add", "gold", "std.wasm", "--params", params],
        );
        assert!(ok, "{err}");
        let (s, job) = api.post(
            "/v1/backups",
            &api.admin,
            &json!({"instance": "shop", "cluster": true, "policies": ["gold", "newest"]}),
        );
        assert_eq!(s, 202, "{job}");
        let done = api.wait_job(job["id"].as_str().unwrap(), &api.admin);
        assert_eq!(done["state"], "succeeded", "{done}");
        let third = done["backup_id"].as_str().unwrap().to_string();
        for member in done["result"]["members"].as_array().unwrap() {
            let id = member["backup_id"].as_str().unwrap();
            let (ok, out, err) = cli(&dir, &["--json", "backup", "show", id]);
            assert!(ok, "{err}");
            let meta: Value = serde_json::from_str(&out).unwrap();
            assert_eq!(meta["compression"]["level"], 9, "{meta}");
            assert_eq!(meta["tags"]["tier"], "gold", "{meta}");
            assert_eq!(meta["tags"]["protection-policy"], "gold", "{meta}");
        }
        let deleted: Vec<&str> = done["retention"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["keep"] == false)
            .map(|v| v["id"].as_str().unwrap())
            .collect();
        assert_eq!(deleted, [second.as_str(), id.as_str()], "{done}");
        remaining = vec![third];
    }
    // The API lists each cluster backup as one row with its members within it (never as
    // rows of their own), verifies it whole by its id.
    let (s, v) = api.post("/v1/reindex", &api.admin, &json!({}));
    assert_eq!(s, 200, "{v}");
    let (s, rows) = api.get("/v1/backups", &api.admin);
    assert_eq!(s, 200, "{rows}");
    let rows = rows.as_array().unwrap();
    assert_eq!(
        rows.iter()
            .map(|r| r["backup_id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        remaining,
        "{rows:?}"
    );
    assert!(
        rows.iter().all(|r| r["cluster"]["members"]
            .as_array()
            .is_some_and(|m| !m.is_empty())),
        "{rows:?}"
    );
    let whole = &rows[0]["cluster"];
    let (s, job) = api.post(
        &format!("/v1/backups/{}/verify", remaining[0]),
        &api.admin,
        &json!({}),
    );
    assert_eq!(s, 202, "{job}");
    let done = api.wait_job(job["id"].as_str().unwrap(), &api.admin);
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(
        done["result"]["members"].as_array().map(Vec::len),
        whole["members"].as_array().map(Vec::len),
        "{done}"
    );
    // Its data is in its members: what reads one backup says so and how to restore it.
    let (s, v) = api.get(&format!("/v1/backups/{}", remaining[0]), &api.admin);
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("cluster restore"),
        "{v}"
    );
    // The dashboard: the cluster's instance has the cluster backup as one row; its details
    // name the members and their nodes.
    if let Some((chromium, driver)) = common::webdriver::available() {
        let web = common::webdriver::Browser::start(&chromium, &driver);
        web.goto(&format!("{}/", api.url));
        web.fill("#token", &api.admin);
        web.click("#signin-submit");
        web.wait_text("#who", |t| t == "admin");
        web.goto(&format!("{}/#/backups/default%2Fshop", api.url));
        let row = format!("tr[data-backup='{}'][data-cluster]", remaining[0]);
        web.find(&row);
        assert_eq!(
            web.script(
                "return document.querySelectorAll('tr[data-backup]').length",
                json!([])
            ),
            remaining.len()
        );
        web.click_button(&row, "Details");
        let members = web.wait_text("#backup-detail table", |t| !t.is_empty());
        for m in whole["members"].as_array().unwrap() {
            assert!(members.contains(m["node"].as_str().unwrap()), "{members}");
        }
        web.screenshot(
            &std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard/cluster.png"),
        );
    }
    for (i, d) in daemons.iter_mut().enumerate() {
        if i != victim {
            let _ = d.terminate();
        }
    }
    let _ = std::process::Command::new(&sh)
        .args(["stop-cluster", "cvdm", "3"])
        .output();

    // gc leaves exactly the members the manifests name (it removes any member of a job
    // moved elsewhere); deleting the cluster backups leaves nothing.
    let (ok, _, err) = cli(&dir, &["gc", "--grace", "0s"]);
    assert!(ok, "{err}");
    // `backup list` shows the cluster backups, each with the members its manifest names,
    // and nothing else: no member left over.
    let (ok, out, err) = cli(&dir, &["--json", "backup", "list"]);
    assert!(ok, "{err}");
    let rows: Value = serde_json::from_str(&out).unwrap();
    let (ok, list, err) = cli(&dir, &["--json", "cluster", "list"]);
    assert!(ok, "{err}");
    let list: Value = serde_json::from_str(&list).unwrap();
    let ids = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|m| m["backup_id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&list), remaining);
    assert_eq!(ids(&rows), remaining, "{rows}");
    for (row, manifest) in rows
        .as_array()
        .unwrap()
        .iter()
        .zip(list.as_array().unwrap())
    {
        assert_eq!(
            ids(&row["cluster"]["members"]),
            ids(&manifest["members"]),
            "{row}"
        );
    }
    let (ok, out, err) = cli(&dir, &["backup", "list"]);
    assert!(
        ok && out.contains("cluster") && out.contains("└ "),
        "{out}{err}"
    );
    // `backup verify` and `backup delete` of a cluster backup's id act on the whole.
    let (ok, out, err) = cli(&dir, &["backup", "verify", &remaining[0]]);
    assert!(ok && out.contains("member backups"), "{out}{err}");
    for (i, backup) in remaining.iter().enumerate() {
        let (ok, _, err) = match i {
            0 => cli(&dir, &["backup", "delete", backup]),
            _ => cli(&dir, &["cluster", "delete", "--instance", "shop", backup]),
        };
        assert!(ok, "{err}");
    }
    let (ok, out, err) = cli(&dir, &["--json", "gc", "--grace", "0s"]);
    assert!(ok, "{err}");
    let gc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(gc["removed"], json!([]), "{gc}");
    let (ok, out, _) = cli(&dir, &["--json", "backup", "list"]);
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        json!([]),
        "{out}"
    );
}

/// A node's CouchDB dies while its daemon's agent still holds its job (the daemon alive and
/// heartbeating): the coordinator, watching the cluster's membership through CouchDB, moves
/// that node's ranges to the other replicas and commits without it.
#[test]
fn a_couchdb_node_that_dies_mid_backup_has_its_ranges_moved() {
    let Some(sh) = script() else { return };
    let Some(nats) = Nats::start("cv-couchdown", 14307) else {
        return;
    };
    let nodes = Couch::cluster(&sh, "cvkd", 3, 11560);
    seed(&nodes, &["orders"], 200);
    let couch = Arc::new(nodes[0].client());
    let (maps, details) = shards::read(&couch).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ring = dir.path().join("keys.toml");
    let keyring = KeyRing::create(&ring, "default").unwrap();
    let store = Arc::new(LocalStore::new(dir.path().join("store"), 1 << 20));
    let victim = nodes[2].node.clone();
    let release = Arc::new(AtomicBool::new(false));
    let backup = ulid::Ulid::new().to_string();
    let req = request(
        backup.clone(),
        "shop",
        keyring.active("default").unwrap().id.clone(),
    );
    let rt = threads();
    let (m, victim_state) = rt.block_on(async {
        let stop = Arc::new(AtomicBool::new(false));
        let held = Some((victim.as_str(), &release));
        let agents = spawn_agents(&nats.url, fast(), &nodes, &store, &ring, held, &stop).await;
        let watch = Broker::connect(&nats.url, fast()).await.unwrap();
        let coordinator = {
            let (url, req, maps, details, couch) = (
                nats.url.clone(),
                req.clone(),
                maps.clone(),
                details.clone(),
                couch.clone(),
            );
            tokio::spawn(async move {
                let broker = Broker::connect(&url, fast()).await.unwrap();
                let mut lease = broker.try_lead("coordinator").await.unwrap().unwrap();
                coordinator::run(&broker, &mut lease, &req, &maps, &details, Some(couch)).await
            })
        };
        let victim_job = MemberJob::id_for(&backup, &victim, 0);
        assert!(
            eventually(Duration::from_secs(20), async || matches!(
                watch.record::<JobState>(&victim_job).await.unwrap(),
                Some(JobState::Running { .. })
            ))
            .await,
            "the victim's agent took its job"
        );
        tokio::task::block_in_place(|| nodes[2].stop());
        let m = coordinator.await.unwrap().unwrap();
        let state = watch.record::<JobState>(&victim_job).await.unwrap();
        stop.store(true, Ordering::Relaxed);
        release.store(true, Ordering::Relaxed);
        for a in agents.into_values() {
            a.abort();
        }
        (m, state)
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    let _ = std::process::Command::new(&sh)
        .args(["stop-cluster", "cvkd", "3"])
        .output();
    assert_eq!(victim_state, Some(JobState::Superseded { v: 1 }));
    assert!(
        m.members.iter().all(|x| x.node != victim),
        "{:?}",
        m.members
    );
    let read: BTreeSet<String> = m.members.iter().flat_map(|x| x.shards.clone()).collect();
    let all: BTreeSet<String> = maps.iter().flat_map(|d| d.files_on(None)).collect();
    assert_eq!(read, all);
}

/// `cluster restore --via-daemons`: the new cluster's own daemons place their node's files
/// (no machine reaches every node's directory). A node whose daemon cannot stage its share
/// (here its database directory is wrong) fails the restore before anything is placed: the
/// other node drops what it staged, no database appears. Fixed, the same command restores
/// the backup: every node holds the documents, no staging directory is left.
#[test]
fn a_cluster_restore_through_the_new_clusters_daemons() {
    use common::daemon::Daemon;
    let Some(sh) = script() else { return };
    let Some(nats) = Nats::start("cv-viadaemons", 14310) else {
        return;
    };
    let src = Couch::cluster(&sh, "cvvs", 3, 11630);
    seed(&src, &["orders"], 120);
    let root = tempfile::tempdir().unwrap();
    let ring = root.path().join("keyring.toml");
    KeyRing::create(&ring, "default").unwrap();
    let store = Arc::new(LocalStore::new(root.path().join("store"), 1 << 20));
    let m = cluster_backup(&nats, &src, &store, &ring, "shop");
    let _ = std::process::Command::new(&sh)
        .args(["stop-cluster", "cvvs", "3"])
        .output();

    let new = Couch::cluster(&sh, "cvvn", 2, 11660);
    let config = |node: &Couch, data: &std::path::Path| {
        format!(
            "store = \"file://{}\"\n[couchdb]\nurl = \"{}\"\nuser = \"admin\"\npassword = \"password\"\n[cluster]\nbroker = \"{}\"\nnode = \"{}\"\ndata_dir = \"{}\"\ncoordinate = false\nnode_ttl = \"3s\"\nack_wait = \"5s\"\ndeadline = \"60s\"\n",
            root.path().join("store").display(),
            node.url,
            nats.url,
            node.node,
            data.display()
        )
    };
    let wrong = root.path().join("no-such-dir");
    let mut daemons: Vec<Daemon> = new
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let dir = root.path().join(format!("d{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::copy(&ring, dir.join("keyring.toml")).unwrap();
            let data = if i == 1 { &wrong } else { &node.data };
            Daemon::start(&dir, &config(node, data), "", &[])
        })
        .collect();
    let here = root.path().join("cli");
    std::fs::create_dir_all(&here).unwrap();
    std::fs::copy(&ring, here.join("keyring.toml")).unwrap();
    std::fs::write(
        here.join("config.toml"),
        format!(
            "couchvault_config = 1\nstate_dir = \"state\"\nkeyring = \"keyring.toml\"\nstore = \"file://{}\"\n[couchdb]\nurl = \"{}\"\nuser = \"admin\"\npassword = \"password\"\n[cluster]\nbroker = \"{}\"\ndeadline = \"60s\"\n",
            root.path().join("store").display(),
            new[0].url,
            nats.url
        ),
    )
    .unwrap();
    let restore = [
        "cluster",
        "restore",
        &m.backup_id,
        "--instance",
        "shop",
        "--via-daemons",
    ];
    let (ok, out, err) = cli(&here, &restore);
    assert!(!ok, "{out}");
    assert!(
        err.contains("nothing was placed") && err.contains(&new[1].node),
        "{err}"
    );
    // The node that could stage drops it: no staging left, no shard placed, no database.
    let staged = |node: &Couch| -> Vec<String> {
        std::fs::read_dir(node.data.parent().unwrap())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".couchvault-restore-"))
            .collect()
    };
    let t = Instant::now();
    while !staged(&new[0]).is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{:?}",
            staged(&new[0])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    assert!(staged(&new[0]).is_empty());
    let placed = |node: &Couch| -> usize {
        walk(&node.data.join("shards"))
            .iter()
            .filter(|p| p.contains("orders"))
            .count()
    };
    assert_eq!(placed(&new[0]), 0);
    let (status, _) = new[0].call(new[0].req(Method::GET, "/orders"));
    assert_eq!(status, 404);

    // Its directory fixed, the same command restores the backup on both nodes.
    daemons[1].terminate();
    std::fs::write(
        &daemons[1].config,
        std::fs::read_to_string(&daemons[1].config)
            .unwrap()
            .replace(
                &wrong.display().to_string(),
                &new[1].data.display().to_string(),
            ),
    )
    .unwrap();
    daemons[1].restart(&[]);
    let t = Instant::now();
    let (ok, out, err) = loop {
        let (ok, out, err) = cli(&here, &restore);
        // Until the restarted daemon has registered again.
        if ok || !err.contains("no daemon serves") || t.elapsed() > Duration::from_secs(20) {
            break (ok, out, err);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("restored cluster backup"), "{out}");
    for node in &new {
        assert_eq!(node.doc_count("orders"), 120, "{}", node.node);
        assert!(placed(node) > 0, "{}", node.node);
        assert!(staged(node).is_empty(), "{}", node.node);
    }
    for d in &mut daemons {
        let _ = d.terminate();
    }
    let _ = std::process::Command::new(&sh)
        .args(["stop-cluster", "cvvn", "2"])
        .output();
}

/// Every file under `dir`, as paths.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

/// Planning reads the shard maps a page at a time from `_dbs` and sizes and counts a batch
/// at a time from `/_dbs_info` (about 110 requests for 10,000 databases, not 20,000): on a
/// real cluster, with pages and batches small enough that every database is read through
/// several, and a node that takes fewer names per request than asked, it reads exactly
/// what one request per database reads.
#[test]
fn planning_reads_shard_maps_and_sizes_in_bulk_as_one_request_per_database_would() {
    let Some(sh) = script() else { return };
    let nodes = Couch::cluster(&sh, "cvrd", 2, 11700);
    let dbs: Vec<String> = (0..12).map(|i| format!("db{i:02}")).collect();
    seed(
        &nodes,
        &dbs.iter().map(String::as_str).collect::<Vec<_>>(),
        3,
    );
    nodes[0].send(
        Method::PUT,
        "/_node/_local/_config/chttpd/max_db_number_for_dbs_info_req",
        &json!("4"),
    );
    let client = nodes[0].client();
    let (maps, details) = shards::read_paged(&client, 5, 10).unwrap();
    let names: Vec<String> = maps.iter().map(|m| m.name.clone()).collect();
    assert_eq!(names.len(), dbs.len() + 2, "{names:?}");
    for m in &maps {
        let doc = nodes[0].get(&format!("/_node/_local/_dbs/{}", m.name));
        assert_eq!(Some(m.clone()), shards::from_doc(&m.name, &doc));
        let info = nodes[0].get(&format!("/{}", m.name));
        let d = &details[&m.name];
        assert_eq!(
            d.size,
            info["sizes"]["file"].as_u64().unwrap(),
            "{}",
            m.name
        );
        assert_eq!(
            d.doc_count,
            info["doc_count"].as_u64().unwrap(),
            "{}",
            m.name
        );
    }
    assert_eq!(details["db03"].doc_count, 3);
    let _ = std::process::Command::new(&sh)
        .args(["stop-cluster", "cvrd", "2"])
        .output();
}
