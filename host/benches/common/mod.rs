//! What the site benchmarks share: sizes and scale, sites in temporary
//! folders, blobs written through ingest, peers run as processes, timing,
//! resource usage and the printed table.
//!
//! Each bench includes this file as a module (`#[path]`), so not every
//! helper is used by every bench.
#![allow(dead_code)]

use geohost::config::Config;
use geohost::primary::{ingest, sites, topology};
use geohost::site::Site;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub const HELM: &str = "packages_helm_metadata_cache";
pub const KIB: usize = 1024;
pub const MIB: usize = 1024 * 1024;

/// A set of blobs: how many, and how big each.
#[derive(Debug, Clone, Copy)]
pub struct BlobSet {
    pub label: &'static str,
    pub count: usize,
    pub size: usize,
}

impl BlobSet {
    pub fn bytes(&self) -> u64 {
        (self.count * self.size) as u64
    }

    pub fn describe(&self) -> String {
        let size = if self.size >= MIB {
            format!("{} MiB", self.size / MIB)
        } else {
            format!("{} KiB", self.size / KIB)
        };
        format!("{} × {size}", thousands(self.count))
    }
}

/// `GEOHOST_BENCH_SCALE` (default 1): multiplies the number of blobs (never
/// their size), for a quick run (`0.1`).
pub fn scale() -> f64 {
    std::env::var("GEOHOST_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .unwrap_or(1.0)
}

/// The two sets of the issues: 10,000 × 4 KiB and 20 × 50 MiB, scaled.
pub fn blob_sets() -> [BlobSet; 2] {
    let s = scale();
    let n = |full: usize| ((full as f64 * s).round() as usize).max(1);
    [
        BlobSet {
            label: "small",
            count: n(10_000),
            size: 4 * KIB,
        },
        BlobSet {
            label: "large",
            count: n(20),
            size: 50 * MIB,
        },
    ]
}

/// Whether the part `name` of a bench runs: all unless
/// `GEOHOST_BENCH_ONLY` lists parts (comma-separated: `small`, `large`,
/// `lag`).
pub fn runs(name: &str) -> bool {
    match std::env::var("GEOHOST_BENCH_ONLY") {
        Ok(only) if !only.trim().is_empty() => only.split(',').any(|p| p.trim() == name),
        _ => true,
    }
}

/// A running site in a temporary folder.
pub struct BenchSite {
    pub site: Arc<Site>,
    pub url: String,
    pub dir: PathBuf,
    /// Its configuration (TOML), to run it again as a process.
    pub config: String,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _tmp: TempDir,
}

impl BenchSite {
    /// Where the type's blobs are stored.
    pub fn blob_root(&self) -> PathBuf {
        self.site.config.blob_root().join(HELM)
    }

    pub async fn stop(self) {
        drop(self.stop_keeping_data().await);
    }

    /// Stops the site and hands back its folder (to serve it again from
    /// the binary with [`Process`]).
    pub async fn stop_keeping_data(mut self) -> TempDir {
        self.site.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
        self.site.db.close().await;
        if let Some(t) = &self.site.tracking {
            t.close().await;
        }
        self._tmp
    }
}

/// A `geohost serve` process (the release binary), killed when dropped.
pub struct Process(std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Process {
    /// Serves the site of `config` (a file), logging to `log`.
    pub fn start(config: &Path, log: &Path) -> Process {
        let log = std::fs::File::create(log).expect("log file");
        Process(
            Command::new(env!("CARGO_BIN_EXE_geohost"))
                .args(["serve", "--config"])
                .arg(config)
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("geohost serve starts"),
        )
    }

    /// `VmHWM` of the process, in bytes.
    pub fn peak_rss(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.0.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kib| kib.parse::<u64>().ok())
            })
            .map_or(0, |kib| kib * 1024)
    }

    /// CPU time (user + system, every thread) the process used so far.
    pub fn cpu(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.0.id())).unwrap_or_default();
        // Fields after the command name (which may hold spaces): utime is
        // the 14th field of the line, stime the 15th.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<u64> = after
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        let ticks = fields.get(11).unwrap_or(&0) + fields.get(12).unwrap_or(&0);
        // SAFETY: sysconf reads a constant.
        let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_micros(ticks * 1_000_000 / per_sec)
    }
}

