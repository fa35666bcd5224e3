//! Keystone v3 password authentication, shared by the Swift store (object-store endpoint)
//! and the Barbican key manager (key-manager endpoint).

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

/// A secret string: never printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Who to authenticate as, and which catalog endpoints to pick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub auth_url: String,
    pub username: String,
    pub password: Secret,
    pub project_name: String,
    pub user_domain_name: String,
    pub project_domain_name: String,
    pub region: Option<String>,
    pub interface: String,
}

/// The identity settings of one config section; each missing one is read from the
/// environment (`OS_AUTH_URL`, `OS_USERNAME`, `OS_PASSWORD`, `OS_PROJECT_NAME`,
/// `OS_USER_DOMAIN_NAME`, `OS_PROJECT_DOMAIN_NAME`, `OS_REGION_NAME`, `OS_INTERFACE`).
pub struct IdentityFields<'a> {
    pub auth_url: Option<&'a str>,
    pub username: &'a Option<String>,
    pub password: &'a Option<String>,
    pub project_name: &'a Option<String>,
    pub user_domain_name: &'a Option<String>,
    pub project_domain_name: &'a Option<String>,
    pub region: &'a Option<String>,
    pub interface: &'a Option<String>,
}

impl IdentityFields<'_> {
    /// The identity, or the name of the first setting that is missing, e.g.
    /// "password (OS_PASSWORD)".
    pub fn resolve(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Identity, String> {
        let pick = |file: &Option<String>, var: &str| file.clone().or_else(|| env(var));
        let need = |file: &Option<String>, var: &str, what: &str| {
            pick(file, var).ok_or_else(|| format!("{what} ({var})"))
        };
        Ok(Identity {
            auth_url: match self.auth_url {
                Some(u) => u.to_string(),
                None => env("OS_AUTH_URL").ok_or("auth URL (OS_AUTH_URL)")?,
            },
            username: need(self.username, "OS_USERNAME", "username")?,
            password: Secret(need(self.password, "OS_PASSWORD", "password")?),
            project_name: need(self.project_name, "OS_PROJECT_NAME", "project")?,
            user_domain_name: pick(self.user_domain_name, "OS_USER_DOMAIN_NAME")
                .unwrap_or_else(|| "Default".into()),
            project_domain_name: pick(self.project_domain_name, "OS_PROJECT_DOMAIN_NAME")
                .unwrap_or_else(|| "Default".into()),
            region: pick(self.region, "OS_REGION_NAME"),
            interface: pick(self.interface, "OS_INTERFACE").unwrap_or_else(|| "public".into()),
        })
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum KeystoneError {
    /// Not answering, or answering 5xx: worth retrying.
    #[error("cannot reach Keystone at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("Keystone at {url} refused user '{username}' in project '{project}' ({status}): check OS_USERNAME, OS_PASSWORD, OS_PROJECT_NAME and the domains")]
    Refused {
        url: String,
        username: String,
        project: String,
        status: u16,
    },
    #[error("Keystone at {url}: {reason}")]
    BadAnswer { url: String, reason: String },
}

/// A token and the service catalog it came with.
pub struct Token {
    pub token: Secret,
    catalog: Vec<CatalogService>,
}

impl Token {
    /// The catalog's endpoint of `service_type` for the identity's interface and region.
    pub fn endpoint(&self, service_type: &str, id: &Identity) -> Option<String> {
        self.catalog
            .iter()
            .filter(|s| s.kind == service_type)
            .flat_map(|s| s.endpoints.iter())
            .find(|e| {
                e.interface == id.interface
                    && id.region.as_ref().is_none_or(|r| {
                        e.region.as_deref() == Some(r) || e.region_id.as_deref() == Some(r)
                    })
            })
            .map(|e| e.url.clone())
    }
}

/// `POST {auth_url}/v3/auth/tokens` with the password method, scoped to the project.
pub fn authenticate(
    http: &reqwest::blocking::Client,
    id: &Identity,
    timeout: Duration,
) -> Result<Token, KeystoneError> {
    let base = id.auth_url.trim_end_matches('/');
    let url = if base.ends_with("/v3") {
        format!("{base}/auth/tokens")
    } else {
        format!("{base}/v3/auth/tokens")
    };
    let body = json!({"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": id.username, "domain": {"name": id.user_domain_name}, "password": id.password.0}}},
        "scope": {"project": {"name": id.project_name, "domain": {"name": id.project_domain_name}}}
    }});
    let bad = |reason: String| KeystoneError::BadAnswer {
        url: id.auth_url.clone(),
        reason,
    };
    let resp = http
        .post(&url)
        .json(&body)
        .timeout(timeout)
        .send()
        .map_err(|e| KeystoneError::Unreachable {
            url: id.auth_url.clone(),
            reason: error_chain(&e),
        })?;
    let status = resp.status();
    if status == 401 || status == 403 {
        return Err(KeystoneError::Refused {
            url: id.auth_url.clone(),
            username: id.username.clone(),
            project: id.project_name.clone(),
            status: status.as_u16(),
        });
    }
    if status.is_server_error() {
        return Err(KeystoneError::Unreachable {
            url: id.auth_url.clone(),
            reason: format!("answered {status}"),
        });
    }
    if !status.is_success() {
        return Err(bad(format!(
            "answered {status}; is this a Keystone v3 URL (…/v3)?"
        )));
    }
    let token = resp
        .headers()
        .get("x-subject-token")
        .and_then(|v| v.to_str().ok())
        .map(|t| Secret(t.to_string()))
        .ok_or_else(|| bad("no X-Subject-Token in Keystone's answer".into()))?;
    let parsed: TokenBody = resp
        .json()
        .map_err(|e| bad(format!("cannot read Keystone's token: {e}")))?;
    Ok(Token {
        token,
        catalog: parsed.token.catalog,
    })
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
