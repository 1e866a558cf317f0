//! Serving HTTP on one accepted connection, with its limits: the one
//! server function the sidecar listeners and the gateway share.
//!
//! * request head size: hyper answers `431` (HTTP/1, then closes) and the
//!   h2 codec answers `431` on the stream (HTTP/2 `max_header_list_size`);
//! * request header count: hyper's HTTP/1 parser stops at the limit
//!   (`431`); HTTP/2 requests are counted by [`conformance`], which also
//!   refuses two `Host` headers and (found by [`framing`]) a head with both
//!   `Content-Length` and `Transfer-Encoding`;
//! * every answer hyper makes on its own to a head it cannot parse (`400`,
//!   `414`, `431`) is replaced on the way out by the proxy's, which carries
//!   the response flag `DPE` and a reason like every proxy-made response
//!   (see `state::automatic_error`);
//! * header read timeout (slowloris): the timer starts at the first byte of
//!   an HTTP/1 request head and stops when the head is complete; when it
//!   fires the connection is cut with `408` (never on an idle keep-alive
//!   connection, where no request was started);
//! * first-byte timeout: a connection that sends nothing for that long after
//!   it was accepted is closed (the head timer only starts at a first byte);
//! * request body deadline ([`body_deadline`]): a body that stops, or
//!   dribbles slower than the minimum rate, fails with `408` (`SI`);
//! * HTTP/2 concurrent streams per connection;
//! * idle timeout: no request in flight for that long closes the connection
//!   gracefully (HTTP/1 at once, HTTP/2 with `GOAWAY`);
//! * connection pressure ([`crate::protocol::overload`]): the first-byte,
//!   head, body and idle timeouts shrink as the listener fills, and every
//!   connection sets its timer again when they do;
//! * drain: in-flight requests finish, then the connection closes.
//!
//! An HTTP/1 connection idle for [`PARK_AFTER`] is *parked*: hyper's
//! connection (its 8 KiB read and write buffers, parser state and the
//! service) is dropped and only the socket is kept, waiting for the next
//! byte with the idle timer and the drain still watched; that byte resumes
//! a fresh HTTP/1 connection. hyper is told to stop with an end of file on
//! a read that would block, and only when that is safe: no request in
//! flight or started, the response flushed, and the bytes read so far
//! ending with a complete request head (so hyper holds no unparsed bytes).
//! An idle keep-alive connection thus costs its socket and a small task
//! instead of ~20 KiB.
//!
//! hyper's own HTTP/1 header timer is not used: it also runs while a
//! keep-alive connection waits for its next request, which would make the
//! header timeout an idle timeout and close clients' pooled connections
//! under them.

mod body_deadline;
mod conformance;
mod framing;
mod http2;
mod state;

use self::body_deadline::{BodyLimits, BodyWatch, DeadlineBody};
use self::state::{ConnState, InFlight, Watched};
use crate::drain::Drain;
use crate::error::ProxyError;
use crate::protocol::http::{H2_CONNECTION_WINDOW, H2_STREAM_WINDOW};
use crate::protocol::io::Io;
use crate::protocol::overload::Overload;
use crate::svc::{serve, HttpSvc};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus::{IntCounter, IntCounterVec, Registry};
use sane_xds_proto::ConnectionLimits;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The answer to a request head that did not arrive in time.
const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// No timestamp recorded.
const UNSET: u64 = u64::MAX;

/// How long an HTTP/1 connection is idle before hyper's connection is
/// dropped and only the socket kept (see the module docs). Long enough that
/// a client sending requests back to back never pays for re-creating it.
pub const PARK_AFTER: Duration = Duration::from_millis(100);

/// How a connection is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framed {
    /// Let hyper detect HTTP/1.1 or HTTP/2.
    Auto,
    /// HTTP/2 only (the gateway's clients that chose it by ALPN).
    Http2,
    /// HTTP/2 only from a peer sidecar (its transport header said so):
    /// served with `h2` directly, every stream polled by the connection's
    /// task (`server/http2.rs`).
    PeerHttp2,
    /// HTTP/1.1 only (with upgrades).
    Http1,
}

