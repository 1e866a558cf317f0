//! Connection and HTTP limits of a sidecar listener: what one client (or a
//! flood of them) may cost the proxy before it is cut off.
//!
//! Every field is optional; `0` means "the default", which is safe for a
//! sidecar in front of an ordinary HTTP workload. The defaults follow what
//! an Envoy/Istio operator knows (Envoy's 60 KiB header limit, a 1 h
//! downstream idle timeout), except the upstream pool idle timeout, which is
//! deliberately short (see [`DEFAULT_UPSTREAM_IDLE_TIMEOUT_MS`]).

use crate::serde_util::duration_ms;
use crate::validate::{Errors, FieldPath};
use serde::{Deserialize, Serialize};

/// Default largest request head (request line and headers; HTTP/2: header
/// list): 60 KiB, Envoy's `max_request_headers_kb` default.
pub const DEFAULT_MAX_REQUEST_HEADER_BYTES: u64 = 60 * 1024;
/// Default time a client has to send a complete HTTP/1 request head.
pub const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 10_000;
/// Default concurrent HTTP/2 streams per downstream connection. Generous,
/// because all requests from one peer sidecar to one workload port share a
/// single HTTP/2 connection.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 1024;
/// Default open connections per listener.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 4096;
/// Default downstream idle timeout (no request in flight): 1 h, Envoy's
/// HTTP connection manager default.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 3_600_000;
/// Default idle timeout of pooled HTTP/1.1 connections to a workload: 4 s.
///
/// It must stay *below* the workload's own keep-alive timeout (Node.js,
/// uvicorn and Apache close idle connections after 5 s, gunicorn after 2 s).
/// If the proxy keeps an idle connection longer than the app does, it will
/// sooner or later send a request on a connection the app is closing at that
/// very moment: the request is lost with a reset and the client sees the
/// classic `503 upstream reset` (`UC`). The proxy also retries that race
/// once (a request that failed on a reused connection before any response
/// byte), which covers apps with an even shorter keep-alive.
pub const DEFAULT_UPSTREAM_IDLE_TIMEOUT_MS: u64 = 4_000;

/// Default time from accept to a connection's first request byte: 10 s.
pub const DEFAULT_FIRST_BYTE_TIMEOUT_MS: u64 = 10_000;
/// Default time an inbound mutual TLS handshake may take, from accept: 10 s.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Default grace of a request body (see
/// [`ConnectionLimits::request_body_timeout`]): 30 s.
pub const DEFAULT_REQUEST_BODY_TIMEOUT_MS: u64 = 30_000;
/// Default least average rate of a request body once its grace is used up:
/// 1 KiB/s.
pub const DEFAULT_REQUEST_BODY_MIN_RATE: u64 = 1024;
/// Default share of `max_connections` above which the timeouts shrink: 50 %.
pub const DEFAULT_OVERLOAD_THRESHOLD_PERCENT: u32 = 50;

/// Largest `max_request_header_bytes` accepted.
pub const MAX_REQUEST_HEADER_LIMIT: u64 = 1024 * 1024;
/// Smallest `max_request_header_bytes` accepted (HTTP/1 needs an 8 KiB read
/// buffer).
pub const MIN_REQUEST_HEADER_LIMIT: u64 = 8 * 1024;

