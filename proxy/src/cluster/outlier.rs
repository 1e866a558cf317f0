//! Outlier detection: endpoints that keep failing are ejected from load
//! balancing for a while (Envoy/Istio consecutive-errors style).
//!
//! Ejection is decided inline when an outcome is recorded and ends lazily
//! when a pick finds the time has passed, so there is no timer task and no
//! sweep; the first request after the ejection time can use the endpoint
//! again. Each endpoint's health lives beside its load counter and is
//! carried across config reloads the same way, so a reload does not pardon
//! a failing endpoint.

use crate::error::ProxyError;
use sane_xds_proto as proto;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// The outlier detection settings of one cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct OutlierDetector {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    base: Duration,
    max: Duration,
    max_percent: u32,
}

/// What one request to an endpoint showed about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Any response below 500.
    Success,
    /// A 5xx other than 502, 503, 504.
    ServerError,
    /// 502, 503 or 504.
    GatewayError,
    /// The connection failed, was reset or timed out: counts as both.
    LocalFailure,
}

/// The health of one endpoint.
#[derive(Debug, Default)]
pub struct EndpointHealth {
    /// Fast path for picks: false unless an ejection may be running.
    ejected: AtomicBool,
    state: Mutex<Health>,
}

#[derive(Debug, Default)]
struct Health {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    ejected_until: Option<Instant>,
    times_ejected: u32,
    returned_at: Option<Instant>,
}

/// An ejection that just started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ejection {
    /// When the endpoint returns.
    pub until: Instant,
    /// How long it is out.
    pub duration: Duration,
    /// How many times in a row it was ejected (the duration multiplier).
    pub times: u32,
}

// === impl OutlierDetector ===

impl OutlierDetector {
    /// Settings from config, defaults applied.
    pub fn new(cfg: &proto::OutlierDetection) -> Self {
        Self {
            consecutive_5xx: cfg.consecutive_5xx_or_default(),
            consecutive_gateway: cfg.consecutive_gateway_errors,
            base: Duration::from_millis(cfg.base_ejection_time_ms()),
            max: Duration::from_millis(cfg.max_ejection_time_ms()),
            max_percent: cfg.max_ejection_percent_or_default(),
        }
    }

    /// Counts `outcome`; true if the endpoint has now failed often enough
    /// to be ejected (then ask [`OutlierDetector::may_eject`]).
    pub fn observe(&self, health: &EndpointHealth, outcome: Outcome, now: Instant) -> bool {
        let mut h = health.state.lock().expect("not poisoned");
        if h.ejected_until.is_some_and(|u| u > now) {
            // Answers of requests sent before the ejection change nothing.
            return false;
        }
        match outcome {
            Outcome::Success => {
                h.consecutive_5xx = 0;
                h.consecutive_gateway = 0;
            }
            Outcome::ServerError => {
                h.consecutive_5xx += 1;
                h.consecutive_gateway = 0;
            }
            Outcome::GatewayError | Outcome::LocalFailure => {
                h.consecutive_5xx += 1;
                h.consecutive_gateway += 1;
            }
        }
        (self.consecutive_5xx > 0 && h.consecutive_5xx >= self.consecutive_5xx)
            || (self.consecutive_gateway > 0 && h.consecutive_gateway >= self.consecutive_gateway)
    }

    /// Whether one more of `total` endpoints may be ejected when `ejected`
    /// already are. Rounds down, so with one endpoint only 100% allows it.
    pub fn may_eject(&self, ejected: usize, total: usize) -> bool {
        (ejected + 1) * 100 <= self.max_percent as usize * total
    }

    /// Ejects the endpoint: base time times the ejections in a row, at most
    /// the maximum. Every base time it stayed healthy since its last return
    /// forgives one earlier ejection.
    pub fn eject(&self, health: &EndpointHealth, now: Instant) -> Ejection {
        let mut h = health.state.lock().expect("not poisoned");
        let forgiven = h.returned_at.map_or(0, |r| {
            let healthy = now.saturating_duration_since(r).as_nanos();
            (healthy / self.base.as_nanos().max(1)).min(u128::from(u32::MAX)) as u32
        });
        h.times_ejected = h.times_ejected.saturating_sub(forgiven) + 1;
        let duration = self.base.saturating_mul(h.times_ejected).min(self.max);
        let until = now + duration;
        h.ejected_until = Some(until);
        h.consecutive_5xx = 0;
        h.consecutive_gateway = 0;
        health.ejected.store(true, Ordering::Release);
        Ejection {
            until,
            duration,
            times: h.times_ejected,
        }
    }
}

// === impl Outcome ===

impl Outcome {
    /// The outcome of a response with `status`.
    pub fn of_status(status: u16) -> Self {
        match status {
            502..=504 => Outcome::GatewayError,
            500..=599 => Outcome::ServerError,
            _ => Outcome::Success,
        }
    }

    /// The outcome of a failed exchange, or `None` if the failure says
    /// nothing about the endpoint (a limit, a bad request).
    pub fn of_error(e: &ProxyError) -> Option<Self> {
        match e {
            ProxyError::ConnectFailed { .. }
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::Tls { .. }
            | ProxyError::Handshake { .. }
            | ProxyError::UpstreamReset { .. }
            | ProxyError::Timeout { .. } => Some(Outcome::LocalFailure),
            _ => None,
        }
    }
}

