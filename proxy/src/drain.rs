//! Readiness and graceful drain.
//!
//! Draining (SIGTERM or `POST /drain`) closes every listener so new
//! connections are refused, asks open HTTP connections to finish their
//! in-flight requests and close (HTTP/1 after the current response, HTTP/2
//! with GOAWAY), then waits for all connections up to the drain deadline.
//! Whatever is still open at the deadline is cut.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Shared drain state: a signal plus a tracker of connection tasks.
#[derive(Clone, Debug, Default)]
pub struct Drain {
    signal: CancellationToken,
    tracker: TaskTracker,
}

/// Whether the proxy should receive traffic: started, nothing blocking
/// (e.g. the first config from the control plane), and not draining.
#[derive(Clone, Debug, Default)]
pub struct Readiness {
    ready: Arc<AtomicBool>,
    blockers: Arc<AtomicUsize>,
    /// Why each blocker still blocks, once it knows (`xds`: the last
    /// connection error), for `/ready` to show.
    reasons: Reasons,
    drain: Drain,
}

type Reasons = Arc<Mutex<BTreeMap<&'static str, String>>>;

/// Holds readiness back until dropped.
#[derive(Debug)]
pub struct BlockReady {
    what: &'static str,
    blockers: Arc<AtomicUsize>,
    reasons: Reasons,
}

/// How a drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every connection finished before the deadline.
    Clean,
    /// The deadline passed with connections still open.
    DeadlineExceeded,
}

// === impl Drain ===

impl Drain {
    /// Starts draining (idempotent).
    pub fn start(&self) {
        self.signal.cancel();
    }

    /// True once draining has started.
    pub fn is_draining(&self) -> bool {
        self.signal.is_cancelled()
    }

    /// Completes when draining starts.
    pub async fn signaled(&self) {
        self.signal.cancelled().await
    }

    /// Runs a connection task, tracked so the drain can wait for it.
    pub fn spawn<F>(&self, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(fut);
    }

    /// [`Drain::spawn`] on another runtime (a worker thread).
    pub fn spawn_on<F>(&self, fut: F, runtime: &tokio::runtime::Handle)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn_on(fut, runtime);
    }

    /// Waits for tracked tasks to finish, at most `deadline`.
    pub async fn wait(&self, deadline: Duration) -> DrainOutcome {
        self.tracker.close();
        match tokio::time::timeout(deadline, self.tracker.wait()).await {
            Ok(()) => DrainOutcome::Clean,
            Err(_) => DrainOutcome::DeadlineExceeded,
        }
    }

    /// Tracked tasks still running.
    pub fn active(&self) -> usize {
        self.tracker.len()
    }
}

// === impl Readiness ===

impl Readiness {
    /// Not ready until [`Readiness::set_ready`]; never ready once draining.
    pub fn new(drain: Drain) -> Self {
        Self {
            ready: Arc::default(),
            blockers: Arc::default(),
            reasons: Arc::default(),
            drain,
        }
    }

    /// Keeps the proxy not ready until the returned guard is dropped.
    pub fn block(&self, what: &'static str) -> BlockReady {
        self.blockers.fetch_add(1, Ordering::AcqRel);
        BlockReady {
            what,
            blockers: self.blockers.clone(),
            reasons: self.reasons.clone(),
        }
    }

    /// What still blocks readiness and why, as `what: reason` lines, for
    /// those blockers that said ([`BlockReady::note`]).
    pub fn reasons(&self) -> Vec<String> {
        self.reasons
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(what, why)| format!("{what}: {why}"))
            .collect()
    }

    /// Marks the proxy ready.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// True when ready and not draining.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
            && self.blockers.load(Ordering::Acquire) == 0
            && !self.drain.is_draining()
    }
}

// === impl BlockReady ===

impl BlockReady {
    /// Records why readiness is still blocked (the last error), shown by
    /// `/ready` until this guard is dropped or notes another reason.
    pub fn note(&self, reason: impl Into<String>) {
        self.reasons
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(self.what, reason.into());
    }
}

impl Drop for BlockReady {
    fn drop(&mut self) {
        tracing::debug!(what = self.what, "no longer blocking readiness");
        self.reasons
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(self.what);
        self.blockers.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_for_tasks_then_gives_up_at_the_deadline() {
        let drain = Drain::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        drain.spawn(async move {
            let _ = rx.await;
        });
        let ready = Readiness::new(drain.clone());
        ready.set_ready();
        let block = ready.block("xds");
        assert!(!ready.is_ready());
        block.note("connecting to https://cp: invalid peer certificate");
        assert_eq!(
            ready.reasons(),
            ["xds: connecting to https://cp: invalid peer certificate"]
        );
        drop(block);
        assert!(ready.reasons().is_empty());
        assert!(ready.is_ready());
        drain.start();
        assert!(!ready.is_ready());
        assert_eq!(
            drain.wait(Duration::from_secs(1)).await,
            DrainOutcome::DeadlineExceeded
        );
        tx.send(()).unwrap();
        assert_eq!(
            drain.wait(Duration::from_secs(1)).await,
            DrainOutcome::Clean
        );
    }
}
