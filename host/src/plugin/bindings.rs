//! Bindings generated from the WIT contracts this host implements, one
//! module per supported minor version (as Zed does for its extension API).
//! The rest of the host never sees them: [`super::columns`] and
//! [`super::adapt_v0_1`] translate between them and the host's own types.

/// The bindings of one contract version, all generated alike.
macro_rules! contract {
    ($path:literal, $world:literal) => {
        wasmtime::component::bindgen!({
            path: $path,
            world: $world,
            ownership: Borrowing { duplicate_if_necessary: true },
            // A lookup past its bounds traps (see `HostState::lookup_projects`).
            imports: { "geohost:replicable/site.projects": trappable },
        });
    };
}

/// `geohost:replicable@0.2` (`wit/replicable.wit`): column batches. Parameters
/// borrow from the host's rows, so a batch is lowered into the guest without
/// copying its strings first. Generated for the world with 0.2.1's `packed`
/// export; the host loads each exported interface on its own
/// ([`super::guest`]), so a component without `packed` (0.2.0, or the
/// world `replicable-type`) loads too.
pub mod v0_2 {
    contract!("../wit/replicable.wit", "replicable-type-packed");
}

/// `geohost:replicable@0.1` (`wit/v0.1/replicable.wit`): rows of variants,
/// the contract of the first shipped types, still loaded.
pub mod v0_1 {
    contract!("../wit/v0.1/replicable.wit", "replicable-type");
}
