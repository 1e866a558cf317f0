//! An endpoint: one workload instance backing a service.

use crate::validate::{Errors, FieldPath, MAX_VALUE_BYTES};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// One instance of a service.
///
/// Where the proxy sends traffic for service port `P`: when `proxy_port` is set,
/// to `address:proxy_port` (the instance's sidecar, which delivers to the
/// workload port on its own host); otherwise straight to `address` on the
/// workload port. The workload port is `ports[P's name]`, else `port`, else P's
/// `target_port`.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Endpoint {
    /// Name of the service this instance backs. Required.
    #[prost(string, tag = "1")]
    pub service: String,
    /// Namespace of that service. Default: `default`.
    #[prost(string, tag = "2")]
    pub namespace: String,
    /// IP address of the instance. Required.
    #[prost(string, tag = "3")]
    pub address: String,
    /// Workload port for every service port. Default: 0, meaning each service
    /// port's `target_port`.
    #[prost(uint32, tag = "4")]
    pub port: u32,
    /// Workload port per service port name, overriding `port`. Default: none.
    #[prost(btree_map = "string, uint32", tag = "5")]
    pub ports: BTreeMap<String, u32>,
    /// Inbound port of the instance's sidecar. Default: 0, no sidecar.
    #[prost(uint32, tag = "6")]
    pub proxy_port: u32,
    /// The workload's SPIFFE identity, checked when connecting over mTLS.
    /// Default: empty (not verified).
    #[prost(string, tag = "7")]
    pub identity: String,
    /// Labels of the instance (used by route subsets). Default: none.
    #[prost(btree_map = "string, string", tag = "8")]
    pub labels: BTreeMap<String, String>,
    /// Relative load-balancing weight. Default: 1 (0 means 1).
    #[prost(uint32, tag = "9")]
    pub weight: u32,
}

// === impl Endpoint ===

impl Endpoint {
    /// `service.namespace`: the key of the service this endpoint backs.
    pub fn service_key(&self) -> String {
        format!(
            "{}.{}",
            self.service,
            crate::namespace_or_default(&self.namespace)
        )
    }

    /// The weight, with the default applied.
    pub fn weight(&self) -> u32 {
        self.weight.max(1)
    }

    /// The workload port that serves the named service port.
    pub fn workload_port(&self, port: &crate::ServicePort) -> u32 {
        if let Some(p) = self.ports.get(&port.name()) {
            *p
        } else if self.port != 0 {
            self.port
        } else {
            port.target_port()
        }
    }

    /// The parsed address; validation guarantees it parses.
    pub fn ip(&self) -> Option<IpAddr> {
        self.address.parse().ok()
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
        errs.name(&path.field("service"), &self.service);
        if !self.namespace.is_empty() {
            errs.name(&path.field("namespace"), &self.namespace);
        }
        errs.length(&path.field("address"), &self.address, MAX_VALUE_BYTES);
        errs.length(&path.field("identity"), &self.identity, MAX_VALUE_BYTES);
        for (k, v) in &self.labels {
            let lp = path.field("labels");
            if errs.length(&lp, k, MAX_VALUE_BYTES) {
                errs.length(&lp.field(k), v, MAX_VALUE_BYTES);
            }
        }
        if self.address.parse::<IpAddr>().is_err() {
            errs.push(
                &path.field("address"),
                format!("{:?} is not an IP address", self.address),
            );
        }
        errs.port(&path.field("port"), self.port, true);
        errs.port(&path.field("proxy_port"), self.proxy_port, true);
        for (name, p) in &self.ports {
            errs.port(&path.field("ports").field(name), *p, false);
        }
        if !self.identity.is_empty() && !self.identity.starts_with("spiffe://") {
            errs.push(
                &path.field("identity"),
                format!("{:?} is not a SPIFFE id (spiffe://...)", self.identity),
            );
        }
    }
}
