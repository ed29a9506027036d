//! `claims-recovery`: SIGKILL of the secondary one second into syncing
//! 1,000 records, then a restart, on a SQLite and on a PostgreSQL tracking
//! database. The claim lease is 300 s and the stuck-row timeouts an hour,
//! so only releasing the dead process's claims (at startup on SQLite, by
//! its gone process id on PostgreSQL) lets every record be synced and
//! verified within [`LIMIT`] of the restart.

use super::{Databases, Outcome, Pair, content, outcome, skipped};
use crate::sites::HELM;
use std::time::{Duration, Instant};

/// Records written before the secondary starts.
const RECORDS: usize = 1000;
/// How long after the restart every record must be synced and verified.
const LIMIT: Duration = Duration::from_secs(60);

pub async fn scenario(postgres: bool) -> Outcome {
    let name = if postgres {
        "claims-recovery: secondary SIGKILL 1 s into 1,000 syncs, PostgreSQL tracking"
    } else {
        "claims-recovery: secondary SIGKILL 1 s into 1,000 syncs, SQLite tracking"
    };
    let mut databases = Databases {
        workers: "claim_lease_secs = 300\n".into(),
        ..Databases::default()
    };
    if postgres {
        let Some(tracking) = geohost::db::testing::fresh_postgres_url().await else {
            if std::env::var("CI").is_ok() {
                panic!("CI must have PostgreSQL");
            }
            return skipped(name, "GEOHOST_TEST_POSTGRES_URL is unset".into());
        };
        databases.secondary = geohost::db::testing::fresh_postgres_url().await;
        databases.tracking = Some(tracking);
    }
    let mut pair = Pair::prepare(databases, None, |_| {}).await;
    // No stuck-row timeout may hide a claim left behind.
    pair.set_secondary_setting("sync_timeout_secs = 3", "sync_timeout_secs = 3600");
    pair.set_secondary_setting(
        "verification_timeout_secs = 3",
        "verification_timeout_secs = 3600",
    );
    pair.primary.start().await;
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let writer = pair.writer();
            let projects = pair.projects.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in (w..RECORDS).step_by(4) {
                    let project = projects[i % 2];
                    let channel = format!("r{i}");
                    let body = content(project, &channel, 1, 300 + i % 700);
                    let sha = writer.write(project, &channel, body).await;
                    acked.push(((project, channel), sha));
                }
                acked
            })
        })
        .collect();
    for task in writers {
        for (key, sha) in task.await.unwrap() {
            pair.acked.insert(key, sha);
        }
    }
    pair.secondary.start().await;
    // One second into syncing: once the first row is claimed.
    let waited = Instant::now();
    while pair.claimed_count().await == 0 && waited.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    pair.secondary.kill();
    let registry = pair.registry(HELM).await.unwrap_or_default();
    let started = registry
        .values()
        .filter(|(s, v)| *s == 1 || *v == 1)
        .count();
    let synced = registry.values().filter(|(s, _)| *s == 2).count();
    pair.secondary.start().await;
    let time = pair.converge().await.and_then(|took| {
        if took <= LIMIT {
            Ok(took)
        } else {
            Err(format!("took {took:?}, more than {LIMIT:?}"))
        }
    });
    let lost = pair.lost().await;
    let died = pair.death_note();
    outcome(
        name,
        1,
        format!(
            "1 SIGKILL with {started} rows started, {synced}/{RECORDS} synced; claim lease 300 s"
        ),
        vec![time],
        lost,
        died.unwrap_or_default(),
    )
}

impl Pair {
    /// Registry rows of Helm started or beyond on the secondary (0 while it
    /// cannot be read).
    async fn claimed_count(&self) -> usize {
        self.registry(HELM)
            .await
            .map(|rows| rows.values().filter(|(state, _)| *state != 0).count())
            .unwrap_or(0)
    }
}
