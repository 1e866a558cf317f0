//! Listeners: the sockets a proxy accepts traffic on.

use crate::serde_util::{duration_ms, enum_de, enum_ser};
use crate::service::Protocol;
use crate::validate::{Errors, FieldPath, MAX_NAME_BYTES, MAX_VALUE_BYTES};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Which way traffic crosses the listener.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    prost::Enumeration,
    Serialize,
    Deserialize,
)]
#[serde(rename_all = "lowercase")]
#[repr(i32)]
pub enum Direction {
    /// The local workload sends to it; the proxy routes to a service. The default.
    Outbound = 0,
    /// Peers connect to it; the proxy delivers to the local workload.
    Inbound = 1,
}

/// Whether an inbound port requires mutual TLS (like Istio's
/// PeerAuthentication modes).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    prost::Enumeration,
    Serialize,
    Deserialize,
)]
#[serde(rename_all = "lowercase")]
#[repr(i32)]
pub enum TlsMode {
    /// Not set: inherit (a port inherits its listener's mode; a listener is
    /// `strict` when the proxy has an identity, else `disable`).
    Default = 0,
    /// Only mutual TLS from a mesh identity; plaintext is rejected.
    Strict = 1,
    /// Mutual TLS or plaintext on the same port (detected per connection).
    Permissive = 2,
    /// Plaintext only.
    Disable = 3,
}

/// A listening socket of the proxy.
///
/// * `outbound` + `http`: an HTTP proxy port (HTTP/1.1 and prior-knowledge
///   HTTP/2); the `Host`/`:authority` names the service.
/// * `outbound` + `tcp`: every connection goes to `service:service_port`.
/// * `inbound`: accepts peer sidecars (which announce the workload port in a
///   transport header) and plain clients (whose protocol is detected, then
///   delivered to the first matching `workload_ports` entry).
/// * `transparent`: the listener receives connections redirected to it by
///   `sane-proxy iptables install` and uses each one's original destination
///   (see the field).
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Listener {
    /// Listener name, unique per proxy; used in logs and metrics. Required.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Direction. Default: `outbound`.
    #[prost(enumeration = "Direction", tag = "2")]
    #[serde(
        serialize_with = "enum_ser::<Direction, _>",
        deserialize_with = "enum_de::<Direction, _>"
    )]
    pub direction: i32,
    /// Socket address to bind, e.g. `127.0.0.1:15001`; port 0 picks a free port.
    /// Required.
    #[prost(string, tag = "3")]
    pub address: String,
    /// Protocol of an outbound listener (`http` or `tcp`). Default: `http`.
    #[prost(enumeration = "Protocol", tag = "4")]
    #[serde(
        serialize_with = "enum_ser::<Protocol, _>",
        deserialize_with = "enum_de::<Protocol, _>"
    )]
    pub protocol: i32,
    /// Target service of an outbound `tcp` listener. Required for those.
    #[prost(string, tag = "5")]
    pub service: String,
    /// Target service port of an outbound `tcp` listener. Required for those.
    #[prost(uint32, tag = "6")]
    pub service_port: u32,
    /// Ports of the local workload (inbound only). Default: none; undeclared
    /// ports announced by a peer are treated as `http`.
    #[prost(message, repeated, tag = "7")]
    pub workload_ports: Vec<WorkloadPort>,
    /// How long an inbound connection may stay silent before it is treated as
    /// opaque TCP. Default: 0, meaning 1s.
    #[prost(uint64, tag = "8")]
    #[serde(rename = "detect_timeout", with = "duration_ms")]
    pub detect_timeout_ms: u64,
    /// Host of the local workload (inbound only). Default: `127.0.0.1`.
    #[prost(string, tag = "9")]
    pub workload_address: String,
    /// Mutual TLS mode (inbound only). Default: `strict` when the proxy has
    /// an identity, otherwise `disable`.
    #[prost(enumeration = "TlsMode", tag = "10")]
    #[serde(
        serialize_with = "enum_ser::<TlsMode, _>",
        deserialize_with = "enum_de::<TlsMode, _>"
    )]
    pub tls_mode: i32,
    /// Whether connections arrive redirected by iptables (`sane-proxy
    /// iptables install`) rather than addressed to the listener. Outbound
    /// (`http` only): every connection is routed by its original
    /// destination: a service address (`Service.addresses`) or an endpoint's
    /// `address:workload port` is served as that service port (HTTP through
    /// the routes, TCP spliced), anything else is passed through to the
    /// original destination unchanged. Inbound: a plain client's original
    /// destination port is the workload port it reaches (instead of the first
    /// declared one of its protocol). Default: false.
    #[prost(bool, tag = "11")]
    pub transparent: bool,
    /// Connection and HTTP limits (header size and read timeout, HTTP/2
    /// streams, connections, idle timeouts). Default: see
    /// [`crate::ConnectionLimits`]; every field has a safe default.
    #[prost(message, optional, tag = "12")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<crate::ConnectionLimits>,
}

