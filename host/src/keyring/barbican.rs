//! Tenant keys held in OpenStack Barbican. A key ring entry names a secret by its UUID;
//! the secret's payload (the 256-bit key-encryption key) is fetched with a Keystone token
//! when a job needs it and kept only in memory.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::json;

use crate::config::BarbicanConfig;
use crate::crypto::{SecretKey, KEY_LEN};
use crate::keystone::{self, error_chain, Identity, IdentityFields, KeystoneError, Secret};

/// Pause between attempts when Barbican or Keystone does not answer.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, thiserror::Error)]
pub enum BarbicanError {
    #[error("key {key_id} is held in Barbican but no Barbican {missing} is configured: set it in the config file's [barbican] section or the environment")]
    NotConfigured { key_id: String, missing: String },
    #[error("Barbican: {0}")]
    Keystone(#[from] KeystoneError),
    #[error("the Keystone catalog at {auth_url} has no key-manager endpoint with interface '{interface}': set barbican.endpoint")]
    NoEndpoint { auth_url: String, interface: String },
    #[error("cannot reach Barbican at {url}: {reason}; nothing was changed, try again when Barbican is up")]
    Unreachable { url: String, reason: String },
    #[error("Barbican refused secret {uuid} to user '{username}' in project '{project}' (403): the secret belongs to another project, or the user lacks the member role there")]
    Forbidden {
        uuid: String,
        username: String,
        project: String,
    },
    #[error("Barbican has no secret {uuid} (404): it was deleted, or it is in another project. Backups wrapped with this key cannot be opened until the secret is back (restore it from Barbican's own backup); nothing was changed")]
    NotFound { uuid: String },
    #[error("Barbican secret {uuid} is {len} bytes, not a 256-bit key: the key ring names the wrong secret")]
    NotAKey { uuid: String, len: usize },
    #[error("'{0}' is not a Barbican secret UUID")]
    BadUuid(String),
    #[error("Barbican at {url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
}

/// A token and the Barbican URL (without `/v1`) it is good for.
#[derive(Clone)]
struct Session {
    token: Secret,
    endpoint: String,
}

/// A Barbican client for one identity; its token is shared by every job of the process.
pub struct Barbican {
    /// Made on first use: every command opens a `Barbican`, few ever need one (a blocking
    /// client starts a thread of its own).
    http: OnceLock<Client>,
    /// The identity, or which setting is missing.
    identity: Result<Identity, String>,
    endpoint: Option<String>,
    timeout: Duration,
    attempts: u32,
    session: Mutex<Option<Session>>,
}

impl std::fmt::Debug for Barbican {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Barbican")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Barbican {
    /// The client for the config's `[barbican]` section and the environment. Nothing is
    /// contacted until a key is needed; missing settings are reported then.
    pub fn from_config(c: &BarbicanConfig, env: &dyn Fn(&str) -> Option<String>) -> Barbican {
        let identity = IdentityFields {
            auth_url: c.auth_url.as_deref(),
            username: &c.username,
            password: &c.password,
            project_name: &c.project_name,
            user_domain_name: &c.user_domain_name,
            project_domain_name: &c.project_domain_name,
            region: &c.region,
            interface: &c.interface,
        }
        .resolve(env);
        Barbican {
            http: OnceLock::new(),
            identity,
            endpoint: c.endpoint.as_deref().map(base_url),
            timeout: c.request_timeout.get(),
            attempts: c.max_attempts.max(1),
            session: Mutex::new(None),
        }
    }

    /// Stores `key` as a new 256-bit symmetric secret; returns its UUID.
    pub fn store_key(
        &self,
        key_id: &str,
        name: &str,
        key: &SecretKey,
    ) -> Result<String, BarbicanError> {
        let body = json!({
            "name": name,
            "payload": base64::engine::general_purpose::STANDARD.encode(key.0),
            "payload_content_type": "application/octet-stream",
            "payload_content_encoding": "base64",
            "algorithm": "aes",
            "bit_length": 256,
            "secret_type": "symmetric",
        });
        let resp = self.send(key_id, |s| {
            self.http()
                .post(format!("{}/v1/secrets", s.endpoint))
                .json(&body)
        })?;
        #[derive(Deserialize)]
        struct Created {
            secret_ref: String,
        }
        let url = resp.url().to_string();
        let status = resp.status();
        if status != StatusCode::CREATED {
            return Err(status_error(resp));
        }
        let created: Created = resp.json().map_err(|e| BarbicanError::Status {
            url,
            status: status.as_u16(),
            body: format!("no secret_ref in the answer: {e}"),
        })?;
        let uuid = created
            .secret_ref
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        check_uuid(&uuid)?;
        Ok(uuid)
    }

