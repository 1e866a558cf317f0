//! `VirtualService` → one Sane [`Route`] per host.
//!
//! Istio's semantics are kept: `http` routes are tried in order and the
//! first match wins (a Sane route's rules are too); `match` alternatives are
//! ORed, conditions inside one ANDed; a destination `subset` addresses the
//! endpoints carrying the labels its DestinationRule gives it;
//! `retries.attempts` excludes the first try; an `http` route without
//! `retries` gets Istio's default (2 attempts on `connect-failure`,
//! `refused-stream`, `unavailable`, `cancelled` and 503).
//!
//! What cannot be expressed is reported by path. A match condition Sane
//! cannot test drops its whole alternative (it never matches, rather than
//! matching more than written); a rule left with no alternative, or one
//! Sane cannot answer (`directResponse`, `delegate`), is left out.
//! `redirect` answers with a redirect; `rewrite.uri` replaces the matched
//! `uri.prefix` (the whole path after an `exact` match), as Envoy does.
//!
//! Bound to Istio `Gateway`s (`gateways: [name]` or `[namespace/name]`), a
//! VirtualService is the ingress route of its `hosts` there, as an
//! HTTPRoute on a Gateway is ([`super::gateway_api`]): its rules go on a
//! service of its own, `<name>-vs-gw` (port 80, no endpoints), and each
//! host the Gateway's servers accept gets a gateway route to it
//! ([`super::ingress::bound_virtual_service`]). `mesh` in the list (or no list) also directs the
//! hosts' mesh services, as without gateways.

