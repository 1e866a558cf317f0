//! The authorization decision: the workload's policies, compiled once per
//! config snapshot, evaluated against one caller and operation.
//!
//! Order (Istio's): a matching `deny` policy denies; with no `allow` policy
//! the request is allowed; a matching `allow` policy allows; otherwise it is
//! denied. `audit` policies and `dry_run` policies never change the result.
//!
//! Opaque TCP has no method, path or headers. A rule naming any of those
//! never matches TCP in an `allow` (or `audit`) policy, and in a `deny`
//! policy those parts are ignored, so the deny is stricter, not looser.

use http::HeaderMap;
use sane_xds_proto::{self as proto, AuthzAction};

/// Every policy one workload enforces.
#[derive(Clone, Debug, Default)]
pub struct AuthzPolicies {
    policies: Vec<Compiled>,
}

/// Who is calling.
#[derive(Clone, Copy, Debug)]
pub struct Caller<'a> {
    /// The SPIFFE id proven over mutual TLS; `None` for plaintext.
    pub principal: Option<&'a str>,
}

/// What is being called.
#[derive(Clone, Copy, Debug)]
pub struct Operation<'a> {
    /// The workload port.
    pub port: u16,
    /// Method, path and headers; `None` for opaque TCP.
    pub http: Option<HttpOperation<'a>>,
}

/// The HTTP parts of an operation.
#[derive(Clone, Copy, Debug)]
pub struct HttpOperation<'a> {
    /// Request method.
    pub method: &'a str,
    /// Request path, without the query.
    pub path: &'a str,
    /// Request headers.
    pub headers: &'a HeaderMap,
}

/// The outcome for one request or connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Why it is denied; `None`: allowed.
    pub denied: Option<String>,
    /// The dry-run policy that would have denied it (when it is allowed).
    pub dry_run_denied: Option<String>,
    /// The `audit` policies that matched.
    pub audited: Vec<String>,
}

/// The reason given when `allow` policies exist but none matched.
pub const NO_ALLOW_MATCHED: &str = "no allow policy matched";

#[derive(Clone, Debug)]
struct Compiled {
    /// `namespace/name`, for logs and metrics.
    name: String,
    action: AuthzAction,
    dry_run: bool,
    rules: Vec<proto::AuthzRule>,
}

// === impl AuthzPolicies ===

impl AuthzPolicies {
    /// The policies of `resources` that name the workload `service_key`
    /// (`name.namespace`) as their `service` and have no `selector` (a
    /// proxy configured from a file knows no labels of its own). Policies
    /// are validated before they get here.
    pub fn for_workload(resources: &[proto::AuthorizationPolicy], service_key: &str) -> Self {
        let targeting = resources
            .iter()
            .filter(|p| p.service_key() == service_key && p.selector.is_empty());
        Self::compile(targeting)
    }

    /// Every policy of `resources`: the control plane already chose those
    /// that target this proxy.
    pub fn all(resources: &[proto::AuthorizationPolicy]) -> Self {
        Self::compile(resources.iter())
    }

    fn compile<'p>(policies: impl Iterator<Item = &'p proto::AuthorizationPolicy>) -> Self {
        let policies = policies
            .map(|p| Compiled {
                name: format!("{}/{}", proto::namespace_or_default(&p.namespace), p.name),
                action: p.action(),
                dry_run: p.dry_run,
                rules: p.rules.clone(),
            })
            .collect();
        Self { policies }
    }

    /// How many policies are enforced.
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    /// True when no policy targets the workload (nothing to evaluate).
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Decides one request or connection.
    pub fn evaluate(&self, caller: Caller<'_>, op: Operation<'_>) -> Verdict {
        let enforced = decide(self.policies.iter().filter(|p| !p.dry_run), caller, op);
        let mut verdict = Verdict {
            denied: enforced,
            ..Verdict::default()
        };
        if verdict.denied.is_none() && self.policies.iter().any(|p| p.dry_run) {
            // What the decision would be with the dry-run policies enforced.
            verdict.dry_run_denied = decide(self.policies.iter(), caller, op);
        }
        verdict.audited = self
            .policies
            .iter()
            .filter(|p| p.action == AuthzAction::Audit && p.matches(caller, op))
            .map(|p| p.name.clone())
            .collect();
        verdict
    }
}

