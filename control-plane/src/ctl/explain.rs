//! `sanectl explain request`: where a request sent through a proxy would go
//! and why, computed by the proxy crate itself. The config the control plane
//! last sent the proxy is compiled with [`sane_proxy::config::Snapshot`]
//! (the proxy's own compiler), the path normalized with the proxy's
//! normalization, the host resolved in its route table, and the rule chosen
//! by [`sane_proxy::route::PortRoute::matching_rule`], the function its
//! route stage calls. Only the weighted draw among the rule's destinations
//! is random in the proxy (an unseeded RNG per request), so explain reports
//! every destination with its weight instead of one pick. Authorization is
//! judged with the proxy's policy matcher against the policies the
//! destination's sidecars enforce.

use crate::client::ApiClient;
use crate::error::Error;
use sane_proxy::config::{PolicySource, Snapshot};
use sane_proxy::policy::authz::{AuthzPolicies, Caller, HttpOperation, Operation};
use sane_proxy::route::Rule;
use sane_xds_proto::resources::qualify;
use sane_xds_proto::{AuthorizationPolicy, Bootstrap, MeshResources, Node};
use serde::Serialize;
use serde_json::{json, Value};

/// The request to explain.
#[derive(Debug, Clone, Default)]
pub struct RequestSpec {
    /// Node id of the proxy the request is sent through.
    pub from: String,
    /// `host[:port]` as the app addresses it.
    pub host: String,
    /// Path (and query).
    pub path: String,
    /// Method. Default `GET`.
    pub method: String,
    /// Request headers.
    pub headers: Vec<(String, String)>,
}

/// What the proxy would do.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// The proxy.
    pub from: String,
    /// Registry revision of its config.
    pub revision: u64,
    /// Method, host and the path after normalization.
    pub request: Value,
    /// `name.namespace` of the service the host resolves to.
    pub service: String,
    /// The service port.
    pub port: u16,
    /// Its protocol.
    pub protocol: String,
    /// `namespace/name` of the route, if one applies.
    pub route: Option<String>,
    /// Index of the chosen rule.
    pub rule: usize,
    /// Why that rule and not the ones before it.
    pub why: Vec<String>,
    /// The rule's destinations: the proxy draws one per request by weight.
    pub destinations: Vec<ExplainedDestination>,
    /// The rule's fault injection, if any.
    pub fault: Option<Value>,
    /// Whole-request timeout in milliseconds, if any.
    pub timeout_ms: Option<u64>,
    /// Retries, mirroring and header rewrites of the rule.
    pub policies: Vec<String>,
    /// Destination policies of the destination services.
    pub destination_policies: Vec<String>,
    /// Authorization at the destination's sidecars.
    pub authorization: Vec<AuthzVerdict>,
}

/// One weighted destination.
#[derive(Debug, Clone, Serialize)]
pub struct ExplainedDestination {
    /// Cluster name: `service.namespace:port[subset]`.
    pub cluster: String,
    /// Its weight.
    pub weight: u32,
    /// Its share of the rule's requests, 0-1.
    pub share: f64,
    /// The endpoints the balancer chooses among.
    pub endpoints: Vec<Value>,
}

/// The authorization decision of one destination service's sidecars.
#[derive(Debug, Clone, Serialize)]
pub struct AuthzVerdict {
    /// Service whose sidecars decide.
    pub service: String,
    /// Policies that apply (`namespace/name`).
    pub policies: Vec<String>,
    /// `allow` or `deny: <reason>`.
    pub verdict: String,
}

/// Explains `spec`: fetches the proxy's config and the destination's
/// authorization policies from the control plane.
pub async fn explain(client: &ApiClient, spec: &RequestSpec) -> Result<Explanation, Error> {
    let status = client
        .json(http::Method::GET, &proxy_path(&spec.from), None)
        .await?;
    let config = client.proxy_config(&spec.from).await?;
    let mesh: MeshResources =
        serde_json::from_value(config["resources"].clone()).map_err(|e| Error::Ctl {
            field: format!("the config of proxy {}", spec.from),
            message: e.to_string(),
        })?;
    let authz_list = client
        .json(http::Method::GET, "/api/v1/authorization_policies", None)
        .await?;
    let authz: Vec<AuthorizationPolicy> = authz_list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| serde_json::from_value(v.clone()).ok())
        .collect();
    let namespace = status["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    let revision = config["revision"].as_u64().unwrap_or(0);
    explain_with(spec, &namespace, revision, mesh, &authz)
}

