//! The OpenStack Swift store: one container per tenant (`<base>-<tenant>`), segments in
//! `<base>-<tenant>_segments`, large objects as Static Large Objects.
//!
//! Every request goes through [`Client::send`]: a 401 re-authenticates once; connection
//! errors, 5xx, 408 and 429 are retried with backoff within the [`RetryPolicy`].

mod auth;
mod upload;

use std::collections::HashSet;
use std::io::{self, Read};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use reqwest::blocking::{RequestBuilder, Response};
use reqwest::{Method, StatusCode};
use serde::Deserialize;

pub use auth::{Credentials, Secret};

use super::retry::{Attempts, RetryPolicy, Step};
use super::{LargeUpload, ObjectInfo, Store, StoreError, SEGMENTS_SUFFIX};
use crate::config::SwiftConfig;
use auth::{authenticate, error_chain, Session};

/// Largest Swift container name.
const MAX_CONTAINER: usize = 256;
/// Fresh tokens a request may be refused (401) before the credentials are blamed.
const MAX_REAUTHS: u32 = 3;
/// Between re-auths after the first: long enough for a cached token to expire.
const REAUTH_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct SwiftSettings {
    pub credentials: Credentials,
    /// Containers are `<base>-<tenant>`.
    pub container_base: String,
    /// Prepended to every object name (e.g. `site-a/`), or empty.
    pub prefix: String,
    pub segment_size: usize,
    pub segments_in_flight: usize,
    pub retry: RetryPolicy,
    /// Per-request timeout for everything but streamed bodies.
    pub request_timeout: Duration,
}

pub struct SwiftStore {
    client: Arc<Client>,
}

struct Client {
    http: reqwest::blocking::Client,
    settings: SwiftSettings,
    session: Mutex<Option<Arc<Session>>>,
    containers_made: Mutex<HashSet<String>>,
}

/// Parses `swift://CONTAINER[/PREFIX]` into (container base, object prefix).
pub fn parse_url(url: &str) -> Result<(String, String), StoreError> {
    let rest = url
        .strip_prefix("swift://")
        .ok_or_else(|| StoreError::Url(url.to_string()))?;
    let (base, prefix) = match rest.split_once('/') {
        Some((b, p)) => (b, p.trim_matches('/')),
        None => (rest, ""),
    };
    let budget = MAX_CONTAINER - "-".len() - 64 - SEGMENTS_SUFFIX.len();
    if base.is_empty()
        || base.len() > budget
        || !base
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(StoreError::Config(format!(
            "invalid Swift container name '{base}' in {url}: use 1-{budget} characters from a-z A-Z 0-9 . _ - (the tenant and '{SEGMENTS_SUFFIX}' are appended)"
        )));
    }
    if prefix.split('/').any(|p| p == "..")
        || !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
    {
        return Err(StoreError::Config(format!(
            "invalid object prefix '{prefix}' in {url}: use a-z A-Z 0-9 . _ - and /"
        )));
    }
    let prefix = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    };
    Ok((base.to_string(), prefix))
}

