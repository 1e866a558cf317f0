//! Sending requests and opening streams to endpoints.
//!
//! Picks the wire protocol for the hop: to a peer sidecar, HTTP/2 (every
//! request multiplexed on one connection) or, for requests that upgrade the
//! connection, a dedicated HTTP/1.1 connection; to a workload without a
//! sidecar, the protocol its port declares.
//!
//! Every response that came over mutual TLS carries the peer's verified
//! SPIFFE id as an [`UpstreamPeer`] extension (remembered with the pooled
//! connection), so the observe stage can name the destination principal.

pub mod connect;
pub mod http1;
pub mod http2;
pub mod pool;

use self::connect::Connect;
use self::http1::{Exchange, H1Body};
use self::http2::{H2Body, SendError};
use self::pool::{H1Conn, H1Pool, H2Pool, H2Stream, PoolKey, StreamSlot};
use crate::body::{Body, BoxError};
use crate::error::ProxyError;
use crate::policy::replay::ReplayBody;
use crate::protocol::http as h;
use crate::protocol::io::BoxIo;
use crate::protocol::transport_header::{Framing, TransportHeader};
use crate::tls::{Identity, PeerIdentity};
use http::{Request, Response};
use sane_xds_proto::Protocol;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// The peer a connection proved, if it was mutual TLS.
type Peer = Option<UpstreamPeer>;

/// A response, the peer its connection proved, and (HTTP/2) the stream it
/// holds on a pooled connection.
type Sent = (Response<Received>, Peer, Option<StreamSlot>);

/// A response body as it came: read by hyper (HTTP/1.1) or from an HTTP/2
/// stream.
#[derive(Debug)]
enum Received {
    Http1(H1Body),
    Http2(H2Body),
}

/// Request body bytes kept to resend a request whose reused connection was
/// closed under it.
const RACE_REPLAY_BYTES: usize = 64 * 1024;

/// True if `e` says the connection ended (closed or reset) before a
/// response head arrived, as opposed to a timeout or a bad response.
fn closed_before_response(e: &hyper::Error) -> bool {
    if e.is_incomplete_message() || e.is_closed() || e.is_canceled() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            );
        }
        source = s.source();
    }
    false
}

/// Whether `req` goes to `target` as HTTP/2: when the workload's port
/// speaks it (`http2`, `grpc`), and to a peer sidecar unless the
/// destination keeps HTTP/1.1 requests HTTP/1.1 (`preserve_http1`). Shared
/// HTTP/2 connections are the cheaper hop under load: requests in flight
/// together share reads, writes and TLS records.
fn hop_is_h2<B>(req: &Request<B>, target: &Target) -> bool {
    matches!(target.protocol, Protocol::Http2 | Protocol::Grpc)
        || (target.via_sidecar.is_some()
            && (!target.preserve_http1 || req.version() == http::Version::HTTP_2))
}

/// How to reach one endpoint.
#[derive(Clone, Debug)]
pub struct Target {
    /// Address to connect to.
    pub addr: SocketAddr,
    /// Workload port to announce when `addr` is a peer sidecar.
    pub via_sidecar: Option<u16>,
    /// Protocol the workload speaks (decides the hop protocol when direct).
    pub protocol: Protocol,
    /// HTTP/1.1 requests go to a peer sidecar as HTTP/1.1 rather than as
    /// HTTP/2 streams (a destination policy's `peer_protocol: preserve`).
    pub preserve_http1: bool,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Idle timeout of pooled HTTP/1.1 connections.
    pub idle_timeout: Duration,
    /// The SPIFFE id the endpoint is expected to present (empty: not
    /// configured).
    pub identity: Arc<str>,
}

/// A response body from an endpoint. On a pooled HTTP/2 connection it
/// holds its stream's place until it ends or is dropped, so the pool knows
/// how many streams each connection carries.
#[derive(Debug)]
pub struct UpstreamBody {
    inner: Received,
    slot: Option<StreamSlot>,
}

