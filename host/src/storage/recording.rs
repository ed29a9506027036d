//! The durability tests: a storage wrapper records, in one sequence, every
//! write, copy, rename and delete of the object store, every `fsync` of a
//! file or folder, and every database commit (SQLite's commit hook, with the
//! tables the transaction changed). The sequence is then checked: no commit
//! may happen while a blob is not on stable storage (its data synced after
//! it was last written, and every folder from its own up to the root
//! synced after it was placed), and nothing replaces a blob before what the
//! replacement keeps to undo it (`.undo/`) is on stable storage.
//!
//! Both sites are covered, for a create and an update: the primary's
//! ingest, and the secondary's download. Two more tests cut a primary's
//! update short (a crash between the rename and the commit, then the
//! restart's recovery; and a commit that fails) and check that the old
//! content comes back.

use super::durable::{OsSync, SyncFs};
use super::{BlobStore, UNDO_DIR};
use crate::db::Db;
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path as StorePath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, UploadPart,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// One recorded operation; locations are relative to the storage root
/// (`""` is the root itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Write(String),
    Copy {
        from: String,
        to: String,
    },
    Rename {
        from: String,
        to: String,
    },
    Delete(String),
    SyncFile(String),
    SyncDir(String),
    /// The whole file system (`syncfs`).
    SyncAll,
    /// A commit, with the tables its transaction changed.
    Commit(BTreeSet<String>),
}

/// The shared log, and the test hooks (a gate that holds a sync, a veto
/// on commits).
#[derive(Debug)]
pub struct Recorder {
    root: PathBuf,
    ops: Mutex<Vec<Op>>,
    /// When set, the next sync of a folder under a type's folder blocks
    /// until the gate opens (a crash between a rename and its commit).
    gate_armed: AtomicBool,
    gate: (Mutex<GateState>, Condvar),
    /// When set, the next sync of a folder under a type's folder fails (a
    /// disk error between a rename and its commit).
    fail_armed: AtomicBool,
}

#[derive(Debug, Default)]
struct GateState {
    reached: bool,
    open: bool,
}

impl Recorder {
    pub fn new(root: &Path) -> Arc<Recorder> {
        Arc::new(Recorder {
            root: std::fs::canonicalize(root).expect("the storage root exists"),
            ops: Mutex::default(),
            gate_armed: AtomicBool::new(false),
            gate: Default::default(),
            fail_armed: AtomicBool::new(false),
        })
    }

