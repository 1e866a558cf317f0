//! Connection pools.
//!
//! * HTTP/2: one multiplexed connection per key, shared by every request
//!   (this is how HTTP/1 traffic between sidecars rides one connection).
//!   Replaced when it closes.
//! * HTTP/1.1: a stack of connections per key; a connection goes back on it
//!   as soon as its request is sent, and is handed out again once its
//!   response body has been read (hyper's `is_ready`), so returning it costs
//!   no task per request. It is dropped once closed, after the idle timeout
//!   (counted from its last request, which errs on the early side of the
//!   app's keep-alive), or beyond [`MAX_IDLE_PER_KEY`].
//!
//! A key is the address plus the transport header sent on the connection, so
//! connections to different workload ports behind one sidecar never mix,
//! and the worker thread ([`crate::workers`]) that uses it.
//! Each pooled connection keeps the identity its peer proved, so a request
//! reusing it still knows whom it talks to.

use crate::body::Body;
use crate::protocol::http::{H2_CONNECTION_WINDOW, H2_STREAM_WINDOW};
use crate::protocol::io::BoxIo;
use crate::protocol::transport_header::TransportHeader;
use crate::upstream::UpstreamPeer;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
// Keys come from the config's endpoints, not from requests: foldhash
// (seeded per process) instead of SipHash, looked up once per request.
use foldhash::fast::RandomState;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// HTTP/1.1 connections kept per key (idle, or finishing a response).
pub const MAX_IDLE_PER_KEY: usize = 64;

/// Identifies connections that can be shared.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// Where the connection goes.
    pub addr: SocketAddr,
    /// The transport header written first, when the peer is a sidecar.
    pub header: Option<TransportHeader>,
    /// The identity the peer must prove over mutual TLS (`Some("")`: any
    /// mesh identity), or `None` for plaintext.
    pub tls: Option<Arc<str>>,
    /// The worker thread whose requests use the connection (it runs
    /// there): workers never share a connection, so a request never wakes
    /// another thread.
    pub worker: usize,
}

/// A shared HTTP/2 connection and the identity its peer proved.
pub type H2Conn = (http2::SendRequest<Body>, Option<UpstreamPeer>);
/// An idle HTTP/1.1 connection and the identity its peer proved.
pub type H1Conn = (http1::SendRequest<Body>, Option<UpstreamPeer>);
type H2Slot = Arc<tokio::sync::Mutex<Option<H2Conn>>>;
type IdleList = Vec<(H1Conn, Instant)>;
/// The slot a new HTTP/2 connection goes in, held while connecting.
pub type H2SlotGuard = tokio::sync::OwnedMutexGuard<Option<H2Conn>>;

/// Shared HTTP/2 connections.
#[derive(Debug, Default)]
pub struct H2Pool {
    slots: Mutex<HashMap<PoolKey, H2Slot, RandomState>>,
}

/// Idle HTTP/1.1 connections.
#[derive(Debug, Default)]
pub struct H1Pool {
    idle: Mutex<HashMap<PoolKey, IdleList, RandomState>>,
}

// === impl H2Pool ===

impl H2Pool {
    /// A sender on the live connection for `key`, or `None` if one must be
    /// made. The returned guard must be filled through [`H2Pool::put`] by the
    /// caller that connects, so concurrent callers wait for one handshake
    /// instead of each opening a connection.
    pub async fn checkout(&self, key: &PoolKey) -> Result<H2Conn, H2SlotGuard> {
        let slot = {
            let mut slots = self.slots.lock().expect("not poisoned");
            match slots.get(key) {
                Some(slot) => slot.clone(),
                None => slots.entry(key.clone()).or_default().clone(),
            }
        };
        let guard = slot.lock_owned().await;
        match guard.as_ref() {
            Some((s, peer)) if !s.is_closed() => Ok((s.clone(), peer.clone())),
            _ => Err(guard),
        }
    }

