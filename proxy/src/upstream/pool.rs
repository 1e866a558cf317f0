//! Connection pools.
//!
//! * HTTP/2: multiplexed connections per key, shared by every request
//!   (this is how HTTP/1 traffic between sidecars rides one connection).
//!   A connection carries at most [`H2_MAX_STREAMS_PER_CONNECTION`] open
//!   streams (a stream stays open until its response body ends or is
//!   dropped); a request finding every connection full opens another, up to
//!   [`H2_MAX_CONNECTIONS_PER_KEY`]. As the connection window is that many
//!   stream windows, streams whose readers stalled can never exhaust it:
//!   a client that stops reading costs only its own streams. Closed
//!   connections are dropped at the next checkout.
//! * HTTP/1.1: a stack of connections per key; a connection goes back on it
//!   when its exchange ends (the response body read, or dropped: see
//!   [`crate::upstream::http1`]), and is handed out again once ready for
//!   another request (hyper's `is_ready`). It is dropped once closed, after the idle timeout
//!   (counted from its last request, which errs on the early side of the
//!   app's keep-alive), or beyond [`MAX_IDLE_PER_KEY`].
//!
//! A key is the address plus the transport header sent on the connection, so
//! connections to different workload ports behind one sidecar never mix,
//! and the worker thread ([`crate::workers`]) that uses it.
//! Each pooled connection keeps the identity its peer proved, so a request
//! reusing it still knows whom it talks to.

use crate::body::Body;
use crate::protocol::http::{h1_max_headers, H2_MAX_STREAMS_PER_CONNECTION};
use crate::protocol::io::BoxIo;
use crate::protocol::transport_header::TransportHeader;
use crate::upstream::http1::Connection;
use crate::upstream::http2::{H2Connection, StreamOpener};
use crate::upstream::UpstreamPeer;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
// Keys come from the config's endpoints, not from requests: foldhash
// (seeded per process) instead of SipHash, looked up once per request.
use foldhash::fast::RandomState;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// HTTP/1.1 connections kept per key (idle, or finishing a response).
pub const MAX_IDLE_PER_KEY: usize = 64;

/// HTTP/2 connections per key at most: [`H2_MAX_STREAMS_PER_CONNECTION`]
/// times this many requests may be open to one peer port from one worker;
/// beyond it requests are shed (`503`, `UO`) instead of queued.
pub const H2_MAX_CONNECTIONS_PER_KEY: usize = 32;

/// Every HTTP/2 connection of a key has [`H2_MAX_STREAMS_PER_CONNECTION`]
/// open streams and the key has [`H2_MAX_CONNECTIONS_PER_KEY`] connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("every pooled HTTP/2 connection to the peer is full")]
pub struct PoolFull;

/// HTTP/1.1 connections open per key at most (in use or idle), from one
/// worker: as many requests in flight as the key's HTTP/2 connections may
/// carry. Beyond it a request is shed (`503`, `UO`) instead of opening one
/// more socket per request.
pub const H1_MAX_CONNECTIONS_PER_KEY: usize =
    H2_MAX_CONNECTIONS_PER_KEY * H2_MAX_STREAMS_PER_CONNECTION;

/// Every HTTP/1.1 connection a key may have is open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{H1_MAX_CONNECTIONS_PER_KEY} HTTP/1.1 connections to the endpoint are open")]
pub struct H1Full;

/// Counts one open HTTP/1.1 connection of a key until dropped (it lives in
/// the [`H1Conn`]).
#[derive(Debug)]
pub struct H1Slot(Arc<AtomicUsize>);

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