    fn push(&self, op: Op) {
        self.ops.lock().unwrap().push(op);
    }

    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.ops.lock().unwrap().clear();
    }

    fn relative(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or_else(|_| panic!("{} is outside the root", path.display()))
            .to_string_lossy()
            .into_owned()
    }

    /// The next sync of a blob folder blocks until [`Recorder::open_gate`].
    pub fn arm_gate(&self) {
        *self.gate.0.lock().unwrap() = GateState::default();
        self.gate_armed.store(true, Ordering::SeqCst);
    }

    pub async fn wait_for_gate(&self) {
        for _ in 0..1000 {
            if self.gate.0.lock().unwrap().reached {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the gate was never reached");
    }

    pub fn open_gate(&self) {
        self.gate.0.lock().unwrap().open = true;
        self.gate.1.notify_all();
    }

    /// The next sync of a blob folder fails.
    pub fn fail_next_sync(&self) {
        self.fail_armed.store(true, Ordering::SeqCst);
    }

    /// A blob store on `root` whose writes and syncs are recorded here.
    pub fn store(self: &Arc<Self>) -> BlobStore {
        let recorder = self.clone();
        BlobStore::local_with(
            &self.root,
            move |inner| Arc::new(RecordingStore { inner, recorder }),
            self.clone(),
        )
        .expect("a blob store")
    }

    /// A SQLite database at `url` whose commits are recorded here.
    pub async fn sqlite(self: &Arc<Self>, url: &str) -> Db {
        use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
        use std::str::FromStr;
        let options = SqliteConnectOptions::from_str(url)
            .unwrap()
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .busy_timeout(std::time::Duration::from_secs(30));
        let recorder = self.clone();
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .after_connect(move |conn, _| {
                let recorder = recorder.clone();
                Box::pin(async move {
                    let changed = Arc::new(Mutex::new(BTreeSet::<String>::new()));
                    let mut handle = conn.lock_handle().await?;
                    let on_update = changed.clone();
                    handle.set_update_hook(move |change| {
                        on_update.lock().unwrap().insert(change.table.to_string());
                    });
                    let on_rollback = changed.clone();
                    handle.set_rollback_hook(move || on_rollback.lock().unwrap().clear());
                    handle.set_commit_hook(move || {
                        let tables = std::mem::take(&mut *changed.lock().unwrap());
                        if !tables.is_empty() {
                            recorder.push(Op::Commit(tables));
                        }
                        true
                    });
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .unwrap();
        crate::db::SqliteDb::shared(pool)
    }
}

impl SyncFs for Recorder {
    fn sync_file(&self, path: &Path) -> std::io::Result<()> {
        OsSync.sync_file(path)?;
        self.push(Op::SyncFile(self.relative(path)));
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> std::io::Result<()> {
        let relative = self.relative(path);
        let in_blobs = !relative.is_empty() && !relative.starts_with('.');
        self.injected(in_blobs)?;
        OsSync.sync_dir(path)?;
        self.push(Op::SyncDir(relative));
        Ok(())
    }

    fn sync_filesystem(&self, root: &Path) -> std::io::Result<()> {
        // The sync after a blob was placed is the one a test cuts short.
        let placed_blob = self
            .ops()
            .iter()
            .rev()
            .take_while(|op| **op != Op::SyncAll)
            .any(|op| matches!(op, Op::Rename { to, .. } | Op::Copy { to, .. } if is_blob(to)));
        self.injected(placed_blob)?;
        OsSync.sync_filesystem(root)?;
        self.push(Op::SyncAll);
        Ok(())
    }

    fn wrote(&self, file: &Path) {
        self.push(Op::Write(self.relative(file)));
    }

    fn renamed(&self, from: &Path, to: &Path) {
        self.push(Op::Rename {
            from: self.relative(from),
            to: self.relative(to),
        });
    }
}

impl Recorder {
    /// The armed gate or failure, for a sync that covers a blob folder.
    fn injected(&self, in_blobs: bool) -> std::io::Result<()> {
        if in_blobs && self.gate_armed.swap(false, Ordering::SeqCst) {
            let (state, wake) = &self.gate;
            let mut state = state.lock().unwrap();
            state.reached = true;
            while !state.open {
                state = wake.wait(state).unwrap();
            }
            // The "crash": this sync never happens.
            return Err(std::io::Error::other("cut short by the test"));
        }
        if in_blobs && self.fail_armed.swap(false, Ordering::SeqCst) {
            return Err(std::io::Error::other("an I/O error injected by the test"));
        }
        Ok(())
    }
}

/// The object store wrapper.
#[derive(Debug)]
struct RecordingStore {
    inner: Arc<dyn ObjectStore>,
    recorder: Arc<Recorder>,
}

impl std::fmt::Display for RecordingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "recording({})", self.inner)
    }
}

#[derive(Debug)]
struct RecordingUpload {
    inner: Box<dyn MultipartUpload>,
    location: String,
    recorder: Arc<Recorder>,
}

#[async_trait]
impl MultipartUpload for RecordingUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let done = self.inner.complete().await?;
        self.recorder.push(Op::Write(self.location.clone()));
        Ok(done)
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}

#[async_trait]
impl ObjectStore for RecordingStore {
    async fn put_opts(
        &self,
        location: &StorePath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let done = self.inner.put_opts(location, payload, opts).await?;
        self.recorder.push(Op::Write(location.to_string()));
        Ok(done)
    }

    async fn put_multipart_opts(
        &self,
        location: &StorePath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        Ok(Box::new(RecordingUpload {
            inner: self.inner.put_multipart_opts(location, opts).await?,
            location: location.to_string(),
            recorder: self.recorder.clone(),
        }))
    }

    async fn get_opts(
        &self,
        location: &StorePath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<StorePath>>,
    ) -> BoxStream<'static, object_store::Result<StorePath>> {
        let recorder = self.recorder.clone();
        self.inner
            .delete_stream(locations)
            .inspect(move |deleted| {
                if let Ok(location) = deleted {
                    recorder.push(Op::Delete(location.to_string()));
                }
            })
            .boxed()
    }

    fn list(
        &self,
        prefix: Option<&StorePath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&StorePath>,
    ) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &StorePath,
        to: &StorePath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await?;
        self.recorder.push(Op::Copy {
            from: from.to_string(),
            to: to.to_string(),
        });
        Ok(())
    }

    async fn rename_opts(
        &self,
        from: &StorePath,
        to: &StorePath,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await?;
        self.recorder.push(Op::Rename {
            from: from.to_string(),
            to: to.to_string(),
        });
        Ok(())
    }
}