/// The identity the upstream proved in the mutual TLS handshake of the
/// connection a response came over; in the response's extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamPeer(pub PeerIdentity);

/// Connection pools and the connector they dial with.
#[derive(Debug)]
pub struct Upstream {
    connector: Arc<dyn Connect>,
    identity: Arc<Identity>,
    h2: H2Pool,
    h1: Arc<H1Pool>,
    /// Most header fields a response may carry (`http.max_response_headers`).
    max_response_headers: usize,
}

// === impl UpstreamBody ===

impl http_body::Body for UpstreamBody {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, BoxError>>> {
        use std::pin::Pin;
        let polled = match &mut self.inner {
            Received::Http1(b) => Pin::new(b).poll_frame(cx).map_err(BoxError::from),
            Received::Http2(b) => Pin::new(b).poll_frame(cx).map_err(BoxError::from),
        };
        if let std::task::Poll::Ready(None | Some(Err(_))) = polled {
            self.slot = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Received::Http1(b) => b.is_end_stream(),
            Received::Http2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.inner {
            Received::Http1(b) => b.size_hint(),
            Received::Http2(b) => b.size_hint(),
        }
    }
}

// === impl Upstream ===

impl Upstream {
    /// Pools that open connections with `connector`.
    pub fn new(connector: Arc<dyn Connect>, identity: Arc<Identity>) -> Self {
        Self {
            connector,
            identity,
            h2: H2Pool::default(),
            h1: Arc::new(H1Pool::default()),
            max_response_headers: sane_xds_proto::DEFAULT_MAX_RESPONSE_HEADERS as usize,
        }
    }

    /// Sets the most header fields a response may carry; one with more
    /// fails the request with `502 UPE`.
    pub fn with_max_response_headers(mut self, max: usize) -> Self {
        self.max_response_headers = max;
        self
    }

    /// Whether (and as whom) a connection to `target` uses mutual TLS: to a
    /// peer sidecar whenever this proxy has an identity; never to a workload
    /// without a sidecar. An endpoint that declares an identity while this
    /// proxy has none fails closed rather than going plaintext.
    fn tls_for(&self, target: &Target) -> Result<Option<Arc<str>>, ProxyError> {
        if target.via_sidecar.is_none() {
            return Ok(None);
        }
        if self.identity.is_configured() {
            Ok(Some(target.identity.clone()))
        } else if target.identity.is_empty() {
            Ok(None)
        } else {
            Err(ProxyError::Tls {
                addr: target.addr,
                source: Box::new(crate::tls::TlsError::NoCertificate { peer: target.addr }),
            })
        }
    }

    fn key(&self, target: &Target, framing: Framing) -> Result<PoolKey, ProxyError> {
        Ok(PoolKey {
            addr: target.addr,
            header: target
                .via_sidecar
                .map(|port| TransportHeader { port, framing }),
            tls: self.tls_for(target)?,
            worker: crate::workers::current(),
        })
    }

    /// Sends `req` (which names `authority`) to `target`. A response over
    /// mutual TLS carries the peer's [`UpstreamPeer`].
    pub async fn send(
        &self,
        req: Request<Body>,
        target: &Target,
        authority: &str,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        let (mut rsp, peer, slot) = self.send_on(req, target, authority).await?;
        // HTTP/1 responses are held to it by hyper's parser; HTTP/2 here.
        if rsp.headers().len() > self.max_response_headers {
            return Err(ProxyError::UpstreamProtocol {
                addr: target.addr,
                reason: format!(
                    "{} header fields; the limit is {}",
                    rsp.headers().len(),
                    self.max_response_headers
                ),
            });
        }
        if let Some(peer) = peer {
            rsp.extensions_mut().insert(peer);
        }
        Ok(rsp.map(|inner| UpstreamBody { inner, slot }))
    }

