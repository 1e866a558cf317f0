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
            ..Default::default()
        };
        let text = l.validate().unwrap_err().to_string();
        for want in [
            "max_request_header_bytes: 100 is outside 8192..=1048576 bytes",
            "header_read_timeout: 10m is above the maximum of 5m",
            "max_concurrent_streams: 100000 is above the maximum of 65536",
            "idle_timeout: 1day 1h is above the maximum of 1day",
            "upstream_idle_timeout: 2h is above the maximum of 1h",
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