/// The limits one connection is served with, and where what they cut is
/// counted.
#[derive(Clone, Debug)]
pub struct HttpLimits {
    /// Largest request head (HTTP/1) or header list (HTTP/2).
    pub max_header_bytes: usize,
    /// Most header fields in a request (`http.max_request_headers`).
    pub max_headers: usize,
    /// Time from the first byte of an HTTP/1 request head to its end.
    pub header_read_timeout: Duration,
    /// HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Time without a request in flight before the connection is closed.
    pub idle_timeout: Duration,
    /// Inbound: idle time of pooled HTTP/1.1 connections to the workload.
    pub upstream_idle_timeout: Duration,
    /// Time from the start of serving to the connection's first byte.
    pub first_byte_timeout: Duration,
    /// Inbound: time from accept to the end of the mutual TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// A request body's grace (see [`body_deadline`]).
    pub request_body_timeout: Duration,
    /// A request body's least average rate after its grace, bytes/s.
    pub request_body_min_rate: u64,
    /// The listener's connection pressure, which scales the timeouts
    /// ([`Overload::unlimited`] unless the listener sets its own).
    pub overload: Arc<Overload>,
    /// Counters of this connection's listener.
    pub counters: LimitCounters,
}

/// Metrics of the connection and HTTP limits, labelled by listener.
#[derive(Clone, Debug)]
pub struct LimitMetrics {
    connections_rejected: IntCounterVec,
    requests_rejected: IntCounterVec,
    idle_closed: IntCounterVec,
    parked: IntCounterVec,
    silent_closed: IntCounterVec,
}

/// [`LimitMetrics`] resolved for one listener.
#[derive(Clone, Debug)]
pub struct LimitCounters {
    /// Connections closed at accept: the listener was at `max_connections`.
    pub connections_rejected: IntCounter,
    header_too_large: IntCounter,
    header_timeout: IntCounter,
    malformed: IntCounter,
    idle_closed: IntCounter,
    parked: IntCounter,
    body_timeout: IntCounter,
    first_byte_timeout: IntCounter,
    /// Silent connections closed to admit a new one on a full listener.
    pub silent_evicted: IntCounter,
}

enum Ended {
    Closed(Result<(), Box<dyn std::error::Error + Send + Sync>>),
    HeadTimeout,
}

/// The drain and timer side of a connection being served: whether it is
/// closing, and the deadline its timer is set to.
///
/// The timer is set lazily: a change that moves the next deadline later
/// (a request starts, or ends, on a connection that was idle) leaves it
/// where it is; when it fires early the deadline is worked out again. So a
/// keep-alive connection under load sets its timer about once per
/// [`PARK_AFTER`], not three times per request.
struct Watcher<'a> {
    state: &'a Arc<ConnState>,
    limits: &'a HttpLimits,
    /// [`ConnState`] as a waker: marks `fired`, wakes the task.
    waker: Waker,
    /// The deadline the timer waits for, if it waits.
    armed: Option<Instant>,
    closing: bool,
}

/// What the connection needs after the watcher's turn.
enum Turn {
    /// Nothing: wait for the next wake-up.
    Wait,
    /// Poll hyper's connection again (parking was asked for).
    Repoll,
    /// Close gracefully (drain or idle timeout), then poll it again.
    Shutdown,
    /// The request head did not arrive in time.
    HeadTimeout,
}

