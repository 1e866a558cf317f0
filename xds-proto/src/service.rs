//! A service: a named set of workloads reachable on declared ports.

use crate::serde_util::{enum_de, enum_ser};
use crate::validate::{Errors, FieldPath, MAX_NAME_BYTES, MAX_VALUE_BYTES};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// The protocol a port speaks. Decides how the proxy carries its traffic.
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
pub enum Protocol {
    /// HTTP/1.1 (HTTP/2 from a client is accepted too). The default.
    Http = 0,
    /// HTTP/2 without TLS (prior knowledge) to the workload.
    Http2 = 1,
    /// gRPC: HTTP/2 with trailers.
    Grpc = 2,
    /// Opaque TCP: bytes are passed through untouched.
    Tcp = 3,
}

/// A service in the mesh. Its host names are `name`, `name.namespace`,
/// `name.namespace.svc` and `name.namespace.svc.cluster.local`, plus `hosts`;
/// its `addresses` (virtual IPs, like a Kubernetes ClusterIP) reach it through
/// transparent interception.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Service {
    /// Service name, a DNS label. Required.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Namespace. Default: `default`.
    #[prost(string, tag = "2")]
    pub namespace: String,
    /// Ports the service exposes. At least one is required.
    #[prost(message, repeated, tag = "3")]
    pub ports: Vec<ServicePort>,
    /// Extra host names (authorities without port) that address this service.
    /// Default: none.
    #[prost(string, repeated, tag = "4")]
    pub hosts: Vec<String>,
    /// Virtual IP addresses of the service (like a ClusterIP). A connection
    /// a transparent outbound listener intercepts on `address:port`, for any
    /// port of the service, goes to the service. Unique across services.
    /// Default: none.
    #[prost(string, repeated, tag = "5")]
    pub addresses: Vec<String>,
    /// The namespaces whose proxies may see this service (its name, ports,
    /// endpoints with their addresses and identities, routes and destination
    /// policies): `*` for every namespace, `.` for its own, or namespace
    /// names. Its own namespace always sees it. A proxy asking for more
    /// (`services: ["*"]` or a listed name) never gets a service that is not
    /// exported to its namespace. Default: none, meaning `*` (exported to
    /// every namespace, as Istio's `exportTo`).
    #[prost(string, repeated, tag = "6")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
}

/// One port of a service.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServicePort {
    /// Port name, unique within the service. Default: the protocol name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// The port clients address. Required (1-65535).
    #[prost(uint32, tag = "2")]
    pub port: u32,
    /// The protocol spoken on the port. Default: `http`.
    #[prost(enumeration = "Protocol", tag = "3")]
    #[serde(
        serialize_with = "enum_ser::<Protocol, _>",
        deserialize_with = "enum_de::<Protocol, _>"
    )]
    pub protocol: i32,
    /// The port the workload listens on. Default: `port` (0 means `port`).
    #[prost(uint32, tag = "4")]
    pub target_port: u32,
}

// === impl Protocol ===

impl Protocol {
    /// True for every protocol carried as HTTP requests.
    pub fn is_http(self) -> bool {
        !matches!(self, Protocol::Tcp)
    }

    /// The lowercase name, as written in configuration and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Http2 => "http2",
            Protocol::Grpc => "grpc",
            Protocol::Tcp => "tcp",
        }
    }
}

// === impl Service ===

impl Service {
    /// The namespace, with the default applied.
    pub fn namespace(&self) -> &str {
        crate::namespace_or_default(&self.namespace)
    }

    /// `name.namespace`, the key other resources refer to the service by.
    pub fn key(&self) -> String {
        format!("{}.{}", self.name, self.namespace())
    }

    /// Every host name (without port) that addresses the service.
    pub fn host_names(&self) -> Vec<String> {
        let ns = self.namespace();
        let mut names = vec![
            self.name.clone(),
            format!("{}.{ns}", self.name),
            format!("{}.{ns}.svc", self.name),
            format!("{}.{ns}.svc.cluster.local", self.name),
        ];
        names.extend(self.hosts.iter().map(|h| h.to_ascii_lowercase()));
        names
    }

    /// True if proxies of namespace `ns` may see the service (see
    /// `export_to`).
    pub fn exported_to(&self, ns: &str) -> bool {
        let own = self.namespace();
        let ns = crate::namespace_or_default(ns);
        ns == own
            || self.export_to.is_empty()
            || self
                .export_to
                .iter()
                .any(|e| e == "*" || (e == "." && ns == own) || e == ns)
    }

    /// Finds a port by its number.
    pub fn port(&self, port: u32) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
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
        if !self.namespace.is_empty() {
            errs.name(&path.field("namespace"), &self.namespace);
        }
        if self.ports.is_empty() {
            errs.push(&path.field("ports"), "at least one port is required");
        }
        for (i, p) in self.ports.iter().enumerate() {
            let pp = path.item("ports", i);
            errs.length(&pp.field("name"), &p.name, MAX_NAME_BYTES);
            errs.port(&pp.field("port"), p.port, false);
            errs.port(&pp.field("target_port"), p.target_port, true);
            errs.enum_value::<Protocol>(&pp.field("protocol"), p.protocol);
            if self.ports[..i].iter().any(|q| q.port == p.port) {
                errs.push(&pp.field("port"), format!("{} is declared twice", p.port));
            }
            let name = p.name();
            if self.ports[..i].iter().any(|q| q.name() == name) {
                errs.push(&pp.field("name"), format!("{name:?} is declared twice"));
            }
        }
        for (i, h) in self.hosts.iter().enumerate() {
            errs.name(&path.item("hosts", i), &h.to_ascii_lowercase());
        }
        for (i, a) in self.addresses.iter().enumerate() {
            let ap = path.item("addresses", i);
            errs.length(&ap, a, MAX_VALUE_BYTES);
            match a.parse::<IpAddr>() {
                Err(_) => errs.push(&ap, format!("{a:?} is not an IP address")),
                Ok(ip) if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() => {
                    errs.push(&ap, format!("{ip} cannot be a service address"))
                }
                Ok(ip) => {
                    let earlier = self.addresses[..i].iter().filter_map(|b| b.parse().ok());
                    if earlier.into_iter().any(|prev: IpAddr| prev == ip) {
                        errs.push(&ap, format!("{ip} is declared twice"));
                    }
                }
            }
        }
        for (i, e) in self.export_to.iter().enumerate() {
            if e != "*" && e != "." {
                errs.name(&path.item("export_to", i), e);
            }
        }
    }

    /// The parsed `addresses`; validation guarantees they parse.
    pub fn ips(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.addresses.iter().filter_map(|a| a.parse().ok())
    }
}

// === impl ServicePort ===

impl ServicePort {
    /// The workload port, with the default applied.
    pub fn target_port(&self) -> u32 {
        if self.target_port == 0 {
            self.port
        } else {
            self.target_port
        }
    }

    /// The port name, with the default applied.
    pub fn name(&self) -> String {
        if self.name.is_empty() {
            format!("{}-{}", self.protocol().name(), self.port)
        } else {
            self.name.clone()
        }
    }
}
