//! Helpers for the policy tests: the built components, a host, inputs.

use std::path::Path;

use couchvault::policy::{
    BackupInfo, Limits, Policy, PolicyError, PolicyHost, ProtectionInput, RetentionInput,
};

/// A component built by scripts/test.sh (scripts/build-policies.sh and
/// scripts/build-policy-examples.sh). Missing ones skip the test, except under CI.
pub fn component(file: &str) -> Option<Vec<u8>> {
    let path = super::built_policy(file);
    match std::fs::read(&path) {
        Ok(b) => Some(b),
        Err(_) => {
            assert!(
                std::env::var("CI").is_err(),
                "CI builds {} first (scripts/test.sh)",
                path.display()
            );
            eprintln!(
                "skipping: {} is not built (run scripts/test.sh)",
                path.display()
            );
            None
        }
    }
}

pub fn host(dir: &Path) -> PolicyHost {
    PolicyHost::new(&dir.join("cache"), Limits::default()).unwrap()
}

/// A host whose compiled-component cache is shared by every run of the suite
/// (`<target>/tmp/policy-cache`; entries are named by the component's hash and the engine's):
/// the JavaScript and Python components take seconds each to compile.
pub fn shared_host() -> PolicyHost {
    let cache = super::target_dir().join("tmp/policy-cache");
    PolicyHost::new(&cache, Limits::default()).unwrap()
}

pub fn ts(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp()
}

pub fn retain(
    host: &PolicyHost,
    policy: &Policy,
    params: &str,
    list: Vec<BackupInfo>,
) -> Result<Vec<(String, String)>, PolicyError> {
    let input = RetentionInput {
        now: ts("2026-11-26T12:00:00Z"),
        tenant: "t".into(),
        instance: "i".into(),
        params: params.into(),
        backups: list,
    };
    Ok(host
        .retain(policy, &input)?
        .into_iter()
        .map(|k| (k.id, k.reason))
        .collect())
}

pub fn protection_input(params: &str) -> ProtectionInput {
    ProtectionInput {
        now: 0,
        tenant: "t".into(),
        instance: "i".into(),
        schedule: None,
        source_size: 1 << 20,
        params: params.into(),
        chain: vec![],
    }
}