/// A pooled HTTP/1.1 connection and the identity its peer proved.
pub struct H1Conn {
    /// Queues a request on the connection.
    pub sender: http1::SendRequest<Body>,
    /// The connection, for the request's task to poll (see
    /// [`crate::upstream::http1`]); `None` when a task of its own runs it.
    /// Boxed: hyper's connection state is large, and the pair moves from
    /// the pool to the request and its response body on every request.
    pub conn: Option<Box<Connection>>,
    /// The identity the connection's peer proved.
    pub peer: Option<UpstreamPeer>,
    /// Counts the connection against its key's limit while it is open.
    pub slot: H1Slot,
}
type H2Slot = Arc<tokio::sync::Mutex<Vec<PooledH2>>>;
type IdleList = Vec<(H1Conn, Instant)>;
/// The connections of one key, held while a new one is made, so concurrent
/// callers wait for one handshake instead of each opening a connection.
pub type H2SlotGuard = tokio::sync::OwnedMutexGuard<Vec<PooledH2>>;

/// One pooled HTTP/2 connection.
#[derive(Debug)]
pub struct PooledH2 {
    conn: H2Connection,
    peer: Option<UpstreamPeer>,
    /// Streams open on it: requests sent whose response body has not ended.
    streams: Arc<AtomicUsize>,
}

/// A stream taken on a pooled HTTP/2 connection: the sender to open it
/// with, the identity the peer proved, and the [`StreamSlot`] that counts
/// it until its response body ends.
#[derive(Debug)]
pub struct H2Stream {
    /// Opens the request's stream (see [`crate::upstream::http2::send`]).
    pub sender: StreamOpener,
    /// The identity the connection's peer proved.
    pub peer: Option<UpstreamPeer>,
    /// Keep until the response body ends or is dropped.
    pub slot: StreamSlot,
}

/// Counts one open stream on a pooled HTTP/2 connection until dropped.
#[derive(Debug)]
pub struct StreamSlot(Arc<AtomicUsize>);

/// Shared HTTP/2 connections: per key, up to [`H2_MAX_CONNECTIONS_PER_KEY`]
/// connections of at most [`H2_MAX_STREAMS_PER_CONNECTION`] open streams.
#[derive(Debug, Default)]
pub struct H2Pool {
    slots: Mutex<HashMap<PoolKey, H2Slot, RandomState>>,
}

/// Idle HTTP/1.1 connections, and how many each key has open.
#[derive(Debug, Default)]
pub struct H1Pool {
    idle: Mutex<HashMap<PoolKey, IdleList, RandomState>>,
    open: Mutex<HashMap<PoolKey, Arc<AtomicUsize>, RandomState>>,
}

// === impl H1Slot ===

impl Drop for H1Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

// === impl H1Conn ===

impl std::fmt::Debug for H1Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Conn")
            .field("ready", &self.sender.is_ready())
            .field("polled_by_request", &self.conn.is_some())
            .field("peer", &self.peer)
            .finish()
    }
}

// === impl H2Pool ===

impl H2Pool {
    /// A stream on a live connection for `key` with room for one more, or,
    /// if there is none, the key's connections locked for the caller to add
    /// one through [`H2Pool::handshake`] (concurrent callers wait for that
    /// handshake instead of each opening a connection). Fails with
    /// [`PoolFull`] when every connection the key may have is full.
    pub async fn checkout(&self, key: &PoolKey) -> Result<Result<H2Stream, H2SlotGuard>, PoolFull> {
        let slot = {
            let mut slots = self.slots.lock().expect("not poisoned");
            match slots.get(key) {
                Some(slot) => slot.clone(),
                None => slots.entry(key.clone()).or_default().clone(),
            }
        };
        let mut conns = slot.lock_owned().await;
        conns.retain(|c| !c.conn.is_closed());
        // The first connection with room: older connections fill up first,
        // so a quiet key settles back on one connection.
        for c in conns.iter() {
            if let Some(stream) = c.take_stream() {
                return Ok(Ok(stream));
            }
        }
        if conns.len() >= H2_MAX_CONNECTIONS_PER_KEY {
            return Err(PoolFull);
        }
        Ok(Err(conns))
    }

