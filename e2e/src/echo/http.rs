//! The HTTP port: HTTP/1.1 and prior-knowledge h2c on one socket.
//!
//! Endpoints: `GET /` (and any unknown path) describes the request as JSON,
//! `POST /echo` streams the body back as it arrives, `POST /sha256` hashes the
//! body, `GET /bytes?n=N&chunk=K` streams a known pattern, `GET /ws` echoes
//! WebSocket messages, `GET /stats` counts requests (and those cancelled while
//! delayed). Control headers on any
//! request: `x-echo-delay`, `x-echo-status`, `x-echo-reset`,
//! `x-echo-fail-percent` (that share of requests, drawn at random, get 503),
//! `x-echo-response-headers` (that many extra response headers, at most
//! 10000). The JSON description carries the path and the query as received.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, BodyStream, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type EchoBody = UnsyncBoxBody<Bytes, BoxError>;

/// Path of the request counter; requests to it are not counted.
pub const STATS_PATH: &str = "/stats";
const NAME_HEADER: HeaderName = HeaderName::from_static("x-echo-name");
const DELAY_HEADER: &str = "x-echo-delay";
const STATUS_HEADER: &str = "x-echo-status";
const RESET_HEADER: &str = "x-echo-reset";
const FAIL_PERCENT_HEADER: &str = "x-echo-fail-percent";
const RESPONSE_HEADERS_HEADER: &str = "x-echo-response-headers";
const DEFAULT_CHUNK: usize = 64 * 1024;

/// Shared by every connection of the HTTP port.
#[derive(Debug)]
pub(super) struct EchoState {
    name: Arc<str>,
    name_header: HeaderValue,
    requests: AtomicU64,
    /// Requests dropped (the client or a proxy gave up) before their
    /// `x-echo-delay` ended.
    cancelled: AtomicU64,
}

/// Counts a cancellation in `EchoState::cancelled` when dropped before
/// [`CancelWatch::finish`]: hyper drops a request's future when its
/// connection closes or its HTTP/2 stream is reset.
#[derive(Debug)]
struct CancelWatch<'a> {
    cancelled: Option<&'a AtomicU64>,
}

/// What the control headers ask for.
#[derive(Debug, Default)]
struct Controls {
    delay: Option<Duration>,
    status: Option<StatusCode>,
    reset: bool,
    /// Share (0-100) of requests answered 503, each drawn independently.
    fail_percent: Option<f64>,
    /// Extra response headers `x-echo-h<i>: <i>` to add.
    response_headers: usize,
}

/// Returned to hyper to abort the connection (HTTP/1) or reset the stream
/// (HTTP/2) without a response, as `x-echo-reset` asks.
#[derive(Debug)]
struct ResetRequested;

/// Byte `i` of the `/bytes` pattern: `(i % 251) as u8`. A prime period makes a
/// dropped, duplicated or reordered chunk visible in a checksum.
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

/// Accepts connections until the task is aborted.
pub(super) async fn serve(listener: TcpListener, state: Arc<EchoState>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "http accept failed");
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(state.clone(), req));
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "http connection ended with an error");
            }
        });
    }
}

async fn handle(
    state: Arc<EchoState>,
    req: Request<Incoming>,
) -> Result<Response<EchoBody>, ResetRequested> {
    if req.uri().path() != STATS_PATH {
        state.requests.fetch_add(1, Ordering::Relaxed);
    }
    let mut extra = 0;
    let mut rsp = match Controls::parse(req.headers()) {
        Err(msg) => text(StatusCode::BAD_REQUEST, msg),
        Ok(controls) => {
            extra = controls.response_headers;
            // Dropping this future (the client went away) cancels the delay.
            if let Some(delay) = controls.delay {
                let watch = CancelWatch {
                    cancelled: Some(&state.cancelled),
                };
                tokio::time::sleep(delay).await; // allow-sleep: the delay the client asked for (x-echo-delay)
                watch.finish();
            }
            if controls.reset {
                return Err(ResetRequested);
            }
            let fail = controls
                .fail_percent
                .is_some_and(|p| rand::random::<f64>() * 100.0 < p);
            let status = controls
                .status
                .or(fail.then_some(StatusCode::SERVICE_UNAVAILABLE));
            match status {
                Some(status) => text(
                    status,
                    format!("status {} from {}", status.as_u16(), state.name),
                ),
                None => route(&state, req).await,
            }
        }
    };
    rsp.headers_mut()
        .insert(NAME_HEADER, state.name_header.clone());
    for i in 0..extra {
        let name = HeaderName::try_from(format!("x-echo-h{i}")).expect("a valid name");
        rsp.headers_mut().insert(name, HeaderValue::from(i));
    }
    Ok(rsp)
}