/// What a parked connection waited for.
enum Woke {
    /// The next request's first byte.
    Byte(u8),
    /// The client closed, the idle timeout or the drain: close.
    Close,
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
    let h2 = matches!(framed, Framed::Http2 | Framed::PeerHttp2);
    let state = Arc::new(ConnState::new(h2));
    tracing::trace!(open = limits.overload.open_connections(), "serving");
    let io = Arc::new(Mutex::new(io));
    let (mut framed, mut first) = (framed, None);
    let ended = loop {
        let watched = Watched::new(io.clone(), state.clone(), first);
        // Boxed: while parked, hyper's connection state is freed, not kept
        // inline in this task.
        let ended = Box::pin(run(watched, svc.clone(), framed, limits, &state, &drain)).await;
        if !matches!(ended, Ended::Closed(Ok(()))) || !state.parked.load(Ordering::Acquire) {
            break ended;
        }
        limits.counters.parked.inc();
        tracing::trace!("idle HTTP/1 connection parked");
        match park(&io, &state, limits, &drain).await {
            Woke::Byte(b) => {
                state.resume();
                (framed, first) = (Framed::Http1, Some(b));
            }
            Woke::Close => {
                shutdown(io).await;
                return;
            }
        }
    };
    let c = &limits.counters;
    match ended {
        Ended::Closed(Ok(())) => {}
        Ended::Closed(Err(e)) => {
            match e.downcast_ref::<hyper::Error>() {
                Some(h) if h.is_parse_too_large() => c.header_too_large.inc(),
                Some(h) if h.is_parse() => c.malformed.inc(),
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

/// Waits, with hyper's connection dropped, for the next byte of a parked
/// connection, while the idle timeout and the drain still apply (either
/// closes it, as hyper closes an idle HTTP/1 connection).
async fn park<I: Io>(
    io: &Arc<Mutex<I>>,
    state: &ConnState,
    limits: &HttpLimits,
    drain: &Drain,
) -> Woke {
    let mut byte = [0u8; 1];
    let read = std::future::poll_fn(|cx| {
        let mut io = io.lock().unwrap_or_else(|p| p.into_inner());
        let mut buf = ReadBuf::new(&mut byte);
        match Pin::new(&mut *io).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => Poll::Ready(buf.filled().len()),
            Poll::Ready(Err(_)) => Poll::Ready(0),
            Poll::Pending => Poll::Pending,
        }
    });
    tokio::pin!(read);
    loop {
        // Set again whenever the listener's pressure changes the timeout.
        let changed = limits.overload.changed().notified();
        let idle_at = state.at(state.idle_since.load(Ordering::Acquire)) + limits.idle();
        tokio::select! {
            n = &mut read => return match n {
                1 => Woke::Byte(byte[0]),
                _ => Woke::Close,
            },
            _ = drain.signaled() => return Woke::Close,
            _ = tokio::time::sleep_until(idle_at) => {
                limits.counters.idle_closed.inc();
                return Woke::Close;
            }
            _ = changed => {}
        }
    }
}

/// Closes a connection hyper no longer holds (TLS: `close_notify`).
async fn shutdown<I: Io>(io: Arc<Mutex<I>>) {
    if let Ok(io) = Arc::try_unwrap(io) {
        let mut io = io.into_inner().unwrap_or_else(|p| p.into_inner());
        let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
    }
}

/// Drives `conn` while watching the head and idle timers and the drain.
/// (A macro: the three connection types share no trait for
/// `graceful_shutdown`.)
///
/// hyper's connection is polled on every wake-up of the task; the drain and
/// the timer only when their own waker ([`ConnState`]'s) fired, and the
/// timer is set again only when the state changed (see [`Watcher`]).
macro_rules! watch {
    ($conn:expr, $limits:expr, $state:expr, $drain:expr) => {{
        let conn = $conn;
        tokio::pin!(conn);
        // Made once, not per turn: each new one registers with (and,
        // dropped, unregisters from) the drain's waiter list.
        let drained = $drain.signaled();
        tokio::pin!(drained);
        let pressure = $limits.overload.changed().notified();
        tokio::pin!(pressure);
        let timer = tokio::time::sleep_until(Instant::now());
        tokio::pin!(timer);
        let mut watcher = Watcher::new($state, $limits);
        std::future::poll_fn(|cx| loop {
            $state.polling.store(true, Ordering::SeqCst);
            let polled = conn.as_mut().poll(cx);
            $state.polling.store(false, Ordering::SeqCst);
            if let Poll::Ready(res) = polled {
                return Poll::Ready(Ended::Closed(res));
            }
            match watcher.turn(cx, drained.as_mut(), pressure.as_mut(), timer.as_mut()) {
                Turn::Wait => return Poll::Pending,
                Turn::HeadTimeout => return Poll::Ready(Ended::HeadTimeout),
                Turn::Shutdown => conn.as_mut().graceful_shutdown(),
                // hyper's next read ends its connection if parking is safe.
                Turn::Repoll => {}
            }
        })
        .await
    }};
}

/// What serves one request on a connection: the connection's bookkeeping
/// around the stack (in-flight count, conformance, the body deadline).
#[derive(Clone)]
struct Handler {
    svc: HttpSvc,
    state: Arc<ConnState>,
    body_limits: BodyLimits,
    max_headers: usize,
    counters: LimitCounters,
}

async fn run<I: Io>(
    io: Watched<I>,
    svc: HttpSvc,
    framed: Framed,
    limits: &HttpLimits,
    state: &Arc<ConnState>,
    drain: &Drain,
) -> Ended {
    let handler = Handler {
        svc,
        state: state.clone(),
        body_limits: BodyLimits {
            grace: limits.request_body_timeout,
            min_rate: limits.request_body_min_rate.max(1),
            overload: limits.overload.clone(),
        },
        max_headers: limits.max_headers,
        counters: limits.counters.clone(),
    };
    let max_header_list = limits.max_header_bytes.min(u32::MAX as usize) as u32;
    if framed == Framed::PeerHttp2 {
        // A peer sidecar's connection: `h2` directly, no task per stream.
        let conn = http2::H2Server::new(
            io,
            move |req| handler.handle(req),
            max_header_list,
            limits.max_concurrent_streams,
        );
        return watch!(conn, limits, state, drain);
    }
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let rsp = handler.handle(req);
        async move { Ok::<_, Infallible>(rsp.await) }
    });
    let io = TokioIo::new(io);
    let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let mut h1 = b.http1();
    h1.timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes.max(8192));
    if let Some(max) = crate::protocol::http::h1_max_headers(limits.max_headers) {
        h1.max_headers(max);
    }
    b.http2()
        .timer(TokioTimer::new())
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_header_list_size(max_header_list)
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
        Framed::PeerHttp2 => unreachable!("served by h2 above"),
        Framed::Http1 => {
            let b = b.http1_only();
            let conn = b.serve_connection_with_upgrades(io, service);
            watch!(conn, limits, state, drain)
        }
    }
}

