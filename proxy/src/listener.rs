//! Listeners: bound at build time (so the real addresses are known before
//! serving), then an accept loop per listener that hands each connection to
//! [`crate::conn`] (or, on a transparent outbound listener, to
//! [`crate::transparent`]) in a task tracked by the drain.

use crate::conn::{self, Framed};
use crate::drain::Drain;
use crate::error::StartError;
use crate::stack::{self, StackContext};
use crate::transparent::{self, InterceptMetrics};
use sane_xds_proto::{Direction, Listener, Protocol};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
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
            socket,
        })
    }

    /// Accepts connections until the drain starts, then closes the socket so
    /// new connections are refused.
    pub async fn serve(self, ctx: StackContext, drain: Drain) {
        let outbound_http = stack::outbound(ctx.clone());
        let active = ctx
            .metrics
            .connections_active
            .with_label_values(&[&self.name]);
        loop {
            let accepted = tokio::select! {
                _ = drain.signaled() => break,
                res = self.socket.accept() => res,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and similar: back off briefly
                    // instead of spinning on a failing accept.
                    tracing::warn!(listener = %self.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let span = tracing::info_span!("conn", listener = %self.name, %peer);
            let ctx = ctx.clone();
            let d = drain.clone();
            let active = active.clone();
            let svc = outbound_http.clone();
            let name = self.name.clone();
            let (direction, protocol) = (self.direction, self.protocol);
            let transparent = self.transparent;
            let intercepted = self.intercepted.clone();
            drain.spawn(
                async move {
                    active.inc();
                    match (direction, protocol) {
                        (Direction::Outbound, _) if transparent => {
                            transparent::outbound(stream, &name, svc, &ctx, d, &intercepted).await
                        }
                        (Direction::Outbound, Protocol::Tcp) => {
                            conn::outbound_tcp(stream, &name, &ctx).await
                        }
                        (Direction::Outbound, _) => {
                            conn::serve_http(stream, svc, Framed::Auto, d).await
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
                                Some(t) => conn::inbound(stream, peer, t, original, ctx, d).await,
                                None => tracing::warn!("inbound listener has no target; closing"),
                            }
                        }
                    }
                    active.dec();
                }
                .instrument(span),
            );
        }
        tracing::info!(listener = %self.name, "stopped accepting");
    }
}
