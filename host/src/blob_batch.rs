//! The batch retrieve's wire format: many small blobs of one type in one
//! authenticated response (`docs/batch-retrieve.md`).
//!
//! `GET /api/v4/geo/retrieve/:replicable_name?ids=1,2,3&max_part_bytes=N`,
//! signed like the single-blob route, the JWT `data` naming the type and
//! exactly the id list ([`batch_claim`]). The body is a sequence of
//! **parts**, one per requested id in the order asked, then an end mark:
//!
//! ```text
//! {"id":1,"status":"ok","size":4096,"checksum":"9f86…"}\n   <4096 bytes>
//! {"id":2,"status":"missing","message":"… 2 file not found","geo_code":"FILE_NOT_FOUND"}\n
//! {"id":3,"status":"too_large","size":52428800}\n
//! {"end":true,"parts":3}\n
//! ```
//!
//! Each part starts with a header: one line of JSON ([`PartHeader`], at most
//! [`MAX_HEADER_BYTES`]) ending in `\n`; an `ok` part's bytes follow,
//! exactly `size` of them, never more than `max_part_bytes`. The size comes
//! before the bytes, so a reader knows what it takes on before reading it,
//! and a part needs no boundary scanning. A reader that sees the body end
//! before the end mark knows the answer was cut short: the records without
//! a complete part failed in transit.
//!
//! Why not `multipart/mixed`: boundaries must be searched for in the bytes,
//! and a part's size is not declared before them. This format is a few
//! dozen lines each way; [`Encoder`] writes it and [`Decoder`] reads it.

use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Most ids in one batch retrieve.
pub const MAX_BATCH_IDS: usize = 1000;
/// The default largest blob sent inline (`max_part_bytes`): larger blobs
/// are answered [`PartStatus::TooLarge`] and fetched one per request.
pub const DEFAULT_MAX_PART_BYTES: u64 = 256 * 1024;
/// The largest `max_part_bytes` a primary accepts.
pub const MAX_PART_BYTES_LIMIT: u64 = 16 * 1024 * 1024;
/// Longest header line, in bytes (its `\n` included).
pub const MAX_HEADER_BYTES: usize = 4096;
/// The response's content type.
pub const CONTENT_TYPE: &str = "application/vnd.geohost.blob-batch.v1";

/// The JWT `data` claim of a batch retrieve: the type and exactly these ids,
/// in this order.
pub fn batch_claim(replicable_name: &str, ids: &[i64]) -> serde_json::Value {
    json!({ "replicable_name": replicable_name, "replicable_ids": ids })
}

/// How one record of a batch was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartStatus {
    /// The blob follows: `size` bytes.
    Ok,
    /// The record exists but its file does not (GitLab's `FILE_NOT_FOUND`).
    Missing,
    /// No such record.
    NotFound,
    /// The blob is larger than `max_part_bytes`: fetch it by the
    /// single-blob route.
    TooLarge,
    /// Any other failure of this record (its blob path, reading it).
    Error,
}

/// A part's header line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartHeader {
    pub id: i64,
    pub status: PartStatus,
    /// `ok`: the bytes that follow; `too_large`: the blob's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// `ok`: the primary's stored checksum of the record (hex, as the
    /// single route's `X-Geo-Checksum`), `null` before its first
    /// successful verification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// A failure's text (GitLab's, such as "… file not found").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `missing`: `FILE_NOT_FOUND`, as the single route's 404 body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geo_code: Option<String>,
}

impl PartHeader {
    /// An `ok` part's header.
    pub fn ok(id: i64, size: u64, checksum: Option<String>) -> PartHeader {
        PartHeader {
            id,
            status: PartStatus::Ok,
            size: Some(size),
            checksum,
            message: None,
            geo_code: None,
        }
    }

    /// A part without bytes.
    pub fn failed(id: i64, status: PartStatus, message: impl Into<String>) -> PartHeader {
        PartHeader {
            id,
            status,
            size: None,
            checksum: None,
            message: Some(message.into()),
            geo_code: (status == PartStatus::Missing).then(|| "FILE_NOT_FOUND".to_string()),
        }
    }

    /// A `too_large` part.
    pub fn too_large(id: i64, size: u64) -> PartHeader {
        PartHeader {
            id,
            status: PartStatus::TooLarge,
            size: Some(size),
            checksum: None,
            message: None,
            geo_code: None,
        }
    }
}

