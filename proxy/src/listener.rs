//! Listeners: bound at build time (so the real addresses are known before
//! serving), then an accept loop per listener that hands each connection to
//! [`crate::conn`] (or, on a transparent outbound listener, to
//! [`crate::transparent`]) in a task tracked by the drain.
//!
//! [`accept_loop`] is shared with the gateway's listeners: it stops at the
//! drain, backs off on accept errors, and enforces the listener's
//! `max_connections` by closing a connection beyond it at once (counted),
//! never queuing it, so existing connections keep their resources. A sidecar
//! listener also tracks its connection pressure ([`Overload`]): when full,
//! the oldest connection that never sent a byte is closed to admit the new
//! one, and the timeouts shrink as the listener fills.

use crate::conn;
use crate::drain::Drain;
use crate::error::StartError;
use crate::protocol::overload::Overload;
use crate::protocol::server::{serve_http, Framed, HttpLimits};
use crate::stack::{self, HttpSvc, StackContext};
use crate::transparent::{self, InterceptMetrics};
use futures::future::Either;
use futures::FutureExt;
use prometheus::{IntCounter, IntGauge};
use sane_xds_proto::{ConnectionLimits, Direction, Listener, Protocol};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

/// A bound, not yet serving, listener.
#[derive(Debug)]
pub struct BoundListener {
    /// Listener name.
    pub name: String,
    /// The address actually bound.
    pub addr: SocketAddr,
    direction: Direction,
    protocol: Protocol,
    /// Receives connections redirected by iptables.
    transparent: bool,
    intercepted: InterceptMetrics,
    limits: ConnectionLimits,
    socket: TcpListener,
}

/// Binds a TCP socket (must run inside a tokio runtime).
pub fn bind_tcp(name: &str, addr: &str) -> Result<(TcpListener, SocketAddr), StartError> {
    let err = |source| StartError::Bind {
        name: name.to_string(),
        addr: addr.to_string(),
        source,
    };
    let parsed: SocketAddr = addr.parse().map_err(|_| {
        err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a socket address",
        ))
    })?;
    let std = std::net::TcpListener::bind(parsed).map_err(err)?;
    std.set_nonblocking(true).map_err(err)?;
    let local = std.local_addr().map_err(err)?;
    let socket = TcpListener::from_std(std).map_err(err)?;
    Ok((socket, local))
}

// === impl BoundListener ===

impl BoundListener {
    /// Binds `l`; `intercepted` counts what a transparent listener's
    /// connections turn out to be.
    pub fn bind(l: &Listener, intercepted: &InterceptMetrics) -> Result<Self, StartError> {
        let (socket, addr) = bind_tcp(&l.name, &l.address)?;
        Ok(Self {
            name: l.name.clone(),
            addr,
            direction: l.direction(),
            protocol: l.protocol(),
            transparent: l.transparent,
            intercepted: intercepted.clone(),
            limits: l.limits(),
            socket,
        })
    }

    /// Accepts connections until the drain starts, then closes the socket so
    /// new connections are refused. The listener's limits are the ones it
    /// was bound with.
    pub async fn serve(self, ctx: StackContext, drain: Drain) {
        let outbound_http = stack::outbound(ctx.clone());
        let active = ctx
            .metrics
            .connections_active
            .with_label_values(&[&self.name]);
        let counters = ctx.metrics.limits.for_listener(&self.name);
        let rejected = counters.connections_rejected.clone();
        let evicted = counters.silent_evicted.clone();
        let overload = Arc::new(Overload::new(
            self.limits.max_connections() as usize,
            self.limits.overload_threshold_percent(),
        ));
        let mut limits = HttpLimits::new(&self.limits, counters);
        limits.max_headers = ctx.config.load().bootstrap.http.max_request_headers() as usize;
        limits.overload = overload.clone();
        let limits = Arc::new(limits);
        let (direction, protocol) = (self.direction, self.protocol);
        let transparent = self.transparent;
        let name = self.name.clone();
        let intercepted = self.intercepted.clone();
        let accept = AcceptLimits {
            max_connections: self.limits.max_connections() as usize,
            rejected,
            overload: Some((overload, evicted)),
        };
        let d = drain.clone();
        accept_loop(
            &self.socket,
            &self.name,
            accept,
            &drain,
            move |stream, peer| {
                let span = tracing::info_span!("conn", listener = %name, %peer);
                let active = Active::new(&active);
                let d = d.clone();
                // The plain outbound HTTP connection (the common one) is served
                // inline and captures only what it needs; the other kinds are
                // boxed, so every connection's task is sized for its own kind,
                // not for the largest (TLS, detection, transparent) path.
                let conn = match (direction, protocol) {
                    (Direction::Outbound, Protocol::Http) if !transparent => {
                        let (svc, limits) = (outbound_http.clone(), limits.clone());
                        Either::Left(async move {
                            serve_http(stream, svc, Framed::Auto, &limits, d).await;
                        })
                    }
                    _ => Either::Right(Box::pin(serve_other(
                        stream,
                        peer,
                        Kind {
                            direction,
                            protocol,
                            transparent,
                        },
                        ctx.clone(),
                        name.clone(),
                        outbound_http.clone(),
                        intercepted.clone(),
                        limits.clone(),
                        d,
                    ))),
                };
                // A combinator, not an `async` block: a block awaiting a
                // captured future stores it twice in the task.
                let conn = conn.map(move |()| drop(active)).instrument(span);
                tracing::debug!(
                    future_bytes = std::mem::size_of_val(&conn),
                    "connection task"
                );
                Some(conn)
            },
        )
        .await;
    }
}

