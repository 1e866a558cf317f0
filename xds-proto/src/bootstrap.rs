//! The proxy's bootstrap file: who it is, where its admin server binds, and
//! (until a control plane is configured) its static resources.

use crate::health::HealthConfig;
use crate::serde_util::duration_ms;
use crate::validate::{Errors, FieldPath, ValidationErrors, MAX_NAME_BYTES, MAX_VALUE_BYTES};
use crate::MeshResources;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// The proxy's configuration file (`sane-proxy --config FILE`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Bootstrap {
    /// Who this proxy is. Default: node id `sidecar`, namespace `default`.
    pub node: Node,
    /// Admin server. Default: `127.0.0.1:15000`.
    pub admin: AdminConfig,
    /// How long a drain (SIGTERM or `/drain`) waits for in-flight requests
    /// before closing them. Default: 0, meaning 30s.
    #[serde(with = "duration_ms")]
    pub drain_timeout: u64,
    /// Static resources, reloaded from the file on SIGHUP or change. With a
    /// control plane, its services, endpoints, routes and policies replace
    /// these once received (listeners always come from this file).
    /// Default: none.
    pub resources: MeshResources,
    /// The control plane to fetch resources from over xDS. Default: none,
    /// static resources only.
    pub control_plane: Option<ControlPlane>,
    /// The proxy's workload identity, issued by the control plane's CA.
    /// Default: none (no mutual TLS).
    pub identity: Option<IdentityConfig>,
    /// The health port the kubelet probes (`/healthz/ready` and the app's
    /// rewritten probes). Default: none, no health server.
    pub health: Option<HealthConfig>,
    /// The ingress gateway `sane-proxy gateway` serves (listeners, hosts,
    /// certificates, routes, edge limits). Default: none; required in
    /// gateway mode, ignored by a sidecar.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<crate::Gateway>,
    /// HTTP handling shared by every listener: path normalization and
    /// header count limits. Default: see [`crate::HttpOptions`]; every
    /// field has a safe default.
    pub http: crate::HttpOptions,
}

/// How the proxy obtains its workload certificate.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityConfig {
    /// Trust domain of the mesh. Default: `cluster.local`.
    pub trust_domain: String,
    /// The workload's service account; with `node.namespace` it makes the
    /// SPIFFE id `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`
    /// the proxy asks for (the CA only signs it if the token allows it).
    /// Default: `default`.
    pub service_account: String,
    /// CA URL. Default: the control plane's `address`. Like it, `https://`
    /// (verified against `root_cert_file`), or `http://` to a loopback
    /// address only; several comma-separated URLs are tried in turn.
    pub ca_address: String,
    /// File holding the bootstrap token the CA authenticates. Default: the
    /// control plane's `token_file`.
    pub token_file: String,
    /// PEM file of the root(s) the CA's serving certificate must chain to.
    /// Default: the control plane's `root_cert_file`.
    pub root_cert_file: String,
    /// Requested certificate lifetime; the CA may shorten it. Default: 0,
    /// the CA's default (24h).
    #[serde(with = "duration_ms")]
    pub ttl: u64,
    /// Other trust domains whose workloads may connect to this proxy's
    /// inbound listeners (their certificates must still chain to the mesh's
    /// trust bundle). A client certificate of any other trust domain is
    /// refused in the handshake, even when it chains to the mesh root.
    /// Default: none (only `trust_domain`).
    pub federated_trust_domains: Vec<String>,
}

/// Where the proxy's dynamic configuration comes from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlPlane {
    /// xDS server URL, e.g. `https://sane-control-plane.sane-system.svc:15010`;
    /// replicated control planes: several, comma-separated (a failed stream
    /// moves on to the next one, keeping the last config meanwhile).
    /// `https://`: TLS, the server verified against `root_cert_file` for the
    /// URL's host (a DNS name or IP address its certificate must carry).
    /// `http://` (plaintext: the token would travel in clear) only to a
    /// loopback address (`127.0.0.0/8`, `::1`, `localhost`), matching the
    /// control plane's `--insecure-plaintext-loopback`. Required.
    pub address: String,
    /// File holding the proxy's workload token, sent as a bearer token on
    /// the xDS stream (the control plane refuses streams without a valid
    /// one). Read again at each reconnect, so a rotated file is picked up.
    /// Default: `identity.token_file`.
    pub token_file: String,
    /// Services of other namespaces (or `*`) this proxy talks to, beyond its
    /// own namespace. Default: none.
    pub services: Vec<String>,
    /// PEM file of the mesh root(s) the control plane's serving certificate
    /// must chain to: what the control plane writes to
    /// `<data-dir>/root-cert.pem` (`--root-cert-file`). Read at each
    /// (re)connect. Required with an `https://` address (here or as
    /// `identity.root_cert_file`). Default: `identity.root_cert_file`.
    pub root_cert_file: String,
}

