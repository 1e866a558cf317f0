//! Per-proxy views (sidecar scoping): which slice of the registry one proxy
//! receives, decided by the node it announced in its first request.

use super::envoy::EnvoyResources;
use super::snapshot::{ResourceMap, XdsSnapshot};
use crate::error::Error;
use crate::resource::Kind;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{value::Kind as ValueKind, Value};
use sane_xds_proto::resources::qualify;
use sane_xds_proto::{namespace_or_default, TypeUrl};
use std::collections::{BTreeSet, HashMap};
use std::sync::OnceLock;
use tokio::time::Instant;

/// What a proxy asked to see, parsed from its `Node`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSpec {
    /// `node.id`.
    pub id: String,
    /// `node.metadata.namespace`, default `default`.
    pub namespace: String,
    /// `node.metadata.services`, qualified as `name.namespace`.
    pub services: BTreeSet<String>,
    /// `node.metadata.services` contained `*`: every service of the mesh.
    pub all_services: bool,
    /// `node.metadata.workload`, else `node.cluster`; for display only.
    pub workload: String,
    /// `node.user_agent_name` and its version (`gRPC Python 1.78.0`); for
    /// display only.
    pub user_agent: String,
}

/// The resources one proxy may receive, by type.
#[derive(Debug, Clone)]
pub struct ProxyView {
    /// The registry revision the view was computed from.
    pub revision: u64,
    /// When that revision's first write happened.
    pub written_at: Instant,
    /// Qualified keys of every service in the view.
    pub services: BTreeSet<String>,
    types: HashMap<TypeUrl, ResourceMap>,
    /// The node's namespace (Envoy listener names depend on it).
    pub(super) namespace: String,
    /// The view as Envoy resources, built on first use (see `type_url`).
    pub(super) envoy: OnceLock<EnvoyResources>,
}

// === impl NodeSpec ===

impl NodeSpec {
    /// A spec for tests and tools: `services` as the proxy would list them.
    pub fn new(id: &str, namespace: &str, services: &[&str]) -> NodeSpec {
        let mut spec = NodeSpec {
            id: id.to_string(),
            namespace: namespace_or_default(namespace).to_string(),
            services: BTreeSet::new(),
            all_services: false,
            workload: String::new(),
            user_agent: String::new(),
        };
        for s in services {
            spec.add_service(s);
        }
        spec
    }

