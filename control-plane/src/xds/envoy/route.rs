//! `RouteConfiguration`: one per HTTP service port, with one virtual host
//! (every host name of the service, with and without the port) whose routes
//! are the service's `Route` rules, in order, translated the way the
//! sidecar's route table reads them.
//!
//! What gRPC clients honour (gRFC A28, A31, A33, A42, A44): path and header
//! matches, weighted clusters, `max_stream_duration` (the rule's timeout),
//! retries on gRPC statuses, the fault filter, header hash policies. Envoy
//! also reads the route `timeout`, per-try timeouts, HTTP status retries,
//! mirrors and header rewrites; gRPC ignores those.

use super::listener::FAULT_FILTER;
use super::names::{cluster_name, domains, route_config_name};
use super::Inputs;
use envoy_types::pb::envoy::config::core::v3::{
    header_value_option::HeaderAppendAction, HeaderValue, HeaderValueOption,
    RuntimeFractionalPercent,
};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier,
    retry_policy::RetryBackOff,
    route::Action,
    route_action::{
        hash_policy::{Header as HashHeader, PolicySpecifier},
        ClusterSpecifier, HashPolicy, MaxStreamDuration, RequestMirrorPolicy,
    },
    route_match::PathSpecifier,
    weighted_cluster::ClusterWeight,
    HeaderMatcher, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
    WeightedCluster,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{
    fault_delay::FaultDelaySecifier, FaultDelay,
};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    fault_abort::ErrorType, FaultAbort, HttpFault,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    string_matcher::MatchPattern, RegexMatcher, StringMatcher,
};
use envoy_types::pb::envoy::r#type::v3::{fractional_percent::DenominatorType, FractionalPercent};
use envoy_types::pb::google::protobuf::{Duration, UInt32Value};
use envoy_types::util::pack_any;
use sane_xds_proto::resources::qualify;
use sane_xds_proto::{
    grpc_code, FaultPolicy, HeaderOps, LoadBalancer, MatchKind, Protocol, RetryPolicy, RouteRule,
    Service, ServicePort,
};
use std::collections::BTreeMap;

/// Retry conditions when a rule names none (the sidecar's default).
const DEFAULT_RETRY_ON: &str = "connect-failure,refused-stream,unavailable,cancelled";

