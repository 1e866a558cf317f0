//! The ingress gateway: public listeners, the hosts they serve (with their
//! TLS certificates), how requests for each host map to mesh services, and
//! the protections at the edge.
//!
//! A [`Gateway`] is read from the `gateway` section of the bootstrap file of
//! `sane-proxy gateway`, and is also a mesh resource the control plane
//! delivers over xDS (`TypeUrl::Gateway`): then it carries a `namespace`
//! and a `selector` of node labels, and goes to the gateway proxies of its
//! namespace whose `node.labels` carry every selector label. A gateway
//! serves its bootstrap section merged with every delivered one.

use crate::route::RouteRule;
use crate::serde_util::duration_ms;
use crate::validate::{Errors, FieldPath, MAX_NAME_BYTES, MAX_VALUE_BYTES};
use crate::{RouteMatch, ValidationErrors};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;

/// Where a gateway reads the certificate of a Secret (Istio's
/// `credentialName`, the Gateway API's `certificateRefs`) unless
/// `sane-proxy gateway --credentials-dir` says otherwise:
/// `<dir>/<namespace>/<name>/tls.crt` and `tls.key` (`ca.crt` for client
/// roots), the keys of a `kubernetes.io/tls` Secret. Private keys never
/// travel over xDS: a delivered host names files on the gateway's machine.
pub const DEFAULT_CREDENTIALS_DIR: &str = "/etc/sane/credentials";

/// The node label a Gateway API `Gateway`'s delivered configuration
/// selects its gateway proxies by (value: the Gateway's name), as Istio's
/// automated deployment labels the gateway pods it creates.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

/// The smallest request header limit: HTTP/1 parsing needs an 8 KiB buffer.
pub const MIN_REQUEST_HEADER_BYTES: u64 = 8 * 1024;
/// The largest request header limit.
pub const MAX_REQUEST_HEADER_BYTES: u64 = 1024 * 1024;

/// An ingress gateway: outside clients in, mesh services out.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Gateway {
    /// Gateway name (for logs and metrics). Default: `gateway`; required
    /// for a delivered resource (its key is `namespace/name`).
    #[prost(string, tag = "1")]
    pub name: String,
    /// Public listeners. Required in a bootstrap section without a control
    /// plane: at least one. Bootstrap listeners are bound at start (a reload
    /// that changes them takes effect at the next restart); delivered ones
    /// are bound when they arrive and closed when they go.
    #[prost(message, repeated, tag = "2")]
    pub listeners: Vec<GatewayListener>,
    /// The host names served, each with its certificate and routes.
    /// Required in a bootstrap section without a control plane: at least
    /// one.
    #[prost(message, repeated, tag = "3")]
    pub hosts: Vec<GatewayHost>,
    /// Edge protections. Default: see [`EdgeLimits`]. Only the bootstrap
    /// section's are read: a delivered resource may not set them.
    #[prost(message, optional, tag = "4")]
    pub limits: Option<EdgeLimits>,
    /// A delivered resource's namespace: it goes to gateway proxies of this
    /// namespace only, and its routes' services default to it. Default:
    /// `default`. Not read in a bootstrap section.
    #[prost(string, tag = "5")]
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// A delivered resource goes to the proxies whose `node.labels` carry
    /// every one of these labels (Istio: the Gateway's `selector`, e.g.
    /// `istio: ingressgateway`; Gateway API: [`GATEWAY_NAME_LABEL`]`: <name>`).
    /// Required (at least one label) for a delivered resource; not read in a
    /// bootstrap section.
    #[prost(btree_map = "string, string", tag = "6")]
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
}

/// One public listener.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayListener {
    /// Listener name, unique (it is printed in the `listening` line).
    /// Required.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Address to bind, `ip:port`. Required.
    #[prost(string, tag = "2")]
    pub address: String,
    /// Terminate TLS (HTTPS, certificate chosen by SNI among the hosts'
    /// certificates; HTTP/2 and HTTP/1.1 by ALPN). Default: false, plain
    /// HTTP/1.1.
    #[prost(bool, tag = "3")]
    pub tls: bool,
    /// On a plain listener, the port `https_redirect` hosts are redirected
    /// to. Default: 0, the bound port of the first TLS listener (omitted
    /// from the URL when it is 443).
    #[prost(uint32, tag = "4")]
    pub redirect_port: u32,
}

