//! Request bodies that can be sent again, for retries.
//!
//! The first attempt streams the body as it arrives (no waiting for the
//! whole body) while keeping a copy of each chunk, up to a bound. A retry
//! gets a new handle that replays the copy and then, if the first attempt
//! stopped reading early (a connect failure before anything was sent),
//! continues with the rest of the original body. A body that outgrows the
//! bound drops its copy, and the request is not retried.
//!
//! Only one handle reads at a time: the reading handle holds the state and
//! gives it back when it is dropped or has read everything. A retry whose
//! previous attempt still holds the body (the upstream answered before
//! reading all of it) cannot replay it and is not sent.

use crate::body::{Body, BodyError};
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Frame, SizeHint};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// A request body that keeps a bounded copy for replay.
#[derive(Debug)]
pub struct ReplayBody {
    shared: Arc<Mutex<Shared>>,
    /// The state, while this handle is the one reading.
    state: Option<State>,
    /// Buffered chunks this handle has sent.
    replayed: usize,
    /// This handle sent the trailers.
    trailers_sent: bool,
    /// This handle reached the end.
    done: bool,
}

#[derive(Debug)]
struct Shared {
    /// `None` while a handle reads.
    state: Option<State>,
    /// The copy was dropped (too large) or the original body failed.
    unreplayable: bool,
}

struct State {
    buf: Vec<Bytes>,
    buf_len: usize,
    max: usize,
    trailers: Option<HeaderMap>,
    /// The rest of the original body; `None` once it has ended.
    rest: Option<Body>,
    overflowed: bool,
}

/// A handle tried to read while another attempt still held the body.
#[derive(Debug, thiserror::Error)]
#[error("the request body is still held by an earlier attempt")]
pub struct BodyInUse;

// === impl ReplayBody ===

impl ReplayBody {
    /// Wraps `body`, keeping up to `max` bytes for replay.
    pub fn new(body: Body, max: usize) -> Self {
        let state = State {
            buf: Vec::new(),
            buf_len: 0,
            max,
            trailers: None,
            rest: Some(body),
            overflowed: false,
        };
        Self::handle(Arc::new(Mutex::new(Shared {
            state: Some(state),
            unreplayable: false,
        })))
    }

    /// A handle for another attempt, or `None` if the body cannot be
    /// replayed: it outgrew the bound, failed, or an earlier attempt still
    /// holds it.
    pub fn try_replay(&self) -> Option<Self> {
        let shared = self.shared.lock().expect("not poisoned");
        if shared.unreplayable || shared.state.is_none() {
            return None;
        }
        drop(shared);
        Some(Self::handle(self.shared.clone()))
    }

    fn handle(shared: Arc<Mutex<Shared>>) -> Self {
        Self {
            shared,
            state: None,
            replayed: 0,
            trailers_sent: false,
            done: false,
        }
    }

    /// Gives the state back so another handle can read.
    fn release(&mut self) {
        if let Some(state) = self.state.take() {
            let mut shared = self.shared.lock().expect("not poisoned");
            shared.unreplayable |= state.overflowed;
            shared.state = Some(state);
        }
    }

    fn mark_unreplayable(&self) {
        self.shared.lock().expect("not poisoned").unreplayable = true;
    }

    /// Runs `f` on the state, wherever it is; `None` if another handle holds it.
    fn peek<T>(&self, f: impl FnOnce(&State) -> T) -> Option<T> {
        match &self.state {
            Some(s) => Some(f(s)),
            None => self
                .shared
                .lock()
                .expect("not poisoned")
                .state
                .as_ref()
                .map(f),
        }
    }

    fn remaining_buffered(&self, s: &State) -> u64 {
        s.buf
            .iter()
            .skip(self.replayed)
            .map(|b| b.len() as u64)
            .sum()
    }
}

