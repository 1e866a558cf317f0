//! Peak-EWMA latency estimates (as linkerd2-proxy and tower's `PeakEwma`).
//!
//! Each endpoint keeps an estimate of its response latency. A response
//! slower than the estimate replaces it at once (the "peak"), so a slowing
//! endpoint loses traffic immediately; faster responses pull it down
//! gradually, weighted by how long ago the estimate was updated. Reading the
//! estimate also decays it towards zero, so an endpoint that got no traffic
//! for a while looks cheap again and gets probed instead of starved.

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// How fast old observations fade (linkerd's default).
pub const DECAY: Duration = Duration::from_secs(10);
/// The estimate of an endpoint that has not answered yet (linkerd's default).
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);

/// The latency estimate of one endpoint.
#[derive(Debug)]
pub struct PeakEwma {
    state: Mutex<Estimate>,
}

#[derive(Debug)]
struct Estimate {
    rtt_ns: f64,
    updated: Instant,
}

// === impl PeakEwma ===

impl Default for PeakEwma {
    fn default() -> Self {
        Self {
            state: Mutex::new(Estimate {
                rtt_ns: nanos(DEFAULT_RTT),
                updated: Instant::now(),
            }),
        }
    }
}

impl PeakEwma {
    /// Records a response that took `rtt`.
    pub fn observe(&self, rtt: Duration) {
        let mut s = self.state.lock().expect("not poisoned");
        s.update(nanos(rtt), Instant::now());
    }

    /// The current estimate in nanoseconds, decayed to now.
    pub fn estimate_ns(&self) -> f64 {
        let mut s = self.state.lock().expect("not poisoned");
        s.update(0.0, Instant::now())
    }
}

// === impl Estimate ===

impl Estimate {
    fn update(&mut self, rtt_ns: f64, now: Instant) -> f64 {
        if rtt_ns > self.rtt_ns {
            self.rtt_ns = rtt_ns;
        } else {
            let elapsed = nanos(now.saturating_duration_since(self.updated));
            let decay = (-elapsed / nanos(DECAY)).exp();
            self.rtt_ns = self.rtt_ns * decay + rtt_ns * (1.0 - decay);
        }
        self.updated = now;
        self.rtt_ns
    }
}

fn nanos(d: Duration) -> f64 {
    d.as_nanos() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn peaks_at_once_and_decays_over_time() {
        let e = PeakEwma::default();
        assert_eq!(e.estimate_ns(), nanos(DEFAULT_RTT));
        e.observe(Duration::from_millis(500));
        assert_eq!(e.estimate_ns(), 5e8, "a slow response is taken at once");
        tokio::time::advance(DECAY).await;
        e.observe(Duration::from_millis(10));
        // After one decay period the old value keeps weight 1/e.
        let want = 5e8 / std::f64::consts::E + 1e7 * (1.0 - 1.0 / std::f64::consts::E);
        let got = e.estimate_ns();
        assert!((got - want).abs() / want < 1e-6, "{got} vs {want}");
        tokio::time::advance(DECAY * 10).await;
        assert!(e.estimate_ns() < 1e4, "idle endpoints decay towards 0");
    }
}