/// The proxy's identity in the mesh.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Node {
    /// Unique id of this proxy instance. Default: `sidecar`.
    pub id: String,
    /// Namespace of the workload. Default: `default`.
    pub namespace: String,
    /// Workload name (for metrics). Default: empty.
    pub workload: String,
    /// Labels of the workload, as on its pod. They give the Istio metric
    /// labels of this side of a request: `app` (else
    /// `app.kubernetes.io/name`) is `*_app`, `version` (else
    /// `app.kubernetes.io/version`) is `*_version`,
    /// `service.istio.io/canonical-name` (else the app, else the workload)
    /// is `*_canonical_service`, `service.istio.io/canonical-revision` (else
    /// the version, else `latest`) is `*_canonical_revision`. A value that is
    /// not 1-63 characters of `A-Za-z0-9._-` counts as absent. Default: none.
    pub labels: BTreeMap<String, String>,
}

/// The admin server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Address to bind. Must be a loopback address. Default: `127.0.0.1:15000`.
    pub address: String,
}

// === impl IdentityConfig ===

impl IdentityConfig {
    /// The trust domain, with the default applied.
    pub fn trust_domain(&self) -> &str {
        if self.trust_domain.is_empty() {
            "cluster.local"
        } else {
            &self.trust_domain
        }
    }

    fn validate_trust_domains(&self, path: &FieldPath, errs: &mut Errors) {
        if !self.trust_domain.is_empty() {
            if let Err(reason) = check_trust_domain(&self.trust_domain) {
                errs.push(
                    &path.field("trust_domain"),
                    format!("{:?} {reason}", self.trust_domain),
                );
            }
        }
        for (i, td) in self.federated_trust_domains.iter().enumerate() {
            let at = path.item("federated_trust_domains", i);
            if let Err(reason) = check_trust_domain(td) {
                errs.push(&at, format!("{td:?} {reason}"));
            } else if td == self.trust_domain() {
                errs.push(&at, format!("{td:?} is the proxy's own trust domain"));
            } else if self.federated_trust_domains[..i].contains(td) {
                errs.push(&at, format!("{td:?} is listed twice"));
            }
        }
    }

    /// The service account, with the default applied.
    pub fn service_account(&self) -> &str {
        if self.service_account.is_empty() {
            "default"
        } else {
            &self.service_account
        }
    }
}

/// A SPIFFE trust domain name: lowercase letters, digits, `.`, `-` and `_`,
/// 1 to 255 bytes (the rule `sane_certs::TrustDomain` enforces).
fn check_trust_domain(td: &str) -> Result<(), String> {
    if td.is_empty() || td.len() > 255 {
        return Err(format!(
            "is {} bytes long; a trust domain has 1 to 255",
            td.len()
        ));
    }
    match td
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
    {
        Some(c) => Err(format!(
            "contains {c:?}; only lowercase letters, digits, '.', '-' and '_' are allowed"
        )),
        None => Ok(()),
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:15000".to_string(),
        }
    }
}

// === impl Bootstrap ===

