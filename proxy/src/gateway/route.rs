//! The gateway's route stage: which host a request is for, whether it must
//! be redirected to HTTPS, and which mesh service it goes to.
//!
//! The chosen service becomes the request's authority
//! (`service.namespace:port`, scheme `http`), and the request continues into
//! the sidecar's outbound stack, which routes it by that authority like any
//! app request (mesh routes, retries, timeouts, circuit breaking, metrics)
//! and carries it over mTLS as the gateway's own identity. The host the
//! client asked for travels on in `X-Forwarded-Host`.

use crate::error::ProxyError;
use crate::gateway::error::EdgeError;
use crate::gateway::table::GatewayTable;
use crate::gateway::GatewayMetrics;
use crate::protocol::http as h;
use crate::stack::HttpSvc;
use crate::{body, Body};
use arc_swap::ArcSwap;
use futures::future::{BoxFuture, FutureExt};
use http::{header, HeaderValue, Request, Response, StatusCode, Uri};
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::Service;

/// What a connection was set up with, for the requests on it.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// Listener name.
    pub listener: String,
    /// The connection is TLS.
    pub tls: bool,
    /// The host entry the TLS handshake chose by SNI (its configured name).
    pub sni_host: Option<String>,
    /// Where `https_redirect` hosts are sent from a plain listener
    /// (`None`: no TLS listener; 443 is left out of the URL).
    pub redirect_port: Option<u16>,
}

/// Routes a request to a mesh service and calls the outbound stack.
#[derive(Clone, Debug)]
pub struct GatewayRoute {
    table: Arc<ArcSwap<GatewayTable>>,
    conn: Arc<ConnInfo>,
    outbound: HttpSvc,
    metrics: GatewayMetrics,
}

// === impl GatewayRoute ===

impl GatewayRoute {
    /// Routes with the current `table`, sending into `outbound`.
    pub fn new(
        table: Arc<ArcSwap<GatewayTable>>,
        conn: Arc<ConnInfo>,
        outbound: HttpSvc,
        metrics: GatewayMetrics,
    ) -> Self {
        Self {
            table,
            conn,
            outbound,
            metrics,
        }
    }

    /// Decides what to do with `req`: rewrite it for the mesh (`Ok(None)`),
    /// or answer it here (`Ok(Some)` redirect, `Err` rejection).
    fn decide(&self, req: &mut Request<Body>) -> Result<Option<Response<Body>>, EdgeError> {
        let table = self.table.load();
        let (host, _) = h::target(req).map_err(|e| EdgeError::BadRequest {
            reason: e.to_string(),
        })?;
        let Some(entry) = table.lookup(&host) else {
            return Err(EdgeError::UnknownHost { host });
        };
        if self.conn.tls {
            // A request must not reach a host whose handshake it skipped
            // (another certificate, or no client certificate).
            let sni = self.conn.sni_host.as_deref();
            let misdirected = match sni {
                Some(s) => s != entry.hostname,
                None => entry.requires_client_cert(),
            };
            if misdirected {
                return Err(EdgeError::Misdirected {
                    host,
                    sni: sni.unwrap_or_default().to_string(),
                });
            }
        } else if entry.https_redirect {
            if let Some(port) = self.conn.redirect_port {
                return Ok(Some(redirect(&host, port, req.uri())));
            }
        }
        let Some(authority) = entry.route(req) else {
            return Err(EdgeError::NoRoute {
                host: entry.hostname.clone(),
                method: req.method().to_string(),
                path: req.uri().path().to_string(),
            });
        };
        let uri = h::absolute_uri(req, authority).map_err(|e| EdgeError::BadRequest {
            reason: format!("cannot build the mesh URI for {authority:?}: {e}"),
        })?;
        let original = h::authority_text(req).unwrap_or(host);
        let headers = req.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&original) {
            headers.insert("x-forwarded-host", v);
        }
        if let Ok(v) = HeaderValue::from_str(authority) {
            headers.insert(header::HOST, v);
        }
        *req.uri_mut() = uri;
        Ok(None)
    }
}

/// A `308 Permanent Redirect` to the same host and path over HTTPS.
fn redirect(host: &str, port: u16, uri: &Uri) -> Response<Body> {
    let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let location = if port == 443 {
        format!("https://{host}{pq}")
    } else {
        format!("https://{host}:{port}{pq}")
    };
    let mut rsp = Response::new(body::empty());
    *rsp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = HeaderValue::from_str(&location) {
        rsp.headers_mut().insert(header::LOCATION, v);
    }
    rsp
}