/// Istio's evaluation over `policies`: the reason for a denial, or `None`.
fn decide<'p>(
    policies: impl Iterator<Item = &'p Compiled> + Clone,
    caller: Caller<'_>,
    op: Operation<'_>,
) -> Option<String> {
    if let Some(p) = policies
        .clone()
        .find(|p| p.action == AuthzAction::Deny && p.matches(caller, op))
    {
        return Some(format!("deny policy {}", p.name));
    }
    let mut allows = policies
        .filter(|p| p.action == AuthzAction::Allow)
        .peekable();
    // No allow policy at all: allowed.
    allows.peek()?;
    if allows.any(|p| p.matches(caller, op)) {
        None
    } else {
        Some(NO_ALLOW_MATCHED.to_string())
    }
}

// === impl Compiled ===

impl Compiled {
    fn matches(&self, caller: Caller<'_>, op: Operation<'_>) -> bool {
        let lenient = self.action == AuthzAction::Deny;
        self.rules
            .iter()
            .any(|r| rule_matches(r, caller, op, lenient))
    }
}

/// `lenient`: HTTP-only conditions are ignored for TCP (deny policies).
fn rule_matches(
    r: &proto::AuthzRule,
    caller: Caller<'_>,
    op: Operation<'_>,
    lenient: bool,
) -> bool {
    let from = r.from.is_empty() || r.from.iter().any(|s| source_matches(s, caller));
    let to = r.to.is_empty() || r.to.iter().any(|o| operation_matches(o, op, lenient));
    let when = match op.http {
        Some(http) => r.when.iter().all(|c| condition_matches(c, http.headers)),
        None => r.when.is_empty() || lenient,
    };
    from && to && when
}

fn source_matches(s: &proto::AuthzSource, caller: Caller<'_>) -> bool {
    let principal = |pats: &[String]| match caller.principal {
        None => false,
        Some(id) => pats.iter().any(|p| principal_matches(p, id)),
    };
    let namespace = caller.principal.and_then(namespace_of);
    (s.principals.is_empty() || principal(&s.principals))
        && (s.not_principals.is_empty() || !principal(&s.not_principals))
        && (s.namespaces.is_empty()
            || namespace.is_some_and(|ns| s.namespaces.iter().any(|p| pattern_matches(p, ns))))
}

fn operation_matches(o: &proto::AuthzOperation, op: Operation<'_>, lenient: bool) -> bool {
    let port = o.ports.is_empty() || o.ports.iter().any(|p| *p == u32::from(op.port));
    let http_parts = !o.methods.is_empty() || !o.paths.is_empty() || !o.not_paths.is_empty();
    let http = match op.http {
        None => !http_parts || lenient,
        Some(h) => {
            (o.methods.is_empty() || o.methods.iter().any(|m| m.eq_ignore_ascii_case(h.method)))
                && (o.paths.is_empty() || o.paths.iter().any(|p| pattern_matches(p, h.path)))
                && !o.not_paths.iter().any(|p| pattern_matches(p, h.path))
        }
    };
    port && http
}

fn condition_matches(c: &proto::AuthzCondition, headers: &HeaderMap) -> bool {
    headers
        .get_all(c.header.as_str())
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| c.values.iter().any(|p| pattern_matches(p, v)))
}

/// `*` anything, `prefix*`, `*suffix`, else exact.
pub fn pattern_matches(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        true
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        value.ends_with(suffix)
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        value.starts_with(prefix)
    } else {
        pattern == value
    }
}

/// A principal pattern is written with or without `spiffe://`; `id` always
/// has it.
fn principal_matches(pattern: &str, id: &str) -> bool {
    if pattern.starts_with("spiffe://") || pattern == "*" {
        pattern_matches(pattern, id)
    } else {
        pattern_matches(pattern, id.strip_prefix("spiffe://").unwrap_or(id))
    }
}