impl Bootstrap {
    /// Validates the file, naming every bad field by its path.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errs = Errors::default();
        let root = FieldPath::root();
        if !self.node.namespace.is_empty() {
            errs.name(&root.field("node").field("namespace"), &self.node.namespace);
        }
        // Both travel in headers and metrics labels of every request.
        let node = root.field("node");
        errs.length(&node.field("id"), &self.node.id, MAX_NAME_BYTES);
        errs.length(&node.field("workload"), &self.node.workload, MAX_NAME_BYTES);
        for (k, v) in &self.node.labels {
            errs.length(&node.field("labels"), k, MAX_NAME_BYTES);
            errs.length(&node.field("labels"), v, MAX_VALUE_BYTES);
        }
        let admin = root.field("admin").field("address");
        errs.length(&admin, &self.admin.address, MAX_VALUE_BYTES);
        match self.admin.address.parse::<SocketAddr>() {
            Ok(a) if !a.ip().is_loopback() => errs.push(
                &root.field("admin").field("address"),
                format!("{a} is not a loopback address; the admin server binds to localhost only"),
            ),
            Ok(_) => {}
            Err(_) => errs.push(
                &root.field("admin").field("address"),
                format!("{:?} is not a socket address (ip:port)", self.admin.address),
            ),
        }
        self.resources
            .validate_into(&root.field("resources"), &mut errs);
        if let Some(id) = &self.identity {
            let path = root.field("identity");
            errs.length(
                &path.field("trust_domain"),
                &id.trust_domain,
                MAX_NAME_BYTES,
            );
            errs.length(
                &path.field("service_account"),
                &id.service_account,
                MAX_NAME_BYTES,
            );
            errs.length(&path.field("ca_address"), &id.ca_address, MAX_VALUE_BYTES);
            errs.length(&path.field("token_file"), &id.token_file, MAX_VALUE_BYTES);
            let path = root.field("identity");
            if !id.ca_address.is_empty() {
                check_control_plane_url(
                    &id.ca_address,
                    self.ca_root_cert_file(),
                    &path.field("ca_address"),
                    &path,
                    &mut errs,
                );
            } else if self.control_plane.is_none() {
                errs.push(
                    &path.field("ca_address"),
                    "required when there is no control_plane",
                );
            }
            // Otherwise the CA is the control plane's address, with its
            // root, checked below.
            id.validate_trust_domains(&root.field("identity"), &mut errs);
        }
        if let Some(h) = &self.health {
            h.validate_into(&root.field("health"), &mut errs);
        }
        self.validate_workload_ports_not_own(&root, &mut errs);
        if let Some(g) = &self.gateway {
            // With a control plane, listeners and hosts may all be delivered.
            let required = self.control_plane.is_none();
            g.validate_into(&root.field("gateway"), &mut errs, required);
        }
        self.http.validate_into(&root.field("http"), &mut errs);
        if let Some(cp) = &self.control_plane {
            let path = root.field("control_plane");
            errs.length(&path.field("address"), &cp.address, MAX_VALUE_BYTES);
            errs.length(&path.field("token_file"), &cp.token_file, MAX_VALUE_BYTES);
            for (i, s) in cp.services.iter().enumerate() {
                errs.length(&path.item("services", i), s, MAX_NAME_BYTES);
            }
            let root_file = match &self.identity {
                Some(id) if cp.root_cert_file.is_empty() => &id.root_cert_file,
                _ => &cp.root_cert_file,
            };
            check_control_plane_url(
                &cp.address,
                root_file,
                &path.field("address"),
                &path,
                &mut errs,
            );
        }
        errs.finish()
    }

    /// A declared workload port that is one of the proxy's own sockets
    /// (admin, health, a listener; fixed ports only, port 0 is checked at
    /// run time) is a mistake the inbound would refuse at every connection:
    /// named here instead.
    fn validate_workload_ports_not_own(&self, root: &FieldPath, errs: &mut Errors) {
        let mut own: Vec<(String, SocketAddr)> = Vec::new();
        let mut add = |name: String, addr: &str| {
            if let Ok(a) = addr.parse::<SocketAddr>() {
                if a.port() != 0 {
                    own.push((name, a));
                }
            }
        };
        add("admin".into(), &self.admin.address);
        if let Some(h) = &self.health {
            add("health".into(), &h.address);
        }
        for l in &self.resources.listeners {
            add(format!("listener {:?}", l.name), &l.address);
        }
        let local = |ip: std::net::IpAddr| ip.is_loopback() || ip.is_unspecified();
        for (i, l) in self.resources.listeners.iter().enumerate() {
            let ip = match l.workload_address.parse() {
                Ok(ip) => ip,
                Err(_) => std::net::IpAddr::from([127, 0, 0, 1]),
            };
            for (j, w) in l.workload_ports.iter().enumerate() {
                let hit = own.iter().find(|(_, a)| {
                    u32::from(a.port()) == w.port
                        && (a.ip() == ip || a.ip().is_unspecified() || (local(a.ip()) && local(ip)))
                });
                if let Some((name, a)) = hit {
                    let at = root
                        .field("resources")
                        .item("listeners", i)
                        .item("workload_ports", j)
                        .field("port");
                    errs.push(
                        &at,
                        format!(
                            "{} is the proxy's own {name} port ({a}); the inbound never delivers to it",
                            w.port
                        ),
                    );
                }
            }
        }
    }

    /// The CA's root file: `identity.root_cert_file`, else the control
    /// plane's. Empty if neither is set.
    pub fn ca_root_cert_file(&self) -> &str {
        match &self.identity {
            Some(id) if !id.root_cert_file.is_empty() => &id.root_cert_file,
            _ => self
                .control_plane
                .as_ref()
                .map_or("", |c| c.root_cert_file.as_str()),
        }
    }

    /// The drain deadline in milliseconds, with the default applied.
    pub fn drain_timeout_ms(&self) -> u64 {
        if self.drain_timeout == 0 {
            30_000
        } else {
            self.drain_timeout
        }
    }
}