/// The end mark.
#[derive(Debug, Serialize, Deserialize)]
struct EndMark {
    end: bool,
    parts: usize,
}

/// Writes a batch body: [`Encoder::part`] for each id, then
/// [`Encoder::end`].
#[derive(Debug, Default)]
pub struct Encoder {
    parts: usize,
}

impl Encoder {
    /// The frame of one part: its header line, then `bytes` (`ok` only).
    pub fn part(&mut self, header: &PartHeader, bytes: Option<Bytes>) -> Vec<Bytes> {
        self.parts += 1;
        let mut line = serde_json::to_vec(header).expect("a part header serializes");
        line.push(b'\n');
        let mut frame = vec![Bytes::from(line)];
        frame.extend(bytes.filter(|b| !b.is_empty()));
        frame
    }

    /// The end mark.
    pub fn end(&self) -> Bytes {
        let mut line = serde_json::to_vec(&EndMark {
            end: true,
            parts: self.parts,
        })
        .expect("the end mark serializes");
        line.push(b'\n');
        Bytes::from(line)
    }
}

/// Why a batch body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the batch answer ended before its end mark")]
    Truncated,
    #[error("reading the batch answer: {0}")]
    Transport(String),
    #[error("malformed batch answer: {0}")]
    Malformed(String),
}

/// One part as read: its header and, for `ok`, its bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub header: PartHeader,
    pub bytes: Bytes,
}

/// Reads a batch body part by part, holding at most one part (at most
/// `max_part_bytes`) and one network chunk.
pub struct Decoder<S> {
    body: S,
    buffer: BytesMut,
    max_part_bytes: u64,
    parts: usize,
    ended: bool,
}

