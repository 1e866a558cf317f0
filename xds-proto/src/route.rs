//! Routes: how requests for a service are matched and where they are sent.

use crate::route_policy::{FaultPolicy, HeaderOps, MirrorPolicy, RetryPolicy};
use crate::serde_util::{duration_ms, enum_de, enum_ser};
use crate::validate::{Errors, FieldPath, MAX_TOKEN_BYTES, MAX_VALUE_BYTES};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Routing rules for the HTTP traffic addressed to one service (like an Istio
/// VirtualService bound to one host). Without a route, all requests for a
/// service go to its own endpoints.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Route {
    /// Route name, unique within the namespace. Required.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Namespace. Default: `default`.
    #[prost(string, tag = "2")]
    pub namespace: String,
    /// The service whose traffic this route directs (`name` or
    /// `name.namespace`). Required.
    #[prost(string, tag = "3")]
    pub service: String,
    /// Rules, tried in order; the first whose matches succeed wins. A request
    /// no rule matches gets 404 with response flag `NR`. Required: at least one.
    #[prost(message, repeated, tag = "4")]
    pub rules: Vec<RouteRule>,
}

/// One routing rule.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteRule {
    /// Alternatives: the rule applies if any one matches. Default: none, which
    /// matches every request.
    #[prost(message, repeated, tag = "1")]
    pub matches: Vec<RouteMatch>,
    /// Where matching requests go, split by weight. Default: none, meaning
    /// the route's own service.
    #[prost(message, repeated, tag = "2")]
    pub destinations: Vec<WeightedDestination>,
    /// Whole-request timeout, retries included. Default: 0, none. Maximum 24h.
    #[prost(uint64, tag = "3")]
    #[serde(rename = "timeout", with = "duration_ms")]
    pub timeout_ms: u64,
    /// Retries of failed requests. Default: none, no retries.
    #[prost(message, optional, tag = "4")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Faults injected into matching requests. Default: none.
    #[prost(message, optional, tag = "5")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultPolicy>,
    /// A shadow destination receiving a copy of matching requests. Default: none.
    #[prost(message, optional, tag = "6")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorPolicy>,
    /// Rewrites of the request headers sent upstream. Default: none.
    #[prost(message, optional, tag = "7")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderOps>,
    /// Rewrites of the response headers returned to the caller. Default: none.
    #[prost(message, optional, tag = "8")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HeaderOps>,
    /// Answer matching requests with a redirect instead of sending them
    /// upstream. Default: none.
    #[prost(message, optional, tag = "9")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
    /// Rewrite the path or authority of matching requests before they go
    /// upstream (mirror copies included). Default: none.
    #[prost(message, optional, tag = "10")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
}

/// A redirect answer (like an Istio `HTTPRedirect` or the Gateway API's
/// `RequestRedirect`): `Location` is the request's URL with the parts set
/// here replaced.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Redirect {
    /// `http` or `https`. Default: empty, the request's scheme.
    #[prost(string, tag = "1")]
    pub scheme: String,
    /// Host name. Default: empty, the request's host.
    #[prost(string, tag = "2")]
    pub host: String,
    /// Port. Default: 0, the request's (none when the scheme changes).
    #[prost(uint32, tag = "3")]
    pub port: u32,
    /// The whole path. Default: empty, the request's path (or the
    /// `replace_prefix` rewrite).
    #[prost(string, tag = "4")]
    pub path: String,
    /// A path starting with this prefix (on a `/` boundary) has it replaced
    /// with `with_prefix`. Default: empty, none. Not with `path`.
    #[prost(string, tag = "5")]
    pub replace_prefix: String,
    /// What replaces `replace_prefix`. Default: empty (`/` if nothing is
    /// left).
    #[prost(string, tag = "6")]
    pub with_prefix: String,
    /// 301, 302, 303, 307 or 308. Default: 0, meaning 301.
    #[prost(uint32, tag = "7")]
    pub status_code: u32,
}

