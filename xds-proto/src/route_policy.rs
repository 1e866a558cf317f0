//! Per-rule request policies of a [`crate::RouteRule`]: retries, fault
//! injection, mirroring and header rewrites (like the matching parts of an
//! Istio VirtualService).
//!
//! They live apart from `route.rs` because each carries its own defaults and
//! limits; the proxy compiles every one into a tower layer's settings.

use crate::serde_util::duration_ms;
use crate::validate::{human_ms, Errors, FieldPath, MAX_TOKEN_BYTES, MAX_VALUE_BYTES};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most retries a rule may ask for: beyond this, retries amplify an outage
/// more than they hide failures.
pub const MAX_RETRY_ATTEMPTS: u32 = 10;
/// Largest request body a rule may buffer for replay or mirroring.
pub const MAX_BUFFERED_BODY_BYTES: u32 = 16 << 20;
/// Default bound on a buffered request body.
pub const DEFAULT_BUFFERED_BODY_BYTES: u32 = 64 << 10;
/// Longest per-try timeout, fault delay or backoff accepted.
const MAX_POLICY_DURATION_MS: u64 = 3_600_000;

/// The conditions `retry_on` accepts. HTTP statuses go in `status_codes`.
pub const RETRY_CONDITIONS: [&str; 10] = [
    "connect-failure",
    "refused-stream",
    "reset",
    "5xx",
    "gateway-error",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// gRPC status codes by name, as `grpc_status` and `retry_on` spell them
/// (case and `-`/`_` do not matter).
pub const GRPC_CODES: [(&str, u32); 17] = [
    ("ok", 0),
    ("cancelled", 1),
    ("unknown", 2),
    ("invalid_argument", 3),
    ("deadline_exceeded", 4),
    ("not_found", 5),
    ("already_exists", 6),
    ("permission_denied", 7),
    ("resource_exhausted", 8),
    ("failed_precondition", 9),
    ("aborted", 10),
    ("out_of_range", 11),
    ("unimplemented", 12),
    ("internal", 13),
    ("unavailable", 14),
    ("data_loss", 15),
    ("unauthenticated", 16),
];

/// When and how a failed request is sent again.
///
/// Only requests that are safe to repeat are retried: idempotent methods
/// (`GET`, `HEAD`, `OPTIONS`, `TRACE`, `PUT`, `DELETE`), or any method when
/// the upstream provably never saw it (`connect-failure`, `refused-stream`),
/// or every method when `retry_non_idempotent` is set. Each retry goes to a
/// different endpoint when another healthy one exists, and the destination's
/// retry budget caps retries across all requests.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Retries after the first attempt. Default: 2. Maximum 10; 0 disables
    /// retries for the rule.
    #[prost(uint32, optional, tag = "1")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// Timeout of each attempt; an attempt that times out is retried under
    /// `5xx`, `gateway-error` and `reset`. Default: 0, none (only the rule's
    /// `timeout` bounds the attempts). Maximum 1h, and no longer than the
    /// rule's `timeout`.
    #[prost(uint64, tag = "2")]
    #[serde(rename = "per_try_timeout", with = "duration_ms")]
    pub per_try_timeout_ms: u64,
    /// Conditions that trigger a retry: `connect-failure`, `refused-stream`,
    /// `reset` (the upstream reset, closed or timed out before responding),
    /// `5xx` (any 5xx response, plus the three before), `gateway-error`
    /// (502, 503, 504, plus connect failures, resets and per-try timeouts)
    /// and gRPC
    /// statuses in the response headers: `cancelled`, `deadline-exceeded`,
    /// `internal`, `resource-exhausted`, `unavailable`. Default: empty, which
    /// with empty `status_codes` means `connect-failure, refused-stream,
    /// unavailable, cancelled` plus status 503 (Istio's default).
    #[prost(string, repeated, tag = "3")]
    pub retry_on: Vec<String>,
    /// HTTP status codes that trigger a retry. Default: none.
    #[prost(uint32, repeated, tag = "4")]
    pub status_codes: Vec<u32>,
    /// Backoff before the first retry; it doubles with each retry up to
    /// `max_interval`, and the actual wait is drawn uniformly between 0 and
    /// that ("full jitter", so retries from many clients spread out).
    /// Default: 0, meaning 25ms. Maximum 1h.
    #[prost(uint64, tag = "5")]
    #[serde(rename = "base_interval", with = "duration_ms")]
    pub base_interval_ms: u64,
    /// Longest backoff. Default: 0, meaning 10 times `base_interval`.
    /// Maximum 1h; at least `base_interval`.
    #[prost(uint64, tag = "6")]
    #[serde(rename = "max_interval", with = "duration_ms")]
    pub max_interval_ms: u64,
    /// Also retry non-idempotent methods (`POST`, `PATCH`, so most gRPC
    /// calls) when the upstream may have processed them. Default: false.
    #[prost(bool, tag = "7")]
    pub retry_non_idempotent: bool,
    /// Largest request body kept for replay; a request whose body grows
    /// beyond it is not retried. Default: 0, meaning 64 KiB. Maximum 16 MiB.
    #[prost(uint32, tag = "8")]
    pub max_body_bytes: u32,
}

