//! Authorization policies: who may call a workload, and how (Istio
//! `AuthorizationPolicy` semantics).
//!
//! A policy targets workloads of its own namespace: the instances
//! (endpoints) of one `service`, and/or those whose labels match its
//! `selector` (Istio's `selector.matchLabels`). It is enforced by their
//! sidecars on the inbound side, whatever their `node.workload`: the control
//! plane knows which endpoints point at which sidecar and sends each sidecar
//! exactly the policies that target it. A sidecar configured from a file
//! alone has no endpoints of its own: it enforces the policies of its file
//! whose `service` is its `node.workload` and that have no `selector`.
//!
//! For one request the proxy decides:
//!
//! 1. a matching `deny` policy → denied (403 `RBAC`, or a closed connection
//!    for TCP);
//! 2. no `allow` policy targets the workload → allowed;
//! 3. a matching `allow` policy → allowed;
//! 4. otherwise denied.
//!
//! `audit` policies never change the decision; a match is logged and counted.
//! A `dry_run` policy is evaluated as if enforced, but only logged and
//! counted: a request it would deny still passes.
//!
//! String values are patterns: `*` matches anything (for principals: any
//! authenticated one), `prefix*` a prefix, `*suffix` a suffix, anything else
//! itself exactly.

use crate::serde_util::{enum_de, enum_ser};
use crate::validate::{Errors, FieldPath, MAX_TOKEN_BYTES, MAX_VALUE_BYTES};
use crate::Endpoint;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a policy does with the requests its rules match.
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
pub enum AuthzAction {
    /// Matching requests are allowed; once any `allow` policy targets a
    /// workload, requests no `allow` policy matches are denied. The default.
    Allow = 0,
    /// Matching requests are denied (checked before every `allow`).
    Deny = 1,
    /// Matching requests are logged and counted; the decision is unchanged.
    Audit = 2,
}

/// An authorization policy for the workloads of one service, or of those
/// carrying some labels.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthorizationPolicy {
    /// Policy name, unique within the namespace. Required.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Namespace. Default: `default`.
    #[prost(string, tag = "2")]
    pub namespace: String,
    /// The service whose workloads enforce the policy (`name`, or
    /// `name.namespace` with the policy's own namespace): every sidecar an
    /// endpoint of the service points at. In the control plane's registry it
    /// must be a declared service. Default: empty, any service of the
    /// namespace (then `selector` is required).
    #[prost(string, tag = "3")]
    pub service: String,
    /// `allow`, `deny` or `audit`. Default: `allow`.
    #[prost(enumeration = "AuthzAction", tag = "4")]
    #[serde(
        serialize_with = "enum_ser::<AuthzAction, _>",
        deserialize_with = "enum_de::<AuthzAction, _>"
    )]
    pub action: i32,
    /// Rules; the policy matches a request when any rule does. Default:
    /// none, which matches nothing (an `allow` policy without rules allows
    /// nothing; `rules: [{}]` matches everything).
    #[prost(message, repeated, tag = "5")]
    pub rules: Vec<AuthzRule>,
    /// Evaluate and report, but do not enforce: a request the policy would
    /// deny is logged and counted (`sane_authz_dry_run_denied_total`) and
    /// passes. Default: false.
    #[prost(bool, tag = "6")]
    pub dry_run: bool,
    /// Labels a workload's endpoint must all carry for the policy to apply
    /// to its sidecar (with `service`, to that service's endpoints only).
    /// Default: none, every endpoint of `service`.
    #[prost(btree_map = "string, string", tag = "7")]
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
}

/// One rule: every present part must match.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthzRule {
    /// Who calls; any one entry may match. Default: none, any caller.
    #[prost(message, repeated, tag = "1")]
    pub from: Vec<AuthzSource>,
    /// What is called; any one entry may match. Default: none, anything.
    #[prost(message, repeated, tag = "2")]
    pub to: Vec<AuthzOperation>,
    /// Further conditions on request headers, all of which must hold.
    /// Default: none.
    #[prost(message, repeated, tag = "3")]
    pub when: Vec<AuthzCondition>,
}

/// A condition on the caller; every non-empty list must match.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthzSource {
    /// Caller identities proven by mutual TLS, as SPIFFE ids
    /// (`spiffe://cluster.local/ns/web/sa/frontend`) or without the scheme
    /// (`cluster.local/ns/web/sa/frontend`, as Istio writes them); patterns.
    /// Default: none, any caller.
    #[prost(string, repeated, tag = "1")]
    pub principals: Vec<String>,
    /// Namespaces of the caller's identity; patterns. Default: none, any.
    #[prost(string, repeated, tag = "2")]
    pub namespaces: Vec<String>,
    /// Caller identities that must not match; patterns. Default: none.
    #[prost(string, repeated, tag = "3")]
    pub not_principals: Vec<String>,
}

