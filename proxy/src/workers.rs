//! Worker threads, one tokio current-thread runtime each (thread per core).
//!
//! With `--workers N` the process runs N single-threaded runtimes: the
//! main one (which also runs the admin server, the xDS client and the
//! certificate rotation) and N-1 started by [`start`]. Each accepted
//! connection is handed to the worker holding the fewest connections
//! (the next in turn among equals) and lives there: its
//! task, the tasks it spawns (hyper's HTTP/2 streams, upstream connection
//! drivers), its sockets and its timers all stay on that thread. Each worker
//! keeps its own upstream connections too ([`current`] is part of the pool
//! key), so a request never wakes another thread.
//!
//! This replaces tokio's multi-thread scheduler, whose work stealing and
//! cross-thread wake-ups cost a proxy about 40 % more CPU per request with
//! two threads than with one (bench/RESULTS.md, two-worker pass), the way
//! nginx and haproxy run one event loop per worker.
//!
//! Fewest connections rather than plain turns, as haproxy spreads accepted
//! connections over its threads: a sidecar's traffic from a peer sidecar
//! arrives on one or two long-lived HTTP/2 connections, and strict turns
//! counted over every connection ever accepted (readiness probes, short
//! TCP connections) could put both on one worker and leave the other idle.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use tokio::runtime::Handle;

static WORKERS: OnceLock<Workers> = OnceLock::new();

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The runtimes connections are spread over.
#[derive(Debug)]
pub struct Workers {
    handles: Vec<Handle>,
    /// Connections each worker holds now.
    load: Vec<AtomicUsize>,
    next: AtomicUsize,
}

/// One connection counted against the worker it was handed to, until
/// dropped (the connection's task holds it).
#[derive(Debug)]
#[must_use = "the connection counts against its worker until this is dropped"]
pub struct Held {
    counted: Option<(&'static Workers, usize)>,
}

/// Starts `n - 1` worker threads beside the current runtime (which becomes
/// worker 0) and hands every connection accepted from now on to them in
/// turn. Call once, from the main runtime; with `n <= 1` every connection
/// stays on the main runtime.
pub fn start(n: usize) -> std::io::Result<()> {
    if n > 1 {
        let _ = WORKERS.set(Workers::start(n)?);
    }
    Ok(())
}

/// The worker the calling thread is (0 outside worker threads).
pub fn current() -> usize {
    INDEX.with(Cell::get)
}

/// Every worker's runtime, the caller's first (just the caller's with one
/// worker): for per-thread housekeeping, such as the allocator's.
pub fn runtimes() -> Vec<Handle> {
    match WORKERS.get() {
        Some(w) => w.handles.clone(),
        None => vec![Handle::current()],
    }
}

/// The runtime an accepted connection goes to (`None`: it stays on the
/// caller's, with one worker or when the caller's holds the fewest), and
/// the count it holds there while it lives.
pub fn assign() -> (Option<Handle>, Held) {
    match WORKERS.get() {
        Some(w) => w.assign(),
        None => (None, Held { counted: None }),
    }
}

// === impl Workers ===

impl Workers {
    /// The current runtime as worker 0 and `n - 1` new threads.
    fn start(n: usize) -> std::io::Result<Self> {
        let mut handles = vec![Handle::current()];
        for index in 1..n {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name(format!("sane-worker-{index}"))
                .spawn(move || {
                    INDEX.with(|i| i.set(index));
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = tx.send(Ok(rt.handle().clone()));
                    // Runs what it is handed until the process exits.
                    rt.block_on(std::future::pending::<()>());
                })?;
            let handle = rx.recv().map_err(|_| {
                std::io::Error::other(format!("worker {index} ended before starting"))
            })??;
            handles.push(handle);
        }
        Ok(Self {
            load: handles.iter().map(|_| AtomicUsize::new(0)).collect(),
            handles,
            next: AtomicUsize::new(0),
        })
    }

    fn assign(&'static self) -> (Option<Handle>, Held) {
        let i = self.least_loaded();
        self.load[i].fetch_add(1, Ordering::Relaxed);
        let handle = (i != current()).then(|| self.handles[i].clone());
        let counted = Some((self, i));
        (handle, Held { counted })
    }

    /// The worker with the fewest connections; among equals, the first
    /// from a start that moves on by one per call.
    fn least_loaded(&self) -> usize {
        let n = self.handles.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        (0..n)
            .map(|k| (start + k) % n)
            .min_by_key(|&i| self.load[i].load(Ordering::Relaxed))
            .unwrap_or(0)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some((workers, i)) = self.counted {
            workers.load[i].fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_workers_everything_stays_on_the_callers_runtime() {
        // Unit tests never call `start`.
        assert_eq!(current(), 0);
        let (handle, held) = assign();
        assert!(handle.is_none());
        assert!(held.counted.is_none());
    }

    #[tokio::test]
    async fn without_workers_the_only_runtime_is_the_callers() {
        let runtimes = runtimes();
        assert_eq!(runtimes.len(), 1);
        let caller = std::thread::current().id();
        let ran_on = runtimes[0].spawn(async { std::thread::current().id() });
        assert_eq!(ran_on.await.unwrap(), caller);
    }

    /// A runtime for the test (worker 0) and two worker threads.
    fn three_workers() -> (tokio::runtime::Runtime, &'static Workers) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let workers = {
            let _in = rt.enter();
            Box::leak(Box::new(Workers::start(3).unwrap()))
        };
        (rt, workers)
    }

    /// Where `assign` put a connection: the index of the worker it runs on.
    async fn index(assigned: &(Option<Handle>, Held)) -> usize {
        match &assigned.0 {
            Some(h) => h.spawn(async { current() }).await.unwrap(),
            None => current(),
        }
    }

    #[test]
    fn connections_take_turns_while_workers_hold_as_many() {
        let (rt, workers) = three_workers();
        rt.block_on(async {
            let mut seen = Vec::new();
            for _ in 0..6 {
                // Each connection closes before the next is accepted.
                let assigned = workers.assign();
                seen.push(index(&assigned).await);
            }
            assert_eq!(seen, [0, 1, 2, 0, 1, 2]);
        });
    }

    #[test]
    fn a_connection_goes_to_the_worker_holding_the_fewest() {
        let (rt, workers) = three_workers();
        rt.block_on(async {
            // Three short connections and one long one: the long one is on
            // worker 1 (the second accepted) when the short ones have gone.
            let first = workers.assign();
            let long = workers.assign();
            let third = workers.assign();
            assert_eq!(index(&long).await, 1);
            drop((first, third));
            // Turns alone would give the next two to workers 0 and 1; the
            // one holding a connection is passed over for both.
            let a = workers.assign();
            let b = workers.assign();
            let mut got = [index(&a).await, index(&b).await];
            got.sort_unstable();
            assert_eq!(got, [0, 2]);
            // All hold one now; closing one makes its worker the next pick.
            drop(b);
            let c = workers.assign();
            assert_eq!(index(&c).await, got[1]);
            assert_eq!(
                workers
                    .load
                    .iter()
                    .map(|l| l.load(Ordering::Relaxed))
                    .collect::<Vec<_>>(),
                [1, 1, 1]
            );
            drop((long, a, c));
            assert!(workers.load.iter().all(|l| l.load(Ordering::Relaxed) == 0));
        });
    }
}