impl http_body::Body for ReplayBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if this.state.is_none() {
            let taken = this.shared.lock().expect("not poisoned").state.take();
            match taken {
                Some(s) => this.state = Some(s),
                None => return Poll::Ready(Some(Err(BodyError(Box::new(BodyInUse))))),
            }
        }
        let st = this.state.as_mut().expect("taken above");
        if this.replayed < st.buf.len() {
            let chunk = st.buf[this.replayed].clone();
            this.replayed += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if let Some(rest) = st.rest.as_mut() {
            match Pin::new(rest).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        if !st.overflowed {
                            if st.buf_len + data.len() <= st.max {
                                st.buf_len += data.len();
                                st.buf.push(data.clone());
                                this.replayed += 1;
                            } else {
                                // Too large to replay: stop copying, free the copy.
                                st.overflowed = true;
                                st.buf = Vec::new();
                                st.buf_len = 0;
                                this.replayed = 0;
                                this.mark_unreplayable();
                            }
                        }
                    } else if let Some(t) = frame.trailers_ref() {
                        st.trailers = Some(t.clone());
                        this.trailers_sent = true;
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(Some(Err(e))) => {
                    st.rest = None;
                    this.mark_unreplayable();
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => st.rest = None,
            }
        }
        if !this.trailers_sent {
            if let Some(t) = st.trailers.clone() {
                this.trailers_sent = true;
                return Poll::Ready(Some(Ok(Frame::trailers(t))));
            }
        }
        // Everything is read and copied: let the next attempt have it now,
        // even if the client keeps this handle around.
        this.done = true;
        this.release();
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        if self.done {
            return true;
        }
        self.peek(|s| {
            self.replayed >= s.buf.len()
                && (s.trailers.is_none() || self.trailers_sent)
                && s.rest.as_ref().is_none_or(|r| r.is_end_stream())
        })
        .unwrap_or(false)
    }

    fn size_hint(&self) -> SizeHint {
        if self.done {
            return SizeHint::with_exact(0);
        }
        self.peek(|s| {
            let buffered = self.remaining_buffered(s);
            match &s.rest {
                None => SizeHint::with_exact(buffered),
                Some(r) => {
                    let h = r.size_hint();
                    let mut out = SizeHint::new();
                    out.set_lower(h.lower() + buffered);
                    if let Some(u) = h.upper() {
                        out.set_upper(u + buffered);
                    }
                    out
                }
            }
        })
        .unwrap_or_default()
    }
}

impl Drop for ReplayBody {
    fn drop(&mut self) {
        self.release();
    }
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("buffered", &self.buf_len)
            .field("max", &self.max)
            .field("ended", &self.rest.is_none())
            .field("overflowed", &self.overflowed)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use http_body_util::{BodyExt, StreamBody};

    fn chunks(parts: &[&'static str], trailers: bool) -> Body {
        let mut frames: Vec<Result<Frame<Bytes>, BodyError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        if trailers {
            let mut t = HeaderMap::new();
            t.insert("grpc-status", "0".parse().unwrap());
            frames.push(Ok(Frame::trailers(t)));
        }
        StreamBody::new(futures::stream::iter(frames)).boxed_unsync()
    }

    async fn read(b: ReplayBody) -> (Bytes, Option<HeaderMap>) {
        let c = b.collect().await.unwrap();
        let t = c.trailers().cloned();
        (c.to_bytes(), t)
    }

    #[tokio::test]
    async fn replays_data_and_trailers() {
        let first = ReplayBody::new(chunks(&["ab", "cd"], true), 64);
        let again = first.try_replay().unwrap();
        let (data, t) = read(first).await;
        assert_eq!(data, "abcd");
        assert_eq!(t.unwrap()["grpc-status"], "0");
        assert_eq!(again.size_hint().exact(), Some(4));
        let (data, t) = read(again).await;
        assert_eq!(data, "abcd");
        assert!(t.is_some());
    }

    #[tokio::test]
    async fn an_unread_body_moves_on_to_the_retry() {
        let first = ReplayBody::new(chunks(&["x", "y"], false), 64);
        let again = first.try_replay().unwrap();
        drop(first); // a connect failure: never polled
        assert_eq!(read(again).await.0, "xy");
    }

    #[tokio::test]
    async fn a_partly_read_body_replays_then_continues() {
        let mut first = ReplayBody::new(chunks(&["1", "2", "3"], false), 64);
        let f = first.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "1");
        let again = first.try_replay();
        assert!(again.is_none(), "held by the first attempt");
        let again = {
            let r = ReplayBody::handle(first.shared.clone());
            drop(first);
            r
        };
        assert_eq!(read(again).await.0, "123");
    }

    #[tokio::test]
    async fn a_body_over_the_bound_is_not_replayable() {
        let first = ReplayBody::new(chunks(&["aaaa", "bbbb"], false), 6);
        let pending = first.try_replay().unwrap();
        drop(pending);
        assert_eq!(read(first.try_replay().unwrap()).await.0, "aaaabbbb");
        assert!(first.try_replay().is_none());
    }

    #[tokio::test]
    async fn empty_bodies_end_at_once() {
        let b = ReplayBody::new(crate::body::empty(), 64);
        assert!(b.is_end_stream());
        assert!(b.try_replay().unwrap().is_end_stream());
        assert_eq!(b.size_hint().exact(), Some(0));
    }
}
