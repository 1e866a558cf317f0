//! Ingress kinds: both `Gateway`s become the configuration of `sane-proxy
//! gateway` (a [`Gateway`] resource: listeners, and a host per hostname of
//! the routes bound to it — HTTPRoutes, see [`super::gateway_api`], and
//! VirtualServices with `gateways:`, see [`super::virtual_service`]). The
//! control plane delivers it over xDS to the gateway proxies of the
//! object's namespace its `selector` picks: an Istio Gateway's own
//! `selector` (`istio: ingressgateway`), a Gateway API Gateway's
//! [`GATEWAY_NAME_LABEL`]`: <name>` (the label Istio's automated deployment
//! gives the pods it creates for a Gateway). `sanectl convert --gateway`
//! prints the same configuration as a bootstrap `gateway` section.
//!
//! A host's certificate comes from files: Istio's `serverCertificate` and
//! `privateKey` as written, or a Secret (Istio's `credentialName`, the
//! Gateway API's `certificateRefs`) read from
//! `<credentials dir>/<namespace>/<name>/tls.crt` and `tls.key` (and
//! `ca.crt` for client certificates) — the keys of a `kubernetes.io/tls`
//! Secret, as `kubectl create secret tls` writes them — under
//! [`DEFAULT_CREDENTIALS_DIR`], or the directory `sanectl convert
//! --credentials-dir` names ([`ConvertedGateway::use_credentials_dir`]);
//! a delivered configuration names the same files, and the gateway reads
//! them on its own machine (`sane-proxy gateway --credentials-dir` moves
//! the directory there). Private keys never travel over xDS.

