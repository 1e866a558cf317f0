//! Public listeners: accept (per-IP limit), TLS by SNI (handshake bounded by
//! the header read timeout), then HTTP/2 or HTTP/1.1 as ALPN decided, with
//! the request head size and read time limited, through the gateway stack.
//!
//! The gateway stack, outermost first (see [`super::edge`] for why):
//! forwarded headers → rate limit → body limit → path normalization (so
//! the gateway's path routes see the normalized path) → [`GatewayRoute`] →
//! the sidecar's outbound stack. Limits are read from the table current when
//! the connection was accepted; routes from the one current per request.

use crate::drain::Drain;
use crate::error::StartError;
use crate::gateway::certs::ALPN;
use crate::gateway::edge::{BodyLimitLayer, ConnLimiter, ForwardedLayer, RateLimitLayer};
use crate::gateway::route::{ConnInfo, GatewayRoute};
use crate::gateway::table::GatewayTable;
use crate::gateway::GatewayMetrics;
use crate::listener::{accept_loop, bind_tcp, AcceptLimits};
use crate::protocol::server::{serve_http, Framed, HttpLimits, LimitCounters, LimitMetrics};
use crate::stack::{HttpSvc, PathStage};
use arc_swap::ArcSwap;
use sane_xds_proto::{ConnectionLimits, GatewayListener};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::LazyConfigAcceptor;
use tower::util::BoxCloneSyncService;
use tower::ServiceBuilder;
use tracing::Instrument;

/// What every gateway listener shares.
#[derive(Clone, Debug)]
pub struct Shared {
    /// The current compiled gateway.
    pub table: Arc<ArcSwap<GatewayTable>>,
    /// The sidecar outbound stack requests continue into.
    pub outbound: HttpSvc,
    /// Open connections per client IP.
    pub conn_limit: Arc<ConnLimiter>,
    /// Metrics.
    pub metrics: GatewayMetrics,
    /// Where connection and request-head limits count what they cut.
    pub limit_metrics: LimitMetrics,
    /// Bound port of the first TLS listener (redirect target).
    pub https_port: Option<u16>,
    /// The proxy's config (`http`: path normalization, header limits).
    pub config: Arc<crate::snapshot::ConfigStore>,
}

/// A bound gateway listener.
#[derive(Debug)]
pub struct BoundGatewayListener {
    /// Listener name.
    pub name: String,
    /// The address actually bound.
    pub addr: SocketAddr,
    tls: bool,
    redirect_port: u16,
    socket: TcpListener,
    spec: GatewayListener,
}

// === impl BoundGatewayListener ===

impl BoundGatewayListener {
    /// Binds `l`.
    pub fn bind(l: &GatewayListener) -> Result<Self, StartError> {
        let (socket, addr) = bind_tcp(&l.name, &l.address)?;
        Ok(Self {
            name: l.name.clone(),
            addr,
            tls: l.tls,
            redirect_port: l.redirect_port as u16,
            socket,
            spec: l.clone(),
        })
    }

    /// The configuration it was bound from.
    pub fn spec(&self) -> GatewayListener {
        self.spec.clone()
    }

    /// True if this listener terminates TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Accepts until the drain starts (the sidecar's accept loop: at most
    /// the default `max_connections` per listener, then the per-IP limit).
    pub async fn serve(self, shared: Shared, drain: Drain) {
        let redirect_port = match self.redirect_port {
            0 => shared.https_port,
            p => Some(p),
        };
        let active = shared.metrics.connections.with_label_values(&[&self.name]);
        let counters = shared.limit_metrics.for_listener(&self.name);
        let accept = AcceptLimits {
            max_connections: ConnectionLimits::default().max_connections() as usize,
            rejected: counters.connections_rejected.clone(),
            overload: None,
        };
        let (name, tls) = (self.name.clone(), self.tls);
        let d = drain.clone();
        accept_loop(
            &self.socket,
            &self.name,
            accept,
            &drain,
            move |stream, peer| {
                let Some(guard) = shared.conn_limit.try_acquire(peer.ip()) else {
                    shared.metrics.reject("connection_limit");
                    tracing::debug!(listener = %name, %peer, "per-IP connection limit; closing");
                    return None;
                };
                let conn = ConnInfo {
                    listener: name.clone(),
                    tls,
                    sni_host: None,
                    redirect_port,
                };
                let shared = shared.clone();
                let d = d.clone();
                let active = active.clone();
                let counters = counters.clone();
                let span = tracing::info_span!("gateway.conn", listener = %name, %peer);
                Some(
                    async move {
                        active.inc();
                        serve_conn(stream, peer, conn, shared, counters, d).await;
                        active.dec();
                        drop(guard);
                    }
                    .instrument(span),
                )
            },
        )
        .await;
    }
}

