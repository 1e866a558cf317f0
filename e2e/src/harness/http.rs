//! HTTP, WebSocket and TCP clients for tests.
//!
//! Requests to the mesh use the service's name in the URI (`http://echo/`),
//! exactly as an application would, while the connection goes to the client
//! sidecar's outbound listener: a [`Dialer`] with an override sends every
//! connection to one address. That keeps `Host`/`:authority` right for both
//! HTTP/1 and HTTP/2 without faking headers.

use bytes::Bytes;
use futures::Stream;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;

/// The error type of request bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The request body of every helper: full, empty or streamed.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;
/// A pooled client (hyper-util's legacy client) over a [`Dialer`].
pub type HttpClient = Client<Dialer, Body>;

/// Opens TCP connections for the HTTP and gRPC clients: to the URI's host and
/// port, or always to one fixed address.
#[derive(Clone, Copy, Debug, Default)]
pub struct Dialer {
    to: Option<SocketAddr>,
}

/// A response with its body read.
#[derive(Clone, Debug)]
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// HTTP version the response came with.
    pub version: Version,
    /// Response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// Trailers, if any were sent.
    pub trailers: Option<HeaderMap>,
}

/// An HTTP/1.1 client that connects to each URI's own address.
pub fn http1_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build(Dialer::default())
}

/// A prior-knowledge HTTP/2 (h2c) client that connects to each URI's own
/// address.
pub fn h2c_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(Dialer::default())
}

/// An HTTP/1.1 client whose connections all go to `addr` (e.g. an outbound
/// listener), whatever the URI says.
pub fn http1_client_via(addr: SocketAddr) -> HttpClient {
    Client::builder(TokioExecutor::new()).build(Dialer::to(addr))
}

/// An h2c client whose connections all go to `addr`.
pub fn h2c_client_via(addr: SocketAddr) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(Dialer::to(addr))
}

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::new()
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// A body streamed from `chunks` (sent chunked over HTTP/1).
pub fn streamed<S>(chunks: S) -> Body
where
    S: Stream<Item = Bytes> + Send + 'static,
{
    use futures::StreamExt;
    StreamBody::new(chunks.map(|c| Ok::<_, BoxError>(Frame::data(c)))).boxed_unsync()
}

/// `GET uri` with an empty body.
pub fn get(uri: &str) -> Request<Body> {
    request(Method::GET, uri, empty())
}

/// A request with `method`, `uri` and `body`. Panics on an invalid URI.
pub fn request(method: Method, uri: &str, body: Body) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .body(body)
        .unwrap_or_else(|e| panic!("invalid request {uri:?}: {e}"))
}

/// Sends `req` on `client` (an [`HttpClient`], or an
/// [`super::https::HttpsClient`]) and reads the whole response.
pub async fn send<C>(client: &Client<C, Body>, req: Request<Body>) -> Result<Reply, String>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let what = format!("{} {}", req.method(), req.uri());
    let rsp = client
        .request(req)
        .await
        .map_err(|e| format!("{what}: {}", error_chain(&e)))?;
    Reply::read(rsp).await.map_err(|e| format!("{what}: {e}"))
}

/// Sends one request on a new HTTP/1.1 connection to `addr`, with no pool
/// in between. The connection supports upgrades.
pub async fn send_http1(
    addr: SocketAddr,
    req: Request<Body>,
) -> Result<Response<Incoming>, String> {
    let io = TokioIo::new(
        TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))?,
    );
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP/1 handshake with {addr}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    sender
        .send_request(req)
        .await
        .map_err(|e| format!("HTTP/1 request to {addr}: {}", error_chain(&e)))
}

