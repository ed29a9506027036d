//! A secondary's status report to its primary (GitLab's
//! `Geo::MetricsUpdateWorker`): the site's status, sent every
//! `workers.status_interval_secs` by the process holding the duties.

use crate::secondary::Secondary;
use std::sync::Arc;
use std::time::Duration;

/// Computes this site's status and sends it to the primary, every
/// `workers.status_interval_secs`. A report the primary does not take
/// counts in `geo_status_failed_total` (GitLab's counter).
pub async fn run(s: Arc<Secondary>) {
    let interval = Duration::from_secs(s.site.config.workers.status_interval_secs.max(1));
    let name = s.site.name().to_string();
    loop {
        if !s.holds_duties().await {
            if !s.pause(s.duty_retry(interval)).await {
                return;
            }
            continue;
        }
        let sent = match super::current(&s.site, Some(&s.client)).await {
            Ok(status) => s
                .client
                .post_status(&status)
                .await
                .map_err(|e| e.to_string()),
            Err(error) => Err(error.to_string()),
        };
        match &sent {
            Ok(()) => crate::health::round_ok(),
            Err(error) => crate::health::round_failed(error),
        }
        if let Err(error) = sent {
            tracing::warn!(%error, "status report to the primary failed");
            crate::metrics::STATUS_FAILED
                .with_label_values(&[&name, &name])
                .inc();
        }
        if !s.pause(interval).await {
            return;
        }
    }
}
