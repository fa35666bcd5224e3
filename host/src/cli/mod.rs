//! The `couchvault` command line: argument parsing, the commands, and their output.

pub mod args;
mod commands;
mod context;
mod output;
mod policy;

pub use commands::run;