/// Waits until something listens on `address`.
pub async fn wait_listening(address: &str) {
    let started = Instant::now();
    while tokio::net::TcpStream::connect(address).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{address} never listened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("an address")
        .port()
}

/// Where the temporary sites live: `GEOHOST_BENCH_DIR`, else the system's
/// temporary folder.
fn temp_dir() -> TempDir {
    match std::env::var_os("GEOHOST_BENCH_DIR") {
        Some(dir) => TempDir::new_in(dir).expect("a folder under GEOHOST_BENCH_DIR"),
        None => TempDir::new().expect("a temporary folder"),
    }
}

async fn start(config_text: String, tmp: TempDir, port: u16, serve: bool) -> BenchSite {
    let config = Config::from_toml(&config_text).expect("valid config");
    let site = geohost::runtime::open(config).await.expect("site opens");
    let task = if serve {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind");
        Some(tokio::spawn(geohost::runtime::serve(
            site.clone(),
            listener,
        )))
    } else {
        None
    };
    BenchSite {
        site,
        url: format!("http://127.0.0.1:{port}"),
        dir: tmp.path().to_path_buf(),
        config: config_text,
        task,
        _tmp: tmp,
    }
}

/// `GEOHOST_BENCH_SYNC_METHOD` (`syncfs` or `fsync`): how both sites make
/// a group of writes durable (`storage.sync_method`); the default when
/// unset.
fn storage_section() -> String {
    match std::env::var("GEOHOST_BENCH_SYNC_METHOD") {
        Ok(method) => format!("[storage]\nsync_method = {method:?}\n"),
        Err(_) => String::new(),
    }
}

/// A primary on SQLite and local disk with these `[workers]` settings;
/// served on loopback when `serve`.
pub async fn primary(workers: &str, serve: bool) -> BenchSite {
    let tmp = temp_dir();
    let port = free_port();
    let config = format!(
        "[site]\nname = \"primary\"\nrole = \"primary\"\nlisten = \"127.0.0.1:{port}\"\n\
         url = \"http://127.0.0.1:{port}\"\ndata_dir = {:?}\n{}[workers]\n{workers}",
        tmp.path().display().to_string(),
        storage_section(),
    );
    start(config, tmp, port, serve).await
}

/// Registers a secondary of `primary` (default settings but
/// `files_max_capacity`) and starts it on SQLite and local disk.
pub async fn secondary(primary: &BenchSite, files_max_capacity: i32) -> BenchSite {
    secondary_with(primary, files_max_capacity, &SecondaryOptions::default()).await
}

/// How a bench secondary differs from the defaults.
#[derive(Debug, Clone, Default)]
pub struct SecondaryOptions {
    /// `[workers]` lines.
    pub workers: String,
    /// The tracking database's URL (`None`: SQLite in the data folder).
    pub tracking_url: Option<String>,
}

/// The secondary's configuration after registering it on `primary`.
pub async fn secondary_config(
    primary: &BenchSite,
    files_max_capacity: i32,
    options: &SecondaryOptions,
    dir: &Path,
    port: u16,
) -> String {
    let url = format!("http://127.0.0.1:{port}");
    let (_, credentials) = sites::add_secondary(
        &primary.site,
        sites::NewSite {
            name: format!("secondary-{port}"),
            url: url.clone(),
            files_max_capacity: Some(files_max_capacity),
            ..Default::default()
        },
    )
    .await
    .expect("secondary registered");
    let tracking = options
        .tracking_url
        .as_ref()
        .map(|url| format!("[tracking_database]\nurl = {url:?}\n"))
        .unwrap_or_default();
    format!(
        "[site]\nname = \"secondary\"\nrole = \"secondary\"\nlisten = \"127.0.0.1:{port}\"\n\
         url = \"{url}\"\ndata_dir = {:?}\n{tracking}\
         [primary]\nurl = \"{}\"\naccess_key = \"{}\"\nsecret_access_key = \"{}\"\n\
         {}[workers]\n{}",
        dir.display().to_string(),
        primary.url,
        credentials.access_key,
        credentials.secret_access_key,
        storage_section(),
        options.workers,
    )
}

