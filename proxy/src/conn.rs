//! One accepted connection: what it carries decides how it is served.
//!
//! * outbound HTTP listener: HTTP/1.1 or prior-knowledge HTTP/2 (detected by
//!   hyper), through the outbound stack;
//! * outbound TCP listener: spliced to an endpoint of the target service;
//! * inbound listener: a peer sidecar's transport header names the workload
//!   port and framing; otherwise the protocol is detected and the connection
//!   goes to the port the client originally addressed (when iptables
//!   redirected it to a transparent listener), else to the first declared
//!   workload port of that kind. Either way only a declared workload port
//!   that is not one of the proxy's own is served ([`workload_port`]).

use crate::cluster::Cluster;
use crate::drain::Drain;
use crate::observe::tcp::TcpLog;
use crate::policy::authz::authorize_tcp;
use crate::protocol::detect::{self, Detected};
use crate::protocol::io::{Io, Prefixed};
use crate::protocol::opaque;
pub use crate::protocol::server::Framed;
use crate::protocol::server::{serve_http, HttpLimits};
use crate::protocol::transport_header::Framing;
use crate::stack::{self, StackContext};
use crate::telemetry::TcpLabels;
use crate::tls::{PeerIdentity, TLS_HANDSHAKE_BYTE};
use crate::upstream::Target;
use crate::workload_port::InboundTarget;
use crate::workload_port::{self, PortRefusal};
use crate::ProxyError;
use futures::future;
use sane_xds_proto::{Protocol, TlsMode};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

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
    let service = crate::telemetry::istio_host(cluster.name.split(':').next().unwrap_or_default());
    let mut log = TcpLog::start(ctx, false, &service, None);
    let Some(endpoint) = cluster.pick(&[]) else {
        tracing::warn!(cluster = %cluster.name, flags = "UH", "no healthy endpoint; closing");
        log.failed("UH");
        return;
    };
    let _guard = endpoint.start();
    let target = Target {
        addr: endpoint.connect_addr,
        via_sidecar: endpoint.via_sidecar,
        protocol: Protocol::Tcp,
        preserve_http1: false,
        connect_timeout: cluster.connect_timeout,
        idle_timeout: cluster.idle_timeout,
        identity: endpoint.identity.clone(),
    };
    let verified =
        (target.via_sidecar.is_some() && ctx.identity.is_configured()).then_some(&*target.identity);
    log.upstream(target.addr, verified);
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
            log.closed(t.into());
        }
        Err(e) => {
            tracing::warn!(error = %e, flags = e.response_flag(), "tcp connect failed; closing");
            log.failed(e.response_flag());
        }
    }
}

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
    limits: Arc<HttpLimits>,
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
        let conn = (peer, None, original_port);
        return inbound_detected(stream, conn, target, ctx, drain, limits).await;
    }
    let identity = ctx.identity.clone();
    // The listener's `tls_handshake_timeout`, shrunk under connection
    // pressure; each handshake runs in its own connection's task.
    match tokio::time::timeout(limits.tls_handshake(), identity.accept(stream, peer)).await {
        Ok(Ok((tls, peer_id))) => {
            tracing::debug!(%peer, identity = %peer_id.0, "mutual TLS established");
            let conn = (peer, Some(peer_id), original_port);
            inbound_detected(tls, conn, target, ctx, drain, limits).await
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

/// Who is connected: address, verified identity, and the port a redirected
/// client originally addressed.
type InboundPeer = (SocketAddr, Option<PeerIdentity>, Option<u16>);

async fn inbound_detected<I: Io>(
    mut io: I,
    (peer, peer_id, original_port): InboundPeer,
    target: Arc<InboundTarget>,
    ctx: StackContext,
    drain: Drain,
    limits: Arc<HttpLimits>,
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
                Framing::Http2 => Some(Framed::PeerHttp2),
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
    if let Err(reason) = workload_port::check(&target, &ctx.own_sockets, port) {
        let http = framed.is_some();
        ctx.metrics.inbound_ports.refused(reason, http);
        let flags = workload_port::REFUSED_FLAG;
        let peer_id = peer_id.as_ref().map(|p| &*p.0);
        tracing::warn!(%peer, ?peer_id, port, %reason, flags, "inbound port refused");
        if let Some(framed) = framed {
            // Answered per request (403 `IPR`), so the caller learns why.
            let io = Prefixed::new(prefix, io);
            serve_http(io, refuse(port, reason), framed, &limits, drain).await;
        }
        return;
    }
    let io = Prefixed::new(prefix, io);
    let snapshot = ctx.config.load();
    let service = crate::snapshot::local_service_key(&snapshot.bootstrap.node);
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
                limits.upstream_idle_timeout,
            );
            serve_http(io, svc, framed, &limits, drain).await;
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
            let peer = peer_id.as_ref().map(|p| &*p.0);
            let log = TcpLog::start(&ctx, true, &service, peer);
            inbound_tcp(io, (target.ip, port).into(), &service, &ctx, log).await
        }
    }
}

