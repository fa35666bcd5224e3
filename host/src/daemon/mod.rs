//! `couchvault daemon`: schedules, jobs and the HTTP API over one store and key ring.
//!
//! State is in sled under `<state_dir>/daemon.db`; the store stays the source of truth for
//! backups (the index in sled is rebuilt from it at start and every
//! `daemon.reindex_interval`).

pub mod api;
pub mod auth;
pub mod cluster;
pub mod db;
pub mod files;
pub mod instances;
pub mod jobs;
pub mod limits;
pub mod metrics;
pub mod notify;
pub mod schedules;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;

use crate::ops::Vault;
use db::{ClusterIndexEntry, Db, IndexEntry};
use jobs::Runner;
use schedules::Schedules;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error(transparent)]
    Schedule(#[from] schedules::ScheduleError),
    #[error("cannot listen on {addr}: {source}; is another daemon running? (daemon.listen)")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    #[error(transparent)]
    Instance(#[from] instances::InstanceError),
    #[error(transparent)]
    Files(#[from] files::FileError),
    #[error(transparent)]
    Ops(#[from] crate::ops::OpsError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("daemon.listen '{0}' is not an address (e.g. 127.0.0.1:8420)")]
    Address(String),
    #[error(transparent)]
    Notify(#[from] notify::NotifyConfigError),
    #[error("{0}")]
    Cluster(String),
}

/// Everything the API handlers and the loops share.
pub struct Daemon {
    pub vault: Arc<Vault>,
    pub db: Db,
    pub runner: Arc<Runner>,
    pub schedules: Arc<Schedules>,
    /// Policy uploads and dry runs in progress per tenant.
    pub policy_slots: Arc<limits::TenantSlots>,
    /// The threads that compile and dry-run uploaded policies, for every tenant.
    pub policy_pool: Arc<tokio::sync::Semaphore>,
}

/// What `couchvault daemon` was asked to do beyond the config.
pub struct DaemonOptions {
    /// Write an admin token to this file (0600) when it has none valid.
    pub admin_token_file: Option<PathBuf>,
    /// Apply these schedule files at start.
    pub schedules_dir: Option<PathBuf>,
    /// Apply these instance files at start (before the schedules, which may name them).
    pub instances_dir: Option<PathBuf>,
}

impl Daemon {
    /// Opens the state, recovers jobs cut off by the last stop and loads the schedules.
    pub fn open(vault: Vault, opts: &DaemonOptions) -> Result<Arc<Daemon>, DaemonError> {
        let started = Instant::now();
        std::fs::create_dir_all(&vault.state_dir).map_err(|source| DaemonError::Io {
            context: format!("creating {}", vault.state_dir.display()),
            source,
        })?;
        let db = Db::open(&vault.state_dir.join("daemon.db"))?;
        let vault = Arc::new(vault);
        let metrics = Arc::new(metrics::Metrics::default());
        vault.config.notify.check()?;
        let cluster = &vault.config.cluster;
        if cluster.broker.is_some() && (cluster.node.is_none() || cluster.source().is_empty()) {
            return Err(DaemonError::Cluster(
                "[cluster] broker is set: also set node (this node's CouchDB name, as the shard maps name it) and couchdb_config or data_dir (its directories)".into(),
            ));
        }
        let notifier = notify::Notifier::new(&vault.config.notify, metrics.clone());
        let runner = Arc::new(Runner::new(
            vault.clone(),
            db.clone(),
            metrics,
            notifier,
            vault.config.daemon.job_history,
        ));
        let interrupted = runner.recover()?;
        let schedules = Arc::new(Schedules::load(db.clone(), runner.clone())?);
        if let Some(file) = &opts.admin_token_file {
            auth::ensure_admin_file(&db, file)?;
        }
        if let Some(dir) = &opts.instances_dir {
            let specs = instances::read_dir_specs(dir)?;
            let report = instances::apply(&db, &vault.config, specs)?;
            tracing::info!(dir = %dir.display(), registered = report.registered.len(), unchanged = report.unchanged.len(), "instance files applied");
        }
        if let Some(dir) = &opts.schedules_dir {
            let report = schedules.apply_dir(dir, "default", Utc::now())?;
            tracing::info!(dir = %dir.display(), created = report.created.len(), updated = report.updated.len(), unchanged = report.unchanged.len(), "schedule files applied");
        }
        schedules.retry_interrupted(&interrupted, Utc::now());
        db.flush_blocking()?;
        tracing::info!(
            schedules = schedules.len(),
            interrupted = interrupted.len(),
            ms = started.elapsed().as_millis() as u64,
            "daemon state loaded"
        );
        let daemon_cfg = &vault.config.daemon;
        let policy_slots = limits::TenantSlots::new(daemon_cfg.tenant_policy_uploads);
        let policy_pool = Arc::new(tokio::sync::Semaphore::new(
            daemon_cfg.policy_workers.max(1),
        ));
        Ok(Arc::new(Daemon {
            vault,
            db,
            runner,
            schedules,
            policy_slots,
            policy_pool,
        }))
    }

    /// Rebuilds the backup index (backups and cluster backups) of every tenant from the
    /// store. Returns the count.
    pub fn reindex(&self) -> Result<usize, DaemonError> {
        let mut n = 0;
        for tenant in self.vault.tenants()? {
            let entries: Vec<IndexEntry> = self
                .vault
                .committed(&tenant, None)?
                .iter()
                .map(IndexEntry::of)
                .collect();
            let clusters: Vec<ClusterIndexEntry> = self
                .vault
                .cluster_backups(&tenant, None)?
                .iter()
                .map(ClusterIndexEntry::of)
                .collect();
            n += entries.len() + clusters.len();
            self.db.index_replace(&tenant, &entries, &clusters)?;
        }
        Ok(n)
    }

    /// Serves until SIGTERM or SIGINT, then shuts down gracefully.
    pub async fn serve(self: Arc<Self>) -> Result<(), DaemonError> {
        let addr: SocketAddr = self
            .vault
            .config
            .daemon
            .listen
            .parse()
            .map_err(|_| DaemonError::Address(self.vault.config.daemon.listen.clone()))?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| DaemonError::Listen {
                addr: addr.to_string(),
                source,
            })?;
        let local = listener
            .local_addr()
            .map_err(|source| DaemonError::Listen {
                addr: addr.to_string(),
                source,
            })?;
        tracing::info!(address = %local, store = %self.vault.store.describe(), "couchvault daemon listening on http://{local}");
        eprintln!("couchvault daemon listening on http://{local}");

        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let ticker = tokio::spawn(tick_loop(self.clone(), stop_rx.clone()));
        let indexer = tokio::spawn(reindex_loop(self.clone(), stop_rx.clone()));
        let clustered = tokio::spawn(cluster::run(
            self.vault.clone(),
            format!("http://{local}"),
            stop_rx,
        ));
        let app = api::router(self.clone());
        let timeout = self.vault.config.daemon.shutdown_timeout.get();
        // The whole shutdown (requests in flight, then jobs) fits in shutdown_timeout,
        // counted from the signal; a request that hangs past it is dropped.
        let (signalled_tx, mut signalled) = tokio::sync::watch::channel(None::<Instant>);
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            shutdown_signal().await;
            let _ = signalled_tx.send(Some(Instant::now()));
        });
        let drain_limit = async {
            let _ = signalled.wait_for(Option::is_some).await;
            tokio::time::sleep(timeout).await;
        };
        tokio::select! {
            served = server => served.map_err(|source| DaemonError::Io { context: "serving".into(), source })?,
            _ = drain_limit => tracing::warn!("requests still in progress after daemon.shutdown_timeout: dropping them"),
        }
        let since = signalled.borrow().unwrap_or_else(Instant::now);

        tracing::info!("shutting down: no new jobs; waiting for running ones");
        let _ = stop_tx.send(true);
        let _ = ticker.await;
        indexer.abort();
        let _ = tokio::time::timeout(Duration::from_secs(5), clustered).await;
        let runner = self.runner.clone();
        let left = timeout.saturating_sub(since.elapsed());
        let _ = tokio::task::spawn_blocking(move || runner.shutdown(left)).await;
        self.db.flush().await?;
        tracing::info!("daemon stopped");
        Ok(())
    }
}

/// Wakes at the next due time (at most a second later, to notice the clock moving) or
/// when a schedule changes, and starts what is due.
async fn tick_loop(d: Arc<Daemon>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        let wait = d
            .schedules
            .earliest()
            .map(|t| (t - Utc::now()).to_std().unwrap_or(Duration::ZERO))
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = d.schedules.changed.notified() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        if let Err(e) = d.schedules.tick(Utc::now()).await {
            tracing::error!("scheduler tick: {e}");
        }
    }
}

async fn reindex_loop(d: Arc<Daemon>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let every = d.vault.config.daemon.reindex_interval.get();
    loop {
        let d2 = d.clone();
        match tokio::task::spawn_blocking(move || d2.reindex()).await {
            Ok(Ok(n)) => tracing::info!(backups = n, "backup index rebuilt from the store"),
            Ok(Err(e)) => tracing::warn!("backup index not rebuilt: {e}"),
            Err(e) => tracing::warn!("backup index not rebuilt: {e}"),
        }
        if every.is_zero() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
