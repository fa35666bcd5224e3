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
    // Likewise the instance files in ./instances.
    let instances_dir = match &vault.config.daemon.instances_dir {
        Some(d) => Some(d.clone()),
        None if embedded && Path::new("instances").is_dir() => {
            Some(std::path::absolute("instances").context("resolving ./instances")?)
        }
        None => None,
    };
    let opts = DaemonOptions {
        admin_token_file: Some(vault.state_dir.join("admin.token")),
        schedules_dir,
        instances_dir,
    };
    // Opening recovers interrupted jobs through the (blocking) store client: do it before
    // the async runtime starts.
    let daemon = Daemon::open(vault, &opts)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let served = runtime.block_on(daemon.serve());
    // Work still on the blocking pool (a policy being compiled) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    served?;
    Ok(())
}
