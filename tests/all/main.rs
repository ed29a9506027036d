//! Geohost's integration tests: one binary with a module per area (each extra
//! file under `tests/` would link wasmtime and sqlx again).

mod hot_swap;
mod operator;
mod plugin;
mod primary;
mod replication;
mod sites;
mod support;
