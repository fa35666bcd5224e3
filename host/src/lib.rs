//! couchvault: hot, encrypted, streaming backup and restore of Apache CouchDB.
//!
//! Modules by concern: `couchdb` finds what to copy, `engine` streams it, `crypto` and
//! `format` define archive format v1, `store` holds the objects, `catalog` reads the store
//! as the list of backups, `keyring` and `config` load the operator's settings.

pub mod catalog;
pub mod cluster;
pub mod config;
pub mod couchdb;
pub mod crypto;
pub mod daemon;
pub mod duration;
pub mod engine;
pub mod error;
pub mod format;
pub mod keyring;
pub mod keystone;
pub mod names;
pub mod ops;
pub mod parallel;
pub mod policy;
pub mod scheduler;
pub mod store;
pub mod strict;
pub mod wire;

pub use error::{Error, Result};