/// A condition on what is called; every non-empty list must match.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthzOperation {
    /// Workload ports. Default: none, any port.
    #[prost(uint32, repeated, tag = "1")]
    pub ports: Vec<u32>,
    /// HTTP methods, e.g. `GET`. Default: none, any method. HTTP only.
    #[prost(string, repeated, tag = "2")]
    pub methods: Vec<String>,
    /// Request paths (no query): `/exact`, `/prefix/*`, `*suffix` or `*`.
    /// Default: none, any path. HTTP only.
    #[prost(string, repeated, tag = "3")]
    pub paths: Vec<String>,
    /// Paths that must not match; patterns. Default: none. HTTP only.
    #[prost(string, repeated, tag = "4")]
    pub not_paths: Vec<String>,
}

/// A condition on one request header. HTTP only.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthzCondition {
    /// Header name, case-insensitive. Required.
    #[prost(string, tag = "1")]
    pub header: String,
    /// Accepted values (patterns); the header must be present with one of
    /// them. Required: at least one (`*` for any value).
    #[prost(string, repeated, tag = "2")]
    pub values: Vec<String>,
}

// === impl AuthorizationPolicy ===

impl AuthorizationPolicy {
    /// Validates this resource on its own. Paths are relative to the
    /// resource, e.g. `rules[0].to[1].paths[0]`.
    pub fn validate(&self) -> Result<(), crate::ValidationErrors> {
        let mut errs = Errors::default();
        self.validate_into(&FieldPath::root(), &mut errs);
        errs.finish()
    }

    /// The qualified key (`name.namespace`) of the target service; empty
    /// when the policy targets workloads by `selector` only.
    pub fn service_key(&self) -> String {
        if self.service.is_empty() {
            return String::new();
        }
        crate::resources::qualify(&self.service, &self.namespace)
    }

    /// True if the policy targets the workload instance `endpoint`: same
    /// namespace, its `service` (if set), and every `selector` label.
    pub fn targets(&self, endpoint: &Endpoint) -> bool {
        let ns = crate::namespace_or_default(&self.namespace);
        crate::namespace_or_default(&endpoint.namespace) == ns
            && (self.service.is_empty() || endpoint.service_key() == self.service_key())
            && self
                .selector
                .iter()
                .all(|(k, v)| endpoint.labels.get(k) == Some(v))
    }

    pub(crate) fn validate_into(&self, path: &FieldPath, errs: &mut Errors) {
        errs.name(&path.field("name"), &self.name);
        if !self.namespace.is_empty() {
            errs.name(&path.field("namespace"), &self.namespace);
        }
        let ns = crate::namespace_or_default(&self.namespace);
        if self.service.is_empty() {
            if self.selector.is_empty() {
                errs.push(
                    &path.field("service"),
                    "a service or a selector is required (the workloads the policy applies to)",
                );
            }
        } else {
            errs.name(&path.field("service"), &self.service);
            if let Some((_, svc_ns)) = self.service.split_once('.') {
                if svc_ns != ns {
                    errs.push(
                        &path.field("service"),
                        format!(
                            "{:?} is not in the policy's namespace {ns:?}; a policy applies to \
                             workloads of its own namespace",
                            self.service
                        ),
                    );
                }
            }
        }
        for (k, v) in &self.selector {
            let sp = path.field("selector").field(k);
            if k.is_empty() || v.is_empty() {
                errs.push(&sp, "selector labels and values must not be empty");
            }
        }
        errs.enum_value::<AuthzAction>(&path.field("action"), self.action);
        for (i, rule) in self.rules.iter().enumerate() {
            let rp = path.item("rules", i);
            for (j, src) in rule.from.iter().enumerate() {
                let sp = rp.item("from", j);
                for (k, p) in src.principals.iter().enumerate() {
                    pattern(&sp.item("principals", k), p, errs);
                }
                for (k, p) in src.not_principals.iter().enumerate() {
                    pattern(&sp.item("not_principals", k), p, errs);
                }
                for (k, n) in src.namespaces.iter().enumerate() {
                    pattern(&sp.item("namespaces", k), n, errs);
                }
            }
            for (j, op) in rule.to.iter().enumerate() {
                let op_path = rp.item("to", j);
                for (k, port) in op.ports.iter().enumerate() {
                    errs.port(&op_path.item("ports", k), *port, false);
                }
                for (k, m) in op.methods.iter().enumerate() {
                    if !errs.length(&op_path.item("methods", k), m, MAX_TOKEN_BYTES) {
                        continue;
                    }
                    if m.is_empty() || crate::route::http_token(m).is_none() {
                        errs.push(
                            &op_path.item("methods", k),
                            format!("{m:?} is not a valid HTTP method"),
                        );
                    }
                }
                for (list, name) in [(&op.paths, "paths"), (&op.not_paths, "not_paths")] {
                    for (k, p) in list.iter().enumerate() {
                        let pp = op_path.item(name, k);
                        pattern(&pp, p, errs);
                        if !p.starts_with('/') && !p.starts_with('*') {
                            errs.push(&pp, format!("{p:?} must start with '/' or '*'"));
                        }
                    }
                }
            }
            for (j, c) in rule.when.iter().enumerate() {
                let cp = rp.item("when", j);
                errs.header_name(&cp.field("header"), &c.header);
                if c.values.is_empty() {
                    errs.push(&cp.field("values"), "at least one value is required");
                }
                for (k, v) in c.values.iter().enumerate() {
                    pattern(&cp.item("values", k), v, errs);
                }
            }
        }
    }
}

