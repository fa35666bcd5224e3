//! Tenant policies in JavaScript and Python (policies/examples/, built from source by
//! scripts/build-policy-examples.sh with componentize-js and componentize-py) against the
//! Rust defaults. A test binary of its own: compiling these large components takes a core
//! for a minute, which must not slow the sandbox tests' timed limits.

mod common;

use std::path::Path;
use std::process::Command;

use common::ok;
use common::policies::{component, protection_input, retain, shared_host, ts};
use couchvault::policy::{BackupInfo, ProtectionInput};

/// Issue 17: the JavaScript and Python ports of the default policies (policies/examples/,
/// built by scripts/build-policy-examples.sh) give the Rust defaults' verdicts, reasons and
/// protection answers on the same inputs, and their refusals come back as one line with the
/// guest's message.
#[test]
fn js_and_python_examples_answer_as_the_rust_defaults() {
    let (Some(gfs_rs), Some(std_rs)) = (
        component("gfs_retention.wasm"),
        component("standard_protection.wasm"),
    ) else {
        return;
    };
    let host = shared_host();
    let gfs_rs = host.load("gfs", &gfs_rs).unwrap();
    let std_rs = host.load("standard", &std_rs).unwrap();
    // Two years of irregular backups, some at the same second, one tagged.
    let start = ts("2024-11-03T01:30:00Z");
    let mut list: Vec<BackupInfo> = (0..90i64)
        .map(|i| BackupInfo {
            id: format!("b{i:03}"),
            created_at: start + i * i * 9_000 + (i % 7) * 3_600 - (i % 2) * (i * 3),
            size: 1 << 20,
            kind: if i % 5 == 0 { "full" } else { "incremental" }.into(),
            parent: None,
            tags: if i == 40 {
                vec![("legal-hold".into(), "case-7".into())]
            } else {
                vec![]
            },
            schedule: None,
        })
        .collect();
    list.sort_by_key(|b| std::cmp::Reverse(b.created_at));
    let params = [
        "",
        r#"{"keep_last": 1, "keep_daily": 3}"#,
        r#"{"keep_within": "1m2d", "keep_last": 0}"#,
        r#"{"keep_last": 0, "keep_daily": 0, "keep_weekly": -1, "keep_monthly": 0, "keep_yearly": 0}"#,
        r#"{"keep_hourly": 5, "keep_yearly": -1}"#,
        r#"{"keep_within": "1y", "keep_monthly": 2}"#,
    ];
    let chain = |full_age_days: i64| {
        vec![BackupInfo {
            id: "full".into(),
            created_at: ts("2026-11-26T12:00:00Z") - full_age_days * 86_400,
            size: 1,
            kind: "full".into(),
            parent: None,
            tags: vec![],
            schedule: None,
        }]
    };
    let protections = [
        ("", 1u64 << 20, vec![]),
        ("", 200 << 30, chain(1)),
        (r#"{"incremental": true}"#, 1 << 20, chain(1)),
        (r#"{"incremental": true}"#, 1 << 20, chain(7)),
        (
            r#"{"differential": true, "full_every_days": 3}"#,
            1 << 20,
            chain(2),
        ),
        (
            r#"{"incremental": true, "fast": true, "key_id": "k2", "tags": {"b": "2", "a": "1"}}"#,
            1 << 20,
            chain(0),
        ),
        (
            r#"{"level": 9, "large_level": 2, "large_bytes": 1000}"#,
            999,
            vec![],
        ),
    ];
    for lang in ["js", "py"] {
        let (Some(r), Some(p)) = (
            component(&format!("gfs_retention_{lang}.wasm")),
            component(&format!("standard_protection_{lang}.wasm")),
        ) else {
            return;
        };
        let r = host.load(&format!("gfs-{lang}"), &r).unwrap();
        let p = host.load(&format!("standard-{lang}"), &p).unwrap();
        for params in params {
            assert_eq!(
                retain(&host, &r, params, list.clone()).unwrap(),
                retain(&host, &gfs_rs, params, list.clone()).unwrap(),
                "{lang} retention with {params:?}"
            );
        }
        for (params, source_size, chain) in &protections {
            let input = ProtectionInput {
                source_size: *source_size,
                chain: chain.clone(),
                ..protection_input(params)
            };
            let input = ProtectionInput {
                now: ts("2026-11-26T12:00:00Z"),
                ..input
            };
            assert_eq!(
                format!("{:?}", host.protect(&p, &input).unwrap()),
                format!("{:?}", host.protect(&std_rs, &input).unwrap()),
                "{lang} protection with {params:?}"
            );
        }
        for (bad, says) in [
            (r#"{"keep_dayly": 3}"#, "unknown field `keep_dayly`"),
            (r#"{"keep_within": "3 weeks"}"#, "is not a duration like"),
        ] {
            let err = retain(&host, &r, bad, list.clone())
                .unwrap_err()
                .to_string();
            eprintln!("{lang}: {err}");
            assert!(err.contains(says) && !err.contains('\n'), "{lang}: {err}");
        }
        // A bug in the guest (a number where a string is expected): the exception's own
        // words, as one line, not a wasm backtrace.
        let err = retain(&host, &r, r#"{"keep_within": 5}"#, list.clone())
            .unwrap_err()
            .to_string();
        eprintln!("{lang}: {err}");
        let says = match lang {
            "js" => ["TypeError", "trim is not a function"],
            _ => ["AttributeError", "has no attribute 'strip'"],
        };
        assert!(
            says.iter().all(|s| err.contains(s)) && !err.contains('\n'),
            "{lang}: {err}"
        );
        let err = host
            .protect(
                &p,
                &protection_input(r#"{"incremental": true, "differential": true}"#),
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("exclude each other") && !err.contains('\n'),
            "{lang}: {err}"
        );
    }
}

/// Issue 17: a JavaScript policy needs more than the fixed budget of a Rust one for a large
/// instance (lowering 1,000 records into the interpreter alone costs ~177 million fuel units):
/// budgets grow with the input, so the ports answer over 1,000 backups under the default
/// limits, and a guest that spins on that input is still stopped, naming its budget.
#[test]
fn js_and_python_policies_fit_the_default_budget_over_1000_backups() {
    let Some(gfs_rs) = component("gfs_retention.wasm") else {
        return;
    };
    let host = shared_host();
    let gfs_rs = host.load("gfs", &gfs_rs).unwrap();
    let now = ts("2026-11-26T12:00:00Z");
    let list: Vec<BackupInfo> = (0..1000i64)
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
    let expected = retain(&host, &gfs_rs, "", list.clone()).unwrap();
    let fixed = couchvault::policy::Limits::default().fuel;
    for lang in ["js", "py"] {
        let Some(wasm) = component(&format!("gfs_retention_{lang}.wasm")) else {
            return;
        };
        let policy = host.load(&format!("gfs-{lang}"), &wasm).unwrap();
        assert_eq!(
            retain(&host, &policy, "", list.clone()).unwrap(),
            expected,
            "{lang}"
        );
        let used = host.last_usage().unwrap();
        eprintln!("{lang}: {used:?} for 1000 backups");
        if lang == "js" {
            assert!(used.fuel > fixed, "js used {} fuel", used.fuel);
        }
    }
    let Some(hostile) = component("hostile.wasm") else {
        return;
    };
    let hostile = host.load("hostile", &hostile).unwrap();
    let err = retain(&host, &hostile, "loop", list)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("its budget for an input of 1000 backups") && !err.contains('\n'),
        "{err}"
    );
}

fn backup(id: &str, at: &str, tags: &[(&str, &str)]) -> BackupInfo {
    BackupInfo {
        id: id.into(),
        created_at: ts(at),
        size: 1,
        kind: "full".into(),
        parent: None,
        tags: tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        schedule: None,
    }
}

/// Issue 17: the month-end example (Python, retention and protection in one component): legal
/// holds never deleted, dailies and month-ends kept, a full backup tagged `month-end` on the
/// last business day of the month (weekends and holidays skipped), tags from parameters.
#[test]
fn month_end_example_holds_closes_and_tags() {
    let Some(wasm) = component("month_end_py.wasm") else {
        return;
    };
    let host = shared_host();
    let policy = host.load("month-end", &wasm).unwrap();
    assert_eq!(policy.kinds(), "retention+protection");
    let list = vec![
        backup("b-1126-2", "2026-11-26T13:00:00Z", &[]),
        backup("b-1126", "2026-11-26T01:00:00Z", &[]),
        backup("b-1125", "2026-11-25T01:00:00Z", &[]),
        backup(
            "b-1030",
            "2026-10-30T01:00:00Z",
            &[("month-end", "2026-10")],
        ),
        backup(
            "b-0930",
            "2026-09-30T01:00:00Z",
            &[("month-end", "2026-09")],
        ),
        backup("b-0602", "2026-06-02T01:00:00Z", &[]),
        backup(
            "b-0601",
            "2026-06-01T01:00:00Z",
            &[("legal-hold", "case-7")],
        ),
    ];
    let kept = retain(
        &host,
        &policy,
        r#"{"keep_daily": 2, "keep_month_end": 1}"#,
        list.clone(),
    )
    .unwrap();
    let kept: Vec<(&str, &str)> = kept.iter().map(|(i, r)| (&i[..], &r[..])).collect();
    assert_eq!(
        kept,
        [
            ("b-1126-2", "daily 2026-11-26"),
            ("b-1125", "daily 2026-11-25"),
            ("b-1030", "month-end 2026-10"),
            ("b-0601", "legal hold legal-hold=case-7"),
        ]
    );
    // Hold tags from the parameters: a tag of another name holds nothing.
    let kept = retain(
        &host,
        &policy,
        r#"{"keep_daily": 0, "keep_month_end": 0, "hold_tags": ["audit"]}"#,
        list,
    )
    .unwrap();
    assert!(kept.is_empty(), "{kept:?}");

    let chain = vec![backup("full", "2026-11-20T01:00:00Z", &[])];
    let protect = |now: &str, params: &str| {
        let input = ProtectionInput {
            now: ts(now),
            chain: chain.clone(),
            ..protection_input(params)
        };
        host.protect(&policy, &input)
    };
    let month_end = |p: &couchvault::policy::Protection| {
        p.tags
            .iter()
            .find(|(k, _)| k == "month-end")
            .map(|(_, v)| v.clone())
    };
    let tags = r#"{"tags": {"team": "finance"}}"#;
    // Monday 30 November 2026 is November's last business day.
    let p = protect("2026-11-30T02:00:00Z", tags).unwrap();
    assert_eq!(p.kind, couchvault::policy::BackupKind::Full);
    assert_eq!(month_end(&p).as_deref(), Some("2026-11"));
    assert!(p.tags.contains(&("team".into(), "finance".into())), "{p:?}");
    // Friday 27 November: an incremental, untagged.
    let p = protect("2026-11-27T02:00:00Z", tags).unwrap();
    assert_eq!(p.kind, couchvault::policy::BackupKind::Incremental);
    assert_eq!(month_end(&p), None);
    // 31 December 2026 a holiday: the 30th closes the month.
    let holiday = r#"{"holidays": ["2026-12-31"]}"#;
    let p = protect("2026-12-30T23:00:00Z", holiday).unwrap();
    assert_eq!(month_end(&p).as_deref(), Some("2026-12"));
    let p = protect("2026-12-31T02:00:00Z", holiday).unwrap();
    assert_eq!(p.kind, couchvault::policy::BackupKind::Incremental);
    // Sunday 31 January 2027: Friday the 29th closes it.
    assert!(month_end(&protect("2027-01-29T02:00:00Z", "").unwrap()).is_some());
    assert!(month_end(&protect("2027-01-31T02:00:00Z", "").unwrap()).is_none());
    for (bad, says) in [
        (r#"{"holidays": ["31/12/2026"]}"#, "is not a date like"),
        (r#"{"level": 40}"#, "level must be a whole number 1-19"),
        (r#"{"keep_dayly": 3}"#, "unknown field `keep_dayly`"),
    ] {
        let err = protect("2026-11-30T02:00:00Z", bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains(says) && !err.contains('\n'), "{err}");
    }
}

/// Where a toolchain the suite installed lives; None (a skip) when missing outside CI.
fn toolchain(path: std::path::PathBuf) -> Option<std::path::PathBuf> {
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var("CI").is_err(),
        "CI installs {} first (scripts/build-policy-examples.sh)",
        path.display()
    );
    eprintln!("skipping: {} is missing", path.display());
    None
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Issue 17: `policy new` writes a starter in each language for the WIT in the binary; each
/// builds with its own toolchain as its README says, and all three give the same verdicts,
/// reasons and protection answer (`policy test --json`).
#[test]
fn policy_new_starters_build_and_answer_alike() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = common::target_dir();
    let (Some(node_modules), Some(py_tools)) = (
        toolchain(root.join("policies/examples/js/node_modules")),
        toolchain(target.join("policy-tools/py/bin/componentize-py")),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    for lang in ["rust", "js", "python"] {
        let out = ok(
            cwd,
            &["policy", "new", &format!("hold-{lang}"), "--lang", lang],
        );
        assert!(out.contains("starter"), "{out}");
    }
    // Nothing of the user's is overwritten.
    let out = common::couchvault(cwd, &["policy", "new", "hold-js", "--lang", "rust"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    assert_eq!(
        std::fs::read_to_string(cwd.join("hold-rust/wit/policy.wit")).unwrap(),
        std::fs::read_to_string(root.join("wit/policy.wit")).unwrap()
    );

    run(Command::new("cargo")
        .args(["build", "--quiet", "--release", "--target", "wasm32-wasip2"])
        .current_dir(cwd.join("hold-rust"))
        .env("CARGO_TARGET_DIR", target.join("policy-starter")));
    std::os::unix::fs::symlink(&node_modules, cwd.join("hold-js/node_modules")).unwrap();
    run(Command::new("node")
        .arg("build.mjs")
        .current_dir(cwd.join("hold-js")));
    let py_tools = py_tools.ancestors().nth(2).unwrap();
    run(Command::new(py_tools.join("bin/componentize-py"))
        .args(["-d", "wit", "-w", "policy", "componentize", "app", "-o"])
        .arg("hold-python.wasm")
        .current_dir(cwd.join("hold-python"))
        .env("PYTHONPATH", py_tools));

    std::fs::write(
        cwd.join("b.json"),
        r#"[{"id":"a","created_at":"2026-11-26T00:00:00Z"},
            {"id":"b","created_at":"2026-11-25T00:00:00Z"},
            {"id":"c","created_at":"2026-11-24T00:00:00Z","tags":{"legal-hold":"case-7"}},
            {"id":"d","created_at":"2026-11-23T00:00:00Z"}]"#,
    )
    .unwrap();
    let wasm = [
        target.join("policy-starter/wasm32-wasip2/release/hold_rust.wasm"),
        cwd.join("hold-js/hold-js.wasm"),
        cwd.join("hold-python/hold-python.wasm"),
    ];
    let mut answers = Vec::new();
    for file in &wasm {
        for params in [
            r#"{"keep_last": 1}"#,
            r#"{"level": 7, "tags": {"team": "finance"}}"#,
        ] {
            let out = ok(
                cwd,
                &[
                    "--json",
                    "policy",
                    "test",
                    file.to_str().unwrap(),
                    "--backups",
                    "b.json",
                    "--now",
                    "2026-11-26T12:00:00Z",
                    "--params",
                    params,
                ],
            );
            let mut report: serde_json::Value = serde_json::from_str(&out).unwrap();
            for key in ["policy", "sha256"] {
                report.as_object_mut().unwrap().remove(key);
            }
            answers.push(report);
        }
        let err = common::couchvault(
            cwd,
            &[
                "policy",
                "test",
                file.to_str().unwrap(),
                "--params",
                r#"{"keep": 1}"#,
            ],
        );
        let err = String::from_utf8_lossy(&err.stderr);
        assert!(err.contains("unknown field `keep`"), "{err}");
    }
    let kept = |report: &serde_json::Value| -> Vec<String> {
        report["retention"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["keep"] == true)
            .map(|v| format!("{} {}", v["id"], v["reason"]))
            .collect()
    };
    eprintln!("{:?}", kept(&answers[0]));
    assert_eq!(
        kept(&answers[0]).len(),
        2,
        "the newest and the held one: {:?}",
        kept(&answers[0])
    );
    assert_eq!(answers[1]["protection"]["compression_level"], 7);
    assert_eq!(answers[1]["protection"]["tags"][0][1], "finance");
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a, &answers[i % 2], "{:?} differs", wasm[i / 2]);
    }
}

/// Issue 17: JavaScript and Python policies registered for a tenant run around real backups
/// on the local store: a JS retention deletes what it does not keep, a Python protection
/// tags each backup, and the other way round.
#[test]
fn js_and_python_policies_run_around_backups_on_the_local_store() {
    let files = [
        "gfs_retention_js.wasm",
        "gfs_retention_py.wasm",
        "month_end_py.wasm",
        "standard_protection_js.wasm",
    ];
    if files.iter().any(|f| component(f).is_none()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    common::unpack_fixture(cwd);
    ok(cwd, &["--tenant", "acme", "key", "add"]);
    let keep2 =
        r#"{"keep_last":2,"keep_daily":0,"keep_weekly":0,"keep_monthly":0,"keep_yearly":0}"#;
    for (name, file, params) in [
        ("keep2-js", files[0], keep2),
        ("keep2-py", files[1], keep2),
        (
            "month-end",
            files[2],
            r#"{"tags": {"team": "finance"}, "incremental": false}"#,
        ),
        ("standard-js", files[3], ""),
    ] {
        let file = common::built_policy(file);
        ok(
            cwd,
            &[
                "--tenant",
                "acme",
                "policy",
                "add",
                name,
                file.to_str().unwrap(),
                "--params",
                params,
            ],
        );
    }
    for (instance, retention, protection, tag) in [
        ("n1", "keep2-js", "month-end", ("team", "finance")),
        (
            "n2",
            "keep2-py",
            "standard-js",
            ("protection", "standard-protection"),
        ),
    ] {
        for _ in 0..3 {
            ok(
                cwd,
                &[
                    "--tenant",
                    "acme",
                    "backup",
                    "create",
                    "--instance",
                    instance,
                    "--data-dir",
                    "data",
                    "--protection",
                    protection,
                    "--retention",
                    retention,
                ],
            );
        }
        let list: serde_json::Value = serde_json::from_str(&ok(
            cwd,
            &[
                "--tenant",
                "acme",
                "--json",
                "backup",
                "list",
                "--instance",
                instance,
            ],
        ))
        .unwrap();
        let list = list.as_array().unwrap();
        assert_eq!(
            list.len(),
            2,
            "{retention} deleted the oldest of {instance}"
        );
        for b in list {
            assert_eq!(b["tags"][tag.0], tag.1, "{protection}: {b}");
        }
    }
}
