//! Sending a body into an HTTP/2 stream as its flow control allows (hyper's
//! `PipeToSendStream`): the one loop behind both directions, the server's
//! response bodies ([`super::server`]'s HTTP/2) and the client's request
//! bodies (`upstream::http2`).
//!
//! A chunk is polled from the body before any capacity is claimed (a claim
//! made ahead of data can starve other streams; hyper #4003), then sent
//! once the stream has capacity; an empty chunk goes at once; trailers go
//! last; a body that fails resets the stream with the HTTP/2 reason in its
//! error chain (else `INTERNAL_ERROR`); the peer resetting the stream
//! stops it.
//!
//! And the other way, [`RecvBody`]: a body read from an HTTP/2 stream,
//! for both directions too (the server's request bodies, the client's
//! response bodies).

use crate::body::Body;
use bytes::{Buf, Bytes};
use h2::{Reason, RecvStream, SendStream};
use http::HeaderMap;
use http_body::{Body as _, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};

/// Which body a [`PipeBody`] sends (it names it in its log lines).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// A response body, to the client.
    Response,
    /// A request body, to the upstream.
    Request,
}

/// A body being sent into its stream.
pub struct PipeBody {
    body: Body,
    tx: SendStream<Bytes>,
    /// A chunk polled from the body, waiting for stream capacity.
    buffered: Option<(Bytes, bool)>,
    direction: Direction,
}

impl std::fmt::Debug for PipeBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipeBody")
            .field("direction", &self.direction)
            .field(
                "buffered",
                &self.buffered.as_ref().map(|(b, eos)| (b.len(), eos)),
            )
            .finish()
    }
}

impl PipeBody {
    /// Sends `body` into `tx`.
    pub fn new(body: Body, tx: SendStream<Bytes>, direction: Direction) -> Self {
        Self {
            body,
            tx,
            buffered: None,
            direction,
        }
    }

    /// Resets the stream with `reason`.
    pub fn send_reset(&mut self, reason: Reason) {
        self.tx.send_reset(reason);
    }

    /// Sends what the body has, as capacity allows; `Ready` once it ended,
    /// failed (the stream is reset), or the peer reset the stream.
    pub fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if let Poll::Ready(reason) = self.tx.poll_reset(cx) {
                match self.direction {
                    Direction::Response => {
                        tracing::debug!(?reason, "client reset the stream of a response body")
                    }
                    // It answered without reading the rest, or refused it.
                    Direction::Request => {
                        tracing::debug!(?reason, "upstream reset the stream of a request body")
                    }
                }
                return Poll::Ready(());
            }
            if let Some((data, eos)) = self.buffered.take() {
                while self.tx.capacity() == 0 {
                    match self.tx.poll_capacity(cx) {
                        Poll::Ready(Some(Ok(0))) => {}
                        Poll::Ready(Some(Ok(_))) => break,
                        Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(()),
                        Poll::Pending => {
                            self.buffered = Some((data, eos));
                            return Poll::Pending;
                        }
                    }
                }
                // Beyond the capacity h2 queues it (up to its send buffer)
                // and sends it as the window opens.
                if self.tx.send_data(data, eos).is_err() || eos {
                    return Poll::Ready(());
                }
                continue;
            }
            // The next frame before any capacity is claimed (a claim made
            // ahead of data can starve other streams; hyper #4003).
            match std::task::ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(chunk) => {
                        let eos = self.body.is_end_stream();
                        if chunk.remaining() == 0 {
                            if self.tx.send_data(chunk, eos).is_err() || eos {
                                return Poll::Ready(());
                            }
                            continue;
                        }
                        self.tx.reserve_capacity(1);
                        self.buffered = Some((chunk, eos));
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.tx.reserve_capacity(0);
                            let _ = self.tx.send_trailers(trailers);
                            return Poll::Ready(());
                        }
                    }
                },
                Some(Err(e)) => {
                    match self.direction {
                        Direction::Response => {
                            tracing::debug!(error = %e, "response body failed; resetting its stream")
                        }
                        Direction::Request => {
                            tracing::debug!(error = %e, "request body failed; resetting its stream")
                        }
                    }
                    self.tx.send_reset(reset_reason(&*e.0));
                    return Poll::Ready(());
                }
                None => {
                    let _ = self.tx.send_data(Bytes::new(), true);
                    return Poll::Ready(());
                }
            }
        }
    }
}

/// A body read from an HTTP/2 stream (hyper's `Incoming` for HTTP/2):
/// flow-control capacity is given back as data is read, so the peer may
/// send as much again; trailers come last.
#[derive(Debug)]
pub struct RecvBody {
    recv: RecvStream,
    data_done: bool,
    /// Bytes the `content-length` header says are left, if it gave one.
    remaining: Option<u64>,
}

impl RecvBody {
    /// The body read from `recv`, of `content_length` bytes if the
    /// message's headers say ([`content_length`]).
    pub fn new(recv: RecvStream, content_length: Option<u64>) -> Self {
        Self {
            recv,
            data_done: false,
            remaining: content_length,
        }
    }

    /// True once every data frame was read (only trailers may follow).
    pub fn data_done(&self) -> bool {
        self.data_done
    }
}

impl http_body::Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if !this.data_done {
            match std::task::ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    if let Some(left) = &mut this.remaining {
                        *left = left.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.data_done = true,
            }
        }
        Poll::Ready(match std::task::ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Some(Ok(Frame::trailers(trailers))),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        })
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(left) => SizeHint::with_exact(left),
            None => SizeHint::default(),
        }
    }
}

/// The reason to reset a stream with after `e`: an HTTP/2 reason found in
/// its chain, else `INTERNAL_ERROR` (as hyper).
pub fn reset_reason(e: &(dyn std::error::Error + 'static)) -> Reason {
    let mut source = Some(e);
    while let Some(err) = source {
        if let Some(reason) = err.downcast_ref::<h2::Error>().and_then(h2::Error::reason) {
            return reason;
        }
        source = err.source();
    }
    Reason::INTERNAL_ERROR
}

/// The `content-length` a head states, if one valid one.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(http::header::CONTENT_LENGTH).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    first.to_str().ok()?.trim().parse().ok()
}