    /// The key held in secret `uuid`, for key `key_id` of the ring.
    pub fn fetch_key(&self, key_id: &str, uuid: &str) -> Result<SecretKey, BarbicanError> {
        check_uuid(uuid)?;
        let resp = self.send(key_id, |s| {
            self.http()
                .get(format!("{}/v1/secrets/{uuid}/payload", s.endpoint))
                .header("Accept", "application/octet-stream")
        })?;
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => {
                return Err(BarbicanError::NotFound {
                    uuid: uuid.to_string(),
                })
            }
            StatusCode::FORBIDDEN => {
                let (username, project) = self
                    .identity
                    .as_ref()
                    .map(|i| (i.username.clone(), i.project_name.clone()))
                    .unwrap_or_default();
                return Err(BarbicanError::Forbidden {
                    uuid: uuid.to_string(),
                    username,
                    project,
                });
            }
            _ => return Err(status_error(resp)),
        }
        let url = resp.url().to_string();
        let bytes = resp.bytes().map_err(|e| BarbicanError::Unreachable {
            url,
            reason: error_chain(&e),
        })?;
        let key =
            <[u8; KEY_LEN]>::try_from(bytes.as_ref()).map_err(|_| BarbicanError::NotAKey {
                uuid: uuid.to_string(),
                len: bytes.len(),
            })?;
        Ok(SecretKey(key))
    }

    /// Sends a request with a token: tries again when Barbican does not answer or answers
    /// 5xx, and authenticates again once when the token is refused (401).
    fn send(
        &self,
        key_id: &str,
        request: impl Fn(&Session) -> RequestBuilder,
    ) -> Result<Response, BarbicanError> {
        let mut reauthed = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let session = self.session(key_id)?;
            let outcome = request(&session)
                .header("X-Auth-Token", &session.token.0)
                .timeout(self.timeout)
                .send();
            match outcome {
                Ok(r) if r.status() == StatusCode::UNAUTHORIZED && !reauthed => {
                    reauthed = true;
                    self.forget_session();
                }
                Ok(r) if r.status().is_server_error() && attempt < self.attempts => {
                    tracing::warn!(status = %r.status(), "Barbican answered an error; trying again");
                    std::thread::sleep(RETRY_PAUSE);
                }
                Ok(r) => return Ok(r),
                Err(e) if attempt < self.attempts => {
                    tracing::warn!(
                        "Barbican did not answer ({}); trying again",
                        error_chain(&e)
                    );
                    std::thread::sleep(RETRY_PAUSE);
                }
                Err(e) => {
                    return Err(BarbicanError::Unreachable {
                        url: session.endpoint,
                        reason: error_chain(&e),
                    })
                }
            }
        }
    }

    fn http(&self) -> &Client {
        self.http.get_or_init(Client::new)
    }

    fn forget_session(&self) {
        *self.session.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The cached session, or a new one from Keystone.
    fn session(&self, key_id: &str) -> Result<Session, BarbicanError> {
        let mut slot = self.session.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = slot.as_ref() {
            return Ok(s.clone());
        }
        let id = self
            .identity
            .as_ref()
            .map_err(|missing| BarbicanError::NotConfigured {
                key_id: key_id.to_string(),
                missing: missing.clone(),
            })?;
        let mut attempt = 0;
        let token = loop {
            attempt += 1;
            match keystone::authenticate(self.http(), id, self.timeout) {
                Err(KeystoneError::Unreachable { .. }) if attempt < self.attempts => {
                    std::thread::sleep(RETRY_PAUSE)
                }
                other => break other?,
            }
        };
        let endpoint = match &self.endpoint {
            Some(e) => e.clone(),
            None => token
                .endpoint("key-manager", id)
                .map(|e| base_url(&e))
                .ok_or_else(|| BarbicanError::NoEndpoint {
                    auth_url: id.auth_url.clone(),
                    interface: id.interface.clone(),
                })?,
        };
        let session = Session {
            token: token.token,
            endpoint,
        };
        *slot = Some(session.clone());
        Ok(session)
    }
}

/// Barbican's URL without a trailing `/` or `/v1`.
fn base_url(url: &str) -> String {
    let u = url.trim_end_matches('/');
    u.strip_suffix("/v1").unwrap_or(u).to_string()
}

/// A secret UUID: 36 characters of hex digits and dashes (nothing that could leave the
/// secrets path).
pub fn check_uuid(uuid: &str) -> Result<(), BarbicanError> {
    let ok = uuid.len() == 36
        && uuid.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        });
    match ok {
        true => Ok(()),
        false => Err(BarbicanError::BadUuid(uuid.to_string())),
    }
}

fn status_error(resp: Response) -> BarbicanError {
    let url = resp.url().to_string();
    let status = resp.status().as_u16();
    let body: String = resp.text().unwrap_or_default().chars().take(300).collect();
    BarbicanError::Status { url, status, body }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_and_urls() {
        assert!(check_uuid("b2e79c3b-1a76-4b63-a87b-248c5553c710").is_ok());
        for bad in [
            "",
            "../../v1/secrets",
            "b2e79c3b-1a76-4b63-a87b-248c5553c71/",
        ] {
            assert!(check_uuid(bad).is_err(), "{bad}");
        }
        assert_eq!(base_url("http://h:9311/v1/"), "http://h:9311");
        assert_eq!(base_url("http://h/key-manager"), "http://h/key-manager");
    }
}
