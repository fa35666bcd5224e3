//! A real NATS server with JetStream for a test (Debian's nats-server, started by
//! scripts/nats.sh on 127.0.0.1). Each test has its own: several take theirs down.

use std::path::Path;
use std::process::Command;

pub struct Nats {
    pub name: String,
    pub port: u16,
    pub url: String,
}

fn script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/nats.sh")
}

fn installed() -> bool {
    Command::new("sh")
        .args([
            "-c",
            "command -v nats-server || test -x /usr/sbin/nats-server",
        ])
        .output()
        .is_ok_and(|o| o.status.success())
}

impl Nats {
    /// A broker named `name` on `port`; None (the test says it skipped) where nats-server
    /// is not installed, except under CI, which installs it.
    pub fn start(name: &str, port: u16) -> Option<Nats> {
        Nats::start_with(name, port, None)
    }

    /// [`Nats::start`], with the server's `max_payload` (bytes) when given.
    pub fn start_with(name: &str, port: u16, max_payload: Option<usize>) -> Option<Nats> {
        if !installed() {
            assert!(
                std::env::var("CI").is_err(),
                "CI installs nats-server (scripts/test.sh)"
            );
            eprintln!("skipping: nats-server is not installed (bash scripts/nats.sh install)");
            return None;
        }
        let _ = Command::new("bash")
            .arg(script())
            .args(["stop", name, "--purge"])
            .status();
        let nats = Nats {
            name: name.into(),
            port,
            url: format!("nats://127.0.0.1:{port}"),
        };
        nats.start_once(max_payload);
        Some(nats)
    }

    /// Starts it again (after `kill`), with the streams (and max_payload) it had.
    pub fn up(&self) {
        self.start_once(None)
    }

    fn start_once(&self, max_payload: Option<usize>) {
        let mut cmd = Command::new("bash");
        if let Some(bytes) = max_payload {
            cmd.env("NATS_MAX_PAYLOAD", bytes.to_string());
        }
        let out = cmd
            .arg(script())
            .args(["start", &self.name, &self.port.to_string()])
            .output()
            .expect("run scripts/nats.sh");
        assert!(
            out.status.success(),
            "nats.sh start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// SIGKILL: a crashed broker.
    pub fn kill(&self) {
        let st = Command::new("bash")
            .arg(script())
            .args(["kill", &self.name])
            .status()
            .expect("run scripts/nats.sh");
        assert!(st.success());
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .args(["stop", &self.name, "--purge"])
            .status();
    }
}