/// An HTTP service answering every request with the refusal.
fn refuse(port: u16, reason: PortRefusal) -> stack::HttpSvc {
    let refused = move |_req| future::ready(Err(ProxyError::InboundPortRefused { port, reason }));
    tower::util::BoxCloneSyncService::new(tower::service_fn(refused))
}

/// Where a plain client (no transport header) goes: the port it originally
/// addressed, when iptables redirected it here, else the first declared
/// workload port of its protocol. A declared `tcp` port is spliced whatever
/// its first bytes look like. (Whether that port may be reached at all is
/// [`workload_port::check`]'s decision.)
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

async fn inbound_tcp(
    mut client: impl Io,
    addr: SocketAddr,
    service: &str,
    ctx: &StackContext,
    mut log: TcpLog,
) {
    let target = Target {
        addr,
        via_sidecar: None,
        protocol: Protocol::Tcp,
        preserve_http1: false,
        connect_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(60),
        identity: "".into(),
    };
    let labels = TcpLabels {
        reporter: "destination",
        destination_service: service,
    };
    log.upstream(addr, None);
    match ctx.upstream.open(&target).await {
        Ok(mut upstream) => {
            ctx.metrics.tcp_open(labels);
            let t = opaque::forward(&mut client, &mut upstream)
                .await
                .unwrap_or_default();
            ctx.metrics.tcp_close(labels, t.sent, t.received);
            log.closed(t.into());
        }
        Err(e) => {
            tracing::warn!(%addr, error = %e, "workload connect failed; closing");
            log.failed(e.response_flag());
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
            tls_overrides: Vec::new(),
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
        // first (an undeclared one is then refused by `workload_port`).
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

    /// Transparent mode: iptables redirects every pod port to the inbound,
    /// so a plain client addressing the pod's admin or an undeclared port
    /// arrives here with that original port. It is refused, whatever its
    /// protocol looks like.
    #[test]
    fn a_redirected_plain_client_gets_only_declared_ports_that_are_not_the_proxys() {
        let t = target();
        let own = workload_port::OwnSockets::default();
        own.add("127.0.0.1:15000".parse().unwrap());
        own.add("0.0.0.0:15006".parse().unwrap());
        let port_of = |detected, original| {
            let (port, _) = plain_client_port(&t, detected, Some(original));
            workload_port::check(&t, &own, port.unwrap())
        };
        assert_eq!(port_of(Detected::Http1, 8081), Ok(()));
        assert_eq!(port_of(Detected::Opaque, 5432), Ok(()));
        for detected in [Detected::Http1, Detected::Opaque] {
            assert_eq!(
                port_of(detected, 15000),
                Err(PortRefusal::ProxyPort),
                "admin"
            );
            assert_eq!(
                port_of(detected, 15006),
                Err(PortRefusal::ProxyPort),
                "inbound"
            );
            assert_eq!(port_of(detected, 9000), Err(PortRefusal::Undeclared));
        }
    }
}
