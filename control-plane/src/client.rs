//! A small client of the HTTP API, used by `sanectl` and the tests, and the
//! TLS connector both it and gRPC clients of the xDS port use.
//!
//! Built on hyper-util's client (already in the dependency tree) rather than
//! reqwest: the API is one local or cluster address, and this keeps the CLI
//! free of a second HTTP stack. `https://` URLs are verified against the
//! mesh root (`--ca-file`, the control plane's `root-cert.pem`) with the
//! certs crate's rustls config; [`TlsConnector`] does the TCP + TLS part.

use crate::error::Error;
use crate::resource::{Kind, Resource};
use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sane_certs::{CertifiedIdentity, TrustBundle};
use sane_xds_proto::MeshResources;
use serde_json::Value;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;

/// A client of one control plane's API.
#[derive(Clone)]
pub struct ApiClient {
    base: String,
    token: Option<String>,
    http: Client<TlsConnector, Full<Bytes>>,
}

/// Opens TCP connections, then, for `https` URIs, a TLS session verified
/// against the mesh root. A `tower::Service<Uri>` for hyper-util's client
/// and for tonic's `Endpoint::connect_with_connector`.
#[derive(Clone)]
pub struct TlsConnector {
    tcp: HttpConnector,
    tls: Option<tokio_rustls::TlsConnector>,
}

/// A connection [`TlsConnector`] opened.
#[derive(Debug)]
pub enum MaybeTls {
    /// `http://`.
    Plain(TokioIo<TcpStream>),
    /// `https://`.
    Tls(Box<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What `apply` did to one resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// Kind of the resource.
    pub kind: Kind,
    /// Its key.
    pub key: String,
    /// `created`, `updated` or `unchanged`.
    pub outcome: String,
}

// === impl ApiClient ===

impl ApiClient {
    /// A client of `base` (`http://127.0.0.1:15080`), sending `token` on
    /// writes. An `https://` base needs [`ApiClient::with_roots`].
    pub fn new(base: &str, token: Option<String>) -> ApiClient {
        Self::build(base, token, TlsConnector::plain())
    }

    /// A client of `base` (`https://…`) that trusts `roots` (the mesh root
    /// the control plane writes to `root-cert.pem`, or the operator's CA of
    /// `--api-tls-cert`).
    pub fn with_roots(
        base: &str,
        token: Option<String>,
        roots: &TrustBundle,
    ) -> Result<ApiClient, Error> {
        let connector = TlsConnector::new(roots, None, &[b"http/1.1"])?;
        Ok(Self::build(base, token, connector))
    }

    fn build(base: &str, token: Option<String>, connector: TlsConnector) -> ApiClient {
        ApiClient {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// Sends a request; returns the status and body whatever the status.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        token: Option<&str>,
    ) -> Result<(StatusCode, Bytes), Error> {
        let url = format!("{}{path}", self.base);
        let failed = |message: String| Error::Request {
            method: method.clone(),
            url: url.clone(),
            message,
        };
        let mut req = Request::builder().method(method.clone()).uri(&url);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| failed(e.to_string()))?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| failed(error_chain(&e)))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| failed(e.to_string()))?
            .to_bytes();
        Ok((status, bytes))
    }

    /// Sends a request with the client's token; a non-2xx status is an
    /// [`Error::Api`] carrying the server's `error` message.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, Error> {
        let bytes = body.map(|b| serde_json::to_vec(b).unwrap_or_default());
        self.bytes(method, path, bytes).await
    }

    /// Like [`ApiClient::json`], with a body sent as it is (the YAML of
    /// `POST /api/v1/istio`).
    pub async fn bytes(
        &self,
        method: Method,
        path: &str,
        bytes: Option<Vec<u8>>,
    ) -> Result<Value, Error> {
        let (status, resp) = self
            .send(method.clone(), path, bytes, self.token.as_deref())
            .await?;
        let parsed: Option<Value> = serde_json::from_slice(&resp).ok();
        if !status.is_success() {
            let message = parsed
                .as_ref()
                .and_then(|v| v.get("error"))
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&resp).into_owned());
            return Err(Error::Api {
                method,
                url: format!("{}{path}", self.base),
                status,
                message,
            });
        }
        Ok(parsed.unwrap_or(Value::Null))
    }

    /// `PUT`s one resource (with a lease for endpoints if `ttl` is set).
    pub async fn put(&self, resource: &Resource, ttl: Option<Duration>) -> Result<Value, Error> {
        let mut path = resource_path(resource.kind(), &resource.key());
        if let Some(ttl) = ttl {
            path.push_str(&format!("?ttl={}s", ttl.as_secs().max(1)));
        }
        self.json(Method::PUT, &path, Some(&resource.to_json()))
            .await
    }

    /// Lists resources of `kind`: `{"revision": .., "items": [..]}`.
    pub async fn list(&self, kind: Kind) -> Result<Value, Error> {
        self.json(Method::GET, &format!("/api/v1/{}", kind.plural()), None)
            .await
    }

    /// Gets one resource.
    pub async fn get(&self, kind: Kind, key: &str) -> Result<Value, Error> {
        self.json(Method::GET, &resource_path(kind, key), None)
            .await
    }

    /// Deletes one resource.
    pub async fn delete(&self, kind: Kind, key: &str) -> Result<Value, Error> {
        self.json(Method::DELETE, &resource_path(kind, key), None)
            .await
    }

    /// The proxy status table.
    pub async fn proxies(&self) -> Result<Value, Error> {
        self.json(Method::GET, "/api/v1/proxies", None).await
    }

    /// What one proxy was last sent.
    pub async fn proxy_config(&self, id: &str) -> Result<Value, Error> {
        let path = format!("/api/v1/proxies/{}/config", encode_segment(id));
        self.json(Method::GET, &path, None).await
    }

    /// Puts every resource of `mesh`, services first so references resolve.
    /// Stops at the first failure (earlier resources stay applied).
    pub async fn apply(&self, mesh: MeshResources) -> Result<Vec<Applied>, Error> {
        let mut out = Vec::new();
        for (_, resource) in Resource::from_mesh(mesh) {
            let resp = self.put(&resource, None).await?;
            let outcome = resp
                .get("outcome")
                .and_then(Value::as_str)
                .unwrap_or("applied")
                .to_string();
            out.push(Applied {
                kind: resource.kind(),
                key: resource.key(),
                outcome,
            });
        }
        Ok(out)
    }
}