/// Faults injected into matching requests, to test how callers cope.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultPolicy {
    /// Delay some requests before they are sent. Default: none.
    #[prost(message, optional, tag = "1")]
    pub delay: Option<FaultDelay>,
    /// Answer some requests with an error instead of sending them (after any
    /// delay). Default: none.
    #[prost(message, optional, tag = "2")]
    pub abort: Option<FaultAbort>,
}

/// A delay fault; the response carries the response flag `DI`.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultDelay {
    /// How long to wait. Required (above 0). Maximum 1h.
    #[prost(uint64, tag = "1")]
    #[serde(rename = "fixed_delay", with = "duration_ms")]
    pub fixed_delay_ms: u64,
    /// Share of matching requests delayed, 0-100. Default: 100.
    #[prost(double, optional, tag = "2")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
}

/// An abort fault; the response carries the response flag `FI`.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultAbort {
    /// HTTP status to answer with (200-599). Default: 0; exactly one of
    /// `http_status` and `grpc_status` is required.
    #[prost(uint32, tag = "1")]
    pub http_status: u32,
    /// gRPC status to answer with, by name (e.g. `unavailable`), sent as a
    /// trailers-only response. Default: empty.
    #[prost(string, tag = "2")]
    pub grpc_status: String,
    /// Share of matching requests aborted, 0-100. Default: 100.
    #[prost(double, optional, tag = "3")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
}

/// Copies a share of requests to a shadow destination. The copy is sent in
/// the background: its response is discarded and it never delays the
/// original. Requests whose body outgrows `max_body_bytes` are not copied.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MirrorPolicy {
    /// Shadow service (`name` or `name.namespace`). Required.
    #[prost(string, tag = "1")]
    pub service: String,
    /// Shadow service port. Default: 0, chosen like a destination's port.
    #[prost(uint32, tag = "2")]
    pub port: u32,
    /// Share of matching requests copied, 0-100. Default: 100.
    #[prost(double, optional, tag = "3")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// Largest request body copied. Default: 0, meaning 64 KiB. Maximum 16 MiB.
    #[prost(uint32, tag = "4")]
    pub max_body_bytes: u32,
}

/// Header rewrites, applied in the order remove, set, add.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeaderOps {
    /// Headers replaced (or created) with these values. Default: none.
    #[prost(btree_map = "string, string", tag = "1")]
    pub set: BTreeMap<String, String>,
    /// Headers appended with these values, keeping existing ones. Default: none.
    #[prost(btree_map = "string, string", tag = "2")]
    pub add: BTreeMap<String, String>,
    /// Headers removed. Default: none.
    #[prost(string, repeated, tag = "3")]
    pub remove: Vec<String>,
}

// === impl RetryPolicy ===

impl RetryPolicy {
    /// Retries after the first attempt, with the default applied.
    pub fn attempts_or_default(&self) -> u32 {
        self.attempts.unwrap_or(2)
    }

    /// First backoff in milliseconds, with the default applied.
    pub fn base_interval_ms(&self) -> u64 {
        if self.base_interval_ms == 0 {
            25
        } else {
            self.base_interval_ms
        }
    }

