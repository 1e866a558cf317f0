//! Routing: which service a request is for, which rule of its route matches,
//! and which cluster (weighted) it goes to.
//!
//! Everything is compiled once per config snapshot: host lookups are hash
//! lookups, regexes are pre-built and destinations point straight at their
//! cluster, so the request path only evaluates matchers.

use crate::cluster::Cluster;
use crate::error::ProxyError;
use crate::policy::RulePolicies;
use http::{HeaderMap, Method, Request};
use rand::Rng;
use regex::Regex;
use sane_xds_proto::{HeaderMatch, MatchKind, PathMatch, Protocol, RouteMatch};
use std::sync::Arc;
use std::time::Duration;

pub mod table;

/// The routing rules for one service port.
#[derive(Debug)]
pub struct PortRoute {
    /// Service key, `name.namespace`, and its metric label.
    pub service: ServiceName,
    /// Service port.
    pub port: u16,
    /// Protocol of the port.
    pub protocol: Protocol,
    /// Name of the Route resource, if one applies.
    pub route_name: Option<String>,
    /// Rules, in order.
    pub rules: Vec<Rule>,
}

/// A service's key (`name.namespace`), built once per config snapshot:
/// its name and namespace are slices of it, and a clone is one `Arc` (a
/// large mesh keeps one small allocation per service). The Istio host
/// (`name.namespace.svc.cluster.local`, the `destination_service` metric
/// label) is made when a metric series is first resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceName {
    /// `name.namespace`.
    key: Arc<str>,
    /// Length of `name` in `key`.
    name_len: usize,
}

/// One compiled rule.
#[derive(Debug)]
pub struct Rule {
    matches: Vec<Matcher>,
    destinations: Vec<(Arc<Cluster>, u32)>,
    total_weight: u32,
    /// Whole-request timeout.
    pub timeout: Option<Duration>,
    /// Retries, faults, mirroring, header rewrites.
    pub policies: RulePolicies,
}

/// Where a request goes.
#[derive(Debug, Clone)]
pub struct Selected {
    /// Destination cluster.
    pub cluster: Arc<Cluster>,
    /// Whole-request timeout.
    pub timeout: Option<Duration>,
    /// The matched rule's policies.
    pub policies: RulePolicies,
}

/// A compiled [`RouteMatch`].
#[derive(Debug)]
pub struct Matcher {
    path: Option<StrMatcher>,
    headers: Vec<(http::HeaderName, StrMatcher, bool)>,
    method: Option<Method>,
    /// Query parameter name and condition on its (decoded) value.
    query: Vec<(String, StrMatcher)>,
}

#[derive(Debug)]
enum StrMatcher {
    Exact(String),
    PathPrefix(String),
    Prefix(String),
    Regex(Regex),
    Present,
}

/// A route that cannot be compiled (names the field).
#[derive(Debug, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct CompileError {
    /// Field path.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

// === impl ServiceName ===

impl ServiceName {
    /// The name of the service `key` (`name.namespace`; a key without a
    /// namespace is in `default`).
    pub fn new(key: &str) -> Self {
        Self {
            key: key.into(),
            name_len: key.rfind('.').unwrap_or(key.len()),
        }
    }

    /// The service's name (the `destination_service_name` metric label).
    pub fn name(&self) -> &str {
        &self.key[..self.name_len]
    }

    /// The service's namespace (the `destination_service_namespace` metric
    /// label).
    pub fn namespace(&self) -> &str {
        match self.key.get(self.name_len + 1..) {
            Some(ns) => ns,
            None => sane_xds_proto::DEFAULT_NAMESPACE,
        }
    }

    /// `name.namespace`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// `name.namespace.svc.cluster.local`.
    pub fn host(&self) -> String {
        crate::telemetry::istio_host(self.key())
    }

    /// True if both are the same name of one snapshot (one `Arc`), which
    /// is cheaper to tell than equal names.
    pub fn same(&self, other: &ServiceName) -> bool {
        Arc::ptr_eq(&self.key, &other.key)
    }
}

impl From<&str> for ServiceName {
    fn from(key: &str) -> Self {
        Self::new(key)
    }
}

impl std::ops::Deref for ServiceName {
    type Target = str;

    fn deref(&self) -> &str {
        self.key()
    }
}

