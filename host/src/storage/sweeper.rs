//! Removes what crashed writers left under `.tmp/`, all the time the site
//! runs: a process killed mid-download or mid-upload leaves its temporary
//! object behind, and no one else will finish it.
//!
//! A temporary object is a leftover once it has not been written to for
//! `storage.temp_max_age_secs` (one hour by default): a live write touches
//! it with every part, so the age must only exceed the longest pause of a
//! live writer (the downloader's stall timeouts, a slow uploader), not the
//! length of a whole transfer. The sweep runs at start, then every
//! `max_age / 2` (at most every minute).
//!
//! It also purges the quarantine (`.quarantine/`, `super::quarantine`) of
//! blobs kept longer than `deletions.quarantine_secs`.

use super::BlobStore;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Sweeps `blobs` until `shutdown` is cancelled.
pub async fn run(
    blobs: BlobStore,
    max_age: Duration,
    quarantine: Duration,
    shutdown: CancellationToken,
) {
    let every = (max_age / 2)
        .min(quarantine / 2)
        .clamp(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        match blobs.cleanup_temp(max_age).await {
            Ok(_) => crate::health::round_ok(),
            Err(error) => {
                tracing::warn!(%error, "could not clean temporary blobs");
                crate::health::round_failed(&error);
            }
        }
        if let Err(error) = blobs.purge_quarantine(quarantine).await {
            tracing::warn!(%error, "could not purge the quarantine");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
