//! Body wrappers of the observe stage: what a request really moved.
//!
//! * [`CountingBody`] counts the request body bytes the proxy read from the
//!   caller, into a counter the stage reads when the exchange ends.
//! * [`ObservedBody`] wraps the response: it counts the bytes actually
//!   handed to the caller, keeps the `grpc-status` of the trailers (where
//!   real gRPC servers send it), and calls its `on_end` exactly once when
//!   the body ends (last frame, trailers, or end of stream), fails, or is
//!   dropped before the end (the caller went away or reset the stream).
//!
//! Both are cheap: per frame they add a length to an integer, never
//! allocate; the counter is one `Arc` per request.

use crate::body::{Body, BodyError};
use bytes::{Buf, Bytes};
use http::HeaderValue;
use http_body::{Body as _, Frame, SizeHint};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// How a response body finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyEnd {
    /// Read to the end (trailers included, if any).
    Complete,
    /// The body failed while streaming (the upstream reset or closed it).
    Failed,
    /// Dropped before the end: the caller stopped reading.
    Dropped,
}

/// What [`ObservedBody`] saw, handed to `on_end`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BodyOutcome {
    /// How the body finished.
    pub end: BodyEnd,
    /// Data bytes passed to the reader.
    pub bytes: u64,
    /// `grpc-status` of the trailers, when they had one.
    pub grpc_status: Option<HeaderValue>,
}

/// Request body bytes read so far, shared by the body and the stage.
#[derive(Clone, Debug, Default)]
pub struct ByteCount(Arc<AtomicU64>);

/// A request body that counts the bytes read from it.
#[derive(Debug)]
pub struct CountingBody {
    inner: Body,
    count: ByteCount,
}

/// A response body that reports how it ended; see the module docs.
pub struct ObservedBody<F: FnOnce(BodyOutcome)> {
    inner: Body,
    bytes: u64,
    grpc_status: Option<HeaderValue>,
    on_end: Option<F>,
}

// === impl ByteCount ===

impl ByteCount {
    /// Bytes counted so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

// === impl CountingBody ===

impl CountingBody {
    /// Wraps `inner`, counting into `count`.
    pub fn new(inner: Body, count: ByteCount) -> Self {
        Self { inner, count }
    }
}

impl http_body::Body for CountingBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.count
                    .0
                    .fetch_add(data.remaining() as u64, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// === impl ObservedBody ===

impl<F: FnOnce(BodyOutcome)> ObservedBody<F> {
    /// Wraps `inner`; `on_end` runs once when it finishes (see
    /// [`BodyEnd`]).
    pub fn new(inner: Body, on_end: F) -> Self {
        Self {
            inner,
            bytes: 0,
            grpc_status: None,
            on_end: Some(on_end),
        }
    }

    fn finish(&mut self, end: BodyEnd) {
        if let Some(on_end) = self.on_end.take() {
            on_end(BodyOutcome {
                end,
                bytes: self.bytes,
                grpc_status: self.grpc_status.take(),
            });
        }
    }
}

impl<F: FnOnce(BodyOutcome) + Unpin> http_body::Body for ObservedBody<F> {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.remaining() as u64;
                } else if let Some(trailers) = frame.trailers_ref() {
                    this.grpc_status = trailers.get("grpc-status").cloned();
                }
                // Trailers are always last; and a reader may stop polling
                // once the body says it has ended, so record now (before
                // the caller can see the end) rather than on the next poll.
                if frame.is_trailers() || this.inner.is_end_stream() {
                    this.finish(BodyEnd::Complete);
                }
            }
            Poll::Ready(Some(Err(_))) => this.finish(BodyEnd::Failed),
            Poll::Ready(None) => this.finish(BodyEnd::Complete),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<F: FnOnce(BodyOutcome)> Drop for ObservedBody<F> {
    fn drop(&mut self) {
        // An empty body is never polled: readers check `is_end_stream`
        // first and drop it.
        let end = if self.inner.is_end_stream() {
            BodyEnd::Complete
        } else {
            BodyEnd::Dropped
        };
        self.finish(end);
    }
}

impl<F: FnOnce(BodyOutcome)> std::fmt::Debug for ObservedBody<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObservedBody")
            .field("bytes", &self.bytes)
            .field("grpc_status", &self.grpc_status)
            .field("ended", &self.on_end.is_none())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body;
    use http::HeaderMap;
    use http_body_util::{BodyExt, StreamBody};
    use std::sync::Mutex;

    type Seen = Arc<Mutex<Vec<BodyOutcome>>>;