use super::common::{
    duration_ms, percent, present, regex_escape, relative, resolve_host, sane_name, Percent, P,
};
use super::destination_rule::Subsets;
use super::error::IstioError;
use super::object::Object;
use super::{Context, Output};
use crate::resource::Resource;
use sane_xds_proto::{
    FaultAbort, FaultDelay, FaultPolicy, HeaderMatch, HeaderOps, MatchKind, MirrorPolicy,
    PathMatch, QueryParamMatch, Redirect, RetryPolicy, Rewrite, Route, RouteMatch, RouteRule,
    WeightedDestination, RETRY_CONDITIONS,
};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct Spec {
    hosts: Vec<String>,
    gateways: Vec<String>,
    http: Vec<HttpRoute>,
    tls: Option<Value>,
    tcp: Vec<TcpRoute>,
    export_to: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct HttpRoute {
    name: Option<String>,
    #[serde(rename = "match")]
    matches: Vec<HttpMatch>,
    route: Vec<RouteDestination>,
    redirect: Option<HttpRedirect>,
    direct_response: Option<Value>,
    delegate: Option<Value>,
    rewrite: Option<HttpRewrite>,
    timeout: Option<String>,
    retries: Option<HttpRetry>,
    fault: Option<Fault>,
    mirror: Option<Destination>,
    mirrors: Vec<MirrorEntry>,
    mirror_percentage: Option<Percent>,
    mirror_percent: Option<u32>,
    #[serde(rename = "mirror_percent")]
    mirror_percent_snake: Option<u32>,
    cors_policy: Option<Value>,
    headers: Option<Headers>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct HttpRedirect {
    uri: Option<String>,
    authority: Option<String>,
    port: Option<u32>,
    derive_port: Option<String>,
    scheme: Option<String>,
    redirect_code: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct HttpRewrite {
    uri: Option<String>,
    authority: Option<String>,
    uri_regex_rewrite: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct StringMatch {
    pub(crate) exact: Option<String>,
    pub(crate) prefix: Option<String>,
    pub(crate) regex: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct HttpMatch {
    name: Option<String>,
    uri: Option<StringMatch>,
    scheme: Option<Value>,
    method: Option<StringMatch>,
    authority: Option<Value>,
    headers: BTreeMap<String, StringMatch>,
    port: Option<u32>,
    source_labels: BTreeMap<String, String>,
    gateways: Vec<String>,
    query_params: BTreeMap<String, StringMatch>,
    ignore_uri_case: bool,
    without_headers: BTreeMap<String, StringMatch>,
    source_namespace: Option<String>,
    stat_prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Destination {
    pub(crate) host: String,
    pub(crate) subset: Option<String>,
    pub(crate) port: Option<PortSelector>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct PortSelector {
    pub(crate) number: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct RouteDestination {
    destination: Destination,
    weight: Option<i64>,
    headers: Option<Headers>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct MirrorEntry {
    destination: Destination,
    percentage: Option<Percent>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Headers {
    request: Option<HeaderOperations>,
    response: Option<HeaderOperations>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct HeaderOperations {
    set: BTreeMap<String, String>,
    add: BTreeMap<String, String>,
    remove: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct HttpRetry {
    attempts: Option<u32>,
    per_try_timeout: Option<String>,
    retry_on: Option<String>,
    retry_remote_localities: Option<bool>,
    retry_ignore_previous_hosts: Option<bool>,
    backoff: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Fault {
    delay: Option<Delay>,
    abort: Option<Abort>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct Delay {
    fixed_delay: Option<String>,
    exponential_delay: Option<Value>,
    percentage: Option<Percent>,
    percent: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct Abort {
    http_status: Option<u32>,
    grpc_status: Option<String>,
    http2_error: Option<Value>,
    percentage: Option<Percent>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct TcpRoute {
    #[serde(rename = "match")]
    matches: Vec<Value>,
    route: Vec<RouteDestination>,
}

/// Converts a VirtualService.
pub(crate) fn virtual_service(
    object: &Object,
    ctx: &Context,
    subsets: &Subsets,
    out: &mut Output,
) -> Result<(), IstioError> {
    let spec: Spec = object.spec()?;
    let root = P::spec();
    let mesh = spec.gateways.is_empty() || spec.gateways.iter().any(|g| g == "mesh");
    // `name` is a Gateway of the VirtualService's namespace.
    let gateways: Vec<(usize, String, String)> = spec
        .gateways
        .iter()
        .enumerate()
        .filter(|(_, g)| *g != "mesh")
        .map(|(i, g)| match g.split_once('/') {
            Some((ns, name)) => (i, ns.to_string(), name.to_string()),
            None => (i, object.namespace.clone(), g.clone()),
        })
        .collect();
    let report = &mut out.report;
    export_to(&spec.export_to, &root, report);
    report.if_set(&root, "tls", &spec.tls, "Sane does not route TLS by SNI");
    let mut rules = Vec::new();
    for (i, http) in spec.http.iter().enumerate() {
        if let Some(rule) = http_rule(object, ctx, subsets, http, &root.i("http", i), report)? {
            rules.push(rule);
        }
    }
    for (i, tcp) in spec.tcp.iter().enumerate() {
        if mesh {
            tcp_route(object, ctx, &spec.hosts, tcp, &root.i("tcp", i), report)?;
        } else {
            report.unsupported(&root.i("tcp", i), "the gateway serves HTTP and HTTPS");
        }
    }
    if spec.hosts.is_empty() {
        return Err(IstioError::Malformed {
            object: Box::new(object.reference()),
            message: "spec.hosts: at least one host is required".into(),
        });
    }
    if rules.is_empty() {
        return Ok(());
    }
    if !gateways.is_empty() {
        super::ingress::bound_virtual_service(object, &gateways, &spec.hosts, &rules, out);
    }
    if !mesh {
        return Ok(());
    }
    let several = spec.hosts.len() > 1;
    for (i, host) in spec.hosts.iter().enumerate() {
        let service = resolve_host(object, &root.i("hosts", i), host, ctx)?;
        let suffix = several.then(|| service.split('.').next().unwrap_or(""));
        out.resources.push(Resource::Route(Route {
            name: format!("{}.vs", sane_name(&object.name, suffix)),
            namespace: object.namespace.clone(),
            service: relative(&service, &object.namespace),
            rules: rules.clone(),
        }));
    }
    Ok(())
}

/// `exportTo` other than everywhere cannot be honoured: Sane resources are
/// visible mesh-wide.
pub(crate) fn export_to(list: &[String], root: &P, report: &mut super::common::Report) {
    for (i, e) in list.iter().enumerate() {
        if e != "*" {
            report.unsupported(
                &root.i("exportTo", i),
                format!("{e:?}: Sane resources are visible to every namespace"),
            );
        }
    }
}

fn http_rule(
    object: &Object,
    ctx: &Context,
    subsets: &Subsets,
    http: &HttpRoute,
    p: &P,
    report: &mut super::common::Report,
) -> Result<Option<RouteRule>, IstioError> {
    let _ = &http.name; // names only label Envoy's stats
    let mut rule = RouteRule::default();
    for (j, m) in http.matches.iter().enumerate() {
        if let Some(rm) = http_match(m, &p.i("match", j), report) {
            rule.matches.push(rm);
        }
    }
    if !http.matches.is_empty() && rule.matches.is_empty() {
        report.unsupported(
            p,
            "every match alternative has a condition Sane cannot test, so the rule is left out",
        );
        return Ok(None);
    }
    if let Some(r) = &http.rewrite {
        rule.rewrite = rewrite(r, &http.matches, &p.f("rewrite"), report);
    }
    report.if_set(
        p,
        "corsPolicy",
        &http.cors_policy,
        "Sane routes have no CORS policy",
    );
    if let Some(r) = &http.redirect {
        let rp = p.f("redirect");
        if r.derive_port.as_deref() == Some("FROM_PROTOCOL_DEFAULT") {
            report.note(
                &rp.f("derivePort"),
                "the scheme's default port: no port in Location",
            );
        }
        let port = match (r.port, r.derive_port.as_deref()) {
            (Some(port), _) => port,
            _ => 0,
        };
        rule.redirect = Some(Redirect {
            scheme: r.scheme.clone().unwrap_or_default(),
            host: r.authority.clone().unwrap_or_default(),
            port,
            path: r.uri.clone().unwrap_or_default(),
            status_code: r.redirect_code.unwrap_or(301),
            ..Default::default()
        });
        if rule.rewrite.take().is_some() {
            report.unsupported(
                &p.f("rewrite"),
                "a redirect sends nothing upstream to rewrite",
            );
        }
        if !http.route.is_empty() {
            report.unsupported(&p.f("route"), "a redirect sends nothing upstream");
        }
        return Ok(Some(rule));
    }
    for (field, value) in [
        ("directResponse", &http.direct_response),
        ("delegate", &http.delegate),
    ] {
        if present(value) {
            report.unsupported(
                &p.f(field),
                "Sane routes only forward; the rule is left out, so later rules see its requests",
            );
            return Ok(None);
        }
    }
    if http.route.is_empty() {
        return Err(IstioError::Malformed {
            object: Box::new(object.reference()),
            message: format!("{}.route: at least one destination is required", p.as_str()),
        });
    }
    // Per-destination header operations become the rule's when they agree.
    let first_headers = http.route[0].headers.clone();
    let same_headers = http.route.iter().all(|d| d.headers == first_headers);
    for (k, d) in http.route.iter().enumerate() {
        let dp = p.i("route", k);
        let weight = match d.weight {
            None => 1,
            Some(w) if w < 0 => {
                return Err(IstioError::Malformed {
                    object: Box::new(object.reference()),
                    message: format!("{}.weight: {w} is negative", dp.as_str()),
                })
            }
            Some(0) if http.route.len() > 1 => {
                report.note(&dp.f("weight"), "0: this destination gets no traffic");
                continue;
            }
            Some(w) => w as u32,
        };
        let dest = destination(object, ctx, subsets, &d.destination, &dp.f("destination"))?;
        rule.destinations
            .push(WeightedDestination { weight, ..dest });
        if !same_headers && d.headers.is_some() {
            report.unsupported(
                &dp.f("headers"),
                "header operations differing per destination (Sane applies them per rule)",
            );
        }
    }
    if rule.destinations.is_empty() {
        report.unsupported(
            &p.f("route"),
            "every destination has weight 0; the rule is left out",
        );
        return Ok(None);
    }
    let headers = match (
        &http.headers,
        same_headers.then_some(first_headers).flatten(),
    ) {
        (Some(h), None) => Some(h.clone()),
        (None, Some(d)) => Some(d),
        (Some(h), Some(d)) => Some(merge_headers(h, &d)),
        (None, None) => None,
    };
    if let Some(h) = headers {
        rule.request_headers = h.request.map(ops);
        rule.response_headers = h.response.map(ops);
    }
    if let Some(t) = &http.timeout {
        rule.timeout_ms = duration_ms(object, &p.f("timeout"), t)?;
    }
    rule.retry = Some(retry(
        object,
        http.retries.as_ref(),
        rule.timeout_ms,
        p,
        report,
    )?);
    if let Some(f) = &http.fault {
        rule.fault = fault(object, f, &p.f("fault"), report)?;
    }
    rule.mirror = mirror(object, ctx, http, p, report)?;
    Ok(Some(rule))
}

/// `rewrite` as Envoy applies it: `uri` replaces the matched `uri.prefix`,
/// or the whole path after an `exact` match (or with no `uri` match, the
/// leading `/`). Alternatives that match the path differently cannot share
/// one rewrite: reported, and the rule forwards unrewritten.
fn rewrite(
    r: &HttpRewrite,
    matches: &[HttpMatch],
    p: &P,
    report: &mut super::common::Report,
) -> Option<Rewrite> {
    report.if_set(
        p,
        "uriRegexRewrite",
        &r.uri_regex_rewrite,
        "Sane rewrites whole paths or prefixes, not by regex",
    );
    let mut out = Rewrite {
        authority: r.authority.clone().unwrap_or_default(),
        ..Default::default()
    };
    if let Some(uri) = &r.uri {
        let uris: Vec<Option<&StringMatch>> = matches.iter().map(|m| m.uri.as_ref()).collect();
        let first = uris.first().copied().flatten();
        let all_same = uris.iter().all(|u| match (u, first) {
            (Some(a), Some(b)) => a.exact == b.exact && a.prefix == b.prefix && a.regex == b.regex,
            (None, None) => true,
            _ => false,
        });
        match first {
            _ if !all_same => {
                report.unsupported(
                    &p.f("uri"),
                    "the match alternatives match the path differently, so no one prefix can be                      replaced; requests go upstream with their path",
                );
            }
            None => {
                out.replace_prefix = "/".into();
                out.with_prefix = uri.clone();
            }
            Some(StringMatch {
                prefix: Some(prefix),
                ..
            }) => {
                out.replace_prefix = prefix.clone();
                out.with_prefix = uri.clone();
            }
            Some(StringMatch { exact: Some(_), .. }) => out.path = uri.clone(),
            Some(_) => report.unsupported(
                &p.f("uri"),
                "after a regex match, Envoy replaces no prefix; Sane neither (path kept)",
            ),
        }
    }
    (out != Rewrite::default()).then_some(out)
}

fn merge_headers(rule: &Headers, dest: &Headers) -> Headers {
    let merge = |a: &Option<HeaderOperations>, b: &Option<HeaderOperations>| match (a, b) {
        (Some(a), Some(b)) => {
            let mut m = a.clone();
            m.set.extend(b.set.clone());
            m.add.extend(b.add.clone());
            m.remove.extend(b.remove.clone());
            Some(m)
        }
        (a, b) => a.clone().or(b.clone()),
    };
    Headers {
        request: merge(&rule.request, &dest.request),
        response: merge(&rule.response, &dest.response),
    }
}

fn ops(h: HeaderOperations) -> HeaderOps {
    HeaderOps {
        set: h.set,
        add: h.add,
        remove: h.remove,
    }
}

/// One match alternative, or `None` (reported) when a condition cannot be
/// tested.
fn http_match(m: &HttpMatch, p: &P, report: &mut super::common::Report) -> Option<RouteMatch> {
    let mut ok = true;
    let mut drop = |report: &mut super::common::Report, field: &str, reason: &str| {
        report.unsupported(
            &p.f(field),
            format!("{reason}; this match alternative is left out"),
        );
        ok = false;
    };
    if m.scheme.is_some() {
        drop(report, "scheme", "Sane routes do not match on the scheme");
    }
    if m.authority.is_some() {
        drop(
            report,
            "authority",
            "Sane routes are chosen by host before rules match",
        );
    }
    if m.port.is_some() {
        drop(report, "port", "Sane route rules do not match on the port");
    }
    if !m.source_labels.is_empty() {
        drop(
            report,
            "sourceLabels",
            "Sane routes do not match on the caller's labels",
        );
    }
    if !m.gateways.is_empty() {
        drop(report, "gateways", "Sane routes do not match on gateways");
    }
    let mut query_params = Vec::new();
    for (name, sm) in &m.query_params {
        let (kind, value) = match sm {
            StringMatch {
                exact: Some(e),
                prefix: None,
                regex: None,
            } => (MatchKind::Exact, e.clone()),
            StringMatch {
                exact: None,
                prefix: Some(v),
                regex: None,
            } => (MatchKind::Prefix, v.clone()),
            StringMatch {
                exact: None,
                prefix: None,
                regex: Some(r),
            } => (MatchKind::Regex, r.clone()),
            _ => {
                drop(
                    report,
                    "queryParams",
                    "a query parameter match needs exactly one of exact, prefix, regex",
                );
                continue;
            }
        };
        query_params.push(QueryParamMatch {
            name: name.clone(),
            kind: kind.into(),
            value,
        });
    }
    if m.source_namespace.is_some() {
        drop(
            report,
            "sourceNamespace",
            "Sane routes do not match on the caller's namespace",
        );
    }
    if m.stat_prefix.is_some() {
        report.unsupported(&p.f("statPrefix"), "Sane metrics have no per-route prefix");
    }
    let _ = &m.name;
    let mut rm = RouteMatch {
        query_params,
        ..Default::default()
    };
    if let Some(uri) = &m.uri {
        rm.path = uri_match(uri, m.ignore_uri_case);
    }
    if let Some(method) = &m.method {
        match method {
            StringMatch {
                exact: Some(e),
                prefix: None,
                regex: None,
            } => rm.method = e.clone(),
            _ => drop(report, "method", "Sane matches methods exactly only"),
        }
    }
    for (name, sm) in &m.headers {
        rm.headers.push(header_match(name, sm, false));
    }
    for (name, sm) in &m.without_headers {
        rm.headers.push(header_match(name, sm, true));
    }
    ok.then_some(rm)
}

fn uri_match(m: &StringMatch, ignore_case: bool) -> Option<PathMatch> {
    let (kind, value) = match (m, ignore_case) {
        (StringMatch { exact: Some(e), .. }, false) => (MatchKind::Exact, e.clone()),
        // Istio prefixes are plain string prefixes; Sane's stop at a `/`
        // unless they end with one, so others become a regex.
        (
            StringMatch {
                prefix: Some(pre), ..
            },
            false,
        ) if pre.ends_with('/') => (MatchKind::Prefix, pre.clone()),
        (StringMatch { exact: Some(e), .. }, true) => {
            (MatchKind::Regex, format!("(?i){}", regex_escape(e)))
        }
        (
            StringMatch {
                prefix: Some(pre), ..
            },
            i,
        ) => (
            MatchKind::Regex,
            format!("{}{}.*", if i { "(?i)" } else { "" }, regex_escape(pre)),
        ),
        (StringMatch { regex: Some(r), .. }, i) => (
            MatchKind::Regex,
            format!("{}{r}", if i { "(?i)" } else { "" }),
        ),
        _ => return None,
    };
    Some(PathMatch {
        kind: kind.into(),
        value,
    })
}

fn header_match(name: &str, m: &StringMatch, invert: bool) -> HeaderMatch {
    let (kind, value) = match m {
        StringMatch { exact: Some(e), .. } => (MatchKind::Exact, e.clone()),
        StringMatch {
            prefix: Some(p), ..
        } => (MatchKind::Prefix, p.clone()),
        StringMatch { regex: Some(r), .. } => (MatchKind::Regex, r.clone()),
        _ => (MatchKind::Present, String::new()),
    };
    HeaderMatch {
        name: name.to_ascii_lowercase(),
        kind: kind.into(),
        value,
        invert,
    }
}

/// A destination: its service, port and subset labels.
pub(crate) fn destination(
    object: &Object,
    ctx: &Context,
    subsets: &Subsets,
    d: &Destination,
    p: &P,
) -> Result<WeightedDestination, IstioError> {
    let service = resolve_host(object, &p.f("host"), &d.host, ctx)?;
    let subset =
        match &d.subset {
            None => BTreeMap::new(),
            Some(name) => subsets.labels(&service, name).cloned().ok_or_else(|| {
                IstioError::MissingSubset {
                    object: Box::new(object.reference()),
                    path: p.f("subset").as_str().to_string(),
                    host: d.host.clone(),
                    subset: name.clone(),
                }
            })?,
        };
    Ok(WeightedDestination {
        service: relative(&service, &object.namespace),
        port: d.port.as_ref().map_or(0, |p| p.number),
        subset,
        weight: 0,
    })
}

fn retry(
    object: &Object,
    r: Option<&HttpRetry>,
    timeout_ms: u64,
    p: &P,
    report: &mut super::common::Report,
) -> Result<RetryPolicy, IstioError> {
    let Some(r) = r else {
        report.note(
            &p.f("retries"),
            "unset: Istio's default, 2 retries on connect-failure, refused-stream, unavailable, \
             cancelled and 503 (Sane also caps them by the destination's retry budget and does \
             not replay POST)",
        );
        return Ok(RetryPolicy::default());
    };
    let rp = p.f("retries");
    let mut policy = RetryPolicy {
        attempts: Some(
            r.attempts
                .unwrap_or(2)
                .min(sane_xds_proto::MAX_RETRY_ATTEMPTS),
        ),
        ..Default::default()
    };
    if r.attempts
        .is_some_and(|a| a > sane_xds_proto::MAX_RETRY_ATTEMPTS)
    {
        report.note(
            &rp.f("attempts"),
            format!("capped at {}", sane_xds_proto::MAX_RETRY_ATTEMPTS),
        );
    }
    if let Some(t) = &r.per_try_timeout {
        let ms = duration_ms(object, &rp.f("perTryTimeout"), t)?;
        policy.per_try_timeout_ms = if timeout_ms > 0 {
            ms.min(timeout_ms)
        } else {
            ms
        };
    }
    if let Some(b) = &r.backoff {
        policy.base_interval_ms = duration_ms(object, &rp.f("backoff"), b)?;
    }
    if let Some(on) = &r.retry_on {
        for cond in on.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if let Ok(code) = cond.parse::<u32>() {
                policy.status_codes.push(code);
            } else if cond == "retriable-status-codes" {
                // Its codes are the numbers listed beside it.
            } else if RETRY_CONDITIONS.contains(&cond) {
                policy.retry_on.push(cond.to_string());
            } else {
                report.unsupported(
                    &rp.f("retryOn"),
                    format!(
                        "condition {cond:?} (Sane knows {})",
                        RETRY_CONDITIONS.join(", ")
                    ),
                );
            }
        }
        if policy.retry_on.is_empty() && policy.status_codes.is_empty() {
            // Nothing Sane knows is left: no retries rather than the default.
            policy.attempts = Some(0);
        }
    }
    report.if_set(
        &rp,
        "retryRemoteLocalities",
        &r.retry_remote_localities,
        "Sane has no localities",
    );
    if r.retry_ignore_previous_hosts == Some(false) {
        report.unsupported(
            &rp.f("retryIgnorePreviousHosts"),
            "false: Sane always retries on another endpoint when one is healthy",
        );
    }
    Ok(policy)
}

fn fault(
    object: &Object,
    f: &Fault,
    p: &P,
    report: &mut super::common::Report,
) -> Result<Option<FaultPolicy>, IstioError> {
    let mut policy = FaultPolicy::default();
    if let Some(d) = &f.delay {
        let dp = p.f("delay");
        report.if_set(
            &dp,
            "exponentialDelay",
            &d.exponential_delay,
            "Sane delays are fixed",
        );
        if let Some(fixed) = &d.fixed_delay {
            policy.delay = Some(FaultDelay {
                fixed_delay_ms: duration_ms(object, &dp.f("fixedDelay"), fixed)?,
                percent: percent(d.percentage, d.percent),
            });
        }
    }
    if let Some(a) = &f.abort {
        let ap = p.f("abort");
        report.if_set(
            &ap,
            "http2Error",
            &a.http2_error,
            "Sane aborts with a status",
        );
        let pct = a.percentage.map(|x| x.value);
        if let Some(s) = a.http_status {
            policy.abort = Some(FaultAbort {
                http_status: s,
                percent: pct,
                ..Default::default()
            });
        } else if let Some(g) = &a.grpc_status {
            policy.abort = Some(FaultAbort {
                grpc_status: g.to_ascii_lowercase(),
                percent: pct,
                ..Default::default()
            });
        }
    }
    Ok((policy.delay.is_some() || policy.abort.is_some()).then_some(policy))
}

fn mirror(
    object: &Object,
    ctx: &Context,
    http: &HttpRoute,
    p: &P,
    report: &mut super::common::Report,
) -> Result<Option<MirrorPolicy>, IstioError> {
    let legacy = http.mirror_percent.or(http.mirror_percent_snake);
    let (dest, pct, dp) = match (&http.mirror, http.mirrors.as_slice()) {
        (Some(d), _) => (d, percent(http.mirror_percentage, legacy), p.f("mirror")),
        (None, [one]) => (
            &one.destination,
            one.percentage.map(|x| x.value),
            p.i("mirrors", 0).f("destination"),
        ),
        (None, []) => return Ok(None),
        (None, _) => {
            report.unsupported(&p.f("mirrors"), "Sane mirrors to one destination per rule");
            return Ok(None);
        }
    };
    if dest.subset.is_some() {
        report.unsupported(
            &dp.f("subset"),
            "Sane mirrors to a whole service, not a subset; the mirror is left out",
        );
        return Ok(None);
    }
    let service = resolve_host(object, &dp.f("host"), &dest.host, ctx)?;
    Ok(Some(MirrorPolicy {
        service: relative(&service, &object.namespace),
        port: dest.port.as_ref().map_or(0, |p| p.number),
        percent: pct,
        max_body_bytes: 0,
    }))
}

fn tcp_route(
    object: &Object,
    ctx: &Context,
    hosts: &[String],
    tcp: &TcpRoute,
    p: &P,
    report: &mut super::common::Report,
) -> Result<(), IstioError> {
    // The one form Sane already does: all TCP of the host to its own
    // endpoints.
    let trivial = tcp.matches.is_empty()
        && tcp.route.len() == 1
        && tcp.route[0].destination.subset.is_none()
        && hosts.len() == 1
        && resolve_host(object, p, &tcp.route[0].destination.host, ctx).ok()
            == resolve_host(object, p, &hosts[0], ctx).ok();
    if !trivial {
        report.unsupported(
            p,
            "Sane sends TCP to the service's own endpoints; TCP matches, splits and other \
             destinations are not expressed",
        );
    }
    Ok(())
}
