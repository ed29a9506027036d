//! Geohost's integration tests: one binary with a module per area (each extra
//! file under `tests/` would link wasmtime and sqlx again).

mod faults;
mod operator;
mod plugin;
mod primary;
mod replication;
mod robustness;
mod sites;
mod support;