    fn observed(inner: Body) -> (ObservedBody<impl FnOnce(BodyOutcome) + Unpin>, Seen) {
        let seen = Seen::default();
        let s = seen.clone();
        let body = ObservedBody::new(inner, move |o| s.lock().unwrap().push(o));
        (body, seen)
    }

    /// A body that yields `frames` and stays open (until dropped) unless
    /// the last item is the end.
    fn streamed(
        frames: Vec<Result<Frame<Bytes>, BodyError>>,
    ) -> (Body, futures::channel::mpsc::UnboundedSender<()>) {
        let (tx, rx) = futures::channel::mpsc::unbounded::<()>();
        let stream = futures::StreamExt::chain(
            futures::stream::iter(frames),
            futures::StreamExt::filter_map(rx, |_| async { None }),
        );
        (StreamBody::new(stream).boxed_unsync(), tx)
    }

    fn trailers(status: &'static str) -> Frame<Bytes> {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static(status));
        Frame::trailers(t)
    }

    #[tokio::test]
    async fn a_body_read_to_the_end_reports_its_bytes_once() {
        let (body, seen) = observed(body::full("hello world"));
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(collected, "hello world");
        let seen = seen.lock().unwrap();
        assert_eq!(
            *seen,
            vec![BodyOutcome {
                end: BodyEnd::Complete,
                bytes: 11,
                grpc_status: None
            }]
        );
    }

    #[tokio::test]
    async fn the_end_is_reported_with_the_last_frame_before_the_reader_sees_it() {
        let (mut body, seen) = observed(body::full("abc"));
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "abc");
        // The reader has not polled for the end (hyper would not), yet the
        // outcome is in: the body said it has ended.
        assert_eq!(seen.lock().unwrap().len(), 1);
        drop(body);
        assert_eq!(seen.lock().unwrap().len(), 1, "reported exactly once");
    }

    #[tokio::test]
    async fn grpc_status_comes_from_the_trailers() {
        let (inner, _open) = streamed(vec![
            Ok(Frame::data(Bytes::from_static(b"12345"))),
            Ok(Frame::data(Bytes::from_static(b"678"))),
            Ok(trailers("5")),
        ]);
        let (mut body, seen) = observed(inner);
        while let Some(frame) = body.frame().await {
            if frame.unwrap().is_trailers() {
                // Reported as the trailers pass, though the stream is open.
                assert_eq!(seen.lock().unwrap().len(), 1);
                break;
            }
        }
        drop(body);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].end, BodyEnd::Complete);
        assert_eq!(seen[0].bytes, 8);
        assert_eq!(seen[0].grpc_status.as_ref().unwrap(), "5");
    }

    #[tokio::test]
    async fn a_body_dropped_mid_stream_reports_what_was_sent() {
        let (inner, _open) = streamed(vec![Ok(Frame::data(Bytes::from_static(b"part")))]);
        let (mut body, seen) = observed(inner);
        assert!(body.frame().await.unwrap().unwrap().is_data());
        assert!(seen.lock().unwrap().is_empty(), "not over yet");
        drop(body);
        let seen = seen.lock().unwrap();
        assert_eq!(
            *seen,
            vec![BodyOutcome {
                end: BodyEnd::Dropped,
                bytes: 4,
                grpc_status: None
            }]
        );
    }

    #[tokio::test]
    async fn a_failing_body_reports_the_failure() {
        let (inner, _open) = streamed(vec![
            Ok(Frame::data(Bytes::from_static(b"xy"))),
            Err(BodyError("upstream reset".into())),
        ]);
        let (body, seen) = observed(inner);
        assert!(body.collect().await.is_err());
        let seen = seen.lock().unwrap();
        assert_eq!(
            *seen,
            vec![BodyOutcome {
                end: BodyEnd::Failed,
                bytes: 2,
                grpc_status: None
            }]
        );
    }

    #[tokio::test]
    async fn an_empty_body_dropped_unpolled_is_complete() {
        let (body, seen) = observed(body::empty());
        drop(body);
        assert_eq!(seen.lock().unwrap()[0].end, BodyEnd::Complete);
        assert_eq!(seen.lock().unwrap()[0].bytes, 0);
    }

    #[tokio::test]
    async fn the_request_counter_sees_every_data_frame() {
        let count = ByteCount::default();
        let (inner, open) = streamed(vec![
            Ok(Frame::data(Bytes::from_static(b"1234"))),
            Ok(Frame::data(Bytes::from_static(b"567890"))),
            Ok(trailers("0")),
        ]);
        drop(open);
        let body = CountingBody::new(inner, count.clone());
        let _ = body.collect().await.unwrap();
        assert_eq!(count.get(), 10);
    }
}
