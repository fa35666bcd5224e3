//! Tenant policies: the default GFS policy against hand-computed cases, hostile components
//! stopped within budget, the operator's floors, the compile cache, and the CLI.

mod common;

use common::policies::{component, host, protection_input, retain, ts};
use common::{couchvault, ok};

use std::path::Path;
use std::time::{Duration, Instant};

use couchvault::format::{Kind, PrefixCheck};
use couchvault::policy::floors::{self, Floors};
use couchvault::policy::{
    BackupInfo, Limits, PolicyEngine, PolicyHost, RetentionInput, CONCURRENT_EVALUATIONS,
};

fn gfs() -> Option<Vec<u8>> {
    component("gfs_retention.wasm")
}
fn standard() -> Option<Vec<u8>> {
    component("standard_protection.wasm")
}
fn hostile() -> Option<Vec<u8>> {
    component("hostile.wasm")
}

fn backups(times: &[&str]) -> Vec<BackupInfo> {
    let mut v: Vec<BackupInfo> = times
        .iter()
        .map(|t| BackupInfo {
            id: t.to_string(),
            created_at: ts(t),
            size: 1,
            kind: "full".into(),
            parent: None,
            tags: vec![],
            schedule: None,
        })
        .collect();
    v.sort_by_key(|b| std::cmp::Reverse(b.created_at));
    v
}

/// (what, params, backups, expected kept ids, a reason each must include)
type Case<'a> = (&'a str, String, Vec<&'a str>, Vec<&'a str>, &'a str);

