//! The kit for writing a Geohost replicable type.
//!
//! A replicable type is a WebAssembly component implementing the
//! `geohost:replicable` world (see `wit/replicable.wit` at the repository
//! root). This crate gives a type author:
//!
//! - the WIT bindings ([`Guest`], [`Identity`], [`Batch`], [`Value`], …) and the
//!   [`export!`] macro that registers the implementation;
//! - [`batch`], typed access to a batch's columns and answers built record
//!   by record (`geohost:replicable@0.2` passes records as columns; the
//!   SDK also exports 0.2.1's `packed` functions for every type, answered
//!   by the same code);
//! - [`hashed_path`], GitLab's `Gitlab::HashedPath`;
//! - [`scope`], GitLab's selective-sync rules (namespaces with descendants,
//!   shards, object storage), over the host's project lookups;
//! - [`arena`], the allocator of a call (a bump arena reset with the
//!   instance; the `system-allocator` feature turns it off);
//! - [`schema`], short constructors for the model table's columns;
//! - [`test_vectors!`], which embeds the crate's `vectors.json` in the
//!   component, where `geohost plugin test` and every install find it.
//!
//! ```ignore
//! use geohost_plugin_sdk::prelude::*;
//! struct MyType;
//! impl Guest for MyType { /* describe, derive, blob_paths, in_scope */ }
//! geohost_plugin_sdk::export!(MyType with_types_in geohost_plugin_sdk::bindings);
//! geohost_plugin_sdk::test_vectors!();
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
        world: "replicable-type-packed",
        pub_export_macro: true,
        default_bindings_module: "geohost_plugin_sdk::bindings",
        // So a type's unit tests can compare values and identities.
        additional_derives: [PartialEq],
    });
}

pub mod arena;
pub mod batch;
pub mod hashed_path;
mod packed;
pub mod schema;
pub mod scope;

pub use bindings::export;
pub use bindings::exports::geohost::replicable::replicable::Guest;
pub use bindings::geohost::replicable::site;
pub use bindings::geohost::replicable::types::{
    Batch, Column, ColumnData, ColumnSource, ColumnType, ColumnValues, Decisions, Derived,
    Identity, ModelTable, Paths, ProjectColumns, RowError, SelectiveSync, SyncSettings, Value,
};
pub use hashed_path::{hashed_path, sha256_hex};

/// The global allocator of a type's wasm32 build ([`arena`]); the
/// `system-allocator` feature turns it off.
#[cfg(all(target_arch = "wasm32", not(feature = "system-allocator")))]
#[global_allocator]
static ALLOCATOR: arena::Arena<{ arena::STATIC_BYTES }> = arena::Arena::new();

/// The answer of a batch function for one record: a value, or why the
/// record is refused (shown to the operator).
pub type RowResult<T> = Result<T, String>;

/// The custom section holding a type's test vectors.
pub const TEST_VECTORS_SECTION: &str = "geohost-test-vectors";

/// Embeds the crate's `vectors.json` (beside its `Cargo.toml`), or the file
/// at the path given (relative to the crate), as the component's
/// `geohost-test-vectors` custom section. `geohost plugin test` without
/// `--fixtures` runs them, and every install or upgrade of the component
/// must pass them (and its predecessor's). Changing the file rebuilds the
/// crate.
#[macro_export]
macro_rules! test_vectors {
    () => {
        $crate::test_vectors!("vectors.json");
    };
    ($path:literal) => {
        #[cfg(target_arch = "wasm32")]
        #[used]
        #[link_section = "geohost-test-vectors"]
        static GEOHOST_TEST_VECTORS: [u8; include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/",
            $path
        ))
        .len()] = *include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/", $path));
    };
}

/// Everything a type's `lib.rs` usually needs, in one `use`.
pub mod prelude {
    pub use crate::hashed_path::{hashed_path, sha256_hex};
    pub use crate::schema::{column, file_store, text, timestamps, with_default};
    pub use crate::scope;
    pub use crate::{
        Batch, ColumnSource, ColumnType, Decisions, Derived, Guest, Identity, ModelTable, Paths,
        RowResult, SyncSettings, Value,
    };
}