    /// Parses the node of a stream's first request.
    pub fn from_node(node: Option<&Node>) -> Result<NodeSpec, Error> {
        let node = node.ok_or_else(|| Error::NodeMetadata {
            node: String::new(),
            field: "node",
            message: "the first request of a stream must carry the node".into(),
        })?;
        let bad = |field, message: String| Error::NodeMetadata {
            node: node.id.clone(),
            field,
            message,
        };
        if node.id.is_empty() {
            return Err(bad("id", "node.id must not be empty".into()));
        }
        let fields = node.metadata.as_ref().map(|m| &m.fields);
        let field = |name: &str| {
            fields
                .and_then(|f| f.get(name))
                .and_then(|v| v.kind.as_ref())
        };
        let namespace = match field("namespace") {
            None => String::new(),
            Some(ValueKind::StringValue(s)) => s.clone(),
            Some(_) => return Err(bad("namespace", "must be a string".into())),
        };
        let mut spec = NodeSpec::new(&node.id, &namespace, &[]);
        spec.user_agent = user_agent(node);
        spec.workload = match field("workload") {
            None => node.cluster.clone(),
            Some(ValueKind::StringValue(s)) => s.clone(),
            Some(_) => return Err(bad("workload", "must be a string".into())),
        };
        let listed: Vec<String> = match field("services") {
            None => Vec::new(),
            Some(ValueKind::StringValue(s)) => s.split(',').map(|s| s.trim().to_string()).collect(),
            Some(ValueKind::ListValue(l)) => l
                .values
                .iter()
                .map(|v| match &v.kind {
                    Some(ValueKind::StringValue(s)) => Ok(s.trim().to_string()),
                    _ => Err(bad("services", "list items must be strings".into())),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                let msg = "must be a list of strings or a comma-separated string";
                return Err(bad("services", msg.into()));
            }
        };
        for s in listed.iter().filter(|s| !s.is_empty()) {
            spec.add_service(s);
        }
        Ok(spec)
    }

    /// Adds `*`, `name`, `name.namespace` or `namespace/name`.
    fn add_service(&mut self, s: &str) {
        if s == "*" {
            self.all_services = true;
        } else if let Some((ns, name)) = s.split_once('/') {
            self.services.insert(format!("{name}.{ns}"));
        } else {
            self.services.insert(qualify(s, &self.namespace));
        }
    }
}

/// `node.user_agent_name` and `user_agent_version` (or build version), as
/// one string; empty when the node says nothing.
fn user_agent(node: &Node) -> String {
    use envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType;
    let version = match &node.user_agent_version_type {
        Some(UserAgentVersionType::UserAgentVersion(v)) => v.as_str(),
        _ => "",
    };
    format!("{} {version}", node.user_agent_name)
        .trim()
        .chars()
        .take(MAX_USER_AGENT_CHARS)
        .collect()
}

/// Longest user agent kept (the rest is cut): it is only shown.
const MAX_USER_AGENT_CHARS: usize = 128;

/// Builds node metadata fields for a client: the inverse of
/// [`NodeSpec::from_node`], used by tests and by proxies written in Rust.
pub fn node_metadata(
    namespace: &str,
    services: &[&str],
) -> envoy_types::pb::google::protobuf::Struct {
    let string = |s: &str| Value {
        kind: Some(ValueKind::StringValue(s.to_string())),
    };
    let list = Value {
        kind: Some(ValueKind::ListValue(
            envoy_types::pb::google::protobuf::ListValue {
                values: services.iter().map(|s| string(s)).collect(),
            },
        )),
    };
    envoy_types::pb::google::protobuf::Struct {
        fields: [
            ("namespace".to_string(), string(namespace)),
            ("services".to_string(), list),
        ]
        .into_iter()
        .collect(),
    }
}

// === impl ProxyView ===

impl ProxyView {
    /// The slice of `snapshot` that `spec` sees: its namespace's services,
    /// the services it lists, and (transitively) every destination and mirror
    /// target of a route of those; then the endpoints, routes and policies of
    /// those services, and the authorization policies and telemetry of its
    /// namespace.
    pub fn compute(snapshot: &XdsSnapshot, spec: &NodeSpec) -> ProxyView {
        let services_map = snapshot.of_kind(Kind::Service);
        let mut visible: BTreeSet<String> = spec.services.clone();
        for r in services_map.values() {
            if spec.all_services || r.resource.namespace() == spec.namespace {
                visible.insert(r.service.clone());
            }
        }
        let routes = snapshot.of_kind(Kind::Route);
        loop {
            let before = visible.len();
            let reached: Vec<String> = routes
                .values()
                .filter(|r| visible.contains(&r.service))
                .flat_map(|r| r.destinations.iter().cloned())
                .collect();
            visible.extend(reached);
            if visible.len() == before {
                break;
            }
        }
        let mut types = HashMap::new();
        for kind in Kind::ALL {
            let filtered: ResourceMap = snapshot
                .of_kind(kind)
                .iter()
                .filter(|(_, r)| match kind {
                    // Telemetry configures a namespace's proxies, not a service.
                    Kind::Telemetry => r.resource.namespace() == spec.namespace,
                    // An authorization policy goes to the workloads it
                    // targets, which live in its namespace.
                    Kind::Authz => {
                        visible.contains(&r.service) || r.resource.namespace() == spec.namespace
                    }
                    _ => visible.contains(&r.service),
                })
                .map(|(k, r)| (k.clone(), r.clone()))
                .collect();
            types.insert(kind.type_url(), filtered);
        }
        ProxyView {
            revision: snapshot.revision,
            written_at: snapshot.written_at,
            services: visible,
            types,
            namespace: spec.namespace.clone(),
            envoy: OnceLock::new(),
        }
    }

