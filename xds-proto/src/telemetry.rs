//! Telemetry: where a proxy sends its trace spans and access logs, and how
//! many it samples (like an Istio `Telemetry` resource).
//!
//! A proxy applies the `Telemetry` of its own namespace (the first by name
//! when there are several). Metrics are always on and need no config.

use crate::validate::{Errors, FieldPath, MAX_NAME_BYTES, MAX_TOKEN_BYTES, MAX_VALUE_BYTES};
use serde::{Deserialize, Serialize};

/// Tracing and access-log settings for the proxies of one namespace.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Telemetry {
    /// Resource name, unique within the namespace. Required.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Namespace whose proxies apply it. Default: `default`.
    #[prost(string, tag = "2")]
    pub namespace: String,
    /// Span export. Default: none, no spans are exported (trace headers are
    /// still continued and propagated).
    #[prost(message, optional, tag = "3")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingConfig>,
    /// JSON access logs. Default: none, no access log.
    #[prost(message, optional, tag = "4")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLogConfig>,
}

/// OTLP span export.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TracingConfig {
    /// Collector URL: `http://host:4317` for gRPC, or the full
    /// `http://host:4318/v1/traces` for HTTP/protobuf. Required.
    #[prost(string, tag = "1")]
    pub endpoint: String,
    /// `grpc` or `http/protobuf`. Default: `grpc`.
    #[prost(string, tag = "2")]
    pub protocol: String,
    /// Share of new traces (those no caller decided on) that are sampled,
    /// 0.0–1.0; a caller's sampling decision is always followed (parent
    /// based). Default: 1.0.
    #[prost(double, optional, tag = "3")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampling_ratio: Option<f64>,
    /// Spans waiting for export; when full, new spans are dropped (and
    /// counted) rather than slowing requests. Default: 0, meaning 2048.
    #[prost(uint32, tag = "4")]
    pub max_queue: u32,
    /// `service.name` of the exported spans. Default: the node's workload
    /// name, else `sane-proxy`.
    #[prost(string, tag = "5")]
    pub service_name: String,
}

/// JSON access logs, one line per request or TCP connection.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessLogConfig {
    /// File to append to; empty or `-` means stdout. Default: stdout.
    #[prost(string, tag = "1")]
    pub path: String,
    /// Share of requests logged, 0.0–1.0. Default: 1.0.
    #[prost(double, optional, tag = "2")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampling_ratio: Option<f64>,
}

/// The largest span queue a proxy accepts.
pub const MAX_SPAN_QUEUE: u32 = 1_000_000;

// === impl Telemetry ===

impl Telemetry {
    /// Validates this resource on its own; paths are relative to it, e.g.
    /// `tracing.sampling_ratio`.
    pub fn validate(&self) -> Result<(), crate::ValidationErrors> {
        let mut errs = Errors::default();
        self.validate_into(&FieldPath::root(), &mut errs);
        errs.finish()
    }

    pub(crate) fn validate_into(&self, path: &FieldPath, errs: &mut Errors) {
        errs.name(&path.field("name"), &self.name);
        if !self.namespace.is_empty() {
            errs.name(&path.field("namespace"), &self.namespace);
        }
        if let Some(t) = &self.tracing {
            let p = path.field("tracing");
            let e = &t.endpoint;
            errs.length(&p.field("endpoint"), e, MAX_VALUE_BYTES);
            errs.length(&p.field("protocol"), &t.protocol, MAX_TOKEN_BYTES);
            errs.length(&p.field("service_name"), &t.service_name, MAX_NAME_BYTES);
            if !(e.starts_with("http://") || e.starts_with("https://")) || e.len() < 10 {
                errs.push(&p.field("endpoint"), format!("{e:?} is not an http(s) URL"));
            }
            if t.protocol().is_none() {
                errs.push(
                    &p.field("protocol"),
                    format!("{:?} is not one of grpc, http/protobuf", t.protocol),
                );
            }
            ratio(errs, &p.field("sampling_ratio"), t.sampling_ratio);
            errs.at_most(
                &p.field("max_queue"),
                u64::from(t.max_queue),
                u64::from(MAX_SPAN_QUEUE),
            );
        }
        if let Some(a) = &self.access_log {
            errs.length(
                &path.field("access_log").field("path"),
                &a.path,
                MAX_VALUE_BYTES,
            );
            ratio(
                errs,
                &path.field("access_log").field("sampling_ratio"),
                a.sampling_ratio,
            );
        }
    }
}

fn ratio(errs: &mut Errors, path: &FieldPath, value: Option<f64>) {
    if let Some(r) = value {
        if !(0.0..=1.0).contains(&r) {
            errs.push(path, format!("{r} is not between 0.0 and 1.0"));
        }
    }
}

// === impl TracingConfig ===

/// The OTLP transport of a [`TracingConfig`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP with protobuf bodies.
    HttpProtobuf,
}

impl TracingConfig {
    /// The transport, with the default applied; `None` when unknown.
    pub fn protocol(&self) -> Option<OtlpProtocol> {
        match self.protocol.as_str() {
            "" | "grpc" => Some(OtlpProtocol::Grpc),
            "http/protobuf" | "http" => Some(OtlpProtocol::HttpProtobuf),
            _ => None,
        }
    }

    /// The sampling ratio of new traces, with the default applied.
    pub fn effective_sampling_ratio(&self) -> f64 {
        self.sampling_ratio.unwrap_or(1.0)
    }

    /// The span queue bound, with the default applied.
    pub fn max_queue(&self) -> usize {
        if self.max_queue == 0 {
            2048
        } else {
            self.max_queue as usize
        }
    }
}

// === impl AccessLogConfig ===

impl AccessLogConfig {
    /// The sampling ratio, with the default applied.
    pub fn effective_sampling_ratio(&self) -> f64 {
        self.sampling_ratio.unwrap_or(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_round_trip_and_field_paths() {
        let t: Telemetry = serde_yaml::from_str(
            "name: mesh\ntracing:\n  endpoint: http://127.0.0.1:4317\n  sampling_ratio: 0.5\naccess_log: {}\n",
        )
        .unwrap();
        t.validate().unwrap();
        assert_eq!(t.tracing.as_ref().unwrap().effective_sampling_ratio(), 0.5);
        assert_eq!(
            t.tracing.as_ref().unwrap().protocol(),
            Some(OtlpProtocol::Grpc)
        );
        assert_eq!(
            t.access_log.as_ref().unwrap().effective_sampling_ratio(),
            1.0
        );

        let bad: Telemetry = serde_yaml::from_str(
            "name: mesh\ntracing:\n  endpoint: nope\n  protocol: thrift\n  sampling_ratio: 2\naccess_log:\n  sampling_ratio: -1\n",
        )
        .unwrap();
        let e = bad.validate().unwrap_err().to_string();
        for field in [
            "tracing.endpoint",
            "tracing.protocol",
            "tracing.sampling_ratio: 2 is not between",
            "access_log.sampling_ratio",
        ] {
            assert!(e.contains(field), "{field} missing from {e}");
        }
        assert!(serde_yaml::from_str::<Telemetry>("name: x\nbogus: 1\n").is_err());
    }

    #[test]
    fn protobuf_keeps_an_explicit_zero_ratio() {
        use prost::Message;
        let t = Telemetry {
            name: "mesh".into(),
            tracing: Some(TracingConfig {
                endpoint: "http://127.0.0.1:4317".into(),
                sampling_ratio: Some(0.0),
                ..Default::default()
            }),
            ..Default::default()
        };
        let back = Telemetry::decode(t.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back.tracing.unwrap().effective_sampling_ratio(), 0.0);
    }
}