#[test]
fn gfs_policy_matches_hand_computed_cases() {
    let Some(wasm) = gfs() else { return };
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    let policy = host.load("gfs-retention", &wasm).unwrap();
    assert_eq!(policy.kinds(), "retention");
    // Every rule off but the ones a case turns on.
    let only = |on: &str| -> String {
        let mut p: serde_json::Value = serde_json::from_str(
            r#"{"keep_last":0,"keep_hourly":0,"keep_daily":0,"keep_weekly":0,"keep_monthly":0,"keep_yearly":0}"#,
        )
        .unwrap();
        let on: serde_json::Value = serde_json::from_str(&format!("{{{on}}}")).unwrap();
        for (k, v) in on.as_object().unwrap() {
            p[k] = v.clone();
        }
        p.to_string()
    };
    let cases: Vec<Case<'_>> = vec![
        ("empty list", String::new(), vec![], vec![], ""),
        (
            "keep_last 2",
            only(r#""keep_last":2"#),
            vec![
                "2026-11-20T10:00:00Z",
                "2026-11-21T10:00:00Z",
                "2026-11-22T10:00:00Z",
                "2026-11-23T10:00:00Z",
            ],
            vec!["2026-11-23T10:00:00Z", "2026-11-22T10:00:00Z"],
            "last snapshot",
        ),
        (
            "daily 2: newest of each day, counted by days that have backups",
            only(r#""keep_daily":2"#),
            vec![
                "2026-11-23T10:00:00Z",
                "2026-11-23T08:00:00Z",
                "2026-11-21T12:00:00Z",
                "2026-11-20T09:00:00Z",
            ],
            vec!["2026-11-23T10:00:00Z", "2026-11-21T12:00:00Z"],
            "daily snapshot",
        ),
        (
            "daily 5 with 3 days: restic also keeps the oldest while periods are left",
            only(r#""keep_daily":5"#),
            vec![
                "2026-11-23T10:00:00Z",
                "2026-11-23T08:00:00Z",
                "2026-11-22T12:00:00Z",
                "2026-11-21T09:00:00Z",
                "2026-11-21T07:00:00Z",
            ],
            vec![
                "2026-11-23T10:00:00Z",
                "2026-11-22T12:00:00Z",
                "2026-11-21T09:00:00Z",
                "2026-11-21T07:00:00Z",
            ],
            "daily snapshot",
        ),
        (
            "weekly 2: ISO weeks start on Monday (Sunday 22nd belongs to the week before)",
            only(r#""keep_weekly":2"#),
            vec![
                "2026-11-23T09:00:00Z",
                "2026-11-22T20:00:00Z",
                "2026-11-21T10:00:00Z",
                "2026-11-16T10:00:00Z",
            ],
            vec!["2026-11-23T09:00:00Z", "2026-11-22T20:00:00Z"],
            "weekly snapshot",
        ),
        (
            "monthly 2 and yearly 1",
            only(r#""keep_monthly":2,"keep_yearly":1"#),
            vec![
                "2026-11-01T00:00:00Z",
                "2026-10-31T23:00:00Z",
                "2026-10-01T00:00:00Z",
                "2025-12-31T00:00:00Z",
            ],
            vec!["2026-11-01T00:00:00Z", "2026-10-31T23:00:00Z"],
            "monthly snapshot",
        ),
        (
            "hourly unlimited",
            only(r#""keep_hourly":-1"#),
            vec![
                "2026-11-26T10:50:00Z",
                "2026-11-26T10:10:00Z",
                "2026-11-26T09:30:00Z",
                "2026-11-26T09:05:00Z",
            ],
            vec![
                "2026-11-26T10:50:00Z",
                "2026-11-26T09:30:00Z",
                "2026-11-26T09:05:00Z",
            ],
            "hourly snapshot",
        ),
        (
            "within 2d of the newest backup (strictly newer)",
            only(r#""keep_within":"2d""#),
            vec![
                "2026-11-26T12:00:00Z",
                "2026-11-25T00:00:00Z",
                "2026-11-24T12:00:00Z",
                "2026-11-20T00:00:00Z",
            ],
            vec!["2026-11-26T12:00:00Z", "2026-11-25T00:00:00Z"],
            "within 2d",
        ),
        (
            "a future-dated backup is never removed by within",
            only(r#""keep_within":"1d""#),
            vec!["2027-01-01T00:00:00Z", "2026-11-26T00:00:00Z"],
            vec!["2027-01-01T00:00:00Z"],
            "within 1d",
        ),
        (
            "within with months is calendar arithmetic",
            only(r#""keep_within":"1m""#),
            // One calendar month before 03-15 is 02-15 (30 days would be 02-13).
            vec![
                "2026-03-15T00:00:00Z",
                "2026-02-16T00:00:00Z",
                "2026-02-14T00:00:00Z",
            ],
            vec!["2026-03-15T00:00:00Z", "2026-02-16T00:00:00Z"],
            "within 1m",
        ),
    ];
    for (what, params, list, expected, reason) in cases {
        let kept = retain(&host, &policy, &params, backups(&list))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let ids: Vec<&str> = kept.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, expected, "{what}");
        assert!(
            kept.iter().all(|(_, r)| r.contains(reason)),
            "{what}: {kept:?}"
        );
    }
    let err = retain(
        &host,
        &policy,
        "{\"keep_lats\": 1}",
        backups(&["2026-11-26T00:00:00Z"]),
    )
    .unwrap_err();
    assert!(err.to_string().contains("bad parameters"), "{err}");
    // Defaults (no parameters) keep the newest.
    let kept = retain(
        &host,
        &policy,
        "",
        backups(&["2026-11-26T00:00:00Z", "2026-11-25T00:00:00Z"]),
    )
    .unwrap();
    assert_eq!(kept.len(), 2);
}

#[test]
fn pooled_sandboxes_start_fresh_and_evaluations_beyond_the_pool_wait_for_one() {
    let Some(bad) = hostile() else { return };
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        deadline: Duration::from_secs(10),
        ..Limits::default()
    };
    let engine = PolicyEngine::new(&dir.path().join("cache"), limits).unwrap();
    let host = engine.host().unwrap();
    let policy = host.load("hostile", &bad).unwrap();
    // The pool hands the same memory slot to the next instance of a module: each call must
    // still see a static never written and grown memory never marked.
    for _ in 0..3 {
        let kept = retain(&host, &policy, "remember", vec![]).unwrap();
        assert_eq!(
            kept,
            [("remember".into(), "calls-before=0 dirty-bytes=0".into())]
        );
    }
    // Three times as many evaluations at once as the pool has sandboxes: each waits for a
    // slot and answers (an exhausted pool would refuse to instantiate).
    let list = backups(&["2026-11-26T00:00:00Z"]);
    let started = Instant::now();
    std::thread::scope(|s| {
        let calls: Vec<_> = (0..3 * CONCURRENT_EVALUATIONS)
            .map(|_| {
                s.spawn(|| {
                    let host = engine.host().unwrap();
                    retain(&host, &policy, "nap", list.clone())
                })
            })
            .collect();
        for call in calls {
            assert_eq!(call.join().unwrap().unwrap().len(), 1);
        }
    });
    // Three rounds of 100 ms naps at the least: no more ran at once than the pool holds.
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[test]
fn hostile_policies_are_stopped_within_budget_while_others_keep_answering() {
    let (Some(bad), Some(good)) = (hostile(), gfs()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // A deadline far above what fuel allows: each case must be stopped by its own limit
    // (filling 64 MiB took more than the default 100 ms on a loaded machine, and the deadline
    // fired first). Deadlines are tested on their own below.
    let limits = Limits {
        deadline: Duration::from_secs(2),
        ..Limits::default()
    };
    let host = PolicyHost::new(&dir.path().join("cache"), limits).unwrap();
    let bad = host.load("hostile", &bad).unwrap();
    let good = host.load("gfs-retention", &good).unwrap();
    let list = backups(&["2026-11-26T00:00:00Z", "2026-11-25T00:00:00Z"]);
    let cases = [
        ("loop", &["fuel budget", "deadline"][..]),
        ("memory", &["memory limit"][..]),
        ("recursion", &["stack"][..]),
        (
            "panic",
            &["trapped", "hostile policy panicked on purpose"][..],
        ),
        ("huge", &["byte cap"][..]),
    ];
    std::thread::scope(|s| {
        let (host, bad, good, list) = (&host, &bad, &good, &list);
        for (mode, expect) in cases {
            // Another tenant's good policy answers while the hostile one runs.
            let other = s.spawn(move || {
                let t = Instant::now();
                retain(host, good, "", list.clone()).unwrap();
                t.elapsed()
            });
            let started = Instant::now();
            let err = retain(host, bad, mode, list.clone()).expect_err(mode);
            let took = started.elapsed();
            let msg = err.to_string();
            assert!(
                msg.contains("policy 'hostile'"),
                "{mode}: names the policy: {msg}"
            );
            if mode == "panic" {
                assert!(expect.iter().all(|e| msg.contains(e)), "{mode}: {msg}");
            } else {
                assert!(expect.iter().any(|e| msg.contains(e)), "{mode}: {msg}");
            }
            assert!(
                took < Duration::from_secs(3),
                "{mode}: stopped within budget, took {took:?}"
            );
            assert!(
                other.join().unwrap() < Duration::from_secs(2),
                "{mode}: the good policy kept answering"
            );
        }
    });
    // What a policy can see: no environment, no filesystem, a clock stopped at zero.
    let probe = retain(&host, &bad, "probe", list.clone()).unwrap();
    assert!(
        probe[0].1.contains("env=0 fs=denied clock=0 net=denied"),
        "{probe:?}"
    );
    // A protection that loops is stopped too.
    let err = host.protect(&bad, &protection_input("loop")).unwrap_err();
    assert!(
        err.to_string().contains("fuel budget") || err.to_string().contains("deadline"),
        "{err}"
    );
    // The host is still healthy.
    assert_eq!(retain(&host, &good, "", list).unwrap().len(), 2);
}

#[test]
fn wrong_worlds_and_ungranted_imports_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    let err = host
        .load("core", b"\0asm\x01\0\0\0")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("policy 'core'") && err.contains("not a component"),
        "{err}"
    );
    for import in ["wasi:http/outgoing-handler@0.2.0", "evil:net/dial"] {
        let wat = format!("(component (import \"{import}\" (instance)))");
        let err = host.load("sneaky", wat.as_bytes()).unwrap_err().to_string();
        assert!(
            err.contains("policy 'sneaky' imports") && err.contains(import),
            "{err}"
        );
    }
    let err = host.load("empty", b"(component)").unwrap_err().to_string();
    assert!(err.contains("does not provide"), "{err}");
    let err = host
        .load("garbage", b"not wasm at all")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("policy 'garbage' is not a valid component"),
        "{err}"
    );
    if let Some(p) = standard() {
        let protection_only = host.load("standard-protection", &p).unwrap();
        let err = retain(&host, &protection_only, "", vec![])
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not provide a retention policy"), "{err}");
        let answer = host
            .protect(&protection_only, &protection_input(""))
            .unwrap();
        assert!(answer.encrypt && answer.compression_level == 3);
    }
}

#[test]
fn floors_override_what_policies_ask() {
    let Some(bad) = hostile() else { return };
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    let bad = host.load("hostile", &bad).unwrap();
    let list = backups(&[
        "2026-11-26T00:00:00Z",
        "2026-11-25T00:00:00Z",
        "2026-11-24T00:00:00Z",
        "2026-11-01T00:00:00Z",
    ]);
    let now = ts("2026-11-26T12:00:00Z");

    // A policy that keeps nothing: the newest, keep_min and the young ones survive.
    let keeps = host
        .retain(
            &bad,
            &RetentionInput {
                now,
                tenant: "t".into(),
                instance: "i".into(),
                params: "none".into(),
                backups: list.clone(),
            },
        )
        .unwrap();
    assert!(keeps.is_empty());
    let f = Floors {
        keep_min: 2,
        keep_younger_than: "3d".parse().unwrap(),
        ..Floors::default()
    };
    let v = floors::retention(&f, now, &list, &keeps).unwrap();
    let kept: Vec<bool> = v.iter().map(|v| v.keep).collect();
    assert_eq!(kept, [true, true, true, false]);
    assert!(
        v[0].reason.contains("newest")
            && v[1].reason.contains("keep at least 2")
            && v[2].reason.contains("younger than 3d")
    );
    assert!(v[3].reason.contains("not kept"));
    // Even with no floors configured the newest backup stays.
    let v = floors::retention(
        &Floors {
            keep_min: 0,
            ..Floors::default()
        },
        now,
        &list,
        &keeps,
    )
    .unwrap();
    assert_eq!(v.iter().filter(|v| v.keep).count(), 1);
    // Ids the instance does not have are an error, not a silent keep.
    let forged = vec![couchvault::policy::Keep {
        id: "nope".into(),
        reason: "x".into(),
    }];
    assert!(floors::retention(&f, now, &list, &forged)
        .unwrap_err()
        .to_string()
        .contains("nope"));

    // Protection: no encryption and level 42 are overridden; an unknown key is refused.
    let p = host.protect(&bad, &protection_input("noenc")).unwrap();
    let d = floors::protection(&Floors::default(), p, |_| true).unwrap();
    assert_eq!(d.compression_level, 19);
    assert!(
        d.overrides
            .iter()
            .any(|o| o.contains("encryption required")),
        "{:?}",
        d.overrides
    );
    let p = host.protect(&bad, &protection_input("badkey")).unwrap();
    let err = floors::protection(&Floors::default(), p, |k| k == "real-key")
        .unwrap_err()
        .to_string();
    assert!(err.contains("no-such-key"), "{err}");
}

#[test]
fn compiled_components_are_cached() {
    let Some(wasm) = gfs() else { return };
    let dir = tempfile::tempdir().unwrap();
    let first = host(dir.path());
    let t = Instant::now();
    first.load("gfs", &wasm).unwrap();
    let cold = t.elapsed();
    first.load("gfs", &wasm).unwrap();
    assert_eq!(first.compiles(), 1, "the second load used the cache");
    let second = host(dir.path());
    let t = Instant::now();
    let p = second.load("gfs", &wasm).unwrap();
    let warm = t.elapsed();
    assert_eq!(
        second.compiles(),
        0,
        "a new host (a restarted daemon) loads from the cache"
    );
    assert_eq!(
        retain(&second, &p, "", backups(&["2026-11-26T00:00:00Z"]))
            .unwrap()
            .len(),
        1
    );
    eprintln!("cold compile {cold:?}, cached load {warm:?}");
}

/// Uploads and jobs compile the same component at the same time in one process: each must
/// load, none may trip over another's half-written cache file (a daemon under a flood of
/// uploads answered 500 "policy cache …: No such file or directory" before).
#[test]
fn one_component_compiled_by_many_threads_at_once_loads_in_each() {
    let Some(wasm) = gfs() else { return };
    for round in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let results: Vec<Result<(), String>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..6)
                .map(|_| {
                    s.spawn(|| {
                        host(dir.path())
                            .load("gfs", &wasm)
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for r in results {
            assert!(r.is_ok(), "round {round}: {r:?}");
        }
    }
}

/// Adds the hostile policy behaving (so its dry run passes), then switches its registered
/// parameters to `mode`: a policy that behaves when added and misbehaves later.
fn add_then_misbehave(cwd: &Path, name: &str, file: &str, mode: &str) {
    ok(cwd, &["policy", "add", name, file, "--params", "x"]);
    let reg = cwd.join(format!("couchvault-data/policies/default/{name}.json"));
    let text = std::fs::read_to_string(&reg)
        .unwrap()
        .replace("\"params\": \"x\"", &format!("\"params\": \"{mode}\""));
    std::fs::write(&reg, text).unwrap();
}

#[test]
fn cli_adds_tests_and_applies_policies_around_backups() {
    let (Some(_), Some(_), Some(_)) = (gfs(), standard(), hostile()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    common::unpack_fixture(cwd);
    let gfs_file = common::built_policy("gfs_retention.wasm");
    let std_file = common::built_policy("standard_protection.wasm");
    let bad_file = common::built_policy("hostile.wasm");
    let (gfs_file, std_file, bad_file) = (
        gfs_file.to_str().unwrap(),
        std_file.to_str().unwrap(),
        bad_file.to_str().unwrap(),
    );

    ok(
        cwd,
        &[
            "policy",
            "add",
            "keep2",
            gfs_file,
            "--params",
            r#"{"keep_last":2,"keep_daily":0,"keep_weekly":0,"keep_monthly":0,"keep_yearly":0}"#,
        ],
    );
    ok(cwd, &["policy", "add", "std", std_file]);
    let list: serde_json::Value =
        serde_json::from_str(&ok(cwd, &["--json", "policy", "list"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);

    for _ in 0..3 {
        ok(
            cwd,
            &[
                "backup",
                "create",
                "--instance",
                "n",
                "--data-dir",
                "data",
                "--protection",
                "std",
                "--retention",
                "keep2",
            ],
        );
    }
    let backups: serde_json::Value =
        serde_json::from_str(&ok(cwd, &["--json", "backup", "list"])).unwrap();
    let backups = backups.as_array().unwrap();
    assert_eq!(backups.len(), 2, "retention deleted the oldest");
    assert_eq!(backups[0]["tags"]["protection"], "standard-protection");
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
            "--retention",
            "keep2",
        ],
    );
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    let verdicts = created["retention"].as_array().unwrap();
    assert_eq!(verdicts.iter().filter(|v| v["keep"] == false).count(), 1);

    // Dry run from a file of backups.
    std::fs::write(
        cwd.join("b.json"),
        r#"[{"id":"a","created_at":"2026-11-26T00:00:00Z"},{"id":"b","created_at":"2026-11-25T00:00:00Z"},{"id":"c","created_at":"2026-11-24T00:00:00Z"}]"#,
    )
    .unwrap();
    let out = ok(
        cwd,
        &[
            "policy",
            "test",
            gfs_file,
            "--backups",
            "b.json",
            "--now",
            "2026-11-26T12:00:00Z",
            "--params",
            r#"{"keep_last":1,"keep_daily":0,"keep_weekly":0,"keep_monthly":0,"keep_yearly":0}"#,
        ],
    );
    assert!(
        out.contains("keep") && out.contains("delete") && out.contains("last snapshot"),
        "{out}"
    );
    let out = ok(cwd, &["policy", "test", bad_file, "--params", "noenc"]);
    assert!(out.contains("floor applied: encryption kept on"), "{out}");

    // A hostile protection policy fails the backup before it starts, with one clear line.
    add_then_misbehave(cwd, "evil", bad_file, "loop");
    let out = couchvault(
        cwd,
        &[
            "backup",
            "create",
            "--instance",
            "n",
            "--data-dir",
            "data",
            "--protection",
            "evil",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("backup not started") && stderr.contains("policy 'evil' was stopped"),
        "{stderr}"
    );

    // Refused uploads.
    std::fs::write(cwd.join("core.wasm"), b"\0asm\x01\0\0\0").unwrap();
    let out = couchvault(cwd, &["policy", "add", "core", "core.wasm"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a component"));
    ok(cwd, &["policy", "rm", "evil"]);
    let out = couchvault(cwd, &["policy", "rm", "evil"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no policy 'evil'"));
}

/// Issue 10, findings 2 and 5: fuel and the epoch deadline stop running wasm, not a WASI
/// host call. Sleeps and blocked pollables end at the deadline, a cancel stops one at once,
/// a host call's cost is bounded, and every error is one line without escape sequences.
#[test]
fn host_calls_end_within_the_deadline_and_errors_are_one_clean_line() {
    let Some(bad) = hostile() else { return };
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    let bad = host.load("hostile", &bad).unwrap();
    let list = backups(&["2026-11-26T00:00:00Z"]);
    let deadline = Limits::default().deadline;
    let cases = [
        ("sleep", "deadline"),
        ("block", "deadline"),
        ("random-loop", "deadline"),
        ("exit", "called exit("),
        ("random-huge", "exceeds limit"),
        ("escape", "pwned"),
    ];
    for (mode, expect) in cases {
        let started = Instant::now();
        let err = retain(&host, &bad, mode, list.clone()).expect_err(mode);
        let took = started.elapsed();
        let msg = err.to_string();
        assert!(msg.contains(expect), "{mode}: {msg}");
        assert!(
            !msg.contains('\n') && !msg.contains('\x1b') && !msg.contains('\x07'),
            "{mode}: one line, no control characters: {msg:?}"
        );
        // Within the deadline and one bounded host call (a 64 KiB random answer).
        assert!(
            took < deadline * 3,
            "{mode}: ended in {took:?}, deadline {deadline:?}"
        );
    }
    let started = Instant::now();
    let err = host.protect(&bad, &protection_input("sleep")).unwrap_err();
    assert!(err.to_string().contains("deadline"), "{err}");
    assert!(started.elapsed() < deadline * 3);

    // A long deadline, and a cancel: the evaluation stops at once.
    let mut patient = PolicyHost::new(
        &dir.path().join("cache"),
        Limits {
            deadline: Duration::from_secs(600),
            ..Limits::default()
        },
    )
    .unwrap();
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    patient.cancel_on(flag.clone());
    let sleeper = patient.load("hostile", &hostile().unwrap()).unwrap();
    let canceller = {
        let flag = flag.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
        })
    };
    let started = Instant::now();
    let err = retain(&patient, &sleeper, "sleep", list).unwrap_err();
    canceller.join().unwrap();
    assert!(err.to_string().contains("cancelled"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "cancel took {:?}",
        started.elapsed()
    );
}

/// Issue 10, findings 2 and 5 through the CLI: a retention policy that sleeps for ever
/// after the commit ends within its deadline (the backup stays committed); a protection
/// policy cannot set the tags retention trusts nor put escape sequences on a terminal.
#[test]
fn cli_backups_are_not_held_by_a_sleeping_policy_nor_fooled_by_forged_tags() {
    let Some(_) = hostile() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    common::unpack_fixture(cwd);
    let bad_file = common::built_policy("hostile.wasm");
    let bad_file = bad_file.to_str().unwrap();

    // Behaves at `policy add`, sleeps afterwards.
    add_then_misbehave(cwd, "sleepy", bad_file, "sleep");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_couchvault"))
        .args([
            "backup",
            "create",
            "--instance",
            "n",
            "--data-dir",
            "data",
            "--retention",
            "sleepy",
        ])
        .current_dir(cwd)
        .env_remove("COUCHVAULT_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("backup create --retention held by a sleeping policy");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("committed") && stderr.contains("deadline"),
        "{stderr}"
    );

    // Forged host tags and escape sequences from a protection policy.
    ok(
        cwd,
        &["policy", "add", "forge", bad_file, "--params", "forge-tags"],
    );
    let out = ok(
        cwd,
        &[
            "--json",
            "backup",
            "create",
            "--instance",
            "m",
            "--data-dir",
            "data",
            "--protection",
            "forge",
        ],
    );
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    let tags = &created["tags"];
    assert_eq!(tags["protection-policy"], "forge", "{created}");
    assert!(tags.get("schedule").is_none(), "{created}");
    assert!(tags.get("color").is_none(), "{created}");
    assert_eq!(tags["team"], "blue", "{created}");
    // A tenant's own tags are held to the same rules.
    let out = couchvault(
        cwd,
        &[
            "backup",
            "create",
            "--instance",
            "m",
            "--data-dir",
            "data",
            "--tag",
            "schedule=nightly",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("reserved"));
    // Policy text never reaches the terminal raw.
    let out = couchvault(cwd, &["policy", "test", bad_file, "--params", "escape"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("pwned") && !stderr.contains('\x1b'),
        "{stderr:?}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr:?}");
}

/// Issue 13: the default protection policy's weekly full and daily incrementals, and a
/// component built for wit/v0.1.0 (the hostile one) still answering, its backups full.
#[test]
fn standard_protection_takes_a_weekly_full_and_incrementals_and_old_components_stay_full() {
    let (Some(std_wasm), Some(old_wasm)) = (standard(), hostile()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    let standard = host.load("standard", &std_wasm).unwrap();
    let now = ts("2026-11-26T02:00:00Z");
    let chain = |full_age_days: i64, incs: usize| -> Vec<BackupInfo> {
        let mut c: Vec<BackupInfo> = (0..incs)
            .map(|i| BackupInfo {
                id: format!("inc{i}"),
                created_at: now - (incs - i) as i64 * 86_400 + 60,
                size: 1,
                kind: "incremental".into(),
                parent: Some(if i == 0 {
                    "full".into()
                } else {
                    format!("inc{}", i - 1)
                }),
                tags: vec![],
                schedule: None,
            })
            .rev()
            .collect();
        c.push(BackupInfo {
            id: "full".into(),
            created_at: now - full_age_days * 86_400,
            size: 1,
            kind: "full".into(),
            parent: None,
            tags: vec![],
            schedule: None,
        });
        c
    };
    let decide = |params: &str, chain: Vec<BackupInfo>| {
        let mut input = protection_input(params);
        input.now = now;
        input.chain = chain;
        let p = host.protect(&standard, &input).unwrap();
        floors::protection(&Floors::default(), p, |_| true).unwrap()
    };
    let weekly = r#"{"incremental": true, "full_every_days": 7}"#;
    assert_eq!(decide(weekly, vec![]).kind, Kind::Full, "no chain yet");
    assert_eq!(decide(weekly, chain(1, 0)).kind, Kind::Incremental);
    assert_eq!(decide(weekly, chain(6, 5)).kind, Kind::Incremental);
    // A week after the full (a daily run a little early still counts).
    assert_eq!(decide(weekly, chain(7, 6)).kind, Kind::Full);
    let d = decide(r#"{"differential": true, "fast": true}"#, chain(2, 1));
    assert_eq!(
        (d.kind, d.prefix_check),
        (Kind::Differential, PrefixCheck::Fast)
    );
    assert_eq!(
        decide("", chain(1, 0)).kind,
        Kind::Full,
        "full unless asked"
    );

    let old = host.load("old-world", &old_wasm).unwrap();
    let mut input = protection_input("ok");
    input.chain = chain(1, 0);
    let p = host.protect(&old, &input).unwrap();
    assert_eq!(
        floors::protection(&Floors::default(), p, |_| true)
            .unwrap()
            .kind,
        Kind::Full
    );
}
