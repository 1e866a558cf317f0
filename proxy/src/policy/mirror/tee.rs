//! A request body that streams to the original request and hands a copy
//! to the mirror once it has ended, if it stayed within the bound.

use crate::body::{Body, BodyError};
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::{BodyExt, StreamBody};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::oneshot;

/// Streams `inner`; when it ends within `max` bytes, sends a copy on `tx`.
/// Dropping the sender without a copy tells the mirror to give up.
pub(super) struct TeeBody {
    inner: Body,
    copy: Option<Copy>,
    tx: Option<oneshot::Sender<Body>>,
    max: usize,
}

struct Copy {
    chunks: Vec<Bytes>,
    len: usize,
    trailers: Option<HeaderMap>,
}

// === impl TeeBody ===

impl TeeBody {
    pub(super) fn new(inner: Body, tx: oneshot::Sender<Body>, max: usize) -> Self {
        Self {
            inner,
            copy: Some(Copy {
                chunks: Vec::new(),
                len: 0,
                trailers: None,
            }),
            tx: Some(tx),
            max,
        }
    }

    fn give_up(&mut self) {
        self.copy = None;
        self.tx = None;
    }

    fn finish(&mut self) {
        if let (Some(copy), Some(tx)) = (self.copy.take(), self.tx.take()) {
            let mut frames: Vec<Result<Frame<Bytes>, BodyError>> = copy
                .chunks
                .into_iter()
                .map(|c| Ok(Frame::data(c)))
                .collect();
            if let Some(t) = copy.trailers {
                frames.push(Ok(Frame::trailers(t)));
            }
            let _ = tx.send(StreamBody::new(futures::stream::iter(frames)).boxed_unsync());
        }
    }
}

impl http_body::Body for TeeBody {
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
                let max = this.max;
                if let Some(copy) = this.copy.as_mut() {
                    if let Some(data) = frame.data_ref() {
                        if copy.len + data.len() > max {
                            this.give_up();
                        } else {
                            copy.len += data.len();
                            copy.chunks.push(data.clone());
                        }
                    } else if let Some(t) = frame.trailers_ref() {
                        copy.trailers = Some(t.clone());
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => this.give_up(),
            Poll::Ready(None) => this.finish(),
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

impl Drop for TeeBody {
    fn drop(&mut self) {
        // A client may stop polling once the body says it has ended.
        if self.inner.is_end_stream() {
            self.finish();
        }
    }
}