/// What a listener's connections carry.
#[derive(Clone, Copy, Debug)]
struct Kind {
    direction: Direction,
    protocol: Protocol,
    transparent: bool,
}

/// Serves a connection of every kind but plain outbound HTTP.
#[allow(clippy::too_many_arguments)]
async fn serve_other(
    stream: TcpStream,
    peer: SocketAddr,
    kind: Kind,
    ctx: StackContext,
    name: String,
    svc: HttpSvc,
    intercepted: InterceptMetrics,
    limits: Arc<HttpLimits>,
    d: Drain,
) {
    match (kind.direction, kind.protocol) {
        (Direction::Outbound, _) if kind.transparent => {
            transparent::outbound(stream, &name, svc, &ctx, d, &limits, &intercepted).await
        }
        (Direction::Outbound, Protocol::Tcp) => conn::outbound_tcp(stream, &name, &ctx).await,
        (Direction::Outbound, _) => serve_http(stream, svc, Framed::Auto, &limits, d).await,
        (Direction::Inbound, _) => {
            let target = ctx.config.load().inbound.get(&name).cloned();
            // Where a redirected plain client was going selects the
            // workload port.
            let original = kind
                .transparent
                .then(|| transparent::redirected_to(&stream))
                .flatten()
                .map(|dst| dst.port());
            match target {
                Some(t) => conn::inbound(stream, peer, t, original, ctx, d, limits).await,
                None => tracing::warn!("inbound listener has no target; closing"),
            }
        }
    }
}

/// Counts a connection in `sane_connections_active` while it lives.
struct Active(IntGauge);

impl Active {
    fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// How many connections a listener keeps open, and where refusals count.
#[derive(Clone, Debug)]
pub struct AcceptLimits {
    /// Open connections at most; beyond it new ones are closed at accept.
    pub max_connections: usize,
    /// Counts connections closed because of `max_connections`.
    pub rejected: IntCounter,
    /// The listener's pressure, and where evictions count: open connections
    /// are counted there, and when the listener is full the oldest silent
    /// connection is closed to admit the new one (`None`: refuse it).
    pub overload: Option<(Arc<Overload>, IntCounter)>,
}

/// A connection's place in its listener.
enum Slot {
    Held(OwnedSemaphorePermit),
    /// Admitted by evicting a silent connection, whose permit it takes
    /// once that one's task has ended.
    Freeing(Arc<Semaphore>),
}

/// Longest wait of an admitted connection for the slot of the one evicted
/// for it.
const EVICTION_WAIT: Duration = Duration::from_secs(1);

/// Runs one connection's future in its slot (counted as open, and while
/// silent evictable, when the listener tracks its pressure).
async fn run_conn(fut: impl Future<Output = ()>, slot: Slot, overload: Option<Arc<Overload>>) {
    let _slot = match slot {
        Slot::Held(permit) => permit,
        Slot::Freeing(slots) => {
            match tokio::time::timeout(EVICTION_WAIT, slots.acquire_owned()).await {
                Ok(Ok(permit)) => permit,
                _ => return,
            }
        }
    };
    match overload {
        Some(o) => {
            let _open = o.open();
            if !o.silent(fut).await {
                tracing::debug!("silent connection evicted");
            }
        }
        None => fut.await,
    }
}

/// Accepts on `socket` until the drain starts. Each accepted connection
/// within `limits` goes to the worker holding the fewest connections
/// ([`crate::workers`]), where `serve` runs; its future (if it returns one)
/// runs there, in a task the drain tracks, and holds the connection's slot
/// (and its count on that worker) until it ends. A
/// connection beyond `max_connections` is closed at once and counted
/// (unless a silent connection is evicted for it, see
/// [`AcceptLimits::overload`]); accept errors (out of file descriptors) back
/// off briefly instead of spinning.
pub async fn accept_loop<F, Fut>(
    socket: &TcpListener,
    name: &str,
    limits: AcceptLimits,
    drain: &Drain,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Option<Fut> + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let serve = Arc::new(serve);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let accepted = tokio::select! {
            _ = drain.signaled() => break,
            res = socket.accept() => res,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(listener = %name, error = %e, "accept failed");
                // allow-sleep: accept error backoff, not readiness waiting.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => Slot::Held(slot),
            // Full: a silent connection makes room, once its task has run
            // (it closes at its next poll, so the wait is short).
            Err(_) => match &limits.overload {
                Some((o, evicted)) if o.evict_oldest_silent() => {
                    evicted.inc();
                    tracing::debug!(listener = %name, %peer, "listener full; closed the oldest silent connection");
                    Slot::Freeing(slots.clone())
                }
                _ => {
                    limits.rejected.inc();
                    tracing::debug!(listener = %name, %peer, "listener at max_connections; closing");
                    drop(stream);
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let overload = limits.overload.as_ref().map(|(o, _)| o.clone());
        let (worker, held) = crate::workers::assign();
        let Some(worker) = worker else {
            if let Some(fut) = serve(stream, peer) {
                drain.spawn(async move {
                    run_conn(fut, slot, overload).await;
                    drop(held);
                });
            }
            continue;
        };
        // The socket moves to the worker's reactor: out of this runtime's
        // as a std socket, into the worker's there.
        let std = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(listener = %name, %peer, error = %e, "handing off a connection");
                continue;
            }
        };
        let serve = serve.clone();
        drain.spawn_on(
            async move {
                let fut = match TcpStream::from_std(std) {
                    Ok(stream) => serve(stream, peer),
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "registering a handed-off connection");
                        None
                    }
                };
                if let Some(fut) = fut {
                    run_conn(fut, slot, overload).await;
                }
                drop(held);
            },
            &worker,
        );
    }
    tracing::info!(listener = %name, "stopped accepting");
}