fn proxy_path(id: &str) -> String {
    let enc: String = id
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("/api/v1/proxies/{enc}")
}

/// [`explain`] on a config at hand: `mesh` is what proxy `spec.from` (of
/// `namespace`) holds, `authz` every authorization policy of the registry.
pub fn explain_with(
    spec: &RequestSpec,
    namespace: &str,
    revision: u64,
    mesh: MeshResources,
    authz: &[AuthorizationPolicy],
) -> Result<Explanation, Error> {
    let ctl = |field: &str, message: String| Error::Ctl {
        field: field.to_string(),
        message,
    };
    let bootstrap = Bootstrap {
        node: Node {
            id: spec.from.clone(),
            namespace: namespace.to_string(),
            ..Default::default()
        },
        resources: mesh.clone(),
        ..Default::default()
    };
    let origin = format!("the config of proxy {}", spec.from);
    let snapshot = Snapshot::compile_from(bootstrap, PolicySource::ControlPlane, 1, None, &origin)
        .map_err(|e| ctl("--from", e.to_string()))?;

    let method = if spec.method.is_empty() {
        "GET"
    } else {
        &spec.method
    };
    let mut builder = http::Request::builder()
        .method(method)
        .uri(format!("http://{}{}", spec.host, spec.path));
    for (k, v) in &spec.headers {
        builder = builder.header(k, v);
    }
    let mut req = builder
        .body(())
        .map_err(|e| ctl("--host/--path/--header", e.to_string()))?;
    sane_proxy::stack::normalize_path(&mut req, &snapshot.bootstrap.http.path_normalization)
        .map_err(|e| ctl("--path", e.to_string()))?;
    let (host, port) =
        sane_proxy::protocol::http::target_ref(&req).map_err(|e| ctl("--host", e.to_string()))?;
    let route = snapshot.routes.resolve(&host, port).ok_or_else(|| {
        let known: Vec<String> = mesh.services.iter().map(|s| s.key()).collect();
        ctl(
            "--host",
            format!(
                "{:?} is no HTTP service port proxy {} knows (its services: {})",
                spec.host,
                spec.from,
                known.join(", ")
            ),
        )
    })?;
    let (index, rule) = route
        .matching_rule(&req)
        .map_err(|e| ctl("--path/--header", e.to_string()))?;

    let route_resource = route.route_name.as_ref().and_then(|name| {
        mesh.routes
            .iter()
            .find(|r| &r.name == name && qualify(&r.service, &r.namespace) == route.service.key())
    });
    let route_key = route_resource.map(|r| {
        format!(
            "{}/{}",
            sane_xds_proto::namespace_or_default(&r.namespace),
            r.name
        )
    });
    let mut why = Vec::new();
    for (i, r) in route.rules.iter().enumerate().take(index) {
        let _ = r;
        why.push(format!("rule {i}: no match holds"));
    }
    let chosen_matches = route_resource
        .and_then(|r| r.rules.get(index))
        .map(|r| r.matches.clone())
        .unwrap_or_default();
    match rule.matching(&req) {
        Some(Some(m)) => why.push(format!(
            "rule {index}: matches[{m}] holds: {}",
            chosen_matches
                .get(m)
                .map(|x| serde_json::to_string(x).unwrap_or_default())
                .unwrap_or_default()
        )),
        _ if route_resource.is_none() => {
            why.push("no route: the service's one default rule".to_string())
        }
        _ => why.push(format!("rule {index}: has no matches, takes every request")),
    }

    let total: u32 = rule.destinations().iter().map(|(_, w)| *w).sum();
    let destinations = destinations_of(rule, total);
    let fault = rule.policies.fault.as_ref().map(|f| {
        json!({
            "delay": f.delay().map(|(d, s)| json!({"ms": d.as_millis() as u64, "percent": s * 100.0})),
            "abort": f.abort().map(|(a, s)| json!({"http_status": a.status, "grpc_status": a.grpc_status, "percent": s * 100.0})),
        })
    });
    let mut policies = Vec::new();
    if let Some(r) = &rule.policies.retry {
        policies.push(format!("retry: {r:?}"));
    }
    if let Some(m) = &rule.policies.mirror {
        policies.push(format!("mirror: {m:?}"));
    }
    if rule.policies.request_headers.is_some() || rule.policies.response_headers.is_some() {
        policies.push("header rewrites".to_string());
    }

    let dest_services: Vec<String> = {
        let mut v: Vec<String> = rule
            .destinations()
            .iter()
            .map(|(c, _)| c.name.split(':').next().unwrap_or_default().to_string())
            .collect();
        v.dedup();
        v
    };
    let destination_policies = mesh
        .policies
        .iter()
        .filter(|p| dest_services.contains(&qualify(&p.service, &p.namespace)))
        .map(|p| {
            format!(
                "{}/{}",
                sane_xds_proto::namespace_or_default(&p.namespace),
                p.name
            )
        })
        .collect();
    let caller = caller_identity(&spec.from, namespace, &mesh);
    let authorization = dest_services
        .iter()
        .map(|svc| authz_verdict(svc, authz, &mesh, caller.as_deref(), &req, route.port))
        .collect();

    Ok(Explanation {
        from: spec.from.clone(),
        revision,
        request: json!({
            "method": method,
            "host": spec.host,
            "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
            "headers": spec.headers.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>(),
        }),
        service: route.service.key().to_string(),
        port: route.port,
        protocol: route.protocol.name().to_string(),
        route: route_key,
        rule: index,
        why,
        destinations,
        fault,
        timeout_ms: rule.timeout.map(|t| t.as_millis() as u64),
        policies,
        destination_policies,
        authorization,
    })
}

