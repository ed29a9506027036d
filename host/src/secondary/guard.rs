//! The mass-removal guard of a secondary: a consistency pass (or the scope
//! re-evaluation of a hot swap) that would remove more than
//! `deletions.max_removal_share` of a type's registries pauses its removals
//! and holds them until an operator confirms (`geohost registry
//! confirm-removals`, or GraphQL's `geoRegistriesConfirmRemovals`). A hold
//! shows in the site status (`removal_holds`), the metric
//! `geohost_registry_removals_held{name,url,type}` (from the status), the
//! log and the admin page.
//!
//! Why: one careless type version that answers "out of scope" for every
//! record would otherwise make the next pass delete every registry and
//! blob of its type on every secondary. A change of this site's
//! selective-sync settings on the primary is an operator's own decision:
//! the first pass under new settings confirms its removals itself (the
//! settings each pass applied are recorded per type). Removed blobs go to
//! the quarantine either way (`storage/quarantine.rs`).

use crate::db::{Arg, Db, DbError};
use crate::plugin::{SelectiveSync, SyncSettings};
use chrono::{DateTime, Utc};

/// What asked for the removals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// A periodic (or node-settings-triggered) consistency pass.
    Consistency,
    /// A hot swap's immediate scope re-evaluation.
    Swap,
}

impl Cause {
    fn as_str(self) -> &'static str {
        match self {
            Cause::Consistency => "consistency",
            Cause::Swap => "swap",
        }
    }
}

/// How a pass guards its removals.
#[derive(Debug, Clone, Copy)]
pub struct Guard {
    /// `deletions.max_removal_share`.
    pub max_share: f64,
    pub cause: Cause,
}

/// Removals held for an operator.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Hold {
    pub replicable_name: String,
    /// Registries the pass would remove (out of scope, or gone from the primary).
    pub removals: i64,
    /// The type's registries when the pass ran.
    pub registries: i64,
    /// `consistency` or `swap`.
    pub cause: String,
    /// SHA-256 of the type version that decided the removals.
    pub decided_by: Option<String>,
    pub held_at: DateTime<Utc>,
    /// When an operator confirmed; the next pass then removes them.
    pub confirmed_at: Option<DateTime<Utc>>,
}

/// Whether a pass may remove what it found.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Within the share, confirmed by an operator, or following a
    /// selective-sync change on the primary (`why`).
    Proceed { why: &'static str },
    /// Held until an operator confirms.
    Held(Hold),
}

/// A stable text of the selective-sync settings a pass applies.
pub fn scope_key(settings: &SyncSettings) -> String {
    let selection = match &settings.selective_sync {
        SelectiveSync::Everything => "everything".to_string(),
        SelectiveSync::Namespaces(ids) => {
            let mut ids = ids.clone();
            ids.sort_unstable();
            format!("namespaces {ids:?}")
        }
        SelectiveSync::Shards(shards) => {
            let mut shards = shards.clone();
            shards.sort();
            format!("shards {shards:?}")
        }
    };
    format!(
        "{selection}; object storage {}",
        settings.sync_object_storage
    )
}

const COLUMNS: &str = "replicable_name, applied_scope, held_removals, held_registries, held_cause, \
                       held_by, held_at, confirmed_removals, confirmed_at";

struct Row {
    applied_scope: Option<String>,
    hold: Option<Hold>,
    confirmed_removals: Option<i64>,
}

async fn read(db: &Db, name: &str) -> Result<Option<Row>, DbError> {
    let Some(row) = db
        .fetch_optional(
            &format!("SELECT {COLUMNS} FROM geo_removal_guards WHERE replicable_name = $1"),
            &[name.into()],
        )
        .await?
    else {
        return Ok(None);
    };
    Ok(Some(decode(&row)?))
}

fn decode(row: &crate::db::DbRow) -> Result<Row, DbError> {
    let hold = match (row.opt_i64("held_removals")?, row.opt_ts("held_at")?) {
        (Some(removals), Some(held_at)) => Some(Hold {
            replicable_name: row.text("replicable_name")?,
            removals,
            registries: row.opt_i64("held_registries")?.unwrap_or(0),
            cause: row.opt_text("held_cause")?.unwrap_or_default(),
            decided_by: row.opt_text("held_by")?,
            held_at,
            confirmed_at: row.opt_ts("confirmed_at")?,
        }),
        _ => None,
    };
    Ok(Row {
        applied_scope: row.opt_text("applied_scope")?,
        hold,
        confirmed_removals: row.opt_i64("confirmed_removals")?,
    })
}

/// Decides whether a pass that applies `scope` may remove `removals` of
/// the type's `registries` now; holds them (recorded, reported) if not.
pub async fn admit(
    db: &Db,
    guard: Guard,
    name: &str,
    removals: i64,
    registries: i64,
    scope: &str,
    decided_by: &str,
) -> Result<Decision, DbError> {
    if removals == 0 || (removals as f64) <= guard.max_share * registries as f64 {
        return Ok(Decision::Proceed {
            why: "within the share",
        });
    }
    let row = read(db, name).await?;
    if let Some(row) = &row {
        if row
            .applied_scope
            .as_deref()
            .is_some_and(|applied| applied != scope)
        {
            return Ok(Decision::Proceed {
                why: "this site's selective-sync settings changed on the primary",
            });
        }
        if row.hold.as_ref().is_some_and(|h| h.confirmed_at.is_some())
            && row.confirmed_removals.is_some_and(|n| removals <= n)
        {
            return Ok(Decision::Proceed {
                why: "confirmed by an operator",
            });
        }
    }
    // Held: a new hold, or the current one with today's numbers (a larger
    // count than was confirmed needs a new confirmation).
    let existing = row.and_then(|r| r.hold);
    let hold = Hold {
        replicable_name: name.to_string(),
        removals,
        registries,
        cause: existing
            .as_ref()
            .map(|h| h.cause.clone())
            .unwrap_or_else(|| guard.cause.as_str().to_string()),
        decided_by: Some(decided_by.to_string()),
        held_at: existing.as_ref().map(|h| h.held_at).unwrap_or_else(Db::now),
        confirmed_at: None,
    };
    db.execute(
        "INSERT INTO geo_removal_guards (replicable_name, held_removals, held_registries, \
         held_cause, held_by, held_at) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (replicable_name) DO UPDATE SET held_removals = $2, held_registries = $3, \
         held_cause = $4, held_by = $5, held_at = $6, confirmed_removals = NULL, confirmed_at = NULL",
        &[
            name.into(),
            removals.into(),
            registries.into(),
            hold.cause.clone().into(),
            decided_by.into(),
            hold.held_at.into(),
        ],
    )
    .await?;
    Ok(Decision::Held(hold))
}

