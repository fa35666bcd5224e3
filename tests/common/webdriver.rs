//! A small W3C WebDriver client over Debian's chromedriver and headless Chromium, for the
//! dashboard's end-to-end tests: sessions, navigation, elements, keys, clicks, scripts and
//! screenshots; waits poll until a deadline. Only 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::blocking::Client,
    _profile: tempfile::TempDir,
}

/// Chromium and chromedriver (Debian's `chromium`, `chromium-driver`), or None (the test is
/// skipped, saying why) when they are not installed. `.ci/run` installs them: under CI
/// (`CI=true`) missing is a failure.
pub fn available() -> Option<(PathBuf, PathBuf)> {
    let chromium = PathBuf::from("/usr/bin/chromium");
    let driver = PathBuf::from("/usr/bin/chromedriver");
    if chromium.exists() && driver.exists() {
        return Some((chromium, driver));
    }
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "CI installs chromium and chromium-driver, but they are missing"
    );
    eprintln!("skipping: this test needs Debian's chromium and chromium-driver");
    None
}

impl Browser {
    pub fn start(chromium: &Path, driver: &Path) -> Browser {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while http.get(format!("{base}/status")).send().is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir().unwrap();
        // The flags keep Chromium off the network (it is closed here) and work as root.
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--window-size=1280,1000".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": chromium, "args": args }
        } } });
        let r: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .unwrap()
            .json()
            .unwrap();
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {r}"))
            .to_string();
        Browser {
            driver: child,
            base,
            session,
            http,
            _profile: profile,
        }
    }

    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let rb = self.http.request(method, url);
        let rb = match body {
            Some(b) => rb.json(&b),
            None => rb,
        };
        let v: Value = rb.send().unwrap().json().unwrap();
        v["value"].clone()
    }

    fn ok(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let v = self.call(method, path, body);
        assert!(v.get("error").is_none(), "{path}: {v}");
        v
    }

    pub fn goto(&self, url: &str) {
        self.ok(reqwest::Method::POST, "/url", Some(json!({ "url": url })));
    }

    /// The first element matching `css`, waiting up to 20 s for one.
    pub fn find(&self, css: &str) -> String {
        self.wait(&format!("an element {css}"), || self.try_find(css))
    }

    pub fn try_find(&self, css: &str) -> Option<String> {
        let v = self.call(
            reqwest::Method::POST,
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        );
        v.get(ELEMENT).and_then(Value::as_str).map(str::to_string)
    }

    pub fn click(&self, css: &str) {
        let e = self.find(css);
        self.ok(
            reqwest::Method::POST,
            &format!("/element/{e}/click"),
            Some(json!({})),
        );
    }

    /// Replaces an input's value with `text`, as typed.
    pub fn fill(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.ok(
            reqwest::Method::POST,
            &format!("/element/{e}/clear"),
            Some(json!({})),
        );
        self.ok(
            reqwest::Method::POST,
            &format!("/element/{e}/value"),
            Some(json!({ "text": text })),
        );
    }

    /// Gives a file input the file at `path`, as a user picking it would.
    pub fn upload(&self, css: &str, path: &Path) {
        let e = self.find(css);
        self.ok(
            reqwest::Method::POST,
            &format!("/element/{e}/value"),
            Some(json!({ "text": path.to_str().unwrap() })),
        );
    }

    /// Accepts the confirmation dialog that is open, waiting for it; returns its text.
    pub fn accept_alert(&self) -> String {
        let text = self.wait("a dialog", || {
            let v = self.call(reqwest::Method::GET, "/alert/text", None);
            v.as_str().map(str::to_string)
        });
        self.ok(reqwest::Method::POST, "/alert/accept", Some(json!({})));
        text
    }

    /// Clicks the first `button` inside `scope` whose text is `label`.
    pub fn click_button(&self, scope: &str, label: &str) {
        self.wait(&format!("a button {label} in {scope}"), || {
            let found = self.script(
                // Clicked after the script returns: a click that opens a dialog must not
                // block the script's answer.
                "const b = [...document.querySelectorAll(arguments[0] + ' button')].find(b => b.textContent === arguments[1]); if (b) setTimeout(() => b.click(), 0); return !!b;",
                json!([scope, label]),
            );
            (found == true).then_some(())
        })
    }

    /// The visible text of the first element matching `css` ("" when there is none).
    pub fn text(&self, css: &str) -> String {
        match self.try_find(css) {
            Some(e) => self
                .call(reqwest::Method::GET, &format!("/element/{e}/text"), None)
                .as_str()
                .unwrap_or("")
                .to_string(),
            None => String::new(),
        }
    }

    /// Runs a script (its `return` value); `arguments` are `args`.
    pub fn script(&self, body: &str, args: Value) -> Value {
        self.ok(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": body, "args": args })),
        )
    }

    /// Runs an async script: it calls `arguments[arguments.length - 1]` with its result.
    pub fn script_async(&self, body: &str, args: Value) -> Value {
        self.ok(
            reqwest::Method::POST,
            "/execute/async",
            Some(json!({ "script": body, "args": args })),
        )
    }

    /// Polls `f` until it gives a value, for up to 20 s.
    pub fn wait<T>(&self, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(v) = f() {
                return v;
            }
            if Instant::now() > deadline {
                let url = self.call(reqwest::Method::GET, "/url", None);
                let page = self.call(reqwest::Method::GET, "/source", None);
                let page = page.as_str().unwrap_or("");
                panic!(
                    "waited 20 s for {what}; at {url}: {}",
                    &page[..page.len().min(3000)]
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the text of `css` satisfies `ok`; returns it.
    pub fn wait_text(&self, css: &str, ok: impl Fn(&str) -> bool) -> String {
        self.wait(&format!("the text of {css}"), || {
            let t = self.text(css);
            ok(&t).then_some(t)
        })
    }

    /// A PNG of the window, written to `path`.
    pub fn screenshot(&self, path: &Path) {
        let v = self.ok(reqwest::Method::GET, "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.base, self.session))
            .send();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
