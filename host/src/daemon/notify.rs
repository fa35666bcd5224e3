//! Notifications of jobs, to the destinations the admin configured under `[[notify.rules]]`:
//! a JSON webhook per finished job (Slack-style chat hooks take its `text`), and a
//! dead-man's-switch ping per backup (`<ping>/start`, then `<ping>` or `<ping>/fail`, as
//! healthchecks.io and its kind expect).
//!
//! Delivery never holds a job up: each destination has its own bounded queue and thread,
//! retries with a growing delay, and drops (counted) what does not fit. A destination's URL
//! is a secret (services put their token in it): logs and errors name it by rule number
//! and host only.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::metrics::{labels, Metrics};
use crate::duration::Span;
use crate::wire::{Job, JobState};

/// Version of the webhook document.
pub const NOTIFICATION_FORMAT: u32 = 1;

/// `[notify]`: delivery settings and the rules.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// Notifications waiting per destination; more are dropped (and counted).
    pub queue: usize,
    /// Tries per notification before it is given up (and counted).
    pub max_attempts: u32,
    /// Time one try may take.
    pub timeout: Span,
    /// Wait before the second try; doubled for each further one.
    pub retry_delay: Span,
    pub rules: Vec<NotifyRule>,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            queue: 100,
            max_attempts: 5,
            timeout: Span::secs(10),
            retry_delay: Span::secs(2),
            rules: Vec::new(),
        }
    }
}

/// One destination and the jobs it hears about.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyRule {
    /// Only this tenant's jobs (every tenant's when absent).
    pub tenant: Option<String>,
    /// Only jobs of this instance.
    pub instance: Option<String>,
    /// POSTed the webhook document of every finished job that matches.
    pub webhook: Option<String>,
    /// Pinged when a matching backup starts, succeeds or fails.
    pub ping: Option<String>,
    /// Job kinds the webhook reports (`backup`, `restore`, `verify`, ...); all when empty.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Only jobs that did not succeed (failed, cancelled, interrupted).
    #[serde(default)]
    pub failures_only: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("[[notify.rules]] number {rule}: {why}")]
pub struct NotifyConfigError {
    rule: usize,
    why: String,
}

impl NotifyConfig {
    /// Every rule names a destination, each URL is http(s) with a host, names are valid.
    pub fn check(&self) -> Result<(), NotifyConfigError> {
        for (i, r) in self.rules.iter().enumerate() {
            let bad = |why: String| NotifyConfigError { rule: i + 1, why };
            if r.webhook.is_none() && r.ping.is_none() {
                return Err(bad("give a webhook, a ping URL or both".into()));
            }
            for url in r.webhook.iter().chain(&r.ping) {
                let ok = reqwest::Url::parse(url).is_ok_and(|u| {
                    matches!(u.scheme(), "http" | "https") && u.host_str().is_some()
                });
                if !ok {
                    return Err(bad(format!(
                        "'{}' is not an http(s) URL with a host",
                        redact(url)
                    )));
                }
            }
            for (what, name) in [("tenant", &r.tenant), ("instance", &r.instance)] {
                if let Some(n) = name {
                    crate::names::validate_name(what, n).map_err(|e| bad(e.to_string()))?;
                }
            }
        }
        Ok(())
    }
}

/// The webhook document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobNotification {
    pub couchvault_notification: u32,
    /// `job_finished`.
    pub event: String,
    /// One line for people (chat hooks show it).
    pub text: String,
    pub tenant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    pub kind: String,
    pub state: JobState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The whole job record, as `GET /v1/jobs/{id}` gives it.
    pub job: Job,
}