    async fn send_on(
        &self,
        mut req: Request<Body>,
        target: &Target,
        authority: &str,
    ) -> Result<Sent, ProxyError> {
        let addr = target.addr;
        if h::is_upgrade(&req) {
            h::for_h1(&mut req, authority, true)?;
            let key = self.key(target, Framing::Http1)?;
            let (io, peer) = self.connect(&key, target.connect_timeout).await?;
            let mut sender = H1Pool::handshake_upgrade(io, addr, self.max_response_headers)
                .await
                .map_err(|source| ProxyError::Handshake {
                    addr,
                    source: Box::new(source),
                })?;
            let rsp = sender
                .send_request(req)
                .await
                .map_err(|source| ProxyError::upstream_failed(addr, source))?;
            return Ok((
                rsp.map(|b| Received::Http1(H1Body::detached(b))),
                peer,
                None,
            ));
        }
        let h2 = hop_is_h2(&req, target);
        if h2 {
            h::for_h2(&mut req, authority)?;
            let key = self.key(target, Framing::Http2)?;
            self.send_h2(req, key, target.connect_timeout).await
        } else {
            h::for_h1(&mut req, authority, false)?;
            let key = self.key(target, Framing::Http1)?;
            let (rsp, peer) = self.send_h1(req, key, target).await?;
            Ok((rsp.map(Received::Http1), peer, None))
        }
    }