/// Limits of one listener's connections and the HTTP requests on them.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionLimits {
    /// Largest request head (HTTP/1 request line and headers, HTTP/2 header
    /// list). Larger gets `431` (HTTP/1: then the connection closes).
    /// Default: 0, meaning 60 KiB. At least 8 KiB, at most 1 MiB.
    #[prost(uint64, tag = "1")]
    pub max_request_header_bytes: u64,
    /// How long a client may take to send an HTTP/1 request head once it
    /// started one (slowloris): past it, `408` and the connection closes.
    /// Default: 0, meaning 10s. At most 5m.
    #[prost(uint64, tag = "2")]
    #[serde(with = "duration_ms")]
    pub header_read_timeout: u64,
    /// Concurrent HTTP/2 streams per connection (`SETTINGS_MAX_CONCURRENT_STREAMS`).
    /// Default: 0, meaning 1024. At most 65536.
    #[prost(uint32, tag = "3")]
    pub max_concurrent_streams: u32,
    /// Open connections on this listener; beyond it a new connection is
    /// closed at accept (never queued) and counted in
    /// `sane_listener_connections_rejected_total`. Default: 0, meaning 4096.
    #[prost(uint32, tag = "4")]
    pub max_connections: u32,
    /// A downstream connection with no request in flight for this long is
    /// closed (HTTP/2: `GOAWAY`). Default: 0, meaning 1h. At most 24h.
    #[prost(uint64, tag = "5")]
    #[serde(with = "duration_ms")]
    pub idle_timeout: u64,
    /// Inbound listeners: pooled HTTP/1.1 connections to the workload are
    /// closed after being idle this long. Keep it below the workload's
    /// keep-alive timeout. Default: 0, meaning 4s. At most 1h.
    #[prost(uint64, tag = "6")]
    #[serde(with = "duration_ms")]
    pub upstream_idle_timeout: u64,
    /// How long a new connection may stay silent: from accept to its first
    /// byte (the first byte of a request; on an inbound listener, of the
    /// TLS handshake), then it is closed. Shrinks under connection
    /// pressure (see `overload_threshold_percent`). Default: 0, meaning
    /// 10s. At most 5m.
    #[prost(uint64, tag = "20")]
    #[serde(with = "duration_ms")]
    pub first_byte_timeout: u64,
    /// Inbound listeners: how long a mutual TLS handshake may take, from
    /// accept; each handshake runs in its connection's own task, so a slow
    /// one never delays another. Shrinks under connection pressure.
    /// Default: 0, meaning 10s. At most 1m.
    #[prost(uint64, tag = "21")]
    #[serde(with = "duration_ms")]
    pub tls_handshake_timeout: u64,
    /// How long a request body may take before it must keep up
    /// `request_body_min_rate`: a body that stops for this long, or whose
    /// bytes so far arrived slower on average than the minimum rate once
    /// this grace is used up, fails the request with `408` (`SI`) and
    /// closes the connection (HTTP/1) or resets the stream (HTTP/2). Only
    /// until the response head is sent: a streaming exchange the workload
    /// already answered is not cut. Shrinks under connection pressure.
    /// Default: 0, meaning 30s. At most 1h.
    #[prost(uint64, tag = "22")]
    #[serde(with = "duration_ms")]
    pub request_body_timeout: u64,
    /// Least average request body rate, in bytes per second, after the
    /// `request_body_timeout` grace: each byte received extends the body's
    /// deadline by `1 / rate` seconds. Default: 0, meaning 1024 (1 KiB/s).
    /// At most 1073741824 (1 GiB/s).
    #[prost(uint64, tag = "23")]
    pub request_body_min_rate: u64,
    /// Connection pressure, in percent of `max_connections` open, above
    /// which the first-byte, TLS handshake, header read, request body and
    /// idle timeouts shrink, linearly down to 1 % of their configured value
    /// when the listener is full (Envoy's overload manager `reduce_timeouts`).
    /// `100` turns the scaling off. Default: 0, meaning 50. At most 100.
    #[prost(uint32, tag = "24")]
    pub overload_threshold_percent: u32,
}

// === impl ConnectionLimits ===

impl ConnectionLimits {
    /// Request head limit in bytes, with the default applied.
    pub fn max_request_header_bytes(&self) -> u64 {
        or(
            self.max_request_header_bytes,
            DEFAULT_MAX_REQUEST_HEADER_BYTES,
        )
    }

    /// Header read timeout in milliseconds, with the default applied.
    pub fn header_read_timeout_ms(&self) -> u64 {
        or(self.header_read_timeout, DEFAULT_HEADER_READ_TIMEOUT_MS)
    }

    /// HTTP/2 streams per connection, with the default applied.
    pub fn max_concurrent_streams(&self) -> u32 {
        or(
            self.max_concurrent_streams.into(),
            DEFAULT_MAX_CONCURRENT_STREAMS.into(),
        ) as u32
    }

    /// Connections per listener, with the default applied.
    pub fn max_connections(&self) -> u32 {
        or(self.max_connections.into(), DEFAULT_MAX_CONNECTIONS.into()) as u32
    }

    /// Downstream idle timeout in milliseconds, with the default applied.
    pub fn idle_timeout_ms(&self) -> u64 {
        or(self.idle_timeout, DEFAULT_IDLE_TIMEOUT_MS)
    }

    /// Upstream pool idle timeout in milliseconds, with the default applied.
    pub fn upstream_idle_timeout_ms(&self) -> u64 {
        or(self.upstream_idle_timeout, DEFAULT_UPSTREAM_IDLE_TIMEOUT_MS)
    }

    /// First-byte timeout in milliseconds, with the default applied.
    pub fn first_byte_timeout_ms(&self) -> u64 {
        or(self.first_byte_timeout, DEFAULT_FIRST_BYTE_TIMEOUT_MS)
    }

    /// Inbound TLS handshake timeout in milliseconds, with the default applied.
    pub fn tls_handshake_timeout_ms(&self) -> u64 {
        or(self.tls_handshake_timeout, DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS)
    }

    /// Request body grace in milliseconds, with the default applied.
    pub fn request_body_timeout_ms(&self) -> u64 {
        or(self.request_body_timeout, DEFAULT_REQUEST_BODY_TIMEOUT_MS)
    }

    /// Least request body rate in bytes per second, with the default applied.
    pub fn request_body_min_rate(&self) -> u64 {
        or(self.request_body_min_rate, DEFAULT_REQUEST_BODY_MIN_RATE)
    }

    /// Overload threshold in percent, with the default applied.
    pub fn overload_threshold_percent(&self) -> u32 {
        or(
            self.overload_threshold_percent.into(),
            DEFAULT_OVERLOAD_THRESHOLD_PERCENT.into(),
        ) as u32
    }

