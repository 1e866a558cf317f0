//! The proxy's connection to its control plane: the xDS stream and the CA.
//!
//! An `https://` address is dialed over TLS and the server verified against
//! the bootstrap's `root_cert_file` (read again at each connect, so a
//! rotated root file is picked up) for the address's host, under the usual
//! web PKI name rules. Once the proxy holds a workload certificate it is
//! presented as the client certificate, and the control plane checks it is
//! the workload the bearer token stands for. An `http://` address (allowed
//! by the bootstrap only to loopback) is plaintext.
//!
//! A failure names the address and, for a certificate the root does not
//! verify, says which file to check: that is what an operator who gave the
//! proxy the wrong root needs to read in its log and in `/ready`.

use super::Identity;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use sane_certs::TrustBundle;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

/// Why the control plane could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The address is not a valid URI.
    #[error("control plane address {address:?}: {source}")]
    Address {
        /// The address.
        address: String,
        /// The parse error.
        #[source]
        source: tonic::transport::Error,
    },
    /// The root file could not be read.
    #[error("reading root_cert_file {path:?} (to verify {address}): {source}")]
    RootFile {
        /// The file.
        path: String,
        /// The address it was to verify.
        address: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The root file holds no usable certificate.
    #[error("root_cert_file {path:?}: {source}")]
    Root {
        /// The file.
        path: String,
        /// What is wrong with it.
        #[source]
        source: sane_certs::Error,
    },
    /// The TLS client configuration could not be built.
    #[error("TLS client configuration for {address}: {source}")]
    Tls {
        /// The address.
        address: String,
        /// What failed.
        #[source]
        source: sane_certs::Error,
    },
    /// Connecting (TCP, TLS handshake or HTTP/2) failed.
    #[error("connecting to {address}: {reason}")]
    Connect {
        /// The address.
        address: String,
        /// The whole error chain, with a hint for certificate failures.
        reason: String,
    },
}

/// Opens TCP then TLS connections with a fixed client config, for tonic.
#[derive(Clone)]
struct TlsDial {
    config: Arc<rustls::ClientConfig>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Connects to `address` (`https://` with `root_file`, or `http://`),
/// presenting `identity`'s current certificate over TLS if it has one.
/// `tune` sets the endpoint's timeouts and keep-alives.
pub async fn connect(
    address: &str,
    root_file: &str,
    identity: Option<&Identity>,
    tune: impl FnOnce(Endpoint) -> Endpoint,
) -> Result<Channel, ConnectError> {
    let endpoint =
        Endpoint::from_shared(address.to_string()).map_err(|source| ConnectError::Address {
            address: address.to_string(),
            source,
        })?;
    let endpoint = tune(endpoint);
    let failed = |e: tonic::transport::Error| ConnectError::Connect {
        address: address.to_string(),
        reason: explain(&e, root_file),
    };
    if !address.starts_with("https://") {
        return endpoint.connect().await.map_err(failed);
    }
    let pem = std::fs::read_to_string(root_file).map_err(|source| ConnectError::RootFile {
        path: root_file.to_string(),
        address: address.to_string(),
        source,
    })?;
    let roots = TrustBundle::from_pem(&pem).map_err(|source| ConnectError::Root {
        path: root_file.to_string(),
        source,
    })?;
    let material = identity.and_then(Identity::current);
    let client = material.as_ref().map(|m| &m.identity);
    let config =
        sane_certs::control_plane_client_config(&roots, client, &[b"h2"]).map_err(|source| {
            ConnectError::Tls {
                address: address.to_string(),
                source,
            }
        })?;
    let dial = TlsDial {
        config: Arc::new(config),
    };
    endpoint.connect_with_connector(dial).await.map_err(failed)
}

/// The error chain on one line, plus what to check when the server's
/// certificate was refused.
fn explain(e: &(dyn std::error::Error + 'static), root_file: &str) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    if msg.contains("invalid peer certificate") {
        msg.push_str(&format!(
            " (the control plane's certificate does not verify against root_cert_file \
             {root_file:?}: is it the root this control plane wrote to \
             <data-dir>/root-cert.pem, and is the address one of its --tls-san names?)"
        ));
    }
    msg
}

// === impl TlsDial ===

impl tower::Service<http::Uri> for TlsDial {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let config = self.config.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or("the control plane address has no host")?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(host.clone())
                .map_err(|e| format!("{host:?} is not a valid TLS server name: {e}"))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok(TokioIo::new(tls))
        })
    }
}