/// [`secondary`] with `options`.
pub async fn secondary_with(
    primary: &BenchSite,
    files_max_capacity: i32,
    options: &SecondaryOptions,
) -> BenchSite {
    let tmp = temp_dir();
    let port = free_port();
    let config = secondary_config(primary, files_max_capacity, options, tmp.path(), port).await;
    start(config, tmp, port, true).await
}

/// Folders of finished runs over many small files, removed together once a
/// set's measurements are done, never between them.
///
/// ext4 without a journal (this machine's and CI's disks) skips, when it
/// allocates an inode, every free inode whose file was deleted in the last
/// `vm.dirty_expire_centisecs` (30 s) plus 5 s, reading each one's inode
/// table block to know (`recently_deleted` in `fs/ext4/ialloc.c`). A run
/// that creates 10,000 files right after 10,000 deletions pays that scan for
/// every file: perf showed a third of a secondary's CPU there
/// (`find_get_block_common`, `recently_deleted`). Removing a run's copy
/// before the next run started charged each measurement, ours and the
/// peers', for its predecessor's cleanup.
#[derive(Default)]
pub struct Leftovers(Vec<TempDir>);

impl Leftovers {
    /// Keeps `dir` until [`Leftovers::clear`] (or the end).
    pub fn keep(&mut self, dir: TempDir) {
        self.0.push(dir);
    }

    /// Removes every kept folder, then waits out the kernel's window (see
    /// [`settle_deletions`]).
    pub async fn clear(&mut self) {
        if self.0.is_empty() {
            return;
        }
        self.0.clear();
        settle_deletions().await;
    }
}

/// Waits until files deleted before now no longer slow down the creation of
/// new ones on ext4 without a journal ([`Leftovers`]): the dirty expiry
/// interval plus 5 s. Call it after many deletions (a primary's write
/// journals, a removed copy) and before a measured run that creates files.
pub async fn settle_deletions() {
    let centisecs: u64 = std::fs::read_to_string("/proc/sys/vm/dirty_expire_centisecs")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(3000);
    tokio::time::sleep(Duration::from_secs(centisecs / 100 + 5)).await;
}

/// Writes every file system's dirty data to disk (`sync(2)`), outside any
/// timing: call it right before a measured run that writes files. The peers
/// (`cp -r`, `rclone copy`) never sync their copies, so without it the next
/// run could pay for their write-back: a secondary's first batch's `syncfs`
/// flushes whatever the copies before it left (a `sync` after `cp -r` of
/// 10,000 × 4 KiB takes 0.3–0.45 s here), and a peer's copy races the
/// kernel's flusher writing back the one before. Blocking, and meant to be:
/// nothing else runs then.
pub fn flush_writes() {
    rustix::fs::sync();
}

/// A new folder for a site (under `GEOHOST_BENCH_DIR` when set).
pub fn site_folder() -> TempDir {
    temp_dir()
}

/// A free loopback port.
pub fn port() -> u16 {
    free_port()
}

/// The namespace and project every benchmark record belongs to.
pub async fn project(primary: &BenchSite) -> i64 {
    let db = &primary.site.db;
    let group = topology::create_namespace(db, "bench", "bench", None)
        .await
        .expect("namespace")
        .id;
    topology::create_project(db, "bench", "bench", group, "default")
        .await
        .expect("project")
        .id
}

/// Deterministic incompressible bytes (xorshift), `len` long, differing by `seed`.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// One written record: its id and where its blob is.
#[derive(Debug, Clone)]
pub struct Written {
    pub id: i64,
    pub file: PathBuf,
    pub at: Instant,
}

