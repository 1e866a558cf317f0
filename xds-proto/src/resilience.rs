//! Per-destination resilience settings of a [`crate::DestinationPolicy`]:
//! circuit breaking, outlier detection and the retry budget (Istio
//! DestinationRule style).
//!
//! These protect a destination from its callers: they hold across every
//! route that sends to it, so they sit on the destination, not on rules.

use crate::serde_util::duration_ms;
use crate::validate::{human_ms, Errors, FieldPath};
use serde::{Deserialize, Serialize};

/// Longest base or maximum ejection time accepted.
const MAX_EJECTION_MS: u64 = 86_400_000;

/// Limits that shed load instead of queuing it: a request over a limit fails
/// at once with 503 and response flag `UO`. Counted per proxy and destination.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Upstream connections in use at once. HTTP/2 hops multiplex every
    /// request on one connection per endpoint, so in practice this bounds
    /// HTTP/1.1 hops (one request per connection). Default: no limit.
    #[prost(uint32, optional, tag = "1")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Requests allowed to wait for a free slot once `max_requests` are in
    /// flight (they wait at most the route timeout). Default: 0, none wait.
    #[prost(uint32, tag = "2")]
    pub max_pending_requests: u32,
    /// Requests (attempts, retries included) in flight at once, each counted
    /// until its response body ends. Default: no limit.
    #[prost(uint32, optional, tag = "3")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    /// Retries in flight at once; a retry over it is not sent and the last
    /// failure is returned with flag `URX`. Default: no limit.
    #[prost(uint32, optional, tag = "4")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

/// Ejects endpoints that keep failing from load balancing for a while.
///
/// An endpoint is ejected after `consecutive_5xx` 5xx responses or
/// connection failures in a row (or `consecutive_gateway_errors` 502/503/504
/// or connection failures), for `base_ejection_time` times the number of
/// times it was ejected, at most `max_ejection_time`. It returns on its own
/// when that time has passed. No ejection happens if it would take the
/// ejected share above `max_ejection_percent`.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutlierDetection {
    /// 5xx responses (or connect failures, resets, timeouts) in a row that
    /// eject an endpoint. Default: 5; 0 disables this check.
    #[prost(uint32, optional, tag = "1")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consecutive_5xx: Option<u32>,
    /// 502, 503 or 504 responses (or connect failures, resets, timeouts) in
    /// a row that eject an endpoint. Default: 0, disabled.
    #[prost(uint32, tag = "2")]
    pub consecutive_gateway_errors: u32,
    /// Ejection time of a first ejection; the n-th ejection in a row lasts n
    /// times as long. Default: 0, meaning 30s. Maximum 24h.
    #[prost(uint64, tag = "3")]
    #[serde(rename = "base_ejection_time", with = "duration_ms")]
    pub base_ejection_time_ms: u64,
    /// Longest ejection. Default: 0, meaning 300s (or `base_ejection_time`
    /// if that is longer). Maximum 24h.
    #[prost(uint64, tag = "4")]
    #[serde(rename = "max_ejection_time", with = "duration_ms")]
    pub max_ejection_time_ms: u64,
    /// Largest share of the destination's endpoints ejected at once, 0-100.
    /// Rounded down: with 1 endpoint only 100 allows ejecting it (then
    /// requests fail fast with `UH` until it returns). Default: 10.
    #[prost(uint32, optional, tag = "5")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
}

/// Caps retries to a share of the requests to a destination, so retries
/// cannot multiply load during an outage (as linkerd's retry budget).
///
/// Over the last `ttl`, retries may add at most `percent` of the requests
/// plus `min_retries_per_second` times `ttl` (so light traffic can still be
/// retried). A retry over budget is not sent; the failure is returned with
/// flag `URX`. Every destination has a budget; this only tunes it.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryBudget {
    /// Retries as a percentage of requests, 0-100. Default: 20.
    #[prost(double, optional, tag = "1")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// Retries per second allowed whatever the traffic. Default: 10.
    /// Maximum 100000.
    #[prost(uint32, optional, tag = "2")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_retries_per_second: Option<u32>,
    /// Window requests and retries are counted over. Default: 0, meaning
    /// 10s. From 1s to 60s.
    #[prost(uint64, tag = "3")]
    #[serde(rename = "ttl", with = "duration_ms")]
    pub ttl_ms: u64,
}

// === impl CircuitBreaker ===

impl CircuitBreaker {
    pub(crate) fn validate_into(&self, path: &FieldPath, errs: &mut Errors) {
        // `max_retries: 0` is meaningful (no retries); the others would shed
        // every request.
        for (name, v) in [
            ("max_connections", self.max_connections),
            ("max_requests", self.max_requests),
        ] {
            if v == Some(0) {
                errs.push(
                    &path.field(name),
                    "0 would refuse every request; leave it out for no limit",
                );
            }
        }
    }
}

// === impl OutlierDetection ===

impl OutlierDetection {
    /// Consecutive 5xx that eject (0: disabled), with the default applied.
    pub fn consecutive_5xx_or_default(&self) -> u32 {
        self.consecutive_5xx.unwrap_or(5)
    }

