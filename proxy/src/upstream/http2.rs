//! HTTP/2 to an endpoint, driven with the `h2` crate directly.
//!
//! hyper's HTTP/2 client puts a task and two channels between a request and
//! its connection: the request goes through a channel to the connection's
//! dispatch task, which opens the stream, spawns one more task per request
//! to wait for the response, and hands the response back through a oneshot
//! (five task polls and a task allocation per request, all on the request's
//! critical path). Here the request's own task opens the stream and awaits
//! the response: only the connection (its reads, writes and keep-alive
//! pings) runs in a task of its own, and a request body that is not
//! complete at once (a streaming upload) is piped by a task of its own, as
//! hyper does.
//!
//! The connection settings are hyper's client defaults (send buffer, header
//! list size, streams before the peer's SETTINGS) with the proxy's windows,
//! so the wire does not change; keep-alive pings go out every
//! [`KEEP_ALIVE_INTERVAL`] while requests are open (hyper's
//! `keep_alive_while_idle(false)`), and a peer that does not answer within
//! [`KEEP_ALIVE_TIMEOUT`] has its connection closed.

use crate::body::Body;
use crate::protocol::h2_body::{content_length, Direction, PipeBody, RecvBody};
use crate::protocol::http::{H2_CONNECTION_WINDOW, H2_STREAM_WINDOW};
use crate::protocol::io::BoxIo;
use crate::trace::context::PER_REQUEST_HEADERS;
use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use h2::{Reason, SendStream};
use http::{Method, Request, Response};
use http_body::{Frame, SizeHint};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::oneshot;

/// Bytes buffered for sending per stream at most (hyper's default).
const MAX_SEND_BUFFER: usize = 1024 * 1024;
/// Largest response header list accepted (hyper's default).
const MAX_HEADER_LIST: u32 = 16 * 1024;
/// Streams opened before the peer's SETTINGS arrive (hyper's default).
const INITIAL_MAX_SEND_STREAMS: usize = 100;
/// Time between keep-alive pings while requests are open.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// Time a keep-alive ping waits for its answer before the connection is
/// closed.
pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// One HTTP/2 connection: opens streams; the connection's task runs until
/// the peer closes it, a ping goes unanswered, or this handle (and every
/// stream) is gone.
#[derive(Debug)]
pub struct H2Connection {
    sender: SendRequest<Bytes>,
    /// Shared with its streams' openers and its task.
    state: Arc<ConnState>,
    /// Dropped with the handle: wakes the connection's task, which then
    /// closes the connection once its last stream ends (h2 does not notice
    /// the last `SendRequest` going by itself).
    _release: oneshot::Sender<()>,
}

/// Opens one stream on an [`H2Connection`] (see [`send`]).
#[derive(Debug)]
pub struct StreamOpener {
    sender: SendRequest<Bytes>,
    /// The connection's.
    state: Arc<ConnState>,
}

/// What a connection's handle, its stream openers and its task share.
#[derive(Debug, Default)]
struct ConnState {
    /// Set when the connection can open no more streams (its task ended, or
    /// the peer is going away).
    closed: AtomicBool,
    /// Which of [`PER_REQUEST_HEADERS`] this connection's HPACK table has
    /// been given a name for (bit `i` for entry `i`).
    named: AtomicU8,
}

/// Why a request did not get a response.
#[derive(Debug)]
pub enum SendError {
    /// The connection can take no more streams (closed, or going away):
    /// the request was not sent and can go on another connection.
    Unsent(Box<Request<Body>>, h2::Error),
    /// The stream failed (refused, reset, or the connection broke) after
    /// the request was handed to it.
    Failed(h2::Error),
}

/// A response body read from an HTTP/2 stream: flow-control capacity is
/// given back as data is read; trailers come last. While it lives, a
/// request body still being piped keeps going; dropped before its end, it
/// resets that upload.
#[derive(Debug)]
pub struct H2Body {
    body: RecvBody,
    cancel: CancelUpload,
}

/// Tells the task piping a request body to reset its stream when the
/// response is dropped before its end.
#[derive(Debug, Default)]
struct CancelUpload(Option<oneshot::Sender<()>>);

/// Pipes a request body into its stream.
struct Upload {
    pipe: PipeBody,
    /// The response side went away: reset the stream.
    cancel: Option<oneshot::Receiver<()>>,
}

// === impl H2Connection ===