async fn serve_conn(
    stream: TcpStream,
    peer: SocketAddr,
    mut conn: ConnInfo,
    shared: Shared,
    counters: LimitCounters,
    drain: Drain,
) {
    let table = shared.table.load_full();
    let mut limits = edge_http_limits(&table.limits, counters);
    limits.max_headers = shared.config.load().bootstrap.http.max_request_headers() as usize;
    let scheme = if conn.tls { "https" } else { "http" };
    let edge = ServiceBuilder::new()
        .layer(ForwardedLayer::new(
            peer.ip(),
            scheme,
            table.limits.trusted_hops,
        ))
        .layer(
            RateLimitLayer::new(table.rate.as_ref().map(|(_, b)| b.clone()))
                .counting(shared.metrics.rejections("rate_limited")),
        )
        .layer(BodyLimitLayer::new(table.limits.max_request_body_bytes()))
        .layer_fn(|inner| PathStage {
            inner,
            config: shared.config.clone(),
        });
    if !conn.tls {
        let svc = edge.service(GatewayRoute::new(
            shared.table.clone(),
            Arc::new(conn),
            shared.outbound.clone(),
            shared.metrics.clone(),
        ));
        let svc = BoxCloneSyncService::new(svc);
        return serve_http(stream, svc, Framed::Http1, &limits, drain).await;
    }
    let handshake = async {
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
        let sni = start.client_hello().server_name().map(str::to_string);
        let Some((host, by_sni)) = table.tls_host(sni.as_deref()) else {
            return Err(std::io::Error::other(format!(
                "no TLS host for SNI {sni:?} and no default certificate"
            )));
        };
        let config = host.tls.as_ref().map(|t| t.config.clone());
        let config = config.expect("tls_host returns TLS hosts only");
        let sni_host = by_sni.then(|| host.hostname.clone());
        let tls = start.into_stream(config).await?;
        Ok::<_, std::io::Error>((tls, sni_host))
    };
    let (tls, sni_host) = match tokio::time::timeout(limits.header_read_timeout, handshake).await {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => {
            shared.metrics.reject("tls_handshake");
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            shared.metrics.reject("handshake_timeout");
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(ALPN[0]);
    conn.sni_host = sni_host;
    let svc = edge.service(GatewayRoute::new(
        shared.table.clone(),
        Arc::new(conn),
        shared.outbound.clone(),
        shared.metrics.clone(),
    ));
    let framed = if h2 { Framed::Http2 } else { Framed::Http1 };
    serve_http(tls, BoxCloneSyncService::new(svc), framed, &limits, drain).await
}

/// The sidecar's HTTP limits with the gateway's head size and read timeout
/// (which also bounds the TLS handshake) and at most 256 HTTP/2 streams per
/// outside client.
fn edge_http_limits(edge: &sane_xds_proto::EdgeLimits, counters: LimitCounters) -> HttpLimits {
    let mut limits = HttpLimits::new(&ConnectionLimits::default(), counters);
    limits.max_header_bytes = edge.max_request_header_bytes() as usize;
    limits.header_read_timeout = Duration::from_millis(edge.header_read_timeout_ms());
    limits.max_concurrent_streams = 256;
    limits
}