/// Writes one record of `project` with a blob of `size` random bytes
/// through ingest, in 1 MiB chunks.
pub async fn write_one(primary: &BenchSite, project: i64, n: usize, size: usize) -> Written {
    let mut columns = serde_json::Map::new();
    columns.insert("project_id".into(), project.into());
    columns.insert("channel".into(), format!("bench-{n}").into());
    let data = bytes::Bytes::from(random_bytes(n as u64 + 1, size));
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = (0..data.len())
        .step_by(MIB)
        .map(|at| Ok(data.slice(at..(at + MIB).min(data.len()))))
        .collect();
    let outcome = ingest::upsert(&primary.site, HELM, &columns, futures::stream::iter(chunks))
        .await
        .expect("ingest write");
    Written {
        id: outcome.id,
        file: primary.blob_root().join(&outcome.blob_path),
        at: Instant::now(),
    }
}

/// Writes a whole set, small blobs [`SET_WRITERS`] at once; returns the
/// records and how long it took.
pub async fn write_set(
    primary: &BenchSite,
    project: i64,
    set: BlobSet,
) -> (Vec<Written>, Duration) {
    use futures::StreamExt;
    let started = Instant::now();
    let written = futures::stream::iter(0..set.count)
        .map(|n| write_one(primary, project, n, set.size))
        // Large blobs one at a time: each is generated in memory whole.
        .buffered(if set.size > 1 << 20 { 1 } else { SET_WRITERS })
        .collect()
        .await;
    (written, started.elapsed())
}

/// Writes in flight at once in [`write_set`], as many clients would (the
/// primary commits concurrent writes together).
pub const SET_WRITERS: usize = 32;

/// Writes a whole set without ingest, for sets too large to write through
/// it in a bench's time: the model rows in multi-row statements, each blob
/// as a file at the path GitLab's `HashedPath` gives it (what ingest
/// writes), and pending verification states for the primary's verifier.
pub async fn write_bulk(primary: &BenchSite, project: i64, set: BlobSet) -> Vec<Written> {
    use geohost::db::{Arg, ident, value_rows};
    use sha2::{Digest, Sha256};
    let it = primary.site.installed(HELM).expect("the Helm type");
    let h = hex::encode(Sha256::digest(project.to_string().as_bytes()));
    let now = geohost::db::Db::now();
    let mut written = Vec::with_capacity(set.count);
    let indexes: Vec<usize> = (0..set.count).collect();
    for chunk in indexes.chunks(1000) {
        let mut args: Vec<Arg> = Vec::new();
        for &n in chunk {
            let channel = format!("bulk-{n}");
            let key = format!(
                "{}/{}/{h}/packages/helm/metadata_caches/{}",
                &h[0..2],
                &h[2..4],
                hex::encode(Sha256::digest(channel.as_bytes()))
            );
            let file = primary.blob_root().join(&key).join("index.yaml");
            std::fs::create_dir_all(file.parent().expect("a folder")).expect("blob folder");
            std::fs::write(&file, random_bytes(n as u64 + 1, set.size)).expect("blob file");
            written.push(Written {
                id: 0,
                file,
                at: Instant::now(),
            });
            args.extend([
                Arg::from(now),
                Arg::from(now),
                Arg::from(project),
                Arg::I32(Some(set.size as i32)),
                Arg::I16(Some(1)),
                Arg::from(channel),
                Arg::from("index.yaml"),
                Arg::from(key),
            ]);
        }
        primary
            .site
            .db
            .execute(
                &format!(
                    "INSERT INTO {} (created_at, updated_at, project_id, size, file_store, \
                     channel, file, object_storage_key) VALUES {}",
                    ident(&it.identity.table.name),
                    value_rows(1, chunk.len(), 8)
                ),
                &args,
            )
            .await
            .expect("bulk insert");
    }
    geohost::primary::verify::backfill_states(&primary.site.db, &it)
        .await
        .expect("state rows");
    written
}

/// Polls `check` every `every` until it gives `Some`, or panics after `limit`.
pub async fn until<T, F, Fut>(limit: Duration, every: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(every).await;
    }
}