    /// Longest backoff in milliseconds, with the default applied.
    pub fn max_interval_ms(&self) -> u64 {
        if self.max_interval_ms == 0 {
            self.base_interval_ms() * 10
        } else {
            self.max_interval_ms
        }
    }

    /// Largest replayable body, with the default applied.
    pub fn max_body_bytes(&self) -> u32 {
        body_bound(self.max_body_bytes)
    }

    /// The retry conditions and status codes, with the default applied.
    pub fn conditions(&self) -> (Vec<&str>, Vec<u32>) {
        if self.retry_on.is_empty() && self.status_codes.is_empty() {
            (
                vec![
                    "connect-failure",
                    "refused-stream",
                    "unavailable",
                    "cancelled",
                ],
                vec![503],
            )
        } else {
            (
                self.retry_on.iter().map(String::as_str).collect(),
                self.status_codes.clone(),
            )
        }
    }

    pub(crate) fn validate_into(&self, path: &FieldPath, rule_timeout_ms: u64, errs: &mut Errors) {
        if let Some(a) = self.attempts {
            errs.at_most(
                &path.field("attempts"),
                u64::from(a),
                u64::from(MAX_RETRY_ATTEMPTS),
            );
        }
        let ptt = path.field("per_try_timeout");
        errs.duration_at_most(&ptt, self.per_try_timeout_ms, MAX_POLICY_DURATION_MS);
        if rule_timeout_ms > 0 && self.per_try_timeout_ms > rule_timeout_ms {
            errs.push(
                &ptt,
                format!(
                    "{} is longer than the rule's timeout of {}",
                    human_ms(self.per_try_timeout_ms),
                    human_ms(rule_timeout_ms)
                ),
            );
        }
        for (i, c) in self.retry_on.iter().enumerate() {
            if !errs.length(&path.item("retry_on", i), c, MAX_TOKEN_BYTES) {
                continue;
            }
            if !RETRY_CONDITIONS.contains(&c.as_str()) {
                errs.push(
                    &path.item("retry_on", i),
                    format!(
                        "{c:?} is not a retry condition (one of {}; statuses go in status_codes)",
                        RETRY_CONDITIONS.join(", ")
                    ),
                );
            }
        }
        for (i, s) in self.status_codes.iter().enumerate() {
            if !(100..=599).contains(s) {
                errs.push(
                    &path.item("status_codes", i),
                    format!("{s} is not an HTTP status (100-599)"),
                );
            }
        }
        errs.duration_at_most(
            &path.field("base_interval"),
            self.base_interval_ms,
            MAX_POLICY_DURATION_MS,
        );
        let max = path.field("max_interval");
        errs.duration_at_most(&max, self.max_interval_ms, MAX_POLICY_DURATION_MS);
        if self.max_interval_ms != 0 && self.max_interval_ms < self.base_interval_ms() {
            errs.push(
                &max,
                format!(
                    "{} is shorter than base_interval ({})",
                    human_ms(self.max_interval_ms),
                    human_ms(self.base_interval_ms())
                ),
            );
        }
        errs.at_most(
            &path.field("max_body_bytes"),
            u64::from(self.max_body_bytes),
            u64::from(MAX_BUFFERED_BODY_BYTES),
        );
    }
}

// === impl FaultPolicy ===

