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
    pub fn open(cli: &Cli, config: Config) -> Result<Context> {
        let vault = Vault::open(config, cli.store.clone(), cli.keyring.clone())?;
        Ok(Context {
            keyring: vault.keyring()?,
            vault,
            tenant: cli.tenant.clone().unwrap_or_else(|| "default".into()),
            json: cli.json,
        })
    }
}
