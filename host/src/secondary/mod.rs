//! The secondary role: copy the primary's blobs of every installed type and
//! verify them, GitLab Geo's way.
//!
//! A secondary has no replica of the primary's database, so everything it
//! knows about the primary comes over HTTP ([`client`], routes in
//! [`crate::feed`]); what it has done is in its tracking database, one
//! registry table per type ([`registry`]). [`run`] starts the workers:
//!
//! | worker | GitLab | module |
//! |---|---|---|
//! | node settings watcher (selective sync, capacities) | reads `geo_nodes` | here |
//! | registry consistency, at start, every `consistency_interval_secs` and when the node settings change | `RegistryConsistencyWorker` | [`consistency`] |
//! | download scheduler, `files_max_capacity` at once | `RegistrySyncWorker`, `SyncWorker`, `BlobDownloadService` | [`sync`] |
//! | verifier, `verification_max_capacity` per round | `VerificationBatchWorker` | [`verify`] |
//! | event log cursor | Geo log cursor daemon, `EventWorker` | [`cursor`] |
//! | stuck syncs and verifications, every minute | `SyncTimeoutCronWorker`, `VerificationTimeoutWorker` | here |
//! | status report to the primary, every `status_interval_secs` | `Geo::MetricsUpdateWorker` | [`crate::status::report`] (started by the runtime) |
//! | bulk resync and reverify jobs, resumed after a restart | `Geo::BulkMarkPendingBatchWorker`, `Geo::BulkMarkVerificationPendingBatchWorker` | [`bulk`] |
//!
//! Every idle loop pauses `workers.idle_poll_ms`, so tests converge fast.
//! A type's feature flag `geo_<name>_replication` (table `feature_flags` of
//! the site's main database, on when absent) turns off its consistency
//! pass, syncs, verification and `created`/`updated` events; `deleted`
//! events are still applied.
//!
//! Architecture invariant: nothing here names a replicable type; columns,
//! paths and scope come from the type's plugin (the installed type's calls,
//! [`crate::catalog::InstalledType::in_scope`] and `blob_paths`).
//!
//! ## Where Geohost differs from GitLab, and why
//!
//! - **Claims with leases in the tracking database, not Redis.** GitLab
//!   schedules ids and each job `start!`s its row under an 8-hour Redis
//!   lease. Here the scheduler's claim *is* the `start` (one `UPDATE …
//!   RETURNING`, `FOR UPDATE SKIP LOCKED` on PostgreSQL), so worker
//!   processes sharing a tracking database never download one record
//!   twice. The claim's stamp (`last_synced_at`, `verification_started_at`)
//!   is its lease: a running sync or verification batch renews it every
//!   third of `workers.claim_lease_secs` (30 s by default), and a claim
//!   older than that is taken over by the next claim. A claim names its
//!   process (`claimed_by`): the claims of a process known dead are
//!   released at once ([`watch_workers`]; on SQLite every claim at
//!   startup), so a killed worker's rows are resumed in seconds rather
//!   than after the 8-hour timeout. The
//!   singleton duties (consistency, stuck rows, status report) run in the
//!   process holding the `secondary_duties` row of `geo_leases`
//!   ([`crate::leases`]); the cursor's lease is a PostgreSQL advisory lock
//!   per batch. A SQLite tracking database takes one worker process.
//! - **Primary facts over HTTP.** The primary's checksum comes with the
//!   download (`x-geo-checksum`) or from the feed (`records?ids=`); when
//!   the primary cannot be read, a verification batch releases its claims
//!   (verification pending again) instead of failing and resyncing them.
//! - **Full consistency passes.** GitLab checks one 10,000-id batch per
//!   type per run, with its cursor in Rails.cache; Geohost walks every
//!   batch each pass (same batch size), since a pass is cheap HTTP paging.
//!   Orphan rows (record gone) lose their registry row, but not their blob,
//!   whose path is unknown without the record: the `deleted` event removes
//!   it. Rows in `started` are left for the next pass.
//! - **A new cursor starts at the primary's newest event** rather than at
//!   the beginning of the log; the consistency pass covers what came before.
//! - **Shutdown.** A download interrupted by shutdown puts its row back to
//!   pending (GitLab's jobs just die and wait for the stuck-sync timeout).
//! - **Object storage.** Records the primary keeps in object storage
//!   (`file_store = 2`) are checked by padded size, on download and in
//!   verification, following the record (as GitLab does), not the kind of
//!   this site's store.
//! - **Events decide scope with a fresh topology when needed.** A record an
//!   event's batch puts out of scope is decided again once with a newly
//!   read topology (its project may be newer than the last read); GitLab
//!   reads its replica, which is always current.
//! - **Extra download checks.** The size must match `Content-Length`; a
//!   file placed for a record deleted during its download is removed.
//! - **Texts.** Failure texts are GitLab's, cut to 255 characters without
//!   Ruby's `...`; a non-2xx download adds the primary's message after
//!   "Non-success HTTP response status code N: "; the mismatch details are
//!   printed as Ruby 3.4 prints a hash (`{checksum: "…", …}`).
//! - **Verification failed → pending** keeps `checksum_mismatch` and
//!   `verification_checksum_mismatched` along with the retry count and time,
//!   as GitLab's code does (only its failure text is cleared); a success
//!   clears them.
//! - **Not done:** GitLab's shortcut that marks an immutable, brand-new
//!   pending row synced without downloading when the file already exists.
//!   Timeout texts read "after 8 hours" (GitLab interpolates a duration's
//!   seconds).