impl std::fmt::Display for ServiceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.key())
    }
}

impl PartialEq<&str> for ServiceName {
    fn eq(&self, other: &&str) -> bool {
        self.key() == *other
    }
}

// === impl PortRoute ===

impl PortRoute {
    /// Picks the destination for a request: the first matching rule, then a
    /// weighted draw among its destinations.
    pub fn select<B>(&self, req: &Request<B>) -> Result<Selected, ProxyError> {
        let (_, rule) = self.matching_rule(req)?;
        let cluster = rule.pick(&mut rand::rng());
        Ok(Selected {
            cluster,
            timeout: rule.timeout,
            policies: rule.policies.clone(),
        })
    }

    /// The first rule that matches `req`, with its index: the rule
    /// [`PortRoute::select`] takes (`sanectl explain` calls this too, so
    /// what it reports is what the proxy does).
    pub fn matching_rule<B>(&self, req: &Request<B>) -> Result<(usize, &Rule), ProxyError> {
        self.rules
            .iter()
            .enumerate()
            .find(|(_, r)| r.matching(req).is_some())
            .ok_or_else(|| ProxyError::NoRuleMatched {
                route: self.route_name.clone().unwrap_or_default(),
                method: req.method().to_string(),
                path: req.uri().path().to_string(),
            })
    }
}

// === impl Rule ===

impl Rule {
    /// Builds a rule. `destinations` must not be empty.
    pub fn new(
        matches: Vec<Matcher>,
        destinations: Vec<(Arc<Cluster>, u32)>,
        timeout: Option<Duration>,
    ) -> Self {
        let destinations: Vec<_> = destinations
            .into_iter()
            .map(|(c, w)| (c, w.max(1)))
            .collect();
        let total_weight = destinations.iter().map(|(_, w)| *w).sum();
        Self {
            matches,
            destinations,
            total_weight,
            timeout,
            policies: RulePolicies::default(),
        }
    }

    /// The rule with `policies`.
    pub fn with_policies(mut self, policies: RulePolicies) -> Self {
        self.policies = policies;
        self
    }

    /// Why `req` matches this rule: `Some(None)` for a rule without
    /// matches (it takes everything), `Some(Some(i))` when `matches[i]` is
    /// the first that holds, `None` when the rule does not apply.
    pub fn matching<B>(&self, req: &Request<B>) -> Option<Option<usize>> {
        if self.matches.is_empty() {
            return Some(None);
        }
        self.matches.iter().position(|m| m.matches(req)).map(Some)
    }

    /// The weighted destinations a request of this rule is drawn among
    /// (weights of 0 count as 1).
    pub fn destinations(&self) -> &[(Arc<Cluster>, u32)] {
        &self.destinations
    }

    fn pick(&self, rng: &mut impl Rng) -> Arc<Cluster> {
        if self.destinations.len() == 1 {
            return self.destinations[0].0.clone();
        }
        let mut n = rng.random_range(0..self.total_weight);
        for (c, w) in &self.destinations {
            if n < *w {
                return c.clone();
            }
            n -= w;
        }
        self.destinations[0].0.clone()
    }
}

// === impl Matcher ===

impl Matcher {
    /// Compiles a match; `field` is its path for errors.
    pub fn compile(m: &RouteMatch, field: &str) -> Result<Self, CompileError> {
        let path = m
            .path
            .as_ref()
            .map(|p| compile_path(p, &format!("{field}.path")))
            .transpose()?;
        let mut headers = Vec::new();
        for (i, h) in m.headers.iter().enumerate() {
            headers.push(compile_header(h, &format!("{field}.headers[{i}]"))?);
        }
        let method = if m.method.is_empty() {
            None
        } else {
            Some(
                Method::from_bytes(m.method.as_bytes()).map_err(|_| CompileError {
                    field: format!("{field}.method"),
                    reason: format!("{:?} is not a valid method", m.method),
                })?,
            )
        };
        let mut query = Vec::new();
        for (i, q) in m.query_params.iter().enumerate() {
            let f = format!("{field}.query_params[{i}]");
            let matcher = match MatchKind::from_wire(q.kind) {
                MatchKind::Exact => StrMatcher::Exact(q.value.clone()),
                MatchKind::Prefix => StrMatcher::Prefix(q.value.clone()),
                MatchKind::Regex => StrMatcher::Regex(anchored(&q.value, &format!("{f}.value"))?),
                MatchKind::Present => StrMatcher::Present,
            };
            query.push((q.name.clone(), matcher));
        }
        Ok(Self {
            path,
            headers,
            method,
            query,
        })
    }