    /// Base ejection time in milliseconds, with the default applied.
    pub fn base_ejection_time_ms(&self) -> u64 {
        if self.base_ejection_time_ms == 0 {
            30_000
        } else {
            self.base_ejection_time_ms
        }
    }

    /// Longest ejection in milliseconds, with the default applied.
    pub fn max_ejection_time_ms(&self) -> u64 {
        if self.max_ejection_time_ms == 0 {
            self.base_ejection_time_ms().max(300_000)
        } else {
            self.max_ejection_time_ms
        }
    }

    /// Largest ejected share in percent, with the default applied.
    pub fn max_ejection_percent_or_default(&self) -> u32 {
        self.max_ejection_percent.unwrap_or(10)
    }

    pub(crate) fn validate_into(&self, path: &FieldPath, errs: &mut Errors) {
        errs.duration_at_most(
            &path.field("base_ejection_time"),
            self.base_ejection_time_ms,
            MAX_EJECTION_MS,
        );
        let max = path.field("max_ejection_time");
        errs.duration_at_most(&max, self.max_ejection_time_ms, MAX_EJECTION_MS);
        if self.max_ejection_time_ms != 0
            && self.max_ejection_time_ms < self.base_ejection_time_ms()
        {
            errs.push(
                &max,
                format!(
                    "{} is shorter than base_ejection_time ({})",
                    human_ms(self.max_ejection_time_ms),
                    human_ms(self.base_ejection_time_ms())
                ),
            );
        }
        if let Some(p) = self.max_ejection_percent {
            errs.percent(&path.field("max_ejection_percent"), f64::from(p));
        }
        if self.consecutive_5xx_or_default() == 0 && self.consecutive_gateway_errors == 0 {
            errs.push(
                path,
                "consecutive_5xx and consecutive_gateway_errors are both 0: nothing would eject",
            );
        }
    }
}

// === impl RetryBudget ===

impl RetryBudget {
    /// Retry percentage, with the default applied.
    pub fn percent_or_default(&self) -> f64 {
        self.percent.unwrap_or(20.0)
    }

    /// Floor of retries per second, with the default applied.
    pub fn min_retries_per_second_or_default(&self) -> u32 {
        self.min_retries_per_second.unwrap_or(10)
    }

    /// Window in milliseconds, with the default applied.
    pub fn ttl_ms(&self) -> u64 {
        if self.ttl_ms == 0 {
            10_000
        } else {
            self.ttl_ms
        }
    }

    pub(crate) fn validate_into(&self, path: &FieldPath, errs: &mut Errors) {
        if let Some(p) = self.percent {
            errs.percent(&path.field("percent"), p);
        }
        if let Some(m) = self.min_retries_per_second {
            errs.at_most(&path.field("min_retries_per_second"), u64::from(m), 100_000);
        }
        if self.ttl_ms != 0 && !(1_000..=60_000).contains(&self.ttl_ms) {
            errs.push(
                &path.field("ttl"),
                format!("{} is not between 1s and 1m", human_ms(self.ttl_ms)),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(f: impl FnOnce(&mut Errors)) -> String {
        let mut e = Errors::default();
        f(&mut e);
        e.finish().err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn defaults_follow_istio_and_linkerd() {
        let o = OutlierDetection::default();
        assert_eq!(o.consecutive_5xx_or_default(), 5);
        assert_eq!(o.base_ejection_time_ms(), 30_000);
        assert_eq!(o.max_ejection_time_ms(), 300_000);
        assert_eq!(o.max_ejection_percent_or_default(), 10);
        let b = RetryBudget::default();
        assert_eq!(
            (
                b.percent_or_default(),
                b.min_retries_per_second_or_default(),
                b.ttl_ms()
            ),
            (20.0, 10, 10_000)
        );
    }

    #[test]
    fn bad_values_name_the_field() {
        let p = FieldPath::new("p");
        let o = OutlierDetection {
            consecutive_5xx: Some(0),
            base_ejection_time_ms: 60_000,
            max_ejection_time_ms: 1_000,
            max_ejection_percent: Some(150),
            ..Default::default()
        };
        let err = errors(|e| o.validate_into(&p, e));
        for want in [
            "p.max_ejection_time: 1s is shorter than base_ejection_time (1m)",
            "p.max_ejection_percent: 150 is not a percentage (0-100)",
            "p: consecutive_5xx and consecutive_gateway_errors are both 0",
        ] {
            assert!(err.contains(want), "{want} not in {err}");
        }
        let b = RetryBudget {
            percent: Some(500.0),
            ttl_ms: 100,
            ..Default::default()
        };
        let err = errors(|e| b.validate_into(&p, e));
        assert!(err.contains("p.percent: 500 is not a percentage"), "{err}");
        assert!(
            err.contains("p.ttl: 100ms is not between 1s and 1m"),
            "{err}"
        );
        let cb = CircuitBreaker {
            max_requests: Some(0),
            max_retries: Some(0),
            ..Default::default()
        };
        let err = errors(|e| cb.validate_into(&p, e));
        assert!(err.contains("p.max_requests: 0 would refuse"), "{err}");
        assert!(!err.contains("max_retries"), "0 retries is a valid limit");
    }
}
