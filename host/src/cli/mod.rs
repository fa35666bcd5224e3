//! The `couchvault` command line: argument parsing, the commands, and their output.

pub mod args;
mod client;
mod cluster;
mod commands;
mod context;
mod daemon;
mod output;
mod policy;
mod render;
mod starter;
mod testing;

/// Runs one command line.
pub fn run(cli: args::Cli) -> anyhow::Result<()> {
    testing::install_from_env();
    commands::run(cli)
}
