//! Gateway API `HTTPRoute` and `GRPCRoute` → Sane [`Route`]s.
//!
//! A route whose `parentRef` is a Service (GAMMA, the Gateway API inside the
//! mesh) directs that service's traffic, like a VirtualService. One whose
//! parent is a Gateway (ingress) gets a service of its own, `<name>-gw`
//! (port 80, no endpoints), whose Sane route holds the rules (weights,
//! filters, timeouts), and each of its hostnames becomes a host of that
//! Gateway's `sane-proxy gateway` configuration ([`super::ingress`]) sending
//! the route's matches to that service: the gateway hands requests to the
//! outbound stack, where the route applies.
//!
//! Gateway API semantics are kept: `PathPrefix` matches whole path segments
//! (as Sane's `prefix`); a rule without matches matches every request;
//! `backendRefs` weights default to 1 and weight 0 gets no traffic; there
//! are no retries unless asked for.

use super::common::{duration_ms, regex_escape, relative, resolve_host, sane_name, Report, P};
use super::error::IstioError;
use super::object::Object;
use super::{Context, Output};
use crate::resource::Resource;
use sane_xds_proto::{
    GatewayRoute, HeaderMatch, HeaderOps, MatchKind, MirrorPolicy, PathMatch, QueryParamMatch,
    Redirect, RetryPolicy, Rewrite, Route, RouteMatch, RouteRule, WeightedDestination,
};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct RouteSpec<R> {
    parent_refs: Vec<ParentRef>,
    hostnames: Vec<String>,
    rules: Vec<R>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct ParentRef {
    group: Option<String>,
    kind: Option<String>,
    namespace: Option<String>,
    name: String,
    section_name: Option<String>,
    port: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct HttpRule {
    name: Option<String>,
    matches: Vec<HttpMatch>,
    filters: Vec<Filter>,
    backend_refs: Vec<BackendRef>,
    timeouts: Option<Timeouts>,
    retry: Option<Retry>,
    session_persistence: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct GrpcRule {
    name: Option<String>,
    matches: Vec<GrpcMatch>,
    filters: Vec<Filter>,
    backend_refs: Vec<BackendRef>,
    session_persistence: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct HttpMatch {
    path: Option<PathSpec>,
    headers: Vec<HeaderSpec>,
    query_params: Vec<HeaderSpec>,
    method: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct GrpcMatch {
    method: Option<GrpcMethod>,
    headers: Vec<HeaderSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct GrpcMethod {
    #[serde(rename = "type")]
    kind: Option<String>,
    service: Option<String>,
    method: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct PathSpec {
    #[serde(rename = "type")]
    kind: Option<String>,
    value: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct HeaderSpec {
    #[serde(rename = "type")]
    kind: Option<String>,
    name: String,
    value: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct Filter {
    #[serde(rename = "type")]
    kind: String,
    request_header_modifier: Option<HeaderModifier>,
    response_header_modifier: Option<HeaderModifier>,
    request_mirror: Option<Mirror>,
    request_redirect: Option<RequestRedirect>,
    #[serde(rename = "urlRewrite")]
    url_rewrite: Option<UrlRewrite>,
    cors: Option<Value>,
    extension_ref: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct RequestRedirect {
    scheme: Option<String>,
    hostname: Option<String>,
    path: Option<PathModifier>,
    port: Option<u32>,
    status_code: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct UrlRewrite {
    hostname: Option<String>,
    path: Option<PathModifier>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct PathModifier {
    #[serde(rename = "type")]
    kind: String,
    replace_full_path: Option<String>,
    replace_prefix_match: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct HeaderModifier {
    set: Vec<NameValue>,
    add: Vec<NameValue>,
    remove: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct NameValue {
    name: String,
    value: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct Mirror {
    backend_ref: BackendRef,
    percent: Option<f64>,
    fraction: Option<Fraction>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Fraction {
    numerator: f64,
    denominator: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct BackendRef {
    group: Option<String>,
    kind: Option<String>,
    name: String,
    namespace: Option<String>,
    port: Option<u32>,
    weight: Option<u32>,
    filters: Vec<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct Timeouts {
    request: Option<String>,
    backend_request: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Retry {
    codes: Vec<u32>,
    attempts: Option<u32>,
    backoff: Option<String>,
}

/// Converts an HTTPRoute.
pub(crate) fn http_route(
    object: &Object,
    ctx: &Context,
    out: &mut Output,
) -> Result<(), IstioError> {
    let spec: RouteSpec<HttpRule> = object.spec()?;
    let root = P::spec();
    let mut rules = Vec::new();
    for (i, r) in spec.rules.iter().enumerate() {
        let p = root.i("rules", i);
        let report = &mut out.report;
        let _ = &r.name;
        report.if_set(
            &p,
            "sessionPersistence",
            &r.session_persistence,
            "Sane has no session persistence",
        );
        let mut matches = Vec::new();
        for (j, m) in r.matches.iter().enumerate() {
            let mp = p.i("matches", j);
            let mut rm = RouteMatch {
                method: m.method.clone().unwrap_or_default(),
                ..Default::default()
            };
            for (k, q) in m.query_params.iter().enumerate() {
                let kind = match q.kind.as_deref().unwrap_or("Exact") {
                    "Exact" => MatchKind::Exact,
                    "RegularExpression" => MatchKind::Regex,
                    other => {
                        return Err(malformed(object, &mp.i("queryParams", k).f("type"), other))
                    }
                };
                rm.query_params.push(QueryParamMatch {
                    name: q.name.clone(),
                    kind: kind.into(),
                    value: q.value.clone(),
                });
            }
            if let Some(path) = &m.path {
                let value = path.value.clone().unwrap_or_else(|| "/".into());
                rm.path = match path.kind.as_deref().unwrap_or("PathPrefix") {
                    "PathPrefix" if value == "/" => None,
                    "PathPrefix" => Some(PathMatch {
                        kind: MatchKind::Prefix.into(),
                        value,
                    }),
                    "Exact" => Some(PathMatch {
                        kind: MatchKind::Exact.into(),
                        value,
                    }),
                    "RegularExpression" => Some(PathMatch {
                        kind: MatchKind::Regex.into(),
                        value,
                    }),
                    other => return Err(malformed(object, &mp.f("path").f("type"), other)),
                };
            }
            rm.headers = headers(object, &m.headers, &mp)?;
            matches.push(rm);
        }
        if !r.matches.is_empty() && matches.is_empty() {
            report.unsupported(&p, "no match is left, so the rule is left out");
            continue;
        }
        // The prefix a ReplacePrefixMatch replaces: the one every match
        // alternative tests (`/` without matches).
        let prefixes: Vec<Option<&str>> = if r.matches.is_empty() {
            vec![Some("/")]
        } else {
            r.matches
                .iter()
                .map(|m| match &m.path {
                    None => Some("/"),
                    Some(p) if p.kind.as_deref().unwrap_or("PathPrefix") == "PathPrefix" => {
                        Some(p.value.as_deref().unwrap_or("/"))
                    }
                    Some(_) => None,
                })
                .collect()
        };
        let prefix = prefixes
            .iter()
            .all(|x| *x == prefixes[0])
            .then_some(prefixes[0])
            .flatten();
        let Some(mut rule) =
            backends(object, ctx, &r.filters, &r.backend_refs, &p, prefix, report)?
        else {
            continue;
        };
        rule.matches = matches;
        if let Some(t) = &r.timeouts {
            let tp = p.f("timeouts");
            let request = t
                .request
                .as_ref()
                .map(|v| duration_ms(object, &tp.f("request"), v))
                .transpose()?;
            let backend = t
                .backend_request
                .as_ref()
                .map(|v| duration_ms(object, &tp.f("backendRequest"), v))
                .transpose()?;
            rule.timeout_ms = request.or(backend).unwrap_or(0);
            if let (Some(_), Some(b)) = (request, backend) {
                rule.retry = Some(RetryPolicy {
                    attempts: Some(0),
                    per_try_timeout_ms: b.min(rule.timeout_ms),
                    ..Default::default()
                });
            }
        }
        if let Some(retry) = &r.retry {
            let rp = p.f("retry");
            let mut policy = rule.retry.take().unwrap_or_default();
            policy.attempts = Some(
                retry
                    .attempts
                    .unwrap_or(1)
                    .min(sane_xds_proto::MAX_RETRY_ATTEMPTS),
            );
            policy.status_codes = retry.codes.clone();
            if retry.codes.is_empty() {
                policy.retry_on = vec!["connect-failure".into(), "refused-stream".into()];
            }
            if let Some(b) = &retry.backoff {
                policy.base_interval_ms = duration_ms(object, &rp.f("backoff"), b)?;
            }
            rule.retry = Some(policy);
        }
        rules.push(rule);
    }
    emit(object, ctx, &spec.parent_refs, &spec.hostnames, rules, out)
}

/// Converts a GRPCRoute: a method match is a match on the request path
/// `/<service>/<method>`.
pub(crate) fn grpc_route(
    object: &Object,
    ctx: &Context,
    out: &mut Output,
) -> Result<(), IstioError> {
    let spec: RouteSpec<GrpcRule> = object.spec()?;
    let root = P::spec();
    let mut rules = Vec::new();
    for (i, r) in spec.rules.iter().enumerate() {
        let p = root.i("rules", i);
        let report = &mut out.report;
        let _ = &r.name;
        report.if_set(
            &p,
            "sessionPersistence",
            &r.session_persistence,
            "Sane has no session persistence",
        );
        let mut matches = Vec::new();
        for (j, m) in r.matches.iter().enumerate() {
            let mp = p.i("matches", j);
            let mut rm = RouteMatch::default();
            if let Some(method) = &m.method {
                let regex = method.kind.as_deref() == Some("RegularExpression");
                let part = |v: &Option<String>| match (v, regex) {
                    (Some(v), false) => regex_escape(v),
                    (Some(v), true) => v.clone(),
                    (None, _) => "[^/]+".to_string(),
                };
                rm.path = Some(match (&method.service, &method.method, regex) {
                    (Some(s), Some(m), false) => PathMatch {
                        kind: MatchKind::Exact.into(),
                        value: format!("/{s}/{m}"),
                    },
                    (Some(s), None, false) => PathMatch {
                        kind: MatchKind::Prefix.into(),
                        value: format!("/{s}"),
                    },
                    _ => PathMatch {
                        kind: MatchKind::Regex.into(),
                        value: format!("/{}/{}", part(&method.service), part(&method.method)),
                    },
                });
            }
            rm.headers = headers(object, &m.headers, &mp)?;
            matches.push(rm);
        }
        let Some(mut rule) = backends(object, ctx, &r.filters, &r.backend_refs, &p, None, report)?
        else {
            continue;
        };
        rule.matches = matches;
        rules.push(rule);
    }
    emit(object, ctx, &spec.parent_refs, &spec.hostnames, rules, out)
}

fn malformed(object: &Object, p: &P, value: &str) -> IstioError {
    IstioError::Malformed {
        object: Box::new(object.reference()),
        message: format!("{}: {value:?} is not a valid value", p.as_str()),
    }
}

fn headers(object: &Object, list: &[HeaderSpec], mp: &P) -> Result<Vec<HeaderMatch>, IstioError> {
    let mut out = Vec::new();
    for (k, h) in list.iter().enumerate() {
        let kind = match h.kind.as_deref().unwrap_or("Exact") {
            "Exact" => MatchKind::Exact,
            "RegularExpression" => MatchKind::Regex,
            other => return Err(malformed(object, &mp.i("headers", k).f("type"), other)),
        };
        out.push(HeaderMatch {
            name: h.name.to_ascii_lowercase(),
            kind: kind.into(),
            value: h.value.clone(),
            invert: false,
        });
    }
    Ok(out)
}

/// A rule's filters and backends; `None` (reported) when it has no
/// backend Sane can send to.
fn backends(
    object: &Object,
    ctx: &Context,
    filters: &[Filter],
    refs: &[BackendRef],
    p: &P,
    prefix: Option<&str>,
    report: &mut Report,
) -> Result<Option<RouteRule>, IstioError> {
    let mut rule = RouteRule::default();
    for (k, f) in filters.iter().enumerate() {
        let fp = p.i("filters", k);
        match f.kind.as_str() {
            "RequestHeaderModifier" => {
                rule.request_headers = f.request_header_modifier.as_ref().map(ops)
            }
            "ResponseHeaderModifier" => {
                rule.response_headers = f.response_header_modifier.as_ref().map(ops)
            }
            "RequestMirror" => {
                let Some(m) = &f.request_mirror else { continue };
                let b = &m.backend_ref;
                let service =
                    backend_service(object, ctx, b, &fp.f("requestMirror").f("backendRef"))?;
                let percent = m.percent.or(m
                    .fraction
                    .as_ref()
                    .map(|f| 100.0 * f.numerator / f.denominator.unwrap_or(100.0)));
                rule.mirror = Some(MirrorPolicy {
                    service: relative(&service, &object.namespace),
                    port: b.port.unwrap_or(0),
                    percent,
                    max_body_bytes: 0,
                });
            }
            "RequestRedirect" => {
                let Some(r) = &f.request_redirect else {
                    continue;
                };
                let rp = fp.f("requestRedirect");
                let Some((path, replace_prefix, with_prefix)) =
                    path_modifier(object, r.path.as_ref(), prefix, &rp.f("path"), report)?
                else {
                    return Ok(None);
                };
                rule.redirect = Some(Redirect {
                    scheme: r.scheme.clone().unwrap_or_default(),
                    host: r.hostname.clone().unwrap_or_default(),
                    port: r.port.unwrap_or(0),
                    path,
                    replace_prefix,
                    with_prefix,
                    status_code: r.status_code.unwrap_or(302),
                });
            }
            "URLRewrite" => {
                let Some(r) = &f.url_rewrite else { continue };
                let rp = fp.f("urlRewrite");
                let Some((path, replace_prefix, with_prefix)) =
                    path_modifier(object, r.path.as_ref(), prefix, &rp.f("path"), report)?
                else {
                    return Ok(None);
                };
                rule.rewrite = Some(Rewrite {
                    path,
                    replace_prefix,
                    with_prefix,
                    authority: r.hostname.clone().unwrap_or_default(),
                });
            }
            other => report.unsupported(&fp, format!("{other}: not a filter Sane applies")),
        }
        let _ = (
            &f.request_redirect,
            &f.url_rewrite,
            &f.cors,
            &f.extension_ref,
        );
    }
    if rule.redirect.is_some() {
        // A redirect sends nothing to the backends.
        return Ok(Some(rule));
    }
    for (k, b) in refs.iter().enumerate() {
        let bp = p.i("backendRefs", k);
        if !b.filters.is_empty() {
            report.unsupported(
                &bp.f("filters"),
                "per-backend filters (Sane applies filters per rule)",
            );
        }
        if b.weight == Some(0) {
            report.note(&bp.f("weight"), "0: this backend gets no traffic");
            continue;
        }
        let service = backend_service(object, ctx, b, &bp)?;
        rule.destinations.push(WeightedDestination {
            service: relative(&service, &object.namespace),
            port: b.port.unwrap_or(0),
            weight: b.weight.unwrap_or(1),
            ..Default::default()
        });
    }
    if rule.destinations.is_empty() {
        report.unsupported(
            &p.f("backendRefs"),
            "no backend gets traffic, so the rule is left out",
        );
        return Ok(None);
    }
    Ok(Some(rule))
}

/// A filter's `path`: (whole path, prefix replaced, its replacement);
/// `None` (reported) when `ReplacePrefixMatch` has no single matched prefix.
fn path_modifier(
    object: &Object,
    m: Option<&PathModifier>,
    prefix: Option<&str>,
    p: &P,
    report: &mut Report,
) -> Result<Option<(String, String, String)>, IstioError> {
    let Some(m) = m else {
        return Ok(Some(Default::default()));
    };
    match m.kind.as_str() {
        "ReplaceFullPath" => Ok(Some((
            m.replace_full_path.clone().unwrap_or_default(),
            String::new(),
            String::new(),
        ))),
        "ReplacePrefixMatch" => match prefix {
            Some(prefix) => Ok(Some((
                String::new(),
                prefix.to_string(),
                m.replace_prefix_match.clone().unwrap_or_default(),
            ))),
            None => {
                report.unsupported(
                    &p.f("replacePrefixMatch"),
                    "the rule's matches do not share one PathPrefix; the rule is left out",
                );
                Ok(None)
            }
        },
        other => Err(malformed(object, &p.f("type"), other)),
    }
}

fn backend_service(
    object: &Object,
    ctx: &Context,
    b: &BackendRef,
    p: &P,
) -> Result<String, IstioError> {
    let kind = b.kind.as_deref().unwrap_or("Service");
    let group = b.group.as_deref().unwrap_or("");
    if kind != "Service" || !(group.is_empty() || group == "core") {
        return Err(IstioError::Malformed {
            object: Box::new(object.reference()),
            message: format!(
                "{}: backends of kind {group}/{kind} are not supported (Service only)",
                p.as_str()
            ),
        });
    }
    let host = match &b.namespace {
        Some(ns) => format!("{}.{ns}.svc.cluster.local", b.name),
        None => b.name.clone(),
    };
    resolve_host(object, &p.f("name"), &host, ctx)
}

fn ops(m: &HeaderModifier) -> HeaderOps {
    HeaderOps {
        set: m
            .set
            .iter()
            .map(|nv| (nv.name.to_ascii_lowercase(), nv.value.clone()))
            .collect(),
        add: m
            .add
            .iter()
            .map(|nv| (nv.name.to_ascii_lowercase(), nv.value.clone()))
            .collect(),
        remove: m.remove.iter().map(|h| h.to_ascii_lowercase()).collect(),
    }
}

/// One Sane route per Service parent.
fn emit(
    object: &Object,
    ctx: &Context,
    parents: &[ParentRef],
    hostnames: &[String],
    rules: Vec<RouteRule>,
    out: &mut Output,
) -> Result<(), IstioError> {
    let root = P::spec();
    let tag = object.kind.name().to_ascii_lowercase();
    let mut services = Vec::new();
    let mut gateways = Vec::new();
    for (i, parent) in parents.iter().enumerate() {
        let pp = root.i("parentRefs", i);
        let kind = parent.kind.as_deref().unwrap_or("Gateway");
        let group = parent
            .group
            .as_deref()
            .unwrap_or("gateway.networking.k8s.io");
        let _ = &parent.section_name;
        if kind == "Service" && (group.is_empty() || group == "core") {
            let host = match &parent.namespace {
                Some(ns) => format!("{}.{ns}.svc.cluster.local", parent.name),
                None => parent.name.clone(),
            };
            services.push(resolve_host(object, &pp.f("name"), &host, ctx)?);
            if parent.port.is_some() {
                out.report.note(
                    &pp.f("port"),
                    "Sane routes apply to every HTTP port of the service",
                );
            }
        } else if kind == "Gateway" && group == "gateway.networking.k8s.io" {
            gateways.push((i, parent));
        } else {
            out.report.unsupported(
                &pp,
                format!(
                    "{group}/{kind} {:?}: parents are Services (GAMMA) or Gateways",
                    parent.name
                ),
            );
        }
    }
    if !gateways.is_empty() && !rules.is_empty() {
        ingress(object, &gateways, hostnames, &rules, out);
    }
    if !services.is_empty() && !hostnames.is_empty() {
        out.report.note(
            &root.f("hostnames"),
            "ignored for Service parents, as GAMMA specifies",
        );
    }
    if rules.is_empty() {
        return Ok(());
    }
    let several = services.len() > 1;
    for service in services {
        let suffix = several.then(|| service.split('.').next().unwrap_or(""));
        out.resources.push(Resource::Route(Route {
            name: format!("{}.{}", sane_name(&object.name, suffix), tag),
            namespace: object.namespace.clone(),
            service: relative(&service, &object.namespace),
            rules: rules.clone(),
        }));
    }
    Ok(())
}

/// A route on ingress Gateways: its own service and route, and a gateway
/// route per hostname (see the module docs).
fn ingress(
    object: &Object,
    gateways: &[(usize, &ParentRef)],
    hostnames: &[String],
    rules: &[RouteRule],
    out: &mut Output,
) {
    let (service, matches) =
        super::ingress::gateway_backend(object, "-gw", "httproute-gw", rules, out);
    for (i, parent) in gateways {
        out.gateway_routes.push(super::ingress::GatewayAttach {
            path: P::spec().i("parentRefs", *i),
            namespace: parent
                .namespace
                .clone()
                .unwrap_or_else(|| object.namespace.clone()),
            gateway: parent.name.clone(),
            istio: false,
            section: parent.section_name.clone(),
            hostnames: hostnames.to_vec(),
            route: GatewayRoute {
                matches: matches.clone(),
                service: format!("{service}.{}", object.namespace),
                port: 80,
            },
        });
    }
}
