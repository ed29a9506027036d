//! Listing a type's registries as GitLab's GraphQL registries resolver does
//! (GitLab's `ee/app/graphql/resolvers/geo/registries_resolver.rb`): filters,
//! sort orders and Relay keyset pages.
//!
//! Sorts: `ID_ASC`, `ID_DESC`, `VERIFIED_AT_ASC/DESC`,
//! `LAST_SYNCED_AT_ASC/DESC`, always with the registry id as tie-breaker.
//! A timestamp sort puts rows without a timestamp last when ascending and
//! first when descending (one order and its exact reverse, so paging
//! backwards is paging forwards in the reversed order).
//!
//! A cursor is opaque to clients: base64 of `{"id":…,"at":µs|null}`, the
//! last row's id and sort value. Pages are keyset pages, so rows changing
//! state between two pages are neither skipped nor repeated because of
//! offsets.

use super::registry::{Registry, RegistryRow};
use crate::db::{Arg, Db, DbError};
use crate::states::{SyncState, VerificationState};
use base64::Engine;
use chrono::{DateTime, Utc};

/// GitLab's page size limit (`max_page_size`), also the default.
pub const MAX_PAGE_SIZE: i64 = 100;

/// What a list is sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    Id,
    VerifiedAt,
    LastSyncedAt,
}

/// A sort order (GitLab's `GeoRegistrySort`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sort {
    pub key: SortKey,
    pub descending: bool,
}

impl Default for Sort {
    fn default() -> Self {
        Sort {
            key: SortKey::Id,
            descending: false,
        }
    }
}

impl Sort {
    /// GitLab's enum values.
    pub const NAMES: [&str; 6] = [
        "ID_ASC",
        "ID_DESC",
        "VERIFIED_AT_ASC",
        "VERIFIED_AT_DESC",
        "LAST_SYNCED_AT_ASC",
        "LAST_SYNCED_AT_DESC",
    ];

    /// The sort called `name` (one of [`Sort::NAMES`]).
    pub fn parse(name: &str) -> Option<Sort> {
        let (key, descending) = match name {
            "ID_ASC" => (SortKey::Id, false),
            "ID_DESC" => (SortKey::Id, true),
            "VERIFIED_AT_ASC" => (SortKey::VerifiedAt, false),
            "VERIFIED_AT_DESC" => (SortKey::VerifiedAt, true),
            "LAST_SYNCED_AT_ASC" => (SortKey::LastSyncedAt, false),
            "LAST_SYNCED_AT_DESC" => (SortKey::LastSyncedAt, true),
            _ => return None,
        };
        Some(Sort { key, descending })
    }

    fn column(self) -> Option<&'static str> {
        match self.key {
            SortKey::Id => None,
            SortKey::VerifiedAt => Some("verified_at"),
            SortKey::LastSyncedAt => Some("last_synced_at"),
        }
    }

    fn reversed(self) -> Sort {
        Sort {
            descending: !self.descending,
            ..self
        }
    }

    /// The `ORDER BY` list (NULLs last ascending, first descending,
    /// written portably).
    fn order_by(self) -> String {
        let dir = if self.descending { "DESC" } else { "ASC" };
        match self.column() {
            None => format!("id {dir}"),
            Some(c) => {
                format!("CASE WHEN {c} IS NULL THEN 1 ELSE 0 END {dir}, {c} {dir}, id {dir}")
            }
        }
    }

    /// Rows after `cursor` in this order; `n` is the next placeholder.
    fn after(self, cursor: &Cursor, n: usize, args: &mut Vec<Arg>) -> String {
        let (gt, id) = (if self.descending { "<" } else { ">" }, n);
        args.push(cursor.id.into());
        let Some(c) = self.column() else {
            return format!("id {gt} ${id}");
        };
        match (cursor.at, self.descending) {
            // Ascending, NULLs last: past a NULL only NULLs with a greater id.
            (None, false) => format!("({c} IS NULL AND id > ${id})"),
            (Some(at), false) => {
                args.push(at.into());
                let v = n + 1;
                format!("({c} IS NULL OR {c} > ${v} OR ({c} = ${v} AND id > ${id}))")
            }
            // Descending, NULLs first: past a NULL come the other NULLs, then every value.
            (None, true) => format!("(({c} IS NULL AND id < ${id}) OR {c} IS NOT NULL)"),
            (Some(at), true) => {
                args.push(at.into());
                let v = n + 1;
                format!("({c} IS NOT NULL AND ({c} < ${v} OR ({c} = ${v} AND id < ${id})))")
            }
        }
    }

    fn cursor_of(self, row: &RegistryRow) -> Cursor {
        Cursor {
            id: row.id,
            at: match self.key {
                SortKey::Id => None,
                SortKey::VerifiedAt => row.verified_at,
                SortKey::LastSyncedAt => row.last_synced_at,
            },
        }
    }
}