impl JobNotification {
    pub fn of(job: &Job) -> JobNotification {
        let instance = job.request.instance().map(str::to_string);
        let kind = job.request.kind().to_string();
        let what = match &instance {
            Some(i) => format!("{kind} of {}/{i}", job.tenant),
            None => format!("{kind} for {}", job.tenant),
        };
        let took = job
            .duration_secs
            .map(|s| format!(" in {s:.1} s"))
            .unwrap_or_default();
        let mut text = format!("couchvault: {what} {}{took}", job.state.as_str());
        if let Some(b) = &job.backup_id {
            text.push_str(&format!(" (backup {b})"));
        }
        if let Some(e) = &job.error {
            text.push_str(&format!(": {e}"));
        }
        JobNotification {
            couchvault_notification: NOTIFICATION_FORMAT,
            event: "job_finished".into(),
            text,
            tenant: job.tenant.clone(),
            instance,
            kind,
            state: job.state,
            backup_id: job.backup_id.clone(),
            duration_secs: job.duration_secs,
            error: job.error.clone(),
            job: job.clone(),
        }
    }
}

enum Delivery {
    /// POST this JSON to the webhook.
    Webhook(String),
    /// GET the ping URL with this suffix (`/start`, ``, `/fail`).
    Ping(&'static str),
}

struct Destination {
    rule: NotifyRule,
    /// Closed (None) when its thread could not start.
    queue: Option<SyncSender<Delivery>>,
    label: String,
}

/// Hands job events to every matching destination's queue.
pub struct Notifier {
    destinations: Vec<Destination>,
    metrics: Arc<Metrics>,
}

impl Notifier {
    pub fn new(config: &NotifyConfig, metrics: Arc<Metrics>) -> Notifier {
        let http = reqwest::blocking::Client::builder()
            .timeout(config.timeout.get())
            .build()
            .ok();
        let destinations = config
            .rules
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                let host = rule
                    .webhook
                    .iter()
                    .chain(&rule.ping)
                    .next()
                    .map(|u| redact(u))
                    .unwrap_or_default();
                let label = format!("notify rule {} ({host})", i + 1);
                let (tx, rx) = sync_channel(config.queue.max(1));
                let worker = Worker {
                    rule: rule.clone(),
                    label: label.clone(),
                    http: http.clone(),
                    metrics: metrics.clone(),
                    attempts: config.max_attempts.max(1),
                    delay: config.retry_delay.get(),
                };
                let started = std::thread::Builder::new()
                    .name(format!("notify-{}", i + 1))
                    .spawn(move || worker.run(rx));
                if let Err(e) = &started {
                    tracing::error!("{label}: cannot start its thread: {e}; it gets nothing");
                }
                Destination {
                    rule: rule.clone(),
                    queue: started.ok().map(|_| tx),
                    label,
                }
            })
            .collect();
        Notifier {
            destinations,
            metrics,
        }
    }

    /// A job started: backups ping `<ping>/start`.
    pub fn job_started(&self, job: &Job) {
        if job.request.kind() != "backup" {
            return;
        }
        for d in self.matching(job) {
            if d.rule.ping.is_some() && !d.rule.failures_only {
                self.enqueue(d, Delivery::Ping("/start"));
            }
        }
    }

    /// A job ended: the webhook document, and for backups the ping of its outcome.
    pub fn job_finished(&self, job: &Job) {
        let ok = job.state == JobState::Succeeded;
        let mut document = None;
        for d in self.matching(job) {
            if d.rule.ping.is_some() && job.request.kind() == "backup" {
                self.enqueue(d, Delivery::Ping(if ok { "" } else { "/fail" }));
            }
            let kind_ok =
                d.rule.kinds.is_empty() || d.rule.kinds.iter().any(|k| k == job.request.kind());
            if d.rule.webhook.is_some() && kind_ok && !(ok && d.rule.failures_only) {
                let body = document.get_or_insert_with(|| {
                    serde_json::to_string(&JobNotification::of(job)).unwrap_or_default()
                });
                self.enqueue(d, Delivery::Webhook(body.clone()));
            }
        }
    }

    fn matching<'a>(&'a self, job: &'a Job) -> impl Iterator<Item = &'a Destination> {
        self.destinations.iter().filter(move |d| {
            d.rule.tenant.as_ref().is_none_or(|t| *t == job.tenant)
                && d.rule
                    .instance
                    .as_deref()
                    .is_none_or(|i| job.request.instance() == Some(i))
        })
    }

    fn enqueue(&self, d: &Destination, delivery: Delivery) {
        let sent = d.queue.as_ref().map(|q| q.try_send(delivery));
        if !matches!(sent, Some(Ok(()))) {
            let why = match sent {
                Some(Err(TrySendError::Full(_))) => "its queue is full",
                _ => "its thread is gone",
            };
            tracing::warn!("{}: a notification was dropped: {why}", d.label);
            self.metrics.add(
                "couchvault_notifications_total",
                labels(&[("outcome", "dropped")]),
                1.0,
            );
        }
    }
}