// === impl Handler ===

impl Handler {
    /// Serves `req` (its body read from hyper or an `h2` stream): counted
    /// in flight until its response body ends, refused if it breaks the
    /// conformance rules, its body under the progress deadline.
    fn handle<B>(&self, req: http::Request<B>) -> impl Future<Output = http::Response<crate::Body>>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
        B::Error: Into<crate::body::BoxError>,
    {
        let svc = self.svc.clone();
        let conn_state = &self.state;
        if req.method() == http::Method::CONNECT
            || req.headers().contains_key(http::header::UPGRADE)
        {
            conn_state.upgrade.store(true, Ordering::Release);
        }
        let ambiguous = req.version() < http::Version::HTTP_2 && conn_state.dispatch();
        let guard = InFlight::start(conn_state);
        let http1 = req.version() < http::Version::HTTP_2;
        let refused = conformance::check(&req, self.max_headers, ambiguous).err();
        if let Some(e) = &refused {
            match e {
                ProxyError::TooManyHeaders { .. } => self.counters.header_too_large.inc(),
                _ => self.counters.malformed.inc(),
            }
            tracing::warn!(error = %e, flags = e.response_flag(), "request refused");
        }
        // Only a request with a body gets a deadline (and its allocation).
        let (req, watch) = if refused.is_some() || http_body::Body::is_end_stream(req.body()) {
            (req.map(crate::body::boxed), None)
        } else {
            let watch = Arc::new(BodyWatch::default());
            let limits = self.body_limits.clone();
            let w = watch.clone();
            let req = req.map(|b| crate::body::boxed(DeadlineBody::new(b, limits, w)));
            (req, Some((watch, self.counters.body_timeout.clone())))
        };
        async move {
            let mut rsp = match refused {
                // The connection closes after it: the client and the
                // proxy may disagree on where the next request starts.
                Some(e) => {
                    let mut rsp = e.to_response();
                    if http1 {
                        rsp.headers_mut().insert(
                            http::header::CONNECTION,
                            http::HeaderValue::from_static("close"),
                        );
                    }
                    rsp
                }
                None => serve(svc, req).await,
            };
            if let Some((watch, counter)) = watch {
                watch.answered.store(true, Ordering::Release);
                if watch.timed_out.load(Ordering::Acquire) {
                    counter.inc();
                    tracing::debug!("request body too slow; 408");
                    rsp = body_timeout_response(http1);
                }
            }
            rsp.map(|b| crate::body::guarded(b, guard))
        }
    }
}

