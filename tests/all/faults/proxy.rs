//! A fault-injecting HTTP proxy between a secondary and its primary.
//!
//! The secondary's `[primary] url` points here; every request is forwarded
//! to the primary unless the dice (a seeded RNG) pick a fault for it:
//!
//! - `reset`: the connection is reset (`SO_LINGER` 0) as it is accepted;
//! - `5xx`: a 500, 502 or 503 answer, the primary never asked;
//! - `stall`: the answer waits (0.5–3 s) before its first byte, or halfway
//!   through its body;
//! - `truncate`: the answer's headers promise the whole body, and the
//!   connection is cut after a random prefix of it;
//! - `flip`: one byte of a blob download (`/api/v4/geo/retrieve/…`) is
//!   inverted. Feed pages (JSON) are never flipped: plain HTTP has no
//!   integrity of its own, a real deployment runs it over TLS; the blob
//!   itself is what the secondary must check.
//!
//! Every answer carries `Connection: close`, so each request comes on a new
//! connection and connection faults hit requests, not just the first.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// Per-request probabilities of each fault (checked in this order).
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    pub reset: f64,
    pub error_5xx: f64,
    pub stall: f64,
    pub truncate: f64,
    pub flip: f64,
}

impl Faults {
    pub const NONE: Faults = Faults {
        reset: 0.0,
        error_5xx: 0.0,
        stall: 0.0,
        truncate: 0.0,
        flip: 0.0,
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Error5xx,
    StallBefore,
    StallMidBody,
    Truncate,
    Flip,
}

struct Shared {
    upstream: String,
    client: reqwest::Client,
    faults: Mutex<Faults>,
    rng: Mutex<StdRng>,
    injected: Mutex<BTreeMap<&'static str, u64>>,
}

impl Shared {
    fn roll(&self, p: f64) -> bool {
        p > 0.0 && self.rng.lock().unwrap().random_bool(p.min(1.0))
    }

    fn below(&self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            self.rng.lock().unwrap().random_range(0..n)
        }
    }

    fn count(&self, what: &'static str) {
        *self.injected.lock().unwrap().entry(what).or_default() += 1;
    }

    fn pick(&self, is_blob: bool) -> Option<Fault> {
        let f = *self.faults.lock().unwrap();
        if self.roll(f.error_5xx) {
            return Some(Fault::Error5xx);
        }
        if self.roll(f.stall) {
            return Some(if self.roll(0.5) {
                Fault::StallBefore
            } else {
                Fault::StallMidBody
            });
        }
        if self.roll(f.truncate) {
            return Some(Fault::Truncate);
        }
        if is_blob && self.roll(f.flip) {
            return Some(Fault::Flip);
        }
        None
    }

    fn stall_time(&self) -> Duration {
        Duration::from_millis(500 + self.below(2500) as u64)
    }
}

/// A running proxy.
pub struct FaultProxy {
    pub url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (a base URL), faults off.
    pub async fn start(upstream: &str, seed: u64) -> FaultProxy {
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap(),
            faults: Mutex::new(Faults::NONE),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            injected: Mutex::new(BTreeMap::new()),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(shared.clone());
        let listener = ResettingListener {
            inner: listener,
            shared: shared.clone(),
        };
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FaultProxy { url, shared, task }
    }

    /// Sets the fault probabilities (`Faults::NONE`: heal).
    pub fn set(&self, faults: Faults) {
        *self.shared.faults.lock().unwrap() = faults;
    }

    /// How many of each fault were injected so far.
    pub fn injected(&self) -> BTreeMap<&'static str, u64> {
        self.shared.injected.lock().unwrap().clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepts connections, resetting some of them at once.
struct ResettingListener {
    inner: TcpListener,
    shared: Arc<Shared>,
}

impl axum::serve::Listener for ResettingListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            let (stream, address) = match self.inner.accept().await {
                Ok(accepted) => accepted,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let p = self.shared.faults.lock().unwrap().reset;
            if self.shared.roll(p) {
                let _ = stream.set_zero_linger();
                drop(stream);
                self.shared.count("reset");
                continue;
            }
            let _ = stream.set_nodelay(true);
            return (stream, address);
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

fn cut() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "fault proxy: cut")
}

async fn forward(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let fault = shared.pick(path.starts_with("/api/v4/geo/retrieve/"));
    if fault == Some(Fault::Error5xx) {
        shared.count("5xx");
        let status = [
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::BAD_GATEWAY,
            StatusCode::SERVICE_UNAVAILABLE,
        ][shared.below(3)];
        return closing((status, "fault proxy: injected error").into_response());
    }
    if fault == Some(Fault::StallBefore) {
        shared.count("stall");
        tokio::time::sleep(shared.stall_time()).await;
    }
    let (parts, body) = request.into_parts();
    let mut upstream = shared
        .client
        .request(parts.method.clone(), format!("{}{path}", shared.upstream));
    for (name, value) in &parts.headers {
        if name != header::HOST && name != header::CONNECTION {
            upstream = upstream.header(name, value);
        }
    }
    let body = match axum::body::to_bytes(body, 64 << 20).await {
        Ok(bytes) => bytes,
        Err(_) => return closing(StatusCode::BAD_REQUEST.into_response()),
    };
    let answer = match upstream.body(body).send().await {
        Ok(answer) => answer,
        Err(error) => {
            return closing(
                (StatusCode::BAD_GATEWAY, format!("fault proxy: {error}")).into_response(),
            );
        }
    };
    let status = answer.status();
    let headers = answer.headers().clone();
    let mut bytes = match answer.bytes().await {
        Ok(bytes) => bytes.to_vec(),
        Err(error) => {
            return closing(
                (StatusCode::BAD_GATEWAY, format!("fault proxy: {error}")).into_response(),
            );
        }
    };
    let length = bytes.len();
    let body = match fault {
        Some(Fault::Truncate) => {
            shared.count("truncate");
            let keep = shared.below(length);
            let prefix = bytes::Bytes::from(bytes[..keep].to_vec());
            Body::from_stream(futures::stream::iter([Ok(prefix), Err(cut())]))
        }
        Some(Fault::Flip) if length > 0 => {
            shared.count("flip");
            let at = shared.below(length);
            bytes[at] = !bytes[at];
            Body::from(bytes)
        }
        Some(Fault::StallMidBody) => {
            shared.count("stall");
            let half = length / 2;
            let pause = shared.stall_time();
            let second = bytes::Bytes::from(bytes[half..].to_vec());
            let first = bytes::Bytes::from(bytes[..half].to_vec());
            let stream = futures::stream::iter([Ok::<_, std::io::Error>(first)]).chain(
                futures::stream::once(async move {
                    tokio::time::sleep(pause).await;
                    Ok(second)
                }),
            );
            Body::from_stream(stream)
        }
        _ => Body::from(bytes),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    for (name, value) in &headers {
        if name != header::CONNECTION && name != header::TRANSFER_ENCODING {
            response.headers_mut().insert(name, value.clone());
        }
    }
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    closing(response)
}

fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}
