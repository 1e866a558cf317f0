//! Transparent interception: connections the kernel redirected to a
//! listener (`sane-proxy iptables install`, see [`crate::iptables`]) are
//! served by where the client was going, so the app needs no changes.
//!
//! The original destination comes from `SO_ORIGINAL_DST` (the NAT table's
//! record of the connection). Each snapshot compiles an [`OriginalDstTable`]
//! from every service address (VIP:port) and every endpoint's
//! `address:workload port`; an outbound connection to
//!
//! * a known HTTP port is served as HTTP through the normal outbound stack,
//!   with its [`OriginalDst`] in each request's extensions so the route stage
//!   can resolve it when the `Host` names no service (an IP, or none);
//! * a known TCP port is spliced to that port's cluster;
//! * anything else is passed through to the original destination unchanged
//!   (Istio's PassthroughCluster), counted in
//!   `sane_intercepted_connections_total{target="passthrough"}`.
//!
//! An endpoint address reaches that endpoint (through its sidecar, over
//! mutual TLS when it has one): the client chose the instance, so it is not
//! balanced away and route rules, which are written for the service, do not
//! apply. A service address goes through the service's routes like a request
//! by name.

use crate::conn;
use crate::drain::Drain;
use crate::original_dst::{OriginalDst, OriginalDstTarget};
use crate::protocol::server::{serve_http, Framed, HttpLimits};
use crate::stack::{HttpSvc, StackContext};
use crate::telemetry::TcpLabels;
use crate::upstream::Target;
use crate::Body;
use http::Request;
use nix::sys::socket::{getsockopt, sockopt, SockaddrIn, SockaddrIn6};
use prometheus::{IntCounterVec, Opts, Registry};
use sane_xds_proto::Protocol;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tower::util::BoxCloneSyncService;
use tower::ServiceExt;

/// Connect timeout for passthrough connections (no policy names one).
const PASSTHROUGH_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Counts intercepted connections by what they turned out to be.
#[derive(Clone, Debug)]
pub struct InterceptMetrics {
    connections: IntCounterVec,
}

/// Label values of `sane_intercepted_connections_total`.
#[derive(Clone, Copy, Debug)]
struct InterceptLabels<'a> {
    listener: &'a str,
    /// `http`, `tcp`, `passthrough`, `direct` (addressed to the listener
    /// itself, not redirected) or `unknown` (no original destination).
    target: &'static str,
}

/// The original destination of a redirected connection (`SO_ORIGINAL_DST`,
/// or `IP6T_SO_ORIGINAL_DST` for IPv6). Fails with `ENOENT` when the
/// connection has no NAT record.
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let local = stream.local_addr()?;
    let dst = if local.is_ipv4() {
        SocketAddr::from(SockaddrIn::from(getsockopt(stream, sockopt::OriginalDst)?))
    } else {
        SocketAddr::from(SockaddrIn6::from(getsockopt(
            stream,
            sockopt::Ip6tOriginalDst,
        )?))
    };
    Ok(dst)
}

/// The original destination if the connection was redirected here; `None`
/// when it was addressed to the listener itself (or has no NAT record).
pub fn redirected_to(stream: &TcpStream) -> Option<SocketAddr> {
    let dst = original_dst(stream).ok()?;
    (Some(dst) != stream.local_addr().ok()).then_some(dst)
}

/// Serves a connection accepted by a transparent outbound listener; `http`
/// is the listener's outbound stack.
pub async fn outbound(
    stream: TcpStream,
    listener: &str,
    http: HttpSvc,
    ctx: &StackContext,
    drain: Drain,
    limits: &HttpLimits,
    metrics: &InterceptMetrics,
) {
    let dst = match original_dst(&stream) {
        Ok(dst) => dst,
        Err(e) => {
            metrics.count(listener, "unknown");
            tracing::warn!(error = %e, "no original destination; closing");
            return;
        }
    };
    if Some(dst) == stream.local_addr().ok() {
        // Not redirected: the app uses the listener as its HTTP proxy.
        metrics.count(listener, "direct");
        return serve_http(stream, http, Framed::Auto, limits, drain).await;
    }
    let target = ctx.config.load().transparent.get(dst).cloned();
    match target {
        Some(OriginalDstTarget::Http(route)) => {
            metrics.count(listener, "http");
            tracing::debug!(%dst, service = %route.service, "intercepted http");
            let svc = BoxCloneSyncService::new(http.map_request(move |mut req: Request<Body>| {
                req.extensions_mut().insert(OriginalDst(dst));
                req
            }));
            serve_http(stream, svc, Framed::Auto, limits, drain).await
        }
        Some(OriginalDstTarget::Tcp(cluster)) => {
            metrics.count(listener, "tcp");
            tracing::debug!(%dst, cluster = %cluster.name, "intercepted tcp");
            conn::splice_to_cluster(stream, &cluster, ctx).await
        }
        None => {
            metrics.count(listener, "passthrough");
            tracing::debug!(%dst, "not a mesh destination; passing through");
            passthrough(stream, dst, ctx).await
        }
    }
}

