//! One accepted connection: what it carries decides how it is served.
//!
//! * outbound HTTP listener: HTTP/1.1 or prior-knowledge HTTP/2 (detected by
//!   hyper), through the outbound stack;
//! * outbound TCP listener: spliced to an endpoint of the target service;
//! * inbound listener: a peer sidecar's transport header names the workload
//!   port and framing; otherwise the protocol is detected and the connection
//!   goes to the port the client originally addressed (when iptables
//!   redirected it to a transparent listener), else to the first declared
//!   workload port of that kind.

use crate::cluster::Cluster;
use crate::config::InboundTarget;
use crate::drain::Drain;
use crate::policy::authz::authorize_tcp;
use crate::protocol::detect::{self, Detected};
use crate::protocol::http::{H2_CONNECTION_WINDOW, H2_STREAM_WINDOW};
use crate::protocol::io::{Io, Prefixed};
use crate::protocol::opaque;
use crate::protocol::transport_header::Framing;
use crate::stack::{self, HttpSvc, StackContext};
use crate::telemetry::TcpLabels;
use crate::tls::{PeerIdentity, TLS_HANDSHAKE_BYTE};
use crate::upstream::Target;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use sane_xds_proto::{Protocol, TlsMode};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// How long an HTTP/1 client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

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

/// Serves HTTP on `io` with `svc` until the client closes or the drain asks
/// the connection to finish its in-flight requests and close.
pub async fn serve_http<I: Io>(io: I, svc: HttpSvc, framed: Framed, drain: Drain) {
    let service = hyper::service::service_fn(move |req| {
        let svc = svc.clone();
        async move { Ok::<_, Infallible>(stack::serve(svc, req).await) }
    });
    let io = TokioIo::new(io);
    let result = match framed {
        Framed::Auto => {
            let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            b.http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            b.http2()
                .timer(TokioTimer::new())
                .initial_stream_window_size(H2_STREAM_WINDOW)
                .initial_connection_window_size(H2_CONNECTION_WINDOW);
            let conn = b.serve_connection_with_upgrades(io, service);
            tokio::pin!(conn);
            tokio::select! {
                res = conn.as_mut() => res,
                _ = drain.signaled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
        Framed::Http2 => {
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .initial_stream_window_size(H2_STREAM_WINDOW)
                .initial_connection_window_size(H2_CONNECTION_WINDOW)
                .serve_connection(io, service);
            tokio::pin!(conn);
            tokio::select! {
                res = conn.as_mut() => res,
                _ = drain.signaled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
            .map_err(Into::into)
        }
        Framed::Http1 => {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
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
            .map_err(Into::into)
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Splices an outbound TCP connection to an endpoint of `listener`'s service.
pub async fn outbound_tcp(client: tokio::net::TcpStream, listener: &str, ctx: &StackContext) {
    let snapshot = ctx.config.load();
    let Some(cluster) = snapshot.tcp_targets.get(listener).cloned() else {
        tracing::warn!(listener, "no tcp target configured; closing");
        return;
    };
    drop(snapshot);
    splice_to_cluster(client, &cluster, ctx).await
}

/// Splices an outbound TCP connection to an endpoint of `cluster`.
pub async fn splice_to_cluster(
    mut client: tokio::net::TcpStream,
    cluster: &Cluster,
    ctx: &StackContext,
) {
    let Some(endpoint) = cluster.pick(&[]) else {
        tracing::warn!(cluster = %cluster.name, flags = "UH", "no healthy endpoint; closing");
        return;
    };
    let _guard = endpoint.start();
    let target = Target {
        addr: endpoint.connect_addr,
        via_sidecar: endpoint.via_sidecar,
        protocol: Protocol::Tcp,
        connect_timeout: cluster.connect_timeout,
        idle_timeout: cluster.idle_timeout,
        identity: endpoint.identity.clone(),
    };
    let service = crate::telemetry::istio_host(cluster.name.split(':').next().unwrap_or_default());
    let labels = TcpLabels {
        reporter: "source",
        destination_service: &service,
    };
    match ctx.upstream.open(&target).await {
        Ok(mut upstream) => {
            ctx.metrics.tcp_open(labels);
            let t = opaque::forward(&mut client, &mut upstream).await;
            let t = t.unwrap_or_default();
            ctx.metrics.tcp_close(labels, t.sent, t.received);
        }
        Err(e) => {
            tracing::warn!(error = %e, flags = e.response_flag(), "tcp connect failed; closing")
        }
    }
}

/// How long an inbound TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves an inbound connection from a peer sidecar or a plain client:
/// mutual TLS first (required, optional or off per the listener's modes),
/// then protocol detection inside it. `original_port` is the port a
/// redirected client originally addressed.
pub async fn inbound(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    target: Arc<InboundTarget>,
    original_port: Option<u16>,
    ctx: StackContext,
    drain: Drain,
) {
    let tls = if !target.any_tls() {
        false
    } else if !target.any_plaintext() {
        true
    } else {
        // Permissive: a TLS client speaks first with a handshake record; a
        // silent client is plaintext (server-first protocols).
        let mut first = [0u8; 1];
        match tokio::time::timeout(target.detect_timeout, stream.peek(&mut first)).await {
            Ok(Ok(1)) => first[0] == TLS_HANDSHAKE_BYTE,
            Ok(Ok(_)) => return,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "closing before the first byte");
                return;
            }
            Err(_) => false,
        }
    };
    if !tls {
        return inbound_detected(stream, peer, None, target, original_port, ctx, drain).await;
    }
    let identity = ctx.identity.clone();
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, identity.accept(stream, peer)).await {
        Ok(Ok((tls, peer_id))) => {
            tracing::debug!(%peer, identity = %peer_id.0, "mutual TLS established");
            inbound_detected(tls, peer, Some(peer_id), target, original_port, ctx, drain).await
        }
        Ok(Err(e)) => {
            identity.record_failure("inbound");
            tracing::warn!(%peer, error = %e, "inbound TLS rejected");
        }
        Err(_) => {
            identity.record_failure("inbound");
            tracing::warn!(%peer, "inbound TLS handshake timed out");
        }
    }
}

async fn inbound_detected<I: Io>(
    mut io: I,
    peer: SocketAddr,
    peer_id: Option<PeerIdentity>,
    target: Arc<InboundTarget>,
    original_port: Option<u16>,
    ctx: StackContext,
    drain: Drain,
) {
    let started = Instant::now();
    let (detected, prefix) = match detect::detect(&mut io, target.detect_timeout).await {
        Ok(d) => d,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "closing before detection finished");
            return;
        }
    };
    ctx.metrics
        .detect_seconds
        .observe(started.elapsed().as_secs_f64());
    let (port, framed) = match detected {
        Detected::Mesh(h) => (
            Some(h.port),
            match h.framing {
                Framing::Http2 => Some(Framed::Http2),
                Framing::Http1 => Some(Framed::Http1),
                Framing::Opaque => None,
            },
        ),
        plain => plain_client_port(&target, plain, original_port),
    };
    let Some(port) = port else {
        tracing::warn!(%peer, ?detected, "no workload port declared for this protocol; closing");
        return;
    };
    if peer_id.is_none() && target.tls_mode(port) == TlsMode::Strict {
        ctx.identity.record_plaintext_rejected();
        tracing::warn!(%peer, port, "plaintext connection to a STRICT mutual TLS port rejected");
        return;
    }
    let io = Prefixed::new(prefix, io);
    let snapshot = ctx.config.load();
    let service = crate::config::local_service_key(&snapshot.bootstrap.node);
    drop(snapshot);
    match framed {
        Some(framed) => {
            let svc = stack::inbound(
                ctx,
                target.ip,
                port,
                target.protocol(port),
                service,
                peer_id,
            );
            serve_http(io, svc, framed, drain).await;
        }
        None => {
            // Opaque TCP is authorized once, before any byte is forwarded;
            // a denied connection is closed (dropped) unanswered.
            let policies = ctx.config.load().authz.clone();
            let denied = authorize_tcp(&policies, peer_id.as_ref(), port, &ctx.metrics.authz);
            if let Err(e) = denied {
                tracing::warn!(%peer, port, error = %e, flags = "RBAC", "tcp connection denied; closing");
                return;
            }
            inbound_tcp(io, (target.ip, port).into(), &service, &ctx).await
        }
    }
}

/// Where a plain client (no transport header) goes: the port it originally
/// addressed, when iptables redirected it here, else the first declared
/// workload port of its protocol. A declared `tcp` port is spliced whatever
/// its first bytes look like.
fn plain_client_port(
    target: &InboundTarget,
    detected: Detected,
    original_port: Option<u16>,
) -> (Option<u16>, Option<Framed>) {
    let http = matches!(detected, Detected::Http1 | Detected::Http2);
    match original_port {
        Some(port) if target.ports.get(&port) == Some(&Protocol::Tcp) => (Some(port), None),
        Some(port) => (Some(port), http.then_some(Framed::Auto)),
        None if http => (target.default_http, Some(Framed::Auto)),
        None => (target.default_tcp, None),
    }
}

async fn inbound_tcp(mut client: impl Io, addr: SocketAddr, service: &str, ctx: &StackContext) {
    let target = Target {
        addr,
        via_sidecar: None,
        protocol: Protocol::Tcp,
        connect_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(60),
        identity: "".into(),
    };
    let labels = TcpLabels {
        reporter: "destination",
        destination_service: service,
    };
    match ctx.upstream.open(&target).await {
        Ok(mut upstream) => {
            ctx.metrics.tcp_open(labels);
            let t = opaque::forward(&mut client, &mut upstream)
                .await
                .unwrap_or_default();
            ctx.metrics.tcp_close(labels, t.sent, t.received);
        }
        Err(e) => {
            tracing::warn!(%addr, error = %e, "workload connect failed; closing");
            let _ = client.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn target() -> InboundTarget {
        InboundTarget {
            ip: [127, 0, 0, 1].into(),
            ports: HashMap::from([
                (8080, Protocol::Http),
                (8081, Protocol::Http),
                (5432, Protocol::Tcp),
            ]),
            default_http: Some(8080),
            default_tcp: Some(5432),
            detect_timeout: Duration::from_secs(1),
            tls_mode: TlsMode::Permissive,
            port_tls: HashMap::new(),
        }
    }

    #[test]
    fn a_redirected_plain_client_reaches_the_port_it_addressed() {
        let t = target();
        let http = Some(Framed::Auto);
        // Not redirected: the first declared port of the detected protocol.
        assert_eq!(
            plain_client_port(&t, Detected::Http1, None),
            (Some(8080), http)
        );
        assert_eq!(
            plain_client_port(&t, Detected::Opaque, None),
            (Some(5432), None)
        );
        // Redirected: the original destination port, whatever is declared
        // first (and undeclared ports too, by what was detected).
        assert_eq!(
            plain_client_port(&t, Detected::Http2, Some(8081)),
            (Some(8081), http)
        );
        assert_eq!(
            plain_client_port(&t, Detected::Http1, Some(9000)),
            (Some(9000), http)
        );
        assert_eq!(
            plain_client_port(&t, Detected::Opaque, Some(9000)),
            (Some(9000), None)
        );
        // A declared tcp port is spliced even if its bytes look like HTTP.
        assert_eq!(
            plain_client_port(&t, Detected::Http1, Some(5432)),
            (Some(5432), None)
        );
    }
}