/// A position in a list: a row's id and sort value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cursor {
    pub id: i64,
    /// The sort timestamp, in microseconds since the Unix epoch.
    #[serde(with = "micros")]
    pub at: Option<DateTime<Utc>>,
}

mod micros {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(at: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match at {
            Some(at) => s.serialize_some(&at.timestamp_micros()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        Option::<i64>::deserialize(d)?
            .map(|us| {
                DateTime::from_timestamp_micros(us)
                    .ok_or_else(|| serde::de::Error::custom("timestamp out of range"))
            })
            .transpose()
    }
}

impl Cursor {
    /// The opaque form clients see.
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).expect("a cursor serializes");
        base64::engine::general_purpose::STANDARD.encode(json)
    }

    pub fn decode(text: &str) -> Option<Cursor> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// Which registries a list (or a bulk update) takes. Kept as JSON with a
/// bulk job (`bulk.rs`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Filter {
    /// Registry ids.
    pub ids: Option<Vec<i64>>,
    pub state: Option<SyncState>,
    pub verification_state: Option<VerificationState>,
    /// Model record ids (the keyword filter's answer from the primary).
    pub model_ids: Option<Vec<i64>>,
}

impl Filter {
    /// The `WHERE` conditions (`TRUE` when empty), binding from `$1` on.
    pub fn conditions(&self, registry: &Registry, args: &mut Vec<Arg>) -> String {
        let mut parts = Vec::new();
        let list = |values: &[i64], args: &mut Vec<Arg>| -> String {
            if values.is_empty() {
                return "NULL".into();
            }
            values
                .iter()
                .map(|v| {
                    args.push((*v).into());
                    format!("${}", args.len())
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        if let Some(ids) = &self.ids {
            parts.push(format!("id IN ({})", list(ids, args)));
        }
        if let Some(ids) = &self.model_ids {
            parts.push(format!("{} IN ({})", registry.fk(), list(ids, args)));
        }
        if let Some(state) = self.state {
            parts.push(format!("state = {}", state as i16));
        }
        if let Some(state) = self.verification_state {
            parts.push(format!("verification_state = {}", state as i16));
        }
        if parts.is_empty() {
            "1 = 1".into()
        } else {
            parts.join(" AND ")
        }
    }
}

/// Which page: Relay's `first`/`after` or `last`/`before`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageRequest {
    pub first: Option<i64>,
    pub after: Option<Cursor>,
    pub last: Option<i64>,
    pub before: Option<Cursor>,
}

/// One page of registries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// `(cursor, row)` in the requested order.
    pub rows: Vec<(Cursor, RegistryRow)>,
    pub has_next_page: bool,
    pub has_previous_page: bool,
}

/// Why a page request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// How many of `registry`'s rows match `filter` (GraphQL's `count`): one
/// `COUNT(*)` over the same conditions as [`page`], answered from the
/// `state` index when the replication state is filtered.
#[cfg(test)]
pub async fn count(db: &Db, registry: &Registry, filter: &Filter) -> Result<i64, DbError> {
    let mut args = Vec::new();
    let conditions = filter.conditions(registry, &mut args);
    let sql = format!(
        "SELECT COUNT(*) AS n FROM {} WHERE {conditions}",
        registry.table()
    );
    Ok(db.fetch_one(&sql, &args).await?.int("n")?.unwrap_or(0))
}

/// One page of `registry`'s rows matching `filter`, in `sort` order.
pub async fn page(
    db: &Db,
    registry: &Registry,
    filter: &Filter,
    sort: Sort,
    request: &PageRequest,
) -> Result<Page, ListError> {
    if request.first.is_some() && request.last.is_some() {
        return Err(ListError::Invalid(
            "pass either `first` or `last`, not both".into(),
        ));
    }
    for n in [request.first, request.last].into_iter().flatten() {
        if n < 0 {
            return Err(ListError::Invalid(
                "`first` and `last` must not be negative".into(),
            ));
        }
    }
    let backward = request.last.is_some() || (request.before.is_some() && request.first.is_none());
    let limit = if backward {
        request.last
    } else {
        request.first
    }
    .unwrap_or(MAX_PAGE_SIZE)
    .min(MAX_PAGE_SIZE);
    let order = if backward { sort.reversed() } else { sort };
    let mut args = Vec::new();
    let mut conditions = filter.conditions(registry, &mut args);
    let (from, other_end) = if backward {
        (request.before, request.after)
    } else {
        (request.after, request.before)
    };
    if let Some(cursor) = &from {
        let n = args.len() + 1;
        conditions = format!("{conditions} AND {}", order.after(cursor, n, &mut args));
    }
    // The cursor on the far side bounds the page too (Relay's algorithm).
    if let Some(cursor) = &other_end {
        let n = args.len() + 1;
        let before = order.reversed().after(cursor, n, &mut args);
        conditions = format!("{conditions} AND {before}");
    }
    let mut rows = registry
        .select(db, &conditions, &args, &order.order_by(), limit + 1)
        .await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    if backward {
        rows.reverse();
    }
    let rows = rows.into_iter().map(|r| (sort.cursor_of(&r), r)).collect();
    Ok(if backward {
        Page {
            rows,
            has_next_page: request.before.is_some(),
            has_previous_page: more,
        }
    } else {
        Page {
            rows,
            has_next_page: more,
            has_previous_page: request.after.is_some(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secondary::testing::{helm, tracking_databases};

    async fn ids(
        db: &Db,
        r: &Registry,
        filter: &Filter,
        sort: Sort,
        req: PageRequest,
    ) -> (Vec<i64>, bool, bool) {
        let page = page(db, r, filter, sort, &req).await.unwrap();
        (
            page.rows.iter().map(|(_, row)| row.model_id).collect(),
            page.has_next_page,
            page.has_previous_page,
        )
    }

    /// How [`walk`] pages: forward from the start (`first`, `after`) or
    /// backward from the end (`last`, `before`), this many rows a page.
    #[derive(Clone, Copy)]
    enum Walk {
        Forward(i64),
        Backward(i64),
    }

    /// Every model id `filter` selects, in `sort` order, page by page.
    /// Forward, each page after the first says it has a previous page.
    async fn walk(db: &Db, r: &Registry, filter: &Filter, sort: Sort, how: Walk) -> Vec<i64> {
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let req = match how {
                Walk::Forward(size) => PageRequest {
                    first: Some(size),
                    after: cursor,
                    ..Default::default()
                },
                Walk::Backward(size) => PageRequest {
                    last: Some(size),
                    before: cursor,
                    ..Default::default()
                },
            };
            let p = page(db, r, filter, sort, &req).await.unwrap();
            let ids = p.rows.iter().map(|(_, row)| row.model_id);
            if let Walk::Forward(_) = how {
                assert_eq!(p.has_previous_page, cursor.is_some());
                seen.extend(ids);
                if !p.has_next_page {
                    return seen;
                }
                cursor = p.rows.last().map(|(c, _)| *c);
            } else {
                seen.splice(0..0, ids);
                if !p.has_previous_page {
                    return seen;
                }
                cursor = p.rows.first().map(|(c, _)| *c);
            }
        }
    }

    #[tokio::test]
    async fn sorts_filters_and_pages_both_ways() {
        let r = Registry::of(&helm());
        for (backend, db) in tracking_databases().await {
            r.insert_missing(&db, &(1..=7).collect::<Vec<_>>())
                .await
                .unwrap();
            // verified_at: 5 → t0, 3 → t0, 1 → t1; the others NULL.
            let t0 = Utc::now() - chrono::Duration::hours(2);
            let t1 = Utc::now() - chrono::Duration::hours(1);
            for (id, at) in [(5, t0), (3, t0), (1, t1)] {
                db.execute(
                    &format!(
                        "UPDATE {} SET verified_at = $1, state = 2 WHERE {} = $2",
                        r.table(),
                        r.fk()
                    ),
                    &[at.into(), (id as i64).into()],
                )
                .await
                .unwrap();
            }
            let all = Filter::default();
            let by_verified = Sort::parse("VERIFIED_AT_ASC").unwrap();
            // Registry ids follow model ids here (inserted in order).
            let (got, _, _) = ids(&db, &r, &all, by_verified, PageRequest::default()).await;
            assert_eq!(got, [3, 5, 1, 2, 4, 6, 7], "{backend}");
            let desc = Sort::parse("VERIFIED_AT_DESC").unwrap();
            let (got, _, _) = ids(&db, &r, &all, desc, PageRequest::default()).await;
            assert_eq!(got, [7, 6, 4, 2, 1, 5, 3], "{backend}");

            // Forward pages of 2 walk the whole order, across NULLs.
            for sort in [
                by_verified,
                desc,
                Sort::default(),
                Sort::parse("ID_DESC").unwrap(),
            ] {
                let (expected, _, _) = ids(&db, &r, &all, sort, PageRequest::default()).await;
                let forward = walk(&db, &r, &all, sort, Walk::Forward(2)).await;
                assert_eq!(forward, expected, "{backend} {sort:?} forward");
                // Backward pages of 3 walk it from the end.
                let backward = walk(&db, &r, &all, sort, Walk::Backward(3)).await;
                assert_eq!(backward, expected, "{backend} {sort:?} backward");
            }

            // Filters.
            let synced = Filter {
                state: Some(SyncState::Synced),
                ..Default::default()
            };
            let (got, _, _) = ids(&db, &r, &synced, Sort::default(), PageRequest::default()).await;
            assert_eq!(got, [1, 3, 5], "{backend}");
            assert_eq!(count(&db, &r, &synced).await.unwrap(), 3, "{backend}");
            assert_eq!(count(&db, &r, &all).await.unwrap(), 7, "{backend}");
            let some = Filter {
                model_ids: Some(vec![2, 3, 4]),
                ids: Some(vec![3, 4, 5]),
                ..Default::default()
            };
            let (got, _, _) = ids(&db, &r, &some, Sort::default(), PageRequest::default()).await;
            assert_eq!(got, [3, 4], "{backend}");
            assert_eq!(count(&db, &r, &some).await.unwrap(), 2, "{backend}");
            let none = Filter {
                model_ids: Some(vec![]),
                ..Default::default()
            };
            let (got, _, _) = ids(&db, &r, &none, Sort::default(), PageRequest::default()).await;
            assert!(got.is_empty(), "{backend}");
            assert_eq!(count(&db, &r, &none).await.unwrap(), 0, "{backend}");

            // A cursor round-trips through its text form.
            let p = page(
                &db,
                &r,
                &all,
                by_verified,
                &PageRequest {
                    first: Some(1),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
            let cursor = p.rows[0].0;
            assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
            assert_eq!(Cursor::decode("garbage"), None);
        }
    }

    /// The admin page's query on a large table: a filtered page deep in the
    /// list and its count are right, and on SQLite the page walks the
    /// primary key (no sort of the whole table) while the count reads the
    /// `state` index. Prints how long they took (not asserted).
    #[tokio::test]
    async fn filtered_pages_and_counts_on_many_rows_use_indexes() {
        const ROWS: i64 = 100_000;
        let r = Registry::of(&helm());
        for (backend, db) in tracking_databases().await {
            r.insert_missing(&db, &(1..=ROWS).collect::<Vec<_>>())
                .await
                .unwrap();
            // Every 7th row failed.
            db.execute(
                &format!("UPDATE {} SET state = 3 WHERE id % 7 = 0", r.table()),
                &[],
            )
            .await
            .unwrap();
            if backend == "postgres" {
                db.execute(&format!("ANALYZE {}", r.table()), &[])
                    .await
                    .unwrap();
            }
            let failed = Filter {
                state: Some(SyncState::Failed),
                ..Default::default()
            };
            let started = std::time::Instant::now();
            let n = count(&db, &r, &failed).await.unwrap();
            let counted = started.elapsed();
            assert_eq!(n, ROWS / 7, "{backend}");
            let after = Cursor {
                id: ROWS / 2,
                at: None,
            };
            let started = std::time::Instant::now();
            let p = page(
                &db,
                &r,
                &failed,
                Sort::default(),
                &PageRequest {
                    first: Some(50),
                    after: Some(after),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
            let paged = started.elapsed();
            let got: Vec<i64> = p.rows.iter().map(|(_, row)| row.id).collect();
            let first = (ROWS / 2 / 7 + 1) * 7;
            let expected: Vec<i64> = (0..50).map(|i| first + 7 * i).collect();
            assert_eq!(got, expected, "{backend}");
            assert!(p.has_next_page && p.has_previous_page, "{backend}");
            eprintln!(
                "{backend}: {ROWS} registries, count of failed {counted:?}, page of 50 after id {} {paged:?}",
                after.id
            );

            if backend == "sqlite" {
                let plan = |sql: String, args: Vec<Arg>| {
                    let db = db.clone();
                    async move {
                        db.fetch_all(&format!("EXPLAIN QUERY PLAN {sql}"), &args)
                            .await
                            .unwrap()
                            .iter()
                            .map(|row| row.text("detail").unwrap())
                            .collect::<Vec<_>>()
                            .join("\n")
                    }
                };
                let mut args = Vec::new();
                let conditions = failed.conditions(&r, &mut args);
                let n = args.len() + 1;
                let keyset = Sort::default().after(&after, n, &mut args);
                let page_plan = plan(
                    format!(
                        "SELECT id FROM {} WHERE {conditions} AND {keyset} ORDER BY {} LIMIT 51",
                        r.table(),
                        Sort::default().order_by()
                    ),
                    args,
                )
                .await;
                assert!(
                    !page_plan.contains("TEMP B-TREE"),
                    "the page sorts the table:\n{page_plan}"
                );
                let mut args = Vec::new();
                let conditions = failed.conditions(&r, &mut args);
                let count_plan = plan(
                    format!("SELECT COUNT(*) FROM {} WHERE {conditions}", r.table()),
                    args,
                )
                .await;
                assert!(
                    count_plan.contains("_on_state"),
                    "the count does not use the state index:\n{count_plan}"
                );
            }
        }
    }
}