    /// Validates the limits on their own, with paths relative to them.
    pub fn validate(&self) -> Result<(), crate::ValidationErrors> {
        let mut errs = Errors::default();
        self.validate_into(&FieldPath::root(), &mut errs);
        errs.finish()
    }

    pub(crate) fn validate_into(&self, path: &FieldPath, errs: &mut Errors) {
        let h = self.max_request_header_bytes;
        if h != 0 && !(MIN_REQUEST_HEADER_LIMIT..=MAX_REQUEST_HEADER_LIMIT).contains(&h) {
            errs.push(
                &path.field("max_request_header_bytes"),
                format!(
                    "{h} is outside {MIN_REQUEST_HEADER_LIMIT}..={MAX_REQUEST_HEADER_LIMIT} bytes"
                ),
            );
        }
        errs.duration_at_most(
            &path.field("header_read_timeout"),
            self.header_read_timeout,
            300_000,
        );
        errs.at_most(
            &path.field("max_concurrent_streams"),
            self.max_concurrent_streams.into(),
            65_536,
        );
        errs.duration_at_most(&path.field("idle_timeout"), self.idle_timeout, 86_400_000);
        errs.duration_at_most(
            &path.field("upstream_idle_timeout"),
            self.upstream_idle_timeout,
            3_600_000,
        );
        errs.duration_at_most(
            &path.field("first_byte_timeout"),
            self.first_byte_timeout,
            300_000,
        );
        errs.duration_at_most(
            &path.field("tls_handshake_timeout"),
            self.tls_handshake_timeout,
            60_000,
        );
        errs.duration_at_most(
            &path.field("request_body_timeout"),
            self.request_body_timeout,
            3_600_000,
        );
        errs.at_most(
            &path.field("request_body_min_rate"),
            self.request_body_min_rate,
            1 << 30,
        );
        errs.at_most(
            &path.field("overload_threshold_percent"),
            self.overload_threshold_percent.into(),
            100,
        );
    }
}

fn or(value: u64, default: u64) -> u64 {
    if value == 0 {
        default
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_to_unset_fields() {
        let l: ConnectionLimits = serde_yaml::from_str("{ header_read_timeout: 2s }").unwrap();
        l.validate().unwrap();
        assert_eq!(l.header_read_timeout_ms(), 2_000);
        assert_eq!(l.max_request_header_bytes(), 60 * 1024);
        assert_eq!(l.max_concurrent_streams(), 1024);
        assert_eq!(l.max_connections(), 4096);
        assert_eq!(l.idle_timeout_ms(), 3_600_000);
        assert_eq!(l.upstream_idle_timeout_ms(), 4_000);
        assert_eq!(l.first_byte_timeout_ms(), 10_000);
        assert_eq!(l.tls_handshake_timeout_ms(), 10_000);
        assert_eq!(l.request_body_timeout_ms(), 30_000);
        assert_eq!(l.request_body_min_rate(), 1024);
        assert_eq!(l.overload_threshold_percent(), 50);
        // The pool must give connections up before a typical 5 s app keep-alive.
        const { assert!(DEFAULT_UPSTREAM_IDLE_TIMEOUT_MS < 5_000) };
    }

    #[test]
    fn errors_name_the_field_and_value() {
        let l = ConnectionLimits {
            max_request_header_bytes: 100,
            header_read_timeout: 600_000,
            max_concurrent_streams: 100_000,
            idle_timeout: 90_000_000,
            upstream_idle_timeout: 7_200_000,
            first_byte_timeout: 600_000,
            tls_handshake_timeout: 120_000,
            request_body_timeout: 7_200_000,
            request_body_min_rate: 2 << 30,
            overload_threshold_percent: 101,
            ..Default::default()
        };
        let text = l.validate().unwrap_err().to_string();
        for want in [
            "max_request_header_bytes: 100 is outside 8192..=1048576 bytes",
            "header_read_timeout: 10m is above the maximum of 5m",
            "max_concurrent_streams: 100000 is above the maximum of 65536",
            "idle_timeout: 1day 1h is above the maximum of 1day",
            "upstream_idle_timeout: 2h is above the maximum of 1h",
            "first_byte_timeout: 10m is above the maximum of 5m",
            "tls_handshake_timeout: 2m is above the maximum of 1m",
            "request_body_timeout: 2h is above the maximum of 1h",
            "request_body_min_rate: 2147483648 is above the maximum of 1073741824",
            "overload_threshold_percent: 101 is above the maximum of 100",
        ] {
            assert!(text.contains(want), "{want:?} not in {text}");
        }
    }

    #[test]
    fn a_listener_carries_limits_and_errors_name_its_path() {
        let yaml = r#"
name: inbound
direction: inbound
address: "0.0.0.0:15006"
limits: { max_connections: 2, upstream_idle_timeout: 2h }
"#;
        let l: crate::Listener = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(l.limits().max_connections(), 2);
        let text = l.validate().unwrap_err().to_string();
        assert!(
            text.contains("limits.upstream_idle_timeout: 2h is above the maximum of 1h"),
            "{text}"
        );
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = serde_yaml::from_str::<ConnectionLimits>("{ max_conections: 5 }")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_conections"), "{err}");
    }
}