    /// Performs the HTTP/2 handshake on `io`, adds the connection (with the
    /// identity `peer` proved) to `slot`, and takes its first stream.
    pub async fn handshake(
        io: BoxIo,
        mut slot: H2SlotGuard,
        addr: SocketAddr,
        peer: Option<UpstreamPeer>,
    ) -> Result<H2Stream, h2::Error> {
        let streams = Arc::<AtomicUsize>::default();
        let conn = H2Connection::handshake(io, addr, streams.clone()).await?;
        if !slot.is_empty() {
            tracing::debug!(%addr, connections = slot.len() + 1, "every pooled h2 connection is full; opened another");
        }
        let pooled = PooledH2 {
            conn,
            peer,
            streams,
        };
        let stream = pooled.take_stream().expect("a new connection has room");
        slot.push(pooled);
        Ok(stream)
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

    /// Connections pooled for `key` (closed ones included until the next
    /// checkout prunes them).
    pub fn connections(&self, key: &PoolKey) -> usize {
        let slot = self.slots.lock().expect("not poisoned").get(key).cloned();
        slot.and_then(|s| s.try_lock().ok().map(|c| c.len()))
            .unwrap_or(0)
    }

    /// True if no connection slot exists.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// === impl PooledH2 ===

impl PooledH2 {
    /// A stream on this connection, if it has room for one more.
    fn take_stream(&self) -> Option<H2Stream> {
        let open = self.streams.load(Ordering::Acquire);
        if open >= H2_MAX_STREAMS_PER_CONNECTION {
            return None;
        }
        // Only the holder of the key's lock adds streams; others only
        // remove them, so the check above stays true.
        self.streams.fetch_add(1, Ordering::AcqRel);
        Some(H2Stream {
            sender: self.conn.stream(),
            peer: self.peer.clone(),
            slot: StreamSlot(self.streams.clone()),
        })
    }
}

// === impl StreamSlot ===

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
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
            let (c, since) = &list[i];
            if c.sender.is_closed() || since.elapsed() >= idle_timeout {
                list.remove(i);
            } else if c.sender.is_ready() {
                return Some(list.remove(i).0);
            }
        }
        None
    }

    /// Counts a new connection for `key`, or fails with [`H1Full`] when
    /// the key has [`H1_MAX_CONNECTIONS_PER_KEY`] open.
    pub fn reserve(&self, key: &PoolKey) -> Result<H1Slot, H1Full> {
        let count = {
            let mut open = self.open.lock().expect("not poisoned");
            match open.get(key) {
                Some(c) => c.clone(),
                None => open.entry(key.clone()).or_default().clone(),
            }
        };
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < H1_MAX_CONNECTIONS_PER_KEY).then_some(n + 1)
            })
            .map_err(|_| H1Full)?;
        Ok(H1Slot(count))
    }

    /// Performs the HTTP/1.1 handshake on `io`; a response with more than
    /// `max_headers` header fields fails to parse. The connection is the
    /// caller's to poll (see [`crate::upstream::http1`]).
    pub async fn handshake(
        io: BoxIo,
        max_headers: usize,
    ) -> Result<(http1::SendRequest<Body>, Connection), hyper::Error> {
        let mut b = http1::Builder::new();
        if let Some(max) = h1_max_headers(max_headers) {
            b.max_headers(max);
        }
        b.handshake(TokioIo::new(io)).await
    }

    /// As [`H1Pool::handshake`] for a request that upgrades the
    /// connection: a task of its own runs it (the upgraded stream outlives
    /// the exchange).
    pub async fn handshake_upgrade(
        io: BoxIo,
        addr: SocketAddr,
        max_headers: usize,
    ) -> Result<http1::SendRequest<Body>, hyper::Error> {
        let (sender, conn) = Self::handshake(io, max_headers).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, error = %e, "upstream h1 connection ended");
            }
        });
        Ok(sender)
    }

    /// Puts a connection back in the pool when its exchange ends;
    /// [`H1Pool::checkout`] hands it out once it is ready for another
    /// request (at once when the response body was read to its end; a
    /// connection a task runs, once that task finished the response).
    pub fn checkin(&self, key: PoolKey, conn: H1Conn) {
        let mut idle = self.idle.lock().expect("not poisoned");
        let list = idle.entry(key).or_default();
        if list.len() >= MAX_IDLE_PER_KEY {
            list.retain(|(c, _)| !c.sender.is_closed());
        }
        if list.len() < MAX_IDLE_PER_KEY {
            list.push((conn, Instant::now()));
        }
    }

    /// Drops idle connections older than `idle_timeout` and empty keys.
    pub fn reap(&self, idle_timeout: Duration) {
        let mut idle = self.idle.lock().expect("not poisoned");
        for list in idle.values_mut() {
            list.retain(|(c, since)| since.elapsed() < idle_timeout && !c.sender.is_closed());
        }
        idle.retain(|_, l| !l.is_empty());
        drop(idle);
        // Keys with no connection left (no slot holds their count).
        let mut open = self.open.lock().expect("not poisoned");
        open.retain(|_, c| Arc::strong_count(c) > 1);
    }

    /// Idle connections pooled (ready for a request), over all keys.
    pub fn idle_count(&self) -> usize {
        self.idle
            .lock()
            .expect("not poisoned")
            .values()
            .flatten()
            .filter(|(c, _)| c.sender.is_ready())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http1_connections_per_key_are_capped_until_one_closes() {
        let pool = H1Pool::default();
        let key = |port| PoolKey {
            addr: ([127, 0, 0, 1], port).into(),
            header: None,
            tls: None,
            worker: 0,
        };
        let mut open: Vec<H1Slot> = (0..H1_MAX_CONNECTIONS_PER_KEY)
            .map(|i| {
                pool.reserve(&key(9))
                    .unwrap_or_else(|e| panic!("connection {i}: {e}"))
            })
            .collect();
        assert_eq!(pool.reserve(&key(9)).unwrap_err(), H1Full);
        // Another key has its own count.
        let other = pool.reserve(&key(10)).unwrap();
        // A closed connection makes room for one more.
        open.pop();
        let again = pool.reserve(&key(9)).unwrap();
        assert_eq!(pool.reserve(&key(9)).unwrap_err(), H1Full);
        // Counts of keys with no connection left are dropped by the reaper.
        drop((open, again, other));
        pool.reap(Duration::from_secs(1));
        assert!(pool.open.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_full_connection_makes_the_next_request_open_another() {
        let pool = H2Pool::default();
        let key = PoolKey {
            addr: "127.0.0.1:9".parse().unwrap(),
            header: None,
            tls: None,
            worker: 0,
        };
        // No server needed: the client handshake only writes its preface,
        // and the connection stays open while the other half lives.
        let (client, _server) = tokio::io::duplex(1 << 16);
        let Ok(Err(conns)) = pool.checkout(&key).await else {
            panic!("an empty pool asks for a connection");
        };
        let first = H2Pool::handshake(Box::new(client), conns, key.addr, None)
            .await
            .unwrap();
        let mut open = vec![first.slot];
        for i in 1..H2_MAX_STREAMS_PER_CONNECTION {
            match pool.checkout(&key).await {
                Ok(Ok(stream)) => open.push(stream.slot),
                _ => panic!("stream {i} found no room"),
            }
        }
        // Full: the next request must open another connection.
        let Ok(Err(conns)) = pool.checkout(&key).await else {
            panic!("a full connection took one more stream");
        };
        drop(conns);
        // A stream ends (its response body ended or was dropped): room again.
        open.pop();
        assert!(matches!(pool.checkout(&key).await, Ok(Ok(_))));
        assert_eq!(pool.connections(&key), 1);
    }
}
