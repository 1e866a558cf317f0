//! Coalescing of registry changes before they are pushed: a burst of writes
//! (an `apply` of fifty resources, a rolling restart re-registering
//! endpoints) becomes one push per proxy instead of fifty.
//!
//! After the first change of a batch, publication waits for a quiet period
//! without further changes, but never longer than a maximum delay from that
//! first change, so a steady trickle of writes cannot starve proxies.

use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How changes are coalesced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebounceConfig {
    /// Publish once no change arrived for this long. Default: 100 ms.
    pub quiet: Duration,
    /// Publish at the latest this long after the first change of a batch.
    /// Default: 1 s.
    pub max_delay: Duration,
}

impl Default for DebounceConfig {
    fn default() -> Self {
        DebounceConfig {
            quiet: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        }
    }
}

/// Publishes the current value of `input` at once, then once per batch of
/// changes, until `shutdown` or until `input`'s sender is gone. `publish`
/// gets the value and when the batch's first change was seen.
pub async fn debounce<T: Clone>(
    config: DebounceConfig,
    mut input: watch::Receiver<T>,
    shutdown: CancellationToken,
    mut publish: impl FnMut(T, Instant),
) {
    let current = input.borrow_and_update().clone();
    publish(current, Instant::now());
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = input.changed() => if r.is_err() { return },
        }
        let first = Instant::now();
        let mut last = first;
        let mut closed = false;
        loop {
            let deadline = (last + config.quiet).min(first + config.max_delay);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(deadline) => break,
                r = input.changed() => {
                    if r.is_err() {
                        closed = true;
                        break;
                    }
                    last = Instant::now();
                }
            }
        }
        let current = input.borrow_and_update().clone();
        publish(current, first);
        if closed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    type Log = Arc<Mutex<Vec<(u32, Duration)>>>;

    /// Runs the debouncer on paused time; returns the input and the log of
    /// (value, time since start) publications.
    fn start(config: DebounceConfig) -> (watch::Sender<u32>, Log, CancellationToken) {
        let (tx, rx) = watch::channel(0);
        let log: Log = Arc::default();
        let shutdown = CancellationToken::new();
        let start = Instant::now();
        let l = log.clone();
        tokio::spawn(debounce(config, rx, shutdown.clone(), move |v, _| {
            l.lock().unwrap().push((v, start.elapsed()));
        }));
        (tx, log, shutdown)
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    fn values(log: &Log) -> Vec<u32> {
        log.lock().unwrap().iter().map(|(v, _)| *v).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_period_coalesces_a_burst() {
        let (tx, log, shutdown) = start(DebounceConfig::default());
        settle().await;
        assert_eq!(values(&log), [0]);
        for v in 1..=5 {
            tx.send(v).unwrap();
            settle().await;
            tokio::time::advance(Duration::from_millis(50)).await;
        }
        // 50 ms after the last change: still quiet-waiting.
        settle().await;
        assert_eq!(values(&log), [0]);
        tokio::time::advance(Duration::from_millis(50)).await;
        settle().await;
        assert_eq!(values(&log), [0, 5]);
        assert_eq!(log.lock().unwrap()[1].1, Duration::from_millis(300));
        shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn max_delay_bounds_a_steady_trickle() {
        let (tx, log, shutdown) = start(DebounceConfig::default());
        settle().await;
        // A change every 60 ms never leaves 100 ms of quiet.
        for v in 1..=40 {
            tx.send(v).unwrap();
            // Small steps, so timers fire at their exact deadline.
            for _ in 0..3 {
                settle().await;
                tokio::time::advance(Duration::from_millis(20)).await;
            }
            settle().await;
        }
        let log = log.lock().unwrap().clone();
        // Published at 1 s after the first change, then again 1 s later.
        assert_eq!(log[1].1, Duration::from_millis(1000));
        assert_eq!(log[2].1, Duration::from_millis(2020));
        assert!(log.len() >= 3, "{log:?}");
        shutdown.cancel();
    }
}