impl H2Connection {
    /// Performs the client handshake on `io` and spawns the connection's
    /// task. `open_streams` counts the connection's open streams (keep-alive
    /// pings only go out while there are some).
    pub async fn handshake(
        io: BoxIo,
        addr: SocketAddr,
        open_streams: Arc<AtomicUsize>,
    ) -> Result<Self, h2::Error> {
        let (sender, conn) = h2::client::Builder::new()
            .initial_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONNECTION_WINDOW)
            .initial_max_send_streams(INITIAL_MAX_SEND_STREAMS)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .max_header_list_size(MAX_HEADER_LIST)
            .enable_push(false)
            .handshake::<_, Bytes>(io)
            .await?;
        let state = Arc::new(ConnState::default());
        let (release, released) = oneshot::channel();
        tokio::spawn(drive(conn, addr, open_streams, state.clone(), released));
        Ok(Self {
            sender,
            state,
            _release: release,
        })
    }

    /// True once the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.state.closed.load(Ordering::Acquire)
    }

    /// A handle to open one stream with.
    pub fn stream(&self) -> StreamOpener {
        StreamOpener {
            sender: self.sender.clone(),
            state: self.state.clone(),
        }
    }
}

/// Runs the connection until it ends (see [`H2Connection`]).
async fn drive(
    mut conn: h2::client::Connection<BoxIo, Bytes>,
    addr: SocketAddr,
    open_streams: Arc<AtomicUsize>,
    state: Arc<ConnState>,
    mut released: oneshot::Receiver<()>,
) {
    let ping = conn.ping_pong().expect("taken once");
    let keep_alive = keep_alive(ping, open_streams);
    tokio::pin!(keep_alive);
    let mut handle_alive = true;
    loop {
        tokio::select! {
            biased;
            res = &mut conn => {
                if let Err(e) = res {
                    tracing::debug!(%addr, error = %e, "upstream h2 connection ended");
                }
                break;
            }
            // Poll the connection again: with no handle left it closes
            // once its streams end.
            _ = &mut released, if handle_alive => handle_alive = false,
            () = &mut keep_alive => {
                tracing::debug!(%addr, "upstream h2 connection did not answer a ping; closing");
                break;
            }
        }
    }
    state.closed.store(true, Ordering::Release);
}

/// Pings every [`KEEP_ALIVE_INTERVAL`] while streams are open; returns when
/// a ping goes unanswered for [`KEEP_ALIVE_TIMEOUT`].
async fn keep_alive(mut ping: h2::PingPong, open_streams: Arc<AtomicUsize>) {
    loop {
        tokio::time::sleep(KEEP_ALIVE_INTERVAL).await;
        if open_streams.load(Ordering::Acquire) == 0 {
            continue;
        }
        match tokio::time::timeout(KEEP_ALIVE_TIMEOUT, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            // The connection failed: its own future reports it.
            Ok(Err(_)) => std::future::pending::<()>().await,
            Err(_elapsed) => return,
        }
    }
}

/// Sends `req` on a stream of `opener`'s connection and waits for the
/// response head, in the caller's task. A connection that can open no more
/// streams (closed, or the peer sent `GOAWAY`) gives the request back and
/// is marked closed, so the pool stops handing it out.
pub async fn send(opener: StreamOpener, req: Request<Body>) -> Result<Response<H2Body>, SendError> {
    let mut sender = match opener.sender.ready().await {
        Ok(sender) => sender,
        Err(e) => {
            opener.state.closed.store(true, Ordering::Release);
            return Err(SendError::Unsent(Box::new(req), e));
        }
    };
    let (mut parts, body) = req.into_parts();
    // As hyper: a body of known length announces it (an empty one only for
    // methods whose requests carry a payload); `te` other than `trailers`
    // is not allowed in HTTP/2.
    if let Some(len) = http_body::Body::size_hint(&body).exact() {
        let has_payload = !matches!(
            parts.method,
            Method::GET | Method::HEAD | Method::DELETE | Method::CONNECT
        );
        if (len != 0 || has_payload) && !parts.headers.contains_key(http::header::CONTENT_LENGTH) {
            parts
                .headers
                .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
        }
    }
    if parts
        .headers
        .get(http::header::TE)
        .is_some_and(|te| te != "trailers")
    {
        parts.headers.remove(http::header::TE);
    }
    opener.state.unindexed_values(&mut parts.headers);
    let eos = http_body::Body::is_end_stream(&body);
    let (response, tx): (ResponseFuture, SendStream<Bytes>) = sender
        .send_request(Request::from_parts(parts, ()), eos)
        .map_err(SendError::Failed)?;
    let mut cancel = CancelUpload::default();
    if !eos {
        let (cancel_tx, cancel_rx) = oneshot::channel();
        let mut upload = Upload {
            pipe: PipeBody::new(body, tx, Direction::Request),
            cancel: Some(cancel_rx),
        };
        // A body already complete (a small POST) goes out now, without a
        // task; one still arriving is piped by its own.
        let done = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut upload).poll(cx))).await;
        if done.is_pending() {
            cancel = CancelUpload(Some(cancel_tx));
            tokio::spawn(upload);
        }
    }
    let rsp = response.await.map_err(SendError::Failed)?;
    let length = content_length(rsp.headers());
    Ok(rsp.map(|recv| H2Body {
        body: RecvBody::new(recv, length),
        cancel,
    }))
}

