//! Swift authentication: tempauth/swauth v1 and Keystone v3 password auth.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use crate::store::StoreError;

/// A secret string: never printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// `GET auth_url` with `X-Auth-User`/`X-Auth-Key`.
    V1 {
        auth_url: String,
        user: String,
        key: Secret,
    },
    /// `POST auth_url/auth/tokens`, endpoint from the catalog.
    V3 {
        auth_url: String,
        username: String,
        password: Secret,
        project_name: String,
        user_domain_name: String,
        project_domain_name: String,
        region: Option<String>,
        interface: String,
    },
}

impl Credentials {
    pub fn auth_url(&self) -> &str {
        match self {
            Credentials::V1 { auth_url, .. } | Credentials::V3 { auth_url, .. } => auth_url,
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
        Credentials::V3 {
            auth_url,
            username,
            password,
            project_name,
            user_domain_name,
            project_domain_name,
            region,
            interface,
        } => {
            let base = auth_url.trim_end_matches('/');
            let url = if base.ends_with("/v3") {
                format!("{base}/auth/tokens")
            } else {
                format!("{base}/v3/auth/tokens")
            };
            let body = json!({"auth": {
                "identity": {"methods": ["password"], "password": {"user": {
                    "name": username, "domain": {"name": user_domain_name}, "password": password.0}}},
                "scope": {"project": {"name": project_name, "domain": {"name": project_domain_name}}}
            }});
            let resp = http
                .post(&url)
                .json(&body)
                .timeout(timeout)
                .send()
                .map_err(unreachable)?;
            check_status(
                creds,
                resp.status(),
                &format!("Keystone refused user '{username}' in project '{project_name}'"),
                "check OS_USERNAME, OS_PASSWORD, OS_PROJECT_NAME and the domains",
                "a Keystone v3 URL (…/v3)",
            )?;
            let token = resp
                .headers()
                .get("x-subject-token")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .ok_or_else(|| auth_err(creds, "no X-Subject-Token in Keystone's answer"))?;
            let parsed: TokenBody = resp
                .json()
                .map_err(|e| auth_err(creds, format!("cannot read Keystone's token: {e}")))?;
            let storage_url = parsed
                .token
                .catalog
                .iter()
                .filter(|s| s.kind == "object-store")
                .flat_map(|s| s.endpoints.iter())
                .find(|e| {
                    e.interface == *interface
                        && region
                            .as_ref()
                            .is_none_or(|r| e.region.as_deref() == Some(r) || e.region_id.as_deref() == Some(r))
                })
                .map(|e| e.url.clone())
                .ok_or_else(|| {
                    auth_err(
                        creds,
                        format!(
                            "the catalog has no object-store endpoint with interface '{interface}'{}",
                            region.as_ref().map(|r| format!(" in region '{r}'")).unwrap_or_default()
                        ),
                    )
                })?;
            Ok(Session { token, storage_url })
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

#[derive(Deserialize)]
struct TokenBody {
    token: TokenInner,
}

#[derive(Deserialize)]
struct TokenInner {
    #[serde(default)]
    catalog: Vec<CatalogService>,
}

#[derive(Deserialize)]
struct CatalogService {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    endpoints: Vec<Endpoint>,
}

#[derive(Deserialize)]
struct Endpoint {
    interface: String,
    region: Option<String>,
    region_id: Option<String>,
    url: String,
}

/// An error with its sources, e.g. "error sending request: connection refused".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}