/// Splices `client` straight to `dst`, outside the mesh.
async fn passthrough(mut client: TcpStream, dst: SocketAddr, ctx: &StackContext) {
    let target = Target {
        addr: dst,
        via_sidecar: None,
        protocol: Protocol::Tcp,
        preserve_http1: false,
        connect_timeout: PASSTHROUGH_CONNECT_TIMEOUT,
        idle_timeout: Duration::from_secs(60),
        identity: "".into(),
    };
    let labels = TcpLabels {
        reporter: "source",
        destination_service: "PassthroughCluster",
    };
    let mut log = crate::observe::tcp::TcpLog::start(ctx, false, "PassthroughCluster", None);
    log.upstream(dst, None);
    match ctx.upstream.open(&target).await {
        Ok(mut upstream) => {
            ctx.metrics.tcp_open(labels);
            let t = crate::protocol::opaque::forward(&mut client, &mut upstream)
                .await
                .unwrap_or_default();
            ctx.metrics.tcp_close(labels, t.sent, t.received);
            log.closed(t.into());
        }
        Err(e) => {
            tracing::warn!(%dst, error = %e, "passthrough connect failed; closing");
            log.failed(e.response_flag());
        }
    }
}

// === impl InterceptMetrics ===

impl InterceptMetrics {
    /// Registers `sane_intercepted_connections_total` in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let connections = IntCounterVec::new(
            Opts::new(
                "sane_intercepted_connections_total",
                "Connections accepted by transparent outbound listeners, by what their \
                 original destination was: http, tcp (mesh service ports), passthrough (not \
                 in the mesh), direct (not redirected) or unknown.",
            ),
            &["listener", "target"],
        )?;
        registry.register(Box::new(connections.clone()))?;
        Ok(Self { connections })
    }

    fn count(&self, listener: &str, target: &'static str) {
        let labels = InterceptLabels { listener, target };
        self.connections
            .with_label_values(&[labels.listener, labels.target])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Snapshot;
    use std::sync::Arc;

    const CFG: &str = r#"
resources:
  listeners:
    - { name: out, address: "127.0.0.1:0", transparent: true }
  services:
    - name: echo
      addresses: [ 10.96.0.10 ]
      ports: [ { name: http, port: 80, target_port: 8080 }, { name: tcp, port: 7000, protocol: tcp } ]
  endpoints:
    - { service: echo, address: 10.0.0.1, proxy_port: 15006 }
    - { service: echo, address: 10.0.0.2, proxy_port: 15006 }
"#;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn service_addresses_and_endpoint_addresses_are_known() {
        let s = Snapshot::compile(serde_yaml::from_str(CFG).unwrap(), 1, None, "t").unwrap();
        let t = &s.transparent;
        // The VIP, on every service port: the service's own route (both
        // endpoints) and cluster.
        let vip = t.http_route(addr("10.96.0.10:80")).unwrap();
        assert_eq!(vip.service, "echo.default");
        let any = vip.select(&Request::get("/").body(()).unwrap()).unwrap();
        assert_eq!(any.cluster.endpoints.len(), 2);
        match t.get(addr("10.96.0.10:7000")) {
            Some(OriginalDstTarget::Tcp(c)) => assert_eq!(c.endpoints.len(), 2),
            other => panic!("{other:?}"),
        }
        // An endpoint on its workload port: that endpoint only.
        let one = t.http_route(addr("10.0.0.2:8080")).unwrap();
        let sel = one.select(&Request::get("/").body(()).unwrap()).unwrap();
        assert_eq!(sel.cluster.endpoints.len(), 1);
        assert_eq!(
            sel.cluster.endpoints[0].connect_addr,
            addr("10.0.0.2:15006")
        );
        assert_eq!(sel.cluster.endpoints[0].via_sidecar, Some(8080));
        match t.get(addr("10.0.0.1:7000")) {
            Some(OriginalDstTarget::Tcp(c)) => {
                assert_eq!(c.endpoints.len(), 1);
                assert_eq!(c.endpoints[0].connect_addr, addr("10.0.0.1:15006"));
            }
            other => panic!("{other:?}"),
        }
        // The service port (80) is not an endpoint's address; unknown
        // addresses pass through.
        assert!(t.get(addr("10.0.0.1:80")).is_none());
        assert!(t.get(addr("10.96.0.11:80")).is_none());
        assert_eq!(t.len(), 6);
    }

    /// Answers every connection with HTTP/1.1 `200 <the address dialed>`,
    /// so a test sees where the stack sent a request without any socket.
    #[derive(Debug)]
    struct EchoAddr;

    impl crate::upstream::connect::Connect for EchoAddr {
        fn connect(
            &self,
            addr: SocketAddr,
        ) -> futures::future::BoxFuture<'static, io::Result<crate::protocol::io::BoxIo>> {
            let (ours, theirs) = tokio::io::duplex(64 * 1024);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| async move {
                    Ok::<_, std::convert::Infallible>(http::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from(addr.to_string())),
                    ))
                });
                let io = hyper_util::rt::TokioIo::new(theirs);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
            Box::pin(async move { Ok(Box::new(ours) as crate::protocol::io::BoxIo) })
        }
    }

    async fn send(svc: &HttpSvc, host: Option<&str>, dst: Option<&str>) -> (u16, String) {
        use http_body_util::BodyExt;
        let mut req = Request::get("/");
        if let Some(host) = host {
            req = req.header("host", host);
        }
        if let Some(dst) = dst {
            req = req.extension(OriginalDst(addr(dst)));
        }
        let req = req.body(crate::body::empty()).unwrap();
        let rsp = match svc.clone().oneshot(req).await {
            Ok(rsp) => rsp,
            Err(e) => e.to_response(),
        };
        let status = rsp.status().as_u16();
        let body = rsp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn the_outbound_stack_routes_by_original_destination_when_the_host_is_no_service() {
        // Endpoints without sidecars, so the stack dials the workload ports;
        // round robin, so "balanced" below does not hang on the latencies
        // the default (peak EWMA) happens to measure in a unit test.
        let cfg = CFG.replace(", proxy_port: 15006", "")
            + "  policies:\n    - { name: rr, service: echo, load_balancer: round_robin }\n";
        let snapshot =
            Snapshot::compile(serde_yaml::from_str(&cfg).unwrap(), 1, None, "t").unwrap();
        let registry = Registry::new();
        let identity = Arc::new(crate::tls::Identity::new(
            false,
            crate::tls::TlsMetrics::register(&registry).unwrap(),
        ));
        let ctx = StackContext {
            config: Arc::new(crate::config::ConfigStore::new(snapshot, None)),
            upstream: Arc::new(crate::upstream::Upstream::new(
                Arc::new(EchoAddr),
                identity.clone(),
            )),
            metrics: crate::telemetry::Metrics::register(&registry).unwrap(),
            identity,
            drain: Default::default(),
            tracer: Arc::new(crate::trace::Tracer::new(&registry).unwrap()),
            own_sockets: Default::default(),
        };
        let svc = crate::stack::outbound(ctx);

        // An endpoint's own address: always that endpoint.
        for _ in 0..10 {
            let got = send(&svc, Some("10.0.0.2:8080"), Some("10.0.0.2:8080")).await;
            assert_eq!(got, (200, "10.0.0.2:8080".to_string()));
        }
        // The VIP, with no Host at all: the service, balanced.
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..40 {
            let (status, body) = send(&svc, None, Some("10.96.0.10:80")).await;
            assert_eq!(status, 200, "{body}");
            seen.insert(body);
        }
        assert_eq!(seen.len(), 2, "{seen:?}");
        // A Host naming a service wins over the original destination.
        let (status, _) = send(&svc, Some("echo"), Some("10.9.9.9:80")).await;
        assert_eq!(status, 200);
        // Without an original destination an IP is no route, as before.
        let (status, body) = send(&svc, Some("10.0.0.2:8080"), None).await;
        assert_eq!(status, 404, "{body}");
    }

    #[tokio::test]
    async fn original_dst_of_a_connection_that_was_not_redirected_is_its_own_address() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = l.accept().await.unwrap();
        // With conntrack loaded the kernel reports the unchanged destination;
        // without it there is no record (ENOENT). Either way: not redirected.
        match original_dst(&accepted) {
            Ok(dst) => assert_eq!(dst, addr),
            Err(e) => assert_eq!(e.raw_os_error(), Some(nix::libc::ENOENT), "{e}"),
        }
        assert_eq!(redirected_to(&accepted), None);
    }
}
