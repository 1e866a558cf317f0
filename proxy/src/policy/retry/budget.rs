//! The retry budget of one destination: retries may add at most a share of
//! the requests sent to it, plus a small floor, over a sliding window (as
//! linkerd's and tower's budgets). When an outage makes every request fail,
//! retries then add 20% load, not 200%.
//!
//! The window is a ring of [`BUCKETS`] slots of `ttl / BUCKETS` each, so
//! counts expire slot by slot without a timer. Counters are atomics: the
//! budget is shared by every request to the destination and must not
//! serialize them. Under contention it may briefly allow a retry or two
//! fewer than exact, never more.

use sane_xds_proto as proto;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// Slots in the window.
const BUCKETS: usize = 10;

/// The retry budget of one destination cluster.
#[derive(Debug)]
pub struct RetryBudget {
    cluster: String,
    settings: proto::RetryBudget,
    ratio: f64,
    reserve: u64,
    slot: Duration,
    start: Instant,
    buckets: [Bucket; BUCKETS],
}

#[derive(Debug, Default)]
struct Bucket {
    /// Slot number this bucket counts (0: never used).
    epoch: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

// === impl RetryBudget ===

impl RetryBudget {
    /// A budget for `cluster` with `settings` (defaults applied).
    pub fn new(cluster: &str, settings: &proto::RetryBudget) -> Self {
        let ttl = Duration::from_millis(settings.ttl_ms());
        Self {
            cluster: cluster.to_string(),
            settings: settings.clone(),
            ratio: settings.percent_or_default() / 100.0,
            reserve: u64::from(settings.min_retries_per_second_or_default()) * settings.ttl_ms()
                / 1000,
            slot: ttl / BUCKETS as u32,
            start: Instant::now(),
            buckets: Default::default(),
        }
    }

    /// The destination cluster.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The settings this budget was built with.
    pub fn settings(&self) -> &proto::RetryBudget {
        &self.settings
    }

    /// Counts one request (a first attempt) to the destination.
    pub fn deposit(&self) {
        let now = self.epoch();
        self.bucket(now).requests.fetch_add(1, Ordering::AcqRel);
    }

    /// Takes one retry from the budget; false if it is spent.
    pub fn try_withdraw(&self) -> bool {
        let now = self.epoch();
        let bucket = self.bucket(now);
        bucket.retries.fetch_add(1, Ordering::AcqRel);
        let (requests, retries) = self.totals(now);
        if retries > self.allowed(requests) {
            bucket.retries.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Retries still allowed in the current window.
    pub fn remaining(&self) -> u64 {
        let (requests, retries) = self.totals(self.epoch());
        self.allowed(requests).saturating_sub(retries)
    }

    fn allowed(&self, requests: u64) -> u64 {
        self.reserve + (requests as f64 * self.ratio) as u64
    }

    fn epoch(&self) -> u64 {
        let elapsed = Instant::now().saturating_duration_since(self.start);
        (elapsed.as_nanos() / self.slot.as_nanos().max(1)) as u64 + 1
    }

    fn bucket(&self, epoch: u64) -> &Bucket {
        let b = &self.buckets[(epoch % BUCKETS as u64) as usize];
        let seen = b.epoch.load(Ordering::Acquire);
        if seen != epoch
            && b.epoch
                .compare_exchange(seen, epoch, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            b.requests.store(0, Ordering::Release);
            b.retries.store(0, Ordering::Release);
        }
        b
    }

    fn totals(&self, now: u64) -> (u64, u64) {
        self.buckets
            .iter()
            .filter(|b| {
                let e = b.epoch.load(Ordering::Acquire);
                e != 0 && e <= now && e + BUCKETS as u64 > now
            })
            .fold((0, 0), |(q, r), b| {
                (
                    q + b.requests.load(Ordering::Acquire),
                    r + b.retries.load(Ordering::Acquire),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(percent: f64, min_per_sec: u32) -> RetryBudget {
        RetryBudget::new(
            "c",
            &proto::RetryBudget {
                percent: Some(percent),
                min_retries_per_second: Some(min_per_sec),
                ttl_ms: 10_000,
            },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn at_zero_traffic_only_the_floor_is_available() {
        let none = budget(20.0, 0);
        assert!(!none.try_withdraw(), "no requests, no floor: no retries");
        assert_eq!(none.remaining(), 0);
        let floor = budget(20.0, 1);
        // 1 per second over a 10s window.
        assert_eq!(floor.remaining(), 10);
        for _ in 0..10 {
            assert!(floor.try_withdraw());
        }
        assert!(!floor.try_withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn retries_are_a_share_of_requests() {
        let b = budget(20.0, 0);
        for _ in 0..10 {
            b.deposit();
        }
        assert!(b.try_withdraw());
        assert!(b.try_withdraw());
        assert!(!b.try_withdraw(), "20% of 10 requests is 2 retries");
        for _ in 0..5 {
            b.deposit();
        }
        assert!(b.try_withdraw(), "15 requests allow a third");
        assert!(!b.try_withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn counts_expire_with_the_window() {
        let b = budget(50.0, 0);
        for _ in 0..4 {
            b.deposit();
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        for _ in 0..4 {
            b.deposit();
        }
        assert_eq!(b.remaining(), 4);
        assert!(b.try_withdraw());
        // The first four requests leave the window; the retry is still in it.
        tokio::time::advance(Duration::from_millis(5_500)).await;
        assert_eq!(b.remaining(), 1);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(b.remaining(), 0);
        assert!(!b.try_withdraw());
    }

    #[test]
    fn defaults_are_twenty_percent_and_ten_per_second() {
        let b = RetryBudget::new("c", &proto::RetryBudget::default());
        assert_eq!(b.remaining(), 100);
        assert_eq!(b.cluster(), "c");
    }
}
