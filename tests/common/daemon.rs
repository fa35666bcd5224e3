//! A real `couchvault daemon` process for tests: started on a free loopback port in a
//! temporary directory, driven over HTTP, killed with SIGKILL or stopped with SIGTERM.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::Method;
use serde_json::Value;

pub struct Daemon {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub url: String,
    pub admin: String,
    child: Option<Child>,
    http: Client,
    env: Vec<(String, String)>,
}

/// A free loopback port (bound then released; the daemon binds it next).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Daemon {
    /// Writes `config.toml` in `dir` (`extra` top-level keys and sections, `daemon_keys` in
    /// `[daemon]` beside the listen address) and starts the daemon.
    pub fn start(dir: &Path, extra: &str, daemon_keys: &str, env: &[(&str, &str)]) -> Daemon {
        let port = free_port();
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "couchvault_config = 1\nstate_dir = \"state\"\nkeyring = \"keyring.toml\"\n{extra}\n[daemon]\nlisten = \"127.0.0.1:{port}\"\nreindex_interval = \"0\"\n{daemon_keys}\n"
            ),
        )
        .unwrap();
        let mut d = Daemon {
            dir: dir.to_path_buf(),
            config,
            url: format!("http://127.0.0.1:{port}"),
            admin: String::new(),
            child: None,
            http: Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        d.restart(&[]);
        d
    }

    /// Starts the daemon process (again), with extra environment, and waits for /healthz.
    pub fn restart(&mut self, env: &[(&str, &str)]) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_couchvault"));
        cmd.args(["--config", self.config.to_str().unwrap(), "daemon"])
            .current_dir(&self.dir)
            .env_remove("COUCHVAULT_CONFIG")
            .env_remove("COUCHVAULT_TEST_PAUSE")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(env.iter().copied())
        {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("start the daemon"));
        let started = Instant::now();
        loop {
            if let Ok(r) = self.http.get(format!("{}/healthz", self.url)).send() {
                if r.status().is_success() {
                    break;
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited with {status}: {}", self.log());
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "daemon did not answer: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.admin = std::fs::read_to_string(self.dir.join("state/admin.token"))
            .unwrap()
            .trim()
            .to_string();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        let mut c = self.child.take().expect("running");
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        // SAFETY: plain kill(2) on our own child's pid.
        let rc = unsafe { nix::libc::kill(c.id() as i32, nix::libc::SIGTERM) };
        assert_eq!(rc, 0, "kill SIGTERM");
        c.wait().unwrap()
    }

    pub fn req(&self, method: Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let rb = self.http.request(method, format!("{}{path}", self.url));
        match token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// Sends and returns (status, JSON body or Null).
    pub fn call(&self, rb: RequestBuilder) -> (u16, Value) {
        let r: Response = rb.send().expect("daemon reachable");
        let status = r.status().as_u16();
        let text = r.text().unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(self.req(Method::GET, path, Some(token)))
    }

    pub fn post(&self, path: &str, token: &str, body: &Value) -> (u16, Value) {
        self.call(self.req(Method::POST, path, Some(token)).json(body))
    }

    /// Creates a tenant token with the admin token.
    pub fn tenant_token(&self, tenant: &str) -> String {
        let (s, v) = self.post(
            "/v1/tokens",
            &self.admin,
            &serde_json::json!({ "tenant": tenant }),
        );
        assert_eq!(s, 201, "{v}");
        v["token"].as_str().unwrap().to_string()
    }

    /// Polls a job until it has finished; returns it.
    pub fn wait_job(&self, id: &str, token: &str) -> Value {
        let started = Instant::now();
        loop {
            let (s, v) = self.get(&format!("/v1/jobs/{id}"), token);
            assert_eq!(s, 200, "{v}");
            if v["state"] != "running" {
                return v;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "job {id} still running: {v}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