impl SwiftStore {
    pub fn new(settings: SwiftSettings) -> Result<Self, StoreError> {
        let http = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(None)
            .build()
            .map_err(|e| StoreError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(SwiftStore {
            client: Arc::new(Client {
                http,
                settings,
                session: Mutex::new(None),
                containers_made: Mutex::new(HashSet::new()),
            }),
        })
    }

    fn container(&self, tenant: &str) -> String {
        format!("{}-{tenant}", self.client.settings.container_base)
    }

    fn segments_container(&self, tenant: &str) -> String {
        format!(
            "{}-{tenant}{SEGMENTS_SUFFIX}",
            self.client.settings.container_base
        )
    }

    fn object(&self, name: &str) -> String {
        format!("{}{name}", self.client.settings.prefix)
    }
}

/// What a request is about, for error messages.
fn what(method: &Method, container: &str, object: &str) -> String {
    if container.is_empty() {
        format!("{method} account")
    } else if object.is_empty() {
        format!("{method} container {container}")
    } else {
        format!("{method} {container}/{object}")
    }
}

impl SwiftSettings {
    /// Settings from the config's `[swift]` section, the environment (`env`; the section's
    /// values win) and the store URL's parts.
    pub fn from_config(
        c: &SwiftConfig,
        container_base: String,
        prefix: String,
        segment_size: u64,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<SwiftSettings, StoreError> {
        let missing = |what: &str| {
            StoreError::Config(format!(
                "no Swift {what}: set it in the config file's [swift] section or the environment (ST_AUTH, ST_USER, ST_KEY for v1; OS_AUTH_URL, OS_USERNAME, OS_PASSWORD, OS_PROJECT_NAME for Keystone v3)"
            ))
        };
        let pick = |file: &Option<String>, var: &str| file.clone().or_else(|| env(var));
        let (auth_url, from_os) = match (&c.auth_url, env("OS_AUTH_URL"), env("ST_AUTH")) {
            (Some(u), _, _) => (u.clone(), false),
            (None, Some(u), _) => (u, true),
            (None, None, Some(u)) => (u, false),
            (None, None, None) => return Err(missing("auth URL")),
        };
        let version = c.auth_version.unwrap_or(
            if from_os || auth_url.trim_end_matches('/').ends_with("/v3") {
                3
            } else {
                1
            },
        );
        let credentials = match version {
            1 => Credentials::V1 {
                user: pick(&c.user, "ST_USER").ok_or_else(|| missing("user (ST_USER)"))?,
                key: Secret(pick(&c.key, "ST_KEY").ok_or_else(|| missing("key (ST_KEY)"))?),
                auth_url,
            },
            3 => Credentials::V3(
                crate::keystone::IdentityFields {
                    auth_url: Some(&auth_url),
                    username: &c.username,
                    password: &c.password,
                    project_name: &c.project_name,
                    user_domain_name: &c.user_domain_name,
                    project_domain_name: &c.project_domain_name,
                    region: &c.region,
                    interface: &c.interface,
                }
                .resolve(env)
                .map_err(|what| missing(&what))?,
            ),
            v => {
                return Err(StoreError::Config(format!(
                    "swift.auth_version = {v}: use 1 (tempauth) or 3 (Keystone)"
                )))
            }
        };
        Ok(SwiftSettings {
            credentials,
            container_base,
            prefix,
            segment_size: segment_size as usize,
            segments_in_flight: c.segments_in_flight.max(1),
            retry: RetryPolicy {
                max_attempts: c.max_attempts.max(1),
                max_elapsed: c.max_retry_time.get(),
                ..RetryPolicy::default()
            },
            request_timeout: c.request_timeout.get(),
        })
    }
}

impl Client {
    /// The current session, authenticating (with retries) when there is none.
    fn session(&self, attempts: &mut Attempts<'_>) -> Result<Arc<Session>, StoreError> {
        if let Some(s) = self.session.lock().expect("session lock").as_ref() {
            return Ok(s.clone());
        }
        let auth_url = self.settings.credentials.auth_url().to_string();
        attempts.run(
            &auth_url,
            |_| match authenticate(
                &self.http,
                &self.settings.credentials,
                self.settings.request_timeout,
            ) {
                Ok(s) => {
                    let s = Arc::new(s);
                    *self.session.lock().expect("session lock") = Some(s.clone());
                    tracing::debug!(storage_url = %s.storage_url, "authenticated to Swift");
                    Step::Done(s)
                }
                Err(StoreError::Unreachable { reason, .. }) => Step::Retry(reason),
                Err(e) => Step::Fail(e),
            },
            unavailable(format!("authenticating at {auth_url}")),
        )
    }

    /// Drops `stale` so the next request authenticates again (unless another thread did).
    fn invalidate(&self, stale: &Session) {
        let mut guard = self.session.lock().expect("session lock");
        if guard.as_ref().is_some_and(|s| s.token == stale.token) {
            *guard = None;
        }
    }

    /// The account (empty container), a container, or an object.
    fn url(session: &Session, container: &str, object: &str) -> String {
        let base = session.storage_url.trim_end_matches('/');
        if container.is_empty() {
            base.to_string()
        } else if object.is_empty() {
            format!("{base}/{container}")
        } else {
            format!("{base}/{container}/{object}")
        }
    }

