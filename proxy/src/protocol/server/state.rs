//! The state a served connection shares between its watcher (the drain
//! and timer side, in the parent module) and its I/O: [`ConnState`], the
//! I/O wrapper [`Watched`] that reports what hyper reads and writes and
//! parks an idle HTTP/1 connection, and [`InFlight`], which counts a request
//! until its response ends.

use super::framing::FramingScan;
use super::{HttpLimits, PARK_AFTER, UNSET};
use crate::protocol::io::Io;
use futures::task::AtomicWaker;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// What the connection's watcher and its I/O share.
#[derive(Debug)]
pub(super) struct ConnState {
    pub(super) started: Instant,
    /// Requests whose response has not ended.
    pub(super) in_flight: AtomicUsize,
    /// When (ms after `started`) the current HTTP/1 head began, or [`UNSET`].
    pub(super) head_since: AtomicU64,
    /// When (ms after `started`) the last request finished.
    pub(super) idle_since: AtomicU64,
    /// A byte has arrived (the first-byte timer is over).
    spoke: AtomicBool,
    /// The connection speaks HTTP/2 (no head timer, never parked).
    h2: AtomicBool,
    /// A request asked to switch protocols: never parked.
    pub(super) upgrade: AtomicBool,
    /// The watcher asks the I/O to park the connection at the next read
    /// that would block.
    pub(super) park: AtomicBool,
    /// The I/O answered hyper's read with the end of file that parks it.
    pub(super) parked: AtomicBool,
    /// A flush completed after the last response ended (so hyper's write
    /// buffer is empty).
    pub(super) flushed: AtomicBool,
    /// The state changed: the watcher sets its timer again.
    pub(super) dirty: AtomicBool,
    /// The watcher is polling hyper's connection: a change made meanwhile
    /// (most are: they happen inside hyper's poll) is seen when that poll
    /// returns, without waking the task again.
    pub(super) polling: AtomicBool,
    /// A wake-up the watcher asked for (the drain, its timer) came: they
    /// are polled only then, not on every wake-up of the connection task.
    pub(super) fired: AtomicBool,
    /// The connection task, for changes made from other tasks (HTTP/2
    /// streams) and the watcher's own wake-ups ([`Wake`]).
    pub(super) task: AtomicWaker,
    /// Requests hyper's current connection handed to the service.
    pub(super) dispatched: AtomicU64,
    /// Index of the request whose head had both `Content-Length` and
    /// `Transfer-Encoding` (see `framing`), or [`UNSET`].
    pub(super) ambiguous: AtomicU64,
}

/// The connection's I/O, shared so a `408` can still be written, and a
/// parked connection resumed, after hyper gave the connection up.
pub(super) struct Watched<I> {
    pub(super) io: Arc<Mutex<I>>,
    pub(super) state: Arc<ConnState>,
    /// First bytes, to tell the HTTP/2 preface from an HTTP/1 request.
    pub(super) prefix: [u8; 4],
    pub(super) prefix_len: u8,
    /// The byte that resumed a parked connection, not yet given to hyper.
    pub(super) first: Option<u8>,
    /// The last four bytes given to hyper.
    pub(super) tail: [u8; 4],
    /// The HTTP/1 request framing on the bytes given to hyper.
    pub(super) framing: FramingScan,
    /// A response hyper made on its own being written in its place (see
    /// [`automatic_error`]): the replacement, and how much of it is written.
    pub(super) rewrite: Option<(Vec<u8>, usize)>,
}

impl<I> Watched<I> {
    /// The I/O of a new hyper connection on `io` (`first`: the byte that
    /// resumed a parked one).
    pub(super) fn new(io: Arc<Mutex<I>>, state: Arc<ConnState>, first: Option<u8>) -> Self {
        Self {
            io,
            state,
            prefix: [0; 4],
            // A resumed connection is known to be HTTP/1.
            prefix_len: if first.is_some() { 4 } else { 0 },
            first,
            tail: [0; 4],
            framing: FramingScan::new(),
            rewrite: None,
        }
    }
}

/// Keeps a request counted as in flight until dropped.
pub(super) struct InFlight(Arc<ConnState>);