impl FaultPolicy {
    pub(crate) fn validate_into(&self, path: &FieldPath, errs: &mut Errors) {
        if self.delay.is_none() && self.abort.is_none() {
            errs.push(path, "needs a delay, an abort or both");
        }
        if let Some(d) = &self.delay {
            let dp = path.field("delay");
            if d.fixed_delay_ms == 0 {
                errs.push(&dp.field("fixed_delay"), "is required (above 0)");
            }
            errs.duration_at_most(
                &dp.field("fixed_delay"),
                d.fixed_delay_ms,
                MAX_POLICY_DURATION_MS,
            );
            if let Some(p) = d.percent {
                errs.percent(&dp.field("percent"), p);
            }
        }
        if let Some(a) = &self.abort {
            let ap = path.field("abort");
            errs.length(&ap.field("grpc_status"), &a.grpc_status, MAX_TOKEN_BYTES);
            match (a.http_status, a.grpc_status.is_empty()) {
                (0, true) => errs.push(&ap, "needs http_status or grpc_status"),
                (s, true) if !(200..=599).contains(&s) => errs.push(
                    &ap.field("http_status"),
                    format!("{s} is not an HTTP status (200-599)"),
                ),
                (0, false) => match grpc_code(&a.grpc_status) {
                    None => errs.push(
                        &ap.field("grpc_status"),
                        format!("{:?} is not a gRPC status name", a.grpc_status),
                    ),
                    Some(0) => {
                        errs.push(&ap.field("grpc_status"), "\"ok\" is not an error to inject")
                    }
                    Some(_) => {}
                },
                (_, false) => errs.push(&ap, "set http_status or grpc_status, not both"),
                _ => {}
            }
            if let Some(p) = a.percent {
                errs.percent(&ap.field("percent"), p);
            }
        }
    }
}

// === impl FaultDelay ===

impl FaultDelay {
    /// Share of requests delayed, with the default applied.
    pub fn percent_or_default(&self) -> f64 {
        self.percent.unwrap_or(100.0)
    }
}

// === impl FaultAbort ===

impl FaultAbort {
    /// Share of requests aborted, with the default applied.
    pub fn percent_or_default(&self) -> f64 {
        self.percent.unwrap_or(100.0)
    }
}

// === impl MirrorPolicy ===

impl MirrorPolicy {
    /// Share of requests copied, with the default applied.
    pub fn percent_or_default(&self) -> f64 {
        self.percent.unwrap_or(100.0)
    }

    /// Largest copied body, with the default applied.
    pub fn max_body_bytes(&self) -> u32 {
        body_bound(self.max_body_bytes)
    }

    pub(crate) fn validate_into(&self, path: &FieldPath, errs: &mut Errors) {
        errs.name(&path.field("service"), &self.service);
        errs.port(&path.field("port"), self.port, true);
        if let Some(p) = self.percent {
            errs.percent(&path.field("percent"), p);
        }
        errs.at_most(
            &path.field("max_body_bytes"),
            u64::from(self.max_body_bytes),
            u64::from(MAX_BUFFERED_BODY_BYTES),
        );
    }
}

// === impl HeaderOps ===

impl HeaderOps {
    pub(crate) fn validate_into(&self, path: &FieldPath, errs: &mut Errors) {
        let removed: Vec<String> = self.remove.iter().map(|n| n.to_ascii_lowercase()).collect();
        for (field, map) in [("set", &self.set), ("add", &self.add)] {
            for (name, value) in map {
                if !errs.length(&path.field(field), name, MAX_TOKEN_BYTES) {
                    continue;
                }
                let p = path.field(field).field(name);
                errs.length(&p, value, MAX_VALUE_BYTES);
                header_target(&p, name, errs);
                if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                    errs.push(&p, format!("{value:?} is not a valid header value"));
                }
                if removed.contains(&name.to_ascii_lowercase()) {
                    errs.push(&p, format!("{name:?} is also in remove"));
                }
            }
        }
        for (i, name) in self.remove.iter().enumerate() {
            header_target(&path.item("remove", i), name, errs);
        }
    }
}

/// Rewriting these would break the hop (framing, routing) rather than
/// change what the application sees.
fn header_target(path: &FieldPath, name: &str, errs: &mut Errors) {
    const RESERVED: [&str; 9] = [
        "host",
        "connection",
        "content-length",
        "transfer-encoding",
        "te",
        "upgrade",
        "keep-alive",
        "proxy-connection",
        "x-sane-response-flags",
    ];
    errs.header_name(path, name);
    let lower = name.to_ascii_lowercase();
    if RESERVED.contains(&lower.as_str()) || lower.starts_with(':') {
        errs.push(path, format!("{name:?} cannot be rewritten"));
    }
}

fn body_bound(v: u32) -> u32 {
    if v == 0 {
        DEFAULT_BUFFERED_BODY_BYTES
    } else {
        v
    }
}

