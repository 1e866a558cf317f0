//! `sanectl describe service NAME`: the service, its endpoints, the routes
//! and policies that apply to it, and which connected proxies hold it at
//! which version (ACKed or not).

use super::items;
use crate::client::ApiClient;
use crate::error::Error;
use crate::resource::{Kind, Resource};
use sane_xds_proto::resources::qualify;
use serde::Serialize;
use serde_json::Value;

/// Everything that applies to one service.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceDescription {
    /// The service.
    pub service: Value,
    /// Its endpoints.
    pub endpoints: Vec<Value>,
    /// Routes of the service, and routes of other services that send to it.
    pub routes: Vec<Value>,
    /// Destination policies of the service.
    pub policies: Vec<Value>,
    /// Authorization policies its sidecars enforce.
    pub authorization_policies: Vec<Value>,
    /// Proxies whose last config holds the service.
    pub proxies: Vec<ProxySync>,
}

/// Where one proxy stands with the config it was sent.
#[derive(Debug, Clone, Serialize)]
pub struct ProxySync {
    /// Node id.
    pub node: String,
    /// Serves the service (an endpoint points at it) or only calls it.
    pub role: &'static str,
    /// Its stream is open.
    pub connected: bool,
    /// Every type it requested is ACKed at the latest version.
    pub in_sync: bool,
    /// Per type: `acked/sent` versions, and the last NACK's text if any.
    pub types: Vec<TypeSync>,
}

/// One xDS type of one proxy.
#[derive(Debug, Clone, Serialize)]
pub struct TypeSync {
    /// `Service`, `Route`, ...
    pub type_name: String,
    /// Version sent last.
    pub sent: Option<String>,
    /// Version ACKed last.
    pub acked: Option<String>,
    /// The last NACK's reason.
    pub nack: Option<String>,
}

/// Gathers the description of service `key` (`namespace/name`).
pub async fn service(client: &ApiClient, key: &str) -> Result<ServiceDescription, Error> {
    let service = client.get(Kind::Service, key).await?;
    let (ns, name) = key.split_once('/').unwrap_or(("default", key));
    let qualified = format!("{name}.{ns}");
    let list = |kind: Kind| {
        let path = match kind {
            Kind::Endpoint => format!("/api/v1/endpoints?namespace={ns}&service={name}"),
            _ => format!("/api/v1/{}", kind.plural()),
        };
        async move { client.json(http::Method::GET, &path, None).await }
    };
    let endpoints = list(Kind::Endpoint).await?["items"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut routes = Vec::new();
    for r in items(Kind::Route, &list(Kind::Route).await?)? {
        if let Resource::Route(rt) = &r {
            let own = qualify(&rt.service, &rt.namespace) == qualified;
            let sends_to = rt
                .rules
                .iter()
                .flat_map(|rule| rule.destinations.iter())
                .any(|d| qualify(&d.service, &rt.namespace) == qualified);
            if own || sends_to {
                routes.push(r.to_json());
            }
        }
    }
    let mut policies = Vec::new();
    for p in items(Kind::Policy, &list(Kind::Policy).await?)? {
        if p.service_ref() == qualified {
            policies.push(p.to_json());
        }
    }
    let mut authorization_policies = Vec::new();
    for a in items(Kind::Authz, &list(Kind::Authz).await?)? {
        if let Resource::Authz(policy) = &a {
            let whole_namespace = policy.service.is_empty() && a.namespace() == ns;
            if a.service_ref() == qualified || whole_namespace {
                authorization_policies.push(a.to_json());
            }
        }
    }
    let status = client.proxies().await?;
    let mut proxies = Vec::new();
    for p in status["proxies"].as_array().into_iter().flatten() {
        let node = p["node"].as_str().unwrap_or_default().to_string();
        let serves = p["serves"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s.as_str() == Some(qualified.as_str()));
        let holds = serves || holds_service(client, &node, ns, name).await;
        if !holds {
            continue;
        }
        let types = p["types"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(t, s)| TypeSync {
                type_name: t.clone(),
                sent: s["version_sent"].as_str().map(str::to_string),
                acked: s["version_acked"].as_str().map(str::to_string),
                nack: s["last_nack"]["reason"].as_str().map(str::to_string),
            })
            .collect();
        proxies.push(ProxySync {
            node,
            role: if serves { "serves" } else { "calls" },
            connected: p["connected"].as_bool().unwrap_or(false),
            in_sync: p["in_sync"].as_bool().unwrap_or(false),
            types,
        });
    }
    Ok(ServiceDescription {
        service,
        endpoints,
        routes,
        policies,
        authorization_policies,
        proxies,
    })
}

/// True if the last config sent to `node` holds service `ns/name`.
async fn holds_service(client: &ApiClient, node: &str, ns: &str, name: &str) -> bool {
    let Ok(config) = client.proxy_config(node).await else {
        return false;
    };
    config["resources"]["services"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|s| {
            s["name"].as_str() == Some(name)
                && sane_xds_proto::namespace_or_default(s["namespace"].as_str().unwrap_or("")) == ns
        })
}

/// The description as text for a terminal.
pub fn render(d: &ServiceDescription) -> String {
    let mut out = String::new();
    let s = &d.service;
    out.push_str(&format!(
        "Service:    {}/{}\n",
        s["namespace"].as_str().unwrap_or("default"),
        s["name"].as_str().unwrap_or_default()
    ));
    out.push_str("Ports:     ");
    for p in s["ports"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            " {}:{}",
            p["name"].as_str().unwrap_or(""),
            p["port"]
        ));
    }
    out.push('\n');
    out.push_str(&format!("Endpoints:  {}\n", d.endpoints.len()));
    for e in &d.endpoints {
        out.push_str(&format!(
            "  {}:{} proxy_port {} identity {} labels {}\n",
            e["address"].as_str().unwrap_or(""),
            e["port"],
            e["proxy_port"],
            e["identity"]
                .as_str()
                .filter(|i| !i.is_empty())
                .unwrap_or("-"),
            e["labels"]
        ));
    }
    let names = |v: &[Value]| {
        v.iter()
            .map(|r| {
                format!(
                    "{}/{}",
                    r["namespace"].as_str().unwrap_or("default"),
                    r["name"].as_str().unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
    };
    for (title, list) in [
        ("Routes", &d.routes),
        ("Destination policies", &d.policies),
        ("Authorization policies", &d.authorization_policies),
    ] {
        let n = names(list);
        out.push_str(&format!(
            "{title}: {}\n",
            if n.is_empty() {
                "none".into()
            } else {
                n.join(", ")
            }
        ));
    }
    out.push_str("Proxies:\n");
    for p in &d.proxies {
        out.push_str(&format!(
            "  {} ({}) connected {} in sync {}\n",
            p.node, p.role, p.connected, p.in_sync
        ));
        for t in &p.types {
            out.push_str(&format!(
                "    {:<20} acked {} sent {}{}\n",
                t.type_name,
                t.acked.as_deref().unwrap_or("-"),
                t.sent.as_deref().unwrap_or("-"),
                t.nack
                    .as_deref()
                    .map(|n| format!("  last NACK: {n}"))
                    .unwrap_or_default()
            ));
        }
    }
    out
}
