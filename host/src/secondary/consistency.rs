//! GitLab's `RegistryConsistencyWorker`: make the registry table match what
//! the primary has and this secondary's scope asks for.
//!
//! Why: events can be missed (the secondary was down longer than the
//! primary kept its log, a type was installed later, selective sync
//! changed), so the registry is repaired from the source of truth. For each
//! installed type with replication enabled, the primary's records are walked
//! in id order, 10,000 at a time (`records?after_id&limit=10000`); each batch
//! covers the ids from the previous batch's end to its last record, and the
//! last batch is open-ended, so registry rows above the primary's highest id
//! are covered too. Within a batch:
//!
//! - in-scope records without a registry row get one (pending, bulk insert);
//! - rows synced while the primary had no checksum, whose verification is
//!   still disabled though the primary's record is verified now (its
//!   `checksum_succeeded` event was lost to a race), are set verification
//!   pending;
//! - rows of records that are out of scope, and rows of records the
//!   primary no longer has (orphans), are noted for removal.
//!
//! Once every batch is read, the removals are decided as a whole: past
//! `deletions.max_removal_share` of the type's registries they wait for an
//! operator's confirmation ([`super::guard`]); otherwise out-of-scope rows
//! are deleted with their local blob, which goes to the quarantine (the
//! path comes from the type's plugin over the record). The blob path of a
//! gone record is unknown here (the plugin computes it from the record's
//! columns), so an orphan's local blob is *not* touched: the `deleted`
//! event, which carries the path, quarantines it (see `cursor.rs`). An
//! orphan whose event was never seen leaves its blob behind; the pass logs
//! each such row.
//!
//! Races it avoids: a row in `started` is left for the next pass (a
//! download in flight would otherwise write a file nobody tracks); an
//! orphan row created after the batch was read is kept (its record was
//! created after the read, by an event the cursor already handled); and a
//! record whose scope decision errors is left alone and logged.

use super::client::{ClientError, PrimaryClient};
use super::guard::{self, Decision, Guard};
use super::registry::Registry;
use crate::catalog::{InstalledType, Scope};
use crate::db::{Db, DbError, ident};
use crate::feed::FeedRecord;
use crate::plugin::BlobPath;
use crate::states::{SyncState, VerificationState};
use crate::storage::BlobStore;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// GitLab's `RegistryConsistencyService::BATCH_SIZE`.
pub const BATCH_SIZE: i64 = 10_000;

/// What one pass changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Registry rows inserted.
    pub created: u64,
    /// Registry rows deleted (out of scope or orphaned).
    pub deleted: u64,
    /// Registry rows the pass would have deleted, held by the guard
    /// ([`super::guard`]) until an operator confirms.
    pub held: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, other: Counts) {
        self.created += other.created;
        self.deleted += other.deleted;
        self.held += other.held;
    }
}