impl Service<Request<Body>> for GatewayRoute {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = BoxFuture<'static, Result<Response<Body>, ProxyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.outbound.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        match self.decide(&mut req) {
            Ok(None) => self.outbound.call(req),
            Ok(Some(rsp)) => futures::future::ready(Ok(rsp)).boxed(),
            Err(e) => {
                self.metrics.reject(e.reason());
                tracing::debug!(listener = %self.conn.listener, error = %e, "request answered at the edge");
                futures::future::ready(Ok(e.to_response())).boxed()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::certs::tests::write_pair;
    use sane_xds_proto::Gateway;
    use tower::util::BoxCloneSyncService;
    use tower::ServiceExt;

    /// A route stage whose "mesh" echoes the URI and Host it was sent.
    fn stage(dir: &std::path::Path, conn: ConnInfo) -> GatewayRoute {
        let (c, k, _) = write_pair(dir, "a", "a.example.test");
        let (ca, _, _) = write_pair(dir, "ca", "ca.example.test");
        let (cc, ck, _) = write_pair(dir, "c", "c.example.test");
        let yaml = format!(
            r#"
listeners: [ {{ name: https, address: "127.0.0.1:0", tls: true }} ]
hosts:
  - hostname: a.example.test
    tls: {{ cert_file: "{c}", key_file: "{k}" }}
    https_redirect: true
    routes: [ {{ matches: [ {{ path: {{ kind: prefix, value: /api }} }} ], service: api, port: 8080 }} ]
  - hostname: c.example.test
    tls: {{ cert_file: "{cc}", key_file: "{ck}", client_ca_file: "{ca}" }}
    routes: [ {{ service: secret, port: 80 }} ]
  - hostname: plain.example.test
    routes: [ {{ service: web.shop, port: 80 }} ]
"#
        );
        let g: Gateway = serde_yaml::from_str(&yaml).unwrap();
        g.validate().unwrap();
        let table = GatewayTable::compile(&g, "default", None).unwrap();
        let outbound: HttpSvc =
            BoxCloneSyncService::new(tower::service_fn(|req: Request<Body>| async move {
                let seen = format!(
                    "{} host={} xfh={}",
                    req.uri(),
                    req.headers()[header::HOST].to_str().unwrap(),
                    req.headers()["x-forwarded-host"].to_str().unwrap()
                );
                Ok::<_, ProxyError>(Response::new(body::full(seen)))
            }));
        let registry = prometheus::Registry::new();
        GatewayRoute::new(
            Arc::new(ArcSwap::from_pointee(table)),
            Arc::new(conn),
            outbound,
            GatewayMetrics::register(&registry).unwrap(),
        )
    }

    async fn call(svc: &GatewayRoute, uri: &str, host: &str) -> (StatusCode, String, String) {
        let req = Request::builder()
            .uri(uri)
            .header(header::HOST, host)
            .body(body::empty())
            .unwrap();
        let rsp = svc.clone().oneshot(req).await.unwrap();
        let status = rsp.status();
        let location = rsp
            .headers()
            .get(header::LOCATION)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let text = http_body_util::BodyExt::collect(rsp.into_body())
            .await
            .unwrap()
            .to_bytes();
        (status, String::from_utf8_lossy(&text).into(), location)
    }

    fn tls_conn(sni: Option<&str>) -> ConnInfo {
        ConnInfo {
            listener: "https".into(),
            tls: true,
            sni_host: sni.map(str::to_string),
            redirect_port: None,
        }
    }

    #[tokio::test]
    async fn routes_into_the_mesh_by_service_authority() {
        let dir = tempfile::tempdir().unwrap();
        let svc = stage(dir.path(), tls_conn(Some("a.example.test")));
        let (status, seen, _) = call(&svc, "/api/x?q=1", "a.example.test:8443").await;
        assert_eq!(status, 200);
        assert_eq!(
            seen,
            "http://api.default:8080/api/x?q=1 host=api.default:8080 xfh=a.example.test:8443"
        );
        assert_eq!(call(&svc, "/other", "a.example.test").await.0, 404);
        assert_eq!(call(&svc, "/api", "nobody.example.test").await.0, 404);
        // Another host than the handshake's: misdirected.
        assert_eq!(call(&svc, "/", "plain.example.test").await.0, 421);
    }

    #[tokio::test]
    async fn a_client_cert_host_is_not_reachable_without_its_handshake() {
        let dir = tempfile::tempdir().unwrap();
        let svc = stage(dir.path(), tls_conn(None));
        assert_eq!(call(&svc, "/", "c.example.test").await.0, 421);
        let svc = stage(dir.path(), tls_conn(Some("c.example.test")));
        assert_eq!(call(&svc, "/", "c.example.test").await.0, 200);
    }

    #[tokio::test]
    async fn plain_http_is_redirected_for_redirect_hosts_only() {
        let dir = tempfile::tempdir().unwrap();
        let plain = ConnInfo {
            listener: "http".into(),
            tls: false,
            sni_host: None,
            redirect_port: Some(8443),
        };
        let svc = stage(dir.path(), plain);
        let (status, _, location) = call(&svc, "/api/x?q=1", "a.example.test:8080").await;
        assert_eq!(status, 308);
        assert_eq!(location, "https://a.example.test:8443/api/x?q=1");
        let (status, seen, _) = call(&svc, "/", "plain.example.test").await;
        assert_eq!(status, 200);
        assert!(seen.starts_with("http://web.shop:80/"), "{seen}");
        assert_eq!(
            redirect("a.example.test", 443, &Uri::from_static("/x")).headers()[header::LOCATION],
            "https://a.example.test/x"
        );
    }
}
