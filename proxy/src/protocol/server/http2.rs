//! HTTP/2 served with the `h2` crate directly: a peer sidecar's connection
//! (its transport header said HTTP/2: `Framed::PeerHttp2`).
//!
//! hyper's HTTP/2 server spawns a task per stream, which calls the service,
//! sends the response head and pipes its body, and hands every frame to the
//! connection's task (a task allocation, its scheduling and one more task
//! poll per request, on the request's critical path). Here the connection's
//! own task polls its streams: [`H2Server`] accepts them and keeps each one
//! ([`StreamTask`]: the request being served, then its response body being
//! sent) in a `FuturesUnordered`, which polls only the streams whose waker
//! fired. What a stream does is hyper's: the client resetting it drops the
//! request being served (the observe stage records `DC`); a response body
//! is sent as stream capacity allows, its trailers last, and a body that
//! fails resets the stream. The connection settings are hyper's server
//! defaults with the listener's windows, streams and header list size, so
//! the wire does not change, but for one header: hyper adds `date` to a
//! response without one, this server does not (the caller's sidecar, the
//! only client of this path, is an HTTP server that adds its own).

use super::state::Watched;
use crate::body::Body;
use crate::protocol::h2_body::{content_length, Direction, PipeBody, RecvBody};
use crate::protocol::http::{strip_hop_by_hop, H2_CONNECTION_WINDOW, H2_STREAM_WINDOW};
use crate::protocol::io::Io;
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::task::AtomicWaker;
use h2::server::{Connection, Handshake, SendResponse};
use http::{HeaderValue, Request, Response};
use http_body::Body as _;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

/// Bytes buffered for sending per stream at most (hyper's server default).
const MAX_SEND_BUFFER: usize = 400 * 1024;

/// The error a connection ends with.
type ConnError = Box<dyn std::error::Error + Send + Sync>;

/// Rounds of polling the connection and its streams in one poll of the
/// task at most, before it yields (a resource out of the task's budget
/// asks again at once, every round).
const MAX_ROUNDS: usize = 8;

/// One HTTP/2 connection being served: its handshake, then its streams.
pub(super) struct H2Server<I: Io, H, F> {
    conn: Conn<I>,
    /// Serves one request (see `Handler::handle` in the parent module).
    handle: H,
    streams: FuturesUnordered<StreamTask<F>>,
    /// What the connection and the streams are polled with (see
    /// [`RoundWaker`]).
    round: Arc<RoundWaker>,
    waker: Waker,
}

/// The waker the connection and its streams are polled with. h2 wakes the
/// connection when a stream queues a frame, and a stream when the
/// connection reads one of its frames: made while this task polls them,
/// such a wake-up only asks for another round of the same poll (which
/// writes the frame out, or polls the stream) instead of waking the task
/// again; one from elsewhere (the workload's answer) wakes the task.
#[derive(Debug, Default)]
struct RoundWaker {
    task: AtomicWaker,
    /// The task is polling the connection and its streams.
    polling: AtomicBool,
    /// Something was woken since the round began.
    again: AtomicBool,
}

// Unboxed on purpose: the open connection is the state for the
// connection's whole life (polled on every wake-up), and the whole server
// already lives in the box `serve_http` puts `run` in.
#[allow(clippy::large_enum_variant)]
enum Conn<I: Io> {
    Handshaking(Pin<Box<Handshake<Watched<I>, Bytes>>>),
    Open(Connection<Watched<I>, Bytes>),
    /// A graceful shutdown was asked for before the handshake ended (as
    /// hyper: the connection just closes).
    Closed,
}

pin_project! {
    /// One stream: its request being served, then its response body being
    /// sent.
    #[project = StreamProj]
    enum StreamTask<F> {
        Serving {
            respond: SendResponse<Bytes>,
            #[pin]
            serving: F,
        },
        Sending {
            send: PipeBody,
        },
    }
}

// === impl H2Server ===

impl<I, H, F> H2Server<I, H, F>
where
    I: Io,
    H: FnMut(Request<RecvBody>) -> F + Unpin,
    F: Future<Output = Response<Body>>,
{
    /// Serves `io` with `handle`, under the listener's HTTP/2 limits.
    pub(super) fn new(
        io: Watched<I>,
        handle: H,
        max_header_list_size: u32,
        max_concurrent_streams: u32,
    ) -> Self {
        let handshake = h2::server::Builder::new()
            .initial_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONNECTION_WINDOW)
            .max_header_list_size(max_header_list_size)
            .max_concurrent_streams(max_concurrent_streams)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .max_local_error_reset_streams(Some(1024))
            .handshake::<_, Bytes>(io);
        let round = Arc::new(RoundWaker::default());
        Self {
            conn: Conn::Handshaking(Box::pin(handshake)),
            handle,
            streams: FuturesUnordered::new(),
            waker: Waker::from(round.clone()),
            round,
        }
    }

    /// Stops accepting streams (`GOAWAY`); the connection ends when the
    /// streams it has end.
    pub(super) fn graceful_shutdown(self: Pin<&mut Self>) {
        let this = self.get_mut();
        match &mut this.conn {
            Conn::Handshaking(_) => this.conn = Conn::Closed,
            Conn::Open(conn) => conn.graceful_shutdown(),
            Conn::Closed => {}
        }
    }
}