/// Sends one request on a new h2c connection to `addr`. The URI must be
/// absolute (`http://host/path`): HTTP/2 needs `:scheme` and `:authority`.
pub async fn send_h2c(addr: SocketAddr, req: Request<Body>) -> Result<Response<Incoming>, String> {
    let io = TokioIo::new(
        TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))?,
    );
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .map_err(|e| format!("HTTP/2 handshake with {addr}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
        .send_request(req)
        .await
        .map_err(|e| format!("HTTP/2 request to {addr}: {}", error_chain(&e)))
}

/// Opens a WebSocket to `url` (e.g. `ws://echo/ws`) over a TCP connection to
/// `dial`.
pub async fn ws_connect(dial: SocketAddr, url: &str) -> Result<WebSocketStream<TcpStream>, String> {
    let tcp = TcpStream::connect(dial)
        .await
        .map_err(|e| format!("connecting to {dial}: {e}"))?;
    let (ws, _rsp) = tokio_tungstenite::client_async(url, tcp)
        .await
        .map_err(|e| format!("WebSocket handshake for {url} via {dial}: {e}"))?;
    Ok(ws)
}

/// Writes `payload` to a TCP connection to `addr`, closes the write side, and
/// returns everything read back until the peer closed. Reads while writing,
/// so payloads larger than the socket buffers cannot deadlock.
pub async fn tcp_roundtrip(addr: SocketAddr, payload: &[u8]) -> Result<Vec<u8>, String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let (mut read, mut write) = stream.split();
    let send = async {
        write.write_all(payload).await?;
        write.shutdown().await
    };
    let mut back = Vec::with_capacity(payload.len());
    let receive = read.read_to_end(&mut back);
    let (sent, received) = tokio::join!(send, receive);
    sent.map_err(|e| format!("writing to {addr}: {e}"))?;
    received.map_err(|e| format!("reading from {addr}: {e}"))?;
    Ok(back)
}

/// An error and its sources, `: `-separated (hyper's top-level messages alone
/// rarely say what happened).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

// === impl Dialer ===

impl Dialer {
    /// A dialer that connects to `addr` whatever the URI says.
    pub fn to(addr: SocketAddr) -> Self {
        Self { to: Some(addr) }
    }
}

impl tower::Service<Uri> for Dialer {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let fixed = self.to;
        Box::pin(async move {
            let stream = match fixed {
                Some(addr) => TcpStream::connect(addr).await?,
                None => {
                    let host = uri.host().ok_or_else(|| {
                        io::Error::new(io::ErrorKind::InvalidInput, format!("{uri} has no host"))
                    })?;
                    let host = host.trim_start_matches('[').trim_end_matches(']');
                    let port = uri.port_u16().unwrap_or(80);
                    TcpStream::connect((host, port)).await?
                }
            };
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(stream))
        })
    }
}

// === impl Reply ===

impl Reply {
    /// Reads the whole body (and trailers) of `rsp`.
    pub async fn read(rsp: Response<Incoming>) -> Result<Reply, String> {
        let (parts, body) = rsp.into_parts();
        let collected = body.collect().await.map_err(|e| {
            format!(
                "reading the {} response body: {}",
                parts.status,
                error_chain(&e)
            )
        })?;
        let trailers = collected.trailers().cloned();
        Ok(Reply {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body: collected.to_bytes(),
            trailers,
        })
    }

    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value, String> {
        serde_json::from_slice(&self.body)
            .map_err(|e| format!("body is not JSON ({e}): {:?}", self.text()))
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The value of header `name`, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A response read off a raw socket by [`raw_http1`].
#[derive(Clone, Debug)]
pub struct RawReply {
    /// The status code.
    pub status: u16,
    /// Header fields in order, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body as text (lossy).
    pub body: String,
}

impl RawReply {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        (self.headers.iter())
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Status, flags and body on one line, for assertion messages.
    pub fn summary(&self) -> String {
        format!(
            "{} flags={:?} body={:?}",
            self.status,
            self.header("x-sane-response-flags"),
            self.body
        )
    }
}

/// Writes `request` as it is (no client normalizes it: raw paths, repeated
/// headers, conflicting lengths reach the server verbatim) and reads the
/// first response until the server closes; the request should say
/// `Connection: close`. Bodies are read as sent (`Content-Length` or to the
/// end; chunked bodies are returned undecoded).
pub async fn raw_http1(addr: SocketAddr, request: &[u8]) -> Result<RawReply, String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    stream
        .write_all(request)
        .await
        .map_err(|e| format!("writing to {addr}: {e}"))?;
    let mut back = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        stream.read_to_end(&mut back),
    );
    match read.await {
        Ok(Ok(_)) => {}
        // A reset after the answer (the server closed with unread input).
        Ok(Err(_)) if !back.is_empty() => {}
        Ok(Err(e)) => return Err(format!("reading from {addr}: {e}")),
        Err(_) => return Err(format!("{addr} did not close within 20s")),
    }
    let text = String::from_utf8_lossy(&back).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no complete response head from {addr}: {text:?}"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = match (headers.iter())
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        Some(n) => body.get(..n).unwrap_or(body).to_string(),
        None => body.to_string(),
    };
    Ok(RawReply {
        status,
        headers,
        body,
    })
}