    /// Performs the HTTP/2 handshake on `io` and stores the connection
    /// with the identity `peer` proved.
    pub async fn handshake(
        io: BoxIo,
        mut slot: H2SlotGuard,
        addr: SocketAddr,
        peer: Option<UpstreamPeer>,
    ) -> Result<http2::SendRequest<Body>, hyper::Error> {
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONNECTION_WINDOW)
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(TokioIo::new(io))
            .await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "upstream h2 connection ended");
            }
        });
        *slot = Some((sender.clone(), peer));
        Ok(sender)
    }

    /// Drops pooled connections whose keys are not in `keep`.
    pub fn retain(&self, keep: impl Fn(&PoolKey) -> bool) {
        self.slots
            .lock()
            .expect("not poisoned")
            .retain(|k, _| keep(k));
    }

    /// Number of keys with a slot.
    pub fn len(&self) -> usize {
        self.slots.lock().expect("not poisoned").len()
    }

    /// True if no connection slot exists.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// === impl H1Pool ===

impl H1Pool {
    /// An idle, ready connection for `key`, if one is pooled. Closed and
    /// expired ones are dropped; ones still reading a response stay.
    pub fn checkout(&self, key: &PoolKey, idle_timeout: Duration) -> Option<H1Conn> {
        let mut idle = self.idle.lock().expect("not poisoned");
        let list = idle.get_mut(key)?;
        // Newest first: the most recently used connection is the least
        // likely to have been closed by the app.
        let mut i = list.len();
        while i > 0 {
            i -= 1;
            let ((sender, _), since) = &list[i];
            if sender.is_closed() || since.elapsed() >= idle_timeout {
                list.remove(i);
            } else if sender.is_ready() {
                let ((sender, peer), _) = list.remove(i);
                return Some((sender, peer));
            }
        }
        None
    }

    /// Performs the HTTP/1.1 handshake on `io`; a response with more than
    /// `max_headers` header fields fails to parse.
    pub async fn handshake(
        io: BoxIo,
        addr: SocketAddr,
        upgrades: bool,
        max_headers: usize,
    ) -> Result<http1::SendRequest<Body>, hyper::Error> {
        let (sender, conn) = http1::Builder::new()
            .max_headers(max_headers)
            .handshake(TokioIo::new(io))
            .await?;
        tokio::spawn(async move {
            let res = if upgrades {
                conn.with_upgrades().await
            } else {
                conn.await
            };
            if let Err(e) = res {
                tracing::debug!(%addr, error = %e, "upstream h1 connection ended");
            }
        });
        Ok(sender)
    }

    /// Puts `sender` back in the pool right after its request was sent;
    /// [`H1Pool::checkout`] hands it out once the response body has been
    /// read to the end (no task waits for that).
    pub fn checkin(
        &self,
        key: PoolKey,
        sender: http1::SendRequest<Body>,
        peer: Option<UpstreamPeer>,
    ) {
        let mut idle = self.idle.lock().expect("not poisoned");
        let list = idle.entry(key).or_default();
        if list.len() >= MAX_IDLE_PER_KEY {
            list.retain(|((s, _), _)| !s.is_closed());
        }
        if list.len() < MAX_IDLE_PER_KEY {
            list.push(((sender, peer), Instant::now()));
        }
    }

    /// Drops idle connections older than `idle_timeout` and empty keys.
    pub fn reap(&self, idle_timeout: Duration) {
        let mut idle = self.idle.lock().expect("not poisoned");
        for list in idle.values_mut() {
            list.retain(|((s, _), since)| since.elapsed() < idle_timeout && !s.is_closed());
        }
        idle.retain(|_, l| !l.is_empty());
    }

    /// Idle connections pooled (ready for a request), over all keys.
    pub fn idle_count(&self) -> usize {
        self.idle
            .lock()
            .expect("not poisoned")
            .values()
            .flatten()
            .filter(|((s, _), _)| s.is_ready())
            .count()
    }
}