/// A pattern may hold one `*`, at its start or its end (or be `*` alone).
fn pattern(path: &FieldPath, value: &str, errs: &mut Errors) {
    if !errs.length(path, value, MAX_VALUE_BYTES) {
        return;
    }
    if value.is_empty() {
        errs.push(path, "must not be empty");
        return;
    }
    let inner = value
        .strip_prefix('*')
        .or_else(|| value.strip_suffix('*'))
        .unwrap_or(value);
    if value != "*" && inner.contains('*') {
        errs.push(
            path,
            format!("{value:?} may only have one '*', at its start or its end"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_field() {
        let p = AuthorizationPolicy {
            name: "p".into(),
            service: "web".into(),
            rules: vec![AuthzRule {
                from: vec![AuthzSource {
                    principals: vec!["spiffe://a/*/b*".into()],
                    ..Default::default()
                }],
                to: vec![AuthzOperation {
                    ports: vec![0],
                    paths: vec!["api".into()],
                    methods: vec!["GE T".into()],
                    ..Default::default()
                }],
                when: vec![AuthzCondition {
                    header: "x-a".into(),
                    values: vec![],
                }],
            }],
            ..Default::default()
        };
        let err = p.validate().unwrap_err().to_string();
        for want in [
            "rules[0].from[0].principals[0]: \"spiffe://a/*/b*\" may only have one '*'",
            "rules[0].to[0].ports[0]: 0 is not a valid port",
            "rules[0].to[0].paths[0]: \"api\" must start with '/' or '*'",
            "rules[0].to[0].methods[0]: \"GE T\" is not a valid HTTP method",
            "rules[0].when[0].values: at least one value is required",
        ] {
            assert!(err.contains(want), "{want} not in {err}");
        }
        let ok = AuthorizationPolicy {
            name: "p".into(),
            service: "web".into(),
            action: AuthzAction::Deny.into(),
            rules: vec![AuthzRule::default()],
            ..Default::default()
        };
        ok.validate().unwrap();
    }

    #[test]
    fn yaml_reads_actions_and_rejects_unknown_fields() {
        let p: AuthorizationPolicy = serde_yaml::from_str(
            "{ name: p, service: web, action: deny, rules: [ { to: [ { paths: [/admin/*] } ] } ] }",
        )
        .unwrap();
        assert_eq!(p.action(), AuthzAction::Deny);
        let err = serde_yaml::from_str::<AuthorizationPolicy>("{ name: p, workload: x }")
            .unwrap_err()
            .to_string();
        assert!(err.contains("workload"), "{err}");
    }

    #[test]
    fn a_policy_targets_a_service_or_labels_of_its_own_namespace() {
        let ep = |service: &str, ns: &str, version: &str| Endpoint {
            service: service.into(),
            namespace: ns.into(),
            address: "10.0.0.1".into(),
            labels: [("version".to_string(), version.to_string())].into(),
            ..Default::default()
        };
        let by_service = AuthorizationPolicy {
            name: "p".into(),
            namespace: "shop".into(),
            service: "edge".into(),
            ..Default::default()
        };
        assert!(by_service.targets(&ep("edge", "shop", "v1")));
        assert!(!by_service.targets(&ep("web", "shop", "v1")));
        assert!(!by_service.targets(&ep("edge", "bank", "v1")));
        let by_labels = AuthorizationPolicy {
            service: String::new(),
            selector: [("version".to_string(), "v2".to_string())].into(),
            ..by_service.clone()
        };
        by_labels.validate().unwrap();
        assert!(by_labels.targets(&ep("web", "shop", "v2")));
        assert!(!by_labels.targets(&ep("web", "shop", "v1")));
        assert!(!by_labels.targets(&ep("web", "bank", "v2")));

        let neither = AuthorizationPolicy {
            selector: BTreeMap::new(),
            ..by_labels
        };
        let err = neither.validate().unwrap_err().to_string();
        assert!(
            err.contains("service: a service or a selector is required"),
            "{err}"
        );
        let elsewhere = AuthorizationPolicy {
            service: "edge.bank".into(),
            ..by_service
        };
        let err = elsewhere.validate().unwrap_err().to_string();
        assert!(
            err.contains("service: \"edge.bank\" is not in the policy's namespace"),
            "{err}"
        );
    }
}