fn destinations_of(rule: &Rule, total: u32) -> Vec<ExplainedDestination> {
    rule.destinations()
        .iter()
        .map(|(c, w)| ExplainedDestination {
            cluster: c.name.clone(),
            weight: *w,
            share: f64::from(*w) / f64::from(total.max(1)),
            endpoints: c
                .endpoints
                .iter()
                .map(|e| {
                    json!({
                        "address": e.connect_addr.to_string(),
                        "via_sidecar": e.via_sidecar.is_some(),
                        "identity": &*e.identity,
                        "labels": e.labels,
                    })
                })
                .collect(),
        })
        .collect()
}

/// The SPIFFE id the proxy presents: its node id is
/// `<service account>.<namespace>[~<instance>]`, in the trust domain of the
/// identities its config names (`cluster.local` when none does).
fn caller_identity(node: &str, namespace: &str, mesh: &MeshResources) -> Option<String> {
    let base = node.split('~').next()?;
    let sa = base.strip_suffix(&format!(".{namespace}"))?;
    let domain = mesh
        .endpoints
        .iter()
        .find_map(|e| {
            e.identity
                .strip_prefix("spiffe://")
                .and_then(|rest| rest.split('/').next())
        })
        .unwrap_or("cluster.local");
    Some(format!("spiffe://{domain}/ns/{namespace}/sa/{sa}"))
}

