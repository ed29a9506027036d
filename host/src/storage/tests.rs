use super::*;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::memory::InMemory;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

const TYPE: &str = "package_file";

fn p(path: &str) -> BlobPath {
    BlobPath::parse(path).unwrap()
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Deterministic, incompressible-looking test data.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

async fn read_all(store: &BlobStore, path: &BlobPath) -> (u64, Vec<u8>) {
    let (size, stream) = store.get(TYPE, path).await.unwrap();
    let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
    (size, chunks.concat())
}

fn local() -> (tempfile::TempDir, BlobStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(&dir.path().join("blobs")).unwrap();
    (dir, store)
}

fn memory() -> BlobStore {
    BlobStore::from_object_store(
        Arc::new(InMemory::new()),
        StoreKind::ObjectStorage,
        "memory",
    )
}

/// Every backend: the local fast paths, the generic stream paths, and a
/// real S3 server when the environment provides one.
fn stores() -> Vec<(Option<tempfile::TempDir>, BlobStore)> {
    let (dir, store) = local();
    let mut stores = vec![(Some(dir), store), (None, memory())];
    if let Some(settings) = testing::s3_settings() {
        stores.push((None, BlobStore::s3(&settings).unwrap()));
    }
    stores
}

#[test]
fn file_size_for_checksum_is_even_length() {
    assert_eq!(format_file_size_for_checksum(0), "00");
    assert_eq!(format_file_size_for_checksum(7), "07");
    assert_eq!(format_file_size_for_checksum(10), "10");
    assert_eq!(format_file_size_for_checksum(123), "0123");
    assert_eq!(format_file_size_for_checksum(1024), "1024");
    assert_eq!(format_file_size_for_checksum(12345), "012345");
}

#[tokio::test]
async fn put_checksum_get_round_trip() {
    for (_dir, store) in stores() {
        let path = p("6b/86/6b86b273/packages/helm/index.yaml");
        let data = Bytes::from_static(b"apiVersion: v1\nentries: {}\n");
        let written = store.put_bytes(TYPE, &path, data.clone()).await.unwrap();
        assert_eq!(written.size, data.len() as u64);
        assert_eq!(written.sha256, sha(&data));
        assert_eq!(store.checksum(TYPE, &path).await.unwrap(), written);
        assert_eq!(
            read_all(&store, &path).await,
            (data.len() as u64, data.to_vec())
        );
        assert!(store.exists(TYPE, &path).await.unwrap());
        assert_eq!(store.size(TYPE, &path).await.unwrap(), data.len() as u64);
        assert_eq!(store.list_type(TYPE).await.unwrap(), vec![path.to_string()]);
        assert!(store.list_type("other_type").await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn empty_blob() {
    for (_dir, store) in stores() {
        let path = p("empty");
        let temp = store.begin_temp();
        let finished = temp.finish().await.unwrap();
        assert_eq!(
            (finished.size, finished.sha256_hex.as_str()),
            (0, sha(b"").as_str())
        );
        finished.promote(TYPE, &path).await.unwrap();
        assert_eq!(store.checksum(TYPE, &path).await.unwrap().size, 0);
        assert_eq!(read_all(&store, &path).await, (0, vec![]));
    }
}

#[tokio::test]
async fn unpromoted_temp_is_invisible_and_promote_replaces() {
    for (_dir, store) in stores() {
        let path = p("aa/bb/blob.bin");
        store
            .put_bytes(TYPE, &path, Bytes::from_static(b"old content"))
            .await
            .unwrap();

        let mut temp = store.begin_temp();
        temp.write(Bytes::from_static(b"new ")).await.unwrap();
        temp.write(Bytes::from_static(b"content")).await.unwrap();
        assert_eq!(temp.size(), 11);
        // Half-written: the blob path still serves the old content.
        assert_eq!(read_all(&store, &path).await.1, b"old content");
        let finished = temp.finish().await.unwrap();
        // Finished but not promoted: still the old content, and nothing new
        // appears among the type's blobs.
        assert_eq!(read_all(&store, &path).await.1, b"old content");
        assert_eq!(store.list_type(TYPE).await.unwrap(), vec!["aa/bb/blob.bin"]);
        assert_eq!(finished.sha256_hex, sha(b"new content"));

        let written = finished.promote(TYPE, &path).await.unwrap();
        assert_eq!(
            written,
            Written {
                size: 11,
                sha256: sha(b"new content")
            }
        );
        assert_eq!(read_all(&store, &path).await.1, b"new content");
        assert_eq!(store.list_type(TYPE).await.unwrap(), vec!["aa/bb/blob.bin"]);
        // The temporary object is gone: nothing left to clean up.
        assert_eq!(store.cleanup_temp(Duration::ZERO).await.unwrap(), 0);
    }
}

#[tokio::test]
async fn promote_into_new_folders() {
    let (_dir, store) = local();
    let path = p("deep/er/and/deeper/file.tgz");
    let mut temp = store.begin_temp();
    temp.write(Bytes::from_static(b"x")).await.unwrap();
    temp.finish()
        .await
        .unwrap()
        .promote(TYPE, &path)
        .await
        .unwrap();
    let on_disk = store.local_path(TYPE, &path).unwrap().unwrap();
    assert_eq!(std::fs::read(on_disk).unwrap(), b"x");
}

#[tokio::test]
async fn large_streamed_blob() {
    for (_dir, store) in stores() {
        let data = pseudo_random(20 * 1024 * 1024 + 123, 7);
        let path = p("big/blob.bin");
        let mut temp = store.begin_temp();
        for chunk in data.chunks(64 * 1024) {
            temp.write(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        let finished = temp.finish().await.unwrap();
        assert_eq!(finished.size, data.len() as u64);
        assert_eq!(finished.sha256_hex, sha(&data));
        finished.promote(TYPE, &path).await.unwrap();

        let checked = store.checksum(TYPE, &path).await.unwrap();
        assert_eq!(
            checked,
            Written {
                size: data.len() as u64,
                sha256: sha(&data)
            }
        );
        let (size, served) = read_all(&store, &path).await;
        assert_eq!(size, data.len() as u64);
        assert!(served == data, "served content differs");
    }
}

#[tokio::test]
async fn missing_blob_is_not_found() {
    for (_dir, store) in stores() {
        let path = p("no/such/blob");
        let not_found = |e: StorageError| {
            assert!(e.is_not_found(), "{e:?}");
            assert!(e.to_string().contains("package_file/no/such/blob"), "{e}");
        };
        not_found(store.checksum(TYPE, &path).await.unwrap_err());
        not_found(store.get(TYPE, &path).await.err().unwrap());
        not_found(store.head(TYPE, &path).await.unwrap_err());
        not_found(store.size(TYPE, &path).await.unwrap_err());
        not_found(
            store
                .rename(TYPE, &path, &p("elsewhere"))
                .await
                .unwrap_err(),
        );
        not_found(store.geo_checksum(TYPE, &path).await.unwrap_err());
        assert!(!store.exists(TYPE, &path).await.unwrap());
    }
}

#[tokio::test]
async fn delete_is_idempotent() {
    for (_dir, store) in stores() {
        let path = p("to/delete");
        store
            .put_bytes(TYPE, &path, Bytes::from_static(b"x"))
            .await
            .unwrap();
        store.delete(TYPE, &path).await.unwrap();
        assert!(!store.exists(TYPE, &path).await.unwrap());
        store.delete(TYPE, &path).await.unwrap();
        store.delete(TYPE, &p("never/existed")).await.unwrap();
    }
}

#[tokio::test]
async fn rename_moves_within_type() {
    for (_dir, store) in stores() {
        let (from, to) = (p("a/from"), p("b/to"));
        store
            .put_bytes(TYPE, &from, Bytes::from_static(b"moved"))
            .await
            .unwrap();
        store
            .put_bytes(TYPE, &to, Bytes::from_static(b"replaced"))
            .await
            .unwrap();
        store.rename(TYPE, &from, &to).await.unwrap();
        assert!(!store.exists(TYPE, &from).await.unwrap());
        assert_eq!(read_all(&store, &to).await.1, b"moved");
    }
}

#[tokio::test]
async fn cleanup_temp_removes_leftovers() {
    // Local: a crash leaves a finished temporary object and a multipart
    // staging file (hidden from `object_store` listings).
    let (dir, store) = local();
    let tmp = dir.path().join("blobs").join(TEMP_DIR);
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::write(tmp.join("1f0e2c1a-finished"), b"x").unwrap();
    std::fs::write(tmp.join("5d2b9e77-staging#1"), b"partial").unwrap();
    assert_eq!(
        store.cleanup_temp(Duration::from_secs(3600)).await.unwrap(),
        0
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        store.cleanup_temp(Duration::from_millis(10)).await.unwrap(),
        2
    );
    assert_eq!(std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0), 0);

    // Generic backend: a finished temporary object that was never promoted.
    let store = memory();
    let mut temp = store.begin_temp();
    temp.write(Bytes::from_static(b"x")).await.unwrap();
    let finished = temp.finish().await.unwrap();
    std::mem::forget(finished); // as if the process died here
    assert_eq!(
        store.cleanup_temp(Duration::from_secs(3600)).await.unwrap(),
        0
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        store.cleanup_temp(Duration::from_millis(10)).await.unwrap(),
        1
    );
    assert_eq!(store.cleanup_temp(Duration::ZERO).await.unwrap(), 0);
}

/// On S3, a writer killed in the middle of a large download leaves an
/// incomplete multipart upload: invisible to listings, but stored and
/// billed. The sweep aborts it once it is older than the age, never a
/// live one.
#[tokio::test]
async fn cleanup_temp_aborts_the_multipart_uploads_a_crash_left_on_s3() {
    let Some(mut settings) = testing::s3_settings() else {
        return;
    };
    settings.prefix = "site-a".into();
    let store = BlobStore::s3(&settings).unwrap();
    let mut temp = store.begin_temp();
    // More than one 8 MiB part: a multipart upload, with a part stored.
    temp.write(Bytes::from(vec![7u8; 9 * 1024 * 1024]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    std::mem::forget(temp); // the process dies before it completes
    assert_eq!(
        store.cleanup_temp(Duration::from_secs(3600)).await.unwrap(),
        0,
        "a young upload is left alone"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        store.cleanup_temp(Duration::from_secs(1)).await.unwrap(),
        1,
        "the stale upload is aborted"
    );
    assert_eq!(store.cleanup_temp(Duration::ZERO).await.unwrap(), 0);
    // Another site's prefix in the same bucket is not this site's to sweep.
    let mut other = settings.clone();
    other.prefix = "site-b".into();
    let other = BlobStore::s3(&other).unwrap();
    let mut temp = other.begin_temp();
    temp.write(Bytes::from(vec![7u8; 9 * 1024 * 1024]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    std::mem::forget(temp);
    assert_eq!(store.cleanup_temp(Duration::ZERO).await.unwrap(), 0);
    assert_eq!(other.cleanup_temp(Duration::ZERO).await.unwrap(), 1);
}

#[tokio::test]
async fn discard_and_drop_remove_the_temporary_object() {
    let (dir, store) = local();
    let tmp = dir.path().join("blobs").join(TEMP_DIR);
    let count = || std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0);

    let mut temp = store.begin_temp();
    temp.write(Bytes::from_static(b"x")).await.unwrap();
    let finished = temp.finish().await.unwrap();
    assert_eq!(count(), 1);
    finished.discard().await.unwrap();
    assert_eq!(count(), 0);

    let mut temp = store.begin_temp();
    temp.write(Bytes::from_static(b"x")).await.unwrap();
    drop(temp.finish().await.unwrap());
    for _ in 0..100 {
        if count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(count(), 0);

    // A large write abandoned mid-way (already a multipart upload).
    let mut temp = store.begin_temp();
    temp.write(Bytes::from(vec![1u8; 3 * 1024 * 1024]))
        .await
        .unwrap();
    drop(temp);
    for _ in 0..100 {
        if count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(count(), 0);
}

#[tokio::test]
async fn unusual_but_valid_paths_are_kept_verbatim() {
    let (_dir, store) = local();
    for raw in [
        "with space/a%41b",
        "ünï/cödé.txt",
        "a#b/c#x",
        "weird/{}[]~<>|*?",
    ] {
        let path = p(raw);
        store
            .put_bytes(TYPE, &path, Bytes::from(raw.to_string()))
            .await
            .unwrap();
        let on_disk = store.local_path(TYPE, &path).unwrap().unwrap();
        assert!(
            on_disk.ends_with(format!("{TYPE}/{raw}")),
            "{}",
            on_disk.display()
        );
        assert_eq!(std::fs::read(&on_disk).unwrap(), raw.as_bytes());
        assert_eq!(read_all(&store, &path).await.1, raw.as_bytes());
    }
}

#[tokio::test]
async fn refused_names() {
    let (_dir, store) = local();
    for bad in ["", ".tmp", "Package", "a/b", "9lives", "x-y"] {
        let err = store
            .put_bytes(bad, &p("f"), Bytes::new())
            .await
            .unwrap_err();
        assert!(
            matches!(err, StorageError::InvalidTypeName(_)),
            "{bad:?}: {err:?}"
        );
    }
    let err = store
        .put_bytes(TYPE, &p("dir/file#12"), Bytes::new())
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::InvalidPath { .. }), "{err:?}");
}

#[tokio::test]
async fn geo_checksum_follows_the_store_kind() {
    let data = Bytes::from_static(b"hello");
    let path = p("h");
    let (_dir, local) = local();
    local.put_bytes(TYPE, &path, data.clone()).await.unwrap();
    assert_eq!(local.geo_checksum(TYPE, &path).await.unwrap(), sha(&data));
    let object = memory();
    object.put_bytes(TYPE, &path, data).await.unwrap();
    assert_eq!(object.geo_checksum(TYPE, &path).await.unwrap(), "05");
}

/// Throughput of [`BlobStore::checksum`] on a local store. Run with
/// `cargo test -p geohost --release --lib storage::tests::checksum_throughput -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "measurement, not a test"]
async fn checksum_throughput() {
    let (_dir, store) = local();
    let big = p("big/blob");
    let data = pseudo_random(50 * 1024 * 1024, 1);
    store
        .put_bytes(TYPE, &big, Bytes::from(data))
        .await
        .unwrap();
    store.checksum(TYPE, &big).await.unwrap(); // warm the page cache
    let rounds = 10;
    // The ceiling: SHA-256 of the same bytes already in memory.
    let in_memory = pseudo_random(50 * 1024 * 1024, 1);
    let start = std::time::Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(Sha256::digest(&in_memory));
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "sha2 over memory: {:.0} MB/s",
        rounds as f64 * 50.0 * 1.048_576 / secs
    );
    drop(in_memory);
    let start = std::time::Instant::now();
    for _ in 0..rounds {
        store.checksum(TYPE, &big).await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "50 MiB blobs: {:.0} MB/s",
        rounds as f64 * 50.0 * 1.048_576 / secs
    );

    let small: Vec<BlobPath> = (0..5000)
        .map(|i| p(&format!("small/{:02x}/{i}", i % 256)))
        .collect();
    for (i, path) in small.iter().enumerate() {
        store
            .put_bytes(TYPE, path, Bytes::from(pseudo_random(4096, i as u64)))
            .await
            .unwrap();
    }
    for path in &small {
        store.checksum(TYPE, path).await.unwrap();
    }
    let start = std::time::Instant::now();
    for path in &small {
        store.checksum(TYPE, path).await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "4 KiB blobs, one at a time: {:.0} files/s",
        small.len() as f64 / secs
    );

    let start = std::time::Instant::now();
    futures::stream::iter(small.iter().map(|path| store.checksum(TYPE, path)))
        .buffer_unordered(8)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "4 KiB blobs, 8 at a time: {:.0} files/s",
        small.len() as f64 / secs
    );
}
