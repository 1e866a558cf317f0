//! HTTPS to the control plane's API, verified against the mesh root it
//! wrote (`<data-dir>/root-cert.pem`), as `sanectl --ca-file` does.
//!
//! The client is hyper-util's, like [`super::http`]'s, over a dialer that
//! adds TLS (with the certs crate's control-plane client config) for
//! `https` URIs; [`super::http::send`] takes either. [`grpc_channel`] is
//! the same dialer under a tonic channel (ALPN `h2`), for raw xDS clients.
//! [`https_get`] is one request to an ingress gateway's HTTPS listener,
//! verified against a test CA whose host certificate [`write_secret`]
//! writes where a gateway reads Secrets.

use super::http::{Body, BoxError};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use sane_certs::TrustBundle;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::net::TcpStream;

/// A pooled HTTP/1.1 client for `https://` URLs trusting one root.
pub type HttpsClient = Client<TlsDialer, Body>;

/// TCP to the URI's host and port, then TLS verified for that host.
#[derive(Clone, Debug)]
pub struct TlsDialer {
    config: Arc<rustls::ClientConfig>,
}

/// A TLS connection the dialer opened.
#[derive(Debug)]
pub struct TlsIo(TokioIo<tokio_rustls::client::TlsStream<TcpStream>>);

/// A client trusting the PEM roots in `root_file`. Panics if the file is
/// unreadable or holds no certificate (a harness bug).
pub fn https_client(root_file: &Path) -> HttpsClient {
    let pem = std::fs::read_to_string(root_file)
        .unwrap_or_else(|e| panic!("reading {}: {e}", root_file.display()));
    let roots = TrustBundle::from_pem(&pem)
        .unwrap_or_else(|e| panic!("root file {}: {e}", root_file.display()));
    let config = sane_certs::control_plane_client_config(&roots, None, &[b"http/1.1"])
        .expect("a client config for the mesh root");
    Client::builder(TokioExecutor::new()).build(TlsDialer {
        config: Arc::new(config),
    })
}

/// A gRPC (HTTP/2) channel to `url` (`https://…`, verified against the
/// roots in `root_file`; `http://` dials plaintext), for tests that speak
/// xDS or the CA as a raw client would.
pub async fn grpc_channel(
    url: &str,
    root_file: &Path,
) -> Result<tonic::transport::Channel, String> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| format!("{url}: {e}"))?;
    if !url.starts_with("https://") {
        return endpoint.connect().await.map_err(|e| format!("{url}: {e}"));
    }
    let pem = std::fs::read_to_string(root_file)
        .map_err(|e| format!("reading {}: {e}", root_file.display()))?;
    let roots = TrustBundle::from_pem(&pem).map_err(|e| format!("{}: {e}", root_file.display()))?;
    let config = sane_certs::control_plane_client_config(&roots, None, &[b"h2"])
        .map_err(|e| format!("a client config for {}: {e}", root_file.display()))?;
    let dialer = TlsDialer {
        config: Arc::new(config),
    };
    endpoint
        .connect_with_connector(dialer)
        .await
        .map_err(|e| format!("{url}: {e:?}"))
}

// === impl TlsDialer ===

impl tower::Service<http::Uri> for TlsDialer {
    type Response = TlsIo;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<TlsIo, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let config = self.config.clone();
        Box::pin(async move {
            if uri.scheme_str() != Some("https") {
                return Err(format!("{uri}: the HTTPS client only dials https:// URLs").into());
            }
            let host = uri
                .host()
                .ok_or_else(|| format!("{uri} has no host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let tcp = TcpStream::connect((host.as_str(), uri.port_u16().unwrap_or(443))).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(host)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok(TlsIo(TokioIo::new(tls)))
        })
    }
}

// === impl TlsIo ===

impl Connection for TlsIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for TlsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for TlsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A test CA for outside clients and a certificate for `host` signed by
/// it, written as the files of a `kubernetes.io/tls` Secret,
/// `<credentials>/<secret>/tls.crt` and `tls.key` (where a gateway reads
/// Secrets named by Istio's `credentialName` or a Gateway API
/// `certificateRefs`). Returns the CA's certificate (PEM), the roots for
/// [`https_get`]. Panics on a harness failure.
pub fn write_secret(credentials: &Path, secret: &str, host: &str, organization: &str) -> String {
    let mut options = sane_certs::CaOptions::default();
    options.organization = organization.into();
    let td = sane_certs::TrustDomain::new("example.com").expect("a valid trust domain");
    let ca = sane_certs::CertificateAuthority::generate(&td, options).expect("a test CA");
    let (cert, key) = ca
        .sign_external_server_cert(&[host.to_string()], std::time::Duration::from_secs(3600))
        .expect("a host certificate");
    let dir = credentials.join(secret);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    std::fs::write(dir.join("tls.key"), key).expect("writing tls.key");
    std::fs::write(dir.join("tls.crt"), cert).expect("writing tls.crt");
    ca.chain_pem()
}

/// `GET https://{host}{path}` sent to `addr` with SNI `host`, the server's
/// certificate verified for `host` against `roots_pem`, on a connection of
/// its own.
pub async fn https_get(
    addr: std::net::SocketAddr,
    host: &str,
    path: &str,
    roots_pem: &str,
) -> Result<super::http::Reply, String> {
    let roots = TrustBundle::from_pem(roots_pem).map_err(|e| e.to_string())?;
    let config = sane_certs::control_plane_client_config(&roots, None, &[b"http/1.1"])
        .map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let name = ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS to {addr} as {host}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = super::http::request(http::Method::GET, path, super::http::full(""));
    req.headers_mut().insert(
        http::header::HOST,
        host.parse().map_err(|e| format!("host {host:?}: {e}"))?,
    );
    let rsp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    super::http::Reply::read(rsp).await
}