pub mod batch;
pub mod bulk;
pub(crate) mod client;
pub(crate) mod consistency;
pub mod cursor;
pub mod failures;
pub mod guard;
pub(crate) mod listing;
pub(crate) mod outcomes;
pub(crate) mod registry;
pub(crate) mod sync;
pub(crate) mod verify;

#[cfg(test)]
pub(crate) mod testing;

pub use client::{ClientError, PrimaryClient};
pub use registry::{Registry, RegistryCounts, RegistryRow};

use crate::catalog::{InstalledType, Scope};
use crate::db::{Db, DbError};
use crate::feed::NodeSettings;
use crate::site::Site;
use anyhow::Context as _;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};

/// How often stuck rows are looked for (GitLab: every minute, 10 minutes
/// for syncs).
pub const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(60);

/// Wakes a secondary's workers when work appears in this process (an event,
/// a finished download), so that a batch is whatever is due then and never
/// waits for the next idle poll (which still finds what other worker
/// processes did).
#[derive(Debug, Default)]
pub struct Wakes {
    /// Registry rows became pending.
    pub sync: Notify,
    /// Rows became due for verification.
    pub verification: Notify,
}

/// What this secondary knows of the primary right now.
#[derive(Debug, Clone)]
pub struct PrimaryView {
    /// This site's settings on the primary.
    pub node: NodeSettings,
    /// The scope they give; `None` when the settings are unusable (logged).
    pub scope: Option<Scope>,
}

/// GitLab's secondary status counts of one type (`ee/app/models/geo_node_status.rb`): all rows,
/// synced, failed, verified, verification failed, verification total.
pub async fn status_counts(tracking: &Db, it: &InstalledType) -> Result<RegistryCounts, DbError> {
    Registry::of(it).counts(tracking).await
}

/// Whether the type's feature flag `geo_<name>_replication` is on in the
/// site's main database (on when absent).
pub async fn replication_enabled(db: &Db, it: &InstalledType) -> Result<bool, DbError> {
    let row = db
        .fetch_optional(
            "SELECT enabled FROM feature_flags WHERE name = $1",
            &[it.identity.feature_flag().into()],
        )
        .await?;
    Ok(match row {
        Some(row) => row.bool("enabled")?,
        None => true,
    })
}

/// The secondary's shared state: its site, tracking database, client, and
/// the latest view of the primary.
pub struct Secondary {
    pub site: Arc<Site>,
    pub tracking: Db,
    pub client: PrimaryClient,
    view: watch::Sender<Option<Arc<PrimaryView>>>,
    node_changed: Notify,
    flags: Mutex<HashMap<String, (bool, Instant)>>,
    /// Whether this process holds the singleton duties' lease (`None`
    /// until first asked); see [`run_duty_lease`].
    duties: watch::Sender<Option<bool>>,
    /// Wakes the scheduler and the verifier.
    pub wakes: Arc<Wakes>,
}