/// A host name and how its requests are served.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayHost {
    /// The host name, e.g. `shop.example.com`, or a wildcard `*.example.com`
    /// (one or more leading labels). Matched case-insensitively against SNI
    /// and the request's `Host`. Required.
    #[prost(string, tag = "1")]
    pub hostname: String,
    /// The certificate presented for this host. Default: none (the host is
    /// served on plain listeners only).
    #[prost(message, optional, tag = "2")]
    pub tls: Option<HostTls>,
    /// Plain-HTTP requests for this host get a `308` redirect to `https://`.
    /// Requires `tls`. Default: false.
    #[prost(bool, tag = "3")]
    pub https_redirect: bool,
    /// Routes, tried in order; the first whose matches succeed wins. A
    /// request none matches gets 404. Required: at least one.
    #[prost(message, repeated, tag = "4")]
    pub routes: Vec<GatewayRoute>,
}

/// A host's certificate, from PEM files reloaded when they change.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostTls {
    /// Certificate chain (PEM, leaf first). Required.
    #[prost(string, tag = "1")]
    pub cert_file: String,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1) matching the leaf. Required.
    #[prost(string, tag = "2")]
    pub key_file: String,
    /// Roots (PEM) client certificates must chain to; when set, clients of
    /// this host must present one. Default: empty, no client certificates.
    #[prost(string, tag = "3")]
    pub client_ca_file: String,
}

/// Where matching requests of a host go.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayRoute {
    /// Alternatives (path exact/prefix/regex, headers, method): the route
    /// applies if any one matches. Default: none, matching every request.
    #[prost(message, repeated, tag = "1")]
    pub matches: Vec<RouteMatch>,
    /// The mesh service (`name` or `name.namespace`; the namespace defaults
    /// to the gateway's `node.namespace`). Required.
    #[prost(string, tag = "2")]
    pub service: String,
    /// The service port. Required.
    #[prost(uint32, tag = "3")]
    pub port: u32,
}

/// Limits that protect the gateway and the mesh from outside clients.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeLimits {
    /// Largest request head (request line and headers); larger gets 431.
    /// Default: 0, meaning 16 KiB. At least 8 KiB, at most 1 MiB.
    #[prost(uint64, tag = "1")]
    pub max_request_header_bytes: u64,
    /// Largest request body; a larger `content-length` gets 413 and a longer
    /// streamed body is cut off. Default: 0, meaning 10 MiB.
    #[prost(uint64, tag = "2")]
    pub max_request_body_bytes: u64,
    /// How long a client may take to send its TLS handshake and then each
    /// request head (slowloris). Default: 0, meaning 10s. At most 5m.
    #[prost(uint64, tag = "3")]
    #[serde(with = "duration_ms")]
    pub header_read_timeout: u64,
    /// Open connections per client IP; more are closed at accept.
    /// Default: 0, meaning 256.
    #[prost(uint32, tag = "4")]
    pub max_connections_per_ip: u32,
    /// Requests per second over the whole gateway (token bucket); past it,
    /// 429 with `Retry-After`. Default: none, unlimited.
    #[prost(message, optional, tag = "5")]
    pub rate_limit: Option<RateLimit>,
    /// Proxies in front of the gateway whose `X-Forwarded-For` and
    /// `X-Forwarded-Proto` are trusted. Default: 0, the client's own values
    /// are replaced.
    #[prost(uint32, tag = "6")]
    pub trusted_hops: u32,
}

/// A token bucket.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimit {
    /// Tokens added per second. Required, at least 1.
    #[prost(uint32, tag = "1")]
    pub requests_per_second: u32,
    /// Bucket size (requests allowed at once). Default: 0, meaning
    /// `requests_per_second`.
    #[prost(uint32, tag = "2")]
    pub burst: u32,
}

// === impl Gateway ===

