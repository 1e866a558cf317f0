//! Destination policies: how the proxy treats traffic to one service.

use crate::serde_util::{duration_ms, enum_de, enum_ser};
use crate::validate::{Errors, FieldPath};
use serde::{Deserialize, Serialize};

/// Load-balancing algorithm across a service's endpoints.
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
#[serde(rename_all = "snake_case")]
#[repr(i32)]
pub enum LoadBalancer {
    /// Power of two random choices, picking the endpoint with fewer requests
    /// in flight (weighted). The default.
    LeastRequest = 0,
    /// Weighted round robin.
    RoundRobin = 1,
}

/// Traffic policy for one destination service (like an Istio DestinationRule).
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DestinationPolicy {
    /// Policy name, unique within the namespace. Required.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Namespace. Default: `default`.
    #[prost(string, tag = "2")]
    pub namespace: String,
    /// The service the policy applies to (`name` or `name.namespace`). Required.
    #[prost(string, tag = "3")]
    pub service: String,
    /// Load-balancing algorithm. Default: `least_request`.
    #[prost(enumeration = "LoadBalancer", tag = "4")]
    #[serde(
        serialize_with = "enum_ser::<LoadBalancer, _>",
        deserialize_with = "enum_de::<LoadBalancer, _>"
    )]
    pub load_balancer: i32,
    /// Timeout for establishing an upstream connection. Default: 0, meaning 1s.
    #[prost(uint64, tag = "5")]
    #[serde(rename = "connect_timeout", with = "duration_ms")]
    pub connect_timeout_ms: u64,
    /// Idle upstream connections are closed after this. Default: 0, meaning 60s.
    #[prost(uint64, tag = "6")]
    #[serde(rename = "idle_timeout", with = "duration_ms")]
    pub idle_timeout_ms: u64,
}

// === impl DestinationPolicy ===

impl DestinationPolicy {
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
        errs.name(&path.field("service"), &self.service);
        errs.enum_value::<LoadBalancer>(&path.field("load_balancer"), self.load_balancer);
        if self.connect_timeout_ms > 60_000 {
            errs.push(
                &path.field("connect_timeout"),
                format!("{}ms is above the maximum of 60s", self.connect_timeout_ms),
            );
        }
    }
}
