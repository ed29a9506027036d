//! The primary site: it owns each type's records and blobs, checksums them,
//! logs what changes, and serves secondaries.
//!
//! - [`access`]: what a secondary's credentials may fetch (its scope).
//! - [`ingest`]: create-or-update and delete records with their blobs.
//! - [`group`]: concurrent writes committed together (group commit).
//! - [`journal`]: what a blob write keeps until it commits, and the undo.
//! - [`verify`]: the checksum worker over `<name>_states`.
//! - [`events`]: the ordered event log secondaries read from a cursor.
//! - [`sites`]: `geo_nodes`, the secondaries and their keys.
//! - [`topology`]: namespaces and projects, what selective sync selects by.
//! - [`records`]: generic reads of a type's model table.

pub mod access;
pub mod events;
pub mod group;
pub mod ingest;
pub mod journal;
pub mod records;
pub mod sites;
pub mod topology;
pub mod verify;
