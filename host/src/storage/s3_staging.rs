//! The staging objects a crashed writer leaves in an S3 bucket: multipart
//! uploads that were started and never completed.
//!
//! A download larger than one part (8 MiB) goes to its temporary key as a
//! multipart upload. Killed before it completes, the writer leaves the
//! upload's parts stored (and billed) but invisible: no listing of objects
//! shows them, so sweeping `.tmp/` (as on a local disk, where such a
//! leftover is a `#<n>` staging file) does not reach them. Here the site
//! lists the incomplete uploads under its own `<prefix>/.tmp/`
//! (`ListMultipartUploads`), and aborts (`AbortMultipartUpload`) those
//! untouched for the sweeper's age: started that long ago, with no part
//! uploaded since (`ListParts`), so a live upload is never cut.
//!
//! `object_store` has no call to list multipart uploads; its signer
//! (`AwsAuthorizer`, SigV4) signs these three requests, sent with the
//! site's HTTP client. A bucket lifecycle rule
//! (`AbortIncompleteMultipartUpload`) does the same on AWS and is still
//! worth setting; not every S3-compatible service has one.

use super::{S3Settings, StorageError, TEMP_DIR};
use chrono::{DateTime, Utc};
use object_store::aws::{AmazonS3, AwsAuthorizer};
use serde::Deserialize;
use std::time::Duration;

/// Most uploads looked at per sweep (pages of 1,000).
const MAX_PER_SWEEP: usize = 10_000;

