//! `couchvault daemon`.

use std::path::Path;

use anyhow::{Context as _, Result};
use couchvault::config::Config;
use couchvault::daemon::{Daemon, DaemonOptions};
use couchvault::ops::Vault;

use super::args::{Cli, DaemonArgs};

pub fn run(cli: &Cli, config: Config, args: &DaemonArgs) -> Result<()> {
    let embedded = cli.config.is_none();
    let vault = Vault::open(config, cli.store.clone(), cli.keyring.clone())?;
    // On the embedded defaults, the example schedules in ./schedules are applied.
    let schedules_dir = match (&args.schedules, &vault.config.daemon.schedules_dir) {
        (Some(d), _) | (None, Some(d)) => Some(d.clone()),
        (None, None) if embedded && Path::new("schedules").is_dir() => {
            Some(std::path::absolute("schedules").context("resolving ./schedules")?)
        }
        (None, None) => None,
    };
    let opts = DaemonOptions {
        admin_token_file: Some(vault.state_dir.join("admin.token")),
        schedules_dir,
    };
    // Opening recovers interrupted jobs through the (blocking) store client: do it before
    // the async runtime starts.
    let daemon = Daemon::open(vault, &opts)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(daemon.serve())?;
    Ok(())
}
