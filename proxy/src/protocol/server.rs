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

use crate::drain::Drain;
use crate::protocol::http::{H2_CONNECTION_WINDOW, H2_STREAM_WINDOW};
use crate::protocol::io::Io;
use crate::stack::{self, HttpSvc};
use futures::task::AtomicWaker;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use sane_xds_proto::ConnectionLimits;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
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
    parked: IntCounterVec,
}

/// [`LimitMetrics`] resolved for one listener.
#[derive(Clone, Debug)]
pub struct LimitCounters {
    /// Connections closed at accept: the listener was at `max_connections`.
    pub connections_rejected: IntCounter,
    header_too_large: IntCounter,
    header_timeout: IntCounter,
    idle_closed: IntCounter,
    parked: IntCounter,
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
    /// The connection speaks HTTP/2 (no head timer, never parked).
    h2: AtomicBool,
    /// A request asked to switch protocols: never parked.
    upgrade: AtomicBool,
    /// The watcher asks the I/O to park the connection at the next read
    /// that would block.
    park: AtomicBool,
    /// The I/O answered hyper's read with the end of file that parks it.
    parked: AtomicBool,
    /// A flush completed after the last response ended (so hyper's write
    /// buffer is empty).
    flushed: AtomicBool,
    /// The state changed: the watcher sets its timer again.
    dirty: AtomicBool,
    /// The watcher is polling hyper's connection: a change made meanwhile
    /// (most are: they happen inside hyper's poll) is seen when that poll
    /// returns, without waking the task again.
    polling: AtomicBool,
    /// A wake-up the watcher asked for (the drain, its timer) came: they
    /// are polled only then, not on every wake-up of the connection task.
    fired: AtomicBool,
    /// The connection task, for changes made from other tasks (HTTP/2
    /// streams) and the watcher's own wake-ups ([`Wake`]).
    task: AtomicWaker,
}

/// The connection's I/O, shared so a `408` can still be written, and a
/// parked connection resumed, after hyper gave the connection up.
struct Watched<I> {
    io: Arc<Mutex<I>>,
    state: Arc<ConnState>,
    /// First bytes, to tell the HTTP/2 preface from an HTTP/1 request.
    prefix: [u8; 4],
    prefix_len: u8,
    /// The byte that resumed a parked connection, not yet given to hyper.
    first: Option<u8>,
    /// The last four bytes given to hyper.
    tail: [u8; 4],
}

