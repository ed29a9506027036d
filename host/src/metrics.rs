//! The engine's own Prometheus metrics (plugin calls, sync, verification,
//! transfer). GitLab's per-type gauges are computed from the databases when
//! `/metrics` is scraped; these are the process's counters and histograms.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use std::sync::LazyLock;
use std::time::Duration;

/// The process-wide registry behind `/metrics`.
pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

fn register<C: prometheus::core::Collector + Clone + 'static>(collector: C) -> C {
    REGISTRY
        .register(Box::new(collector.clone()))
        .expect("metric names are unique");
    collector
}

/// `geohost_plugin_call_duration_seconds{plugin,function}`.
pub static PLUGIN_CALL_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(
        HistogramVec::new(
            HistogramOpts::new(
                "geohost_plugin_call_duration_seconds",
                "Duration of one batch call into a type plugin",
            )
            .buckets(prometheus::exponential_buckets(0.00001, 4.0, 10).expect("valid buckets")),
            &["plugin", "function"],
        )
        .expect("valid metric"),
    )
});

/// `geohost_plugin_call_errors_total{plugin,function}`.
pub static PLUGIN_CALL_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "geohost_plugin_call_errors_total",
                "Plugin calls that trapped or timed out",
            ),
            &["plugin", "function"],
        )
        .expect("valid metric"),
    )
});

/// Records one plugin call.
pub fn plugin_call(plugin: &str, function: &str, took: Duration, ok: bool) {
    PLUGIN_CALL_SECONDS
        .with_label_values(&[plugin, function])
        .observe(took.as_secs_f64());
    if !ok {
        PLUGIN_CALL_ERRORS
            .with_label_values(&[plugin, function])
            .inc();
    }
}

/// `geohost_verification_duration_seconds{type,site}`: one verification batch.
pub static VERIFY_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(
        HistogramVec::new(
            HistogramOpts::new(
                "geohost_verification_duration_seconds",
                "Duration of one verification batch",
            )
            .buckets(prometheus::exponential_buckets(0.0005, 4.0, 10).expect("valid buckets")),
            &["type", "site"],
        )
        .expect("valid metric"),
    )
});

/// `geohost_sync_duration_seconds{type,result}`: one blob download.
pub static SYNC_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(
        HistogramVec::new(
            HistogramOpts::new(
                "geohost_sync_duration_seconds",
                "Duration of one blob sync (download and check)",
            )
            .buckets(prometheus::exponential_buckets(0.0005, 4.0, 10).expect("valid buckets")),
            &["type", "result"],
        )
        .expect("valid metric"),
    )
});

/// `geohost_sync_bytes_total{type}`: bytes downloaded from the primary.
pub static SYNC_BYTES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "geohost_sync_bytes_total",
                "Blob bytes downloaded from the primary",
            ),
            &["type"],
        )
        .expect("valid metric"),
    )
});

/// `geohost_retrieve_served_total{type,site}` (primary): blobs served by
/// the retrieve API, by type and requesting secondary. With several workers
/// on one secondary it shows duplicate downloads: in the normal case it
/// grows by one per record synced.
pub static RETRIEVE_SERVED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "geohost_retrieve_served_total",
                "Blobs served to secondaries by the retrieve API",
            ),
            &["type", "site"],
        )
        .expect("valid metric"),
    )
});

/// `geohost_retrieve_batches_total{type,site}` (primary): batch retrieves
/// answered (each serves many blobs, counted in
/// `geohost_retrieve_served_total`).
pub static RETRIEVE_BATCHES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "geohost_retrieve_batches_total",
                "Batch retrieves answered to secondaries",
            ),
            &["type", "site"],
        )
        .expect("valid metric"),
    )
});

/// `geohost_replication_lag_seconds`: age of the newest event this
/// secondary has processed relative to the primary's newest.
pub static REPLICATION_LAG: LazyLock<prometheus::Gauge> = LazyLock::new(|| {
    register(
        prometheus::Gauge::new(
            "geohost_replication_lag_seconds",
            "Seconds between the primary's newest event and the newest event this secondary processed",
        )
        .expect("valid metric"),
    )
});

/// GitLab's `geo_status_failed_total{name,url}`: a secondary's status
/// reports that the primary did not accept (both labels are the site's
/// name, as in GitLab).
pub static STATUS_FAILED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "geo_status_failed_total",
                "Total number of times status for Geo node failed to retrieve",
            ),
            &["name", "url"],
        )
        .expect("valid metric"),
    )
});

/// `geohost_registry_bulk_update_batches_total{type,action}`: batches of a
/// bulk resync or reverification (`geoRegistriesBulkUpdate`).
pub static BULK_UPDATE_BATCHES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "geohost_registry_bulk_update_batches_total",
                "Batches run by bulk registry updates",
            ),
            &["type", "action"],
        )
        .expect("valid metric"),
    )
});

/// `geohost_registry_bulk_update_rows_total{type,action}`: registry rows a
/// bulk resync or reverification changed.
pub static BULK_UPDATE_ROWS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "geohost_registry_bulk_update_rows_total",
                "Registry rows changed by bulk registry updates",
            ),
            &["type", "action"],
        )
        .expect("valid metric"),
    )
});