    /// The resources of type `t` in the view (listeners: none).
    pub fn resources(&self, t: TypeUrl) -> &ResourceMap {
        static EMPTY: ResourceMap = ResourceMap::new();
        self.types.get(&t).unwrap_or(&EMPTY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::test_support::snapshot;

    fn names(view: &ProxyView, t: TypeUrl) -> Vec<&str> {
        view.resources(t).keys().map(String::as_str).collect()
    }

    #[test]
    fn namespace_listed_services_and_route_destinations() {
        let snap = snapshot();
        let view = ProxyView::compute(&snap, &NodeSpec::new("p1", "shop", &["pay.billing"]));
        assert_eq!(
            names(&view, TypeUrl::Service),
            ["billing/pay", "inventory/backend", "shop/web"]
        );
        assert_eq!(
            names(&view, TypeUrl::Endpoint),
            [
                "billing/pay/10.0.0.4:8080",
                "inventory/backend/10.0.0.2:8080",
                "shop/web/10.0.0.1:8080"
            ]
        );
        assert_eq!(names(&view, TypeUrl::Route), ["shop/web"]);
        assert!(names(&view, TypeUrl::Listener).is_empty());

        let all = ProxyView::compute(&snap, &NodeSpec::new("p2", "x", &["*"]));
        assert_eq!(all.resources(TypeUrl::Service).len(), 4);
        let other = ProxyView::compute(&snap, &NodeSpec::new("p3", "inventory", &["billing/pay"]));
        assert_eq!(
            names(&other, TypeUrl::Service),
            ["billing/pay", "inventory/backend", "inventory/db"]
        );
        assert!(names(&other, TypeUrl::Route).is_empty());
    }

    #[test]
    fn mirror_targets_join_the_view() {
        use crate::registry::{Change, Op, Origin};
        use crate::resource::Resource;
        use sane_xds_proto::{MirrorPolicy, Route, RouteRule};
        let reg = crate::xds::test_support::registry();
        let route = Route {
            name: "web".into(),
            namespace: "shop".into(),
            service: "web".into(),
            rules: vec![RouteRule {
                mirror: Some(MirrorPolicy {
                    service: "db.inventory".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
        };
        reg.apply(Change {
            origin: Origin::Api,
            ops: vec![Op::Put {
                resource: Resource::Route(route),
                ttl: None,
            }],
        })
        .unwrap();
        let snap = XdsSnapshot::build(&reg.snapshot(), Instant::now(), None);
        let view = ProxyView::compute(&snap, &NodeSpec::new("p", "shop", &[]));
        assert_eq!(names(&view, TypeUrl::Service), ["inventory/db", "shop/web"]);
    }

    #[test]
    fn node_metadata_round_trips_and_rejects_bad_types() {
        let node = Node {
            id: "p1".into(),
            metadata: Some(node_metadata("shop", &["pay.billing", "db"])),
            ..Default::default()
        };
        let spec = NodeSpec::from_node(Some(&node)).unwrap();
        assert_eq!(
            spec,
            NodeSpec::new("p1", "shop", &["pay.billing", "db.shop"])
        );

        let mut bad = node.clone();
        bad.metadata.as_mut().unwrap().fields.insert(
            "services".into(),
            Value {
                kind: Some(ValueKind::NumberValue(1.0)),
            },
        );
        let err = NodeSpec::from_node(Some(&bad)).unwrap_err().to_string();
        assert!(err.contains("\"services\""), "{err}");
        assert!(NodeSpec::from_node(None).is_err());
        let default = NodeSpec::from_node(Some(&Node {
            id: "p".into(),
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(default.namespace, "default");
    }
}