// === impl ConnState ===

impl ConnState {
    pub(super) fn new(h2: bool) -> Self {
        Self {
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            head_since: AtomicU64::new(UNSET),
            idle_since: AtomicU64::new(0),
            spoke: AtomicBool::new(false),
            h2: AtomicBool::new(h2),
            upgrade: AtomicBool::new(false),
            park: AtomicBool::new(false),
            parked: AtomicBool::new(false),
            flushed: AtomicBool::new(false),
            dirty: AtomicBool::new(false),
            polling: AtomicBool::new(false),
            fired: AtomicBool::new(false),
            task: AtomicWaker::new(),
            dispatched: AtomicU64::new(0),
            ambiguous: AtomicU64::new(UNSET),
        }
    }

    /// The state changed in a way that may move the next deadline: the
    /// watcher looks at it after the current poll of hyper's connection,
    /// or, outside one, when the task wakes. (`SeqCst` with the watcher's
    /// `polling` and `dirty`: either it sees this change or this wakes it.)
    pub(super) fn changed(&self) {
        self.dirty.store(true, Ordering::SeqCst);
        if !self.polling.load(Ordering::SeqCst) {
            self.task.wake();
        }
    }

    pub(super) fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub(super) fn at(&self, ms: u64) -> Instant {
        self.started + Duration::from_millis(ms)
    }

    /// Bytes arrived: with no request in flight they begin a request head.
    pub(super) fn on_read(&self) {
        if !self.spoke.load(Ordering::Relaxed) {
            self.spoke.store(true, Ordering::Release);
            crate::protocol::overload::spoke();
            self.changed();
        }
        if self.h2.load(Ordering::Relaxed) || self.in_flight.load(Ordering::Acquire) > 0 {
            return;
        }
        let now = self.now_ms();
        if self
            .head_since
            .compare_exchange(UNSET, now, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            self.changed();
        }
    }

    pub(super) fn set_h2(&self) {
        self.h2.store(true, Ordering::Relaxed);
        self.head_since.store(UNSET, Ordering::Release);
        self.changed();
    }

    /// The next time a timer may fire.
    pub(super) fn deadline(&self, limits: &HttpLimits, closing: bool) -> Option<Instant> {
        let head = match self.head_since.load(Ordering::Acquire) {
            UNSET => None,
            since => Some(self.at(since) + limits.header_timeout()),
        };
        let idle = (!closing && self.in_flight.load(Ordering::Acquire) == 0)
            .then(|| self.at(self.idle_since.load(Ordering::Acquire)) + limits.idle());
        let first = (!closing && !self.spoke.load(Ordering::Acquire))
            .then(|| self.started + limits.first_byte());
        let park = (!closing && head.is_none() && self.parkable())
            .then(|| self.at(self.idle_since.load(Ordering::Acquire)) + PARK_AFTER);
        [head, idle, first, park].into_iter().flatten().min()
    }

    /// Parking may be asked for: an HTTP/1 connection without a request in
    /// flight, not asked yet since its last request.
    pub(super) fn parkable(&self) -> bool {
        !self.h2.load(Ordering::Relaxed)
            && !self.upgrade.load(Ordering::Acquire)
            && !self.park.load(Ordering::Acquire)
            && self.in_flight.load(Ordering::Acquire) == 0
    }

    pub(super) fn park_due(&self, now: Instant) -> bool {
        self.parkable()
            && self.head_since.load(Ordering::Acquire) == UNSET
            && now >= self.at(self.idle_since.load(Ordering::Acquire)) + PARK_AFTER
    }

    /// A read would block: true if hyper may be handed an end of file that
    /// parks the connection (asked for, no request started or in flight,
    /// the last response flushed, the last bytes read a complete head).
    pub(super) fn may_park(&self, tail: &[u8; 4]) -> bool {
        self.park.load(Ordering::Acquire)
            && !self.h2.load(Ordering::Relaxed)
            && !self.upgrade.load(Ordering::Acquire)
            && self.in_flight.load(Ordering::Acquire) == 0
            && self.head_since.load(Ordering::Acquire) == UNSET
            && self.flushed.load(Ordering::Acquire)
            && tail == b"\r\n\r\n"
    }

