//! Serving HTTP on one accepted connection, with its limits: the one
//! server function the sidecar listeners and the gateway share.
//!
//! * request head size: hyper answers `431` (HTTP/1, then closes) and the
//!   h2 codec answers `431` on the stream (HTTP/2 `max_header_list_size`);
//! * header read timeout (slowloris): the timer starts at the first byte of
//!   an HTTP/1 request head and stops when the head is complete; when it
//!   fires the connection is cut with `408` (never on an idle keep-alive
//!   connection, where no request was started);
//! * HTTP/2 concurrent streams per connection;
//! * idle timeout: no request in flight for that long closes the connection
//!   gracefully (HTTP/1 at once, HTTP/2 with `GOAWAY`);
//! * drain: in-flight requests finish, then the connection closes.
//!
//! hyper's own HTTP/1 header timer is not used: it also runs while a
//! keep-alive connection waits for its next request, which would make the
//! header timeout an idle timeout and close clients' pooled connections
//! under them.

use crate::drain::Drain;
use crate::protocol::http::{H2_CONNECTION_WINDOW, H2_STREAM_WINDOW};
use crate::protocol::io::Io;
use crate::stack::{self, HttpSvc};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use sane_xds_proto::ConnectionLimits;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// The answer to a request head that did not arrive in time.
const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// No timestamp recorded.
const UNSET: u64 = u64::MAX;

/// How a connection is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framed {
    /// Let hyper detect HTTP/1.1 or HTTP/2.
    Auto,
    /// HTTP/2 only.
    Http2,
    /// HTTP/1.1 only (with upgrades).
    Http1,
}

/// The limits one connection is served with, and where what they cut is
/// counted.
#[derive(Clone, Debug)]
pub struct HttpLimits {
    /// Largest request head (HTTP/1) or header list (HTTP/2).
    pub max_header_bytes: usize,
    /// Time from the first byte of an HTTP/1 request head to its end.
    pub header_read_timeout: Duration,
    /// HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Time without a request in flight before the connection is closed.
    pub idle_timeout: Duration,
    /// Inbound: idle time of pooled HTTP/1.1 connections to the workload.
    pub upstream_idle_timeout: Duration,
    /// Counters of this connection's listener.
    pub counters: LimitCounters,
}

/// Metrics of the connection and HTTP limits, labelled by listener.
#[derive(Clone, Debug)]
pub struct LimitMetrics {
    connections_rejected: IntCounterVec,
    requests_rejected: IntCounterVec,
    idle_closed: IntCounterVec,
}

/// [`LimitMetrics`] resolved for one listener.
#[derive(Clone, Debug)]
pub struct LimitCounters {
    /// Connections closed at accept: the listener was at `max_connections`.
    pub connections_rejected: IntCounter,
    header_too_large: IntCounter,
    header_timeout: IntCounter,
    idle_closed: IntCounter,
}

/// What the connection's watcher and its I/O share.
#[derive(Debug)]
struct ConnState {
    started: Instant,
    /// Requests whose response has not ended.
    in_flight: AtomicUsize,
    /// When (ms after `started`) the current HTTP/1 head began, or [`UNSET`].
    head_since: AtomicU64,
    /// When (ms after `started`) the last request finished.
    idle_since: AtomicU64,
    /// The connection speaks HTTP/2 (no head timer).
    h2: AtomicBool,
    changed: Notify,
}

/// The connection's I/O, shared so a `408` can still be written after
/// hyper gave the connection up.
struct Watched<I> {
    io: Arc<Mutex<I>>,
    state: Arc<ConnState>,
    /// First bytes, to tell the HTTP/2 preface from an HTTP/1 request.
    prefix: Vec<u8>,
}

/// Keeps a request counted as in flight until dropped.
struct InFlight(Arc<ConnState>);

enum Ended {
    Closed(Result<(), Box<dyn std::error::Error + Send + Sync>>),
    HeadTimeout,
}