/// One port of the local workload.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkloadPort {
    /// Port the workload listens on. Required.
    #[prost(uint32, tag = "1")]
    pub port: u32,
    /// Protocol the workload speaks there. Default: `http`.
    #[prost(enumeration = "Protocol", tag = "2")]
    #[serde(
        serialize_with = "enum_ser::<Protocol, _>",
        deserialize_with = "enum_de::<Protocol, _>"
    )]
    pub protocol: i32,
    /// Mutual TLS mode for this port. Default: the listener's.
    #[prost(enumeration = "TlsMode", tag = "3")]
    #[serde(
        serialize_with = "enum_ser::<TlsMode, _>",
        deserialize_with = "enum_de::<TlsMode, _>"
    )]
    pub tls_mode: i32,
}

// === impl Listener ===

impl Listener {
    /// The parsed bind address; validation guarantees it parses.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.address.parse().ok()
    }

    /// The detection timeout in milliseconds, with the default applied.
    pub fn detect_timeout_ms(&self) -> u64 {
        if self.detect_timeout_ms == 0 {
            1000
        } else {
            self.detect_timeout_ms
        }
    }

    /// The limits, with defaults for what is unset.
    pub fn limits(&self) -> crate::ConnectionLimits {
        self.limits.clone().unwrap_or_default()
    }

    /// Validates this resource on its own (references to other resources
    /// are checked by [`crate::MeshResources::validate`]). Paths are relative
    /// to the resource, e.g. `ports[1].port`.
    pub fn validate(&self) -> Result<(), crate::ValidationErrors> {
        let mut errs = Errors::default();
        self.validate_into(&FieldPath::root(), &mut errs);
        errs.finish()
    }

    pub(crate) fn validate_into(&self, path: &FieldPath, errs: &mut Errors) {
        errs.name(&path.field("name"), &self.name);
        errs.enum_value::<Direction>(&path.field("direction"), self.direction);
        errs.enum_value::<Protocol>(&path.field("protocol"), self.protocol);
        errs.length(&path.field("address"), &self.address, MAX_VALUE_BYTES);
        errs.length(&path.field("service"), &self.service, MAX_NAME_BYTES);
        let wa = &self.workload_address;
        errs.length(&path.field("workload_address"), wa, MAX_VALUE_BYTES);
        if self.address.parse::<SocketAddr>().is_err() {
            errs.push(
                &path.field("address"),
                format!("{:?} is not a socket address (ip:port)", self.address),
            );
        }
        match (self.direction(), self.protocol()) {
            (Direction::Outbound, Protocol::Tcp) => {
                errs.name(&path.field("service"), &self.service);
                errs.port(&path.field("service_port"), self.service_port, false);
            }
            (Direction::Outbound, Protocol::Http) => {}
            (Direction::Outbound, p) => errs.push(
                &path.field("protocol"),
                format!(
                    "{:?} is not allowed on an outbound listener (http or tcp)",
                    p.name()
                ),
            ),
            (Direction::Inbound, _) => {}
        }
        if self.transparent
            && self.direction() == Direction::Outbound
            && self.protocol() == Protocol::Tcp
        {
            errs.push(
                &path.field("transparent"),
                "applies to outbound http listeners and inbound listeners; a transparent \
                 listener routes each connection by its original destination, not to one service",
            );
        }
        if self.direction() == Direction::Inbound && !self.service.is_empty() {
            errs.push(
                &path.field("service"),
                "applies to outbound tcp listeners only",
            );
        }
        if let Some(l) = &self.limits {
            l.validate_into(&path.field("limits"), errs);
        }
        errs.enum_value::<TlsMode>(&path.field("tls_mode"), self.tls_mode);
        if self.direction() == Direction::Outbound && self.tls_mode != 0 {
            errs.push(&path.field("tls_mode"), "applies to inbound listeners only");
        }
        for (i, w) in self.workload_ports.iter().enumerate() {
            let wp = path.item("workload_ports", i);
            errs.port(&wp.field("port"), w.port, false);
            errs.enum_value::<Protocol>(&wp.field("protocol"), w.protocol);
            errs.enum_value::<TlsMode>(&wp.field("tls_mode"), w.tls_mode);
        }
        if !self.workload_address.is_empty()
            && self.workload_address.parse::<std::net::IpAddr>().is_err()
        {
            errs.push(
                &path.field("workload_address"),
                format!("{:?} is not an IP address", self.workload_address),
            );
        }
    }
}
