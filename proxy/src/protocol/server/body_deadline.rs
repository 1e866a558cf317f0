//! The request body's progress deadline (see `request_body_timeout` and
//! `request_body_min_rate` of the listener limits): a body must not stop
//! for longer than its grace, and once the grace is used up its bytes must
//! have kept up the minimum rate on average (each byte received pushes the
//! deadline back by `1 / rate` seconds, as Apache's `mod_reqtimeout`
//! `MinRate` does). A body dribbled at one byte every few seconds thus
//! ends at the grace instead of holding its connection forever.
//!
//! Time counts only while the body is asked for and the client has nothing
//! to give: a workload that is slow to read its request never makes the
//! client's body late. Once the response head is out, the exchange is a
//! stream the workload chose to answer, and the deadline no longer applies.

use crate::protocol::overload::Overload;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// The request body did not keep up its deadline.
#[derive(Debug, thiserror::Error)]
#[error("request body too slow: {received} bytes in {elapsed_ms}ms (grace {grace_ms}ms, at least {min_rate} bytes/s after it)")]
pub(super) struct BodyTooSlow {
    received: u64,
    elapsed_ms: u64,
    grace_ms: u64,
    min_rate: u64,
}

/// What the server and the body share about one request.
#[derive(Debug, Default)]
pub(super) struct BodyWatch {
    /// The response head is out: the deadline no longer applies.
    pub(super) answered: AtomicBool,
    /// The deadline passed and the body failed.
    pub(super) timed_out: AtomicBool,
}

/// How a body's deadline is worked out.
#[derive(Clone, Debug)]
pub(super) struct BodyLimits {
    pub(super) grace: Duration,
    pub(super) min_rate: u64,
    pub(super) overload: Arc<Overload>,
}

/// A request body under its progress deadline.
pub(super) struct DeadlineBody<B> {
    inner: B,
    limits: BodyLimits,
    watch: Arc<BodyWatch>,
    /// The first time the body was asked for (a client expecting `100
    /// continue` only starts then), and the last byte since.
    started: Option<Instant>,
    last: Instant,
    received: u64,
    sleep: Option<Pin<Box<Sleep>>>,
}

// === impl DeadlineBody ===

impl<B> DeadlineBody<B> {
    pub(super) fn new(inner: B, limits: BodyLimits, watch: Arc<BodyWatch>) -> Self {
        Self {
            inner,
            limits,
            watch,
            started: None,
            last: Instant::now(),
            received: 0,
            sleep: None,
        }
    }

    /// The later of "grace after the last byte" and "grace plus the bytes'
    /// worth of time at the minimum rate after the start", whichever is
    /// earlier: no gap longer than the grace, and the average rate kept.
    fn deadline(&self, started: Instant) -> Instant {
        let grace = self.limits.overload.scaled(self.limits.grace);
        let earned = Duration::from_secs_f64(self.received as f64 / self.limits.min_rate as f64);
        (started + grace + earned).min(self.last + grace)
    }

    fn too_slow(&self, started: Instant, now: Instant) -> BodyTooSlow {
        BodyTooSlow {
            received: self.received,
            elapsed_ms: now.duration_since(started).as_millis() as u64,
            grace_ms: self.limits.overload.scaled(self.limits.grace).as_millis() as u64,
            min_rate: self.limits.min_rate,
        }
    }
}

impl<B> HttpBody for DeadlineBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<crate::body::BoxError>,
{
    type Data = Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let started = *this.started.get_or_insert_with(|| {
            let now = Instant::now();
            this.last = now;
            now
        });
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    this.last = Instant::now();
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        if this.watch.answered.load(Ordering::Acquire) {
            this.sleep = None;
            return Poll::Pending;
        }
        loop {
            let deadline = this.deadline(started);
            let now = Instant::now();
            if now >= deadline {
                this.watch.timed_out.store(true, Ordering::Release);
                return Poll::Ready(Some(Err(Box::new(this.too_slow(started, now)))));
            }
            let sleep = match &mut this.sleep {
                Some(s) => {
                    if s.deadline() != deadline {
                        s.as_mut().reset(deadline);
                    }
                    s
                }
                None => this
                    .sleep
                    .insert(Box::pin(tokio::time::sleep_until(deadline))),
            };
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