    /// True if the request meets every condition of this match.
    pub fn matches<B>(&self, req: &Request<B>) -> bool {
        if let Some(m) = &self.method {
            if req.method() != m {
                return false;
            }
        }
        if let Some(p) = &self.path {
            if !p.matches(Some(req.uri().path())) {
                return false;
            }
        }
        if !self.query.is_empty() {
            let query = req.uri().query().unwrap_or("");
            let all = self.query.iter().all(|(name, m)| {
                form_urlencoded::parse(query.as_bytes())
                    .any(|(n, v)| n == name.as_str() && m.matches(Some(&v)))
            });
            if !all {
                return false;
            }
        }
        self.headers
            .iter()
            .all(|(name, m, invert)| header_matches(req.headers(), name, m) != *invert)
    }
}

fn header_matches(headers: &HeaderMap, name: &http::HeaderName, m: &StrMatcher) -> bool {
    let mut values = headers.get_all(name).iter().peekable();
    if values.peek().is_none() {
        return false;
    }
    values.any(|v| m.matches(v.to_str().ok()))
}

fn compile_path(p: &PathMatch, field: &str) -> Result<StrMatcher, CompileError> {
    Ok(match MatchKind::from_wire(p.kind) {
        MatchKind::Exact => StrMatcher::Exact(p.value.clone()),
        MatchKind::Prefix => StrMatcher::PathPrefix(p.value.clone()),
        MatchKind::Regex => StrMatcher::Regex(anchored(&p.value, &format!("{field}.value"))?),
        MatchKind::Present => {
            return Err(CompileError {
                field: format!("{field}.kind"),
                reason: "\"present\" applies to headers only".into(),
            })
        }
    })
}

fn compile_header(
    h: &HeaderMatch,
    field: &str,
) -> Result<(http::HeaderName, StrMatcher, bool), CompileError> {
    let name =
        http::HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes()).map_err(|_| {
            CompileError {
                field: format!("{field}.name"),
                reason: format!("{:?} is not a valid header name", h.name),
            }
        })?;
    let m = match MatchKind::from_wire(h.kind) {
        MatchKind::Exact => StrMatcher::Exact(h.value.clone()),
        MatchKind::Prefix => StrMatcher::Prefix(h.value.clone()),
        MatchKind::Regex => StrMatcher::Regex(anchored(&h.value, &format!("{field}.value"))?),
        MatchKind::Present => StrMatcher::Present,
    };
    Ok((name, m, h.invert))
}

fn anchored(re: &str, field: &str) -> Result<Regex, CompileError> {
    regex::RegexBuilder::new(&format!("^(?:{re})$"))
        .size_limit(1 << 20)
        .build()
        .map_err(|e| CompileError {
            field: field.to_string(),
            reason: format!("invalid regex {re:?}: {e}"),
        })
}

// === impl StrMatcher ===

