//! The shared state of one destination's circuit breaker: a semaphore per
//! limit, shared by every request to the destination.
//!
//! Semaphores rather than counters because `max_pending_requests` needs
//! waiting: a request that finds every slot taken waits in FIFO order for
//! one to free, as long as fewer than `max_pending_requests` already wait.

use super::error::{Limit, Overflow};
use sane_xds_proto as proto;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// The circuit breaker state of one destination cluster.
#[derive(Debug)]
pub struct Breaker {
    cluster: String,
    settings: proto::CircuitBreaker,
    requests: Option<Arc<Semaphore>>,
    pending: AtomicUsize,
    connections: Option<Arc<Semaphore>>,
    retries: Option<Arc<Semaphore>>,
}

/// Holds one slot of a limit until dropped (no slot when the limit is off).
#[derive(Debug)]
pub struct Permit(Option<OwnedSemaphorePermit>);

/// Counts a request as pending while it waits for a slot, also when the
/// wait is cancelled.
struct Waiting<'a>(&'a AtomicUsize);

// === impl Breaker ===

impl Breaker {
    /// A breaker for `cluster` enforcing `settings`.
    pub fn new(cluster: &str, settings: &proto::CircuitBreaker) -> Self {
        let sem = |v: Option<u32>| v.map(|n| Arc::new(Semaphore::new(n as usize)));
        Self {
            cluster: cluster.to_string(),
            settings: settings.clone(),
            requests: sem(settings.max_requests),
            pending: AtomicUsize::new(0),
            connections: sem(settings.max_connections),
            retries: sem(settings.max_retries),
        }
    }

    /// The limits this breaker enforces.
    pub fn settings(&self) -> &proto::CircuitBreaker {
        &self.settings
    }

    /// The destination cluster.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// A request slot: at once if one is free, after waiting if fewer than
    /// `max_pending_requests` wait already, else [`Overflow`].
    pub async fn acquire_request(&self) -> Result<Permit, Overflow> {
        let Some(sem) = &self.requests else {
            return Ok(Permit(None));
        };
        if let Some(p) = try_acquire(sem) {
            return Ok(Permit(Some(p)));
        }
        let max_pending = self.settings.max_pending_requests as usize;
        if self.pending.fetch_add(1, Ordering::AcqRel) >= max_pending {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            let limit = match max_pending {
                0 => Limit::Requests(self.settings.max_requests.unwrap_or_default()),
                n => Limit::PendingRequests(n as u32),
            };
            return Err(self.overflow(limit));
        }
        let _waiting = Waiting(&self.pending);
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .expect("breaker semaphores are never closed");
        Ok(Permit(Some(permit)))
    }

    /// An upstream connection slot, or [`Overflow`] at once.
    pub fn try_connection(&self) -> Result<Permit, Overflow> {
        self.try_slot(&self.connections, || {
            Limit::Connections(self.settings.max_connections.unwrap_or_default())
        })
    }

    /// A retry slot, or [`Overflow`] at once.
    pub fn try_retry(&self) -> Result<Permit, Overflow> {
        self.try_slot(&self.retries, || {
            Limit::Retries(self.settings.max_retries.unwrap_or_default())
        })
    }

    /// Requests holding a slot now (0 without `max_requests`).
    pub fn active_requests(&self) -> usize {
        in_use(&self.requests, self.settings.max_requests)
    }

    /// Requests waiting for a slot now.
    pub fn pending_requests(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// Retries holding a slot now (0 without `max_retries`).
    pub fn active_retries(&self) -> usize {
        in_use(&self.retries, self.settings.max_retries)
    }

    fn try_slot(
        &self,
        sem: &Option<Arc<Semaphore>>,
        limit: impl FnOnce() -> Limit,
    ) -> Result<Permit, Overflow> {
        match sem {
            None => Ok(Permit(None)),
            Some(s) => try_acquire(s)
                .map(|p| Permit(Some(p)))
                .ok_or_else(|| self.overflow(limit())),
        }
    }

    fn overflow(&self, limit: Limit) -> Overflow {
        Overflow {
            cluster: self.cluster.clone(),
            limit,
        }
    }
}

fn try_acquire(sem: &Arc<Semaphore>) -> Option<OwnedSemaphorePermit> {
    match sem.clone().try_acquire_owned() {
        Ok(p) => Some(p),
        Err(TryAcquireError::NoPermits) => None,
        Err(TryAcquireError::Closed) => unreachable!("breaker semaphores are never closed"),
    }
}

fn in_use(sem: &Option<Arc<Semaphore>>, max: Option<u32>) -> usize {
    match (sem, max) {
        (Some(s), Some(m)) => (m as usize).saturating_sub(s.available_permits()),
        _ => 0,
    }
}

// === impl Permit ===

impl Permit {
    /// True if the permit holds a slot of an enforced limit.
    pub fn is_limited(&self) -> bool {
        self.0.is_some()
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
