//! Listeners: bound at build time (so the real addresses are known before
//! serving), then an accept loop per listener that hands each connection to
//! [`crate::conn`] (or, on a transparent outbound listener, to
//! [`crate::transparent`]) in a task tracked by the drain.
//!
//! [`accept_loop`] is shared with the gateway's listeners: it stops at the
//! drain, backs off on accept errors, and enforces the listener's
//! `max_connections` by closing a connection beyond it at once (counted),
//! never queuing it, so existing connections keep their resources.

use crate::conn;
use crate::drain::Drain;
use crate::error::StartError;
use crate::protocol::server::{Framed, HttpLimits};
use crate::stack::{self, StackContext};
use crate::transparent::{self, InterceptMetrics};
use prometheus::IntCounter;
use sane_xds_proto::{ConnectionLimits, Direction, Listener, Protocol};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
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
        let limits = Arc::new(HttpLimits::new(&self.limits, counters));
        let (direction, protocol) = (self.direction, self.protocol);
        let transparent = self.transparent;
        let name = self.name.clone();
        let accept = AcceptLimits {
            max_connections: self.limits.max_connections() as usize,
            rejected,
        };
        accept_loop(&self.socket, &self.name, accept, &drain, |stream, peer| {
            let span = tracing::info_span!("conn", listener = %name, %peer);
            let ctx = ctx.clone();
            let d = drain.clone();
            let active = active.clone();
            let svc = outbound_http.clone();
            let name = name.clone();
            let intercepted = self.intercepted.clone();
            let limits = limits.clone();
            let conn = async move {
                active.inc();
                match (direction, protocol) {
                    (Direction::Outbound, _) if transparent => {
                        transparent::outbound(stream, &name, svc, &ctx, d, &limits, &intercepted)
                            .await
                    }
                    (Direction::Outbound, Protocol::Tcp) => {
                        conn::outbound_tcp(stream, &name, &ctx).await
                    }
                    (Direction::Outbound, _) => {
                        crate::protocol::server::serve_http(stream, svc, Framed::Auto, &limits, d)
                            .await
                    }
                    (Direction::Inbound, _) => {
                        let target = ctx.config.load().inbound.get(&name).cloned();
                        // Where a redirected plain client was going
                        // selects the workload port.
                        let original = transparent
                            .then(|| transparent::redirected_to(&stream))
                            .flatten()
                            .map(|dst| dst.port());
                        match target {
                            Some(t) => {
                                conn::inbound(stream, peer, t, original, ctx, d, limits).await
                            }
                            None => tracing::warn!("inbound listener has no target; closing"),
                        }
                    }
                }
                active.dec();
            };
            Some(conn.instrument(span))
        })
        .await;
    }
}

/// How many connections a listener keeps open, and where refusals count.
#[derive(Clone, Debug)]
pub struct AcceptLimits {
    /// Open connections at most; beyond it new ones are closed at accept.
    pub max_connections: usize,
    /// Counts connections closed because of `max_connections`.
    pub rejected: IntCounter,
}

/// Accepts on `socket` until the drain starts. Each accepted connection
/// within `limits` goes to `serve`, whose future (if it returns one) runs
/// in a task the drain tracks and holds the connection's slot until it
/// ends. A connection beyond `max_connections` is closed at once and
/// counted; accept errors (out of file descriptors) back off briefly
/// instead of spinning.
pub async fn accept_loop<F, Fut>(
    socket: &TcpListener,
    name: &str,
    limits: AcceptLimits,
    drain: &Drain,
    mut serve: F,
) where
    F: FnMut(TcpStream, SocketAddr) -> Option<Fut>,
    Fut: Future<Output = ()> + Send + 'static,
{
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
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            limits.rejected.inc();
            tracing::debug!(listener = %name, %peer, "listener at max_connections; closing");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        if let Some(fut) = serve(stream, peer) {
            drain.spawn(async move {
                fut.await;
                drop(slot);
            });
        }
    }
    tracing::info!(listener = %name, "stopped accepting");
}
