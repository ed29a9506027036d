//! Geohost: replicate and verify blobs between sites, the way GitLab Geo's
//! self-service framework does, with each replicable type a WebAssembly
//! component plugin.
//!
//! See ARCHITECTURE.md at the repository root for the map of this crate.

pub mod allow_list;
pub mod api;
pub mod auth;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod db;
pub mod feed;
pub mod health;
pub mod leases;
pub mod metrics;
pub mod plugin;
pub mod primary;
pub mod secondary;
pub mod site;
pub mod states;
pub mod status;
pub mod storage;
pub mod supervisor;
pub mod swap;
pub mod topology;
