//! Resolving the config, store and key ring for one local command.

use anyhow::Result;
use couchvault::config::Config;
use couchvault::keyring::KeyRing;
use couchvault::ops::Vault;

use super::args::Cli;

pub struct Context {
    pub vault: Vault,
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
        let vault = Vault::open(config, cli.store.clone(), cli.keyring.clone())?;
        Ok(Context {
            keyring: vault.keyring()?,
            vault,
            tenant: cli.tenant.clone(),
            json: cli.json,
        })
    }
}