use super::common::{present, sane_name, Report, P};
use super::error::IstioError;
use super::object::{Object, ObjectRef};
use super::Output;
use crate::resource::Resource;
use sane_xds_proto::{
    Gateway, GatewayHost, GatewayListener, GatewayRoute, HostTls, Route, RouteMatch, RouteRule,
    Service, ServicePort, GATEWAY_NAME_LABEL,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// Where Secrets named by Gateways are read from unless `sanectl convert
/// --credentials-dir` (or the gateway's own `--credentials-dir`) says
/// otherwise: `<dir>/<namespace>/<name>/tls.crt`.
pub use sane_xds_proto::DEFAULT_CREDENTIALS_DIR;

/// A route's claim on a Gateway: the hosts it serves there.
#[derive(Clone, Debug)]
pub(crate) struct GatewayAttach {
    /// Path of the `parentRefs` (or `gateways`) entry.
    pub(crate) path: P,
    /// The Gateway's namespace.
    pub(crate) namespace: String,
    /// The Gateway's name.
    pub(crate) gateway: String,
    /// Which of the two `Gateway` kinds it is.
    pub(crate) istio: bool,
    /// `sectionName`: one listener of it.
    pub(crate) section: Option<String>,
    /// The route's `hostnames` (a VirtualService's `hosts`).
    pub(crate) hostnames: Vec<String>,
    /// Where the gateway sends them.
    pub(crate) route: GatewayRoute,
}

/// The `sane-proxy gateway` configuration one Gateway stands for.
#[derive(Clone, Debug, Serialize)]
pub struct ConvertedGateway {
    /// The Gateway object.
    pub object: ObjectRef,
    /// Its `gateway` section. Listener addresses are `0.0.0.0:<port>`.
    pub gateway: Gateway,
    /// The Secret (`namespace/name`) each TLS host's certificate comes
    /// from, by hostname.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub credentials: BTreeMap<String, String>,
    /// Each listener's name and `hostname`, if any (hosts of routes without
    /// hostnames).
    #[serde(skip)]
    pub(crate) listener_hosts: Vec<(String, Option<String>)>,
    /// What hosts matching a pattern (`host`, `*.suffix`, `*`) get: TLS and
    /// redirects, from the servers or listeners naming them.
    #[serde(skip)]
    pub(crate) host_settings: Vec<HostSettings>,
    /// Istio's: a route's host must be one its servers accept.
    #[serde(skip)]
    pub(crate) istio: bool,
}

/// What a server (or listener) gives the hosts it names.
#[derive(Clone, Debug)]
pub(crate) struct HostSettings {
    /// `host`, `*.suffix` or `*`.
    pattern: String,
    /// The certificate, on a TLS server.
    tls: Option<HostTls>,
    /// The Secret it comes from (`namespace/name`).
    secret: Option<String>,
    /// Plain HTTP is redirected to HTTPS.
    https_redirect: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct KubeListener {
    name: String,
    hostname: Option<String>,
    port: u32,
    protocol: String,
    tls: Option<KubeTls>,
    allowed_routes: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct KubeTls {
    mode: Option<String>,
    certificate_refs: Vec<SecretRef>,
    options: Option<Value>,
    frontend_validation: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct SecretRef {
    group: Option<String>,
    kind: Option<String>,
    name: String,
    namespace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct IstioGatewaySpec {
    selector: BTreeMap<String, String>,
    servers: Vec<Server>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct Server {
    port: ServerPort,
    bind: Option<String>,
    hosts: Vec<String>,
    tls: Option<ServerTls>,
    default_endpoint: Option<String>,
    name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct ServerPort {
    number: u32,
    protocol: String,
    name: String,
    target_port: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct ServerTls {
    https_redirect: bool,
    mode: Option<String>,
    server_certificate: Option<String>,
    private_key: Option<String>,
    ca_certificates: Option<String>,
    ca_crl: Option<String>,
    credential_name: Option<String>,
    credential_names: Vec<String>,
    tls_certificates: Option<Value>,
    subject_alt_names: Vec<String>,
    verify_certificate_spki: Vec<String>,
    verify_certificate_hash: Vec<String>,
    min_protocol_version: Option<String>,
    max_protocol_version: Option<String>,
    cipher_suites: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct KubeGatewaySpec {
    gateway_class_name: Option<Value>,
    listeners: Vec<KubeListener>,
    addresses: Option<Value>,
    infrastructure: Option<Value>,
    backend_tls: Option<Value>,
    allowed_listeners: Option<Value>,
}

fn report_all(out: &mut Output, fields: &[(&str, &Option<Value>)], reason: &str) {
    let root = P::spec();
    for (name, v) in fields {
        if present(v) {
            out.report.unsupported(&root.f(name), reason);
        }
    }
}

/// The files of Secret `namespace/name` under `dir`; `client_ca` adds
/// `ca.crt`.
fn secret_files(dir: &str, secret: &str, client_ca: bool) -> HostTls {
    let base = Path::new(dir).join(secret);
    let file = |name: &str| base.join(name).display().to_string();
    HostTls {
        cert_file: file("tls.crt"),
        key_file: file("tls.key"),
        client_ca_file: if client_ca {
            file("ca.crt")
        } else {
            String::new()
        },
    }
}

/// Converts an Istio Gateway into the listeners of a `sane-proxy gateway`
/// configuration (one per port) and what its servers give their hosts;
/// hosts come from the VirtualServices bound to it ([`attach`]).
pub(crate) fn istio_gateway(object: &Object, out: &mut Output) -> Result<(), IstioError> {
    let s: IstioGatewaySpec = object.spec()?;
    let root = P::spec();
    if s.selector.is_empty() {
        out.report.unsupported(
            &root.f("selector"),
            "no selector: the configuration is delivered to no gateway proxy \
             (`sanectl convert --gateway` still prints it for a bootstrap file)",
        );
    } else {
        out.report.note(
            &root.f("selector"),
            format!(
                "delivered to the `sane-proxy gateway`s of namespace {} whose node.labels \
                 carry these labels",
                object.namespace
            ),
        );
    }
    let mut gateway = Gateway {
        name: object.name.clone(),
        namespace: object.namespace.clone(),
        selector: s.selector.clone(),
        ..Default::default()
    };
    let mut settings = Vec::new();
    for (i, server) in s.servers.iter().enumerate() {
        let sp = root.i("servers", i);
        let report = &mut out.report;
        let _ = &server.name; // names only label Envoy's stats
        report.if_set(
            &sp,
            "bind",
            &server.bind,
            "listeners bind every address of the gateway host",
        );
        report.if_set(
            &sp,
            "defaultEndpoint",
            &server.default_endpoint,
            "the gateway forwards to mesh services only",
        );
        report.if_set(
            &sp.f("port"),
            "targetPort",
            &server.port.target_port,
            "the gateway listens on `number` itself",
        );
        let tls = match server.port.protocol.to_ascii_uppercase().as_str() {
            "HTTP" => false,
            "HTTP2" | "GRPC" => {
                report.note(
                    &sp.f("port").f("protocol"),
                    "a plain listener serves HTTP/1.1; HTTP/2 is offered on TLS listeners",
                );
                false
            }
            "HTTPS" => true,
            other => {
                report.unsupported(
                    &sp.f("port").f("protocol"),
                    format!("{other:?}: the gateway serves HTTP and HTTPS; server left out"),
                );
                continue;
            }
        };
        let host_tls = match (&server.tls, tls) {
            (Some(t), true) => match server_tls(object, t, &sp.f("tls"), report) {
                Some(x) => Some(x),
                None => continue,
            },
            (None, true) => {
                report.unsupported(&sp, "an HTTPS server needs `tls`; server left out");
                continue;
            }
            (t, false) => {
                if let Some(t) = t {
                    let tp = sp.f("tls");
                    if t.mode.as_deref().is_some_and(|m| m != "SIMPLE")
                        || t.credential_name.is_some()
                        || t.server_certificate.is_some()
                    {
                        report.unsupported(&tp, "a plain HTTP server terminates no TLS");
                    }
                }
                None
            }
        };
        let https_redirect = server.tls.as_ref().is_some_and(|t| t.https_redirect);
        if https_redirect && tls {
            report.note(
                &sp.f("tls").f("httpsRedirect"),
                "already HTTPS: nothing to redirect",
            );
        }
        // One listener per port; servers sharing one share the listener.
        let port = server.port.number;
        let address = format!("0.0.0.0:{port}");
        match gateway.listeners.iter().find(|l| l.address == address) {
            Some(l) if l.tls != tls => {
                report.unsupported(
                    &sp.f("port"),
                    format!(
                        "port {port} is served by another server with other TLS; server left out"
                    ),
                );
                continue;
            }
            Some(_) => {}
            None => {
                let mut name = if server.port.name.is_empty() {
                    format!("port-{port}")
                } else {
                    server.port.name.to_ascii_lowercase()
                };
                if gateway.listeners.iter().any(|l| l.name == name) {
                    name = format!("{name}-{port}");
                }
                gateway.listeners.push(GatewayListener {
                    name,
                    address,
                    tls,
                    ..Default::default()
                });
            }
        }
        for (j, h) in server.hosts.iter().enumerate() {
            let (ns, host) = match h.split_once('/') {
                Some((ns, host)) => (Some(ns), host),
                None => (None, h.as_str()),
            };
            if ns.is_some_and(|ns| ns != "*") {
                report.unsupported(
                    &sp.i("hosts", j),
                    "VirtualServices of every namespace may bind (the namespace part is ignored)",
                );
            }
            settings.push(HostSettings {
                pattern: host.to_ascii_lowercase(),
                tls: host_tls.as_ref().map(|(t, _)| t.clone()),
                secret: host_tls.as_ref().and_then(|(_, s)| s.clone()),
                https_redirect: https_redirect && !tls,
            });
        }
    }
    out.gateway = Some(ConvertedGateway {
        object: object.reference(),
        gateway,
        credentials: BTreeMap::new(),
        listener_hosts: Vec::new(),
        host_settings: settings,
        istio: true,
    });
    Ok(())
}

/// A server's certificate (and the Secret it comes from), or `None` when
/// its mode cannot be served (reported).
fn server_tls(
    object: &Object,
    t: &ServerTls,
    tp: &P,
    report: &mut Report,
) -> Option<(HostTls, Option<String>)> {
    let mutual = match t.mode.as_deref().unwrap_or("SIMPLE") {
        "SIMPLE" => false,
        "MUTUAL" => true,
        other => {
            report.unsupported(
                &tp.f("mode"),
                format!("{other:?}: the gateway terminates TLS (SIMPLE, MUTUAL); server left out"),
            );
            return None;
        }
    };
    for (name, set) in [
        ("subjectAltNames", !t.subject_alt_names.is_empty()),
        (
            "verifyCertificateSpki",
            !t.verify_certificate_spki.is_empty(),
        ),
        (
            "verifyCertificateHash",
            !t.verify_certificate_hash.is_empty(),
        ),
        ("caCrl", t.ca_crl.is_some()),
    ] {
        if set {
            report.unsupported(
                &tp.f(name),
                "client certificates are checked against `caCertificates` only",
            );
        }
    }
    for (name, set) in [
        ("minProtocolVersion", t.min_protocol_version.is_some()),
        ("maxProtocolVersion", t.max_protocol_version.is_some()),
        ("cipherSuites", !t.cipher_suites.is_empty()),
    ] {
        if set {
            report.unsupported(
                &tp.f(name),
                "the gateway offers TLS 1.2 and 1.3 with the mesh's cipher suites",
            );
        }
    }
    if !t.credential_names.is_empty() || present(&t.tls_certificates) {
        report.unsupported(
            tp,
            "one certificate per host: `credentialNames` and `tlsCertificates` are not read",
        );
    }
    if let Some(name) = &t.credential_name {
        if t.server_certificate.is_some() || t.private_key.is_some() {
            report.note(
                tp,
                "`credentialName` is used; the certificate files are not",
            );
        }
        let secret = format!("{}/{name}", object.namespace);
        let mut tls = secret_files(DEFAULT_CREDENTIALS_DIR, &secret, mutual);
        if mutual {
            if let Some(ca) = &t.ca_certificates {
                tls.client_ca_file = ca.clone();
            }
        }
        return Some((tls, Some(secret)));
    }
    match (&t.server_certificate, &t.private_key) {
        (Some(cert), Some(key)) => {
            let client_ca_file = match (&t.ca_certificates, mutual) {
                (Some(ca), true) => ca.clone(),
                (None, true) => {
                    report.unsupported(
                        &tp.f("caCertificates"),
                        "MUTUAL needs the client roots; server left out",
                    );
                    return None;
                }
                (_, false) => String::new(),
            };
            Some((
                HostTls {
                    cert_file: cert.clone(),
                    key_file: key.clone(),
                    client_ca_file,
                },
                None,
            ))
        }
        _ => {
            report.unsupported(
                tp,
                "an HTTPS server needs `credentialName`, or `serverCertificate` and `privateKey`;                  server left out",
            );
            None
        }
    }
}

/// The service and route behind a gateway's routes for `object`: a
/// service `<name><service_suffix>` (port 80, no endpoints) whose route
/// `<name>.<route_suffix>` holds `rules`. Returns the service's name and
/// what the gateway sends to it: what any rule matches (everything when a
/// rule matches everything); the route then picks the rule, in order.
pub(crate) fn gateway_backend(
    object: &Object,
    service_suffix: &str,
    route_suffix: &str,
    rules: &[RouteRule],
    out: &mut Output,
) -> (String, Vec<RouteMatch>) {
    let service = format!(
        "{}{service_suffix}",
        sane_name(&object.name, None).replace('.', "-")
    );
    out.resources.push(Resource::Service(Service {
        name: service.clone(),
        namespace: object.namespace.clone(),
        ports: vec![ServicePort {
            name: "http".into(),
            port: 80,
            ..Default::default()
        }],
        ..Default::default()
    }));
    out.resources.push(Resource::Route(Route {
        name: format!("{}.{route_suffix}", sane_name(&object.name, None)),
        namespace: object.namespace.clone(),
        service: service.clone(),
        rules: rules.to_vec(),
    }));
    let matches = if rules.iter().any(|r| r.matches.is_empty()) {
        Vec::new()
    } else {
        rules.iter().flat_map(|r| r.matches.clone()).collect()
    };
    (service, matches)
}

/// The ingress route of a VirtualService bound to Istio Gateways: its rules
/// on a service of its own, `<name>-vs-gw` (port 80, no endpoints), and a
/// gateway route per host to it ([`attach`]).
pub(crate) fn bound_virtual_service(
    object: &Object,
    gateways: &[(usize, String, String)],
    hosts: &[String],
    rules: &[RouteRule],
    out: &mut Output,
) {
    let (service, matches) = gateway_backend(object, "-vs-gw", "vs-gw", rules, out);
    for (i, ns, name) in gateways {
        out.gateway_routes.push(GatewayAttach {
            path: P::spec().i("gateways", *i),
            namespace: ns.clone(),
            gateway: name.clone(),
            istio: true,
            section: None,
            hostnames: hosts.to_vec(),
            route: GatewayRoute {
                matches: matches.clone(),
                service: format!("{service}.{}", object.namespace),
                port: 80,
            },
        });
    }
}

/// Converts a Gateway API Gateway into the listeners of a `sane-proxy
/// gateway` configuration; hosts come from the routes attached to it
/// ([`attach`]), with the certificates of the HTTPS listeners naming them.
pub(crate) fn kube_gateway(object: &Object, out: &mut Output) -> Result<(), IstioError> {
    let s: KubeGatewaySpec = object.spec()?;
    let root = P::spec();
    let _ = &s.gateway_class_name; // which controller runs it: `sane-proxy gateway` here
    report_all(
        out,
        &[
            ("addresses", &s.addresses),
            ("infrastructure", &s.infrastructure),
            ("backendTLS", &s.backend_tls),
            ("allowedListeners", &s.allowed_listeners),
        ],
        "the gateway's addresses and deployment are the operator's (its bootstrap file)",
    );
    let mut gateway = Gateway {
        name: object.name.clone(),
        namespace: object.namespace.clone(),
        selector: [(GATEWAY_NAME_LABEL.to_string(), object.name.clone())].into(),
        ..Default::default()
    };
    out.report.note(
        &root,
        format!(
            "delivered to the `sane-proxy gateway`s of namespace {} whose node.labels carry \
             `{GATEWAY_NAME_LABEL}: {}`",
            object.namespace, object.name
        ),
    );
    let mut listener_hosts = Vec::new();
    let mut settings = Vec::new();
    for (i, l) in s.listeners.iter().enumerate() {
        let lp = root.i("listeners", i);
        let tls = match l.protocol.as_str() {
            "HTTP" => false,
            "HTTPS" => {
                let Some((tls, secret)) = listener_tls(object, l, &lp, &mut out.report) else {
                    continue;
                };
                settings.push(HostSettings {
                    pattern: l.hostname.clone().unwrap_or_else(|| "*".into()),
                    tls: Some(tls),
                    secret: Some(secret),
                    https_redirect: false,
                });
                true
            }
            other => {
                out.report.unsupported(
                    &lp.f("protocol"),
                    format!("{other:?}: the gateway serves HTTP and HTTPS; listener left out"),
                );
                continue;
            }
        };
        out.report.if_set(
            &lp,
            "allowedRoutes",
            &l.allowed_routes,
            "routes of every namespace may attach",
        );
        gateway.listeners.push(GatewayListener {
            name: l.name.clone(),
            address: format!("0.0.0.0:{}", l.port),
            tls,
            ..Default::default()
        });
        listener_hosts.push((l.name.clone(), l.hostname.clone()));
    }
    out.gateway = Some(ConvertedGateway {
        object: object.reference(),
        gateway,
        credentials: BTreeMap::new(),
        listener_hosts,
        host_settings: settings,
        istio: false,
    });
    Ok(())
}

/// An HTTPS listener's certificate, from its first `certificateRefs`
/// Secret, or `None` when it cannot be served (reported).
fn listener_tls(
    object: &Object,
    l: &KubeListener,
    lp: &P,
    report: &mut Report,
) -> Option<(HostTls, String)> {
    let tp = lp.f("tls");
    let Some(t) = &l.tls else {
        report.unsupported(
            lp,
            "an HTTPS listener needs `tls.certificateRefs`; listener left out",
        );
        return None;
    };
    if t.mode.as_deref().is_some_and(|m| m != "Terminate") {
        report.unsupported(
            &tp.f("mode"),
            format!(
                "{:?}: the gateway terminates TLS; listener left out",
                t.mode.as_deref().unwrap_or_default()
            ),
        );
        return None;
    }
    report.if_set(
        &tp,
        "options",
        &t.options,
        "the gateway's TLS has no options",
    );
    report.if_set(
        &tp,
        "frontendValidation",
        &t.frontend_validation,
        "client certificates are configured on the gateway section's hosts (`client_ca_file`)",
    );
    let Some(first) = t.certificate_refs.first() else {
        report.unsupported(&tp, "no `certificateRefs`; listener left out");
        return None;
    };
    for j in 1..t.certificate_refs.len() {
        report.unsupported(
            &tp.i("certificateRefs", j),
            "one certificate per host: the first reference is served",
        );
    }
    let rp = tp.i("certificateRefs", 0);
    let kind = first.kind.as_deref().unwrap_or("Secret");
    let group = first.group.as_deref().unwrap_or("");
    if kind != "Secret" || !(group.is_empty() || group == "core") {
        report.unsupported(
            &rp,
            format!("{group}/{kind}: only Secrets are read; listener left out"),
        );
        return None;
    }
    let ns = first.namespace.as_deref().unwrap_or(&object.namespace);
    let secret = format!("{ns}/{}", first.name);
    Some((
        secret_files(DEFAULT_CREDENTIALS_DIR, &secret, false),
        secret,
    ))
}

// === impl HostSettings ===

impl HostSettings {
    /// How well `pattern` matches `host`, higher is better: exact, then the
    /// longest wildcard suffix, then `*`; `None` when it does not match.
    fn rank(&self, host: &str) -> Option<usize> {
        if self.pattern == host {
            return Some(usize::MAX);
        }
        if self.pattern == "*" {
            return Some(1);
        }
        let suffix = self.pattern.strip_prefix('*')?;
        host.ends_with(suffix).then_some(1 + suffix.len())
    }
}

// === impl ConvertedGateway ===

impl ConvertedGateway {
    /// Reads the Secrets of TLS hosts from `<dir>/<namespace>/<name>/`
    /// instead of [`DEFAULT_CREDENTIALS_DIR`].
    pub fn use_credentials_dir(&mut self, dir: &str) {
        for host in &mut self.gateway.hosts {
            let (Some(secret), Some(tls)) = (self.credentials.get(&host.hostname), &mut host.tls)
            else {
                continue;
            };
            let client_ca = tls.client_ca_file.ends_with("/ca.crt")
                && tls.client_ca_file.starts_with(DEFAULT_CREDENTIALS_DIR);
            let files = secret_files(dir, secret, client_ca);
            tls.cert_file = files.cert_file;
            tls.key_file = files.key_file;
            if client_ca {
                tls.client_ca_file = files.client_ca_file;
            }
        }
    }

    /// The hosts a route's `host` stands for on this gateway: itself, or
    /// for `*`, every host the servers name; none when no server of an
    /// Istio Gateway accepts it.
    fn hosts_for(&self, host: &str) -> Vec<String> {
        if !self.istio {
            return vec![host.to_string()];
        }
        if host == "*" {
            let mut named: Vec<String> = self
                .host_settings
                .iter()
                .map(|s| s.pattern.clone())
                .filter(|p| p != "*")
                .collect();
            named.sort();
            named.dedup();
            return named;
        }
        let accepted = self.host_settings.iter().any(|s| s.rank(host).is_some());
        if accepted {
            vec![host.to_string()]
        } else {
            Vec::new()
        }
    }

    /// A new host entry for `hostname`: the certificate of the best
    /// matching TLS server, and a redirect if a plain server asks for one.
    fn new_host(&mut self, hostname: String) -> GatewayHost {
        let best = self
            .host_settings
            .iter()
            .filter(|s| s.tls.is_some())
            .filter_map(|s| Some((s.rank(&hostname)?, s)))
            .max_by_key(|(rank, _)| *rank)
            .map(|(_, s)| s);
        let tls = best.and_then(|s| s.tls.clone());
        if let Some(secret) = best.and_then(|s| s.secret.clone()) {
            self.credentials.insert(hostname.clone(), secret);
        }
        let https_redirect = tls.is_some()
            && self
                .host_settings
                .iter()
                .any(|s| s.https_redirect && s.rank(&hostname).is_some());
        GatewayHost {
            hostname,
            tls,
            https_redirect,
            ..Default::default()
        }
    }
}

/// Adds the hosts `attach` claims to the gateway it names; `report` (the
/// route's) says why when it cannot.
pub(crate) fn attach(gateways: &mut [ConvertedGateway], a: &GatewayAttach, report: &mut Report) {
    let Some(g) = gateways.iter_mut().find(|g| {
        g.object.namespace == a.namespace && g.object.name == a.gateway && g.istio == a.istio
    }) else {
        report.unsupported(
            &a.path,
            format!(
                "Gateway {}/{} is not among the objects: its hosts are not produced",
                a.namespace, a.gateway
            ),
        );
        return;
    };
    let mut hostnames = a.hostnames.clone();
    if hostnames.is_empty() {
        hostnames = g
            .listener_hosts
            .iter()
            .filter(|(name, _)| a.section.as_ref().is_none_or(|s| s == name))
            .filter_map(|(_, h)| h.clone())
            .collect();
    }
    if hostnames.is_empty() {
        report.unsupported(
            &a.path,
            "neither the route nor its listener names a hostname: the gateway serves named hosts",
        );
        return;
    }
    for written in hostnames {
        let written = written.to_ascii_lowercase();
        let hosts = g.hosts_for(&written);
        if hosts.is_empty() {
            report.unsupported(
                &a.path,
                format!(
                    "host {written:?}: no server of Gateway {}/{} accepts it; not served there",
                    a.namespace, a.gateway
                ),
            );
        }
        for h in hosts {
            if !g.gateway.hosts.iter().any(|x| x.hostname == h) {
                let host = g.new_host(h.clone());
                g.gateway.hosts.push(host);
            }
            if let Some(host) = g.gateway.hosts.iter_mut().find(|x| x.hostname == h) {
                host.routes.push(a.route.clone());
            }
        }
    }
}