/// Why a pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum ConsistencyError {
    #[error("reading the primary's records: {0}")]
    Client(#[from] ClientError),
    #[error("tracking database: {0}")]
    Db(#[from] DbError),
    #[error("deciding scope: {0}")]
    Scope(#[from] crate::catalog::CallError),
}

/// One consistency pass over type `it`; see the [module docs](self).
pub async fn check_type(
    client: &PrimaryClient,
    tracking: &Db,
    blobs: &BlobStore,
    it: &Arc<InstalledType>,
    scope: &Scope,
    guard: Guard,
) -> Result<Counts, ConsistencyError> {
    check_type_in_batches(client, tracking, blobs, it, scope, guard, BATCH_SIZE).await
}

/// The registries a pass would remove, found while walking the batches and
/// removed (or held) once the whole walk is done.
#[derive(Default)]
struct Removals {
    /// Records out of scope, with their blob path (or why there is none).
    out_of_scope: Vec<(i64, Result<BlobPath, String>)>,
    /// Registries of records the primary no longer has.
    orphans: Vec<i64>,
}

impl Removals {
    fn len(&self) -> usize {
        self.out_of_scope.len() + self.orphans.len()
    }
}

async fn check_type_in_batches(
    client: &PrimaryClient,
    tracking: &Db,
    blobs: &BlobStore,
    it: &Arc<InstalledType>,
    scope: &Scope,
    guard: Guard,
    batch_size: i64,
) -> Result<Counts, ConsistencyError> {
    let registry = Registry::of(it);
    let registries = tracking
        .fetch_one(
            &format!(
                "SELECT COUNT(*) AS n FROM {}",
                ident(&it.identity.registry_table())
            ),
            &[],
        )
        .await?
        .i64("n")?;
    let mut counts = Counts::default();
    let mut removals = Removals::default();
    let mut after = 0;
    let mut highest = 0;
    loop {
        let read_at = Db::now();
        let page = client.records_after(it.name(), after, batch_size).await?;
        highest = page.records.iter().map(|r| r.id).fold(highest, i64::max);
        let full = page.records.len() as i64 >= batch_size;
        let low = after + 1;
        let high = if full {
            page.records.last().map(|r| r.id)
        } else {
            None
        };
        counts += check_batch(
            tracking,
            it,
            scope,
            &registry,
            &page.records,
            Range { low, high, read_at },
            &mut removals,
        )
        .await?;
        match high {
            Some(high) => after = high,
            None => break,
        }
    }

    // Removals are decided over the whole pass: past the allowed share of
    // the type's registries, they wait for an operator (guard.rs).
    let key = guard::scope_key(&scope.settings);
    let decision = guard::admit(
        tracking,
        guard,
        it.name(),
        removals.len() as i64,
        registries,
        &key,
        it.plugin.sha256(),
    )
    .await?;
    match decision {
        Decision::Held(hold) => {
            tracing::warn!(
                r#type = it.name(),
                removals = hold.removals,
                registries = hold.registries,
                cause = %hold.cause,
                "registry removals held: more than the allowed share of the type's registries \
                 would go; confirm with `geohost registry confirm-removals` or GraphQL \
                 `geoRegistriesConfirmRemovals` (their blobs would go to the quarantine)"
            );
            counts.held = hold.removals as u64;
        }
        Decision::Proceed { why } => {
            if removals.len() > 0 && why != "within the share" {
                tracing::warn!(
                    r#type = it.name(),
                    removals = removals.len(),
                    why,
                    "registry removals past the allowed share go ahead"
                );
            }
            counts.deleted += remove(tracking, blobs, it, &registry, removals).await?;
            guard::applied(tracking, it.name(), &key).await?;
        }
    }
    if counts != Counts::default() {
        tracing::info!(
            r#type = it.name(),
            created = counts.created,
            deleted = counts.deleted,
            held = counts.held,
            "registry consistency pass"
        );
    }
    save_mark(tracking, it.name(), highest).await?;
    Ok(counts)
}

/// Records where a complete pass of `name` ended.
async fn save_mark(tracking: &Db, name: &str, last_record_id: i64) -> Result<(), DbError> {
    tracking
        .execute(
            "INSERT INTO registry_consistency_marks (replicable_name, last_record_id, passed_at) \
             VALUES ($1, $2, $3) ON CONFLICT (replicable_name) DO UPDATE \
             SET last_record_id = excluded.last_record_id, passed_at = excluded.passed_at",
            &[name.into(), last_record_id.into(), Db::now().into()],
        )
        .await?;
    Ok(())
}

/// The highest record id the last complete pass of `name` read.
pub async fn mark(tracking: &Db, name: &str) -> Result<Option<i64>, DbError> {
    tracking
        .fetch_optional(
            "SELECT last_record_id FROM registry_consistency_marks WHERE replicable_name = $1",
            &[name.into()],
        )
        .await?
        .map(|row| row.i64("last_record_id"))
        .transpose()
}

/// The records of `it` in this site's scope that have no registry row
/// yet, for the status: a complete pass left none up to its mark (see
/// [`mark`]), so only the records above it are read (one page of
/// [`BATCH_SIZE`], so the count is at most that). The topology is read
/// only if some record lacks a row, once for every type (`topology`).
pub async fn missing_registries(
    client: &PrimaryClient,
    tracking: &Db,
    it: &Arc<InstalledType>,
    settings: &crate::plugin::SyncSettings,
    topology: &mut Option<Arc<crate::topology::Topology>>,
) -> Result<i64, ConsistencyError> {
    let after = mark(tracking, it.name()).await?.unwrap_or(0);
    let page = client.records_after(it.name(), after, BATCH_SIZE).await?;
    let (Some(first), Some(last)) = (page.records.first(), page.records.last()) else {
        return Ok(0);
    };
    let registered: HashSet<i64> = Registry::of(it)
        .in_range(tracking, first.id, Some(last.id))
        .await?
        .iter()
        .map(|row| row.model_id)
        .collect();
    let unregistered: Vec<FeedRecord> = page
        .records
        .into_iter()
        .filter(|r| !registered.contains(&r.id))
        .collect();
    if unregistered.is_empty() {
        return Ok(0);
    }
    let topology = match topology {
        Some(topology) => topology.clone(),
        None => {
            let snapshot = client.topology().await?;
            let read = Arc::new(crate::topology::Topology::new(
                snapshot.namespaces,
                snapshot.projects,
            ));
            *topology = Some(read.clone());
            read
        }
    };
    let scope = Scope {
        settings: settings.clone(),
        topology,
    };
    let answers = it.in_scope(&scope, &unregistered).await?;
    Ok(answers.iter().filter(|a| **a == Ok(true)).count() as i64)
}

/// The ids a batch covers: `low..=high` (`None`: no upper end), and when
/// its records were read.
struct Range {
    low: i64,
    high: Option<i64>,
    read_at: chrono::DateTime<chrono::Utc>,
}

/// Compares one batch of records with the registry rows in its range:
/// creates the missing rows, sets verification pending where the primary's
/// checksum came late, and adds what should go to `removals`.
async fn check_batch(
    tracking: &Db,
    it: &Arc<InstalledType>,
    scope: &Scope,
    registry: &Registry,
    records: &[FeedRecord],
    range: Range,
    removals: &mut Removals,
) -> Result<Counts, ConsistencyError> {
    let decisions = it.in_scope(scope, records).await?;
    let existing: HashMap<i64, _> = registry
        .in_range(tracking, range.low, range.high)
        .await?
        .into_iter()
        .map(|row| (row.model_id, row))
        .collect();
    let present: HashSet<i64> = records.iter().map(|r| r.id).collect();

    let mut missing = Vec::new();
    let mut unverified = Vec::new();
    let mut out_of_scope = Vec::new();
    for (record, decision) in records.iter().zip(decisions) {
        match decision {
            Ok(true) if !existing.contains_key(&record.id) => missing.push(record.id),
            Ok(true) => {
                // Synced before the primary had a checksum, and the
                // `checksum_succeeded` that should have set its
                // verification pending was lost (a race with the
                // verifier, an event handled while the row was busy):
                // the primary has a checksum now, so verify.
                if existing.get(&record.id).is_some_and(|row| {
                    row.state == SyncState::Synced
                        && row.verification_state == VerificationState::Disabled
                }) && record.verification_state == VerificationState::Succeeded
                    && record.verification_checksum.is_some()
                {
                    unverified.push(record.id);
                }
            }
            Ok(false) => {
                if existing
                    .get(&record.id)
                    .is_some_and(|row| row.state != SyncState::Started)
                {
                    out_of_scope.push(record.clone());
                }
            }
            Err(error) => tracing::warn!(
                r#type = it.name(),
                id = record.id,
                %error,
                "scope decision failed; registry left as it is"
            ),
        }
    }
    let mut orphans: Vec<i64> = existing
        .values()
        .filter(|row| {
            !present.contains(&row.model_id)
                && row.state != SyncState::Started
                && row.created_at < range.read_at
        })
        .map(|row| row.model_id)
        .collect();
    orphans.sort_unstable();
    removals.orphans.extend(orphans);
    if !out_of_scope.is_empty() {
        let paths = it.blob_paths(&out_of_scope).await?;
        removals
            .out_of_scope
            .extend(out_of_scope.iter().map(|r| r.id).zip(paths));
    }

    let counts = Counts {
        created: registry.insert_missing(tracking, &missing).await?,
        ..Counts::default()
    };
    for id in unverified {
        if registry
            .verification_pending_if_synced(tracking, id)
            .await?
        {
            tracing::info!(
                r#type = it.name(),
                id,
                "synced without the primary's checksum, which it has now: verification pending"
            );
        }
    }
    Ok(counts)
}

/// Removes the registries a pass found: out-of-scope ones with their blob
/// (to the quarantine), orphans without (their `deleted` event carries the
/// path). A row that became busy meanwhile (a download started) stays.
/// Returns how many rows went.
async fn remove(
    tracking: &Db,
    blobs: &BlobStore,
    it: &InstalledType,
    registry: &Registry,
    removals: Removals,
) -> Result<u64, ConsistencyError> {
    let mut removed = 0;
    for batch in removals.out_of_scope.chunks(BATCH_SIZE as usize) {
        let ids: Vec<i64> = batch.iter().map(|(id, _)| *id).collect();
        let deleted: HashSet<i64> = registry
            .delete_idle(tracking, &ids)
            .await?
            .into_iter()
            .collect();
        removed += deleted.len() as u64;
        for (id, path) in batch {
            if !deleted.contains(id) {
                continue;
            }
            match path {
                Ok(path) => {
                    if let Err(error) = blobs.quarantine(it.name(), path).await {
                        tracing::warn!(r#type = it.name(), id, %error, "cannot quarantine an out-of-scope blob");
                    }
                }
                Err(error) => {
                    tracing::warn!(r#type = it.name(), id, %error, "no blob path for an out-of-scope record; its blob stays")
                }
            }
        }
    }
    for batch in removals.orphans.chunks(BATCH_SIZE as usize) {
        let deleted = registry.delete_idle(tracking, batch).await?;
        for id in &deleted {
            tracing::info!(
                r#type = it.name(),
                id,
                "registry of a record gone from the primary deleted; its blob is removed by the `deleted` event"
            );
        }
        removed += deleted.len() as u64;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::{SelectiveSync, SyncSettings};
    use crate::secondary::testing::{blob_path, helm_record, helm_registry, rigs};
    use crate::topology::{NamespaceNode, ProjectNode, Topology};

    /// A guard that lets every removal through.
    const ANY: Guard = Guard {
        max_share: 1.0,
        cause: guard::Cause::Consistency,
    };

    fn scope(selective_sync: SelectiveSync) -> Scope {
        let namespaces =
            [(1, None), (2, None)].map(|(id, parent_id)| NamespaceNode { id, parent_id });
        let projects = [(10, 1), (11, 2)].map(|(id, namespace_id)| ProjectNode {
            id,
            namespace_id,
            repository_storage: "default".into(),
        });
        Scope {
            settings: SyncSettings {
                selective_sync,
                sync_object_storage: false,
            },
            topology: Arc::new(Topology::new(namespaces, projects)),
        }
    }

    #[tokio::test]
    async fn the_registry_follows_the_primary_and_the_scope() {
        let (it, registry) = helm_registry();
        for (backend, db, primary, _dir, blobs, d) in rigs().await {
            let client = d.client;
            for (id, project) in [(1, 10), (2, 10), (3, 10), (4, 11), (5, 11)] {
                primary.add(id, project, b"index", true);
            }
            // In a selected project, but in object storage (not synced by default).
            let remote = helm_record(6, 10, 2, None);
            primary.with(|s| s.records.insert(6, remote));

            // 4: out of scope, synced, with a local copy; 5: out of scope but
            // downloading; 99: orphan; 98: orphan, downloading.
            registry.insert_missing(&db, &[4, 5, 98, 99]).await.unwrap();
            for id in [4, 5, 98] {
                registry.start(&db, id).await.unwrap();
            }
            registry.synced(&db, 4, true).await.unwrap();
            let record4 = primary.with(|s| s.records[&4].clone());
            let path4 = blob_path(&it, &record4).await;
            blobs
                .put_bytes(it.name(), &path4, bytes::Bytes::from_static(b"index"))
                .await
                .unwrap();

            let model_ids = async || -> Vec<i64> {
                let rows = registry.all(&db).await.unwrap();
                rows.iter().map(|r| r.model_id).collect()
            };
            let namespaces = scope(SelectiveSync::Namespaces(vec![1]));
            let counts = check_type_in_batches(&client, &db, &blobs, &it, &namespaces, ANY, 2)
                .await
                .unwrap();
            assert_eq!(
                counts,
                Counts {
                    created: 3,
                    deleted: 2,
                    held: 0
                },
                "{backend}"
            );
            assert_eq!(model_ids().await, vec![1, 2, 3, 5, 98], "{backend}");
            assert!(
                !blobs.exists(it.name(), &path4).await.unwrap(),
                "{backend}: out-of-scope blob removed"
            );
            assert_eq!(
                blobs.quarantined_count(it.name()).await.unwrap(),
                1,
                "{backend}"
            );
            assert!(
                primary.hits("records") >= 4,
                "{backend}: walked in batches of 2"
            );

            // Idempotent.
            let again = check_type_in_batches(&client, &db, &blobs, &it, &namespaces, ANY, 2)
                .await
                .unwrap();
            assert_eq!(again, Counts::default(), "{backend}");

            // Everything selected: project 11's records come back; object storage stays out.
            let everything = scope(SelectiveSync::Everything);
            let counts = check_type(&client, &db, &blobs, &it, &everything, ANY)
                .await
                .unwrap();
            assert_eq!(
                counts,
                Counts {
                    created: 1,
                    ..Counts::default()
                },
                "{backend}"
            );
            assert_eq!(model_ids().await, vec![1, 2, 3, 4, 5, 98], "{backend}");
        }
    }
}
