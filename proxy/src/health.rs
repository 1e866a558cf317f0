//! The health port: plain HTTP for the kubelet, next to the mesh listeners.
//!
//! In an injected pod every inbound connection is redirected to the sidecar,
//! and a STRICT listener refuses the kubelet's plaintext probes. The injector
//! therefore points every app probe at this server (the health port is
//! excluded from redirection) and records the original probe; this server
//! runs it against the app over loopback and answers 200 or 503.
//!
//! * `GET /healthz/ready`: the proxy's own readiness, as the admin `/ready`.
//! * `GET /app-health/<container>/<probe>`: runs the recorded [`AppProbe`].
//!
//! Nothing else is served: unlike the admin server this one is reachable
//! from the network, so it exposes no config, metrics or controls.

use crate::admin::readiness_response;
use crate::body::{self, Body};
use crate::drain::{Drain, Readiness};
use crate::protocol::local::{serve_local, text};
use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus::IntCounter;
use sane_xds_proto::{AppProbe, GrpcProbe, HttpGetProbe};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The health server's state.
#[derive(Clone, Debug)]
pub struct HealthServer {
    /// The proxy's readiness.
    pub readiness: Readiness,
    /// Drain state (a draining proxy is not ready).
    pub drain: Drain,
    /// The app's original probes by rewritten path.
    pub probes: Arc<BTreeMap<String, AppProbe>>,
}

/// Why an app probe failed; the text is the 503 body.
#[derive(Debug, thiserror::Error)]
pub enum ProbeFailure {
    /// No answer within the probe's timeout.
    #[error("no answer from the app within {0:?}")]
    Timeout(Duration),
    /// The app's port refused or dropped the connection.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// The app address probed.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The HTTP(S) exchange failed.
    #[error("http probe of {addr}: {reason}")]
    Http {
        /// The app address probed.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// The app answered with a failing status.
    #[error("http probe of {addr}{path}: status {status}")]
    Status {
        /// The app address probed.
        addr: SocketAddr,
        /// The path probed.
        path: String,
        /// The app's status.
        status: StatusCode,
    },
    /// The gRPC health check failed or did not answer SERVING.
    #[error("grpc health check of {addr}: {reason}")]
    Grpc {
        /// The app address probed.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
}

// === impl HealthServer ===

impl HealthServer {
    /// Serves until `stop` is cancelled.
    /// Connections over the cap are counted in `rejected`.
    pub async fn serve(self, socket: TcpListener, stop: CancellationToken, rejected: IntCounter) {
        let server = Arc::new(self);
        serve_local("health", socket, stop, rejected, move |req| {
            let server = server.clone();
            async move { server.handle(req).await }
        })
        .await;
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path();
        if req.method() != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served\n");
        }
        if path == "/healthz/ready" {
            return readiness_response(&self.readiness, &self.drain);
        }
        let Some(probe) = self.probes.get(path) else {
            return text(StatusCode::NOT_FOUND, "no such probe\n");
        };
        match run(probe).await {
            Ok(()) => text(StatusCode::OK, "ok\n"),
            Err(e) => {
                tracing::debug!(probe = path, error = %e, "app probe failed");
                text(StatusCode::SERVICE_UNAVAILABLE, &format!("{e}\n"))
            }
        }
    }
}

/// Runs `probe` against the app on loopback, within its timeout.
pub async fn run(probe: &AppProbe) -> Result<(), ProbeFailure> {
    let timeout = probe.timeout();
    let attempt = async {
        if let Some(h) = &probe.http_get {
            http_get(h).await
        } else if let Some(t) = &probe.tcp_socket {
            let addr = loopback(t.port);
            TcpStream::connect(addr)
                .await
                .map(drop)
                .map_err(|source| ProbeFailure::Connect { addr, source })
        } else if let Some(g) = &probe.grpc {
            grpc(g).await
        } else {
            // validate() requires exactly one action.
            Ok(())
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| ProbeFailure::Timeout(timeout))?
}

fn loopback(port: u32) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port as u16))
}

async fn http_get(probe: &HttpGetProbe) -> Result<(), ProbeFailure> {
    let addr = loopback(probe.port);
    let path = if probe.path.is_empty() {
        "/".to_string()
    } else {
        probe.path.clone()
    };
    let http_err = |reason: String| ProbeFailure::Http { addr, reason };
    let mut req = Request::get(&path)
        .header(header::HOST, addr.to_string())
        .header(header::USER_AGENT, "sane-probe/1.0")
        .body(body::empty())
        .map_err(|e| http_err(e.to_string()))?;
    for h in &probe.http_headers {
        let name = header::HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|e| http_err(format!("header {:?}: {e}", h.name)))?;
        let value = header::HeaderValue::from_str(&h.value)
            .map_err(|e| http_err(format!("header {:?}: {e}", h.name)))?;
        req.headers_mut().insert(name, value);
    }
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|source| ProbeFailure::Connect { addr, source })?;
    let status = if probe.scheme == "HTTPS" {
        let tls =
            tokio_rustls::TlsConnector::from(Arc::new(sane_certs::tls::probe_client_config()));
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let stream = tls
            .connect(name, tcp)
            .await
            .map_err(|e| http_err(format!("TLS handshake: {e}")))?;
        send(stream, req).await
    } else {
        send(tcp, req).await
    }
    .map_err(|e| http_err(e.to_string()))?;
    // As the kubelet: any 2xx or 3xx (redirects are not followed) is healthy.
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(ProbeFailure::Status { addr, path, status })
    }
}