/// Records that a pass of `name` ran to its end under `scope` (its
/// removals, if any, done), which clears any hold.
pub async fn applied(db: &Db, name: &str, scope: &str) -> Result<(), DbError> {
    db.execute(
        "INSERT INTO geo_removal_guards (replicable_name, applied_scope) VALUES ($1, $2) \
         ON CONFLICT (replicable_name) DO UPDATE SET applied_scope = $2, held_removals = NULL, \
         held_registries = NULL, held_cause = NULL, held_by = NULL, held_at = NULL, \
         confirmed_removals = NULL, confirmed_at = NULL",
        &[name.into(), scope.into()],
    )
    .await?;
    Ok(())
}

/// Confirms the removals held for `name`: the next pass removes up to that
/// many. `None` when nothing is held.
pub async fn confirm(db: &Db, name: &str) -> Result<Option<Hold>, DbError> {
    let confirmed = db
        .execute(
            "UPDATE geo_removal_guards SET confirmed_at = $1, confirmed_removals = held_removals \
             WHERE replicable_name = $2 AND held_removals IS NOT NULL",
            &[Arg::from(Db::now()), name.into()],
        )
        .await?;
    if confirmed == 0 {
        return Ok(None);
    }
    let hold = read(db, name).await?.and_then(|r| r.hold);
    if let Some(hold) = &hold {
        tracing::warn!(
            r#type = name,
            removals = hold.removals,
            "held registry removals confirmed by an operator"
        );
    }
    Ok(hold)
}

/// Every held removal, by type.
pub async fn holds(db: &Db) -> Result<Vec<Hold>, DbError> {
    db.fetch_all(
        &format!(
            "SELECT {COLUMNS} FROM geo_removal_guards WHERE held_removals IS NOT NULL \
             ORDER BY replicable_name"
        ),
        &[],
    )
    .await?
    .iter()
    .map(|row| Ok(decode(row)?.hold))
    .filter_map(Result::transpose)
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::migrate;
    use crate::db::testing::test_databases;

    const GUARD: Guard = Guard {
        max_share: 0.1,
        cause: Cause::Consistency,
    };

    #[tokio::test]
    async fn removals_past_the_share_wait_for_a_confirmation_or_a_scope_change() {
        for (backend, db) in test_databases().await {
            migrate::tracking(&db).await.unwrap();
            let admit = async |removals, scope| {
                admit(&db, GUARD, "t", removals, 100, scope, "sha")
                    .await
                    .unwrap()
            };
            assert!(
                matches!(admit(10, "all").await, Decision::Proceed { .. }),
                "{backend}"
            );
            let Decision::Held(hold) = admit(100, "all").await else {
                panic!("{backend}: not held")
            };
            assert_eq!((hold.removals, hold.registries), (100, 100));
            let listed = holds(&db).await.unwrap();
            assert_eq!(listed.len(), 1, "{backend}");
            assert_eq!(
                (listed[0].removals, listed[0].cause.as_str()),
                (100, "consistency")
            );
            // Held until confirmed; a confirmation covers that many.
            assert!(matches!(admit(100, "all").await, Decision::Held(_)));
            let confirmed = confirm(&db, "t").await.unwrap().unwrap();
            assert!(confirmed.confirmed_at.is_some());
            assert!(
                matches!(admit(101, "all").await, Decision::Held(_)),
                "{backend}"
            );
            assert!(confirm(&db, "t").await.unwrap().is_some());
            assert_eq!(
                admit(101, "all").await,
                Decision::Proceed {
                    why: "confirmed by an operator"
                }
            );
            applied(&db, "t", "all").await.unwrap();
            assert!(holds(&db).await.unwrap().is_empty(), "{backend}");
            assert!(confirm(&db, "t").await.unwrap().is_none());
            // Under other selective-sync settings than the last pass applied:
            // the operator's change confirms itself.
            assert_eq!(
                admit(100, "namespaces [1]").await,
                Decision::Proceed {
                    why: "this site's selective-sync settings changed on the primary"
                }
            );
            assert!(matches!(admit(100, "all").await, Decision::Held(_)));
        }
    }

    #[test]
    fn scope_keys_ignore_order() {
        let of = |selective_sync| SyncSettings {
            selective_sync,
            sync_object_storage: false,
        };
        assert_eq!(
            scope_key(&of(SelectiveSync::Namespaces(vec![2, 1]))),
            scope_key(&of(SelectiveSync::Namespaces(vec![1, 2])))
        );
        assert_ne!(
            scope_key(&of(SelectiveSync::Everything)),
            scope_key(&SyncSettings::everything())
        );
    }
}
