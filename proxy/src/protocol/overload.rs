//! Connection pressure of one listener: how full it is, the timeouts that
//! shrink as it fills, and the silent connections closed first when it is
//! full.
//!
//! * Open connections are counted against `max_connections`. Above
//!   `overload_threshold_percent` the first-byte, TLS handshake, header
//!   read, request body and idle timeouts are scaled down linearly, to
//!   [`MIN_SCALE`] of their configured value when the listener is full
//!   (Envoy's overload manager `reduce_timeouts`). The scale moves in
//!   [`LEVELS`] steps; each step wakes every connection of the listener so
//!   it sets its timer again with the new value (a connection idle since
//!   before the flood is closed as soon as the shrunken timeout says so).
//! * A connection is *silent* from accept until it delivers its first byte
//!   to a server (an HTTP request byte, or the start of a spliced TCP
//!   stream; a TLS handshake in progress is silent too). When the listener
//!   is full, the accept loop closes the oldest silent connection to admit
//!   the new one ([`Overload::evict_oldest_silent`]): a flood of connections
//!   that never speak cannot lock clients that do out.
//!
//! The accept loop wraps each connection's future in [`Silent`], which
//! makes the connection's [`Ticket`] reachable from the I/O path through a
//! thread-local while the future is polled ([`spoke`]); once the connection
//! spoke the wrapper costs nothing more.

use futures::task::AtomicWaker;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::Notify;

/// Fraction of its configured value a timeout keeps when the listener is
/// full.
pub const MIN_SCALE: f64 = 0.01;
/// Steps of the scale between the threshold and a full listener.
pub const LEVELS: u32 = 20;
/// No scaled timeout is shorter than this.
const FLOOR: Duration = Duration::from_millis(10);

thread_local! {
    /// The ticket of the connection whose future is being polled here.
    static CURRENT: RefCell<Option<Arc<Ticket>>> = const { RefCell::new(None) };
}

/// One listener's connection pressure.
#[derive(Debug)]
pub struct Overload {
    max: usize,
    /// Open connections above which timeouts shrink.
    threshold: usize,
    open: AtomicUsize,
    /// The current step: 0 (no scaling) to [`LEVELS`] (full).
    level: AtomicU32,
    /// Woken (every waiter) when `level` changes.
    changed: Notify,
    /// Silent connections, oldest first (entries that spoke or ended are
    /// skipped, and pruned when the queue grows).
    silent: Mutex<VecDeque<Weak<Ticket>>>,
}

/// A connection's silence, shared by its task and the listener's queue.
#[derive(Debug, Default)]
pub struct Ticket {
    spoke: AtomicBool,
    evicted: AtomicBool,
    task: AtomicWaker,
}

/// Counts a connection as open until dropped.
#[derive(Debug)]
pub struct OpenConn(Arc<Overload>);

pin_project_lite::pin_project! {
    /// A connection's future that ends early when the listener evicts it,
    /// and that tells the I/O path which [`Ticket`] is its own.
    pub struct Silent<F> {
        #[pin]
        inner: F,
        ticket: Option<Arc<Ticket>>,
    }
}

/// Marks the connection being polled on this thread as having spoken (no-op
/// outside a [`Silent`] future, e.g. on the gateway).
pub fn spoke() {
    CURRENT.with(|c| {
        if let Some(t) = &*c.borrow() {
            t.spoke.store(true, Ordering::Release);
        }
    });
}

// === impl Overload ===

impl Overload {
    /// The pressure of a listener of `max` connections whose timeouts shrink
    /// above `threshold_percent` of it (`100`: never).
    pub fn new(max: usize, threshold_percent: u32) -> Self {
        let max = max.max(1);
        Self {
            max,
            threshold: (max as u128 * u128::from(threshold_percent.min(100)) / 100) as usize,
            open: AtomicUsize::new(0),
            level: AtomicU32::new(0),
            changed: Notify::new(),
            silent: Mutex::new(VecDeque::new()),
        }
    }

    /// A listener that never scales its timeouts (the gateway's, tests').
    pub fn unlimited() -> Self {
        Self::new(usize::MAX, 100)
    }

    /// Counts one more open connection until the returned guard drops.
    pub fn open(self: &Arc<Self>) -> OpenConn {
        let open = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        self.update(open);
        OpenConn(self.clone())
    }

    /// Open connections now.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// The fraction of their configured value timeouts keep now.
    pub fn scale(&self) -> f64 {
        let level = self.level.load(Ordering::Acquire);
        1.0 - (1.0 - MIN_SCALE) * f64::from(level) / f64::from(LEVELS)
    }

    /// `timeout` under the current pressure.
    pub fn scaled(&self, timeout: Duration) -> Duration {
        if self.level.load(Ordering::Acquire) == 0 {
            return timeout;
        }
        timeout.mul_f64(self.scale()).max(FLOOR.min(timeout))
    }