impl Gateway {
    /// Validates the gateway on its own, with paths relative to it.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errs = Errors::default();
        self.validate_into(&FieldPath::root(), &mut errs, true);
        errs.finish()
    }

    /// Validates a delivered resource (see [`Gateway::validate_resource_into`]).
    pub fn validate_resource(&self) -> Result<(), ValidationErrors> {
        let mut errs = Errors::default();
        self.validate_resource_into(&FieldPath::root(), &mut errs);
        errs.finish()
    }

    /// True if a proxy with node `labels` is selected: the selector is not
    /// empty and every one of its labels is among `labels`.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.selector.is_empty() && self.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    }

    /// Checks a resource the control plane delivers: a name, a namespace
    /// name, a non-empty selector, no `limits` (the bootstrap's apply), and
    /// the listeners and hosts as in a bootstrap section, except that either
    /// may be empty (a Gateway whose routes are not bound yet has no hosts).
    pub(crate) fn validate_resource_into(&self, path: &FieldPath, errs: &mut Errors) {
        errs.name(&path.field("name"), &self.name);
        if !self.namespace.is_empty() {
            errs.name(&path.field("namespace"), &self.namespace);
        }
        if self.selector.is_empty() {
            errs.push(
                &path.field("selector"),
                "at least one label is required (the gateway proxies it is delivered to)",
            );
        }
        for (k, v) in &self.selector {
            let sp = path.field("selector").field(k);
            if k.is_empty() || v.is_empty() {
                errs.push(&sp, "selector labels and values must not be empty");
            }
            errs.length(&sp, k, MAX_NAME_BYTES);
            errs.length(&sp, v, MAX_VALUE_BYTES);
        }
        if self.limits.is_some() {
            errs.push(
                &path.field("limits"),
                "edge limits are the gateway's own (its bootstrap section), not delivered",
            );
        }
        self.validate_parts(path, errs, false);
    }

    /// The name, with the default applied.
    pub fn name(&self) -> &str {
        if self.name.is_empty() {
            "gateway"
        } else {
            &self.name
        }
    }

    /// The limits, with defaults for what is unset.
    pub fn limits(&self) -> EdgeLimits {
        self.limits.clone().unwrap_or_default()
    }

    /// Checks a bootstrap section. `required`: listeners and hosts may not
    /// be empty (a gateway without a control plane).
    pub(crate) fn validate_into(&self, path: &FieldPath, errs: &mut Errors, required: bool) {
        if !self.name.is_empty() {
            errs.name(&path.field("name"), &self.name);
        }
        self.validate_parts(path, errs, required);
        if let Some(l) = &self.limits {
            l.validate_into(&path.field("limits"), errs);
        }
    }

    /// Listeners and hosts; `required`: at least one of each.
    fn validate_parts(&self, path: &FieldPath, errs: &mut Errors, required: bool) {
        if required && self.listeners.is_empty() {
            errs.push(
                &path.field("listeners"),
                "at least one listener is required",
            );
        }
        let mut names = HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            let lp = path.item("listeners", i);
            errs.name(&lp.field("name"), &l.name);
            if !names.insert(l.name.as_str()) {
                errs.push(&lp.field("name"), format!("{:?} is used twice", l.name));
            }
            errs.length(&lp.field("address"), &l.address, MAX_VALUE_BYTES);
            if l.address.parse::<SocketAddr>().is_err() {
                errs.push(
                    &lp.field("address"),
                    format!("{:?} is not a socket address (ip:port)", l.address),
                );
            }
            errs.port(&lp.field("redirect_port"), l.redirect_port, true);
        }
        let has_tls_listener = self.listeners.iter().any(|l| l.tls);
        if required && self.hosts.is_empty() {
            errs.push(&path.field("hosts"), "at least one host is required");
        }
        let mut hosts = HashSet::new();
        for (i, h) in self.hosts.iter().enumerate() {
            let hp = path.item("hosts", i);
            hostname(&hp.field("hostname"), &h.hostname, errs);
            if !hosts.insert(h.hostname.to_ascii_lowercase()) {
                errs.push(
                    &hp.field("hostname"),
                    format!("{:?} is listed twice", h.hostname),
                );
            }
            if let Some(tls) = &h.tls {
                let tp = hp.field("tls");
                for (name, file) in [
                    ("cert_file", &tls.cert_file),
                    ("key_file", &tls.key_file),
                    ("client_ca_file", &tls.client_ca_file),
                ] {
                    errs.length(&tp.field(name), file, MAX_VALUE_BYTES);
                }
                if tls.cert_file.is_empty() {
                    errs.push(&tp.field("cert_file"), "must not be empty");
                }
                if tls.key_file.is_empty() {
                    errs.push(&tp.field("key_file"), "must not be empty");
                }
            }
            if h.https_redirect && (h.tls.is_none() || !has_tls_listener) {
                errs.push(
                    &hp.field("https_redirect"),
                    format!(
                        "host {:?} needs `tls` and a listener with `tls: true` to redirect to",
                        h.hostname
                    ),
                );
            }
            if h.routes.is_empty() {
                errs.push(&hp.field("routes"), "at least one route is required");
            }
            for (j, r) in h.routes.iter().enumerate() {
                let rp = hp.item("routes", j);
                let as_rule = RouteRule {
                    matches: r.matches.clone(),
                    ..Default::default()
                };
                as_rule.validate_into(&rp, errs);
                errs.name(&rp.field("service"), &r.service);
                errs.port(&rp.field("port"), r.port, false);
            }
        }
    }
}