/// Serves HTTP on `io` with `svc` under `limits`, until the client closes,
/// a limit closes the connection, or the drain asks it to finish its
/// in-flight requests and close.
pub async fn serve_http<I: Io>(
    io: I,
    svc: HttpSvc,
    framed: Framed,
    limits: &HttpLimits,
    drain: Drain,
) {
    let state = Arc::new(ConnState::new(framed == Framed::Http2));
    let io = Arc::new(Mutex::new(io));
    let watched = Watched {
        io: io.clone(),
        state: state.clone(),
        prefix: Vec::with_capacity(4),
    };
    let ended = run(watched, svc, framed, limits, &state, &drain).await;
    let c = &limits.counters;
    match ended {
        Ended::Closed(Ok(())) => {}
        Ended::Closed(Err(e)) => {
            match e.downcast_ref::<hyper::Error>() {
                Some(h) if h.is_parse_too_large() => c.header_too_large.inc(),
                _ => {}
            }
            tracing::debug!(error = %e, "connection ended with an error");
        }
        Ended::HeadTimeout => {
            c.header_timeout.inc();
            tracing::debug!("request head not complete within the header read timeout; 408");
            // hyper's connection is gone; this is the only owner left.
            if let Ok(io) = Arc::try_unwrap(io) {
                let mut io = io.into_inner().unwrap_or_else(|p| p.into_inner());
                let write = async {
                    io.write_all(REQUEST_TIMEOUT).await?;
                    io.shutdown().await
                };
                let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
            }
        }
    }
}

/// Drives `conn` while watching the head and idle timers and the drain.
/// (A macro: the three connection types share no trait for
/// `graceful_shutdown`.)
macro_rules! watch {
    ($conn:expr, $limits:expr, $state:expr, $drain:expr) => {{
        let conn = $conn;
        tokio::pin!(conn);
        let mut closing = false;
        loop {
            let deadline = $state.deadline($limits, closing);
            let changed = $state.changed.notified();
            tokio::select! {
                res = conn.as_mut() => break Ended::Closed(res),
                _ = $drain.signaled(), if !closing => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                _ = changed => {}
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)),
                    if deadline.is_some() =>
                {
                    let now = Instant::now();
                    if $state.head_expired(now, $limits.header_read_timeout) {
                        break Ended::HeadTimeout;
                    }
                    if !closing && $state.idle_expired(now, $limits.idle_timeout) {
                        $limits.counters.idle_closed.inc();
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                }
            }
        }
    }};
}

async fn run<I: Io>(
    io: Watched<I>,
    svc: HttpSvc,
    framed: Framed,
    limits: &HttpLimits,
    state: &Arc<ConnState>,
    drain: &Drain,
) -> Ended {
    let conn_state = state.clone();
    let service = hyper::service::service_fn(move |req| {
        let svc = svc.clone();
        let guard = InFlight::start(&conn_state);
        async move {
            let rsp = stack::serve(svc, req).await;
            Ok::<_, Infallible>(rsp.map(|b| crate::body::guarded(b, guard)))
        }
    });
    let io = TokioIo::new(io);
    let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes.max(8192));
    b.http2()
        .timer(TokioTimer::new())
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_header_list_size(limits.max_header_bytes.min(u32::MAX as usize) as u32)
        .max_concurrent_streams(limits.max_concurrent_streams);
    match framed {
        Framed::Auto => {
            let conn = b.serve_connection_with_upgrades(io, service);
            watch!(conn, limits, state, drain)
        }
        Framed::Http2 => {
            let b = b.http2_only();
            let conn = b.serve_connection(io, service);
            watch!(conn, limits, state, drain)
        }
        Framed::Http1 => {
            let b = b.http1_only();
            let conn = b.serve_connection_with_upgrades(io, service);
            watch!(conn, limits, state, drain)
        }
    }
}

// === impl HttpLimits ===

impl HttpLimits {
    /// The limits of a listener configured with `cfg`.
    pub fn new(cfg: &ConnectionLimits, counters: LimitCounters) -> Self {
        Self {
            max_header_bytes: cfg.max_request_header_bytes() as usize,
            header_read_timeout: Duration::from_millis(cfg.header_read_timeout_ms()),
            max_concurrent_streams: cfg.max_concurrent_streams(),
            idle_timeout: Duration::from_millis(cfg.idle_timeout_ms()),
            upstream_idle_timeout: Duration::from_millis(cfg.upstream_idle_timeout_ms()),
            counters,
        }
    }
}

// === impl LimitMetrics ===

impl LimitMetrics {
    /// Registers the counters in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        Ok(Self {
            connections_rejected: counter(
                "sane_listener_connections_rejected_total",
                "Connections closed at accept because the listener was at its \
                 max_connections, by listener.",
                &["listener"],
            )?,
            requests_rejected: counter(
                "sane_http_requests_rejected_total",
                "Request heads cut off by a limit, by listener and reason \
                 (header_too_large: 431, header_timeout: 408).",
                &["listener", "reason"],
            )?,
            idle_closed: counter(
                "sane_http_idle_connections_closed_total",
                "Downstream connections closed by the idle timeout, by listener.",
                &["listener"],
            )?,
        })
    }

    /// The counters of `listener`.
    pub fn for_listener(&self, listener: &str) -> LimitCounters {
        LimitCounters {
            connections_rejected: self.connections_rejected.with_label_values(&[listener]),
            header_too_large: self
                .requests_rejected
                .with_label_values(&[listener, "header_too_large"]),
            header_timeout: self
                .requests_rejected
                .with_label_values(&[listener, "header_timeout"]),
            idle_closed: self.idle_closed.with_label_values(&[listener]),
        }
    }
}