/// Where a location stands: is its data synced since it was last written,
/// and which folders were synced since it was last placed.
#[derive(Debug, Clone, Default)]
struct Standing {
    data_synced: bool,
    dirs_synced: BTreeSet<String>,
}

fn folders(location: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = location;
    while let Some((parent, _)) = rest.rsplit_once('/') {
        out.push(parent.to_string());
        rest = parent;
    }
    out.push(String::new());
    out
}

fn durable(location: &str, standing: &Standing) -> bool {
    standing.data_synced
        && folders(location)
            .iter()
            .all(|f| standing.dirs_synced.contains(f))
}

fn is_blob(location: &str) -> bool {
    !location.starts_with('.')
}

/// Checks the recorded sequence (see the module docs); panics naming the
/// first operation that breaks it.
pub fn check(ops: &[Op]) {
    let mut present: BTreeMap<String, Standing> = BTreeMap::new();
    for (index, op) in ops.iter().enumerate() {
        let context = || format!("operation {index} ({op:?}) of\n{ops:#?}");
        match op {
            Op::Write(location) => {
                present.insert(location.clone(), Standing::default());
            }
            Op::Copy { from, to } | Op::Rename { from, to } => {
                if is_blob(to) {
                    // What would undo this must be safe first.
                    for (kept, standing) in &present {
                        assert!(
                            !kept.starts_with(UNDO_DIR) || durable(kept, standing),
                            "{kept} is not durable before {}",
                            context()
                        );
                    }
                }
                // A location first seen here was there before the
                // recording began: durable.
                let data_synced = present.get(from).is_none_or(|s| s.data_synced);
                if matches!(op, Op::Rename { .. }) {
                    present.remove(from);
                }
                present.insert(
                    to.clone(),
                    Standing {
                        data_synced,
                        dirs_synced: BTreeSet::new(),
                    },
                );
            }
            Op::Delete(location) => {
                present.remove(location);
            }
            Op::SyncFile(location) => {
                if let Some(standing) = present.get_mut(location) {
                    standing.data_synced = true;
                }
            }
            Op::SyncDir(folder) => {
                for (location, standing) in present.iter_mut() {
                    if folders(location).contains(folder) {
                        standing.dirs_synced.insert(folder.clone());
                    }
                }
            }
            Op::SyncAll => {
                for (location, standing) in present.iter_mut() {
                    standing.data_synced = true;
                    standing.dirs_synced.extend(folders(location));
                }
            }
            // A settlement only records a write's fate (`primary::journal`);
            // it points at no blob.
            Op::Commit(tables) if tables.iter().all(|t| t == "geo_blob_writes") => {}
            Op::Commit(_) => {
                for (location, standing) in &present {
                    assert!(
                        !is_blob(location) || durable(location, standing),
                        "blob {location} is not on stable storage at {}",
                        context()
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, SyncMethod};
    use crate::site::Site;
    use serde_json::json;

    /// A primary whose main database and blob store are recorded.
    async fn primary(method: SyncMethod) -> (tempfile::TempDir, Arc<Site>, Arc<Recorder>) {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::from_toml(&format!(
            "[site]\nname = 'p'\nrole = 'primary'\ndata_dir = '{}'\n",
            dir.path().display()
        ))
        .unwrap();
        let plain = crate::runtime::open(config.clone()).await.unwrap();
        // Ingest refuses a record of a project that does not exist.
        let group = crate::primary::topology::create_namespace(&plain.db, "g", "g", None)
            .await
            .unwrap()
            .id;
        let project =
            crate::primary::topology::create_project(&plain.db, "p", "p", group, "default")
                .await
                .unwrap()
                .id;
        assert_eq!(project, 1, "the writes below name project 1");
        let recorder = Recorder::new(&config.blob_root());
        let site = Arc::new(Site {
            db: recorder.sqlite(&config.database_url()).await,
            tracking: None,
            blobs: recorder.store().with_sync_method(method),
            catalog: plain.catalog.clone(),
            runtime: plain.runtime.clone(),
            secrets: plain.secrets.clone(),
            events: Default::default(),
            shutdown: Default::default(),
            swaps: Default::default(),
            role_state: Default::default(),
            auth_cache: Default::default(),
            write_group: Default::default(),
            duties: crate::health::DutyBoard::new("p"),
            config,
        });
        (dir, site, recorder)
    }

    const HELM: &str = "packages_helm_metadata_cache";

    /// Both ways a group of writes is made durable.
    const METHODS: [SyncMethod; 2] = [SyncMethod::Syncfs, SyncMethod::Fsync];

    async fn put(site: &Site, body: &'static [u8]) -> crate::primary::ingest::WriteOutcome {
        let columns = json!({"project_id": 1, "channel": "stable"});
        let body = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(body))]);
        crate::primary::ingest::upsert(site, HELM, columns.as_object().unwrap(), body)
            .await
            .unwrap()
    }

    async fn content(site: &Site, path: &str) -> Vec<u8> {
        let path = crate::plugin::BlobPath::parse(path).unwrap();
        let (_, body) = site.blobs.get(HELM, &path).await.unwrap();
        let chunks: Vec<Bytes> = futures::TryStreamExt::try_collect(body).await.unwrap();
        chunks.concat()
    }

    /// The index of the first op matching `wanted`, after `from`.
    fn find(ops: &[Op], from: usize, wanted: impl Fn(&Op) -> bool) -> Option<usize> {
        ops.iter().skip(from).position(wanted).map(|i| i + from)
    }

    fn commits_table(op: &Op, table: &str) -> bool {
        matches!(op, Op::Commit(tables) if tables.contains(table))
    }

    #[tokio::test]
    async fn the_primary_commits_only_blobs_on_stable_storage() {
        for method in METHODS {
            the_primary_commits_only_blobs_on_stable_storage_with(method).await;
        }
    }

    async fn the_primary_commits_only_blobs_on_stable_storage_with(method: SyncMethod) {
        let (_dir, site, recorder) = primary(method).await;
        let model = site.installed(HELM).unwrap().identity.table.name.clone();

        // Create.
        let created = put(&site, b"version: 1\n").await;
        let ops = recorder.ops();
        check(&ops);
        let blob = format!("{HELM}/{}", created.blob_path);
        let placed = find(
            &ops,
            0,
            |op| matches!(op, Op::Rename { to, .. } if *to == blob),
        )
        .expect("the blob is renamed into place");
        find(&ops, placed, |op| commits_table(op, &model))
            .expect("the record is committed after the rename");
        let data_synced = find(&ops, 0, |op| match op {
            Op::SyncFile(l) => l.starts_with(".tmp/"),
            Op::SyncAll => true,
            _ => false,
        });
        assert!(
            data_synced.unwrap() < placed,
            "{method:?}: the upload's data is synced before its rename"
        );

        // Update: the old content is kept, durably, before it is replaced.
        recorder.clear();
        let updated = put(&site, b"version: 2\n").await;
        assert_eq!(updated.blob_path, created.blob_path);
        let ops = recorder.ops();
        check(&ops);
        let kept = find(
            &ops,
            0,
            |op| matches!(op, Op::Copy { from, to } if *from == blob && to.starts_with(UNDO_DIR)),
        )
        .expect("the previous content is kept");
        let journal = find(
            &ops,
            0,
            |op| matches!(op, Op::Write(l) if l.starts_with(UNDO_DIR) && l.ends_with(".journal")),
        )
        .expect("a journal is written");
        let placed = find(
            &ops,
            0,
            |op| matches!(op, Op::Rename { to, .. } if *to == blob),
        )
        .unwrap();
        assert!(journal < kept && kept < placed, "{ops:#?}");
        let committed = find(&ops, placed, |op| commits_table(op, &model)).unwrap();
        let forgotten = find(
            &ops,
            committed,
            |op| matches!(op, Op::Delete(l) if l.starts_with(UNDO_DIR)),
        );
        assert!(forgotten.is_some(), "the undo is removed after the commit");
        assert!(site.blobs.journals("").await.unwrap().is_empty());
        assert_eq!(content(&site, &created.blob_path).await, b"version: 2\n");
    }

    #[tokio::test]
    async fn an_update_cut_short_before_its_commit_is_undone_at_restart() {
        for method in METHODS {
            an_update_cut_short_before_its_commit_is_undone_at_restart_with(method).await;
        }
    }

    async fn an_update_cut_short_before_its_commit_is_undone_at_restart_with(method: SyncMethod) {
        let (_dir, site, recorder) = primary(method).await;
        let created = put(&site, b"version: 1\n").await;

        // The process dies after the rename, before the commit.
        recorder.arm_gate();
        let writer = {
            let site = site.clone();
            tokio::spawn(async move { put(&site, b"version: 2\n").await })
        };
        recorder.wait_for_gate().await;
        site.write_group
            .get_or_default::<crate::primary::group::WriteGroup>()
            .abort_all();
        writer.abort();
        let _ = writer.await;
        recorder.open_gate();
        assert_eq!(content(&site, &created.blob_path).await, b"version: 2\n");
        assert_eq!(site.blobs.journals("").await.unwrap().len(), 1);
        check(&recorder.ops());

        // The restart settles the journal: the old content is back, on
        // stable storage.
        recorder.clear();
        let done = crate::primary::journal::recover(&site.db, &site.blobs, Default::default())
            .await
            .unwrap();
        assert_eq!((done.undone, done.committed), (1, 0));
        assert_eq!(content(&site, &created.blob_path).await, b"version: 1\n");
        assert!(site.blobs.journals("").await.unwrap().is_empty());
        let mut ops = recorder.ops();
        ops.push(Op::Commit(["a later commit".to_string()].into()));
        check(&ops);

        // A later write goes through as usual.
        put(&site, b"version: 3\n").await;
        assert_eq!(content(&site, &created.blob_path).await, b"version: 3\n");
    }

    #[tokio::test]
    async fn a_write_that_fails_after_its_rename_puts_the_old_content_back() {
        for method in METHODS {
            a_write_that_fails_after_its_rename_puts_the_old_content_back_with(method).await;
        }
    }

    async fn a_write_that_fails_after_its_rename_puts_the_old_content_back_with(
        method: SyncMethod,
    ) {
        let (_dir, site, recorder) = primary(method).await;
        let created = put(&site, b"version: 1\n").await;
        recorder.fail_next_sync();
        let columns = json!({"project_id": 1, "channel": "stable"});
        let body = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"v2"))]);
        let error = crate::primary::ingest::upsert(&site, HELM, columns.as_object().unwrap(), body)
            .await
            .unwrap_err();
        assert!(error.to_string().contains("injected"), "{error}");
        assert_eq!(content(&site, &created.blob_path).await, b"version: 1\n");
        assert!(site.blobs.journals("").await.unwrap().is_empty());

        // A create that fails leaves no blob behind.
        recorder.fail_next_sync();
        let columns = json!({"project_id": 1, "channel": "beta"});
        let body = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"b"))]);
        crate::primary::ingest::upsert(&site, HELM, columns.as_object().unwrap(), body)
            .await
            .unwrap_err();
        assert_eq!(site.blobs.list_type(HELM).await.unwrap().len(), 1);
        check(&recorder.ops());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_share_their_syncs_and_a_bad_one_fails_alone() {
        for method in METHODS {
            concurrent_writes_share_their_syncs_and_a_bad_one_fails_alone_with(method).await;
        }
    }

    async fn concurrent_writes_share_their_syncs_and_a_bad_one_fails_alone_with(
        method: SyncMethod,
    ) {
        let (_dir, site, recorder) = primary(method).await;
        let model = site.installed(HELM).unwrap().identity.table.name.clone();
        let write = |project: i64, channel: String, body: Vec<u8>| {
            let site = site.clone();
            tokio::spawn(async move {
                let columns = json!({"project_id": project, "channel": channel});
                let body = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from(body))]);
                crate::primary::ingest::upsert(&site, HELM, columns.as_object().unwrap(), body)
                    .await
            })
        };
        let mut writes = Vec::new();
        for i in 0..40 {
            writes.push((
                format!("c{i}"),
                write(1, format!("c{i}"), format!("v{i}").into()),
            ));
        }
        // A write refused inside the group, and a second write of one record.
        let missing = write(99, "m".into(), b"m".to_vec());
        let again = write(1, "c0".into(), b"again".to_vec());
        for (channel, writer) in writes {
            let outcome = writer.await.unwrap().unwrap();
            let body = content(&site, &outcome.blob_path).await;
            if channel == "c0" {
                assert!(body == b"v0" || body == b"again", "{body:?}");
            } else {
                assert_eq!(body, format!("v{}", &channel[1..]).as_bytes());
            }
        }
        let error = missing.await.unwrap().unwrap_err();
        assert_eq!(error.to_string(), "project 99 does not exist");
        again.await.unwrap().unwrap();
        assert_eq!(site.blobs.list_type(HELM).await.unwrap().len(), 40);
        assert!(site.blobs.journals("").await.unwrap().is_empty());
        let ops = recorder.ops();
        check(&ops);
        let commits = ops.iter().filter(|op| commits_table(op, &model)).count();
        assert!(
            commits < 20,
            "41 writes committed in {commits} transactions: concurrent writes share a commit"
        );
    }

    /// A secondary's tracking database, blob store and downloader, all
    /// recorded, against a fake primary.
    struct SecondaryRig {
        _dir: tempfile::TempDir,
        recorder: Arc<Recorder>,
        tracking: Db,
        it: Arc<crate::catalog::InstalledType>,
        primary: crate::secondary::testing::FakePrimary,
        downloader: crate::secondary::sync::Downloader,
    }

    impl SecondaryRig {
        async fn new(method: SyncMethod) -> SecondaryRig {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("blobs");
            std::fs::create_dir_all(&root).unwrap();
            let recorder = Recorder::new(&root);
            let url = crate::config::sqlite_url(&dir.path().join("tracking.sqlite"));
            let tracking = recorder.sqlite(&url).await;
            crate::db::migrate::tracking(&tracking).await.unwrap();
            let it = crate::secondary::testing::helm();
            crate::db::template::ensure_tracking_tables(&tracking, &it.identity)
                .await
                .unwrap();
            let primary = crate::secondary::testing::FakePrimary::start().await;
            let downloader = crate::secondary::sync::Downloader {
                client: primary.client(),
                tracking: tracking.clone(),
                blobs: recorder.store().with_sync_method(method),
                cancel: Default::default(),
                lease: None,
                wakes: Default::default(),
            };
            SecondaryRig {
                _dir: dir,
                recorder,
                tracking,
                it,
                primary,
                downloader,
            }
        }
    }

    #[tokio::test]
    async fn the_secondary_commits_only_blobs_on_stable_storage() {
        use crate::secondary::registry::Registry;
        let rig = SecondaryRig::new(SyncMethod::Syncfs).await;
        let SecondaryRig {
            recorder,
            tracking,
            it,
            primary,
            downloader,
            ..
        } = &rig;
        let registry = Registry::of(it);
        let table = registry.table().trim_matches('"').to_string();

        // Create: a new record is downloaded.
        primary.add(1, 10, b"index one", true);
        registry.insert_missing(tracking, &[1]).await.unwrap();
        recorder.clear();
        downloader.sync_now(it, 1).await.unwrap().unwrap();
        let ops = recorder.ops();
        check(&ops);
        let placed = find(
            &ops,
            0,
            |op| matches!(op, Op::Rename { to, .. } if to.starts_with(it.name())),
        )
        .expect("the download is renamed into place");
        find(&ops, placed, |op| commits_table(op, &table)).expect("then marked synced");

        // Update: the record's new content replaces the copy.
        primary.add(1, 10, b"index one, second version", true);
        registry.pending(tracking, 1).await.unwrap();
        recorder.clear();
        downloader.sync_now(it, 1).await.unwrap().unwrap();
        let ops = recorder.ops();
        check(&ops);
        let placed = find(&ops, 0, |op| matches!(op, Op::Rename { .. })).unwrap();
        find(&ops, placed, |op| commits_table(op, &table)).expect("then marked synced");
        let row = registry.get(tracking, 1).await.unwrap().unwrap();
        assert_eq!(row.state, crate::states::SyncState::Synced);
    }

    /// The batch path writes many small blobs at once through its own fast
    /// path: each of them, too, is on stable storage before the batch's
    /// outcomes are committed.
    #[tokio::test]
    async fn the_secondarys_batches_commit_only_blobs_on_stable_storage() {
        for method in METHODS {
            the_secondarys_batches_commit_only_blobs_on_stable_storage_with(method).await;
        }
    }

    async fn the_secondarys_batches_commit_only_blobs_on_stable_storage_with(method: SyncMethod) {
        use crate::secondary::batch::{BatchSettings, sync_one_batch};
        use crate::secondary::registry::Registry;
        use crate::states::SyncState;
        let rig = SecondaryRig::new(method).await;
        let SecondaryRig {
            recorder,
            tracking,
            it,
            primary,
            downloader,
            ..
        } = &rig;
        let registry = Registry::of(it);
        let table = registry.table().trim_matches('"').to_string();
        let settings = BatchSettings {
            max_blob_bytes: 1024,
            size: 100,
            in_flight: 2,
        };
        let ids: Vec<i64> = (1..=20).collect();
        for &id in &ids {
            primary.add(id, 10, format!("entries: {id}\n").as_bytes(), true);
        }
        registry.insert_missing(tracking, &ids).await.unwrap();
        recorder.clear();
        assert_eq!(sync_one_batch(downloader, it, settings).await.unwrap(), 20);
        assert_eq!(primary.hits("retrieve_batch"), 1);
        let ops = recorder.ops();
        let placed = ops
            .iter()
            .filter(|op| matches!(op, Op::Rename { to, .. } if to.starts_with(it.name())))
            .count();
        assert_eq!(
            placed, 20,
            "{method:?}: every blob is renamed into place: {ops:#?}"
        );
        find(&ops, 0, |op| commits_table(op, &table)).expect("the outcomes are committed");
        check(&ops);
        for &id in &ids {
            let row = registry.get(tracking, id).await.unwrap().unwrap();
            assert_eq!(row.state, SyncState::Synced, "{method:?}");
        }

        // A batch whose blobs cannot be made durable: each row fails with
        // the disk's error and is synced again later.
        let more: Vec<i64> = (21..=25).collect();
        for &id in &more {
            primary.add(id, 10, format!("entries: {id}\n").as_bytes(), true);
        }
        registry.insert_missing(tracking, &more).await.unwrap();
        recorder.fail_next_sync();
        assert_eq!(sync_one_batch(downloader, it, settings).await.unwrap(), 5);
        for &id in &more {
            let row = registry.get(tracking, id).await.unwrap().unwrap();
            assert_eq!(row.state, SyncState::Failed, "{method:?}");
            let failure = row.last_sync_failure.unwrap_or_default();
            assert!(failure.contains("injected"), "{method:?}: {failure}");
            registry.pending(tracking, id).await.unwrap();
        }
        recorder.clear();
        assert_eq!(sync_one_batch(downloader, it, settings).await.unwrap(), 5);
        check(&recorder.ops());
        for &id in &more {
            let row = registry.get(tracking, id).await.unwrap().unwrap();
            assert_eq!(row.state, SyncState::Synced, "{method:?}");
        }
    }

    #[test]
    fn the_check_catches_a_commit_before_the_folder_sync() {
        let ops = [
            Op::Write(".tmp/a".into()),
            Op::SyncFile(".tmp/a".into()),
            Op::Rename {
                from: ".tmp/a".into(),
                to: "t/x/b".into(),
            },
            Op::SyncDir("t/x".into()),
            Op::SyncDir("t".into()),
            Op::Commit(["m".to_string()].into()),
            Op::SyncDir("".into()),
        ];
        let caught = std::panic::catch_unwind(|| check(&ops));
        assert!(
            caught.is_err(),
            "the root folder was synced after the commit"
        );
        let mut fixed = ops.to_vec();
        fixed.swap(5, 6);
        check(&fixed);
        let unsynced = [
            Op::Write(".tmp/a".into()),
            Op::Rename {
                from: ".tmp/a".into(),
                to: "t/b".into(),
            },
            Op::SyncDir("t".into()),
            Op::SyncDir("".into()),
            Op::Commit(["m".to_string()].into()),
        ];
        assert!(std::panic::catch_unwind(|| check(&unsynced)).is_err());
    }
}