fn authz_verdict(
    service: &str,
    all: &[AuthorizationPolicy],
    mesh: &MeshResources,
    caller: Option<&str>,
    req: &http::Request<()>,
    service_port: u16,
) -> AuthzVerdict {
    let (name, ns) = service.split_once('.').unwrap_or((service, "default"));
    let endpoints: Vec<_> = mesh
        .endpoints
        .iter()
        .filter(|e| e.service_key() == service)
        .collect();
    let applies = |p: &AuthorizationPolicy| {
        let ns_ok = sane_xds_proto::namespace_or_default(&p.namespace) == ns;
        let service_ok = p.service.is_empty() || p.service_key() == service;
        let selector_ok = p.selector.is_empty()
            || endpoints
                .iter()
                .any(|e| p.selector.iter().all(|(k, v)| e.labels.get(k) == Some(v)));
        ns_ok && service_ok && selector_ok
    };
    let applicable: Vec<AuthorizationPolicy> = all.iter().filter(|p| applies(p)).cloned().collect();
    let port = mesh
        .services
        .iter()
        .find(|s| s.name == name && sane_xds_proto::namespace_or_default(&s.namespace) == ns)
        .and_then(|s| s.ports.iter().find(|p| p.port == u32::from(service_port)))
        .and_then(|sp| endpoints.first().map(|e| e.workload_port(sp)))
        .unwrap_or(u32::from(service_port));
    let verdict = AuthzPolicies::all(&applicable).evaluate(
        Caller { principal: caller },
        Operation {
            port: u16::try_from(port).unwrap_or(service_port),
            http: Some(HttpOperation {
                method: req.method().as_str(),
                path: req.uri().path(),
                headers: req.headers(),
            }),
        },
    );
    AuthzVerdict {
        service: service.to_string(),
        policies: applicable
            .iter()
            .map(|p| {
                format!(
                    "{}/{}",
                    sane_xds_proto::namespace_or_default(&p.namespace),
                    p.name
                )
            })
            .collect(),
        verdict: match verdict.denied {
            None => "allow".to_string(),
            Some(reason) => format!("deny: {reason}"),
        },
    }
}

/// The explanation as text for a terminal.
pub fn render(e: &Explanation) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "request: {} {}{} through {} (config revision {})\n",
        e.request["method"].as_str().unwrap_or(""),
        e.request["host"].as_str().unwrap_or(""),
        e.request["path"].as_str().unwrap_or(""),
        e.from,
        e.revision
    ));
    out.push_str(&format!(
        "service: {} port {} ({})\n",
        e.service, e.port, e.protocol
    ));
    match &e.route {
        Some(r) => out.push_str(&format!("rule: {} of route {r}\n", e.rule)),
        None => out.push_str("rule: the default (no route for this service)\n"),
    }
    for w in &e.why {
        out.push_str(&format!("  {w}\n"));
    }
    out.push_str("destinations (one drawn per request by weight):\n");
    for d in &e.destinations {
        out.push_str(&format!(
            "  {}  weight {} ({:.0}%)\n",
            d.cluster,
            d.weight,
            d.share * 100.0
        ));
        for ep in &d.endpoints {
            out.push_str(&format!(
                "    endpoint {} identity {} labels {}\n",
                ep["address"].as_str().unwrap_or(""),
                ep["identity"]
                    .as_str()
                    .filter(|i| !i.is_empty())
                    .unwrap_or("-"),
                ep["labels"]
            ));
        }
        if d.endpoints.is_empty() {
            out.push_str("    no endpoints: the request would fail with 503 (UH)\n");
        }
    }
    match &e.fault {
        Some(f) => {
            if let Some(a) = f.get("abort").filter(|a| !a.is_null()) {
                out.push_str(&format!(
                    "fault: abort {} to {}% of requests (response flag FI)\n",
                    a["http_status"],
                    a["percent"].as_f64().unwrap_or_default()
                ));
            }
            if let Some(d) = f.get("delay").filter(|d| !d.is_null()) {
                out.push_str(&format!(
                    "fault: delay {}ms for {}% of requests (response flag DI)\n",
                    d["ms"],
                    d["percent"].as_f64().unwrap_or_default()
                ));
            }
        }
        None => out.push_str("fault: none\n"),
    }
    out.push_str(&format!(
        "timeout: {}\n",
        e.timeout_ms
            .map(|t| format!("{t}ms"))
            .unwrap_or_else(|| "none".into())
    ));
    for p in &e.policies {
        out.push_str(&format!("policy: {p}\n"));
    }
    for p in &e.destination_policies {
        out.push_str(&format!("destination policy: {p}\n"));
    }
    for a in &e.authorization {
        out.push_str(&format!(
            "authorization at {}: {} (policies: {})\n",
            a.service,
            a.verdict,
            if a.policies.is_empty() {
                "none".to_string()
            } else {
                a.policies.join(", ")
            }
        ));
    }
    out
}