/// A rewrite of the request sent upstream (like an Istio `HTTPRewrite` or
/// the Gateway API's `URLRewrite`).
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rewrite {
    /// The whole path (the query is kept). Default: empty, unchanged.
    #[prost(string, tag = "1")]
    pub path: String,
    /// A path starting with this prefix (on a `/` boundary) has it replaced
    /// with `with_prefix`. Default: empty, none. Not with `path`.
    #[prost(string, tag = "2")]
    pub replace_prefix: String,
    /// What replaces `replace_prefix`. Default: empty (`/` if nothing is
    /// left).
    #[prost(string, tag = "3")]
    pub with_prefix: String,
    /// The authority (`Host`) sent upstream. Default: empty, unchanged.
    #[prost(string, tag = "4")]
    pub authority: String,
}

/// Conditions on a request; all present conditions must hold.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteMatch {
    /// Condition on the path. Default: any path.
    #[prost(message, optional, tag = "1")]
    pub path: Option<PathMatch>,
    /// Conditions on headers, all of which must hold. Default: none.
    #[prost(message, repeated, tag = "2")]
    pub headers: Vec<HeaderMatch>,
    /// HTTP method, e.g. `GET`. Default: empty, any method.
    #[prost(string, tag = "3")]
    pub method: String,
    /// Conditions on query parameters (values percent-decoded), all of which
    /// must hold. Default: none.
    #[prost(message, repeated, tag = "4")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<QueryParamMatch>,
}

/// A condition on one query parameter; with several of that name, any one
/// may meet it.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueryParamMatch {
    /// Parameter name, compared exactly. Required.
    #[prost(string, tag = "1")]
    pub name: String,
    /// How to compare. Default: `exact`.
    #[prost(enumeration = "MatchKind", tag = "2")]
    #[serde(
        serialize_with = "enum_ser::<MatchKind, _>",
        deserialize_with = "enum_de::<MatchKind, _>"
    )]
    pub kind: i32,
    /// The value compared with the parameter's. Default: empty.
    #[prost(string, tag = "3")]
    pub value: String,
}

/// How a string is compared.
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
pub enum MatchKind {
    /// Equal to the value. The default.
    Exact = 0,
    /// Starts with the value (for paths, on a `/` boundary).
    Prefix = 1,
    /// Matches the regular expression, anchored at both ends.
    Regex = 2,
    /// The header is present, whatever its value (headers only).
    Present = 3,
}

/// A condition on the request path.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PathMatch {
    /// How to compare. Default: `exact`.
    #[prost(enumeration = "MatchKind", tag = "1")]
    #[serde(
        serialize_with = "enum_ser::<MatchKind, _>",
        deserialize_with = "enum_de::<MatchKind, _>"
    )]
    pub kind: i32,
    /// The value compared with the path. Required, starting with `/` unless a regex.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// A condition on one request header.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeaderMatch {
    /// Header name, case-insensitive. Required.
    #[prost(string, tag = "1")]
    pub name: String,
    /// How to compare. Default: `exact`.
    #[prost(enumeration = "MatchKind", tag = "2")]
    #[serde(
        serialize_with = "enum_ser::<MatchKind, _>",
        deserialize_with = "enum_de::<MatchKind, _>"
    )]
    pub kind: i32,
    /// The value compared with the header. Default: empty.
    #[prost(string, tag = "3")]
    pub value: String,
    /// Negates the condition. Default: false.
    #[prost(bool, tag = "4")]
    pub invert: bool,
}

/// A destination and its share of traffic.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WeightedDestination {
    /// Destination service (`name` or `name.namespace`). Required.
    #[prost(string, tag = "1")]
    pub service: String,
    /// Destination service port. Default: 0, the port the request was
    /// addressed to if the service has it, else the service's first HTTP port.
    #[prost(uint32, tag = "2")]
    pub port: u32,
    /// Only endpoints carrying all these labels (a subset). Default: none.
    #[prost(btree_map = "string, string", tag = "3")]
    pub subset: BTreeMap<String, String>,
    /// Relative weight. Default: 1 (0 means 1 when it is the only destination).
    #[prost(uint32, tag = "4")]
    pub weight: u32,
}

// === impl MatchKind ===

impl MatchKind {
    /// The kind, `exact` if the wire value is unknown (validation rejects that).
    pub fn from_wire(v: i32) -> Self {
        MatchKind::try_from(v).unwrap_or_default()
    }
}

// === impl Route ===