/// `geohost_sync_capacity{site}`: the downloads a secondary's scheduler
/// runs at once, as it last read them (`files_max_capacity`, the site's
/// setting on the primary): shows that a change of the setting is in use.
pub static SYNC_CAPACITY: LazyLock<prometheus::IntGaugeVec> = LazyLock::new(|| {
    register(
        prometheus::IntGaugeVec::new(
            Opts::new(
                "geohost_sync_capacity",
                "Downloads a secondary's scheduler runs at once (files_max_capacity in use)",
            ),
            &["site"],
        )
        .expect("valid metric"),
    )
});

/// Registers every metric of this module, so a scrape shows them all (each
/// is otherwise registered on first use).
pub fn init() {
    LazyLock::force(&PLUGIN_CALL_SECONDS);
    LazyLock::force(&PLUGIN_CALL_ERRORS);
    LazyLock::force(&VERIFY_SECONDS);
    LazyLock::force(&SYNC_SECONDS);
    LazyLock::force(&SYNC_BYTES);
    LazyLock::force(&RETRIEVE_SERVED);
    LazyLock::force(&RETRIEVE_BATCHES);
    LazyLock::force(&REPLICATION_LAG);
    LazyLock::force(&STATUS_FAILED);
    LazyLock::force(&BULK_UPDATE_BATCHES);
    LazyLock::force(&BULK_UPDATE_ROWS);
    LazyLock::force(&PLUGIN_SWAPS);
    LazyLock::force(&PLUGIN_SCOPE_CHANGES);
    LazyLock::force(&SYNC_CAPACITY);
    LazyLock::force(&DUTY_FAILURES);
    LazyLock::force(&DUTY_RESTARTS);
    LazyLock::force(&DUTY_UP);
    LazyLock::force(&EVENT_GAPS);
    LazyLock::force(&SQLITE_WAL_SYNCS);
}

/// `geohost_sqlite_wal_syncs_total` (primary on SQLite): `fdatasync`s of
/// the write-ahead log made so that events written by verification's
/// unsynced commits are durable before a secondary reads them
/// (`db/unsynced.rs`).
pub static SQLITE_WAL_SYNCS: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    register(
        prometheus::IntCounter::new(
            "geohost_sqlite_wal_syncs_total",
            "Syncs of the SQLite write-ahead log before events are served",
        )
        .expect("valid metric"),
    )
});

/// `geohost_event_gaps`: ids the event cursor passed without an event,
/// read again until their event appears (`secondary/cursor.rs`).
pub static EVENT_GAPS: LazyLock<prometheus::IntGauge> = LazyLock::new(|| {
    register(
        prometheus::IntGauge::new(
            "geohost_event_gaps",
            "Gaps in the event ids the secondary's cursor still waits for",
        )
        .expect("valid metric"),
    )
});

/// `geohost_duty_failures_total{site,duty}`: a background duty panicked,
/// stopped early or reported a failed round (`health.rs`).
pub static DUTY_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "geohost_duty_failures_total",
                "Failures of a background duty (panics, early stops, failed rounds)",
            ),
            &["site", "duty"],
        )
        .expect("valid metric"),
    )
});

/// `geohost_duty_restarts_total{site,duty}`: restarts by the supervisor.
pub static DUTY_RESTARTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "geohost_duty_restarts_total",
                "Restarts of a background duty by the supervisor",
            ),
            &["site", "duty"],
        )
        .expect("valid metric"),
    )
});

/// `geohost_duty_up{site,duty}`: 1 while a duty works, 0 while it fails
/// repeatedly (the site is then unhealthy).
pub static DUTY_UP: LazyLock<prometheus::IntGaugeVec> = LazyLock::new(|| {
    register(
        prometheus::IntGaugeVec::new(
            Opts::new(
                "geohost_duty_up",
                "Whether a background duty works (0: failing repeatedly)",
            ),
            &["site", "duty"],
        )
        .expect("valid metric"),
    )
});

/// `geohost_plugin_swaps_total{type,outcome}`: hot-swap attempts by
/// outcome (`installed`, `upgraded`, `unchanged`, `refused`, `removed`).
pub static PLUGIN_SWAPS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "geohost_plugin_swaps_total",
                "Type definition installs, upgrades, rollbacks and removals, by outcome",
            ),
            &["type", "outcome"],
        )
        .expect("valid metric"),
    )
});

/// `geohost_plugin_scope_changes_total{type,change}`: registries created
/// (`entered`) and removed (`left`) by a swap's immediate scope
/// re-evaluation.
pub static PLUGIN_SCOPE_CHANGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "geohost_plugin_scope_changes_total",
                "Registries created or removed because a new type version changed the scope",
            ),
            &["type", "change"],
        )
        .expect("valid metric"),
    )
});

/// Records one hot-swap attempt.
pub fn plugin_swap(name: &str, outcome: &str) {
    PLUGIN_SWAPS.with_label_values(&[name, outcome]).inc();
}

/// Records a swap's scope changes.
pub fn plugin_scope_changes(name: &str, entered: u64, left: u64) {
    PLUGIN_SCOPE_CHANGES
        .with_label_values(&[name, "entered"])
        .inc_by(entered);
    PLUGIN_SCOPE_CHANGES
        .with_label_values(&[name, "left"])
        .inc_by(left);
}
