//! Least access: a secondary's credentials fetch only the records in that
//! secondary's selective-sync scope.
//!
//! The scope is the requesting site's `geo_nodes` settings (namespaces or
//! shards, object storage) decided by the type's plugin over the primary's
//! own records and topology, as the secondary decides it over the feed
//! ([`InstalledType::in_scope`]). It is read once per request: the topology
//! is loaded only when the site selects something, and a site that selects
//! everything, object storage included, sees every record without a plugin
//! call (the hot path of a full replica stays as it was).
//!
//! A record out of scope is answered exactly as a missing one, so a
//! secondary learns nothing about records it may not fetch: the single
//! retrieve answers the same 404, the batch retrieve the same not-found
//! part, the records feed by id (`?ids=`) omits it, and the event feed
//! withholds the event. The paged records feed stays whole: the
//! consistency pass needs the columns of a record that left the scope to
//! remove its local copy (see `docs/decisions.md`, "Least access"). A
//! record the plugin cannot decide on is out of scope: access fails closed.

use crate::catalog::{InstalledType, Scope};
use crate::db::{Db, DbError};
use crate::feed::{FeedEvent, FeedRecord, NodeSettings};
use crate::plugin::SelectiveSync;
use crate::site::Site;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// What one secondary may fetch, for one request.
#[derive(Debug, Clone)]
pub struct Access {
    /// `None`: every record.
    scope: Option<Scope>,
}

/// Why the scope could not be decided.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("site {site}: its selective-sync settings are unusable: {message}")]
    Settings { site: String, message: String },
    #[error(transparent)]
    Call(#[from] crate::catalog::CallError),
}

impl Access {
    /// What `node` (the requesting secondary) may fetch.
    pub async fn of(db: &Db, node: &NodeSettings) -> Result<Access, AccessError> {
        let settings = node
            .scope()
            .to_settings()
            .map_err(|message| AccessError::Settings {
                site: node.name.clone(),
                message,
            })?;
        if matches!(settings.selective_sync, SelectiveSync::Everything)
            && settings.sync_object_storage
        {
            return Ok(Access { scope: None });
        }
        let topology = Arc::new(super::topology::load(db).await?);
        Ok(Access {
            scope: Some(Scope { settings, topology }),
        })
    }

    /// Whether the site may fetch each of `records` of `it`, in order.
    pub async fn visible(
        &self,
        it: &InstalledType,
        records: &[FeedRecord],
    ) -> Result<Vec<bool>, AccessError> {
        let Some(scope) = &self.scope else {
            return Ok(vec![true; records.len()]);
        };
        if records.is_empty() {
            return Ok(Vec::new());
        }
        Ok(it
            .in_scope(scope, records)
            .await?
            .into_iter()
            .map(|decided| decided == Ok(true))
            .collect())
    }

    /// `records` without those the site may not fetch.
    pub async fn filter(
        &self,
        it: &InstalledType,
        records: Vec<FeedRecord>,
    ) -> Result<Vec<FeedRecord>, AccessError> {
        if self.scope.is_none() {
            return Ok(records);
        }
        let visible = self.visible(it, &records).await?;
        Ok(records
            .into_iter()
            .zip(visible)
            .filter_map(|(record, visible)| visible.then_some(record))
            .collect())
    }
}

impl Access {
    /// The ids of `events` the site may not see: `created`, `updated` and
    /// `checksum_succeeded` events of records out of its scope. A
    /// `deleted` event always passes (its record is gone, so there is no
    /// scope to decide, and a site that replicated the record before its
    /// selective sync changed must still delete its copy), as do events of
    /// a type not installed here or of a record gone since (the secondary
    /// finds nothing to fetch).
    pub async fn withheld_events(
        &self,
        site: &Site,
        events: &[FeedEvent],
    ) -> Result<Vec<i64>, AccessError> {
        if self.scope.is_none() {
            return Ok(Vec::new());
        }
        // The events to decide, by type: (log id, record id).
        let mut by_type: BTreeMap<&str, Vec<(i64, i64)>> = BTreeMap::new();
        for event in events {
            if event.event_name == super::events::DELETED {
                continue;
            }
            if let Some(model_id) = event.payload["model_record_id"].as_i64() {
                by_type
                    .entry(&event.replicable_name)
                    .or_default()
                    .push((event.id, model_id));
            }
        }
        let mut withheld = Vec::new();
        for (name, pairs) in by_type {
            let Some(it) = site.installed(name) else {
                continue;
            };
            let ids: Vec<i64> = pairs
                .iter()
                .map(|(_, id)| *id)
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            let records: Vec<FeedRecord> = super::records::by_ids(&site.db, &it, &ids)
                .await?
                .iter()
                .map(|r| r.to_feed(&it))
                .collect();
            let visible: HashMap<i64, bool> = records
                .iter()
                .map(|r| r.id)
                .zip(self.visible(&it, &records).await?)
                .collect();
            withheld.extend(
                pairs
                    .iter()
                    .filter(|(_, model_id)| visible.get(model_id) == Some(&false))
                    .map(|(event_id, _)| *event_id),
            );
        }
        withheld.sort_unstable();
        Ok(withheld)
    }
}