/// The answer to a request whose body missed its deadline (HTTP/1: the rest
/// of the body is unread, so the connection closes).
fn body_timeout_response(http1: bool) -> http::Response<crate::Body> {
    let mut rsp = ProxyError::RequestBodyTimeout.to_response();
    if http1 {
        rsp.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    rsp
}

// === impl HttpLimits ===

impl HttpLimits {
    /// The limits of a listener configured with `cfg` (timeouts never
    /// scaled: a listener that tracks its pressure sets
    /// [`HttpLimits::overload`]).
    pub fn new(cfg: &ConnectionLimits, counters: LimitCounters) -> Self {
        Self {
            max_header_bytes: cfg.max_request_header_bytes() as usize,
            max_headers: sane_xds_proto::DEFAULT_MAX_REQUEST_HEADERS as usize,
            header_read_timeout: Duration::from_millis(cfg.header_read_timeout_ms()),
            max_concurrent_streams: cfg.max_concurrent_streams(),
            idle_timeout: Duration::from_millis(cfg.idle_timeout_ms()),
            upstream_idle_timeout: Duration::from_millis(cfg.upstream_idle_timeout_ms()),
            first_byte_timeout: Duration::from_millis(cfg.first_byte_timeout_ms()),
            tls_handshake_timeout: Duration::from_millis(cfg.tls_handshake_timeout_ms()),
            request_body_timeout: Duration::from_millis(cfg.request_body_timeout_ms()),
            request_body_min_rate: cfg.request_body_min_rate(),
            overload: Arc::new(Overload::unlimited()),
            counters,
        }
    }

    /// The header read timeout under the listener's current pressure.
    pub fn header_timeout(&self) -> Duration {
        self.overload.scaled(self.header_read_timeout)
    }

    /// The idle timeout under the listener's current pressure.
    pub fn idle(&self) -> Duration {
        self.overload.scaled(self.idle_timeout)
    }

    /// The first-byte timeout under the listener's current pressure.
    pub fn first_byte(&self) -> Duration {
        self.overload.scaled(self.first_byte_timeout)
    }

    /// The TLS handshake timeout under the listener's current pressure.
    pub fn tls_handshake(&self) -> Duration {
        self.overload.scaled(self.tls_handshake_timeout)
    }
}

// === impl LimitMetrics ===

impl LimitMetrics {
    /// Registers the counters in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            crate::metric::register_counter_vec(registry, name, help, labels)
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
                "Requests cut off by a limit, by listener and reason \
                 (header_too_large: 431, header_timeout: 408, malformed: 400 for \
                 two Host headers or both Content-Length and Transfer-Encoding, \
                 body_timeout: 408, the request body too slow).",
                &["listener", "reason"],
            )?,
            idle_closed: counter(
                "sane_http_idle_connections_closed_total",
                "Downstream connections closed by the idle timeout, by listener.",
                &["listener"],
            )?,
            silent_closed: counter(
                "sane_listener_silent_connections_closed_total",
                "Connections closed before their first byte, by listener and \
                 reason (first_byte_timeout; evicted: closed to admit a new \
                 connection on a full listener).",
                &["listener", "reason"],
            )?,
            parked: counter(
                "sane_http_connections_parked_total",
                "Times an idle HTTP/1 downstream connection released its HTTP \
                 state and buffers until its next request, by listener.",
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
            malformed: self
                .requests_rejected
                .with_label_values(&[listener, "malformed"]),
            idle_closed: self.idle_closed.with_label_values(&[listener]),
            parked: self.parked.with_label_values(&[listener]),
            body_timeout: self
                .requests_rejected
                .with_label_values(&[listener, "body_timeout"]),
            first_byte_timeout: self
                .silent_closed
                .with_label_values(&[listener, "first_byte_timeout"]),
            silent_evicted: self.silent_closed.with_label_values(&[listener, "evicted"]),
        }
    }
}