/// Keeps a request counted as in flight until dropped.
struct InFlight(Arc<ConnState>);

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
    let state = Arc::new(ConnState::new(framed == Framed::Http2));
    let io = Arc::new(Mutex::new(io));
    let (mut framed, mut first) = (framed, None);
    let ended = loop {
        let watched = Watched {
            io: io.clone(),
            state: state.clone(),
            prefix: [0; 4],
            // A resumed connection is known to be HTTP/1.
            prefix_len: if first.is_some() { 4 } else { 0 },
            first,
            tail: [0; 4],
        };
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
    let idle_at = state.at(state.idle_since.load(Ordering::Acquire)) + limits.idle_timeout;
    tokio::select! {
        n = read => match n {
            1 => Woke::Byte(byte[0]),
            _ => Woke::Close,
        },
        _ = drain.signaled() => Woke::Close,
        _ = tokio::time::sleep_until(idle_at) => {
            limits.counters.idle_closed.inc();
            Woke::Close
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
            match watcher.turn(cx, drained.as_mut(), timer.as_mut()) {
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

async fn run<I: Io>(
    io: Watched<I>,
    svc: HttpSvc,
    framed: Framed,
    limits: &HttpLimits,
    state: &Arc<ConnState>,
    drain: &Drain,
) -> Ended {
    let conn_state = state.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let svc = svc.clone();
        if req.method() == http::Method::CONNECT
            || req.headers().contains_key(http::header::UPGRADE)
        {
            conn_state.upgrade.store(true, Ordering::Release);
        }
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
            idle_closed: self.idle_closed.with_label_values(&[listener]),
            parked: self.parked.with_label_values(&[listener]),
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
            upgrade: AtomicBool::new(false),
            park: AtomicBool::new(false),
            parked: AtomicBool::new(false),
            flushed: AtomicBool::new(false),
            dirty: AtomicBool::new(false),
            polling: AtomicBool::new(false),
            fired: AtomicBool::new(false),
            task: AtomicWaker::new(),
        }
    }

    /// The state changed in a way that may move the next deadline: the
    /// watcher looks at it after the current poll of hyper's connection,
    /// or, outside one, when the task wakes. (`SeqCst` with the watcher's
    /// `polling` and `dirty`: either it sees this change or this wakes it.)
    fn changed(&self) {
        self.dirty.store(true, Ordering::SeqCst);
        if !self.polling.load(Ordering::SeqCst) {
            self.task.wake();
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
            self.changed();
        }
    }

    fn set_h2(&self) {
        self.h2.store(true, Ordering::Relaxed);
        self.head_since.store(UNSET, Ordering::Release);
        self.changed();
    }

    /// The next time a timer may fire.
    fn deadline(&self, limits: &HttpLimits, closing: bool) -> Option<Instant> {
        let head = match self.head_since.load(Ordering::Acquire) {
            UNSET => None,
            since => Some(self.at(since) + limits.header_read_timeout),
        };
        let idle = (!closing && self.in_flight.load(Ordering::Acquire) == 0)
            .then(|| self.at(self.idle_since.load(Ordering::Acquire)) + limits.idle_timeout);
        let park = (!closing && head.is_none() && self.parkable())
            .then(|| self.at(self.idle_since.load(Ordering::Acquire)) + PARK_AFTER);
        [head, idle, park].into_iter().flatten().min()
    }

    /// Parking may be asked for: an HTTP/1 connection without a request in
    /// flight, not asked yet since its last request.
    fn parkable(&self) -> bool {
        !self.h2.load(Ordering::Relaxed)
            && !self.upgrade.load(Ordering::Acquire)
            && !self.park.load(Ordering::Acquire)
            && self.in_flight.load(Ordering::Acquire) == 0
    }

    fn park_due(&self, now: Instant) -> bool {
        self.parkable()
            && self.head_since.load(Ordering::Acquire) == UNSET
            && now >= self.at(self.idle_since.load(Ordering::Acquire)) + PARK_AFTER
    }

    /// A read would block: true if hyper may be handed an end of file that
    /// parks the connection (asked for, no request started or in flight,
    /// the last response flushed, the last bytes read a complete head).
    fn may_park(&self, tail: &[u8; 4]) -> bool {
        self.park.load(Ordering::Acquire)
            && !self.h2.load(Ordering::Relaxed)
            && !self.upgrade.load(Ordering::Acquire)
            && self.in_flight.load(Ordering::Acquire) == 0
            && self.head_since.load(Ordering::Acquire) == UNSET
            && self.flushed.load(Ordering::Acquire)
            && tail == b"\r\n\r\n"
    }

    /// A parked connection got its next byte: a fresh hyper connection
    /// serves it.
    fn resume(&self) {
        self.park.store(false, Ordering::Release);
        self.parked.store(false, Ordering::Release);
        self.flushed.store(false, Ordering::Release);
        self.on_read();
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

impl Wake for ConnState {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
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
            if fired && self.armed.is_some() && timer.as_mut().poll(&mut own).is_ready() {
                self.armed = None;
                dirty = true;
                let now = Instant::now();
                if s.head_expired(now, limits.header_read_timeout) {
                    return Turn::HeadTimeout;
                }
                if !self.closing && s.idle_expired(now, limits.idle_timeout) {
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

// === impl InFlight ===

impl InFlight {
    /// A request head is complete: its timer stops, the request counts.
    fn start(state: &Arc<ConnState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        state.head_since.store(UNSET, Ordering::Release);
        state.park.store(false, Ordering::Release);
        state.flushed.store(false, Ordering::Release);
        state.changed();
        Self(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let s = &self.0;
        s.idle_since.store(s.now_ms(), Ordering::Release);
        if s.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Only a flush after this point proves the response written.
            s.flushed.store(false, Ordering::Release);
            s.changed();
        }
    }
}

// === impl Watched ===

impl<I> Watched<I> {
    /// Bytes given to hyper: HTTP/2 detection, the head timer, the tail.
    fn on_bytes(&mut self, read: &[u8]) {
        let have = self.prefix_len as usize;
        if have < 4 {
            let take = (4 - have).min(read.len());
            self.prefix[have..have + take].copy_from_slice(&read[..take]);
            self.prefix_len += take as u8;
            // "PRI " starts the HTTP/2 preface and no HTTP/1 request.
            if self.prefix_len == 4 && &self.prefix == b"PRI " {
                self.state.set_h2();
            }
        }
        if read.len() >= 4 {
            self.tail.copy_from_slice(&read[read.len() - 4..]);
        } else {
            self.tail.rotate_left(read.len());
            self.tail[4 - read.len()..].copy_from_slice(read);
        }
        self.state.on_read();
    }
}

impl<I: Io> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = match self.first.take() {
            Some(b) if buf.remaining() > 0 => {
                buf.put_slice(&[b]);
                Poll::Ready(Ok(()))
            }
            first => {
                self.first = first;
                let mut io = self.io.lock().unwrap_or_else(|p| p.into_inner());
                Pin::new(&mut *io).poll_read(cx, buf)
            }
        };
        let read = &buf.filled()[before..];
        match polled {
            Poll::Ready(Ok(())) if !read.is_empty() => {
                self.on_bytes(read);
                polled
            }
            Poll::Pending if self.state.may_park(&self.tail) => {
                // An end of file: hyper ends its idle connection cleanly.
                self.state.parked.store(true, Ordering::Release);
                Poll::Ready(Ok(()))
            }
            polled => polled,
        }
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
        let flushed = {
            let mut io = self.io.lock().unwrap_or_else(|p| p.into_inner());
            Pin::new(&mut *io).poll_flush(cx)
        };
        // hyper flushes the I/O only once its own buffer is written out.
        if matches!(flushed, Poll::Ready(Ok(())))
            && self.state.in_flight.load(Ordering::Acquire) == 0
        {
            self.state.flushed.store(true, Ordering::Release);
        }
        flushed
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A parked connection stays open without hyper.
        if self.state.parked.load(Ordering::Acquire) {
            return Poll::Ready(Ok(()));
        }
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

    #[tokio::test(start_paused = true)]
    async fn an_idle_http1_connection_is_parked_and_resumed() {
        let (l, metrics) = limits();
        let c = metrics.for_listener("l");
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let served = serve_with(server, ok(), Framed::Auto, l.clone());
        let mut buf = vec![0u8; 1024];
        for parked in 1..=3 {
            client
                .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                .await
                .unwrap();
            let n = client.read(&mut buf).await.unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
            assert!(buf[..n].ends_with(b"ok"), "{:?}", &buf[..n]);
            tokio::time::sleep(PARK_AFTER * 2).await;
            assert_eq!(c.parked.get(), parked);
        }
        // A resumed connection still has the head timer: a head started
        // and not finished gets 408.
        client.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        let answer = read_all(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        served.await.unwrap();
        assert_eq!((c.header_timeout.get(), c.idle_closed.get()), (1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pipelined_partial_head_is_not_lost_to_parking() {
        let (l, metrics) = limits();
        let c = metrics.for_listener("l");
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        serve_with(server, ok(), Framed::Http1, l);
        // The first request and the start of the second in one write.
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHo")
            .await
            .unwrap();
        let mut buf = vec![0u8; 1024];
        let n = client.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
        // hyper holds the partial head: the connection is not parked.
        tokio::time::sleep(PARK_AFTER * 2).await;
        assert_eq!(c.parked.get(), 0);
        client.write_all(b"st: a\r\n\r\n").await.unwrap();
        let n = client.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
        tokio::time::sleep(PARK_AFTER * 2).await;
        assert_eq!(c.parked.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_parked_connection_closes_at_the_drain() {
        let (l, metrics) = limits();
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let drain = Drain::default();
        let d = drain.clone();
        let served = tokio::spawn(async move {
            serve_http(server, ok(), Framed::Auto, &l, d).await;
        });
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 1024];
        let n = client.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        tokio::time::sleep(PARK_AFTER * 2).await;
        assert_eq!(metrics.for_listener("l").parked.get(), 1);
        drain.start();
        assert_eq!(read_all(&mut client).await, "", "closed silently");
        served.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_lets_the_request_in_flight_finish_then_closes() {
        let (l, _) = limits();
        let (called_tx, called) = tokio::sync::oneshot::channel::<()>();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let gates = Arc::new(Mutex::new(Some((called_tx, released))));
        let svc = BoxCloneSyncService::new(tower::service_fn(move |_req: Request<Body>| {
            let gate = gates.lock().unwrap().take();
            async move {
                if let Some((called, released)) = gate {
                    let _ = called.send(());
                    let _ = released.await;
                }
                Ok::<_, ProxyError>(Response::new(crate::body::full("ok")))
            }
        }));
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let drain = Drain::default();
        let d = drain.clone();
        let served = tokio::spawn(async move {
            serve_http(server, svc, Framed::Http1, &l, d).await;
        });
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        called.await.unwrap();
        drain.start();
        release.send(()).unwrap();
        // The answer still comes, then the connection closes.
        let answer = read_all(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("ok"), "{answer}");
        served.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_stream_ending_in_its_own_task_starts_the_idle_timer() {
        let (l, metrics) = limits();
        // Answered after the idle timeout: the watcher's timer has fired
        // (and found a request in flight, so it is not set) before the
        // stream ends, in the stream's own task; the timer must be set
        // again from there.
        let slow = BoxCloneSyncService::new(tower::service_fn(|_req: Request<Body>| async {
            tokio::time::sleep(Duration::from_secs(90)).await;
            Ok::<_, ProxyError>(Response::new(crate::body::full("ok")))
        }));
        let (client, server) = tokio::io::duplex(64 * 1024);
        let served = serve_with(server, slow, Framed::Http2, l.clone());
        let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake::<_, Body>(TokioIo::new(client))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get("http://a/")
            .body(crate::body::empty())
            .unwrap();
        let rsp = sender.send_request(req).await.unwrap();
        let body = http_body_util::BodyExt::collect(rsp.into_body()).await;
        assert_eq!(body.unwrap().to_bytes(), "ok");
        let ended = Instant::now();
        tokio::time::timeout(l.idle_timeout * 2, served)
            .await
            .expect("closed by the idle timeout")
            .unwrap();
        assert!(ended.elapsed() >= l.idle_timeout - Duration::from_millis(1));
        assert_eq!(metrics.for_listener("l").idle_closed.get(), 1);
        drop(sender);
    }

    #[test]
    fn the_connection_future_is_small() {
        let (l, _) = limits();
        let (_client, server) = tokio::io::duplex(1024);
        let fut = serve_http(server, ok(), Framed::Auto, &l, Drain::default());
        let (_client, server) = tokio::io::duplex(1024);
        let (state, drain) = (Arc::new(ConnState::new(false)), Drain::default());
        let watched = Watched {
            io: Arc::new(Mutex::new(server)),
            state: state.clone(),
            prefix: [0; 4],
            prefix_len: 0,
            first: None,
            tail: [0; 4],
        };
        let run = run(watched, ok(), Framed::Auto, &l, &state, &drain);
        println!(
            "serve_http future: {} bytes; hyper's connection (boxed, freed while parked): {} bytes",
            std::mem::size_of_val(&fut),
            std::mem::size_of_val(&run)
        );
        // hyper's connection lives in its own allocation, not in every
        // connection's task.
        assert!(std::mem::size_of_val(&fut) < 1024);
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
