//! Geohost's integration tests: one binary with a module per area (each extra
//! file under `tests/` would link wasmtime and sqlx again).

mod admin_page;
mod authoring;
mod batch;
mod cli_output;
mod contracts;
mod deployment;
mod faults;
mod gitlab_clients;
mod guide;
mod hot_swap;
mod lifecycle;
mod npm;
mod object_storage;
mod operator;
mod plugin;
mod primary;
mod probes;
mod python;
mod replication;
mod robustness;
mod safety;
mod scale_out;
mod self_healing;
mod sites;
mod support;