    /// A parked connection got its next byte: a fresh hyper connection
    /// serves it.
    pub(super) fn resume(&self) {
        self.park.store(false, Ordering::Release);
        self.parked.store(false, Ordering::Release);
        self.flushed.store(false, Ordering::Release);
        self.dispatched.store(0, Ordering::Release);
        self.ambiguous.store(UNSET, Ordering::Release);
        self.on_read();
    }

    /// hyper handed a request to the service: whether its head was the
    /// ambiguous one.
    pub(super) fn dispatch(&self) -> bool {
        let index = self.dispatched.fetch_add(1, Ordering::AcqRel);
        self.ambiguous.load(Ordering::Acquire) == index
    }

    /// A write now can only be hyper's own answer to a request head it
    /// could not parse: HTTP/1, no request in flight, a head started.
    fn unparsed_head(&self) -> bool {
        !self.h2.load(Ordering::Relaxed)
            && self.in_flight.load(Ordering::Acquire) == 0
            && self.head_since.load(Ordering::Acquire) != UNSET
    }

    pub(super) fn head_expired(&self, now: Instant, timeout: Duration) -> bool {
        match self.head_since.load(Ordering::Acquire) {
            UNSET => false,
            since => now >= self.at(since) + timeout,
        }
    }

    pub(super) fn first_byte_expired(&self, now: Instant, timeout: Duration) -> bool {
        !self.spoke.load(Ordering::Acquire) && now >= self.started + timeout
    }

    pub(super) fn idle_expired(&self, now: Instant, timeout: Duration) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
            && now >= self.at(self.idle_since.load(Ordering::Acquire)) + timeout
    }
}

impl Wake for ConnState {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
    }
}

// === impl InFlight ===

impl InFlight {
    /// A request head is complete: its timer stops, the request counts.
    pub(super) fn start(state: &Arc<ConnState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        state.head_since.store(UNSET, Ordering::Release);
        state.park.store(false, Ordering::Release);
        state.flushed.store(false, Ordering::Release);
        state.changed();
        Self(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let s = &self.0;
        s.idle_since.store(s.now_ms(), Ordering::Release);
        if s.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Only a flush after this point proves the response written.
            s.flushed.store(false, Ordering::Release);
            s.changed();
        }
    }
}

// === impl Watched ===

impl<I> Watched<I> {
    /// Bytes given to hyper: HTTP/2 detection, the head timer, the tail.
    pub(super) fn on_bytes(&mut self, read: &[u8]) {
        let have = self.prefix_len as usize;
        if have < 4 {
            let take = (4 - have).min(read.len());
            self.prefix[have..have + take].copy_from_slice(&read[..take]);
            self.prefix_len += take as u8;
            // "PRI " starts the HTTP/2 preface and no HTTP/1 request.
            if self.prefix_len == 4 && &self.prefix == b"PRI " {
                self.state.set_h2();
            }
        }
        if read.len() >= 4 {
            self.tail.copy_from_slice(&read[read.len() - 4..]);
        } else {
            self.tail.rotate_left(read.len());
            self.tail[4 - read.len()..].copy_from_slice(read);
        }
        if !self.state.h2.load(Ordering::Relaxed) {
            if let Some(found) = self.framing.feed(read) {
                self.state.ambiguous.store(found.0, Ordering::Release);
            }
        }
        self.state.on_read();
    }