/// Lists and aborts a site's incomplete multipart uploads.
#[derive(Debug, Clone)]
pub(super) struct S3Staging {
    s3: AmazonS3,
    http: reqwest::Client,
    /// `<endpoint>/<bucket>` (path style), without a trailing `/`.
    base: String,
    region: String,
    /// The key prefix of this site's temporary objects: `<prefix>/.tmp/`.
    temp_prefix: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListUploads {
    #[serde(default, rename = "Upload")]
    uploads: Vec<Upload>,
    #[serde(default)]
    is_truncated: bool,
    next_key_marker: Option<String>,
    next_upload_id_marker: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Upload {
    key: String,
    upload_id: String,
    initiated: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListParts {
    #[serde(default, rename = "Part")]
    parts: Vec<Part>,
    #[serde(default)]
    is_truncated: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Part {
    last_modified: String,
}

/// Percent-encodes a key or query value (RFC 3986 unreserved characters
/// kept, and `/` in keys).
fn encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        let keep = byte.is_ascii_alphanumeric()
            || matches!(byte, b'-' | b'.' | b'_' | b'~')
            || (keep_slash && byte == b'/');
        if keep {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn failed(op: &'static str, location: &str, message: impl std::fmt::Display) -> StorageError {
    StorageError::Io {
        op,
        location: location.to_string(),
        source: std::io::Error::other(message.to_string()),
    }
}

impl S3Staging {
    pub(super) fn new(s3: AmazonS3, settings: &S3Settings) -> S3Staging {
        let endpoint = settings
            .endpoint
            .as_deref()
            .map(|e| e.trim_end_matches('/').to_string())
            .unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", settings.region));
        let temp_prefix = if settings.prefix.is_empty() {
            format!("{TEMP_DIR}/")
        } else {
            format!("{}/{TEMP_DIR}/", settings.prefix)
        };
        S3Staging {
            s3,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("an HTTP client"),
            base: format!("{endpoint}/{}", encode(&settings.bucket, false)),
            region: settings.region.clone(),
            temp_prefix,
        }
    }

    /// Sends one signed request: `key` (none: the bucket) and the query.
    async fn send(
        &self,
        method: axum::http::Method,
        key: Option<&str>,
        query: &str,
    ) -> Result<String, StorageError> {
        let shown = key.unwrap_or(&self.temp_prefix).to_string();
        let url = match key {
            Some(key) => format!("{}/{}?{query}", self.base, encode(key, true)),
            None => format!("{}?{query}", self.base),
        };
        let credential = self
            .s3
            .credentials()
            .get_credential()
            .await
            .map_err(|e| StorageError::from_store("sign", &shown, e))?;
        let mut request = axum::http::Request::builder()
            .method(method.clone())
            .uri(&url)
            .body(object_store::client::HttpRequestBody::empty())
            .map_err(|e| failed("sign", &shown, e))?;
        AwsAuthorizer::new(&credential, "s3", &self.region)
            .try_authorize(&mut request, None)
            .map_err(|e| StorageError::from_store("sign", &shown, e))?;
        let mut outgoing = self.http.request(method, &url);
        for (name, value) in request.headers() {
            outgoing = outgoing.header(name, value);
        }
        let response = outgoing
            .send()
            .await
            .map_err(|e| failed("reach the bucket for", &shown, e))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| failed("read", &shown, e))?;
        if !status.is_success() {
            let excerpt: String = body.chars().take(300).collect();
            return Err(failed(
                "list staging uploads of",
                &shown,
                format!("{status}: {excerpt}"),
            ));
        }
        Ok(body)
    }

    /// The incomplete uploads under this site's `.tmp/`: (key, upload id,
    /// started).
    async fn uploads(&self) -> Result<Vec<(String, String, DateTime<Utc>)>, StorageError> {
        let mut found = Vec::new();
        let mut markers: Option<(String, String)> = None;
        loop {
            let mut query = format!("prefix={}&uploads=", encode(&self.temp_prefix, false));
            if let Some((key, id)) = &markers {
                query.push_str(&format!(
                    "&key-marker={}&upload-id-marker={}",
                    encode(key, false),
                    encode(id, false)
                ));
            }
            let body = self.send(axum::http::Method::GET, None, &query).await?;
            let page: ListUploads = quick_xml::de::from_str(&body)
                .map_err(|e| failed("read the upload list of", &self.temp_prefix, e))?;
            for upload in page.uploads {
                if let Some(at) = time(&upload.initiated) {
                    found.push((upload.key, upload.upload_id, at));
                }
            }
            match (
                page.is_truncated,
                page.next_key_marker,
                page.next_upload_id_marker,
            ) {
                (true, Some(key), Some(id)) if found.len() < MAX_PER_SWEEP => {
                    markers = Some((key, id))
                }
                _ => return Ok(found),
            }
        }
    }

    /// When an upload last received a part (`None`: no part, or too many
    /// to tell, which counts as live).
    async fn last_part(
        &self,
        key: &str,
        upload_id: &str,
    ) -> Result<Option<Option<DateTime<Utc>>>, StorageError> {
        let query = format!("uploadId={}", encode(upload_id, false));
        let body = match self.send(axum::http::Method::GET, Some(key), &query).await {
            Ok(body) => body,
            // Completed or aborted meanwhile.
            Err(error) if error.to_string().contains("NoSuchUpload") => return Ok(None),
            Err(error) => return Err(error),
        };
        let page: ListParts =
            quick_xml::de::from_str(&body).map_err(|e| failed("read the parts of", key, e))?;
        if page.is_truncated {
            return Ok(None);
        }
        Ok(Some(
            page.parts
                .iter()
                .filter_map(|p| time(&p.last_modified))
                .max(),
        ))
    }

    /// Aborts the incomplete uploads untouched for `older_than`; returns
    /// how many.
    pub(super) async fn sweep(&self, older_than: Duration) -> Result<usize, StorageError> {
        let cutoff = chrono::Duration::from_std(older_than)
            .ok()
            .and_then(|age| Utc::now().checked_sub_signed(age))
            .unwrap_or(DateTime::UNIX_EPOCH);
        let mut aborted = 0;
        for (key, upload_id, started) in self.uploads().await? {
            if started > cutoff {
                continue;
            }
            match self.last_part(&key, &upload_id).await? {
                None => continue,
                Some(Some(part)) if part > cutoff => continue,
                Some(_) => {}
            }
            let query = format!("uploadId={}", encode(&upload_id, false));
            match self
                .send(axum::http::Method::DELETE, Some(&key), &query)
                .await
            {
                Ok(_) => {
                    aborted += 1;
                    tracing::info!(%key, "aborted a multipart upload a crashed writer left");
                }
                Err(error) if error.to_string().contains("NoSuchUpload") => {}
                Err(error) => return Err(error),
            }
        }
        Ok(aborted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_are_percent_encoded() {
        assert_eq!(encode("site a/.tmp/x~y", true), "site%20a/.tmp/x~y");
        assert_eq!(encode("a/b+c", false), "a%2Fb%2Bc");
    }

    #[test]
    fn the_listing_answers_parse() {
        let list: ListUploads = quick_xml::de::from_str(
            "<ListMultipartUploadsResult><Bucket>b</Bucket><IsTruncated>true</IsTruncated>\
             <NextKeyMarker>k</NextKeyMarker><NextUploadIdMarker>u</NextUploadIdMarker>\
             <Upload><Key>p/.tmp/1</Key><UploadId>abc</UploadId>\
             <Initiated>2026-11-28T10:00:00.000Z</Initiated></Upload></ListMultipartUploadsResult>",
        )
        .unwrap();
        assert!(list.is_truncated);
        assert_eq!(list.uploads[0].key, "p/.tmp/1");
        assert!(time(&list.uploads[0].initiated).is_some());
        let parts: ListParts =
            quick_xml::de::from_str("<ListPartsResult><Bucket>b</Bucket></ListPartsResult>")
                .unwrap();
        assert!(parts.parts.is_empty());
    }
}