/// One HTTP/1.1 exchange on `io`; returns the status.
async fn send<IO>(io: IO, req: Request<Body>) -> Result<StatusCode, hyper::Error>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender.send_request(req).await?.status())
}

async fn grpc(probe: &GrpcProbe) -> Result<(), ProbeFailure> {
    use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};
    let addr = loopback(probe.port);
    let grpc_err = |reason: String| ProbeFailure::Grpc { addr, reason };
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| grpc_err(e.to_string()))?
        .connect()
        .await
        .map_err(|e| grpc_err(format!("connect: {e}")))?;
    let rsp = HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: probe.service.clone().unwrap_or_default(),
        })
        .await
        .map_err(|s| grpc_err(format!("{:?}: {}", s.code(), s.message())))?;
    match rsp.into_inner().status() {
        ServingStatus::Serving => Ok(()),
        other => Err(grpc_err(format!("status {}", other.as_str_name()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sane_xds_proto::{ProbeHeader, TcpSocketProbe};

    /// A one-shot HTTP server on loopback answering `status`; returns its
    /// port and the request head it received.
    async fn http_app(status: u16) -> (u32, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = u32::from(l.local_addr().unwrap().port());
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "the probe closed before its request ended");
                head.extend_from_slice(&buf[..n]);
            }
            let rsp = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
            s.write_all(rsp.as_bytes()).await.unwrap();
            String::from_utf8(head).unwrap()
        });
        (port, task)
    }

    fn http_probe(port: u32, path: &str) -> AppProbe {
        AppProbe {
            http_get: Some(HttpGetProbe {
                path: path.into(),
                port,
                scheme: "HTTP".into(),
                http_headers: vec![ProbeHeader {
                    name: "x-probe".into(),
                    value: "yes".into(),
                }],
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn http_probe_sends_path_and_headers_and_accepts_2xx_3xx() {
        for status in [200, 204, 302] {
            let (port, app) = http_app(status).await;
            run(&http_probe(port, "/ready")).await.unwrap();
            let head = app.await.unwrap();
            assert!(head.starts_with("GET /ready HTTP/1.1\r\n"), "{head}");
            assert!(head.contains("x-probe: yes\r\n"), "{head}");
        }
    }

    #[tokio::test]
    async fn http_probe_fails_on_4xx_5xx_naming_the_status() {
        for status in [404, 500] {
            let (port, _app) = http_app(status).await;
            let err = run(&http_probe(port, "/ready")).await.unwrap_err();
            assert!(
                matches!(err, ProbeFailure::Status { status: s, .. } if s.as_u16() == status),
                "{err}"
            );
            assert!(err
                .to_string()
                .contains(&format!("/ready: status {status}")));
        }
    }

    #[tokio::test]
    async fn tcp_probe_needs_a_listening_port() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = u32::from(l.local_addr().unwrap().port());
        let probe = AppProbe {
            tcp_socket: Some(TcpSocketProbe { port }),
            ..Default::default()
        };
        run(&probe).await.unwrap();
        drop(l);
        let err = run(&probe).await.unwrap_err();
        assert!(matches!(err, ProbeFailure::Connect { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_silent_app_fails_at_the_probe_timeout() {
        // Accepts (kernel backlog) but never answers.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = u32::from(l.local_addr().unwrap().port());
        let mut probe = http_probe(port, "/");
        probe.timeout_seconds = 1;
        let err = run(&probe).await.unwrap_err();
        assert!(matches!(err, ProbeFailure::Timeout(_)), "{err}");
    }

    #[tokio::test]
    async fn grpc_probe_reads_the_serving_status() {
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("app", tonic_health::ServingStatus::NotServing)
            .await;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = u32::from(l.local_addr().unwrap().port());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
        );
        let probe = |service: Option<&str>| AppProbe {
            grpc: Some(GrpcProbe {
                port,
                service: service.map(String::from),
            }),
            ..Default::default()
        };
        run(&probe(None)).await.unwrap();
        let err = run(&probe(Some("app"))).await.unwrap_err();
        assert!(err.to_string().contains("NOT_SERVING"), "{err}");
    }
}