impl Route {
    /// Validates this resource on its own (references to other resources
    /// are checked by [`crate::MeshResources::validate`]). Paths are relative
    /// to the resource, e.g. `ports[1].port`.
    pub fn validate(&self) -> Result<(), crate::ValidationErrors> {
        let mut errs = Errors::default();
        self.validate_into(&FieldPath::root(), &mut errs);
        errs.finish()
    }

    pub(crate) fn validate_into(&self, path: &FieldPath, errs: &mut Errors) {
        errs.name(&path.field("name"), &self.name);
        if !self.namespace.is_empty() {
            errs.name(&path.field("namespace"), &self.namespace);
        }
        errs.name(&path.field("service"), &self.service);
        if self.rules.is_empty() {
            errs.push(&path.field("rules"), "at least one rule is required");
        }
        for (i, rule) in self.rules.iter().enumerate() {
            rule.validate_into(&path.item("rules", i), errs);
        }
    }
}

// === impl RouteRule ===

impl RouteRule {
    pub(crate) fn validate_into(&self, path: &FieldPath, errs: &mut Errors) {
        for (i, m) in self.matches.iter().enumerate() {
            let mp = path.item("matches", i);
            if let Some(p) = &m.path {
                let pp = mp.field("path");
                errs.length(&pp.field("value"), &p.value, MAX_VALUE_BYTES);
                errs.enum_value::<MatchKind>(&pp.field("kind"), p.kind);
                match MatchKind::from_wire(p.kind) {
                    MatchKind::Regex => regex_ok(&pp.field("value"), &p.value, errs),
                    MatchKind::Present => errs.push(
                        &pp.field("kind"),
                        "\"present\" applies to headers, not paths",
                    ),
                    _ if !p.value.starts_with('/') => errs.push(
                        &pp.field("value"),
                        format!("{:?} must start with '/'", p.value),
                    ),
                    _ => {}
                }
            }
            for (j, h) in m.headers.iter().enumerate() {
                let hp = mp.item("headers", j);
                errs.length(&hp.field("name"), &h.name, MAX_TOKEN_BYTES);
                errs.length(&hp.field("value"), &h.value, MAX_VALUE_BYTES);
                if h.name.is_empty() || http_token(&h.name).is_none() {
                    errs.push(
                        &hp.field("name"),
                        format!("{:?} is not a valid header name", h.name),
                    );
                }
                errs.enum_value::<MatchKind>(&hp.field("kind"), h.kind);
                if MatchKind::from_wire(h.kind) == MatchKind::Regex {
                    regex_ok(&hp.field("value"), &h.value, errs);
                }
            }
            for (j, q) in m.query_params.iter().enumerate() {
                let qp = mp.item("query_params", j);
                errs.length(&qp.field("name"), &q.name, MAX_TOKEN_BYTES);
                errs.length(&qp.field("value"), &q.value, MAX_VALUE_BYTES);
                if q.name.is_empty() {
                    errs.push(&qp.field("name"), "a query parameter name is required");
                }
                errs.enum_value::<MatchKind>(&qp.field("kind"), q.kind);
                if MatchKind::from_wire(q.kind) == MatchKind::Regex {
                    regex_ok(&qp.field("value"), &q.value, errs);
                }
            }
            errs.length(&mp.field("method"), &m.method, MAX_TOKEN_BYTES);
            if !m.method.is_empty() && http_token(&m.method).is_none() {
                errs.push(
                    &mp.field("method"),
                    format!("{:?} is not a valid HTTP method", m.method),
                );
            }
        }
        for (i, d) in self.destinations.iter().enumerate() {
            let dp = path.item("destinations", i);
            for (k, v) in &d.subset {
                let sp = dp.field("subset");
                if errs.length(&sp, k, MAX_VALUE_BYTES) {
                    errs.length(&sp.field(k), v, MAX_VALUE_BYTES);
                }
            }
            errs.name(&dp.field("service"), &d.service);
            errs.port(&dp.field("port"), d.port, true);
            if d.weight == 0 && self.destinations.len() > 1 {
                errs.push(
                    &dp.field("weight"),
                    "0 must be at least 1 when there are several destinations",
                );
            }
        }
        errs.duration_at_most(&path.field("timeout"), self.timeout_ms, 86_400_000);
        if let Some(r) = &self.retry {
            r.validate_into(&path.field("retry"), self.timeout_ms, errs);
        }
        if let Some(f) = &self.fault {
            f.validate_into(&path.field("fault"), errs);
        }
        if let Some(m) = &self.mirror {
            m.validate_into(&path.field("mirror"), errs);
        }
        if let Some(h) = &self.request_headers {
            h.validate_into(&path.field("request_headers"), errs);
        }
        if let Some(h) = &self.response_headers {
            h.validate_into(&path.field("response_headers"), errs);
        }
        if let Some(r) = &self.redirect {
            let rp = path.field("redirect");
            if !matches!(r.scheme.as_str(), "" | "http" | "https") {
                errs.push(
                    &rp.field("scheme"),
                    format!("{:?} is not http or https", r.scheme),
                );
            }
            errs.length(&rp.field("host"), &r.host, MAX_VALUE_BYTES);
            if r.host
                .contains(|c: char| "/?#@ ".contains(c) || c.is_control())
            {
                errs.push(
                    &rp.field("host"),
                    format!("{:?} is not a host name", r.host),
                );
            }
            errs.port(&rp.field("port"), r.port, true);
            paths_ok(&rp, &r.path, &r.replace_prefix, &r.with_prefix, errs);
            if !matches!(r.status_code, 0 | 301 | 302 | 303 | 307 | 308) {
                errs.push(
                    &rp.field("status_code"),
                    format!("{} is not 301, 302, 303, 307 or 308", r.status_code),
                );
            }
            if self.rewrite.is_some() {
                errs.push(
                    &path.field("rewrite"),
                    "a rule that redirects sends nothing upstream to rewrite",
                );
            }
        }
        if let Some(r) = &self.rewrite {
            let rp = path.field("rewrite");
            paths_ok(&rp, &r.path, &r.replace_prefix, &r.with_prefix, errs);
            errs.length(&rp.field("authority"), &r.authority, MAX_VALUE_BYTES);
            if r.authority
                .contains(|c: char| "/?#@ ".contains(c) || c.is_control())
            {
                errs.push(
                    &rp.field("authority"),
                    format!("{:?} is not an authority (host[:port])", r.authority),
                );
            }
        }
    }
}

