//! `AuthorizationPolicy` → Sane [`AuthorizationPolicy`]s (one per selected
//! service), and `PeerAuthentication` → the Sane [`PeerAuthentication`] the
//! control plane delivers to the sidecars, which resolve their own inbound
//! mode from it ([`tls_for`] runs the same resolution for `sanectl convert`).
//!
//! An authorization condition Sane cannot test is handled as Istio handles
//! conditions a proxy cannot enforce: in an `ALLOW` (or `AUDIT`) policy the
//! whole rule is left out, so it allows nothing more than written; in a
//! `DENY` policy only the condition is left out, so the rule denies more.
//! Either way the field is reported.

use super::common::{sane_name, Report, P};
use super::error::IstioError;
use super::object::Object;
use super::{Context, Output};
use crate::resource::Resource;
use sane_xds_proto::{
    AuthorizationPolicy, AuthzAction, AuthzCondition, AuthzOperation, AuthzRule, AuthzSource,
    Listener, PeerAuthentication, Service, TlsMode,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The namespace whose selector-less policies apply to the whole mesh.
pub const ROOT_NAMESPACE: &str = sane_xds_proto::MESH_ROOT_NAMESPACE;

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct AuthzSpec {
    selector: Option<Selector>,
    target_ref: Option<TargetRef>,
    target_refs: Vec<TargetRef>,
    action: Option<String>,
    provider: Option<Value>,
    rules: Vec<Rule>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct Selector {
    match_labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct TargetRef {
    group: String,
    kind: String,
    name: String,
    namespace: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Rule {
    from: Vec<From>,
    to: Vec<To>,
    when: Vec<Condition>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct From {
    source: Source,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct Source {
    principals: Vec<String>,
    not_principals: Vec<String>,
    request_principals: Vec<String>,
    not_request_principals: Vec<String>,
    namespaces: Vec<String>,
    not_namespaces: Vec<String>,
    service_accounts: Vec<String>,
    not_service_accounts: Vec<String>,
    ip_blocks: Vec<String>,
    not_ip_blocks: Vec<String>,
    remote_ip_blocks: Vec<String>,
    not_remote_ip_blocks: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct To {
    operation: Operation,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct Operation {
    hosts: Vec<String>,
    not_hosts: Vec<String>,
    ports: Vec<String>,
    not_ports: Vec<String>,
    methods: Vec<String>,
    not_methods: Vec<String>,
    paths: Vec<String>,
    not_paths: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct Condition {
    key: String,
    values: Vec<String>,
    not_values: Vec<String>,
}

/// Converts an AuthorizationPolicy: one Sane policy per service it selects.
pub(crate) fn authorization_policy(
    object: &Object,
    ctx: &Context,
    out: &mut Output,
) -> Result<(), IstioError> {
    let spec: AuthzSpec = object.spec()?;
    let root = P::spec();
    let report = &mut out.report;
    let action = match spec.action.as_deref().unwrap_or("ALLOW") {
        "ALLOW" => AuthzAction::Allow,
        "DENY" => AuthzAction::Deny,
        "AUDIT" => AuthzAction::Audit,
        other => {
            report.unsupported(
                &root.f("action"),
                format!("{other:?}: Sane has no external authorizer; the policy is NOT enforced"),
            );
            return Ok(());
        }
    };
    report.if_set(
        &root,
        "provider",
        &spec.provider,
        "Sane has no external authorizer",
    );
    let mut rules = Vec::new();
    for (i, r) in spec.rules.iter().enumerate() {
        if let Some(rule) = rule(object, r, action, &root.i("rules", i), report)? {
            rules.push(rule);
        }
    }
    let targets = targets(object, &spec, ctx, report);
    if targets.is_empty() {
        report.unsupported(
            &root,
            "selects no known service, so nothing is enforced (Sane policies target services; \
             declare the services and their endpoints' labels first)",
        );
        return Ok(());
    }
    let several = targets.len() > 1 || spec.selector.is_none();
    for s in targets {
        out.resources.push(Resource::Authz(AuthorizationPolicy {
            name: sane_name(&object.name, several.then_some(s.name.as_str())),
            namespace: s.namespace().to_string(),
            service: s.name.clone(),
            action: action.into(),
            rules: rules.clone(),
            dry_run: false,
            // The selector already chose the services above.
            selector: Default::default(),
        }));
    }
    Ok(())
}

/// The services a policy applies to: by `selector` (every endpoint of the
/// service carries the labels), `targetRefs` of kind Service, or every
/// service of the namespace (of the mesh, in the root namespace).
fn targets(object: &Object, spec: &AuthzSpec, ctx: &Context, report: &mut Report) -> Vec<Service> {
    let root = P::spec();
    let in_scope =
        |s: &&Service| object.namespace == ROOT_NAMESPACE || s.namespace() == object.namespace;
    let refs: Vec<&TargetRef> = spec.target_ref.iter().chain(&spec.target_refs).collect();
    if !refs.is_empty() {
        let mut out = Vec::new();
        for (i, r) in refs.iter().enumerate() {
            let ns = if r.namespace.is_empty() {
                &object.namespace
            } else {
                &r.namespace
            };
            let found = ctx
                .services
                .iter()
                .find(|s| s.name == r.name && s.namespace() == ns);
            match (r.kind.as_str(), found) {
                ("Service", Some(s)) => out.push(s.clone()),
                _ => report.unsupported(
                    &root.i("targetRefs", i),
                    format!(
                        "{} {:?}: only known Services can be targeted",
                        r.kind, r.name
                    ),
                ),
            }
        }
        return out;
    }
    let Some(selector) = &spec.selector else {
        let all: Vec<Service> = ctx.services.iter().filter(in_scope).cloned().collect();
        report.note(
            &root,
            format!(
                "no selector: applied to the {} service(s) of {} known now; re-apply after adding services",
                all.len(),
                if object.namespace == ROOT_NAMESPACE { "the mesh".to_string() } else { format!("namespace {}", object.namespace) }
            ),
        );
        return all;
    };
    let mut out = Vec::new();
    for s in ctx.services.iter().filter(in_scope) {
        let eps: Vec<_> = ctx
            .endpoints
            .iter()
            .filter(|e| {
                e.service == s.name
                    && sane_xds_proto::namespace_or_default(&e.namespace) == s.namespace()
            })
            .collect();
        let matching = eps
            .iter()
            .filter(|e| {
                selector
                    .match_labels
                    .iter()
                    .all(|(k, v)| e.labels.get(k) == Some(v))
            })
            .count();
        if matching == 0 {
            continue;
        }
        if matching < eps.len() {
            report.unsupported(
                &root.f("selector"),
                format!(
                    "selects {matching} of the {} endpoints of service {}; Sane policies apply to \
                     every workload of a service, so it is applied to all of them",
                    eps.len(),
                    s.key()
                ),
            );
        }
        out.push(s.clone());
    }
    out
}

fn rule(
    object: &Object,
    r: &Rule,
    action: AuthzAction,
    p: &P,
    report: &mut Report,
) -> Result<Option<AuthzRule>, IstioError> {
    let mut bad: Vec<(P, String)> = Vec::new();
    let mut out = AuthzRule::default();
    for (i, f) in r.from.iter().enumerate() {
        let sp = p.i("from", i).f("source");
        let s = &f.source;
        let mut src = AuthzSource {
            principals: s.principals.clone(),
            not_principals: s.not_principals.clone(),
            namespaces: s.namespaces.clone(),
        };
        for (field, list, why) in [
            (
                "requestPrincipals",
                &s.request_principals,
                "Sane does not validate JWTs",
            ),
            (
                "notRequestPrincipals",
                &s.not_request_principals,
                "Sane does not validate JWTs",
            ),
            (
                "notNamespaces",
                &s.not_namespaces,
                "Sane has no negated namespaces",
            ),
            (
                "notServiceAccounts",
                &s.not_service_accounts,
                "Sane has no negated service accounts",
            ),
            ("ipBlocks", &s.ip_blocks, "Sane does not match caller IPs"),
            (
                "notIpBlocks",
                &s.not_ip_blocks,
                "Sane does not match caller IPs",
            ),
            (
                "remoteIpBlocks",
                &s.remote_ip_blocks,
                "Sane does not match caller IPs",
            ),
            (
                "notRemoteIpBlocks",
                &s.not_remote_ip_blocks,
                "Sane does not match caller IPs",
            ),
        ] {
            if !list.is_empty() {
                bad.push((sp.f(field), why.to_string()));
            }
        }
        if !s.service_accounts.is_empty() {
            if src.principals.is_empty() {
                src.principals = s
                    .service_accounts
                    .iter()
                    .map(|sa| match sa.split_once('/') {
                        Some((ns, sa)) => format!("*/ns/{ns}/sa/{sa}"),
                        None => format!("*/ns/{}/sa/{sa}", object.namespace),
                    })
                    .collect();
            } else {
                bad.push((sp.f("serviceAccounts"), "together with principals".into()));
            }
        }
        out.from.push(src);
    }
    for (i, t) in r.to.iter().enumerate() {
        let op_path = p.i("to", i).f("operation");
        let o = &t.operation;
        let mut op = AuthzOperation {
            methods: o.methods.clone(),
            paths: o.paths.clone(),
            not_paths: o.not_paths.clone(),
            ports: Vec::new(),
        };
        for (k, port) in o.ports.iter().enumerate() {
            op.ports
                .push(port.parse().map_err(|_| IstioError::Malformed {
                    object: Box::new(object.reference()),
                    message: format!("{}: {port:?} is not a port", op_path.i("ports", k).as_str()),
                })?);
        }
        for (field, list, why) in [
            (
                "hosts",
                &o.hosts,
                "Sane policies do not match the Host header",
            ),
            (
                "notHosts",
                &o.not_hosts,
                "Sane policies do not match the Host header",
            ),
            ("notPorts", &o.not_ports, "Sane has no negated ports"),
            ("notMethods", &o.not_methods, "Sane has no negated methods"),
        ] {
            if !list.is_empty() {
                bad.push((op_path.f(field), why.to_string()));
            }
        }
        for (k, path) in o.paths.iter().chain(&o.not_paths).enumerate() {
            if path.contains('{') {
                bad.push((
                    op_path.i("paths", k),
                    format!("{path:?}: Sane has no path templates"),
                ));
            }
        }
        out.to.push(op);
    }
    for (i, c) in r.when.iter().enumerate() {
        let cp = p.i("when", i);
        if !c.not_values.is_empty() {
            bad.push((
                cp.f("notValues"),
                "Sane conditions have no negated values".into(),
            ));
        }
        if let Some(h) = c
            .key
            .strip_prefix("request.headers[")
            .and_then(|k| k.strip_suffix(']'))
        {
            out.when.push(AuthzCondition {
                header: h.to_ascii_lowercase(),
                values: c.values.clone(),
            });
            continue;
        }
        let folded = match c.key.as_str() {
            "source.principal" => fold(&mut out.from, |s| &mut s.principals, &c.values),
            "source.namespace" => fold(&mut out.from, |s| &mut s.namespaces, &c.values),
            "destination.port" => {
                let ports: Result<Vec<u32>, _> = c.values.iter().map(|v| v.parse()).collect();
                match ports {
                    Ok(ports) => fold(&mut out.to, |o| &mut o.ports, &ports),
                    Err(_) => false,
                }
            }
            _ => false,
        };
        if !folded {
            bad.push((
                cp.f("key"),
                format!("{:?}: Sane cannot test this condition here", c.key),
            ));
        }
    }
    if bad.is_empty() {
        return Ok(Some(out));
    }
    let keep = action == AuthzAction::Deny;
    for (path, why) in bad {
        let consequence = if keep {
            "the condition is left out, so this DENY rule matches more requests"
        } else {
            "the rule is left out, so it allows nothing"
        };
        report.unsupported(&path, format!("{why}; {consequence}"));
    }
    // A DENY rule keeps its other conditions; the unsupported lists were
    // never copied into `out`.
    Ok(keep.then_some(out))
}

/// ANDs `values` into every entry's list: an empty list takes them; a list
/// already set cannot be intersected (returns false).
fn fold<T, V: Clone>(
    entries: &mut Vec<T>,
    field: impl Fn(&mut T) -> &mut Vec<V>,
    values: &[V],
) -> bool
where
    T: Default,
{
    if entries.is_empty() {
        entries.push(T::default());
    }
    if entries.iter_mut().any(|e| !field(e).is_empty()) {
        return false;
    }
    for e in entries.iter_mut() {
        *field(e) = values.to_vec();
    }
    true
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct PeerSpec {
    selector: Option<Selector>,
    mtls: Option<Mtls>,
    port_level_mtls: BTreeMap<String, Mtls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Mtls {
    mode: Option<String>,
}

/// The mutual TLS settings of one workload's inbound listener (what
/// `sanectl convert --tls-for` prints).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TlsSettings {
    /// The listener's mode; [`TlsMode::Default`] when no PeerAuthentication
    /// sets one (Sane's own default then holds: `strict` with an identity).
    pub mode: TlsMode,
    /// Per workload port.
    pub ports: BTreeMap<u32, TlsMode>,
}

fn mode(object: &Object, p: &P, m: &Mtls) -> Result<TlsMode, IstioError> {
    Ok(match m.mode.as_deref().unwrap_or("UNSET") {
        "UNSET" => TlsMode::Default,
        "DISABLE" => TlsMode::Disable,
        "PERMISSIVE" => TlsMode::Permissive,
        "STRICT" => TlsMode::Strict,
        other => {
            return Err(IstioError::Malformed {
                object: Box::new(object.reference()),
                message: format!(
                    "{}.mode: {other:?} is not UNSET, DISABLE, PERMISSIVE or STRICT",
                    p.as_str()
                ),
            })
        }
    })
}

/// Converts a PeerAuthentication into the Sane [`PeerAuthentication`] of the
/// same name and namespace, which the control plane sends to the sidecars
/// of its namespace (of every namespace from the root one); each sidecar
/// resolves its own mode ([`sane_xds_proto::resolve_peer_tls`]).
pub(crate) fn peer_authentication(object: &Object, out: &mut Output) -> Result<(), IstioError> {
    let spec: PeerSpec = object.spec()?;
    let root = P::spec();
    let m = spec
        .mtls
        .as_ref()
        .map(|m| mode(object, &root.f("mtls"), m))
        .transpose()?;
    let mut port_modes = BTreeMap::new();
    for (port, m) in &spec.port_level_mtls {
        let pp = root.f("portLevelMtls").k(port);
        let number: u32 = port
            .parse()
            .ok()
            .filter(|n| (1..=65535).contains(n))
            .ok_or_else(|| IstioError::Malformed {
                object: Box::new(object.reference()),
                message: format!("{}: {port:?} is not a port", pp.as_str()),
            })?;
        port_modes.insert(number, i32::from(mode(object, &pp, m)?));
    }
    let selector = spec.selector.map(|s| s.match_labels).unwrap_or_default();
    if !port_modes.is_empty() && selector.is_empty() {
        // As Istio: port-level settings need a workload selector.
        out.report.unsupported(
            &root.f("portLevelMtls"),
            "port-level settings apply only with a workload selector",
        );
        port_modes.clear();
    }
    out.resources.push(Resource::PeerAuthn(PeerAuthentication {
        name: object.name.clone(),
        namespace: object.namespace.clone(),
        selector,
        mode: m.unwrap_or(TlsMode::Default).into(),
        port_modes,
    }));
    Ok(())
}

/// The mutual TLS settings of a workload in `namespace` with `labels`: the
/// workload-level PeerAuthentication beats the namespace's, which beats the
/// mesh's (root namespace); `UNSET` inherits the next level. Port-level
/// settings come from the workload-level one. The resolution the sidecars
/// themselves run ([`sane_xds_proto::resolve_peer_tls`]).
pub fn tls_for(
    all: &[PeerAuthentication],
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> TlsSettings {
    let resolved = sane_xds_proto::resolve_peer_tls(all, namespace, labels);
    TlsSettings {
        mode: resolved.mode,
        ports: resolved.ports,
    }
}

// === impl TlsSettings ===

impl TlsSettings {
    /// Sets an inbound listener's modes (pinning them in a bootstrap, which
    /// then overrides what the control plane delivers); returns the ports
    /// that are not among its `workload_ports` (so were not applied).
    pub fn apply(&self, listener: &mut Listener) -> Vec<u32> {
        listener.tls_mode = self.mode.into();
        let mut missing = Vec::new();
        for (port, mode) in &self.ports {
            match listener.workload_ports.iter_mut().find(|w| w.port == *port) {
                Some(w) => w.tls_mode = (*mode).into(),
                None => missing.push(*port),
            }
        }
        missing
    }
}
