//! Worker threads, one tokio current-thread runtime each (thread per core).
//!
//! With `--workers N` the process runs N single-threaded runtimes: the
//! main one (which also runs the admin server, the xDS client and the
//! certificate rotation) and N-1 started by [`start`]. Each accepted
//! connection is handed to one worker, round robin, and lives there: its
//! task, the tasks it spawns (hyper's HTTP/2 streams, upstream connection
//! drivers), its sockets and its timers all stay on that thread. Each worker
//! keeps its own upstream connections too ([`current`] is part of the pool
//! key), so a request never wakes another thread.
//!
//! This replaces tokio's multi-thread scheduler, whose work stealing and
//! cross-thread wake-ups cost a proxy about 40 % more CPU per request with
//! two threads than with one (bench/RESULTS.md, two-worker pass), the way
//! nginx and haproxy run one event loop per worker.

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
    next: AtomicUsize,
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

/// The runtime the next accepted connection goes to, or `None` when it
/// stays on the caller's (one worker, or the turn of the caller's).
pub fn next() -> Option<Handle> {
    WORKERS.get()?.next()
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
            handles,
            next: AtomicUsize::new(0),
        })
    }

    fn next(&self) -> Option<Handle> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        (i != current()).then(|| self.handles[i].clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_workers_everything_stays_on_the_callers_runtime() {
        // Unit tests never call `start`.
        assert_eq!(current(), 0);
        assert!(next().is_none());
    }

    #[test]
    fn workers_take_turns_and_know_their_index() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let workers = Workers::start(3).unwrap();
            let mut seen = Vec::new();
            for _ in 0..6 {
                let index = match workers.next() {
                    Some(h) => h.spawn(async { current() }).await.unwrap(),
                    None => current(),
                };
                seen.push(index);
            }
            assert_eq!(seen, [0, 1, 2, 0, 1, 2]);
        });
    }
}