impl<S, E> Decoder<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    /// A reader of `body`, refusing parts larger than `max_part_bytes`
    /// (what the request asked for).
    pub fn new(body: S, max_part_bytes: u64) -> Decoder<S> {
        Decoder {
            body,
            buffer: BytesMut::new(),
            max_part_bytes,
            parts: 0,
            ended: false,
        }
    }

    /// More bytes into the buffer; `false` at the end of the body.
    async fn fill(&mut self) -> Result<bool, DecodeError> {
        match self.body.next().await {
            Some(Ok(chunk)) => {
                self.buffer.extend_from_slice(&chunk);
                Ok(true)
            }
            Some(Err(error)) => Err(DecodeError::Transport(error.to_string())),
            None => Ok(false),
        }
    }

    /// The next part; `None` after the end mark.
    pub async fn next_part(&mut self) -> Result<Option<Part>, DecodeError> {
        if self.ended {
            return Ok(None);
        }
        let line = loop {
            if let Some(at) = self.buffer.iter().position(|&b| b == b'\n') {
                if at + 1 > MAX_HEADER_BYTES {
                    return Err(DecodeError::Malformed("a header line is too long".into()));
                }
                let line = self.buffer.split_to(at + 1);
                break line;
            }
            if self.buffer.len() >= MAX_HEADER_BYTES {
                return Err(DecodeError::Malformed("a header line is too long".into()));
            }
            if !self.fill().await? {
                return Err(DecodeError::Truncated);
            }
        };
        let value: serde_json::Value = serde_json::from_slice(&line[..line.len() - 1])
            .map_err(|e| DecodeError::Malformed(format!("header line: {e}")))?;
        if value.get("end").is_some() {
            let end: EndMark = serde_json::from_value(value)
                .map_err(|e| DecodeError::Malformed(format!("end mark: {e}")))?;
            if !end.end || end.parts != self.parts {
                return Err(DecodeError::Malformed(format!(
                    "the end mark counts {} parts, {} were read",
                    end.parts, self.parts
                )));
            }
            self.ended = true;
            return Ok(None);
        }
        let header: PartHeader = serde_json::from_value(value)
            .map_err(|e| DecodeError::Malformed(format!("part header: {e}")))?;
        self.parts += 1;
        if header.status != PartStatus::Ok {
            return Ok(Some(Part {
                header,
                bytes: Bytes::new(),
            }));
        }
        let size = header
            .size
            .ok_or_else(|| DecodeError::Malformed(format!("part {} has no size", header.id)))?;
        if size > self.max_part_bytes {
            return Err(DecodeError::Malformed(format!(
                "part {} declares {size} bytes, more than the {} asked for",
                header.id, self.max_part_bytes
            )));
        }
        let size = size as usize;
        while self.buffer.len() < size {
            self.buffer.reserve(size - self.buffer.len());
            if !self.fill().await? {
                return Err(DecodeError::Truncated);
            }
        }
        let bytes = self.buffer.split_to(size).freeze();
        Ok(Some(Part { header, bytes }))
    }

    /// Whether the end mark was read.
    pub fn finished(&self) -> bool {
        self.ended && !self.buffer.has_remaining()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(chunks: Vec<Bytes>, split: usize) -> impl Stream<Item = Result<Bytes, String>> + Unpin {
        // Re-cut the body into `split`-byte chunks, so that headers and
        // bytes straddle chunk boundaries.
        let whole: Vec<u8> = chunks.iter().flat_map(|c| c.to_vec()).collect();
        let pieces: Vec<Result<Bytes, String>> = whole
            .chunks(split.max(1))
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures::stream::iter(pieces)
    }

    fn sample() -> (Vec<Bytes>, Vec<Part>) {
        let mut encoder = Encoder::default();
        let parts = vec![
            Part {
                header: PartHeader::ok(1, 5, Some("ab".into())),
                bytes: Bytes::from_static(b"hello"),
            },
            Part {
                header: PartHeader::failed(2, PartStatus::Missing, "t 2 file not found"),
                bytes: Bytes::new(),
            },
            Part {
                header: PartHeader::too_large(3, 1 << 30),
                bytes: Bytes::new(),
            },
            Part {
                header: PartHeader::ok(4, 0, None),
                bytes: Bytes::new(),
            },
        ];
        let mut out = Vec::new();
        for part in &parts {
            let bytes = (part.header.status == PartStatus::Ok).then(|| part.bytes.clone());
            out.extend(encoder.part(&part.header, bytes));
        }
        out.push(encoder.end());
        (out, parts)
    }

    #[tokio::test]
    async fn parts_round_trip_whatever_the_chunking() {
        let (frames, parts) = sample();
        for split in [1, 2, 7, 64, 100_000] {
            let mut decoder = Decoder::new(body(frames.clone(), split), 1024);
            let mut read = Vec::new();
            while let Some(part) = decoder.next_part().await.unwrap() {
                read.push(part);
            }
            assert_eq!(read, parts, "chunks of {split}");
            assert!(decoder.finished());
        }
        let missing = &parts[1].header;
        assert_eq!(missing.geo_code.as_deref(), Some("FILE_NOT_FOUND"));
    }

    #[tokio::test]
    async fn a_cut_body_is_truncated_and_a_bad_one_malformed() {
        let (frames, _) = sample();
        let whole: Vec<u8> = frames.iter().flat_map(|c| c.to_vec()).collect();
        // Cut inside the first part's bytes, and just before the end mark.
        let end_mark = frames.last().unwrap().len();
        for cut in [60, whole.len() - end_mark] {
            let body =
                futures::stream::iter(vec![Ok::<_, String>(Bytes::copy_from_slice(&whole[..cut]))]);
            let mut decoder = Decoder::new(body, 1024);
            let error = loop {
                match decoder.next_part().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("a cut body read to its end"),
                    Err(error) => break error,
                }
            };
            assert!(matches!(error, DecodeError::Truncated), "{cut}: {error}");
        }
        // A part larger than asked for is refused before its bytes are read.
        let mut decoder = Decoder::new(body(frames.clone(), 3), 4);
        assert!(matches!(
            decoder.next_part().await,
            Err(DecodeError::Malformed(_))
        ));
        // A header line without end, and garbage.
        let long = vec![Bytes::from(vec![b'x'; MAX_HEADER_BYTES + 10])];
        let mut decoder = Decoder::new(body(long, 100), 1024);
        assert!(matches!(
            decoder.next_part().await,
            Err(DecodeError::Malformed(_))
        ));
        let garbage = vec![Bytes::from_static(b"not json\n")];
        let mut decoder = Decoder::new(body(garbage, 100), 1024);
        assert!(matches!(
            decoder.next_part().await,
            Err(DecodeError::Malformed(_))
        ));
        // An end mark that counts other parts than were sent.
        let lying = vec![Bytes::from_static(b"{\"end\":true,\"parts\":2}\n")];
        let mut decoder = Decoder::new(body(lying, 100), 1024);
        assert!(matches!(
            decoder.next_part().await,
            Err(DecodeError::Malformed(_))
        ));
    }
}