/// The `RouteConfiguration` of port `port` of `svc`.
pub(super) fn route_configuration(
    inputs: &Inputs<'_>,
    svc: &Service,
    port: &ServicePort,
) -> RouteConfiguration {
    let key = svc.key();
    let name = route_config_name(&key, port.port);
    let routes = match inputs.routes.get(&key) {
        None => vec![Route {
            r#match: Some(match_all()),
            action: Some(Action::Route(RouteAction {
                cluster_specifier: Some(ClusterSpecifier::Cluster(cluster_name(
                    &key,
                    port.port,
                    &BTreeMap::new(),
                ))),
                hash_policy: hash_policies(inputs, [key.as_str()]),
                timeout: Some(duration_ms(0)),
                ..Default::default()
            })),
            ..Default::default()
        }],
        Some(route) => route
            .rules
            .iter()
            .enumerate()
            .flat_map(|(i, rule)| {
                let action = rule_action(inputs, &key, &route.namespace, port.port, rule);
                let matches = if rule.matches.is_empty() {
                    vec![match_all()]
                } else {
                    rule.matches.iter().map(route_match).collect()
                };
                let count = matches.len();
                matches.into_iter().enumerate().map(move |(j, m)| {
                    let mut r = action.clone();
                    r.name = if count == 1 {
                        format!("{}/rules[{i}]", route.name)
                    } else {
                        format!("{}/rules[{i}].matches[{j}]", route.name)
                    };
                    r.r#match = Some(m);
                    r
                })
            })
            .collect(),
    };
    RouteConfiguration {
        name: name.clone(),
        virtual_hosts: vec![VirtualHost {
            name,
            domains: domains(svc, port.port),
            routes,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Every (service, port, subset) a route in the view sends to with a
/// non-empty subset: the subset clusters to build.
pub(super) fn subset_destinations(
    inputs: &Inputs<'_>,
) -> Vec<(String, u32, BTreeMap<String, String>)> {
    let mut out = Vec::new();
    for (key, route) in &inputs.routes {
        let Some(svc) = inputs.services.get(key) else {
            continue;
        };
        for port in svc.ports.iter().filter(|p| p.protocol().is_http()) {
            for rule in &route.rules {
                for d in rule.destinations.iter().filter(|d| !d.subset.is_empty()) {
                    let dkey = qualify(&d.service, &route.namespace);
                    let dport = destination_port(inputs, &dkey, d.port, port.port);
                    out.push((dkey, dport, d.subset.clone()));
                }
            }
        }
    }
    out
}

/// A route (without its match) carrying `rule`'s action and policies.
fn rule_action(
    inputs: &Inputs<'_>,
    key: &str,
    namespace: &str,
    port: u32,
    rule: &RouteRule,
) -> Route {
    let mut clusters: Vec<(String, String, u32)> = rule
        .destinations
        .iter()
        .map(|d| {
            let dkey = qualify(&d.service, namespace);
            let dport = destination_port(inputs, &dkey, d.port, port);
            let name = cluster_name(&dkey, dport, &d.subset);
            (dkey, name, d.weight.max(1))
        })
        .collect();
    if clusters.is_empty() {
        clusters.push((
            key.to_string(),
            cluster_name(key, port, &BTreeMap::new()),
            1,
        ));
    }
    let hash_policy = hash_policies(inputs, clusters.iter().map(|(k, _, _)| k.as_str()));
    let cluster_specifier = if let [(_, name, _)] = clusters.as_slice() {
        ClusterSpecifier::Cluster(name.clone())
    } else {
        ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: clusters
                .into_iter()
                .map(|(_, name, weight)| ClusterWeight {
                    name,
                    weight: Some(UInt32Value { value: weight }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    };
    let mut action = RouteAction {
        cluster_specifier: Some(cluster_specifier),
        hash_policy,
        // 0 disables Envoy's default 15s; gRPC reads max_stream_duration.
        timeout: Some(duration_ms(rule.timeout_ms)),
        retry_policy: rule.retry.as_ref().and_then(retry_policy),
        ..Default::default()
    };
    if rule.timeout_ms > 0 {
        action.max_stream_duration = Some(MaxStreamDuration {
            max_stream_duration: Some(duration_ms(rule.timeout_ms)),
            ..Default::default()
        });
    }
    if let Some(m) = &rule.mirror {
        let mkey = qualify(&m.service, namespace);
        let mport = destination_port(inputs, &mkey, m.port, port);
        action.request_mirror_policies = vec![RequestMirrorPolicy {
            cluster: cluster_name(&mkey, mport, &BTreeMap::new()),
            runtime_fraction: Some(RuntimeFractionalPercent {
                default_value: Some(percent(m.percent.unwrap_or(100.0))),
                ..Default::default()
            }),
            ..Default::default()
        }];
    }
    let mut route = Route {
        action: Some(Action::Route(action)),
        ..Default::default()
    };
    if let Some(fault) = &rule.fault {
        route
            .typed_per_filter_config
            .insert(FAULT_FILTER.to_string(), pack_any(http_fault(fault)));
    }
    if let Some(ops) = &rule.request_headers {
        route.request_headers_to_add = header_options(ops);
        route.request_headers_to_remove = ops.remove.clone();
    }
    if let Some(ops) = &rule.response_headers {
        route.response_headers_to_add = header_options(ops);
        route.response_headers_to_remove = ops.remove.clone();
    }
    route
}

/// The port of `service` a destination means, as the sidecar decides it:
/// its own if set, else the request's if the service has it, else the
/// service's first HTTP port.
fn destination_port(inputs: &Inputs<'_>, service: &str, port: u32, request_port: u32) -> u32 {
    if port != 0 {
        return port;
    }
    let Some(svc) = inputs.services.get(service) else {
        return request_port;
    };
    if svc.port(request_port).is_some() {
        return request_port;
    }
    svc.ports
        .iter()
        .find(|p| p.protocol().is_http())
        .map_or(request_port, |p| p.port)
}

/// A header hash policy for each destination balanced by `consistent_hash`.
fn hash_policies<'a>(
    inputs: &Inputs<'_>,
    services: impl IntoIterator<Item = &'a str>,
) -> Vec<HashPolicy> {
    let mut headers: Vec<String> = services
        .into_iter()
        .filter_map(|s| inputs.policies.get(s))
        .filter(|p| p.load_balancer == LoadBalancer::ConsistentHash as i32)
        .map(|p| p.hash_header.to_ascii_lowercase())
        .collect();
    headers.sort();
    headers.dedup();
    headers
        .into_iter()
        .map(|header_name| HashPolicy {
            policy_specifier: Some(PolicySpecifier::Header(HashHeader {
                header_name,
                ..Default::default()
            })),
            ..Default::default()
        })
        .collect()
}

/// The match of a rule without conditions: every request.
fn match_all() -> RouteMatch {
    RouteMatch {
        path_specifier: Some(PathSpecifier::Prefix(String::new())),
        ..Default::default()
    }
}

fn route_match(m: &sane_xds_proto::RouteMatch) -> RouteMatch {
    let path = match &m.path {
        None => PathSpecifier::Prefix(String::new()),
        Some(p) => match MatchKind::from_wire(p.kind) {
            MatchKind::Exact | MatchKind::Present => PathSpecifier::Path(p.value.clone()),
            MatchKind::Regex => PathSpecifier::SafeRegex(regex(&p.value)),
            // The sidecar's prefix ends on a `/` boundary: `/a` matches `/a`
            // and `/a/b`, not `/ab`.
            MatchKind::Prefix if p.value.ends_with('/') => PathSpecifier::Prefix(p.value.clone()),
            MatchKind::Prefix => {
                PathSpecifier::SafeRegex(regex(&format!("{}(/.*)?", regex_escape(&p.value))))
            }
        },
    };
    let mut headers: Vec<HeaderMatcher> = m
        .headers
        .iter()
        .map(|h| {
            let specifier = match MatchKind::from_wire(h.kind) {
                MatchKind::Present => HeaderMatchSpecifier::PresentMatch(true),
                kind => HeaderMatchSpecifier::StringMatch(StringMatcher {
                    match_pattern: Some(match kind {
                        MatchKind::Prefix => MatchPattern::Prefix(h.value.clone()),
                        MatchKind::Regex => MatchPattern::SafeRegex(regex(&h.value)),
                        _ => MatchPattern::Exact(h.value.clone()),
                    }),
                    ..Default::default()
                }),
            };
            HeaderMatcher {
                name: h.name.to_ascii_lowercase(),
                invert_match: h.invert,
                header_match_specifier: Some(specifier),
                ..Default::default()
            }
        })
        .collect();
    if !m.method.is_empty() {
        headers.push(HeaderMatcher {
            name: ":method".into(),
            header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
                match_pattern: Some(MatchPattern::Exact(m.method.clone())),
                ..Default::default()
            })),
            ..Default::default()
        });
    }
    RouteMatch {
        path_specifier: Some(path),
        headers,
        ..Default::default()
    }
}

fn retry_policy(r: &RetryPolicy) -> Option<envoy_types::pb::envoy::config::route::v3::RetryPolicy> {
    let attempts = r.attempts.unwrap_or(2);
    if attempts == 0 {
        return None;
    }
    let mut retry_on: Vec<&str> = r.retry_on.iter().map(String::as_str).collect();
    let mut codes = r.status_codes.clone();
    if retry_on.is_empty() && codes.is_empty() {
        retry_on = DEFAULT_RETRY_ON.split(',').collect();
        codes.push(503);
    }
    if !codes.is_empty() {
        retry_on.push("retriable-status-codes");
    }
    let base = if r.base_interval_ms == 0 {
        25
    } else {
        r.base_interval_ms
    };
    let max = if r.max_interval_ms == 0 {
        base * 10
    } else {
        r.max_interval_ms
    };
    Some(envoy_types::pb::envoy::config::route::v3::RetryPolicy {
        retry_on: retry_on.join(","),
        num_retries: Some(UInt32Value { value: attempts }),
        per_try_timeout: (r.per_try_timeout_ms > 0).then(|| duration_ms(r.per_try_timeout_ms)),
        retriable_status_codes: codes,
        retry_back_off: Some(RetryBackOff {
            base_interval: Some(duration_ms(base)),
            max_interval: Some(duration_ms(max)),
        }),
        ..Default::default()
    })
}

fn http_fault(f: &FaultPolicy) -> HttpFault {
    HttpFault {
        delay: f.delay.as_ref().map(|d| FaultDelay {
            fault_delay_secifier: Some(FaultDelaySecifier::FixedDelay(duration_ms(
                d.fixed_delay_ms,
            ))),
            percentage: Some(percent(d.percent.unwrap_or(100.0))),
        }),
        abort: f.abort.as_ref().map(|a| FaultAbort {
            error_type: Some(if a.grpc_status.is_empty() {
                ErrorType::HttpStatus(a.http_status)
            } else {
                ErrorType::GrpcStatus(grpc_code(&a.grpc_status).unwrap_or(2))
            }),
            percentage: Some(percent(a.percent.unwrap_or(100.0))),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn header_options(ops: &HeaderOps) -> Vec<HeaderValueOption> {
    let option = |(k, v): (&String, &String), action: HeaderAppendAction| HeaderValueOption {
        header: Some(HeaderValue {
            key: k.to_ascii_lowercase(),
            value: v.clone(),
            ..Default::default()
        }),
        append_action: action.into(),
        ..Default::default()
    };
    let set = ops
        .set
        .iter()
        .map(|kv| option(kv, HeaderAppendAction::OverwriteIfExistsOrAdd));
    let add = ops
        .add
        .iter()
        .map(|kv| option(kv, HeaderAppendAction::AppendIfExistsOrAdd));
    set.chain(add).collect()
}

/// A percentage (0-100) in millionths, so fractions like 0.5 % survive.
fn percent(p: f64) -> FractionalPercent {
    FractionalPercent {
        numerator: (p.clamp(0.0, 100.0) * 10_000.0).round() as u32,
        denominator: DenominatorType::Million.into(),
    }
}

pub(super) fn duration_ms(ms: u64) -> Duration {
    Duration {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

fn regex(r: &str) -> RegexMatcher {
    RegexMatcher {
        regex: r.to_string(),
        ..Default::default()
    }
}

/// Escapes RE2 metacharacters.
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// True if `port` carries gRPC or HTTP/2 to the workload (the cluster then
/// speaks HTTP/2 upstream).
pub(super) fn is_h2(port: &ServicePort) -> bool {
    matches!(port.protocol(), Protocol::Grpc | Protocol::Http2)
}
