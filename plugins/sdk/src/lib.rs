//! The kit for writing a Geohost replicable type.
//!
//! A replicable type is a WebAssembly component implementing the
//! `geohost:replicable` world (see `wit/replicable.wit` at the repository
//! root). This crate gives a type author:
//!
//! - the WIT bindings ([`Guest`], [`Identity`], [`Row`], [`Value`], …) and the
//!   [`export!`] macro that registers the implementation;
//! - [`hashed_path`], GitLab's `Gitlab::HashedPath`;
//! - [`scope`], GitLab's selective-sync rules (namespaces with descendants,
//!   shards, object storage), over the host's project lookups;
//! - [`values`], typed access to the columns a row carries;
//! - [`schema`], short constructors for the model table's columns.
//!
//! ```ignore
//! use geohost_plugin_sdk::*;
//! struct MyType;
//! impl Guest for MyType { /* identity, derive, blob_paths, in_scope */ }
//! geohost_plugin_sdk::export!(MyType with_types_in geohost_plugin_sdk::bindings);
//! ```

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "replicable-type",
        pub_export_macro: true,
        default_bindings_module: "geohost_plugin_sdk::bindings",
    });
}

pub mod hashed_path;
pub mod schema;
pub mod scope;
pub mod values;

pub use bindings::exports::geohost::replicable::replicable::Guest;
pub use bindings::geohost::replicable::site;
pub use bindings::geohost::replicable::types::{
    Column, ColumnSource, ColumnType, Identity, ModelTable, Project, Row, SelectiveSync,
    SyncSettings, Value,
};
pub use bindings::export;
pub use hashed_path::{hashed_path, sha256_hex};

/// The answer of a batch function for one row.
pub type RowResult<T> = Result<T, String>;