impl Secondary {
    /// The secondary of `site` (which must have a tracking database and a
    /// `[primary]` section).
    pub fn new(site: Arc<Site>) -> anyhow::Result<Arc<Secondary>> {
        let tracking = site.tracking()?.clone();
        let primary = site
            .config
            .primary
            .as_ref()
            .context("a secondary needs a [primary] section")?;
        let client = PrimaryClient::new(primary)?;
        Ok(Arc::new(Secondary {
            site,
            tracking,
            client,
            view: watch::channel(None).0,
            node_changed: Notify::new(),
            flags: Mutex::new(HashMap::new()),
            duties: watch::channel(None).0,
            wakes: Default::default(),
        }))
    }

    /// How this site guards a pass's registry removals.
    pub fn guard(&self, cause: guard::Cause) -> guard::Guard {
        guard::Guard {
            max_share: self.site.config.deletions.max_removal_share,
            cause,
        }
    }

    /// Asks for a consistency pass now (removals were confirmed).
    pub fn request_pass(&self) {
        self.node_changed.notify_one();
    }

    /// The pause of idle loops (`workers.idle_poll_ms`).
    pub fn idle(&self) -> Duration {
        Duration::from_millis(self.site.config.workers.idle_poll_ms.max(1))
    }

    /// The latest view of the primary, once one was read.
    pub fn view(&self) -> Option<Arc<PrimaryView>> {
        self.view.borrow().clone()
    }

    /// Waits for the first view; `None` on shutdown.
    async fn wait_view(&self) -> Option<Arc<PrimaryView>> {
        let mut receiver = self.view.subscribe();
        tokio::select! {
            view = receiver.wait_for(Option::is_some) => view.ok().and_then(|v| v.clone()),
            _ = self.site.shutdown.cancelled() => None,
        }
    }

    fn publish(
        &self,
        node: NodeSettings,
        topology: Arc<crate::topology::Topology>,
    ) -> Arc<PrimaryView> {
        let scope = match node.scope().to_settings() {
            Ok(settings) => Some(Scope { settings, topology }),
            Err(error) => {
                tracing::error!(%error, "this site's selective-sync settings on the primary are unusable");
                None
            }
        };
        let view = Arc::new(PrimaryView { node, scope });
        self.view.send_replace(Some(view.clone()));
        view
    }

    /// Reads this site's settings from the primary. Returns whether they
    /// changed (the first read counts as a change); the topology is read
    /// too when they did.
    pub async fn refresh_node(&self) -> Result<bool, ClientError> {
        let node = self.client.node().await?;
        let current = self.view();
        if current.as_ref().is_some_and(|v| v.node == node) {
            return Ok(false);
        }
        let topology = match &current {
            Some(view) if view.node.scope() == node.scope() => {
                view.scope.as_ref().map(|s| s.topology.clone())
            }
            _ => None,
        };
        let topology = match topology {
            Some(topology) => topology,
            None => Arc::new(self.fetch_topology().await?),
        };
        tracing::info!(
            selective_sync_type = ?node.selective_sync_type,
            sync_object_storage = node.sync_object_storage,
            files_max_capacity = node.files_max_capacity,
            verification_max_capacity = node.verification_max_capacity,
            "node settings read from the primary"
        );
        self.publish(node, topology);
        Ok(true)
    }

    async fn fetch_topology(&self) -> Result<crate::topology::Topology, ClientError> {
        let snapshot = self.client.topology().await?;
        Ok(crate::topology::Topology::new(
            snapshot.namespaces,
            snapshot.projects,
        ))
    }

    /// Re-reads the topology and publishes it with the current settings.
    pub async fn refresh_topology(&self) -> Result<Arc<PrimaryView>, ClientError> {
        let topology = Arc::new(self.fetch_topology().await?);
        let node = match self.view() {
            Some(view) => view.node.clone(),
            None => self.client.node().await?,
        };
        Ok(self.publish(node, topology))
    }