impl fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiClient")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

// === impl TlsConnector ===

impl TlsConnector {
    /// Plain TCP only; an `https` URI fails with a message saying what is
    /// missing.
    pub fn plain() -> TlsConnector {
        TlsConnector {
            tcp: tcp_connector(),
            tls: None,
        }
    }

    /// TCP, then TLS for `https` URIs: the server must chain to `roots` and
    /// be valid for the URI's host; `client` is presented if given (a
    /// workload certificate: mutual TLS). `alpn`: `h2` for gRPC,
    /// `http/1.1` for the API.
    pub fn new(
        roots: &TrustBundle,
        client: Option<&CertifiedIdentity>,
        alpn: &[&[u8]],
    ) -> Result<TlsConnector, Error> {
        let config =
            sane_certs::control_plane_client_config(roots, client, alpn).map_err(|source| {
                Error::Tls {
                    name: "client",
                    source: Box::new(source),
                }
            })?;
        Ok(TlsConnector {
            tcp: tcp_connector(),
            tls: Some(tokio_rustls::TlsConnector::from(Arc::new(config))),
        })
    }
}

fn tcp_connector() -> HttpConnector {
    let mut tcp = HttpConnector::new();
    tcp.set_connect_timeout(Some(Duration::from_secs(5)));
    tcp.set_nodelay(true);
    // The scheme is this connector's business, not HttpConnector's.
    tcp.enforce_http(false);
    tcp
}

impl tower::Service<http::Uri> for TlsConnector {
    type Response = MaybeTls;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<MaybeTls, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let https = uri.scheme_str() == Some("https");
        let tls = self.tls.clone();
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let connect = self.tcp.call(uri);
        Box::pin(async move {
            let tcp = connect.await?;
            if !https {
                return Ok(MaybeTls::Plain(tcp));
            }
            let Some(tls) = tls else {
                return Err("an https:// URL needs the mesh root to verify the server \
                            (sanectl --ca-file, the control plane's root-cert.pem)"
                    .into());
            };
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| format!("{host:?} is not a valid TLS server name: {e}"))?;
            let stream = tls.connect(name, tcp.into_inner()).await?;
            Ok(MaybeTls::Tls(Box::new(TokioIo::new(stream))))
        })
    }
}

impl fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnector")
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

// === impl MaybeTls ===

impl Connection for MaybeTls {
    fn connected(&self) -> Connected {
        let connected = Connected::new();
        match self {
            MaybeTls::Tls(tls) if tls.inner().get_ref().1.alpn_protocol() == Some(b"h2") => {
                connected.negotiated_h2()
            }
            _ => connected,
        }
    }
}

impl hyper::rt::Read for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(io) => Pin::new(io).poll_read(cx, buf),
            MaybeTls::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(io) => Pin::new(io).poll_write(cx, buf),
            MaybeTls::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(io) => Pin::new(io).poll_flush(cx),
            MaybeTls::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(io) => Pin::new(io).poll_shutdown(cx),
            MaybeTls::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}

/// `/api/v1/<kind>/<key>`, each key segment percent-encoded.
pub fn resource_path(kind: Kind, key: &str) -> String {
    let segments: Vec<String> = key.split('/').map(encode_segment).collect();
    format!("/api/v1/{}/{}", kind.plural(), segments.join("/"))
}

fn encode_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}