    /// Sends a request built by `build` (called again for each attempt), re-authenticating
    /// once on 401 and retrying transient failures. Returns any other response.
    fn send(
        &self,
        method: Method,
        container: &str,
        object: &str,
        build: &dyn Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response, StoreError> {
        let what = what(&method, container, object);
        let mut reauths = 0;
        Attempts::new(&self.settings.retry).run(
            &what,
            |attempts| {
                let session = match self.session(attempts) {
                    Ok(s) => s,
                    Err(e) => return Step::Fail(e),
                };
                let req = self
                    .http
                    .request(method.clone(), Self::url(&session, container, object))
                    .header("X-Auth-Token", &session.token);
                match build(req).send() {
                    Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED => {
                        self.invalidate(&session);
                        if reauths == MAX_REAUTHS {
                            return Step::Fail(StoreError::Auth {
                                url: self.settings.credentials.auth_url().to_string(),
                                reason: format!("Swift refused {MAX_REAUTHS} fresh tokens for {what} (401): the user lacks access to this account or container"),
                            });
                        }
                        // tempauth answers a re-auth with its cached token, which may be
                        // about to expire: the next one, a moment later, is new.
                        if reauths > 0 {
                            std::thread::sleep(REAUTH_PAUSE);
                        }
                        reauths += 1;
                        tracing::info!(%what, "token rejected (401); authenticating again");
                        Step::Again
                    }
                    Ok(resp) if retryable(resp.status()) => {
                        Step::Retry(format!("answered {}", resp.status()))
                    }
                    Ok(resp) => Step::Done(resp),
                    Err(e) => Step::Retry(error_chain(&e)),
                }
            },
            unavailable(what.clone()),
        )
    }

    /// Creates a container once per process (PUT is idempotent: 201 or 202).
    fn ensure_container(&self, container: &str) -> Result<(), StoreError> {
        if self
            .containers_made
            .lock()
            .expect("lock")
            .contains(container)
        {
            return Ok(());
        }
        let resp = self.send(Method::PUT, container, "", &|r| {
            r.timeout(self.settings.request_timeout)
        })?;
        check(resp, &what(&Method::PUT, container, ""))?;
        self.containers_made
            .lock()
            .expect("lock")
            .insert(container.to_string());
        Ok(())
    }

    /// Sends a request whose answer is small and read whole. An answer cut off while its
    /// body is read is retried like a failed request. None for 404.
    fn fetch(
        &self,
        method: Method,
        container: &str,
        object: &str,
        build: &dyn Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let what = what(&method, container, object);
        Attempts::new(&self.settings.retry).run(
            &what,
            |_| {
                let resp = match self.send(method.clone(), container, object, build) {
                    Ok(r) => r,
                    Err(e) => return Step::Fail(e),
                };
                if resp.status() == StatusCode::NOT_FOUND {
                    return Step::Done(None);
                }
                match check(resp, &what).map(|r| r.bytes()) {
                    Ok(Ok(b)) => Step::Done(Some(b.to_vec())),
                    Ok(Err(e)) => Step::Retry(format!("answer cut off: {}", error_chain(&e))),
                    Err(e) => Step::Fail(e),
                }
            },
            unavailable(what.clone()),
        )
    }

    /// Lists a container (all pages) under `prefix`; a missing container is empty.
    fn list(&self, container: &str, prefix: &str) -> Result<Vec<Listed>, StoreError> {
        let mut out: Vec<Listed> = Vec::new();
        loop {
            let marker = out.last().map(|l| l.name.clone()).unwrap_or_default();
            let body = self.fetch(Method::GET, container, "", &|r| {
                r.timeout(self.settings.request_timeout).query(&[
                    ("format", "json"),
                    ("prefix", prefix),
                    ("marker", marker.as_str()),
                    ("limit", "10000"),
                ])
            })?;
            let Some(body) = body else {
                return Ok(out);
            };
            let page: Vec<Listed> =
                serde_json::from_slice(&body).map_err(|e| StoreError::Http {
                    what: format!("listing {container}"),
                    status: 200,
                    detail: format!("unreadable listing: {e}"),
                })?;
            if page.is_empty() {
                return Ok(out);
            }
            out.extend(page);
        }
    }

    fn delete_object(&self, container: &str, object: &str) -> Result<(), StoreError> {
        let resp = self.send(Method::DELETE, container, object, &|r| {
            r.timeout(self.settings.request_timeout)
        })?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(());
        }
        check(resp, &what(&Method::DELETE, container, object)).map(drop)
    }
}

/// The error once the retry budget is spent on `what`.
fn unavailable(what: String) -> impl FnOnce(u32, std::time::Duration, String) -> StoreError {
    move |attempts, spent, last| StoreError::Unavailable {
        what,
        attempts,
        secs: spent.as_secs(),
        last,
    }
}

fn retryable(s: StatusCode) -> bool {
    s.is_server_error() || s == StatusCode::REQUEST_TIMEOUT || s == StatusCode::TOO_MANY_REQUESTS
}

/// Turns a non-success response into an error that says what Swift meant.
fn check(resp: Response, what: &str) -> Result<Response, StoreError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body: String = resp.text().unwrap_or_default().chars().take(300).collect();
    let hint = match status.as_u16() {
        403 => " (the user may not write here: check the account's ACLs and roles)",
        404 => "",
        413 => " (too large for this Swift: lower backup.segment_size or raise Swift's max_file_size; or the account quota is full)",
        422 => " (the data did not match its checksum on arrival)",
        _ => "",
    };
    Err(StoreError::Http {
        what: what.to_string(),
        status: status.as_u16(),
        detail: format!("{}{hint}", body.trim()),
    })
}

#[derive(Debug, Deserialize)]
struct Listed {
    name: String,
    #[serde(default)]
    bytes: u64,
    #[serde(default)]
    last_modified: String,
}

impl Listed {
    fn modified(&self) -> SystemTime {
        chrono::NaiveDateTime::parse_from_str(&self.last_modified, "%Y-%m-%dT%H:%M:%S%.f")
            .map(|t| SystemTime::from(t.and_utc()))
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

impl Store for SwiftStore {
    fn describe(&self) -> String {
        let s = &self.client.settings;
        format!(
            "swift://{}{}{} (auth {})",
            s.container_base,
            if s.prefix.is_empty() { "" } else { "/" },
            s.prefix.trim_end_matches('/'),
            s.credentials.auth_url()
        )
    }

    fn tenants(&self) -> Result<Vec<String>, StoreError> {
        let base = format!("{}-", self.client.settings.container_base);
        let containers = self.client.list("", &base)?;
        Ok(super::tenants_of(
            containers.iter().map(|c| c.name.as_str()),
            &base,
        ))
    }

    fn put(&self, tenant: &str, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let container = self.container(tenant);
        self.client.ensure_container(&container)?;
        let object = self.object(name);
        let body = bytes::Bytes::copy_from_slice(bytes);
        let md5 = upload::md5_hex(&body);
        let resp = self.client.send(Method::PUT, &container, &object, &|r| {
            r.timeout(self.client.settings.request_timeout)
                .header("ETag", &md5)
                .body(body.clone())
        })?;
        let resp = check(resp, &what(&Method::PUT, &container, &object))?;
        upload::check_etag(&resp, &md5, &container, &object)
    }

    fn get(&self, tenant: &str, name: &str) -> Result<Vec<u8>, StoreError> {
        let container = self.container(tenant);
        let object = self.object(name);
        let body = self.client.fetch(Method::GET, &container, &object, &|r| {
            r.timeout(self.client.settings.request_timeout)
        })?;
        // The real object name (with the store's prefix): what `swift list` shows.
        body.ok_or(StoreError::NotFound {
            container,
            name: object,
        })
    }

    fn create_large(
        &self,
        tenant: &str,
        name: &str,
        labels: &[(&str, &str)],
    ) -> Result<Box<dyn LargeUpload>, StoreError> {
        let container = self.container(tenant);
        let segments = self.segments_container(tenant);
        self.client.ensure_container(&container)?;
        self.client.ensure_container(&segments)?;
        Ok(Box::new(upload::SegmentedUpload::start(
            self.client.clone(),
            container,
            segments,
            self.object(name),
            labels,
        )))
    }

    fn open_large(
        &self,
        tenant: &str,
        name: &str,
        offset: u64,
    ) -> Result<Box<dyn Read + Send>, StoreError> {
        let mut reader = ResumingReader {
            client: self.client.clone(),
            container: self.container(tenant),
            object: self.object(name),
            pos: offset,
            body: None,
        };
        reader.open()?;
        Ok(Box::new(reader))
    }

    fn list(&self, tenant: &str, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let p = &self.client.settings.prefix;
        Ok(self
            .client
            .list(&self.container(tenant), &format!("{p}{prefix}"))?
            .into_iter()
            .filter_map(|l| {
                Some(ObjectInfo {
                    modified: l.modified(),
                    size: l.bytes,
                    name: l.name.strip_prefix(p.as_str())?.to_string(),
                })
            })
            .collect())
    }

    fn list_segmented(&self, tenant: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let p = &self.client.settings.prefix;
        let mut out: Vec<ObjectInfo> = Vec::new();
        for l in self.client.list(&self.segments_container(tenant), p)? {
            let Some((name, _)) = l.name.rsplit_once('/') else {
                continue;
            };
            let Some(name) = name.strip_prefix(p.as_str()) else {
                continue;
            };
            let modified = l.modified();
            match out.last_mut() {
                Some(o) if o.name == name => {
                    o.size += l.bytes;
                    o.modified = o.modified.max(modified);
                }
                _ => out.push(ObjectInfo {
                    name: name.to_string(),
                    size: l.bytes,
                    modified,
                }),
            }
        }
        Ok(out)
    }

    fn delete(&self, tenant: &str, name: &str) -> Result<(), StoreError> {
        let container = self.container(tenant);
        let object = self.object(name);
        let head = self.client.send(Method::HEAD, &container, &object, &|r| {
            r.timeout(self.client.settings.request_timeout)
        })?;
        let is_slo = head
            .headers()
            .get("x-static-large-object")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
        if head.status() == StatusCode::NOT_FOUND {
            // Nothing to delete but perhaps segments (below).
        } else if is_slo {
            self.delete_slo(&container, &object)?;
        } else {
            check(head, &what(&Method::HEAD, &container, &object))?;
            self.client.delete_object(&container, &object)?;
        }
        // Segments no manifest names (an upload that never finished).
        let segments = self.segments_container(tenant);
        for l in self.client.list(&segments, &format!("{object}/"))? {
            self.client.delete_object(&segments, &l.name)?;
        }
        Ok(())
    }
}

impl SwiftStore {
    /// Deletes a manifest and its segments. Swift answers 200 whatever happened: the JSON
    /// body says what did.
    fn delete_slo(&self, container: &str, object: &str) -> Result<(), StoreError> {
        let resp = self.client.send(Method::DELETE, container, object, &|r| {
            r.timeout(self.client.settings.request_timeout)
                .query(&[("multipart-manifest", "delete")])
                .header("Accept", "application/json")
        })?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(());
        }
        let resp = check(resp, &what(&Method::DELETE, container, object))?;
        let body: BulkDelete = resp.json().unwrap_or_default();
        let status_ok =
            body.response_status.starts_with('2') || body.response_status.starts_with("404");
        if !status_ok || !body.errors.is_empty() {
            return Err(StoreError::Http {
                what: format!("deleting large object {container}/{object}"),
                status: 200,
                detail: format!(
                    "Swift reported {} with errors {:?}",
                    body.response_status, body.errors
                ),
            });
        }
        Ok(())
    }
}

#[derive(Debug, Default, Deserialize)]
struct BulkDelete {
    #[serde(rename = "Response Status", default)]
    response_status: String,
    #[serde(rename = "Errors", default)]
    errors: Vec<serde_json::Value>,
}

/// Streams a (large) object; a body that breaks off is resumed with a Range request.
struct ResumingReader {
    client: Arc<Client>,
    container: String,
    object: String,
    pos: u64,
    body: Option<Response>,
}

impl ResumingReader {
    /// Opens the body at `pos`; at the end of the object, `body` stays None.
    fn open(&mut self) -> Result<(), StoreError> {
        let range = format!("bytes={}-", self.pos);
        let pos = self.pos;
        let resp = self
            .client
            .send(Method::GET, &self.container, &self.object, &|r| {
                if pos > 0 {
                    r.header("Range", &range)
                } else {
                    r
                }
            })?;
        match resp.status() {
            StatusCode::NOT_FOUND => Err(StoreError::NotFound {
                container: self.container.clone(),
                name: self.object.clone(),
            }),
            StatusCode::RANGE_NOT_SATISFIABLE => {
                self.body = None;
                Ok(())
            }
            StatusCode::OK if pos > 0 => Err(StoreError::Http {
                what: what(&Method::GET, &self.container, &self.object),
                status: 200,
                detail: "Swift ignored the Range header".into(),
            }),
            _ => {
                self.body = Some(check(
                    resp,
                    &what(&Method::GET, &self.container, &self.object),
                )?);
                Ok(())
            }
        }
    }
}

impl Read for ResumingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let client = self.client.clone();
        let what = format!("download of {}/{}", self.container, self.object);
        let mut resume = false;
        Attempts::new(&client.settings.retry).run(
            &what,
            |_| {
                if resume {
                    if let Err(e) = self.open() {
                        return Step::Fail(io::Error::other(e));
                    }
                }
                let Some(body) = self.body.as_mut() else {
                    return Step::Done(0);
                };
                match body.read(buf) {
                    Ok(n) => {
                        self.pos += n as u64;
                        Step::Done(n)
                    }
                    Err(e) => {
                        tracing::info!(object = %self.object, pos = self.pos, error = %e, "download broke off; resuming with a Range request");
                        self.body = None;
                        resume = true;
                        Step::Retry(format!("broke off at byte {}: {e}", self.pos))
                    }
                }
            },
            |_, _, last| {
                io::Error::other(format!("{what} could not be resumed: {last}"))
            },
        )
    }
}