/// The host of an `http(s)://host[:port][/...]` URL, without IPv6 brackets.
pub fn url_host(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit('@').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    (!host.is_empty()).then_some(host)
}

/// Whether `host` is this machine: `localhost` or a loopback address.
pub fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A control plane (or CA) URL: `https://` with a root file to verify the
/// server, or `http://` to loopback only.
fn check_control_plane_url(
    urls: &str,
    root_file: &str,
    field: &FieldPath,
    section: &FieldPath,
    errs: &mut Errors,
) {
    // Replicated control planes: several comma-separated URLs, each
    // checked on its own.
    for url in urls.split(',').map(str::trim) {
        check_one_control_plane_url(url, root_file, field, section, errs);
    }
}

fn check_one_control_plane_url(
    url: &str,
    root_file: &str,
    field: &FieldPath,
    section: &FieldPath,
    errs: &mut Errors,
) {
    let Some(host) = url_host(url) else {
        errs.push(field, format!("{url:?} is not an http(s) URL"));
        return;
    };
    if url.starts_with("https://") {
        if root_file.is_empty() {
            errs.push(
                &section.field("root_cert_file"),
                format!(
                    "required to verify {url}: the PEM root the control plane writes to \
                     <data-dir>/root-cert.pem"
                ),
            );
        }
    } else if !is_loopback_host(host) {
        errs.push(
            field,
            format!(
                "{url:?} is plaintext to {host}, which is not a loopback address: the workload \
                 token would cross the network in clear; use https:// and root_cert_file"
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_cp(address: &str, root: &str) -> Bootstrap {
        Bootstrap {
            control_plane: Some(ControlPlane {
                address: address.into(),
                root_cert_file: root.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn errors(b: &Bootstrap) -> String {
        b.validate()
            .map_or_else(|e| e.to_string(), |()| String::new())
    }

    #[test]
    fn control_plane_urls_are_tls_with_a_root_or_plaintext_to_loopback() {
        for ok in [
            with_cp("https://10.0.0.1:15010", "/etc/sane/root-cert.pem"),
            with_cp("https://cp.sane-system.svc:15010", "/root.pem"),
            with_cp("http://127.0.0.1:15010", ""),
            with_cp("http://[::1]:15010", ""),
            with_cp("http://localhost:15010", ""),
        ] {
            assert_eq!(errors(&ok), "", "{ok:?}");
        }
        let e = errors(&with_cp("https://10.0.0.1:15010", ""));
        assert!(e.contains("control_plane.root_cert_file: required"), "{e}");
        let e = errors(&with_cp("http://10.0.0.1:15010", ""));
        assert!(
            e.contains("control_plane.address") && e.contains("not a loopback address"),
            "{e}"
        );
        let e = errors(&with_cp("ftp://x", ""));
        assert!(e.contains("not an http(s) URL"), "{e}");
    }

    #[test]
    fn the_ca_defaults_to_the_control_planes_url_and_root() {
        let mut b = with_cp("https://10.0.0.1:15010", "/root.pem");
        b.identity = Some(IdentityConfig::default());
        assert_eq!(errors(&b), "");
        assert_eq!(b.ca_root_cert_file(), "/root.pem");
        // Its own https CA needs a root: its own or the control plane's.
        b.identity = Some(IdentityConfig {
            ca_address: "https://ca.example:15010".into(),
            ..Default::default()
        });
        assert_eq!(errors(&b), "");
        b.control_plane = None;
        let e = errors(&b);
        assert!(e.contains("identity.root_cert_file: required"), "{e}");
        b.identity = Some(IdentityConfig {
            ca_address: "http://10.1.1.1:15010".into(),
            ..Default::default()
        });
        let e = errors(&b);
        assert!(
            e.contains("identity.ca_address") && e.contains("not a loopback"),
            "{e}"
        );
    }

    #[test]
    fn url_hosts() {
        assert_eq!(url_host("https://a.b:1/x"), Some("a.b"));
        assert_eq!(url_host("http://[::1]:15010"), Some("::1"));
        assert_eq!(url_host("https://10.0.0.1"), Some("10.0.0.1"));
        assert_eq!(url_host("https://"), None);
        assert_eq!(url_host("10.0.0.1:80"), None);
    }
}
