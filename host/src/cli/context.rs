//! Resolving the config, store and key ring for one command, including first use.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use couchvault::config::{self, Config};
use couchvault::keyring::{KeyRing, KeyringError};
use couchvault::store::{self, Store};

use super::args::Cli;

pub struct Context {
    pub config: Config,
    /// couchvault's own state: policies and the compiled-policy cache.
    pub state_dir: PathBuf,
    pub store: Box<dyn Store>,
    pub keyring: KeyRing,
    pub tenant: String,
    pub json: bool,
}

impl Context {
    pub fn open(cli: &Cli) -> Result<Context> {
        let config = match &cli.config {
            Some(path) => Config::load(path)?,
            None => Config::embedded(),
        };
        let data_dir =
            std::path::absolute(config::DEFAULT_DATA_DIR).context("resolving ./couchvault-data")?;
        let store_url = cli
            .store
            .clone()
            .or_else(|| config.store.clone())
            .unwrap_or_else(|| format!("file://{}", data_dir.join("store").display()));
        let store = store::open(&store_url, config.backup.segment_size, |base, prefix| {
            config
                .swift
                .settings(base, prefix, config.backup.segment_size, &|var| {
                    std::env::var(var).ok().filter(|v| !v.is_empty())
                })
        })?;
        let keyring = match cli.keyring.clone().or_else(|| config.keyring.clone()) {
            Some(path) => KeyRing::load(&path)?,
            None => open_default_keyring(&data_dir)?,
        };
        Ok(Context {
            state_dir: config.state_dir.clone().unwrap_or_else(|| data_dir.clone()),
            config,
            store,
            keyring,
            tenant: cli.tenant.clone(),
            json: cli.json,
        })
    }
}

/// The embedded default key ring, created on first use with one key for tenant `default`.
fn open_default_keyring(data_dir: &Path) -> Result<KeyRing> {
    let path: PathBuf = data_dir.join("keyring.toml");
    match KeyRing::load(&path) {
        Err(KeyringError::Missing { .. }) => {
            std::fs::create_dir_all(data_dir)
                .with_context(|| format!("creating {}", data_dir.display()))?;
            let ring = KeyRing::create(&path, "default")?;
            eprintln!(
                "couchvault: first use: created {} with a local store and a new key ring at {}.\n\
                 couchvault: keep a copy of the key ring somewhere safe: losing it loses every backup made with it.",
                data_dir.display(),
                path.display()
            );
            Ok(ring)
        }
        other => Ok(other?),
    }
}
