//! The primary's event log: `geo_events` plus `geo_event_log`, read by
//! secondaries from a cursor.
//!
//! Events are written in the same transaction as the change they announce,
//! so a secondary never sees an event for a change that rolled back. They are
//! published only while at least one secondary is registered and the type's
//! feature flag is on (GitLab's rule).

use crate::db::{Arg, Db, DbError, Tx};
use crate::feed::FeedEvent;
use serde_json::json;

pub const CREATED: &str = "created";
pub const UPDATED: &str = "updated";
pub const DELETED: &str = "deleted";
pub const CHECKSUM_SUCCEEDED: &str = "checksum_succeeded";

/// Whether events of `replicable_name` are published now.
pub async fn should_publish(tx: &mut Tx, replicable_name: &str) -> Result<bool, DbError> {
    let secondaries = tx
        .fetch_one(
            "SELECT COUNT(*) AS n FROM geo_nodes WHERE \"primary\" = $1",
            &[Arg::from(false)],
        )
        .await?
        .i64("n")?;
    if secondaries == 0 {
        return Ok(false);
    }
    let flag = format!("geo_{replicable_name}_replication");
    let row = tx
        .fetch_optional(
            "SELECT enabled FROM feature_flags WHERE name = $1",
            &[Arg::from(flag)],
        )
        .await?;
    Ok(match row {
        Some(row) => row.bool("enabled")?,
        None => true, // on by default
    })
}

/// Appends an event to the log if events are published now. Returns whether it did.
pub async fn publish(
    tx: &mut Tx,
    replicable_name: &str,
    event_name: &str,
    payload: serde_json::Value,
) -> Result<bool, DbError> {
    if !should_publish(tx, replicable_name).await? {
        return Ok(false);
    }
    let now = Db::now();
    let sql = match tx.backend() {
        crate::db::Backend::Postgres => {
            "INSERT INTO geo_events (replicable_name, event_name, payload, created_at) \
             VALUES ($1, $2, $3::jsonb, $4) RETURNING id"
        }
        crate::db::Backend::Sqlite => {
            "INSERT INTO geo_events (replicable_name, event_name, payload, created_at) \
             VALUES ($1, $2, $3, $4) RETURNING id"
        }
    };
    let event_id = tx
        .fetch_one(
            sql,
            &[
                replicable_name.into(),
                event_name.into(),
                payload.to_string().into(),
                now.into(),
            ],
        )
        .await?
        .i64("id")?;
    tx.execute(
        "INSERT INTO geo_event_log (created_at, geo_event_id) VALUES ($1, $2)",
        &[now.into(), event_id.into()],
    )
    .await?;
    Ok(true)
}

/// Appends one event per payload, with two multi-row statements, if events
/// are published now. Returns how many it appended.
pub async fn publish_many(
    tx: &mut Tx,
    replicable_name: &str,
    event_name: &str,
    payloads: &[serde_json::Value],
) -> Result<usize, DbError> {
    if payloads.is_empty() || !should_publish(tx, replicable_name).await? {
        return Ok(0);
    }
    let now = Db::now();
    let cast = match tx.backend() {
        crate::db::Backend::Postgres => "::jsonb",
        crate::db::Backend::Sqlite => "",
    };
    let mut published = 0;
    for chunk in payloads.chunks(500) {
        // `$1` name, `$2` event, `$3` time, then one payload per row.
        let rows: Vec<String> = (0..chunk.len())
            .map(|i| format!("($1, $2, ${}{cast}, $3)", i + 4))
            .collect();
        let mut args: Vec<Arg> = vec![replicable_name.into(), event_name.into(), now.into()];
        args.extend(chunk.iter().map(|p| Arg::from(p.to_string())));
        let mut ids = tx
            .fetch_map(
                &format!(
                    "INSERT INTO geo_events (replicable_name, event_name, payload, created_at) \
                     VALUES {} RETURNING id",
                    rows.join(", ")
                ),
                &args,
                |row| row.i64("id"),
            )
            .await?;
        // The log in event order, whatever order RETURNING gave.
        ids.sort_unstable();
        let mut args: Vec<Arg> = vec![now.into()];
        args.extend(ids.iter().map(|&id| Arg::from(id)));
        let rows: Vec<String> = (0..ids.len())
            .map(|i| format!("($1, ${})", i + 2))
            .collect();
        tx.execute(
            &format!(
                "INSERT INTO geo_event_log (created_at, geo_event_id) VALUES {}",
                rows.join(", ")
            ),
            &args,
        )
        .await?;
        published += ids.len();
    }
    Ok(published)
}

/// GitLab's payload: `{model_record_id, correlation_id}`.
pub fn payload(model_record_id: i64) -> serde_json::Value {
    json!({ "model_record_id": model_record_id, "correlation_id": uuid::Uuid::new_v4().to_string() })
}

/// Events with log id greater than `after`, oldest first.
pub async fn after(db: &Db, after: i64, limit: i64) -> Result<Vec<FeedEvent>, DbError> {
    select(
        db,
        "l.id > $1 ORDER BY l.id LIMIT $2",
        &[after.into(), limit.into()],
    )
    .await
}

/// The events with these log ids that exist, oldest first.
pub async fn by_ids(db: &Db, ids: &[i64]) -> Result<Vec<FeedEvent>, DbError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let args: Vec<Arg> = ids.iter().map(|&id| id.into()).collect();
    let list: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
    let condition = format!("l.id IN ({}) ORDER BY l.id", list.join(", "));
    select(db, &condition, &args).await
}

async fn select(db: &Db, condition: &str, args: &[Arg]) -> Result<Vec<FeedEvent>, DbError> {
    let payload_expr = match db.backend() {
        crate::db::Backend::Postgres => "e.payload::text",
        crate::db::Backend::Sqlite => "e.payload",
    };
    let sql = format!(
        "SELECT l.id, l.created_at, e.replicable_name, e.event_name, {payload_expr} AS payload \
         FROM geo_event_log l JOIN geo_events e ON e.id = l.geo_event_id WHERE {condition}"
    );
    let rows = db.fetch_all(&sql, args).await?;
    rows.iter()
        .map(|row| {
            let payload = row.text("payload")?;
            Ok(FeedEvent {
                id: row.i64("id")?,
                replicable_name: row.text("replicable_name")?,
                event_name: row.text("event_name")?,
                payload: serde_json::from_str(&payload)
                    .map_err(|e| DbError::decode("payload", e))?,
                created_at: row.ts("created_at")?,
            })
        })
        .collect()
}

/// The newest event: its log id and time.
pub async fn last(db: &Db) -> Result<Option<(i64, chrono::DateTime<chrono::Utc>)>, DbError> {
    let row = db
        .fetch_optional(
            "SELECT id, created_at FROM geo_event_log ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await?;
    row.map(|r| Ok((r.i64("id")?, r.ts("created_at")?)))
        .transpose()
}