fn hostname(path: &FieldPath, value: &str, errs: &mut Errors) {
    if !errs.length(path, value, MAX_NAME_BYTES + 2) {
        return;
    }
    let bare = value.strip_prefix("*.").unwrap_or(value);
    let ok = !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !ok {
        errs.push(
            path,
            format!("{value:?} is not a DNS host name (or `*.` wildcard)"),
        );
    }
}

// === impl EdgeLimits ===

impl EdgeLimits {
    /// Request head limit in bytes, with the default applied.
    pub fn max_request_header_bytes(&self) -> u64 {
        match self.max_request_header_bytes {
            0 => 16 * 1024,
            n => n,
        }
    }

    /// Request body limit in bytes, with the default applied.
    pub fn max_request_body_bytes(&self) -> u64 {
        match self.max_request_body_bytes {
            0 => 10 * 1024 * 1024,
            n => n,
        }
    }

    /// Header read timeout in milliseconds, with the default applied.
    pub fn header_read_timeout_ms(&self) -> u64 {
        match self.header_read_timeout {
            0 => 10_000,
            n => n,
        }
    }

    /// Connections per client IP, with the default applied.
    pub fn max_connections_per_ip(&self) -> u32 {
        match self.max_connections_per_ip {
            0 => 256,
            n => n,
        }
    }

    fn validate_into(&self, path: &FieldPath, errs: &mut Errors) {
        let h = self.max_request_header_bytes;
        if h != 0 && !(MIN_REQUEST_HEADER_BYTES..=MAX_REQUEST_HEADER_BYTES).contains(&h) {
            errs.push(
                &path.field("max_request_header_bytes"),
                format!(
                    "{h} is outside {MIN_REQUEST_HEADER_BYTES}..={MAX_REQUEST_HEADER_BYTES} bytes"
                ),
            );
        }
        errs.duration_at_most(
            &path.field("header_read_timeout"),
            self.header_read_timeout,
            300_000,
        );
        errs.at_most(&path.field("trusted_hops"), self.trusted_hops.into(), 16);
        if let Some(r) = &self.rate_limit {
            if r.requests_per_second == 0 {
                errs.push(
                    &path.field("rate_limit").field("requests_per_second"),
                    "0 must be at least 1",
                );
            }
        }
    }
}

// === impl RateLimit ===

