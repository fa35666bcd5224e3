//! Swift authentication: tempauth/swauth v1 and Keystone v3 password auth.

use std::time::Duration;

use crate::keystone::{self, Identity, KeystoneError};
use crate::store::StoreError;

pub use crate::keystone::{error_chain, Secret};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// `GET auth_url` with `X-Auth-User`/`X-Auth-Key`.
    V1 {
        auth_url: String,
        user: String,
        key: Secret,
    },
    /// `POST auth_url/auth/tokens`, endpoint from the catalog.
    V3(Identity),
}

impl Credentials {
    pub fn auth_url(&self) -> &str {
        match self {
            Credentials::V1 { auth_url, .. } => auth_url,
            Credentials::V3(id) => &id.auth_url,
        }
    }
}

/// A token and the storage URL it is good for.
#[derive(Debug, Clone)]
pub struct Session {
    pub token: String,
    pub storage_url: String,
}

fn auth_err(creds: &Credentials, reason: impl Into<String>) -> StoreError {
    StoreError::Auth {
        url: creds.auth_url().to_string(),
        reason: reason.into(),
    }
}

/// One authentication attempt. Connection failures are `Unreachable` (worth retrying);
/// a refusal is `Auth` (not worth retrying).
pub fn authenticate(
    http: &reqwest::blocking::Client,
    creds: &Credentials,
    timeout: Duration,
) -> Result<Session, StoreError> {
    let unreachable = |e: reqwest::Error| StoreError::Unreachable {
        what: format!("Swift auth at {}", creds.auth_url()),
        reason: error_chain(&e),
    };
    match creds {
        Credentials::V1 {
            auth_url,
            user,
            key,
        } => {
            let resp = http
                .get(auth_url)
                .header("X-Auth-User", user)
                .header("X-Auth-Key", &key.0)
                .timeout(timeout)
                .send()
                .map_err(unreachable)?;
            check_status(
                creds,
                resp.status(),
                &format!("Swift refused user '{user}'"),
                "check ST_USER/ST_KEY or swift.user/swift.key",
                "a Swift v1 auth URL (…/auth/v1.0)",
            )?;
            let header = |name: &str| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            match (header("x-auth-token"), header("x-storage-url")) {
                (Some(token), Some(storage_url)) => Ok(Session { token, storage_url }),
                _ => Err(auth_err(
                    creds,
                    "the answer has no X-Auth-Token or X-Storage-Url; is this a Swift v1 auth URL?",
                )),
            }
        }
        Credentials::V3(id) => {
            let token = keystone::authenticate(http, id, timeout).map_err(|e| match e {
                KeystoneError::Unreachable { url, reason } => StoreError::Unreachable {
                    what: format!("Swift auth at {url}"),
                    reason,
                },
                e => auth_err(creds, e.to_string()),
            })?;
            let storage_url = token.endpoint("object-store", id).ok_or_else(|| {
                auth_err(
                    creds,
                    format!(
                        "the catalog has no object-store endpoint with interface '{}'{}",
                        id.interface,
                        id.region
                            .as_ref()
                            .map(|r| format!(" in region '{r}'"))
                            .unwrap_or_default()
                    ),
                )
            })?;
            Ok(Session {
                token: token.token.0,
                storage_url,
            })
        }
    }
}

/// Sorts an auth answer: refused (final), server trouble (worth retrying), or not an auth
/// endpoint at all.
fn check_status(
    creds: &Credentials,
    status: reqwest::StatusCode,
    refused: &str,
    fix: &str,
    kind_of_url: &str,
) -> Result<(), StoreError> {
    if status == 401 || status == 403 {
        return Err(auth_err(creds, format!("{refused} ({status}): {fix}")));
    }
    if status.is_server_error() {
        return Err(StoreError::Unreachable {
            what: format!("auth at {}", creds.auth_url()),
            reason: format!("answered {status}"),
        });
    }
    if !status.is_success() {
        return Err(auth_err(
            creds,
            format!("answered {status}; is this {kind_of_url}?"),
        ));
    }
    Ok(())
}