// === impl Watcher ===

impl<'a> Watcher<'a> {
    /// Its first turn polls the drain and sets the timer.
    fn new(state: &'a Arc<ConnState>, limits: &'a HttpLimits) -> Self {
        state.fired.store(true, Ordering::Release);
        state.dirty.store(true, Ordering::Release);
        Self {
            state,
            limits,
            waker: Waker::from(state.clone()),
            armed: None,
            closing: false,
        }
    }

    /// After a poll of hyper's connection that left it pending: polls the
    /// drain and the timer if their waker fired, and sets the timer again if
    /// the state changed.
    fn turn(
        &mut self,
        cx: &mut Context<'_>,
        mut drained: Pin<&mut impl Future<Output = ()>>,
        mut pressure: Pin<&mut tokio::sync::futures::Notified<'a>>,
        mut timer: Pin<&mut Sleep>,
    ) -> Turn {
        let (s, limits) = (self.state, self.limits);
        // Before the flags are read: a wake-up after that reaches this task.
        s.task.register(cx.waker());
        let mut own = Context::from_waker(&self.waker);
        let mut turn = Turn::Wait;
        loop {
            let fired = s.fired.swap(false, Ordering::AcqRel);
            let mut dirty = s.dirty.swap(false, Ordering::SeqCst);
            if !fired && !dirty {
                return turn;
            }
            if fired && !self.closing && drained.as_mut().poll(&mut own).is_ready() {
                self.closing = true;
                dirty = true;
                turn = Turn::Shutdown;
            }
            // The listener's pressure changed the timeouts: check them now
            // and set the timer again (listening anew for the next change).
            if fired && pressure.as_mut().poll(&mut own).is_ready() {
                pressure.set(limits.overload.changed().notified());
                let _ = pressure.as_mut().poll(&mut own);
                if self.armed.is_some() {
                    timer.as_mut().reset(Instant::now());
                }
                dirty = true;
            }
            if fired && self.armed.is_some() && timer.as_mut().poll(&mut own).is_ready() {
                self.armed = None;
                dirty = true;
                let now = Instant::now();
                if s.head_expired(now, limits.header_timeout()) {
                    return Turn::HeadTimeout;
                }
                if !self.closing && s.first_byte_expired(now, limits.first_byte()) {
                    limits.counters.first_byte_timeout.inc();
                    self.closing = true;
                    turn = Turn::Shutdown;
                } else if !self.closing && s.idle_expired(now, limits.idle()) {
                    limits.counters.idle_closed.inc();
                    self.closing = true;
                    turn = Turn::Shutdown;
                } else if !self.closing && s.park_due(now) {
                    s.park.store(true, Ordering::Release);
                    if matches!(turn, Turn::Wait) {
                        turn = Turn::Repoll;
                    }
                }
            }
            if dirty {
                let next = s.deadline(limits, self.closing);
                if let Some(at) = next.filter(|at| self.armed.is_none_or(|armed| *at < armed)) {
                    timer.as_mut().reset(at);
                    self.armed = Some(at);
                    // Polled next round: it registers this waker, or is due.
                    s.fired.store(true, Ordering::Release);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
