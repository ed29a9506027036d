//! Geohost: replicate and verify blobs between sites, the way GitLab Geo's
//! self-service framework does, with each replicable type a WebAssembly
//! component plugin.
//!
//! See ARCHITECTURE.md at the repository root for the map of this crate.
//!
//! # Public API
//!
//! What a program (the `geohost` binary, the end-to-end tests, the
//! benchmarks) uses to run and drive sites:
//!
//! - running a site: [`config`] (its configuration), [`runtime`] (open,
//!   serve), [`site`] (the context every part shares);
//! - its types: [`catalog`] (installed types and their calls), [`plugin`]
//!   (the WebAssembly runtime), [`swap`] (install, upgrade, roll back,
//!   remove while running);
//! - its roles: [`primary`] (records, sites, namespaces, verification),
//!   [`secondary`] (registries), [`status`], [`feed`] (the wire types
//!   between them), [`topology`], [`states`];
//! - its stores: [`db`], [`storage`];
//! - its operators' surfaces: [`api`] (the HTTP router, admin tokens),
//!   [`auth`], [`metrics`], [`cli`] (the binary's entry point).
//!
//! Inside those modules, what only the crate uses is `pub(crate)` (the
//! HTTP handlers, the CLI's commands, the secondary's workers, the SQL of
//! registries and templates); `leases` is internal as a whole.

pub mod allow_list;
pub mod api;
pub mod auth;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod db;
pub mod feed;
pub mod health;
pub(crate) mod leases;
pub mod metrics;
pub mod plugin;
pub mod primary;
pub mod runtime;
pub mod secondary;
pub mod site;
pub mod states;
pub mod status;
pub mod storage;
pub mod supervisor;
pub mod swap;
pub mod topology;
