//! Tenant policies in JavaScript and Python (policies/examples/, built from source by
//! scripts/build-policy-examples.sh with componentize-js and componentize-py) against the
//! Rust defaults. A test binary of its own: compiling these large components takes a core
//! for a minute, which must not slow the sandbox tests' timed limits.

mod common;

use common::policies::{component, host, protection_input, retain, ts};
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
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
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
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
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