/// Wall-clock and CPU time (this process, and its finished children) of
/// something.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    pub wall: Duration,
    /// CPU time (user + system) of this process, every thread.
    pub cpu_self: Duration,
    /// CPU time of the child processes that ended meanwhile.
    pub cpu_children: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct Stopwatch {
    wall: Instant,
    cpu_self: Duration,
    cpu_children: Duration,
}

impl Stopwatch {
    pub fn start() -> Stopwatch {
        Stopwatch {
            wall: Instant::now(),
            cpu_self: rusage(libc::RUSAGE_SELF).0,
            cpu_children: rusage(libc::RUSAGE_CHILDREN).0,
        }
    }

    pub fn stop(&self) -> Timing {
        Timing {
            wall: self.wall.elapsed(),
            cpu_self: rusage(libc::RUSAGE_SELF).0.saturating_sub(self.cpu_self),
            cpu_children: rusage(libc::RUSAGE_CHILDREN)
                .0
                .saturating_sub(self.cpu_children),
        }
    }
}

/// (user + system CPU time, peak RSS in bytes) of `who`.
fn rusage(who: libc::c_int) -> (Duration, u64) {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (
        tv(usage.ru_utime) + tv(usage.ru_stime),
        usage.ru_maxrss as u64 * 1024,
    )
}

/// Peak resident memory of this process so far (getrusage), in bytes.
pub fn peak_rss() -> u64 {
    rusage(libc::RUSAGE_SELF).1
}

/// Peak resident memory since the last [`reset_peak_rss`] (`VmHWM`), in bytes.
pub fn peak_rss_since_reset() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Resets the peak resident memory `VmHWM` to the current RSS (Linux:
/// `echo 5 > /proc/self/clear_refs`); false where that is not possible.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Runs `program` with `args` + `files` (in chunks of 500 files, one process
/// after another); returns the lines printed and the timing.
pub fn run_over_files(program: &str, args: &[&str], files: &[PathBuf]) -> (usize, Timing) {
    let watch = Stopwatch::start();
    let mut lines = 0;
    for chunk in files.chunks(500) {
        let output = Command::new(program)
            .args(args)
            .args(chunk)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("running {program}: {e}"));
        assert!(output.status.success(), "{program} failed");
        lines += output
            .stdout
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count();
    }
    (lines, watch.stop())
}

/// Whether a program is on the `PATH` (or an absolute path exists).
pub fn have(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).exists();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// The machine, in one line: cores, CPU model, memory.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown CPU".into(), |m| m.trim().to_string());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<u64>().ok())
        .map_or("?".into(), |k| {
            format!("{:.1} GiB", k as f64 / (1 << 20) as f64)
        });
    format!("{cores} cores, {model}, {memory} RAM")
}

pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Files a second, to three significant digits.
pub fn per_sec(n: f64, d: Duration) -> f64 {
    n / d.as_secs_f64().max(1e-9)
}

pub fn files_rate(n: usize, d: Duration) -> String {
    format!(
        "{} files/s",
        thousands(per_sec(n as f64, d).round() as usize)
    )
}

/// MB/s (10^6 bytes).
pub fn mb_rate(bytes: u64, d: Duration) -> String {
    format!("{:.0} MB/s", per_sec(bytes as f64, d) / 1e6)
}

pub fn mb(bytes: u64) -> String {
    format!("{:.0} MB", bytes as f64 / 1e6)
}