// === impl EndpointHealth ===

impl EndpointHealth {
    /// False unless an ejection may be running: a lock-free check that
    /// lets a pick skip reading the clock for [`EndpointHealth::is_ejected`].
    pub fn may_be_ejected(&self) -> bool {
        self.ejected.load(Ordering::Acquire)
    }

    /// True while an ejection runs; ends it once its time has passed.
    pub fn is_ejected(&self, now: Instant) -> bool {
        if !self.ejected.load(Ordering::Acquire) {
            return false;
        }
        let mut h = self.state.lock().expect("not poisoned");
        match h.ejected_until {
            Some(until) if until > now => true,
            Some(until) => {
                h.ejected_until = None;
                h.returned_at = Some(until);
                self.ejected.store(false, Ordering::Release);
                false
            }
            None => {
                self.ejected.store(false, Ordering::Release);
                false
            }
        }
    }

    /// When the running ejection ends, if one runs.
    pub fn ejected_until(&self, now: Instant) -> Option<Instant> {
        let h = self.state.lock().expect("not poisoned");
        h.ejected_until.filter(|u| *u > now)
    }

    /// Ejections in a row so far (the multiplier of the next one, minus one).
    pub fn times_ejected(&self) -> u32 {
        self.state.lock().expect("not poisoned").times_ejected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detector(c5xx: Option<u32>, gw: u32, percent: Option<u32>) -> OutlierDetector {
        OutlierDetector::new(&proto::OutlierDetection {
            consecutive_5xx: c5xx,
            consecutive_gateway_errors: gw,
            base_ejection_time_ms: 10_000,
            max_ejection_time_ms: 25_000,
            max_ejection_percent: percent,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_errors_trip_and_a_success_resets() {
        let d = detector(Some(3), 0, None);
        let h = EndpointHealth::default();
        let now = Instant::now();
        assert!(!d.observe(&h, Outcome::ServerError, now));
        assert!(!d.observe(&h, Outcome::LocalFailure, now));
        assert!(!d.observe(&h, Outcome::Success, now));
        assert!(!d.observe(&h, Outcome::ServerError, now));
        assert!(!d.observe(&h, Outcome::GatewayError, now));
        assert!(d.observe(&h, Outcome::ServerError, now));
        // 4xx are the caller's fault, not the endpoint's.
        assert_eq!(Outcome::of_status(404), Outcome::Success);
        assert_eq!(Outcome::of_status(503), Outcome::GatewayError);
        assert_eq!(
            Outcome::of_error(&ProxyError::Overloaded { limit: "x".into() }),
            None
        );
    }

    #[tokio::test(start_paused = true)]
    async fn gateway_errors_count_separately() {
        let d = detector(Some(0), 2, None);
        let h = EndpointHealth::default();
        let now = Instant::now();
        assert!(!d.observe(&h, Outcome::GatewayError, now));
        assert!(!d.observe(&h, Outcome::ServerError, now), "a 500 resets");
        assert!(!d.observe(&h, Outcome::LocalFailure, now));
        assert!(d.observe(&h, Outcome::GatewayError, now));
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_grows_with_repeats_is_capped_and_ends_by_itself() {
        let d = detector(Some(1), 0, Some(100));
        let h = EndpointHealth::default();
        let t0 = Instant::now();
        let e = d.eject(&h, t0);
        assert_eq!((e.duration, e.times), (Duration::from_secs(10), 1));
        assert!(h.is_ejected(t0 + Duration::from_secs(9)));
        assert_eq!(h.ejected_until(t0), Some(t0 + Duration::from_secs(10)));
        // Failures reported during the ejection are ignored.
        assert!(!d.observe(&h, Outcome::ServerError, t0 + Duration::from_secs(1)));
        let back = t0 + Duration::from_secs(10);
        assert!(!h.is_ejected(back));
        assert_eq!(h.ejected_until(back), None);

        let e = d.eject(&h, back + Duration::from_secs(1));
        assert_eq!((e.duration, e.times), (Duration::from_secs(20), 2));
        let back = back + Duration::from_secs(21);
        assert!(!h.is_ejected(back));
        let e = d.eject(&h, back);
        assert_eq!(e.duration, Duration::from_secs(25), "capped at the maximum");

        // Healthy for two base times after returning: two ejections forgiven.
        let back = back + Duration::from_secs(25);
        assert!(!h.is_ejected(back));
        let e = d.eject(&h, back + Duration::from_secs(20));
        assert_eq!(e.times, 2);
    }

    #[test]
    fn ejection_cap_rounds_down() {
        let ten = detector(None, 0, None);
        assert!(!ten.may_eject(0, 1), "the only endpoint stays at 10%");
        assert!(!ten.may_eject(0, 9));
        assert!(ten.may_eject(0, 10));
        assert!(!ten.may_eject(1, 10));
        let all = detector(None, 0, Some(100));
        assert!(all.may_eject(0, 1));
        assert!(!all.may_eject(1, 1));
        let none = detector(None, 0, Some(0));
        assert!(!none.may_eject(0, 100));
    }
}