impl StrMatcher {
    fn matches(&self, value: Option<&str>) -> bool {
        let Some(v) = value else {
            return matches!(self, StrMatcher::Present);
        };
        match self {
            StrMatcher::Exact(s) => v == s,
            StrMatcher::Prefix(s) => v.starts_with(s.as_str()),
            StrMatcher::PathPrefix(s) => {
                v == s
                    || (v.starts_with(s.as_str())
                        && (s.ends_with('/') || v.as_bytes().get(s.len()) == Some(&b'/')))
            }
            StrMatcher::Regex(r) => r.is_match(v),
            StrMatcher::Present => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sane_xds_proto::ServicePort;

    fn cluster(name: &str) -> Arc<Cluster> {
        let port = ServicePort {
            port: 80,
            ..Default::default()
        };
        Arc::new(Cluster::new(
            name.into(),
            &port,
            vec![],
            Default::default(),
            Duration::from_secs(1),
            Duration::from_secs(1),
        ))
    }

    fn rm(
        path: Option<(MatchKind, &str)>,
        headers: &[(&str, MatchKind, &str, bool)],
        method: &str,
    ) -> RouteMatch {
        RouteMatch {
            path: path.map(|(k, v)| PathMatch {
                kind: k as i32,
                value: v.into(),
            }),
            headers: headers
                .iter()
                .map(|(n, k, v, inv)| HeaderMatch {
                    name: n.to_string(),
                    kind: *k as i32,
                    value: v.to_string(),
                    invert: *inv,
                })
                .collect(),
            method: method.into(),
            ..Default::default()
        }
    }

    fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri(path);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn path_prefix_is_segment_aware() {
        let m = Matcher::compile(&rm(Some((MatchKind::Prefix, "/api")), &[], ""), "m").unwrap();
        assert!(m.matches(&req("GET", "/api", &[])));
        assert!(m.matches(&req("GET", "/api/v1?x=1", &[])));
        assert!(!m.matches(&req("GET", "/apix", &[])));
    }

    #[test]
    fn headers_methods_and_regex() {
        let m = Matcher::compile(
            &rm(
                Some((MatchKind::Regex, "/users/[0-9]+")),
                &[
                    ("x-canary", MatchKind::Exact, "1", false),
                    ("x-debug", MatchKind::Present, "", true),
                ],
                "POST",
            ),
            "m",
        )
        .unwrap();
        assert!(m.matches(&req("POST", "/users/42", &[("x-canary", "1")])));
        assert!(!m.matches(&req("GET", "/users/42", &[("x-canary", "1")])));
        assert!(!m.matches(&req("POST", "/users/42x", &[("x-canary", "1")])));
        assert!(!m.matches(&req(
            "POST",
            "/users/42",
            &[("x-canary", "1"), ("x-debug", "")]
        )));
        assert!(!m.matches(&req("POST", "/users/42", &[])));
    }

    #[test]
    fn query_parameters_match_decoded_values() {
        let mut m = rm(None, &[], "");
        m.query_params = vec![
            sane_xds_proto::QueryParamMatch {
                name: "user".into(),
                kind: MatchKind::Exact as i32,
                value: "jason smith".into(),
            },
            sane_xds_proto::QueryParamMatch {
                name: "debug".into(),
                kind: MatchKind::Present as i32,
                value: String::new(),
            },
        ];
        let m = Matcher::compile(&m, "m").unwrap();
        assert!(m.matches(&req("GET", "/?user=jason%20smith&debug", &[])));
        assert!(m.matches(&req("GET", "/?debug=1&user=kim&user=jason+smith", &[])));
        assert!(!m.matches(&req("GET", "/?user=jason%20smith", &[])));
        assert!(!m.matches(&req("GET", "/?User=jason%20smith&debug", &[])));
        assert!(!m.matches(&req("GET", "/", &[])));
    }

    #[test]
    fn bad_regex_names_the_field() {
        let err = Matcher::compile(
            &rm(Some((MatchKind::Regex, "(")), &[], ""),
            "routes[0].rules[0].matches[0]",
        )
        .unwrap_err();
        assert_eq!(err.field, "routes[0].rules[0].matches[0].path.value");
    }

    #[test]
    fn first_matching_rule_wins_and_weights_split() {
        let a = cluster("a");
        let b = cluster("b");
        let api = Matcher::compile(&rm(Some((MatchKind::Prefix, "/api")), &[], ""), "m").unwrap();
        let route = PortRoute {
            service: "echo.default".into(),
            port: 80,
            protocol: Protocol::Http,
            route_name: Some("r".into()),
            rules: vec![
                Rule::new(
                    vec![api],
                    vec![(a.clone(), 1)],
                    Some(Duration::from_secs(2)),
                ),
                Rule::new(vec![], vec![(a.clone(), 3), (b.clone(), 1)], None),
            ],
        };
        let s = route.select(&req("GET", "/api/x", &[])).unwrap();
        assert_eq!(s.cluster.name, "a");
        assert_eq!(s.timeout, Some(Duration::from_secs(2)));
        let picks_b = (0..4000)
            .filter(|_| route.select(&req("GET", "/", &[])).unwrap().cluster.name == "b")
            .count();
        assert!((800..1200).contains(&picks_b), "{picks_b}");
    }
}
