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
//! use geohost_plugin_sdk::prelude::*;
//! struct MyType;
//! impl Guest for MyType { /* describe, derive, blob_paths, in_scope */ }
//! geohost_plugin_sdk::export!(MyType with_types_in geohost_plugin_sdk::bindings);
//! ```
//!
//! `geohost plugin new NAME` scaffolds such a crate; `docs/authoring-a-type.md`
//! walks through one (GitLab's npm metadata cache) from nothing to a
//! replicating type. A type's functions run on the host's data only: they get
//! no clock, files or network, and ask the host for projects through
//! [`site::projects`].

#![warn(missing_docs)]

/// The code wit-bindgen generates from `wit/replicable.wit`; use the
/// re-exports below and [`export!`] instead.
#[doc(hidden)]
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "replicable-type",
        pub_export_macro: true,
        default_bindings_module: "geohost_plugin_sdk::bindings",
        // So a type's unit tests can compare values and identities.
        additional_derives: [PartialEq],
    });
}

pub mod hashed_path;
pub mod schema;
pub mod scope;
pub mod values;

pub use bindings::export;
pub use bindings::exports::geohost::replicable::replicable::Guest;
pub use bindings::geohost::replicable::site;
pub use bindings::geohost::replicable::types::{
    Column, ColumnSource, ColumnType, Identity, ModelTable, Project, Row, SelectiveSync,
    SyncSettings, Value,
};
pub use hashed_path::{hashed_path, sha256_hex};

/// The answer of a batch function for one row: a value, or why the row is
/// refused (shown to the operator).
pub type RowResult<T> = Result<T, String>;

/// Everything a type's `lib.rs` usually needs, in one `use`.
pub mod prelude {
    pub use crate::hashed_path::{hashed_path, sha256_hex};
    pub use crate::schema::{column, file_store, text, timestamps, with_default};
    pub use crate::scope;
    pub use crate::values::{at, ValueExt};
    pub use crate::{
        ColumnSource, ColumnType, Guest, Identity, ModelTable, Row, RowResult, SyncSettings, Value,
    };
}