    /// Whether `it`'s replication is enabled (feature flag, cached for one
    /// idle pause).
    pub async fn replication_enabled(&self, it: &InstalledType) -> bool {
        let name = it.name().to_string();
        if let Some((enabled, at)) = self.flags.lock().expect("flag cache").get(&name).copied()
            && at.elapsed() < self.idle()
        {
            return enabled;
        }
        let enabled = match replication_enabled(&self.site.db, it).await {
            Ok(enabled) => enabled,
            Err(error) => {
                tracing::warn!(r#type = it.name(), %error, "cannot read the feature flag; assuming on");
                true
            }
        };
        self.flags
            .lock()
            .expect("flag cache")
            .insert(name, (enabled, Instant::now()));
        enabled
    }

    /// The installed types whose replication is enabled.
    pub async fn enabled_types(&self) -> Vec<Arc<InstalledType>> {
        let mut enabled = Vec::new();
        for it in self.site.catalog.all() {
            if self.replication_enabled(&it).await {
                enabled.push(it);
            }
        }
        enabled
    }

    /// The downloader of this secondary.
    pub fn downloader(&self) -> sync::Downloader {
        sync::Downloader {
            client: self.client.clone(),
            tracking: self.tracking.clone(),
            blobs: self.site.blobs.clone(),
            cancel: self.site.shutdown.clone(),
            lease: Some(self.site.config.claim_lease()),
            wakes: self.wakes.clone(),
        }
    }

    /// One consistency pass over every enabled type, with a fresh topology.
    pub async fn consistency_pass(&self) -> anyhow::Result<consistency::Counts> {
        // A new secondary's event cursor must start before the records read
        // here (see `cursor::start_if_new`).
        cursor::start_if_new(&self.tracking, &self.client).await?;
        let view = self.refresh_topology().await?;
        let Some(scope) = view.scope.as_ref() else {
            anyhow::bail!("this site's selective-sync settings are unusable");
        };
        let mut total = consistency::Counts::default();
        for it in self.enabled_types().await {
            match consistency::check_type(
                &self.client,
                &self.tracking,
                &self.site.blobs,
                &it,
                scope,
                self.guard(guard::Cause::Consistency),
            )
            .await
            {
                Ok(counts) => {
                    if counts.created > 0 {
                        self.wakes.sync.notify_one();
                    }
                    total += counts
                }
                Err(error) => tracing::warn!(r#type = it.name(), %error, "consistency pass failed"),
            }
        }
        Ok(total)
    }

    /// Fails stuck syncs and verifications of every type.
    pub async fn fail_stuck(&self) {
        let workers = &self.site.config.workers;
        let sync_timeout = Duration::from_secs(workers.sync_timeout_secs);
        let verification_timeout = Duration::from_secs(workers.verification_timeout_secs);
        for it in self.site.catalog.all() {
            let registry = Registry::of(&it);
            let syncs = registry.fail_stuck_syncs(&self.tracking, sync_timeout);
            log_stuck_pass(&it, "sync", syncs.await);
            let verifications =
                registry.fail_stuck_verifications(&self.tracking, verification_timeout);
            log_stuck_pass(&it, "verification", verifications.await);
        }
    }

    /// Whether this process runs the singleton duties now (consistency
    /// passes, stuck rows, status reports): waits for the first answer of
    /// the lease keeper; `false` on shutdown.
    pub async fn holds_duties(&self) -> bool {
        let mut receiver = self.duties.subscribe();
        tokio::select! {
            held = receiver.wait_for(Option::is_some) => held.ok().and_then(|h| *h).unwrap_or(false),
            _ = self.site.shutdown.cancelled() => false,
        }
    }

    /// The pause of a duty loop in a process that does not hold the
    /// duties: it checks again at the lease keeper's pace.
    pub fn duty_retry(&self, interval: Duration) -> Duration {
        interval
            .min(self.site.config.claim_lease() / 3)
            .max(self.idle())
    }

    /// Sleeps `pause`; `false` if shutdown came first.
    pub async fn pause(&self, pause: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(pause) => true,
            _ = self.site.shutdown.cancelled() => false,
        }
    }
}

/// Starts the secondary's duties under `duties` (the site's supervisor);
/// they run until `site.shutdown` is cancelled. (Its status report is the
/// status module's, `crate::status::report`, started by the runtime.)
pub fn start(
    secondary: Arc<Secondary>,
    duties: &mut crate::supervisor::Supervisor,
) -> anyhow::Result<()> {
    tracing::info!(
        primary = secondary.client.base_url(),
        "secondary workers starting"
    );
    macro_rules! duty {
        ($name:literal, $run:path) => {{
            let s = secondary.clone();
            duties.spawn($name, move || $run(s.clone()));
        }};
    }
    duty!("duty-lease", run_duty_lease);
    duty!("node-watch", watch_node);
    duty!("consistency", run_consistency);
    duty!("sync", run_sync);
    duty!("verification", run_verification);
    duty!("event-cursor", run_cursor);
    duty!("stuck-rows", run_housekeeping);
    duty!("bulk-jobs", run_bulk_jobs);
    Ok(())
}

/// Keeps the singleton duties' lease (`geo_leases` row
/// `secondary_duties`): takes it when free or expired, renews it every
/// third of its time ([`crate::leases::duty_ttl`]), gives it up on shutdown. Worker
/// processes sharing the tracking database run downloads and
/// verifications together, but the duties in one process at a time.
async fn run_duty_lease(s: Arc<Secondary>) {
    let lease = crate::leases::duty_ttl(s.site.config.claim_lease());
    let duty = crate::leases::DutyLease::new(s.tracking.clone(), "secondary_duties", lease);
    loop {
        let held = match duty.hold().await {
            Ok(held) => held,
            Err(error) => {
                tracing::warn!(%error, "cannot renew the duties lease");
                false
            }
        };
        if let Err(error) = watch_workers(&s, lease).await {
            tracing::warn!(%error, "cannot check the other worker processes");
        }
        let before = s.duties.send_replace(Some(held));
        if before != Some(held) {
            tracing::info!(
                worker = crate::leases::worker_id(),
                held,
                "singleton duties (consistency, stuck rows, status) {}",
                if held {
                    "run here"
                } else {
                    "run in another worker"
                }
            );
        }
        if !s.pause(lease / 3).await {
            break;
        }
    }
    if let Err(error) = duty.release().await {
        tracing::warn!(%error, "cannot release the duties lease");
    }
}

/// PostgreSQL: says this worker process is alive (for `ttl`), and gives
/// back the claims of every worker process whose death is known (gone on
/// this host, or its heartbeat expired), so they are downloaded and
/// verified again within seconds, not after the claim lease
/// ([`crate::leases::take_dead_workers`]).
async fn watch_workers(s: &Secondary, ttl: Duration) -> Result<(), DbError> {
    crate::leases::heartbeat(&s.tracking, ttl).await?;
    for worker in crate::leases::take_dead_workers(&s.tracking).await? {
        let released = release_claims(&s.tracking, &s.site.catalog.all(), Some(&worker)).await?;
        tracing::warn!(%worker, released, "the claims of a dead worker process released");
    }
    Ok(())
}

/// Gives back the sync and verification claims of `worker` (`None`:
/// every claim) in every type's registry ([`Registry::release_claims`]).
/// Returns how many rows it gave back.
pub async fn release_claims(
    tracking: &Db,
    types: &[Arc<InstalledType>],
    worker: Option<&str>,
) -> Result<u64, DbError> {
    let mut released = 0;
    for it in types {
        released += Registry::of(it).release_claims(tracking, worker).await?;
    }
    Ok(released)
}

/// Backs off 1 s, doubling to 30 s.
fn next_backoff(current: Duration) -> Duration {
    (current * 2).min(cursor::BACKOFF_MAX)
}

/// Reads the node settings now and then; a change triggers a consistency
/// pass (a new selective-sync scope adds and removes registries).
async fn watch_node(s: Arc<Secondary>) {
    let interval =
        Duration::from_secs(s.site.config.workers.consistency_interval_secs.clamp(1, 10))
            .max(s.idle());
    let mut backoff = cursor::BACKOFF_START;
    let mut first = true;
    loop {
        let pause = match s.refresh_node().await {
            Ok(changed) => {
                crate::health::round_ok();
                backoff = cursor::BACKOFF_START;
                if first {
                    first = false;
                    check_types(&s).await;
                } else if changed {
                    s.node_changed.notify_one();
                }
                interval
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read this site's settings from the primary");
                crate::health::round_failed(&error);
                let pause = backoff;
                backoff = next_backoff(backoff);
                pause
            }
        };
        if !s.pause(pause).await {
            return;
        }
    }
}

/// Logs types installed on one side only or in another version.
async fn check_types(s: &Secondary) {
    let remote = match s.client.types().await {
        Ok(types) => types,
        Err(error) => {
            tracing::warn!(%error, "cannot list the primary's types");
            return;
        }
    };
    for it in s.site.catalog.all() {
        match remote.iter().find(|t| t.name == it.name()) {
            None => tracing::warn!(
                r#type = it.name(),
                "type installed here but not on the primary"
            ),
            Some(t) if t.version != it.identity.version || t.sha256 != it.plugin.sha256() => {
                tracing::warn!(
                    r#type = it.name(),
                    primary_version = %t.version,
                    version = %it.identity.version,
                    "the primary runs another version of this type"
                )
            }
            Some(_) => {}
        }
    }
    for t in &remote {
        if s.site.catalog.get(&t.name).is_none() {
            tracing::warn!(r#type = %t.name, "type installed on the primary but not here: not replicated");
        }
    }
}

async fn run_consistency(s: Arc<Secondary>) {
    if s.wait_view().await.is_none() {
        return;
    }
    let interval = Duration::from_secs(s.site.config.workers.consistency_interval_secs.max(1));
    loop {
        let pause = if s.holds_duties().await {
            match s.consistency_pass().await {
                Ok(_) => crate::health::round_ok(),
                Err(error) => {
                    let error = format!("{error:#}");
                    tracing::warn!(%error, "consistency pass failed");
                    crate::health::round_failed(&error);
                }
            }
            interval
        } else {
            s.duty_retry(interval)
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = s.node_changed.notified() => {}
            _ = s.site.shutdown.cancelled() => return,
        }
    }
}

async fn run_sync(s: Arc<Secondary>) {
    if s.wait_view().await.is_none() {
        return;
    }
    let types = {
        let s = s.clone();
        move || {
            let s = s.clone();
            async move {
                let view = s.view()?;
                let capacity = view.node.files_max_capacity.max(1) as usize;
                crate::metrics::SYNC_CAPACITY
                    .with_label_values(&[s.site.name()])
                    .set(capacity as i64);
                Some((s.enabled_types().await, capacity))
            }
        }
    };
    match batch::BatchSettings::of(&s.site.config.workers) {
        Some(settings) => {
            batch::run_batch_scheduler(s.downloader(), settings, types, s.idle()).await
        }
        None => sync::run_scheduler(s.downloader(), types, s.idle()).await,
    }
}

async fn run_verification(s: Arc<Secondary>) {
    let batch = s.site.config.workers.verification_batch.max(1);
    let mut backoff = cursor::BACKOFF_START;
    loop {
        let Some(view) = s.wait_view().await else {
            return;
        };
        let types = s.enabled_types().await;
        let per_type =
            (view.node.verification_max_capacity.max(1) as usize / types.len().max(1)).max(1);
        let mut worked = 0;
        let mut failed = false;
        for it in &types {
            let lease = Some(s.site.config.claim_lease());
            match verify::verify_batch_leased(
                &s.client,
                &s.tracking,
                &s.site.blobs,
                it,
                batch,
                per_type,
                lease,
            )
            .await
            {
                Ok(counts) => worked += counts.total(),
                Err(error) => {
                    failed = true;
                    tracing::warn!(r#type = it.name(), %error, "verification batch failed");
                    crate::health::round_failed(&error);
                }
            }
        }
        if !failed {
            crate::health::round_ok();
        }
        if worked > 0 {
            backoff = cursor::BACKOFF_START;
            continue;
        }
        let pause = if failed {
            let pause = backoff;
            backoff = next_backoff(backoff);
            pause
        } else {
            backoff = cursor::BACKOFF_START;
            s.idle()
        };
        // Rows that become due in this process wake the verifier at once.
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = s.wakes.verification.notified(), if !failed => {}
            _ = s.site.shutdown.cancelled() => return,
        }
    }
}

async fn run_cursor(s: Arc<Secondary>) {
    let mut backoff = cursor::BACKOFF_START;
    loop {
        if s.wait_view().await.is_none() {
            return;
        }
        let types = async || {
            let mut types = HashMap::new();
            for it in s.site.catalog.all() {
                let enabled = s.replication_enabled(&it).await;
                types.insert(it.name().to_string(), (it, enabled));
            }
            types
        };
        let cx = cursor::EventContext {
            client: &s.client,
            tracking: &s.tracking,
            blobs: &s.site.blobs,
            wakes: Some(&s.wakes),
        };
        let scope = s.view().and_then(|view| view.scope.clone());
        let refresh = async || match s.refresh_topology().await {
            Ok(view) => view.scope.clone(),
            Err(error) => {
                tracing::warn!(%error, "cannot re-read the topology");
                None
            }
        };
        let wait = cursor::LONG_POLL;
        match cursor::round(&cx, types, scope.as_ref(), refresh, wait, &s.site.shutdown).await {
            Ok(cursor::Round::Handled(_)) => {
                crate::health::round_ok();
                backoff = cursor::BACKOFF_START
            }
            Ok(cursor::Round::Stopped) => return,
            Ok(cursor::Round::Leased) => {
                if !s.pause(s.idle().max(cursor::BACKOFF_START)).await {
                    return;
                }
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?backoff, "event cursor failed; retrying");
                crate::health::round_failed(&error);
                if !s.pause(backoff).await {
                    return;
                }
                backoff = next_backoff(backoff);
            }
        }
    }
}

async fn run_housekeeping(s: Arc<Secondary>) {
    // A short sync timeout (tests, small sites) is checked at least twice per period.
    let workers = &s.site.config.workers;
    let timeout = Duration::from_secs(
        workers
            .sync_timeout_secs
            .min(workers.verification_timeout_secs)
            .max(2),
    );
    let interval = HOUSEKEEPING_INTERVAL.min(timeout / 2);
    loop {
        let pause = if s.holds_duties().await {
            s.fail_stuck().await;
            interval
        } else {
            s.duty_retry(interval)
        };
        if !s.pause(pause).await {
            return;
        }
    }
}

/// Runs the kept bulk resync and reverify jobs (`bulk.rs`), oldest first,
/// in the process holding the singleton duties; a job stops between two
/// batches when the duties move or the site stops, and the next holder
/// resumes it.
async fn run_bulk_jobs(s: Arc<Secondary>) {
    let pause = Duration::from_millis(s.site.config.workers.bulk_update_pause_ms);
    let idle = s.idle().max(Duration::from_millis(200));
    loop {
        if !s.holds_duties().await {
            if !s.pause(s.duty_retry(idle)).await {
                return;
            }
            continue;
        }
        let job = match bulk::next_job(&s.tracking).await {
            Ok(job) => job,
            Err(error) => {
                tracing::warn!(%error, "cannot read the bulk jobs");
                crate::health::round_failed(&error);
                None
            }
        };
        let Some(job) = job else {
            if !s.pause(idle).await {
                return;
            }
            continue;
        };
        let go_on = || *s.duties.borrow() == Some(true);
        let cancel = &s.site.shutdown;
        match bulk::run_job(&s.tracking, &s.site.catalog, job, pause, cancel, go_on).await {
            Ok(_) => crate::health::round_ok(),
            Err(error) => {
                tracing::warn!(%error, "bulk registry update failed; retrying");
                crate::health::round_failed(&error);
                if !s.pause(cursor::BACKOFF_START).await {
                    return;
                }
            }
        }
    }
}

/// Logs one stuck-row pass (`kind`: `sync` or `verification`) of `it`:
/// the rows it failed, or why it could not run.
fn log_stuck_pass(it: &InstalledType, kind: &str, outcome: Result<u64, DbError>) {
    match outcome {
        Ok(0) => {}
        Ok(n) => tracing::warn!(r#type = it.name(), rows = n, "stuck {kind}s failed"),
        Err(error) => tracing::warn!(r#type = it.name(), %error, "{kind} timeout pass failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::states::SyncState;
    use crate::topology::{NamespaceNode, ProjectNode};
    use testing::FakePrimary;

    async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !check().await {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_secondary_converges_and_follows_events() {
        let primary = FakePrimary::start().await;
        primary.with(|s| {
            s.topology.namespaces = vec![NamespaceNode {
                id: 1,
                parent_id: None,
            }];
            s.topology.projects = vec![ProjectNode {
                id: 10,
                namespace_id: 1,
                repository_storage: "default".into(),
            }];
        });
        for id in 1..=5 {
            primary.add(id, 10, format!("index {id}").as_bytes(), true);
        }
        let dir = tempfile::tempdir().unwrap();
        let config = Config::from_toml(&format!(
            "[site]\nname = 's'\nrole = 'secondary'\ndata_dir = '{}'\n\
             [primary]\nurl = '{}'\naccess_key = 'key'\nsecret_access_key = 'secret'\n\
             [workers]\nidle_poll_ms = 20\nconsistency_interval_secs = 1\n",
            dir.path().display(),
            primary.url
        ))
        .unwrap();
        let site = crate::runtime::open(config).await.unwrap();
        let it = site.installed(testing::helm().name()).unwrap();
        let tracking = site.tracking().unwrap().clone();
        let mut duties =
            crate::supervisor::Supervisor::new(site.duties.clone(), site.shutdown.clone());
        start(Secondary::new(site.clone()).unwrap(), &mut duties).unwrap();

        // The consistency pass finds the records; they are downloaded and verified.
        wait_for("the first five to be verified", async || {
            status_counts(&tracking, &it).await.unwrap().verified_count == 5
        })
        .await;

        // A new record arrives by event; a deleted one goes with its blob.
        primary.add(6, 10, b"index 6", true);
        primary.event(cursor::CREATED, 6, serde_json::json!({}));
        let gone = primary.with(|s| s.records.remove(&1)).unwrap();
        let path = testing::blob_path(&it, &gone).await;
        assert!(site.blobs.exists(it.name(), &path).await.unwrap());
        primary.event(
            cursor::DELETED,
            1,
            serde_json::json!({"blob_path": path.as_str()}),
        );
        // (The consistency pass may remove the orphan row before the event
        // comes; the event removes the blob. It may also sync the new
        // record before its `created` event comes, which then syncs it
        // again: wait for the row itself, not only the counts, which are
        // read at another moment.)
        wait_for("the event changes", async || {
            let counts = status_counts(&tracking, &it).await.unwrap();
            let six = Registry::of(&it).get(&tracking, 6).await.unwrap();
            counts.synced_count == 5
                && six.is_some_and(|row| row.state == SyncState::Synced)
                && Registry::of(&it).get(&tracking, 1).await.unwrap().is_none()
                && !site.blobs.exists(it.name(), &path).await.unwrap()
        })
        .await;
        let six = Registry::of(&it).get(&tracking, 6).await.unwrap().unwrap();
        assert_eq!(six.state, SyncState::Synced);

        // The feature flag off: nothing new is synced.
        site.db
            .execute(
                "INSERT INTO feature_flags (name, enabled) VALUES ($1, $2)",
                &[it.identity.feature_flag().into(), false.into()],
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        primary.add(7, 10, b"index 7", true);
        primary.event(cursor::CREATED, 7, serde_json::json!({}));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(Registry::of(&it).get(&tracking, 7).await.unwrap().is_none());

        site.shutdown.cancel();
        duties.join().await;
        assert_eq!(site.duties.problem(), None);
    }
}
