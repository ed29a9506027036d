//! S3 test buckets, on the S3 server the test environment provides.
//!
//! `GEOHOST_TEST_S3_ENDPOINT` names an S3-compatible server on loopback
//! (`cargo xtask test` starts `moto_server` and sets it). Each call of
//! [`s3_settings`] creates a new bucket there, so tests never see each
//! other's objects. Without the variable the S3 tests are skipped with a
//! printed note; on CI (`CI` set) that is a failure instead, as for
//! PostgreSQL in [`crate::db::testing`].
//!
//! The bucket is created with one unsigned `PUT /<bucket>` over a plain TCP
//! connection: test servers (moto) accept any credentials, and this keeps
//! the helper usable from synchronous code without another HTTP client.
//!
//! Hidden from the docs: tests only, but an ordinary module so that the
//! integration tests under `tests/` can use it.

use super::s3::S3Settings;
use std::io::{Read, Write};

/// The variable holding the test S3 endpoint (`http://127.0.0.1:PORT`).
pub const S3_ENDPOINT_VAR: &str = "GEOHOST_TEST_S3_ENDPOINT";

/// The test S3 endpoint, if the environment provides one; prints a note
/// (or panics on CI) when it does not.
pub fn s3_endpoint() -> Option<String> {
    match std::env::var(S3_ENDPOINT_VAR) {
        Ok(endpoint) if !endpoint.is_empty() => Some(endpoint.trim_end_matches('/').to_string()),
        _ if std::env::var("CI").is_ok() => {
            panic!("CI must set {S3_ENDPOINT_VAR} (cargo xtask test does)")
        }
        _ => {
            eprintln!("note: {S3_ENDPOINT_VAR} is unset, skipping the S3 storage tests");
            None
        }
    }
}

/// Settings of a new, empty bucket on the test S3 server, if there is one.
pub fn s3_settings() -> Option<S3Settings> {
    let endpoint = s3_endpoint()?;
    let bucket = format!("geohost-test-{}", uuid::Uuid::new_v4().simple());
    create_bucket(&endpoint, &bucket).unwrap_or_else(|e| panic!("creating bucket {bucket}: {e}"));
    Some(S3Settings {
        bucket,
        endpoint: Some(endpoint),
        region: "us-east-1".into(),
        access_key_id: Some("geohost-test".into()),
        secret_access_key: Some("geohost-test-secret".into()),
        allow_http: true,
        prefix: String::new(),
    })
}

/// The `[storage]` section of a site in a new test bucket, under `prefix`
/// (TOML text), if there is a test S3 server.
pub fn s3_storage_toml(prefix: &str) -> Option<String> {
    let s = s3_settings()?;
    Some(format!(
        "[storage]\nkind = \"s3\"\nbucket = {:?}\nendpoint = {:?}\nregion = {:?}\n\
         access_key_id = {:?}\nsecret_access_key = {:?}\nallow_http = true\nprefix = {prefix:?}\n",
        s.bucket,
        s.endpoint.unwrap_or_default(),
        s.region,
        s.access_key_id.unwrap_or_default(),
        s.secret_access_key.unwrap_or_default(),
    ))
}

/// `PUT /<bucket>` on `endpoint` (`http://host:port`).
fn create_bucket(endpoint: &str, bucket: &str) -> std::io::Result<()> {
    let host = endpoint
        .strip_prefix("http://")
        .ok_or_else(|| std::io::Error::other("the test S3 endpoint must be http://host:port"))?;
    let mut stream = std::net::TcpStream::connect(host)?;
    write!(
        stream,
        "PUT /{bucket} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let status = answer.split_whitespace().nth(1).unwrap_or("");
    if status.starts_with('2') {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "the S3 server answered: {}",
            answer.lines().next().unwrap_or("nothing")
        )))
    }
}