    /// Sends `req` on a stream of a pooled connection with room for it
    /// (opening one if none has). A request the pooled connection gave back
    /// unsent (it died first) goes once more, on another connection.
    async fn send_h2(
        &self,
        mut req: Request<Body>,
        key: PoolKey,
        connect_timeout: Duration,
    ) -> Result<Sent, ProxyError> {
        let addr = key.addr;
        let reset = |source: ::h2::Error| ProxyError::UpstreamReset {
            addr,
            source: Box::new(source),
        };
        for first in [true, false] {
            let H2Stream { sender, peer, slot } = match self.h2.checkout(&key).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(conns)) => {
                    let (io, peer) = self.connect(&key, connect_timeout).await?;
                    H2Pool::handshake(io, conns, addr, peer)
                        .await
                        .map_err(|source| ProxyError::Handshake {
                            addr,
                            source: Box::new(source),
                        })?
                }
                Err(full) => {
                    return Err(ProxyError::Overloaded {
                        limit: format!("{full} ({addr})"),
                    })
                }
            };
            match http2::send(sender, req).await {
                Ok(rsp) => return Ok((rsp.map(Received::Http2), peer, Some(slot))),
                // The pooled connection died (or is going away) before the
                // request went out: safe to send it on another connection.
                Err(SendError::Unsent(again, _)) if first => req = *again,
                Err(SendError::Unsent(_, e) | SendError::Failed(e)) => return Err(reset(e)),
            }
        }
        unreachable!("the second attempt returns")
    }

    /// Sends `req` on an idle pooled HTTP/1.1 connection, or a new one; the
    /// request's task polls the connection (see [`http1`]), which goes back
    /// to the pool when the exchange ends.
    async fn send_h1(
        &self,
        req: Request<Body>,
        key: PoolKey,
        target: &Target,
    ) -> Result<(Response<H1Body>, Peer), ProxyError> {
        let addr = key.addr;
        let reset = |source| ProxyError::upstream_failed(addr, source);
        let mut req = req;
        if let Some(pooled) = self.h1.checkout(&key, target.idle_timeout) {
            let peer = pooled.peer.clone();
            let mut exchange = Exchange::new(pooled, self.h1.clone(), key.clone());
            // Keep a bounded copy of the body (a request without one needs
            // none): if the reused connection turns out to be closed by the
            // server, the request goes again.
            let (parts, body) = req.into_parts();
            let empty = http_body::Body::is_end_stream(&body);
            let (body, again) = if empty {
                (body, None)
            } else {
                let first = ReplayBody::new(body, RACE_REPLAY_BYTES);
                let again = first.try_replay();
                (crate::body::boxed(first), again)
            };
            let head = (
                parts.method.clone(),
                parts.uri.clone(),
                parts.headers.clone(),
            );
            req = Request::from_parts(parts, body);
            let sent = exchange.sender().try_send_request(req);
            match exchange.drive(sent).await {
                Ok(rsp) => return Ok((rsp.map(|b| H1Body::new(b, exchange)), peer)),
                // The idle connection was closed by the server before the
                // request was written: send it on a fresh connection.
                Err(mut e) => match e.take_message() {
                    Some(back) => req = back,
                    None => {
                        // Written, but the connection closed before any
                        // response byte: the keep-alive race (the app closed
                        // the idle connection as the request arrived, so it
                        // never saw it). Retried once, whatever the method.
                        let err = e.into_error();
                        let replay = if !closed_before_response(&err) {
                            None
                        } else if empty {
                            Some(crate::body::empty())
                        } else {
                            (again.and_then(|b| b.try_replay())).map(crate::body::boxed)
                        };
                        let Some(body) = replay else {
                            return Err(reset(err));
                        };
                        tracing::debug!(%addr, error = %err, "reused connection closed; retrying once");
                        let (method, uri, headers) = head;
                        let mut retry = Request::new(body);
                        *retry.method_mut() = method;
                        *retry.uri_mut() = uri;
                        *retry.headers_mut() = headers;
                        req = retry;
                    }
                },
            }
        }
        let slot = self
            .h1
            .reserve(&key)
            .map_err(|full| ProxyError::Overloaded {
                limit: format!("{full} ({addr})"),
            })?;
        let (io, peer) = self.connect(&key, target.connect_timeout).await?;
        let (sender, conn) = H1Pool::handshake(io, self.max_response_headers)
            .await
            .map_err(|source| ProxyError::Handshake {
                addr,
                source: Box::new(source),
            })?;
        let fresh = H1Conn {
            sender,
            conn: Some(Box::new(conn)),
            peer: peer.clone(),
            slot,
        };
        let mut exchange = Exchange::new(fresh, self.h1.clone(), key);
        let sent = exchange.sender().send_request(req);
        let rsp = exchange.drive(sent).await.map_err(reset)?;
        Ok((rsp.map(|b| H1Body::new(b, exchange)), peer))
    }

    /// Opens a byte stream for opaque TCP to `target`.
    pub async fn open(&self, target: &Target) -> Result<BoxIo, ProxyError> {
        let key = self.key(target, Framing::Opaque)?;
        Ok(self.connect(&key, target.connect_timeout).await?.0)
    }

    /// Connects (TCP, then TLS when the key says so, both within `timeout`)
    /// and writes the transport header. Returns the stream and, over TLS,
    /// the identity the peer proved.
    async fn connect(&self, key: &PoolKey, timeout: Duration) -> Result<(BoxIo, Peer), ProxyError> {
        let addr = key.addr;
        let timed_out = |_| ProxyError::ConnectTimeout {
            addr,
            timeout_ms: timeout.as_millis() as u64,
        };
        let connect = async {
            let io = self
                .connector
                .connect(addr)
                .await
                .map_err(|source| ProxyError::ConnectFailed { addr, source })?;
            match &key.tls {
                None => Ok((io, None)),
                Some(expected) => self
                    .identity
                    .connect(io, addr, expected)
                    .await
                    .map(|tls| {
                        // The handshake verified the chain and the SPIFFE
                        // id; this only reads it back.
                        let peer = sane_certs::peer_identity_of(tls.get_ref().1)
                            .ok()
                            .map(|id| UpstreamPeer(PeerIdentity(id.to_string().into())));
                        (Box::new(tls) as BoxIo, peer)
                    })
                    .map_err(|source| ProxyError::Tls {
                        addr,
                        source: Box::new(source),
                    }),
            }
        };
        let (mut io, peer) = tokio::time::timeout(timeout, connect)
            .await
            .map_err(timed_out)??;
        if let Some(header) = key.header {
            io.write_all(&header.encode())
                .await
                .map_err(|source| ProxyError::ConnectFailed { addr, source })?;
        }
        Ok((io, peer))
    }

    /// Closes idle HTTP/1.1 connections older than `idle_timeout`.
    pub fn reap_idle(&self, idle_timeout: Duration) {
        self.h1.reap(idle_timeout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[test]
    fn hop_protocol_follows_port_request_and_peer_protocol_policy() {
        let target = |protocol, via_sidecar, preserve_http1| Target {
            addr: ([127, 0, 0, 1], 1).into(),
            via_sidecar,
            protocol,
            preserve_http1,
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            identity: "".into(),
        };
        let h1 = Request::get("/").body(()).unwrap();
        let h2 = Request::get("/")
            .version(http::Version::HTTP_2)
            .body(())
            .unwrap();
        // To a peer sidecar: HTTP/2, unless HTTP/1.1 is preserved.
        assert!(hop_is_h2(&h1, &target(Protocol::Http, Some(80), false)));
        assert!(!hop_is_h2(&h1, &target(Protocol::Http, Some(80), true)));
        assert!(hop_is_h2(&h2, &target(Protocol::Http, Some(80), true)));
        assert!(hop_is_h2(&h1, &target(Protocol::Grpc, Some(80), true)));
        assert!(hop_is_h2(&h1, &target(Protocol::Http2, Some(80), true)));
        // To a workload: its port's protocol, whatever the request came as.
        assert!(!hop_is_h2(&h2, &target(Protocol::Http, None, false)));
        assert!(hop_is_h2(&h1, &target(Protocol::Grpc, None, true)));
    }

    /// Reads one request (head, then `content-length` bytes of body).
    async fn read_request(s: &mut tokio::net::TcpStream) -> Option<String> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let len = text
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    return Some(text);
                }
            }
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    #[tokio::test]
    async fn a_post_lost_on_a_reused_connection_the_server_closed_is_retried_once() {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        let app = tokio::spawn(async move {
            // Connection 1: answers one request, then reads the next one and
            // closes without answering (its keep-alive ran out right then).
            let (mut s, _) = server.accept().await.unwrap();
            read_request(&mut s).await.unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst")
                .await
                .unwrap();
            let lost = read_request(&mut s).await.unwrap();
            drop(s);
            // Connection 2: the retry.
            let (mut s, _) = server.accept().await.unwrap();
            let retried = read_request(&mut s).await.unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nretry")
                .await
                .unwrap();
            (lost, retried)
        });
        let registry = prometheus::Registry::new();
        let identity = Arc::new(Identity::new(
            false,
            crate::tls::TlsMetrics::register(&registry).unwrap(),
        ));
        let upstream = Upstream::new(Arc::new(connect::TcpConnect), identity);
        let target = Target {
            addr,
            via_sidecar: None,
            protocol: Protocol::Http,
            preserve_http1: false,
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            identity: "".into(),
        };
        let get = Request::get("/").body(crate::body::empty()).unwrap();
        let rsp = upstream.send(get, &target, "app").await.unwrap();
        assert_eq!(rsp.into_body().collect().await.unwrap().to_bytes(), "first");
        // Let the connection go back to the pool.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while upstream.h1.idle_count() != 1 {
            assert!(tokio::time::Instant::now() < deadline, "never pooled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let post = Request::post("/orders")
            .body(crate::body::full("payload"))
            .unwrap();
        let rsp = upstream.send(post, &target, "app").await.unwrap();
        assert_eq!(rsp.status(), 200);
        assert_eq!(rsp.into_body().collect().await.unwrap().to_bytes(), "retry");
        let (lost, retried) = app.await.unwrap();
        assert!(
            lost.starts_with("POST /orders") && lost.ends_with("payload"),
            "{lost}"
        );
        assert!(
            retried.starts_with("POST /orders") && retried.ends_with("payload"),
            "{retried}"
        );
    }
}