// === impl ConnState ===

impl ConnState {
    fn new(h2: bool) -> Self {
        Self {
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            head_since: AtomicU64::new(UNSET),
            idle_since: AtomicU64::new(0),
            h2: AtomicBool::new(h2),
            changed: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        self.started + Duration::from_millis(ms)
    }

    /// Bytes arrived: with no request in flight they begin a request head.
    fn on_read(&self) {
        if self.h2.load(Ordering::Relaxed) || self.in_flight.load(Ordering::Acquire) > 0 {
            return;
        }
        let now = self.now_ms();
        if self
            .head_since
            .compare_exchange(UNSET, now, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            self.changed.notify_one();
        }
    }

    fn set_h2(&self) {
        self.h2.store(true, Ordering::Relaxed);
        self.head_since.store(UNSET, Ordering::Release);
        self.changed.notify_one();
    }

    /// The next time a timer may fire.
    fn deadline(&self, limits: &HttpLimits, closing: bool) -> Option<Instant> {
        let head = match self.head_since.load(Ordering::Acquire) {
            UNSET => None,
            since => Some(self.at(since) + limits.header_read_timeout),
        };
        let idle = (!closing && self.in_flight.load(Ordering::Acquire) == 0)
            .then(|| self.at(self.idle_since.load(Ordering::Acquire)) + limits.idle_timeout);
        match (head, idle) {
            (Some(h), Some(i)) => Some(h.min(i)),
            (h, i) => h.or(i),
        }
    }

    fn head_expired(&self, now: Instant, timeout: Duration) -> bool {
        match self.head_since.load(Ordering::Acquire) {
            UNSET => false,
            since => now >= self.at(since) + timeout,
        }
    }

    fn idle_expired(&self, now: Instant, timeout: Duration) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
            && now >= self.at(self.idle_since.load(Ordering::Acquire)) + timeout
    }
}

// === impl InFlight ===

impl InFlight {
    /// A request head is complete: its timer stops, the request counts.
    fn start(state: &Arc<ConnState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        state.head_since.store(UNSET, Ordering::Release);
        state.changed.notify_one();
        Self(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let s = &self.0;
        s.idle_since.store(s.now_ms(), Ordering::Release);
        if s.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            s.changed.notify_one();
        }
    }
}

// === impl Watched ===

impl<I: Io> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = {
            let mut io = self.io.lock().unwrap_or_else(|p| p.into_inner());
            Pin::new(&mut *io).poll_read(cx, buf)
        };
        let read = &buf.filled()[before..];
        if matches!(polled, Poll::Ready(Ok(()))) && !read.is_empty() {
            if self.prefix.len() < 4 {
                let take = (4 - self.prefix.len()).min(read.len());
                let first = read[..take].to_vec();
                self.prefix.extend_from_slice(&first);
                // "PRI " starts the HTTP/2 preface and no HTTP/1 request.
                if self.prefix == b"PRI " {
                    self.state.set_h2();
                }
            }
            self.state.on_read();
        }
        polled
    }
}