/// The gRPC status code named `name` (`unavailable`, `DEADLINE_EXCEEDED`,
/// `resource-exhausted`, ...).
pub fn grpc_code(name: &str) -> Option<u32> {
    let norm = name.trim().to_ascii_lowercase().replace('-', "_");
    GRPC_CODES.iter().find(|(n, _)| *n == norm).map(|(_, c)| *c)
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
    fn retry_limits_name_the_field() {
        let p = FieldPath::new("r");
        let retry = RetryPolicy {
            attempts: Some(50),
            per_try_timeout_ms: 5_000,
            retry_on: vec!["5xx".into(), "5xxx".into()],
            status_codes: vec![503, 700],
            base_interval_ms: 100,
            max_interval_ms: 50,
            max_body_bytes: 32 << 20,
            ..Default::default()
        };
        let err = errors(|e| retry.validate_into(&p, 2_000, e));
        for want in [
            "r.attempts: 50 is above the maximum of 10",
            "r.per_try_timeout: 5s is longer than the rule's timeout of 2s",
            "r.retry_on[1]: \"5xxx\" is not a retry condition",
            "r.status_codes[1]: 700 is not an HTTP status",
            "r.max_interval: 50ms is shorter than base_interval (100ms)",
            "r.max_body_bytes: 33554432 is above the maximum of 16777216",
        ] {
            assert!(err.contains(want), "{want} not in {err}");
        }
        let ok = RetryPolicy::default();
        assert_eq!(errors(|e| ok.validate_into(&p, 0, e)), "");
        assert_eq!(ok.attempts_or_default(), 2);
        assert_eq!(ok.max_interval_ms(), 250);
        assert_eq!(ok.max_body_bytes(), 64 << 10);
        assert_eq!(ok.conditions().1, vec![503]);
        let off = RetryPolicy {
            attempts: Some(0),
            ..Default::default()
        };
        assert_eq!(off.attempts_or_default(), 0);
    }

    #[test]
    fn absurd_durations_and_percentages_are_rejected() {
        let p = FieldPath::new("f");
        let fault = FaultPolicy {
            delay: Some(FaultDelay {
                fixed_delay_ms: 10 * 3_600_000,
                percent: Some(150.0),
            }),
            abort: Some(FaultAbort {
                http_status: 503,
                grpc_status: "unavailable".into(),
                percent: Some(f64::NAN),
            }),
        };
        let err = errors(|e| fault.validate_into(&p, e));
        for want in [
            "f.delay.fixed_delay: 10h is above the maximum of 1h",
            "f.delay.percent: 150 is not a percentage (0-100)",
            "f.abort: set http_status or grpc_status, not both",
            "f.abort.percent: NaN is not a percentage",
        ] {
            assert!(err.contains(want), "{want} not in {err}");
        }
        let grpc = FaultPolicy {
            abort: Some(FaultAbort {
                grpc_status: "RESOURCE_EXHAUSTED".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(errors(|e| grpc.validate_into(&p, e)), "");
        assert_eq!(grpc_code("resource-exhausted"), Some(8));
        let empty = FaultPolicy::default();
        assert!(errors(|e| empty.validate_into(&p, e)).contains("needs a delay"));
    }

    #[test]
    fn header_ops_reject_framing_headers_and_conflicts() {
        let ops = HeaderOps {
            set: [("x-env".to_string(), "prod".to_string())].into(),
            add: [("Content-Length".to_string(), "3".to_string())].into(),
            remove: vec!["X-Env".into(), "bad header".into()],
        };
        let err = errors(|e| ops.validate_into(&FieldPath::new("h"), e));
        for want in [
            "h.set.x-env: \"x-env\" is also in remove",
            "h.add.Content-Length: \"Content-Length\" cannot be rewritten",
            "h.remove[1]: \"bad header\" is not a valid header name",
        ] {
            assert!(err.contains(want), "{want} not in {err}");
        }
    }

    #[test]
    fn mirror_needs_a_service_and_a_sane_share() {
        let m = MirrorPolicy {
            percent: Some(-1.0),
            ..Default::default()
        };
        let err = errors(|e| m.validate_into(&FieldPath::new("m"), e));
        assert!(err.contains("m.service: must not be empty"), "{err}");
        assert!(err.contains("m.percent: -1 is not a percentage"), "{err}");
    }
}