/// One destination's thread: delivers in order, each with its retries.
struct Worker {
    rule: NotifyRule,
    label: String,
    http: Option<reqwest::blocking::Client>,
    metrics: Arc<Metrics>,
    attempts: u32,
    delay: Duration,
}

impl Worker {
    fn run(self, queue: Receiver<Delivery>) {
        for delivery in queue {
            let mut wait = self.delay;
            let mut outcome = "failed";
            for attempt in 1..=self.attempts {
                match self.deliver(&delivery) {
                    Ok(()) => {
                        outcome = "sent";
                        break;
                    }
                    Err(why) if attempt < self.attempts => {
                        tracing::debug!("{}: try {attempt} failed: {why}", self.label);
                        std::thread::sleep(wait);
                        wait = wait.saturating_mul(2);
                    }
                    Err(why) => {
                        tracing::warn!("{}: given up after {attempt} tries: {why}", self.label)
                    }
                }
            }
            self.metrics.add(
                "couchvault_notifications_total",
                labels(&[("outcome", outcome)]),
                1.0,
            );
        }
    }

    fn deliver(&self, delivery: &Delivery) -> Result<(), String> {
        let http = self.http.as_ref().ok_or("no HTTP client")?;
        let request = match delivery {
            Delivery::Webhook(body) => http
                .post(self.rule.webhook.as_deref().unwrap_or_default())
                .header("content-type", "application/json")
                .body(body.clone()),
            Delivery::Ping(suffix) => {
                let base = self.rule.ping.as_deref().unwrap_or_default();
                http.get(format!("{}{suffix}", base.trim_end_matches('/')))
            }
        };
        // Errors without the URL: it holds the destination's secret.
        let status = request
            .send()
            .map_err(|e| e.without_url().to_string())?
            .status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("answered {status}"))
        }
    }
}

/// `scheme://host[:port]/…`: what may be shown of a URL whose path or query is a secret.
pub fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}{}/…",
            u.scheme(),
            u.host_str().unwrap_or(""),
            u.port().map(|p| format!(":{p}")).unwrap_or_default()
        ),
        Err(_) => "an unparsable URL".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_urls_keep_only_scheme_and_host() {
        assert_eq!(
            redact("https://hc-ping.com/1f2e-secret?x=y"),
            "https://hc-ping.com/…"
        );
        assert_eq!(
            redact("http://u:p@127.0.0.1:9000/hook"),
            "http://127.0.0.1:9000/…"
        );
        assert!(!redact("not a url with secret").contains("secret"));
    }

    #[test]
    fn rules_need_a_destination_and_http_urls() {
        let rule = |webhook: Option<&str>, ping: Option<&str>| NotifyConfig {
            rules: vec![NotifyRule {
                tenant: None,
                instance: None,
                webhook: webhook.map(str::to_string),
                ping: ping.map(str::to_string),
                kinds: vec![],
                failures_only: false,
            }],
            ..Default::default()
        };
        assert!(rule(None, None).check().is_err());
        let e = rule(Some("ftp://h/secret"), None).check().unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        assert!(rule(None, Some("http://127.0.0.1:1/p")).check().is_ok());
    }
}