impl<I: Io> AsyncWrite for Watched<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut io = self.io.lock().unwrap_or_else(|p| p.into_inner());
        Pin::new(&mut *io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut io = self.io.lock().unwrap_or_else(|p| p.into_inner());
        Pin::new(&mut *io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        let io = self.io.lock().unwrap_or_else(|p| p.into_inner());
        io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut io = self.io.lock().unwrap_or_else(|p| p.into_inner());
        Pin::new(&mut *io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut io = self.io.lock().unwrap_or_else(|p| p.into_inner());
        Pin::new(&mut *io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ProxyError;
    use crate::Body;
    use http::{Request, Response};
    use tokio::io::{AsyncReadExt, DuplexStream};
    use tower::util::BoxCloneSyncService;

    fn ok() -> HttpSvc {
        BoxCloneSyncService::new(tower::service_fn(|_req: Request<Body>| async {
            Ok::<_, ProxyError>(Response::new(crate::body::full("ok")))
        }))
    }

    fn limits() -> (HttpLimits, LimitMetrics) {
        let metrics = LimitMetrics::register(&Registry::new()).unwrap();
        let cfg = ConnectionLimits {
            max_request_header_bytes: 8192,
            header_read_timeout: 5_000,
            idle_timeout: 60_000,
            ..Default::default()
        };
        (HttpLimits::new(&cfg, metrics.for_listener("l")), metrics)
    }

    fn serve(server: DuplexStream, svc: HttpSvc, framed: Framed) -> tokio::task::JoinHandle<()> {
        let (l, _) = limits();
        serve_with(server, svc, framed, l)
    }

    fn serve_with(
        server: DuplexStream,
        svc: HttpSvc,
        framed: Framed,
        l: HttpLimits,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move { serve_http(server, svc, framed, &l, Drain::default()).await })
    }

    async fn read_all(io: &mut DuplexStream) -> String {
        let mut out = Vec::new();
        let _ = io.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_request_head_gets_408_at_the_timeout() {
        let (l, metrics) = limits();
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let served = serve_with(server, ok(), Framed::Auto, l.clone());
        client.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        let started = Instant::now();
        // The client never finishes its head; the server answers and closes.
        let answer = read_all(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("connection: close"), "{answer}");
        assert!(started.elapsed() >= l.header_read_timeout);
        served.await.unwrap();
        let c = metrics.for_listener("l");
        assert_eq!(c.header_timeout.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_keep_alive_connection_outlives_the_header_timeout() {
        let (l, metrics) = limits();
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let served = serve_with(server, ok(), Framed::Http1, l.clone());
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 1024];
        let n = client.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        // Idle well past the header timeout: still open, a second request works.
        tokio::time::sleep(l.header_read_timeout * 3).await;
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let n = client.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
        // Past the idle timeout it is closed, without a 408.
        let started = Instant::now();
        let rest = read_all(&mut client).await;
        assert_eq!(rest, "", "closed silently");
        assert!(started.elapsed() >= l.idle_timeout);
        served.await.unwrap();
        let c = metrics.for_listener("l");
        assert_eq!((c.idle_closed.get(), c.header_timeout.get()), (1, 0));
    }

    #[tokio::test]
    async fn an_oversized_request_head_gets_431() {
        let (l, metrics) = limits();
        let (mut client, server) = tokio::io::duplex(256 * 1024);
        serve_with(server, ok(), Framed::Auto, l);
        let big = "x".repeat(20_000);
        let req = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\n");
        client.write_all(req.as_bytes()).await.unwrap();
        let answer = read_all(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
        let c = metrics.for_listener("l");
        assert_eq!(c.header_too_large.get(), 1);
    }

    #[tokio::test]
    async fn an_oversized_http2_header_list_gets_431() {
        let (client, server) = tokio::io::duplex(256 * 1024);
        serve(server, ok(), Framed::Auto);
        let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake::<_, Body>(TokioIo::new(client))
            .await
            .unwrap();
        tokio::spawn(conn);
        let small = Request::get("http://a/")
            .body(crate::body::empty())
            .unwrap();
        let rsp = sender.send_request(small).await.unwrap();
        assert_eq!(rsp.status(), 200);
        let big = Request::get("http://a/")
            .header("x-big", "x".repeat(20_000))
            .body(crate::body::empty())
            .unwrap();
        match sender.send_request(big).await {
            Ok(rsp) => assert_eq!(rsp.status(), 431),
            Err(e) => panic!("expected a 431 answer, got {e}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_complete_request_is_served() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        serve(server, ok(), Framed::Auto);
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = read_all(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    #[tokio::test]
    async fn an_error_answer_to_an_unread_body_says_connection_close() {
        let failing = BoxCloneSyncService::new(tower::service_fn(|_req: Request<Body>| async {
            Err::<Response<Body>, _>(ProxyError::NoHealthyUpstream {
                cluster: "c".into(),
            })
        }));
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        serve(server, failing, Framed::Http1);
        // The body is announced but not sent yet: the proxy answers first.
        client
            .write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nab")
            .await
            .unwrap();
        let answer = read_all(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("connection: close"), "{answer}");
    }

    #[tokio::test]
    async fn an_error_answer_after_the_whole_body_keeps_the_connection() {
        let failing = BoxCloneSyncService::new(tower::service_fn(|req: Request<Body>| async {
            let _ = http_body_util::BodyExt::collect(req.into_body()).await;
            Err::<Response<Body>, _>(ProxyError::NoHealthyUpstream {
                cluster: "c".into(),
            })
        }));
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        serve(server, failing, Framed::Http1);
        client
            .write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nab")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = client.read(&mut buf).await.unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(!answer.contains("connection: close"), "{answer}");
    }
}