impl RateLimit {
    /// The bucket size, with the default applied.
    pub fn burst(&self) -> u32 {
        if self.burst == 0 {
            self.requests_per_second
        } else {
            self.burst
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name: edge
listeners:
  - { name: https, address: "0.0.0.0:8443", tls: true }
  - { name: http, address: "0.0.0.0:8080" }
hosts:
  - hostname: shop.example.com
    tls: { cert_file: /etc/gw/shop.pem, key_file: /etc/gw/shop.key }
    https_redirect: true
    routes:
      - matches: [ { path: { kind: prefix, value: /api }, method: GET } ]
        service: api
        port: 8080
      - { service: web, port: 80 }
  - hostname: "*.internal.example.com"
    routes: [ { service: admin.ops, port: 80 } ]
limits:
  header_read_timeout: 5s
  rate_limit: { requests_per_second: 100 }
  trusted_hops: 1
"#;

    #[test]
    fn a_good_gateway_parses_and_validates() {
        let g: Gateway = serde_yaml::from_str(GOOD).unwrap();
        g.validate().unwrap();
        let l = g.limits();
        assert_eq!(l.header_read_timeout_ms(), 5_000);
        assert_eq!(l.max_request_header_bytes(), 16 * 1024);
        assert_eq!(l.rate_limit.unwrap().burst(), 100);
        assert_eq!(g.hosts[0].routes[0].matches[0].method, "GET");
    }

    #[test]
    fn errors_name_the_field_and_host() {
        let mut g: Gateway = serde_yaml::from_str(GOOD).unwrap();
        g.hosts[1].https_redirect = true;
        g.hosts[0].routes[0].port = 0;
        g.hosts[0].hostname = "bad_host".into();
        g.listeners[1].name = "https".into();
        g.limits.as_mut().unwrap().max_request_header_bytes = 100;
        let text = g.validate().unwrap_err().to_string();
        for want in [
            "hosts[1].https_redirect: host \"*.internal.example.com\" needs `tls`",
            "hosts[0].routes[0].port: 0 is not a valid port",
            "hosts[0].hostname: \"bad_host\" is not a DNS host name",
            "listeners[1].name: \"https\" is used twice",
            "limits.max_request_header_bytes: 100 is outside",
        ] {
            assert!(text.contains(want), "{want:?} not in {text}");
        }
    }

    #[test]
    fn route_matches_are_checked_like_mesh_routes() {
        let mut g: Gateway = serde_yaml::from_str(GOOD).unwrap();
        g.hosts[0].routes[0].matches[0].path.as_mut().unwrap().value = "api".into();
        let text = g.validate().unwrap_err().to_string();
        assert!(
            text.contains("hosts[0].routes[0].matches[0].path.value: \"api\" must start with '/'"),
            "{text}"
        );
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = serde_yaml::from_str::<Gateway>("hosts: [ { hostname: a.b, tsl: {} } ]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("tsl"), "{err}");
    }
}

#[cfg(test)]
mod resource_tests {
    use super::*;

    fn delivered() -> Gateway {
        serde_yaml::from_str(
            r#"
name: public
namespace: shop
selector: { istio: ingressgateway }
listeners: [ { name: https, address: "0.0.0.0:443", tls: true } ]
"#,
        )
        .unwrap()
    }

    #[test]
    fn a_delivered_gateway_may_have_no_hosts_yet() {
        delivered().validate_resource().unwrap();
        // A bootstrap section still needs its hosts.
        assert!(delivered().validate().is_err());
    }

    #[test]
    fn a_delivered_gateway_needs_a_selector_and_no_limits() {
        let mut g = delivered();
        g.selector.clear();
        g.name.clear();
        g.limits = Some(EdgeLimits::default());
        g.listeners[0].address = "nowhere".into();
        let text = g.validate_resource().unwrap_err().to_string();
        for want in [
            "selector: at least one label is required",
            "name:",
            "limits: edge limits are the gateway's own",
            "listeners[0].address: \"nowhere\" is not a socket address",
        ] {
            assert!(text.contains(want), "{want:?} not in {text}");
        }
    }

    #[test]
    fn selection_needs_every_selector_label() {
        let g = delivered();
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(g.selects(&labels(&[("istio", "ingressgateway"), ("app", "x")])));
        assert!(!g.selects(&labels(&[("istio", "egressgateway")])));
        assert!(!g.selects(&labels(&[])));
        let none = Gateway::default();
        assert!(!none.selects(&labels(&[("istio", "ingressgateway")])));
    }

    #[test]
    fn the_mesh_checks_every_delivered_gateway_by_its_path() {
        let mut mesh = crate::MeshResources {
            gateways: vec![delivered(), delivered()],
            ..Default::default()
        };
        mesh.gateways[1].selector.clear();
        let text = mesh.validate().unwrap_err().to_string();
        assert!(
            text.contains("gateways[1].selector: at least one label"),
            "{text}"
        );
        assert!(
            text.contains("gateways[1].name: \"shop/public\" is declared twice"),
            "{text}"
        );
    }
}