/// The namespace of `spiffe://<td>/ns/<ns>/sa/<sa>`.
fn namespace_of(id: &str) -> Option<&str> {
    let mut parts = id.strip_prefix("spiffe://")?.split('/').skip(1);
    match (parts.next(), parts.next()) {
        (Some("ns"), Some(ns)) if !ns.is_empty() => Some(ns),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{AuthorizationPolicy, AuthzCondition, AuthzOperation, AuthzRule, AuthzSource};

    const FRONTEND: &str = "spiffe://cluster.local/ns/web/sa/frontend";
    const BATCH: &str = "spiffe://cluster.local/ns/jobs/sa/batch";

    fn policy(name: &str, action: AuthzAction, rules: Vec<AuthzRule>) -> AuthorizationPolicy {
        AuthorizationPolicy {
            name: name.into(),
            namespace: "shop".into(),
            service: "api".into(),
            action: action.into(),
            rules,
            dry_run: false,
            selector: Default::default(),
        }
    }

    fn from(principals: &[&str]) -> AuthzRule {
        AuthzRule {
            from: vec![AuthzSource {
                principals: principals.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn paths(paths: &[&str]) -> AuthzRule {
        AuthzRule {
            to: vec![AuthzOperation {
                paths: paths.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn compile(ps: &[AuthorizationPolicy]) -> AuthzPolicies {
        AuthzPolicies::for_workload(ps, "api.shop")
    }

    fn check(p: &AuthzPolicies, principal: Option<&str>, method: &str, path: &str) -> Verdict {
        let headers = HeaderMap::new();
        p.evaluate(
            Caller { principal },
            Operation {
                port: 8080,
                http: Some(HttpOperation {
                    method,
                    path,
                    headers: &headers,
                }),
            },
        )
    }

    fn tcp(p: &AuthzPolicies, principal: Option<&str>, port: u16) -> Verdict {
        p.evaluate(Caller { principal }, Operation { port, http: None })
    }

    #[test]
    fn no_policy_allows_everyone() {
        let p = compile(&[]);
        assert!(p.is_empty());
        assert_eq!(check(&p, None, "GET", "/"), Verdict::default());
        // Policies of another workload do not apply.
        let mut other = policy("x", AuthzAction::Allow, vec![]);
        other.service = "db".into();
        assert!(compile(&[other]).is_empty());
    }

    #[test]
    fn an_allow_policy_denies_whoever_it_does_not_match() {
        let p = compile(&[policy("fe", AuthzAction::Allow, vec![from(&[FRONTEND])])]);
        assert_eq!(check(&p, Some(FRONTEND), "GET", "/").denied, None);
        assert_eq!(
            check(&p, Some(BATCH), "GET", "/").denied.as_deref(),
            Some(NO_ALLOW_MATCHED)
        );
        // Plaintext callers have no principal.
        assert!(check(&p, None, "GET", "/").denied.is_some());
        // An allow policy without rules allows nothing.
        let p = compile(&[policy("nothing", AuthzAction::Allow, vec![])]);
        assert!(check(&p, Some(FRONTEND), "GET", "/").denied.is_some());
    }

    #[test]
    fn principal_wildcards_and_istio_form() {
        for pat in [
            "spiffe://cluster.local/ns/web/*",
            "*/sa/frontend",
            "cluster.local/ns/web/sa/frontend",
            "cluster.local/ns/web/*",
            "*",
        ] {
            let p = compile(&[policy("fe", AuthzAction::Allow, vec![from(&[pat])])]);
            assert_eq!(check(&p, Some(FRONTEND), "GET", "/").denied, None, "{pat}");
            if pat != "*" {
                assert!(check(&p, Some(BATCH), "GET", "/").denied.is_some(), "{pat}");
            }
            // `*` is any authenticated caller, never a plaintext one.
            assert!(check(&p, None, "GET", "/").denied.is_some(), "{pat}");
        }
        let by_ns = AuthzRule {
            from: vec![AuthzSource {
                namespaces: vec!["we*".into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        let p = compile(&[policy("ns", AuthzAction::Allow, vec![by_ns])]);
        assert_eq!(check(&p, Some(FRONTEND), "GET", "/").denied, None);
        assert!(check(&p, Some(BATCH), "GET", "/").denied.is_some());
    }

    #[test]
    fn deny_beats_allow() {
        let p = compile(&[
            policy("all", AuthzAction::Allow, vec![AuthzRule::default()]),
            policy("no-batch", AuthzAction::Deny, vec![from(&[BATCH])]),
        ]);
        assert_eq!(check(&p, Some(FRONTEND), "GET", "/").denied, None);
        assert_eq!(
            check(&p, Some(BATCH), "GET", "/").denied.as_deref(),
            Some("deny policy shop/no-batch")
        );
        // `not_principals: ["*"]` denies every unauthenticated caller.
        let p = compile(&[policy(
            "require-mtls",
            AuthzAction::Deny,
            vec![AuthzRule {
                from: vec![AuthzSource {
                    not_principals: vec!["*".into()],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        )]);
        assert!(check(&p, None, "GET", "/").denied.is_some());
        assert_eq!(check(&p, Some(BATCH), "GET", "/").denied, None);
    }

    #[test]
    fn path_exact_prefix_suffix_and_method() {
        let p = compile(&[policy(
            "paths",
            AuthzAction::Allow,
            vec![paths(&["/health", "/api/*", "*.css"])],
        )]);
        let ok = |path| check(&p, Some(FRONTEND), "GET", path).denied.is_none();
        assert!(ok("/health"));
        assert!(!ok("/health/x"), "exact means exact");
        assert!(!ok("/healthz"));
        assert!(ok("/api/items"));
        assert!(!ok("/apix"));
        assert!(ok("/static/site.css"));
        let mut rule = paths(&["/admin/*"]);
        rule.to[0].methods = vec!["POST".into()];
        let p = compile(&[policy("admin", AuthzAction::Deny, vec![rule])]);
        assert!(check(&p, Some(FRONTEND), "POST", "/admin/x")
            .denied
            .is_some());
        assert!(check(&p, Some(FRONTEND), "GET", "/admin/x")
            .denied
            .is_none());
        let mut rule = paths(&["/api/*"]);
        rule.to[0].not_paths = vec!["/api/private*".into()];
        let p = compile(&[policy("api", AuthzAction::Allow, vec![rule])]);
        assert!(check(&p, Some(FRONTEND), "GET", "/api/x").denied.is_none());
        assert!(check(&p, Some(FRONTEND), "GET", "/api/private/x")
            .denied
            .is_some());
    }

    #[test]
    fn headers_in_when() {
        let rule = AuthzRule {
            when: vec![AuthzCondition {
                header: "x-team".into(),
                values: vec!["blue".into(), "re*".into()],
            }],
            ..Default::default()
        };
        let p = compile(&[policy("team", AuthzAction::Allow, vec![rule])]);
        let mut h = HeaderMap::new();
        let op = |h: &HeaderMap| {
            p.evaluate(
                Caller { principal: None },
                Operation {
                    port: 1,
                    http: Some(HttpOperation {
                        method: "GET",
                        path: "/",
                        headers: h,
                    }),
                },
            )
            .denied
        };
        assert!(op(&h).is_some());
        h.insert("x-team", "red".parse().unwrap());
        assert!(op(&h).is_none());
        h.insert("x-team", "green".parse().unwrap());
        assert!(op(&h).is_some());
    }

    #[test]
    fn tcp_ignores_http_parts_only_to_deny() {
        let mut allow = paths(&["/api/*"]);
        allow.from = from(&[FRONTEND]).from;
        let p = compile(&[policy("http-only", AuthzAction::Allow, vec![allow])]);
        // An allow rule with a path can never match a TCP connection.
        assert!(tcp(&p, Some(FRONTEND), 5432).denied.is_some());
        let mut deny = paths(&["/admin"]);
        deny.from = from(&[BATCH]).from;
        deny.to[0].ports = vec![5432];
        let p = compile(&[policy("no-batch-db", AuthzAction::Deny, vec![deny])]);
        assert!(tcp(&p, Some(BATCH), 5432).denied.is_some());
        assert!(
            tcp(&p, Some(BATCH), 6379).denied.is_none(),
            "port still counts"
        );
        assert!(tcp(&p, Some(FRONTEND), 5432).denied.is_none());
    }

    #[test]
    fn dry_run_reports_but_allows_and_audit_never_decides() {
        let mut dry = policy("would-deny", AuthzAction::Deny, vec![from(&[BATCH])]);
        dry.dry_run = true;
        let audit = policy("watch", AuthzAction::Audit, vec![paths(&["/admin/*"])]);
        let p = compile(&[dry, audit]);
        let v = check(&p, Some(BATCH), "GET", "/admin/x");
        assert_eq!(v.denied, None);
        assert_eq!(
            v.dry_run_denied.as_deref(),
            Some("deny policy shop/would-deny")
        );
        assert_eq!(v.audited, ["shop/watch"]);
        let v = check(&p, Some(FRONTEND), "GET", "/");
        assert_eq!(v, Verdict::default());
        // A dry-run allow policy: others would be denied, but pass.
        let mut dry_allow = policy("only-fe", AuthzAction::Allow, vec![from(&[FRONTEND])]);
        dry_allow.dry_run = true;
        let p = compile(&[dry_allow]);
        let v = check(&p, Some(BATCH), "GET", "/");
        assert_eq!(v.denied, None);
        assert_eq!(v.dry_run_denied.as_deref(), Some(NO_ALLOW_MATCHED));
    }
}