    /// Woken whenever the scale changes.
    pub fn changed(&self) -> &Notify {
        &self.changed
    }

    /// Registers a newly accepted connection as silent; the returned
    /// wrapper runs its future.
    pub fn silent<F>(&self, fut: F) -> Silent<F> {
        let ticket = Arc::new(Ticket::default());
        let mut queue = self.silent.lock().expect("not poisoned");
        // Entries of connections that spoke or ended stay until popped;
        // pruned once they outnumber the connections a listener can hold.
        if queue.len() >= 2 * self.max.min(1 << 20) + 64 {
            queue.retain(|w| w.upgrade().is_some_and(|t| t.is_silent()));
        }
        queue.push_back(Arc::downgrade(&ticket));
        Silent {
            inner: fut,
            ticket: Some(ticket),
        }
    }

    /// Closes the oldest connection that is still silent, if any; its slot
    /// frees as soon as its task runs.
    pub fn evict_oldest_silent(&self) -> bool {
        let mut queue = self.silent.lock().expect("not poisoned");
        while let Some(w) = queue.pop_front() {
            if let Some(t) = w.upgrade().filter(|t| t.is_silent()) {
                t.evicted.store(true, Ordering::Release);
                t.task.wake();
                return true;
            }
        }
        false
    }

    fn update(&self, open: usize) {
        let level = if open <= self.threshold || self.threshold >= self.max {
            0
        } else {
            let over = (open - self.threshold).min(self.max - self.threshold);
            (over as u64 * u64::from(LEVELS) / (self.max - self.threshold) as u64) as u32
        };
        if self.level.swap(level, Ordering::AcqRel) != level {
            self.changed.notify_waiters();
        }
    }
}

// === impl OpenConn ===

impl Drop for OpenConn {
    fn drop(&mut self) {
        let open = self.0.open.fetch_sub(1, Ordering::AcqRel) - 1;
        self.0.update(open);
    }
}

// === impl Ticket ===

impl Ticket {
    fn is_silent(&self) -> bool {
        !self.spoke.load(Ordering::Acquire) && !self.evicted.load(Ordering::Acquire)
    }
}

// === impl Silent ===

impl<F: Future<Output = ()>> Future for Silent<F> {
    type Output = bool;

    /// `true` if the connection ran to its end, `false` if it was evicted.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        let this = self.project();
        let Some(ticket) = this.ticket.take() else {
            return this.inner.poll(cx).map(|()| true);
        };
        ticket.task.register(cx.waker());
        if ticket.evicted.load(Ordering::Acquire) {
            return Poll::Ready(false);
        }
        let prev = CURRENT.with(|c| c.replace(Some(ticket)));
        let polled = this.inner.poll(cx);
        let ticket = CURRENT
            .with(|c| c.replace(prev))
            .expect("the ticket put there above");
        if !ticket.spoke.load(Ordering::Acquire) {
            *this.ticket = Some(ticket);
        }
        polled.map(|()| true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_shrink_linearly_above_the_threshold() {
        let o = Arc::new(Overload::new(100, 50));
        let t = Duration::from_secs(10);
        let mut open: Vec<OpenConn> = (0..50).map(|_| o.open()).collect();
        assert_eq!(o.scaled(t), t);
        open.extend((0..25).map(|_| o.open()));
        let half = o.scaled(t).as_secs_f64();
        assert!((half - 10.0 * (1.0 - 0.99 / 2.0)).abs() < 0.01, "{half}");
        open.extend((0..25).map(|_| o.open()));
        assert_eq!(o.scaled(t), Duration::from_millis(100));
        open.clear();
        assert_eq!(o.scaled(t), t);
        let off = Arc::new(Overload::new(10, 100));
        let _all: Vec<OpenConn> = (0..10).map(|_| off.open()).collect();
        assert_eq!(off.scaled(t), t);
    }

    #[tokio::test]
    async fn the_oldest_silent_connection_is_evicted_first() {
        let o = Overload::new(4, 50);
        let first = tokio::spawn(o.silent(std::future::pending::<()>()));
        // The second one speaks at once, so it is never evicted.
        let second = tokio::spawn(o.silent(async {
            spoke();
            std::future::pending::<()>().await
        }));
        let third = tokio::spawn(o.silent(std::future::pending::<()>()));
        tokio::task::yield_now().await;
        assert!(o.evict_oldest_silent());
        assert!(!first.await.unwrap(), "the oldest silent one is evicted");
        assert!(o.evict_oldest_silent());
        assert!(!third.await.unwrap(), "the one that spoke is skipped");
        assert!(!o.evict_oldest_silent(), "no silent connection left");
        second.abort();
    }
}