/// The path fields of a redirect or rewrite: absolute paths, and a whole
/// path or a prefix replacement, not both.
fn paths_ok(path: &FieldPath, whole: &str, prefix: &str, with: &str, errs: &mut Errors) {
    for (name, value) in [
        ("path", whole),
        ("replace_prefix", prefix),
        ("with_prefix", with),
    ] {
        errs.length(&path.field(name), value, MAX_VALUE_BYTES);
        if !value.is_empty() && !value.starts_with('/') {
            errs.push(&path.field(name), format!("{value:?} must start with '/'"));
        }
        if value.contains(|c: char| c == '?' || c == '#' || c.is_whitespace() || c.is_control()) {
            errs.push(&path.field(name), format!("{value:?} is not a path"));
        }
    }
    if !whole.is_empty() && !prefix.is_empty() {
        errs.push(
            &path.field("replace_prefix"),
            "a whole path and a prefix replacement exclude each other",
        );
    }
    if prefix.is_empty() && !with.is_empty() {
        errs.push(&path.field("with_prefix"), "needs replace_prefix");
    }
}

pub(crate) fn http_token(s: &str) -> Option<&str> {
    let ok = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    ok.then_some(s)
}

/// Regexes are compiled by the proxy; here we only reject what can never be
/// valid without pulling a regex engine into the type crate.
fn regex_ok(path: &FieldPath, value: &str, errs: &mut Errors) {
    if value.is_empty() {
        errs.push(path, "a regex must not be empty");
    }
    let mut depth = 0i32;
    let mut escaped = false;
    for c in value.chars() {
        match (escaped, c) {
            (true, _) => escaped = false,
            (false, '\\') => escaped = true,
            (false, '(') => depth += 1,
            (false, ')') => depth -= 1,
            _ => {}
        }
        if depth < 0 {
            break;
        }
    }
    if depth != 0 {
        errs.push(path, format!("{value:?} has unbalanced parentheses"));
    }
}