// === impl ConnState ===

impl ConnState {
    /// Keeps values that are new on every request (ids: `x-request-id`,
    /// `traceparent`, B3 span ids) out of the connection's HPACK table,
    /// while their names stay in it.
    ///
    /// Indexed, each such value is inserted into both ends' tables and
    /// evicted unused, and the encoder walks every value held under the
    /// name before inserting the next (with a 4 KiB table about twenty per
    /// name). The first request on the connection carrying the name is
    /// sent indexed, so the name enters the table; later ones go as
    /// "never indexed" literals that refer to that name (RFC 7541
    /// §6.2.3), one entry to look at. Should that entry be evicted (other
    /// headers with new values pushing it out), the values still go as
    /// never-indexed literals, with the name spelled out.
    fn unindexed_values(&self, headers: &mut http::HeaderMap) {
        let named = self.named.load(Ordering::Relaxed);
        let mut now = named;
        for (name, value) in headers.iter_mut() {
            let Some(i) = PER_REQUEST_HEADERS.iter().position(|n| n == name) else {
                continue;
            };
            let bit = 1 << i;
            if named & bit != 0 {
                value.set_sensitive(true);
            } else {
                now |= bit;
            }
        }
        if now != named {
            self.named.fetch_or(now, Ordering::Relaxed);
        }
    }
}

// === impl H2Body ===

