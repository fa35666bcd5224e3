//! Access to the real Swift all-in-one started by `scripts/swift-aio.sh` (see `.ci/run`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use couchvault::store::retry::RetryPolicy;
use couchvault::store::swift::{Credentials, Secret, SwiftSettings, SwiftStore};

pub struct SwiftEnv {
    vars: HashMap<String, String>,
    _turn: Turn,
}

/// The tests of a binary share one Swift: most use it at once; a test that takes a server
/// down has it alone (a `start` waiting for readiness while another test killed a server,
/// or while other tests' uploads hit the restarting servers, timed out in CI).
static SHARED: RwLock<()> = RwLock::new(());

enum Turn {
    Shared(#[allow(dead_code)] RwLockReadGuard<'static, ()>),
    Alone(#[allow(dead_code)] RwLockWriteGuard<'static, ()>),
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

impl SwiftEnv {
    /// The env file written by `scripts/swift-aio.sh start`, named by
    /// `COUCHVAULT_TEST_SWIFT_ENV`. Without it the Swift tests skip, except under CI, where a
    /// missing Swift is a failure.
    pub fn load() -> Option<SwiftEnv> {
        Self::load_with(|| Turn::Shared(SHARED.read().unwrap_or_else(|e| e.into_inner())))
    }

    /// As `load`, for a test that takes servers down ([`SwiftEnv::outage`]): it waits for
    /// the others to finish and runs alone.
    pub fn load_alone() -> Option<SwiftEnv> {
        Self::load_with(|| Turn::Alone(SHARED.write().unwrap_or_else(|e| e.into_inner())))
    }

    fn load_with(turn: impl FnOnce() -> Turn) -> Option<SwiftEnv> {
        let path = std::env::var("COUCHVAULT_TEST_SWIFT_ENV").ok();
        let text = path.as_ref().and_then(|p| std::fs::read_to_string(p).ok());
        let Some(text) = text else {
            assert!(
                std::env::var("CI").is_err(),
                "CI must run the Swift tests: start scripts/swift-aio.sh and set COUCHVAULT_TEST_SWIFT_ENV"
            );
            eprintln!("skipping: no Swift (run scripts/swift-aio.sh start and set COUCHVAULT_TEST_SWIFT_ENV)");
            return None;
        };
        let vars = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Some(SwiftEnv {
            vars,
            _turn: turn(),
        })
    }

    pub fn get(&self, k: &str) -> &str {
        self.vars
            .get(k)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("{k} missing from the Swift env file"))
    }

    pub fn has(&self, k: &str) -> bool {
        self.vars.contains_key(k)
    }

    pub fn port(&self) -> u16 {
        self.get("SWIFT_PORT").parse().unwrap()
    }

    pub fn max_file_size(&self) -> usize {
        self.get("SWIFT_MAX_FILE_SIZE").parse().unwrap()
    }

    /// The tempauth v1 credentials of the test user, through `port` (a fault proxy or Swift).
    pub fn credentials(&self, port: u16) -> Credentials {
        Credentials::V1 {
            auth_url: format!("http://127.0.0.1:{port}/auth/v1.0"),
            user: self.get("SWIFT_USER").into(),
            key: Secret(self.get("SWIFT_KEY").into()),
        }
    }

    pub fn settings(
        &self,
        credentials: Credentials,
        container_base: &str,
        segment_size: usize,
    ) -> SwiftSettings {
        SwiftSettings {
            credentials,
            container_base: container_base.into(),
            prefix: String::new(),
            segment_size,
            segments_in_flight: 3,
            retry: quick_retry(Duration::from_secs(60)),
            request_timeout: Duration::from_secs(20),
        }
    }

    pub fn store(&self, container_base: &str, segment_size: usize) -> SwiftStore {
        SwiftStore::new(self.settings(self.credentials(self.port()), container_base, segment_size))
            .unwrap()
    }

    /// Runs `scripts/swift-aio.sh ARGS` with the settings Swift was started with.
    pub fn script(&self, args: &[&str]) -> String {
        let mut args = args.to_vec();
        if args.first() == Some(&"start") && self.has("KEYSTONE_AUTH_URL") {
            args.push("--keystone");
        }
        let out = Command::new("bash")
            .arg(repo().join("scripts/swift-aio.sh"))
            .args(&args)
            .env("SWIFT_PORT", self.get("SWIFT_PORT"))
            .env("SWIFT_SAIO_DIR", self.get("SWIFT_SAIO_DIR"))
            .env("SWIFT_MAX_FILE_SIZE", self.get("SWIFT_MAX_FILE_SIZE"))
            .env("SWIFT_TOKEN_LIFE", self.get("SWIFT_TOKEN_LIFE"))
            .output()
            .expect("run swift-aio.sh");
        assert!(
            out.status.success(),
            "swift-aio.sh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Kills one of Swift's servers, waits `down`, and starts it again. Only for a test that
    /// has Swift alone ([`SwiftEnv::load_alone`]).
    pub fn outage(&self, server: &str, down: std::time::Duration) {
        assert!(
            matches!(self._turn, Turn::Alone(_)),
            "an outage needs SwiftEnv::load_alone()"
        );
        let pid: i32 = self.script(&["pid", server]).trim().parse().unwrap();
        // SAFETY: kill(2) on a pid the script started.
        assert_eq!(
            unsafe { nix::libc::kill(pid, nix::libc::SIGKILL) },
            0,
            "kill {server}"
        );
        std::thread::sleep(down);
        self.script(&["start"]);
    }

    /// A token for raw requests (checks the tests make behind couchvault's back).
    pub fn token(&self) -> (String, String) {
        let resp = reqwest::blocking::Client::new()
            .get(format!("http://127.0.0.1:{}/auth/v1.0", self.port()))
            .header("X-Auth-User", self.get("SWIFT_USER"))
            .header("X-Auth-Key", self.get("SWIFT_KEY"))
            .send()
            .unwrap();
        let h = |n: &str| resp.headers()[n].to_str().unwrap().to_string();
        (h("x-auth-token"), h("x-storage-url"))
    }

    /// Names of the objects in a container (empty when it does not exist).
    pub fn objects(&self, container: &str) -> Vec<String> {
        self.listing(container).into_keys().collect()
    }

    /// Every object of a container as Swift lists it: name -> (ETag, Last-Modified); empty
    /// when the container does not exist.
    pub fn listing(&self, container: &str) -> BTreeMap<String, (String, String)> {
        let (token, url) = self.token();
        let resp = reqwest::blocking::Client::new()
            .get(format!("{url}/{container}?format=json"))
            .header("X-Auth-Token", token)
            .send()
            .unwrap();
        if resp.status() == 404 {
            return BTreeMap::new();
        }
        let v: serde_json::Value = resp.json().unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|o| {
                let s = |k: &str| o[k].as_str().unwrap().to_string();
                (s("name"), (s("hash"), s("last_modified")))
            })
            .collect()
    }
}

/// Retries fast enough for tests, bounded by `total`.
pub fn quick_retry(total: Duration) -> RetryPolicy {
    RetryPolicy {
        max_attempts: 30,
        max_elapsed: total,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(1000),
    }
}

/// A container base unique to one test run.
pub fn unique(label: &str) -> String {
    format!(
        "cvt-{label}-{}",
        ulid::Ulid::new().to_string().to_lowercase()
    )
}
