//! HTTP/1.1 to a workload, the connection polled by the request's own task.
//!
//! hyper's HTTP/1.1 client is a pair: a `SendRequest` that queues a request
//! for the `Connection`, and the `Connection` future that writes it, parses
//! the response and feeds its body. Spawned, the connection is a second task
//! on every request's critical path (the request wakes it, it wakes the
//! request back with the response, and again for the body). Here the pair
//! stays together in an [`Exchange`]: the request's task polls the
//! connection while it waits for the response head, and the response body
//! ([`H1Body`]) polls it while it is read. hyper still does all of the
//! HTTP/1.1 (parsing, framing, keep-alive, the request body's backpressure).
//!
//! When the exchange ends with the connection ready for another request
//! (the response body read to its end), the pair goes back to the pool as
//! is. Any other end (the response body dropped early, the request
//! cancelled by a timeout, a request body still being written) hands the
//! connection to a task of its own, as hyper's spawned connection would have
//! run it all along: it finishes or closes the exchange, and its sender goes
//! back to the pool, handed out again once ready.

use crate::body::Body;
use crate::protocol::io::BoxIo;
use crate::upstream::pool::{H1Conn, H1Pool, PoolKey};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

/// hyper's HTTP/1.1 connection future over an endpoint's byte stream.
pub type Connection = http1::Connection<TokioIo<BoxIo>, Body>;

/// One request's use of a pooled (or new) HTTP/1.1 connection: the
/// connection goes back to the pool when this is dropped.
#[derive(Debug)]
pub struct Exchange {
    /// `None` once given back.
    conn: Option<H1Conn>,
    pool: Arc<H1Pool>,
    key: PoolKey,
    addr: SocketAddr,
}

/// A response body read from an HTTP/1.1 connection; while it is read, it
/// polls the connection (unless a task of its own does: upgrades).
#[derive(Debug)]
pub struct H1Body {
    body: Incoming,
    exchange: Option<Exchange>,
}

// === impl Exchange ===

impl Exchange {
    /// Takes `conn` for one request; it returns to `pool` under `key` when
    /// the exchange is dropped.
    pub fn new(conn: H1Conn, pool: Arc<H1Pool>, key: PoolKey) -> Self {
        let addr = key.addr;
        Self {
            conn: Some(conn),
            pool,
            key,
            addr,
        }
    }

    /// The sender of the connection, to queue the request with.
    pub fn sender(&mut self) -> &mut http1::SendRequest<Body> {
        &mut self.conn.as_mut().expect("not given back").sender
    }

    /// Polls `sent` (a request queued on this connection) to its response,
    /// polling the connection meanwhile.
    pub async fn drive<F: Future>(&mut self, sent: F) -> F::Output {
        let mut sent = std::pin::pin!(sent);
        std::future::poll_fn(|cx| {
            if !self.poll_conn(cx) {
                // A task of its own runs the connection: it wakes us.
                return sent.as_mut().poll(cx);
            }
            // Only polling the connection (just done, with this task's
            // waker) answers the request: no waker of ours needs to be
            // registered with hyper's callback, which would wake this task
            // once more for nothing.
            match sent.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
                Poll::Ready(out) => Poll::Ready(out),
                // The connection ended: its callback has been answered (an
                // error, or the request given back unsent).
                Poll::Pending if !self.owns_conn() => sent.as_mut().poll(cx),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    /// True if this exchange polls its connection (rather than a task).
    fn owns_conn(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| c.conn.is_some())
    }

    /// Polls the connection if this exchange holds it; false if it does not
    /// (a task of its own runs it, or it ended).
    fn poll_conn(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(c) = self.conn.as_mut() else {
            return false;
        };
        let Some(conn) = c.conn.as_mut() else {
            return false;
        };
        if let Poll::Ready(res) = Pin::new(&mut **conn).poll(cx) {
            if let Err(e) = res {
                tracing::debug!(addr = %self.addr, error = %e, "upstream h1 connection ended");
            }
            c.conn = None;
        }
        true
    }

    /// Gives the connection back: to the pool as is when it is ready for
    /// another request; otherwise, unless it closed, a task of its own
    /// finishes (or closes) the exchange and the sender is pooled.
    fn give_back(&mut self) {
        let Some(mut c) = self.conn.take() else {
            return;
        };
        if c.sender.is_ready() && c.conn.is_some() {
            self.pool.checkin(self.key.clone(), c);
            return;
        }
        if let Some(conn) = c.conn.take() {
            let Ok(rt) = tokio::runtime::Handle::try_current() else {
                return; // no runtime to finish it on: the connection closes
            };
            let addr = self.addr;
            rt.spawn(async move {
                if let Err(e) = (*conn).await {
                    tracing::debug!(%addr, error = %e, "upstream h1 connection ended");
                }
            });
        }
        if !c.sender.is_closed() {
            self.pool.checkin(self.key.clone(), c);
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.give_back();
    }
}

// === impl H1Body ===

impl H1Body {
    /// A body whose connection runs in a task of its own.
    pub fn detached(body: Incoming) -> Self {
        Self {
            body,
            exchange: None,
        }
    }

    /// A body read from `exchange`'s connection.
    pub fn new(body: Incoming, exchange: Exchange) -> Self {
        Self {
            body,
            exchange: Some(exchange),
        }
    }
}

impl http_body::Body for H1Body {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, hyper::Error>>> {
        let this = &mut *self;
        // What the connection already read first (a small response is
        // whole in the read that brought its head): the connection is
        // polled only when the body waits for it.
        let mut polled = Pin::new(&mut this.body).poll_frame(cx);
        if polled.is_pending() && this.exchange.as_mut().is_some_and(|e| e.poll_conn(cx)) {
            polled = Pin::new(&mut this.body).poll_frame(cx);
        }
        if let Poll::Ready(None | Some(Err(_))) = polled {
            // The exchange is over: the connection goes back now, not when
            // the body is dropped.
            this.exchange = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
