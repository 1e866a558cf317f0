//! The proxy's bootstrap file: who it is, where its admin server binds, and
//! (until a control plane is configured) its static resources.

use crate::health::HealthConfig;
use crate::serde_util::duration_ms;
use crate::validate::{Errors, FieldPath, ValidationErrors, MAX_NAME_BYTES, MAX_VALUE_BYTES};
use crate::MeshResources;
use serde::{Deserialize, Serialize};
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
    /// CA URL. Default: the control plane's `address`.
    pub ca_address: String,
    /// File holding the bootstrap token the CA authenticates. Default: the
    /// control plane's `token_file`.
    pub token_file: String,
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
    /// xDS server URL, e.g. `http://127.0.0.1:15010`. Required.
    pub address: String,
    /// File holding the proxy's workload token, sent as a bearer token on
    /// the xDS stream (the control plane refuses streams without a valid
    /// one). Read again at each reconnect, so a rotated file is picked up.
    /// Default: `identity.token_file`.
    pub token_file: String,
    /// Services of other namespaces (or `*`) this proxy talks to, beyond its
    /// own namespace. Default: none.
    pub services: Vec<String>,
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
            let ip = root.field("identity");
            errs.length(&ip.field("trust_domain"), &id.trust_domain, MAX_NAME_BYTES);
            errs.length(
                &ip.field("service_account"),
                &id.service_account,
                MAX_NAME_BYTES,
            );
            errs.length(&ip.field("ca_address"), &id.ca_address, MAX_VALUE_BYTES);
            errs.length(&ip.field("token_file"), &id.token_file, MAX_VALUE_BYTES);
            let ca = if id.ca_address.is_empty() {
                self.control_plane.as_ref().map(|c| c.address.as_str())
            } else {
                Some(id.ca_address.as_str())
            };
            if ca.is_none() {
                errs.push(
                    &root.field("identity").field("ca_address"),
                    "required when there is no control_plane",
                );
            }
            id.validate_trust_domains(&root.field("identity"), &mut errs);
        }
        if let Some(h) = &self.health {
            h.validate_into(&root.field("health"), &mut errs);
        }
        self.validate_workload_ports_not_own(&root, &mut errs);
        if let Some(g) = &self.gateway {
            g.validate_into(&root.field("gateway"), &mut errs);
        }
        self.http.validate_into(&root.field("http"), &mut errs);
        if let Some(cp) = &self.control_plane {
            let cpp = root.field("control_plane");
            errs.length(&cpp.field("address"), &cp.address, MAX_VALUE_BYTES);
            errs.length(&cpp.field("token_file"), &cp.token_file, MAX_VALUE_BYTES);
            for (i, s) in cp.services.iter().enumerate() {
                errs.length(&cpp.item("services", i), s, MAX_NAME_BYTES);
            }
            let a = &cp.address;
            if !(a.starts_with("http://") || a.starts_with("https://")) || a.len() < 10 {
                errs.push(
                    &root.field("control_plane").field("address"),
                    format!("{a:?} is not an http(s) URL"),
                );
            }
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

    /// The drain deadline in milliseconds, with the default applied.
    pub fn drain_timeout_ms(&self) -> u64 {
        if self.drain_timeout == 0 {
            30_000
        } else {
            self.drain_timeout
        }
    }
}