impl http_body::Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        let polled = std::task::ready!(Pin::new(&mut this.body).poll_frame(cx));
        if this.body.data_done() {
            // The response ended: an upload still going may finish on its own.
            this.cancel.disarm();
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

// === impl CancelUpload ===

impl CancelUpload {
    fn disarm(&mut self) {
        // Dropped unsent: the upload stops listening for a cancel.
        self.0 = None;
    }
}

impl Drop for CancelUpload {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

// === impl Upload ===

impl Future for Upload {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if let Some(cancel) = &mut this.cancel {
            match Pin::new(cancel).poll(cx) {
                Poll::Ready(Ok(())) => {
                    this.pipe.send_reset(Reason::CANCEL);
                    return Poll::Ready(());
                }
                Poll::Ready(Err(_)) => this.cancel = None,
                Poll::Pending => {}
            }
        }
        this.pipe.poll_send(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::BoxError;
    use http::HeaderMap;
    use http_body::Body as _;
    use http_body_util::BodyExt;

    #[test]
    fn per_request_values_are_never_indexed_once_their_name_is_in_the_table() {
        let state = ConnState::default();
        let request = |id: &str| {
            let mut h = HeaderMap::new();
            h.insert("x-request-id", id.parse().unwrap());
            h.insert("accept", "*/*".parse().unwrap());
            h.insert(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                    .parse()
                    .unwrap(),
            );
            h
        };
        let sensitive = |h: &HeaderMap, name: &str| h[name].is_sensitive();
        // The first request carrying a name sends it indexed: the name
        // enters the table.
        let mut first = request("1");
        first.remove("traceparent");
        state.unindexed_values(&mut first);
        assert!(!sensitive(&first, "x-request-id"));
        // Later ones refer to it; a name seen for the first time is indexed.
        let mut second = request("2");
        state.unindexed_values(&mut second);
        assert!(sensitive(&second, "x-request-id"));
        assert!(!sensitive(&second, "traceparent"));
        assert!(!sensitive(&second, "accept"), "other headers stay indexed");
        let mut third = request("3");
        state.unindexed_values(&mut third);
        assert!(sensitive(&third, "x-request-id") && sensitive(&third, "traceparent"));
        assert!(!sensitive(&third, "accept"));
    }

    /// An h2 server on one end of an in-memory pipe that answers each
    /// request with its method, path and body, and the trailer `x-bytes`.
    async fn echo_server(io: tokio::io::DuplexStream) {
        let mut conn = h2::server::handshake(io).await.unwrap();
        while let Some(Ok((req, mut respond))) = conn.accept().await {
            tokio::spawn(async move {
                let (head, mut body) = req.into_parts();
                let mut got = Vec::new();
                while let Some(chunk) = body.data().await {
                    let chunk = chunk.unwrap();
                    let _ = body.flow_control().release_capacity(chunk.len());
                    got.extend_from_slice(&chunk);
                }
                let text = format!("{} {} {}", head.method, head.uri.path(), got.len());
                let rsp = Response::builder()
                    .header("content-length", text.len())
                    .body(())
                    .unwrap();
                let mut tx = respond.send_response(rsp, false).unwrap();
                tx.send_data(Bytes::from(text), false).unwrap();
                let mut trailers = HeaderMap::new();
                trailers.insert("x-bytes", got.len().into());
                tx.send_trailers(trailers).unwrap();
            });
        }
    }

    async fn connection() -> H2Connection {
        let (client, server) = tokio::io::duplex(1 << 20);
        tokio::spawn(echo_server(server));
        let addr = "127.0.0.1:9".parse().unwrap();
        H2Connection::handshake(Box::new(client), addr, Arc::default())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn requests_with_and_without_bodies_get_their_responses_and_trailers() {
        let conn = connection().await;
        let get = Request::get("http://app/a")
            .body(crate::body::empty())
            .unwrap();
        let rsp = send(conn.stream(), get).await.unwrap();
        assert_eq!(rsp.body().size_hint().exact(), Some(8));
        let body = rsp.into_body().collect().await.unwrap();
        assert_eq!(body.trailers().unwrap()["x-bytes"], "0");
        assert_eq!(body.to_bytes(), "GET /a 0");

        // A body complete at once goes out inline; a streamed one in its
        // own task, chunk after chunk.
        let post = Request::post("http://app/b")
            .body(crate::body::full("payload"))
            .unwrap();
        let rsp = send(conn.stream(), post).await.unwrap();
        assert_eq!(
            rsp.into_body().collect().await.unwrap().to_bytes(),
            "POST /b 7"
        );
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let stream =
            http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let put = Request::put("http://app/c")
            .body(crate::body::boxed(stream))
            .unwrap();
        // Dropping `tx` at the end ends the body.
        let writer = tokio::spawn(async move {
            for _ in 0..3 {
                tx.send(Ok(Frame::data(Bytes::from_static(&[7; 1000]))))
                    .await
                    .unwrap();
            }
        });
        let rsp = send(conn.stream(), put).await.unwrap();
        writer.await.unwrap();
        assert_eq!(
            rsp.into_body().collect().await.unwrap().to_bytes(),
            "PUT /c 3000"
        );
        assert!(!conn.is_closed());
    }

    #[tokio::test]
    async fn a_connection_the_peer_is_draining_gives_the_request_back_and_is_closed() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let addr = "127.0.0.1:9".parse().unwrap();
        let (shut_tx, shut_rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let mut conn = h2::server::handshake(server).await.unwrap();
            let _ = shut_rx.await;
            conn.graceful_shutdown();
            while conn.accept().await.is_some() {}
        });
        let conn = H2Connection::handshake(Box::new(client), addr, Arc::default())
            .await
            .unwrap();
        // The peer starts draining (GOAWAY) while the connection is pooled.
        shut_tx.send(()).unwrap();
        let mut unsent = None;
        for _ in 0..100 {
            let get = Request::get("http://app/")
                .body(crate::body::empty())
                .unwrap();
            let sent = tokio::time::timeout(Duration::from_secs(10), send(conn.stream(), get))
                .await
                .expect("a draining connection answers or refuses");
            if let Err(SendError::Unsent(req, _)) = sent {
                unsent = Some(req);
                break;
            }
        }
        assert!(unsent.is_some(), "the GOAWAY never reached the client");
        assert!(conn.is_closed());
    }

    #[tokio::test]
    async fn a_closed_connection_gives_the_request_back_unsent() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let addr = "127.0.0.1:9".parse().unwrap();
        // The peer goes away right after the handshake.
        let server = tokio::spawn(async move {
            let conn = h2::server::handshake(server).await.unwrap();
            drop(conn);
        });
        let conn = H2Connection::handshake(Box::new(client), addr, Arc::default())
            .await
            .unwrap();
        server.await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !conn.is_closed() {
            assert!(tokio::time::Instant::now() < deadline, "never closed");
            tokio::task::yield_now().await;
        }
        let get = Request::get("http://app/")
            .body(crate::body::empty())
            .unwrap();
        match send(conn.stream(), get).await {
            Err(SendError::Unsent(req, _)) => assert_eq!(req.uri().path(), "/"),
            other => panic!("expected the request back, got {other:?}"),
        }
    }
}
