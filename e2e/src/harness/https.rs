//! HTTPS to the control plane's API, verified against the mesh root it
//! wrote (`<data-dir>/root-cert.pem`), as `sanectl --ca-file` does.
//!
//! The client is hyper-util's, like [`super::http`]'s, over a dialer that
//! adds TLS (with the certs crate's control-plane client config) for
//! `https` URIs; [`super::http::send`] takes either. [`grpc_channel`] is
//! the same dialer under a tonic channel (ALPN `h2`), for raw xDS clients.

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
