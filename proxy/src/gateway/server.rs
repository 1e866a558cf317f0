//! Public listeners: accept (per-IP limit), TLS by SNI (handshake bounded by
//! the header read timeout), then HTTP/2 or HTTP/1.1 as ALPN decided, with
//! the request head size and read time limited, through the gateway stack.
//!
//! The gateway stack, outermost first (see [`super::edge`] for why):
//! forwarded headers → rate limit → body limit → [`GatewayRoute`] → the
//! sidecar's outbound stack. Limits are read from the table current when
//! the connection was accepted; routes from the one current per request.

use crate::drain::Drain;
use crate::error::StartError;
use crate::gateway::certs::ALPN;
use crate::gateway::edge::{BodyLimitLayer, ConnLimiter, ForwardedLayer, RateLimitLayer};
use crate::gateway::route::{ConnInfo, GatewayRoute};
use crate::gateway::table::GatewayTable;
use crate::gateway::GatewayMetrics;
use crate::listener::bind_tcp;
use crate::protocol::io::Io;
use crate::stack::{self, HttpSvc};
use arc_swap::ArcSwap;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use sane_xds_proto::GatewayListener;
use std::convert::Infallible;
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
    /// Bound port of the first TLS listener (redirect target).
    pub https_port: Option<u16>,
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
}

/// The HTTP limits of one connection.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// Largest request head.
    pub max_header_bytes: usize,
    /// Time allowed for the TLS handshake and each request head.
    pub header_read_timeout: Duration,
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
        })
    }

    /// True if this listener terminates TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Accepts until the drain starts.
    pub async fn serve(self, shared: Shared, drain: Drain) {
        let redirect_port = match self.redirect_port {
            0 => shared.https_port,
            p => Some(p),
        };
        let active = shared.metrics.connections.with_label_values(&[&self.name]);
        loop {
            let accepted = tokio::select! {
                _ = drain.signaled() => break,
                res = self.socket.accept() => res,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(listener = %self.name, error = %e, "accept failed");
                    // Out of file descriptors and similar: back off instead of spinning.
                    // allow-sleep: accept error backoff, not readiness waiting.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(guard) = shared.conn_limit.try_acquire(peer.ip()) else {
                shared.metrics.reject("connection_limit");
                tracing::debug!(listener = %self.name, %peer, "per-IP connection limit; closing");
                continue;
            };
            let _ = stream.set_nodelay(true);
            let conn = ConnInfo {
                listener: self.name.clone(),
                tls: self.tls,
                sni_host: None,
                redirect_port,
            };
            let shared = shared.clone();
            let d = drain.clone();
            let active = active.clone();
            let span = tracing::info_span!("gateway.conn", listener = %self.name, %peer);
            drain.spawn(
                async move {
                    active.inc();
                    serve_conn(stream, peer, conn, shared, d).await;
                    active.dec();
                    drop(guard);
                }
                .instrument(span),
            );
        }
        tracing::info!(listener = %self.name, "stopped accepting");
    }
}

async fn serve_conn(
    stream: TcpStream,
    peer: SocketAddr,
    mut conn: ConnInfo,
    shared: Shared,
    drain: Drain,
) {
    let table = shared.table.load_full();
    let limits = HttpLimits {
        max_header_bytes: table.limits.max_request_header_bytes() as usize,
        header_read_timeout: Duration::from_millis(table.limits.header_read_timeout_ms()),
    };
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
        .layer(BodyLimitLayer::new(table.limits.max_request_body_bytes()));
    if !conn.tls {
        let svc = edge.service(GatewayRoute::new(
            shared.table.clone(),
            Arc::new(conn),
            shared.outbound.clone(),
            shared.metrics.clone(),
        ));
        return serve_http(stream, BoxCloneSyncService::new(svc), false, limits, drain).await;
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
    serve_http(tls, BoxCloneSyncService::new(svc), h2, limits, drain).await
}

/// Serves HTTP/2 (`h2`) or HTTP/1.1 on `io` with `svc` until the client
/// closes, a limit closes the connection, or a drain finishes it.
///
/// HTTP/1.1: a request head larger than `max_header_bytes` gets 431; a head
/// not complete within `header_read_timeout` closes the connection
/// (slowloris). HTTP/2: header lists are limited to `max_header_bytes`.
pub async fn serve_http<I: Io>(io: I, svc: HttpSvc, h2: bool, limits: HttpLimits, drain: Drain) {
    let service = hyper::service::service_fn(move |req| {
        let svc = svc.clone();
        async move { Ok::<_, Infallible>(stack::serve(svc, req).await) }
    });
    let io = TokioIo::new(io);
    let result = if h2 {
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(limits.max_header_bytes as u32)
            .max_concurrent_streams(256)
            .serve_connection(io, service);
        tokio::pin!(conn);
        tokio::select! {
            res = conn.as_mut() => res,
            _ = drain.signaled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    } else {
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_bytes.max(8192))
            .serve_connection(io, service)
            .with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            res = conn.as_mut() => res,
            _ = drain.signaled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "gateway connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ProxyError;
    use crate::Body;
    use http::{Request, Response};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn ok() -> HttpSvc {
        BoxCloneSyncService::new(tower::service_fn(|_req: Request<Body>| async {
            Ok::<_, ProxyError>(Response::new(crate::body::full("ok")))
        }))
    }

    const LIMITS: HttpLimits = HttpLimits {
        max_header_bytes: 8192,
        header_read_timeout: Duration::from_secs(5),
    };

    async fn read_all(io: &mut tokio::io::DuplexStream) -> String {
        let mut out = Vec::new();
        let _ = io.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_request_head_is_cut_off_at_the_timeout() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let served = tokio::spawn(serve_http(server, ok(), false, LIMITS, Drain::default()));
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
            .await
            .unwrap();
        let started = tokio::time::Instant::now();
        // The client never finishes its head; the server closes on its own.
        let answer = read_all(&mut client).await;
        assert!(!answer.contains("200"), "{answer}");
        assert!(started.elapsed() >= LIMITS.header_read_timeout);
        served.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_complete_request_is_served() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(serve_http(server, ok(), false, LIMITS, Drain::default()));
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = read_all(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    #[tokio::test]
    async fn an_oversized_request_head_gets_431() {
        let (mut client, server) = tokio::io::duplex(256 * 1024);
        tokio::spawn(serve_http(server, ok(), false, LIMITS, Drain::default()));
        let big = "x".repeat(20_000);
        let req = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\n");
        client.write_all(req.as_bytes()).await.unwrap();
        let answer = read_all(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    }
}