async fn route(state: &EchoState, req: Request<Incoming>) -> Response<EchoBody> {
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/echo") => echo_body(req),
        (&Method::POST, "/sha256") => sha256(req).await,
        (&Method::GET, "/bytes") => pattern(req.uri().query().unwrap_or("")),
        (&Method::GET, STATS_PATH) => json(
            StatusCode::OK,
            &serde_json::json!({
                "requests": state.requests.load(Ordering::Relaxed),
                "cancelled": state.cancelled.load(Ordering::Relaxed),
            }),
        ),
        (&Method::GET, "/ws") if is_websocket_upgrade(req.headers()) => websocket(req),
        _ => describe(state, &req),
    }
}

/// `GET /`: the request as the app saw it.
fn describe(state: &EchoState, req: &Request<Incoming>) -> Response<EchoBody> {
    let host = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default();
    let mut headers = BTreeMap::<String, String>::new();
    for (name, value) in req.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_string())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    json(
        StatusCode::OK,
        &serde_json::json!({
            "name": &*state.name,
            "method": req.method().as_str(),
            "path": req.uri().path(),
            "query": req.uri().query(),
            "version": format!("{:?}", req.version()),
            "host": host,
            "headers": headers,
        }),
    )
}

/// `POST /echo`: the request body becomes the response body, frame by frame.
fn echo_body(req: Request<Incoming>) -> Response<EchoBody> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    // Only data is echoed: an HTTP/1 response may carry trailers only when
    // the client asked with `TE: trailers`, so request trailers are dropped.
    let frames = BodyStream::new(req.into_body()).filter_map(|frame| async move {
        match frame {
            Ok(frame) => frame.into_data().ok().map(|d| Ok(Frame::data(d))),
            Err(e) => Some(Err(BoxError::from(e))),
        }
    });
    let mut rsp = Response::new(StreamBody::new(frames).boxed_unsync());
    rsp.headers_mut().insert(header::CONTENT_TYPE, content_type);
    rsp
}

/// `POST /sha256`: `{"bytes": N, "sha256": "hex"}` of the whole body.
async fn sha256(req: Request<Incoming>) -> Response<EchoBody> {
    let mut body = req.into_body();
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    hasher.update(data);
                    bytes += data.len() as u64;
                }
            }
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("reading the body failed after {bytes} bytes: {e}"),
                )
            }
        }
    }
    json(
        StatusCode::OK,
        &serde_json::json!({ "bytes": bytes, "sha256": hex(&hasher.finalize()) }),
    )
}

/// `GET /bytes?n=N&chunk=K`: N pattern bytes in chunks of K.
fn pattern(query: &str) -> Response<EchoBody> {
    let mut n = None;
    let mut chunk = DEFAULT_CHUNK;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "n" => match value.parse::<u64>() {
                Ok(v) => n = Some(v),
                Err(_) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!("n: {value:?} is not a number"),
                    )
                }
            },
            "chunk" => match value.parse::<usize>() {
                Ok(v) if v > 0 => chunk = v,
                _ => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!("chunk: {value:?} is not a positive number"),
                    )
                }
            },
            _ => {}
        }
    }
    let Some(n) = n else {
        return text(StatusCode::BAD_REQUEST, "n: missing (GET /bytes?n=N)");
    };
    let chunks = futures::stream::unfold(0u64, move |offset| async move {
        if offset >= n {
            return None;
        }
        let len = (n - offset).min(chunk as u64);
        let data: Bytes = (offset..offset + len).map(pattern_byte).collect();
        Some((Ok::<_, BoxError>(Frame::data(data)), offset + len))
    });
    let mut rsp = Response::new(StreamBody::new(chunks).boxed_unsync());
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    rsp
}

/// `GET /ws`: completes the handshake, then echoes on a task of its own.
fn websocket(req: Request<Incoming>) -> Response<EchoBody> {
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) else {
        return text(StatusCode::BAD_REQUEST, "sec-websocket-key: missing");
    };
    let accept = derive_accept_key(key.as_bytes());
    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade failed");
                return;
            }
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        // Ping, pong and close replies are handled inside tungstenite; the
        // stream ends once the close handshake is done.
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(msg) if msg.is_text() || msg.is_binary() => {
                    if let Err(e) = ws.send(msg).await {
                        tracing::debug!(error = %e, "websocket send failed");
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "websocket receive failed");
                    return;
                }
            }
        }
    });
    let mut rsp = Response::new(empty());
    *rsp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = rsp.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    rsp
}

fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<EchoBody> {
    let mut rsp = Response::new(full(body.into()));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    rsp
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<EchoBody> {
    let mut rsp = Response::new(full(value.to_string()));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    rsp
}

fn full(body: impl Into<Bytes>) -> EchoBody {
    Full::new(body.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

fn empty() -> EchoBody {
    full(Bytes::new())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// === impl EchoState ===

impl EchoState {
    pub(super) fn new(name: Arc<str>) -> Self {
        let name_header =
            HeaderValue::from_str(&name).unwrap_or(HeaderValue::from_static("invalid-name"));
        Self {
            name,
            name_header,
            requests: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
        }
    }
}

// === impl CancelWatch ===

impl CancelWatch<'_> {
    /// The request ran to the end: nothing to count.
    fn finish(mut self) {
        self.cancelled = None;
    }
}

impl Drop for CancelWatch<'_> {
    fn drop(&mut self) {
        if let Some(cancelled) = self.cancelled {
            cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }
}

// === impl Controls ===

impl Controls {
    /// Reads the control headers; the error names the bad header and value.
    fn parse(headers: &HeaderMap) -> Result<Self, String> {
        let get = |name: &str| -> Result<Option<&str>, String> {
            match headers.get(name) {
                None => Ok(None),
                Some(v) => v
                    .to_str()
                    .map(|s| Some(s.trim()))
                    .map_err(|_| format!("{name}: not valid text")),
            }
        };
        let mut controls = Controls::default();
        if let Some(v) = get(DELAY_HEADER)? {
            let delay = match v.parse::<u64>() {
                Ok(ms) => Duration::from_millis(ms),
                Err(_) => humantime::parse_duration(v)
                    .map_err(|e| format!("{DELAY_HEADER}: {v:?} is not a duration: {e}"))?,
            };
            controls.delay = Some(delay);
        }
        if let Some(v) = get(STATUS_HEADER)? {
            let status = v
                .parse::<u16>()
                .ok()
                .and_then(|s| StatusCode::from_u16(s).ok())
                .ok_or_else(|| format!("{STATUS_HEADER}: {v:?} is not an HTTP status"))?;
            controls.status = Some(status);
        }
        if let Some(v) = get(RESET_HEADER)? {
            controls.reset = !matches!(v, "" | "0" | "false");
        }
        if let Some(v) = get(FAIL_PERCENT_HEADER)? {
            let p = v
                .parse::<f64>()
                .ok()
                .filter(|p| (0.0..=100.0).contains(p))
                .ok_or_else(|| {
                    format!("{FAIL_PERCENT_HEADER}: {v:?} is not a percentage (0-100)")
                })?;
            controls.fail_percent = Some(p);
        }
        if let Some(v) = get(RESPONSE_HEADERS_HEADER)? {
            controls.response_headers = v
                .parse::<usize>()
                .ok()
                .filter(|n| *n <= 10_000)
                .ok_or_else(|| {
                    format!("{RESPONSE_HEADERS_HEADER}: {v:?} is not a count (0-10000)")
                })?;
        }
        Ok(controls)
    }
}

// === impl ResetRequested ===

impl std::fmt::Display for ResetRequested {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection reset as asked by x-echo-reset")
    }
}

impl std::error::Error for ResetRequested {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_parse_durations_and_statuses() {
        let mut h = HeaderMap::new();
        h.insert(DELAY_HEADER, HeaderValue::from_static("250ms"));
        h.insert(STATUS_HEADER, HeaderValue::from_static("503"));
        let c = Controls::parse(&h).unwrap();
        assert_eq!(c.delay, Some(Duration::from_millis(250)));
        assert_eq!(c.status, Some(StatusCode::SERVICE_UNAVAILABLE));
        assert!(!c.reset);

        h.insert(DELAY_HEADER, HeaderValue::from_static("40"));
        h.insert(RESET_HEADER, HeaderValue::from_static("1"));
        let c = Controls::parse(&h).unwrap();
        assert_eq!(c.delay, Some(Duration::from_millis(40)));
        assert!(c.reset);

        h.insert(STATUS_HEADER, HeaderValue::from_static("abc"));
        let err = Controls::parse(&h).unwrap_err();
        assert!(err.contains("x-echo-status: \"abc\""), "{err}");
    }

    #[test]
    fn pattern_has_a_prime_period() {
        assert_eq!(pattern_byte(0), 0);
        assert_eq!(pattern_byte(250), 250);
        assert_eq!(pattern_byte(251), 0);
    }
}