    /// Writes the replacement of an automatic answer; `Ready` once all of
    /// it is out.
    fn poll_rewrite(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>
    where
        I: Io,
    {
        let Some((bytes, written)) = &mut self.rewrite else {
            return Poll::Ready(Ok(()));
        };
        let mut io = self.io.lock().unwrap_or_else(|p| p.into_inner());
        while *written < bytes.len() {
            match Pin::new(&mut *io).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// If `buf` is hyper's own answer to a head it could not parse, writes
    /// the proxy's (with its flag) instead and reports `buf` written.
    fn replace_automatic(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Option<Poll<io::Result<usize>>>
    where
        I: Io,
    {
        if self.rewrite.is_none() {
            if !self.state.unparsed_head() {
                return None;
            }
            self.rewrite = Some((automatic_error(buf)?, 0));
        }
        Some(match self.poll_rewrite(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(buf.len())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        })
    }
}

/// The proxy's answer in place of `head`, when it is one hyper writes on
/// its own for a request head it could not parse (`400`, `414`, `431`: a
/// bare status line with `content-length: 0`): the same status with the
/// response flag `DPE`, `connection: close` and the reason as a body, as
/// every other proxy-made answer has.
pub(super) fn automatic_error(head: &[u8]) -> Option<Vec<u8>> {
    if head.len() > 200 || !head.ends_with(b"\r\n\r\n") {
        return None;
    }
    let (status, reason) = if head.starts_with(b"HTTP/1.1 431 ") {
        (
            "431 Request Header Fields Too Large",
            "request head over the listener's limit (header fields or bytes)",
        )
    } else if head.starts_with(b"HTTP/1.1 400 ") {
        ("400 Bad Request", "malformed request head")
    } else if head.starts_with(b"HTTP/1.1 414 ") {
        ("414 URI Too Long", "request target too long")
    } else {
        return None;
    };
    let text = String::from_utf8_lossy(head).to_ascii_lowercase();
    if !text.contains("\r\ncontent-length: 0\r\n") {
        return None;
    }
    let body = format!("bad request: {reason}\n");
    Some(
        format!(
            "HTTP/1.1 {status}\r\n{}: DPE\r\ncontent-type: text/plain; charset=utf-8\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            crate::error::RESPONSE_FLAGS_HEADER,
            body.len()
        )
        .into_bytes(),
    )
}

impl<I: Io> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = match self.first.take() {
            Some(b) if buf.remaining() > 0 => {
                buf.put_slice(&[b]);
                Poll::Ready(Ok(()))
            }
            first => {
                self.first = first;
                let mut io = self.io.lock().unwrap_or_else(|p| p.into_inner());
                Pin::new(&mut *io).poll_read(cx, buf)
            }
        };
        let read = &buf.filled()[before..];
        match polled {
            Poll::Ready(Ok(())) if !read.is_empty() => {
                self.on_bytes(read);
                polled
            }
            Poll::Pending if self.state.may_park(&self.tail) => {
                // An end of file: hyper ends its idle connection cleanly.
                self.state.parked.store(true, Ordering::Release);
                Poll::Ready(Ok(()))
            }
            polled => polled,
        }
    }
}

impl<I: Io> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(replaced) = self.replace_automatic(cx, buf) {
            return replaced;
        }
        let mut io = self.io.lock().unwrap_or_else(|p| p.into_inner());
        Pin::new(&mut *io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.rewrite.is_some() || self.state.unparsed_head() {
            // hyper's answer is one buffer; `write` looks at it.
            let one: Vec<&io::IoSlice<'_>> = bufs.iter().filter(|b| !b.is_empty()).collect();
            if let [only] = one[..] {
                if let Some(replaced) = self.replace_automatic(cx, only) {
                    return replaced;
                }
            }
        }
        let mut io = self.io.lock().unwrap_or_else(|p| p.into_inner());
        Pin::new(&mut *io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        let io = self.io.lock().unwrap_or_else(|p| p.into_inner());
        io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = {
            let mut io = self.io.lock().unwrap_or_else(|p| p.into_inner());
            Pin::new(&mut *io).poll_flush(cx)
        };
        // hyper flushes the I/O only once its own buffer is written out.
        if matches!(flushed, Poll::Ready(Ok(())))
            && self.state.in_flight.load(Ordering::Acquire) == 0
        {
            self.state.flushed.store(true, Ordering::Release);
        }
        flushed
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A parked connection stays open without hyper.
        if self.state.parked.load(Ordering::Acquire) {
            return Poll::Ready(Ok(()));
        }
        let mut io = self.io.lock().unwrap_or_else(|p| p.into_inner());
        Pin::new(&mut *io).poll_shutdown(cx)
    }
}