impl<I, H, F> Future for H2Server<I, H, F>
where
    I: Io,
    H: FnMut(Request<RecvBody>) -> F + Unpin,
    F: Future<Output = Response<Body>>,
{
    type Output = Result<(), ConnError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let H2Server {
            conn,
            handle,
            streams,
            round,
            waker,
        } = self.get_mut();
        round.task.register(cx.waker());
        round.polling.store(true, Ordering::SeqCst);
        let own = &mut Context::from_waker(waker);
        let polled = poll_rounds(conn, handle, streams, round, own);
        round.polling.store(false, Ordering::SeqCst);
        // Woken after the last round looked (from another thread, or a
        // round that hit `MAX_ROUNDS`): poll again.
        if polled.is_pending() && round.again.load(Ordering::SeqCst) {
            cx.waker().wake_by_ref();
        }
        polled
    }
}

/// Polls the connection (new streams, reads, writes) and the streams whose
/// waker fired, again while a round woke something.
fn poll_rounds<I, H, F>(
    conn: &mut Conn<I>,
    handle: &mut H,
    streams: &mut FuturesUnordered<StreamTask<F>>,
    round: &RoundWaker,
    cx: &mut Context<'_>,
) -> Poll<Result<(), ConnError>>
where
    I: Io,
    H: FnMut(Request<RecvBody>) -> F,
    F: Future<Output = Response<Body>>,
{
    if let Conn::Handshaking(handshake) = conn {
        let open = std::task::ready!(handshake.as_mut().poll(cx))?;
        *conn = Conn::Open(open);
    }
    let Conn::Open(conn) = conn else {
        return Poll::Ready(Ok(()));
    };
    for _ in 0..MAX_ROUNDS {
        round.again.store(false, Ordering::SeqCst);
        loop {
            match conn.poll_accept(cx) {
                Poll::Ready(Some(Ok((req, respond)))) => {
                    let length = content_length(req.headers());
                    let req = req.map(|recv| RecvBody::new(recv, length));
                    let serving = handle(req);
                    streams.push(StreamTask::Serving { respond, serving });
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(Box::new(e))),
                // Closed (every stream ended after a GOAWAY, or the
                // peer went away): a stream left can send nothing more.
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => break,
            }
        }
        // The streams whose waker fired (and those just accepted).
        while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {}
        if !round.again.load(Ordering::SeqCst) {
            return Poll::Pending;
        }
    }
    Poll::Pending
}

// === impl StreamTask ===

impl<F> Future for StreamTask<F>
where
    F: Future<Output = Response<Body>>,
{
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let (tx, body) = match self.as_mut().project() {
            StreamProj::Sending { send } => return send.poll_send(cx),
            StreamProj::Serving { respond, serving } => {
                let rsp = match serving.poll(cx) {
                    Poll::Ready(rsp) => rsp,
                    Poll::Pending => {
                        // The client may have reset the stream: the request
                        // being served is dropped (as hyper).
                        if let Poll::Ready(reason) = respond.poll_reset(cx) {
                            tracing::debug!(?reason, "client reset the stream");
                            return Poll::Ready(());
                        }
                        return Poll::Pending;
                    }
                };
                let (mut head, body) = rsp.into_parts();
                // As hyper: no connection-specific fields in HTTP/2, and a
                // body still to come announces its length if it knows it.
                strip_hop_by_hop(&mut head.headers, false);
                let eos = body.is_end_stream();
                if let Some(len) = body.size_hint().exact().filter(|_| !eos) {
                    head.headers
                        .entry(http::header::CONTENT_LENGTH)
                        .or_insert_with(|| HeaderValue::from(len));
                }
                match respond.send_response(Response::from_parts(head, ()), eos) {
                    Err(e) => {
                        tracing::debug!(error = %e, "response head not sent");
                        return Poll::Ready(());
                    }
                    // The body (and what it holds until it ends) is dropped.
                    Ok(_) if eos => return Poll::Ready(()),
                    Ok(tx) => (tx, body),
                }
            }
        };
        self.set(StreamTask::Sending {
            send: PipeBody::new(body, tx, Direction::Response),
        });
        match self.project() {
            StreamProj::Sending { send } => send.poll_send(cx),
            StreamProj::Serving { .. } => unreachable!("just set"),
        }
    }
}

// === impl RoundWaker ===

impl Wake for RoundWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.again.store(true, Ordering::SeqCst);
        if !self.polling.load(Ordering::SeqCst) {
            self.task.wake();
        }
    }
}
