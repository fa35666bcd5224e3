//! The `couchvault` command line: argument parsing, the commands, and their output.

pub mod args;
mod client;
mod commands;
mod context;
mod daemon;
mod output;
mod policy;

pub use commands::run;
