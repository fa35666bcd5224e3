//! Prometheus text exposition of the daemon's counters.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// Series keyed by `name{labels}`, each with a HELP/TYPE header per name.
#[derive(Default)]
pub struct Metrics {
    series: Mutex<BTreeMap<(String, String), f64>>,
}

const HELP: &[(&str, &str, &str)] = &[
    (
        "couchvault_jobs_total",
        "counter",
        "Finished jobs by kind and outcome.",
    ),
    (
        "couchvault_job_duration_seconds_sum",
        "counter",
        "Total run time of finished jobs by kind and outcome.",
    ),
    (
        "couchvault_job_duration_seconds_count",
        "counter",
        "Finished jobs counted in the duration sum.",
    ),
    (
        "couchvault_backup_bytes_total",
        "counter",
        "Bytes of CouchDB files read by successful backups.",
    ),
    (
        "couchvault_backup_stored_bytes_total",
        "counter",
        "Bytes stored by successful backups (compressed, encrypted).",
    ),
    (
        "couchvault_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the last successful backup per tenant and instance.",
    ),
    (
        "couchvault_policy_evaluation_seconds_sum",
        "counter",
        "Time spent evaluating tenant policies, floors included.",
    ),
    (
        "couchvault_policy_evaluation_seconds_count",
        "counter",
        "Backups whose policies were evaluated.",
    ),
    (
        "couchvault_scheduled_runs_total",
        "counter",
        "Scheduled runs by outcome (started, skipped, missed).",
    ),
    (
        "couchvault_notifications_total",
        "counter",
        "Job notifications by outcome (sent, failed after every try, dropped when a queue was full).",
    ),
    ("couchvault_jobs_running", "gauge", "Jobs running now."),
    (
        "couchvault_schedules",
        "gauge",
        "Schedules in the daemon's database.",
    ),
];

/// Escapes a label value for the text format.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub fn labels(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

impl Metrics {
    pub fn add(&self, name: &str, labels: String, v: f64) {
        if let Ok(mut s) = self.series.lock() {
            *s.entry((name.to_string(), labels)).or_insert(0.0) += v;
        }
    }

    pub fn set(&self, name: &str, labels: String, v: f64) {
        if let Ok(mut s) = self.series.lock() {
            s.insert((name.to_string(), labels), v);
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let Ok(series) = self.series.lock() else {
            return out;
        };
        for (name, kind, help) in HELP {
            let base = name.trim_end_matches("_sum").trim_end_matches("_count");
            if !name.ends_with("_count") {
                let _ = writeln!(out, "# HELP {base} {help}");
                let ty = if name.ends_with("_sum") {
                    "summary"
                } else {
                    kind
                };
                let _ = writeln!(out, "# TYPE {base} {ty}");
            }
            for ((n, l), v) in series.iter().filter(|((n, _), _)| n == name) {
                let _ = writeln!(out, "{n}{l} {v}");
            }
        }
        out
    }
}