pub fn secs(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{:.0} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

pub fn ratio(ours: f64, theirs: f64) -> String {
    if theirs > 0.0 {
        format!("{:.2}×", ours / theirs)
    } else {
        "n/a".into()
    }
}

pub fn verdict(met: bool) -> String {
    if met { "met".into() } else { "MISSED".into() }
}

/// The printed result: rows of cells under a header, columns aligned
/// (first column left, the others right).
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells = cells;
        cells.resize(self.header.len(), String::new());
        self.rows.push(cells);
    }

    /// A line across the table with a title (a section).
    pub fn section(&mut self, title: &str) {
        let mut cells = vec![format!("— {title}")];
        cells.resize(self.header.len(), String::new());
        self.rows.push(cells);
    }

    pub fn print(&self) {
        let n = self.header.len();
        let widths: Vec<usize> = (0..n)
            .map(|i| {
                self.rows
                    .iter()
                    .chain([&self.header])
                    .filter(|r| !r[0].starts_with("— ") || i > 0)
                    .map(|r| r[i].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in [&self.header].into_iter().chain(&self.rows) {
            if row[0].starts_with("— ") {
                println!("{}", row[0]);
                continue;
            }
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                let pad = " ".repeat(widths[i] - cell.chars().count());
                if i == 0 {
                    line.push_str(cell);
                    line.push_str(&pad);
                } else {
                    line.push_str("  ");
                    line.push_str(&pad);
                    line.push_str(cell);
                }
            }
            println!("{}", line.trim_end());
        }
    }
}

/// One headline figure for the summary table `cargo xtask bench` prints
/// last: appended as a JSON line to `target/bench/<bench>.jsonl`.
/// `peers` are the same measure for each peer, in the same unit; `higher`
/// says whether more is better (rates) or worse (times, memory).
pub fn headline(
    bench: &str,
    measure: &str,
    unit: &str,
    geohost: f64,
    peers: &[(&str, f64)],
    higher: bool,
) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    if let Err(error) = std::fs::create_dir_all(&dir) {
        eprintln!("cannot create {}: {error}", dir.display());
        return;
    }
    let line = serde_json::json!({
        "bench": bench,
        "measure": measure,
        "unit": unit,
        "geohost": geohost,
        "peers": peers.iter().map(|(name, value)| serde_json::json!([name, value])).collect::<Vec<_>>(),
        "higher_is_better": higher,
        "scale": scale(),
    });
    use std::io::Write;
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{bench}.jsonl")))
        .and_then(|mut f| writeln!(f, "{line}"));
    if let Err(error) = written {
        eprintln!("cannot write the headline {measure:?}: {error}");
    }
}

/// The scope re-evaluation's world: 10 root namespaces, 1,000 projects
/// spread over them, a secondary selecting namespaces 1 to 5 (half the
/// projects), and `records` Helm records as the primary's feed serves them
/// (JSON columns), channels `stable`, `beta` and `dev` in turn.
pub fn scope_world(records: usize) -> (geohost::catalog::Scope, Vec<geohost::feed::FeedRecord>) {
    use geohost::plugin::{SelectiveSync, SyncSettings};
    use geohost::topology::{NamespaceNode, ProjectNode, Topology};
    let namespaces: Vec<NamespaceNode> = (1..=10)
        .map(|id| NamespaceNode {
            id,
            parent_id: None,
        })
        .collect();
    let projects: Vec<ProjectNode> = (1..=1000)
        .map(|id| ProjectNode {
            id,
            namespace_id: 1 + id % 10,
            repository_storage: "default".into(),
        })
        .collect();
    let scope = geohost::catalog::Scope {
        settings: SyncSettings {
            selective_sync: SelectiveSync::Namespaces(vec![1, 2, 3, 4, 5]),
            sync_object_storage: false,
        },
        topology: Arc::new(Topology::new(namespaces, projects)),
    };
    let feed = (0..records as i64)
        .map(|id| {
            let channel = ["stable", "beta", "dev"][(id % 3) as usize];
            let columns = serde_json::json!({
                "created_at": 1_700_000_000_000_000i64, "updated_at": 1_700_000_000_000_000i64,
                "last_downloaded_at": null, "project_id": 1 + id % 1000, "size": 10, "status": 0,
                "file_store": 1, "channel": channel, "file": "index.yaml",
                "object_storage_key": format!("aa/bb/{id}/packages/helm/metadata_caches/{channel}"),
            });
            geohost::feed::FeedRecord {
                id: id + 1,
                columns: columns.as_object().unwrap().clone(),
                verification_state: geohost::states::VerificationState::Succeeded,
                verification_checksum: None,
            }
        })
        .collect();
    (scope, feed)
}
