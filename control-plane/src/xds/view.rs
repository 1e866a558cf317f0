//! Per-proxy views (sidecar scoping): which slice of the registry one proxy
//! receives, decided by the node it announced in its first request and by
//! what its token grants.
//!
//! What a proxy may see is bounded by its namespace (the token's, checked
//! by the server before a view is computed): services of other namespaces
//! only when they are exported to it (`Service.export_to`), whatever it asks
//! for (`services: ["*"]` never widens that); authorization policies and
//! telemetry of its own namespace only; and of the authorization policies
//! only those that target it: policies whose service or selector matches an
//! endpoint that points at one of its inbound listeners. A Sidecar scope
//! ([`super::scope`]) narrows the services further to its egress hosts.
//! Gateway configurations go to the proxies of their namespace whose node
//! labels carry every label of their `selector` (gateway proxies; a
//! sidecar normally matches none).

use super::client_input::{
    is_id_char, shown, MAX_INBOUND_ADDRESSES, MAX_LISTED_SERVICES, MAX_NODE_ID_BYTES,
    MAX_USER_AGENT_CHARS, MAX_WORKLOAD_BYTES,
};
use super::client_input::{MAX_LABELS, MAX_LABEL_BYTES};
use super::envoy::EnvoyResources;
use super::scope::SidecarScope;
use super::snapshot::{set_version, ResourceMap, XdsSnapshot};
use super::wire::{TypeWire, WireCache};
use crate::error::Error;
use crate::resource::{Kind, Resource};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{value::Kind as ValueKind, Value};
use sane_xds_proto::resources::qualify;
use sane_xds_proto::{namespace_or_default, Endpoint, TypeUrl};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
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
    /// `node.metadata.services` contained `*`: every service exported to
    /// its namespace.
    pub all_services: bool,
    /// `node.metadata.workload`, else `node.cluster`; for display only.
    pub workload: String,
    /// `node.metadata.inbound`: the bound addresses of the proxy's inbound
    /// listeners; an endpoint whose `address:proxy_port` is one of them is
    /// served by this proxy (an unspecified IP stands for [`Self::peer_ip`]).
    pub inbound: Vec<SocketAddr>,
    /// The IP the stream comes from (set by the server, not the client).
    pub peer_ip: Option<IpAddr>,
    /// The service account of the stream's token (set by the server): an
    /// endpoint with an identity is served by this proxy only if that
    /// identity is the token's.
    pub service_account: String,
    /// `node.user_agent_name` and its version (`gRPC Python 1.78.0`); for
    /// display only.
    pub user_agent: String,
    /// `node.metadata.labels`: the workload's labels, which a Sidecar's
    /// `workloadSelector` matches.
    pub labels: BTreeMap<String, String>,
}

/// The resources one proxy may receive, by type.
///
/// A view is a few shared parts: each type's resources are a [`TypeSlice`]
/// that every view depending on the same inputs ([`SliceKey`]) holds, so
/// 5 000 sidecars of one namespace, each serving its own endpoint, hold
/// 5 000 small views around one set of service, endpoint and route slices
/// (and one encoding of each) instead of 5 000 copies.
#[derive(Debug)]
pub struct ProxyView {
    /// The registry revision the view was computed from.
    pub revision: u64,
    /// When that revision's first write happened.
    pub written_at: Instant,
    /// Qualified keys of every service in the view.
    pub services: Arc<BTreeSet<String>>,
    /// Qualified keys of the services whose endpoints point at this proxy
    /// (whose authorization policies it enforces).
    pub serves: BTreeSet<String>,
    /// The Sidecar scope that limited the view (`namespace/name`), if any.
    pub scope: Option<String>,
    /// The generation of the scopes the view was computed under.
    pub scopes_generation: u64,
    types: HashMap<TypeUrl, Arc<TypeSlice>>,
    /// The node's namespace (Envoy listener names depend on it).
    pub(super) namespace: String,
    /// The view as Envoy resources, built on first use (see `type_url`).
    pub(super) envoy: OnceLock<EnvoyResources>,
    /// What wildcard subscriptions to Envoy types are sent, encoded once per
    /// view (mesh types: once per [`TypeSlice`]).
    pub(super) wire: WireCache,
}

/// One mesh type's resources in a view, the version of the set (what a
/// wildcard subscription holds) and their encoding (what it is sent, built
/// on first use): shared by every view whose [`SliceKey`] for the type is
/// the same.
#[derive(Debug)]
pub(super) struct TypeSlice {
    resources: ResourceMap,
    version: String,
    wire: OnceLock<Arc<TypeWire>>,
}

/// What one type's slice of a view depends on besides the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum SliceKey {
    /// Telemetry: the proxy's namespace.
    Namespace(String),
    /// Authorization policies: the namespace's that target the endpoints
    /// the proxy serves (their names).
    Served(String, Vec<String>),
    /// Services, endpoints, routes and destination policies: the services
    /// the proxy sees.
    Visible(Arc<VisibleKey>),
    /// Gateway configurations: those the proxy's labels select (their
    /// names).
    Selected(Vec<String>),
}

/// What the services a proxy sees depend on besides the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct VisibleKey {
    namespace: String,
    services: BTreeSet<String>,
    all_services: bool,
    /// The Sidecar scope chosen for the proxy (`namespace/name`).
    scope: Option<String>,
}

/// What a view depends on besides the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ViewKey {
    visible: Arc<VisibleKey>,
    /// Names of the endpoints the proxy serves (its authorization policies).
    served: Vec<String>,
    /// Names of the gateway configurations its labels select.
    gateways: Vec<String>,
}

/// Views shared between the streams of one snapshot whose nodes select the
/// same slice (same namespace, listed services, served endpoints and
/// Sidecar scope): a fleet of sidecars of one namespace computes one view
/// per push instead of one per proxy, and views that differ only in what
/// their proxies serve share every slice but the authorization policies'.
/// Holds the views of the latest revision and scope generation only.
#[derive(Debug, Default)]
pub struct ViewCache {
    latest: Mutex<(ViewTag, Arc<Parts>)>,
}

/// What a set of cached views was computed from: the snapshot's registry
/// revision and scope generation.
type ViewTag = (u64, u64);

/// A value computed once per key: the first caller computes it, callers
/// of the same key meanwhile wait for it, callers of other keys go on.
type Shared<K, V> = Mutex<HashMap<K, Arc<OnceLock<Arc<V>>>>>;

/// The views of one snapshot and the parts they share.
#[derive(Debug, Default)]
struct Parts {
    views: Shared<ViewKey, ProxyView>,
    visible: Shared<Arc<VisibleKey>, BTreeSet<String>>,
    slices: Shared<(TypeUrl, SliceKey), TypeSlice>,
}

/// The value of `key` in `map`, computed by `build` if it is the first
/// asked for.
fn shared<K: Eq + std::hash::Hash, V>(
    map: &Shared<K, V>,
    key: K,
    build: impl FnOnce() -> V,
) -> Arc<V> {
    let cell = map
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(key)
        .or_default()
        .clone();
    // Computed outside the map's lock: callers of other keys go on.
    cell.get_or_init(|| Arc::new(build())).clone()
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
            inbound: Vec::new(),
            peer_ip: None,
            service_account: String::new(),
            user_agent: String::new(),
            labels: BTreeMap::new(),
        };
        for s in services {
            spec.add_service(s);
        }
        spec
    }

    /// Parses the node of a stream's first request. Every field is bounded
    /// (see [`super::client_input`]); a field out of bounds is an error
    /// naming it, never kept.
    pub fn from_node(node: Option<&Node>) -> Result<NodeSpec, Error> {
        let node = node.ok_or_else(|| Error::NodeMetadata {
            node: String::new(),
            field: "node",
            message: "the first request of a stream must carry the node".into(),
        })?;
        let bad = |field, message: String| Error::NodeMetadata {
            node: shown(&node.id, 64),
            field,
            message,
        };
        if node.id.is_empty() {
            return Err(bad("id", "node.id must not be empty".into()));
        }
        if node.id.len() > MAX_NODE_ID_BYTES || !node.id.chars().all(is_id_char) {
            let msg = format!(
                "node.id ({} bytes) must be at most {MAX_NODE_ID_BYTES} bytes of letters, \
                 digits, '.', '-', '_' and '~'",
                node.id.len()
            );
            return Err(bad("id", msg));
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
        let dns_label = namespace.len() <= 63
            && namespace
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !dns_label {
            let msg = format!("{} is not a namespace name", shown(&namespace, 64));
            return Err(bad("namespace", msg));
        }
        let mut spec = NodeSpec::new(&node.id, &namespace, &[]);
        spec.user_agent = user_agent(node);
        spec.workload = match field("workload") {
            None => node.cluster.clone(),
            Some(ValueKind::StringValue(s)) => s.clone(),
            Some(_) => return Err(bad("workload", "must be a string".into())),
        };
        if spec.workload.len() > MAX_WORKLOAD_BYTES || !spec.workload.chars().all(is_id_char) {
            let msg = format!(
                "({} bytes) must be at most {MAX_WORKLOAD_BYTES} bytes of letters, digits, '.', \
                 '-', '_' and '~'",
                spec.workload.len()
            );
            return Err(bad("workload", msg));
        }
        let listed = string_list(field("services"), "services", &bad)?;
        if listed.len() > MAX_LISTED_SERVICES {
            let msg = format!(
                "{} entries; at most {MAX_LISTED_SERVICES} are accepted",
                listed.len()
            );
            return Err(bad("services", msg));
        }
        for s in listed.iter().filter(|s| !s.is_empty()) {
            let ok = s.len() <= 253
                && s.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | '/')
                });
            if !ok && s != "*" {
                return Err(bad(
                    "services",
                    format!("{} is not a service name", shown(s, 64)),
                ));
            }
            spec.add_service(s);
        }
        spec.labels = labels(field("labels"), &bad)?;
        let inbound = string_list(field("inbound"), "inbound", &bad)?;
        if inbound.len() > MAX_INBOUND_ADDRESSES {
            let msg = format!(
                "{} entries; at most {MAX_INBOUND_ADDRESSES} are accepted",
                inbound.len()
            );
            return Err(bad("inbound", msg));
        }
        for a in inbound.iter().filter(|a| !a.is_empty()) {
            let addr = a
                .parse::<SocketAddr>()
                .map_err(|_| bad("inbound", format!("{} is not an ip:port", shown(a, 64))))?;
            spec.inbound.push(addr);
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

    /// True if gateway configuration `g` goes to this proxy: same
    /// namespace, and its node labels carry every label of `g.selector`.
    pub fn selected_by(&self, g: &sane_xds_proto::Gateway) -> bool {
        namespace_or_default(&g.namespace) == self.namespace && g.selects(&self.labels)
    }

    /// True if `endpoint` is an instance this proxy serves: it has a
    /// sidecar (`proxy_port`), lives in the proxy's namespace, points at
    /// one of its inbound listeners, and carries no identity or the token's.
    pub fn serves(&self, endpoint: &Endpoint) -> bool {
        if endpoint.proxy_port == 0 || namespace_or_default(&endpoint.namespace) != self.namespace {
            return false;
        }
        if !endpoint.identity.is_empty() {
            let own = format!("/ns/{}/sa/{}", self.namespace, self.service_account);
            if self.service_account.is_empty() || !endpoint.identity.ends_with(&own) {
                return false;
            }
        }
        let Some(ip) = endpoint.ip().map(|ip| ip.to_canonical()) else {
            return false;
        };
        self.inbound.iter().any(|a| {
            let listens = if a.ip().is_unspecified() {
                self.peer_ip.map(|p| p.to_canonical())
            } else {
                Some(a.ip().to_canonical())
            };
            u32::from(a.port()) == endpoint.proxy_port && listens == Some(ip)
        })
    }
}

/// A metadata value that is a list of strings or one comma-separated string.
fn string_list(
    value: Option<&ValueKind>,
    name: &'static str,
    bad: &impl Fn(&'static str, String) -> Error,
) -> Result<Vec<String>, Error> {
    match value {
        None => Ok(Vec::new()),
        Some(ValueKind::StringValue(s)) => Ok(s.split(',').map(|s| s.trim().to_string()).collect()),
        Some(ValueKind::ListValue(l)) => l
            .values
            .iter()
            .map(|v| match &v.kind {
                Some(ValueKind::StringValue(s)) => Ok(s.trim().to_string()),
                _ => Err(bad(name, "list items must be strings".into())),
            })
            .collect(),
        Some(_) => Err(bad(
            name,
            "must be a list of strings or a comma-separated string".into(),
        )),
    }
}

/// `node.metadata.labels`: a struct of strings, at most [`MAX_LABELS`] of
/// them, each key and value at most [`MAX_LABEL_BYTES`].
fn labels(
    value: Option<&ValueKind>,
    bad: &impl Fn(&'static str, String) -> Error,
) -> Result<BTreeMap<String, String>, Error> {
    let fields = match value {
        None => return Ok(BTreeMap::new()),
        Some(ValueKind::StructValue(s)) => &s.fields,
        Some(_) => return Err(bad("labels", "must be a map of strings".into())),
    };
    if fields.len() > MAX_LABELS {
        let msg = format!(
            "{} entries; at most {MAX_LABELS} are accepted",
            fields.len()
        );
        return Err(bad("labels", msg));
    }
    let mut out = BTreeMap::new();
    for (k, v) in fields {
        let Some(ValueKind::StringValue(v)) = &v.kind else {
            let msg = format!("{}: values must be strings", shown(k, 64));
            return Err(bad("labels", msg));
        };
        if k.is_empty() || k.len() > MAX_LABEL_BYTES || v.len() > MAX_LABEL_BYTES {
            let msg = format!(
                "{}: keys (not empty) and values must be at most {MAX_LABEL_BYTES} bytes",
                shown(k, 64)
            );
            return Err(bad("labels", msg));
        }
        out.insert(k.clone(), v.clone());
    }
    Ok(out)
}

/// `node.user_agent_name` and `user_agent_version` (or build version), as
/// one string; empty when the node says nothing.
fn user_agent(node: &Node) -> String {
    use envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType;
    let version = match &node.user_agent_version_type {
        Some(UserAgentVersionType::UserAgentVersion(v)) => v.as_str(),
        _ => "",
    };
    let agent = format!("{} {version}", node.user_agent_name);
    shown(agent.trim(), MAX_USER_AGENT_CHARS)
}

/// Builds node metadata fields for a client: the inverse of
/// [`NodeSpec::from_node`], used by tests and by proxies written in Rust.
pub fn node_metadata(
    namespace: &str,
    services: &[&str],
) -> envoy_types::pb::google::protobuf::Struct {
    node_metadata_with_inbound(namespace, services, &[])
}

/// [`node_metadata`] of a proxy whose inbound listeners are bound to
/// `inbound`.
pub fn node_metadata_with_inbound(
    namespace: &str,
    services: &[&str],
    inbound: &[SocketAddr],
) -> envoy_types::pb::google::protobuf::Struct {
    let string = |s: &str| Value {
        kind: Some(ValueKind::StringValue(s.to_string())),
    };
    let list = |items: Vec<Value>| Value {
        kind: Some(ValueKind::ListValue(
            envoy_types::pb::google::protobuf::ListValue { values: items },
        )),
    };
    let mut fields: std::collections::BTreeMap<String, Value> = [
        ("namespace".to_string(), string(namespace)),
        (
            "services".to_string(),
            list(services.iter().map(|s| string(s)).collect()),
        ),
    ]
    .into_iter()
    .collect();
    if !inbound.is_empty() {
        let addrs = inbound.iter().map(|a| string(&a.to_string())).collect();
        fields.insert("inbound".to_string(), list(addrs));
    }
    envoy_types::pb::google::protobuf::Struct {
        fields: fields.into_iter().collect(),
    }
}

// === impl ProxyView ===

impl ProxyView {
    /// The slice of `snapshot` that `spec` sees. Services: those exported to
    /// its namespace that are in its namespace or that it lists (`*`: all of
    /// them), and (transitively) every exported destination and mirror
    /// target of a route of those. Endpoints and destination policies: those
    /// of the services in the view; routes: those whose service and every
    /// destination are in the view (a route to a service the proxy may not
    /// see is left out, so the proxy calls the service directly).
    /// Authorization policies: those of its namespace that target one of the
    /// endpoints it serves. Telemetry: its namespace's. Peer
    /// authentications: its namespace's and the mesh root namespace's.
    /// Gateways: those of its namespace whose selector its labels match. A
    /// Sidecar scope
    /// keeps of those services (listed, own or reached) only the ones its
    /// egress hosts admit.
    pub fn compute(snapshot: &XdsSnapshot, spec: &NodeSpec) -> ProxyView {
        let inputs = Inputs::of(snapshot, spec);
        ProxyView::compute_in(snapshot, spec, &inputs, &Parts::default())
    }

    /// [`ProxyView::compute`], taking the parts `parts` already holds and
    /// adding the ones it computes.
    fn compute_in(
        snapshot: &XdsSnapshot,
        spec: &NodeSpec,
        inputs: &Inputs<'_>,
        parts: &Parts,
    ) -> ProxyView {
        let scope = inputs.scope;
        let services = shared(&parts.visible, inputs.key.visible.clone(), || {
            visible_services(snapshot, spec, scope)
        });
        let mut types = HashMap::new();
        for kind in Kind::ALL {
            let key = match kind {
                Kind::Telemetry | Kind::PeerAuthn => SliceKey::Namespace(spec.namespace.clone()),
                Kind::Gateway => SliceKey::Selected(inputs.key.gateways.clone()),
                Kind::Authz => SliceKey::Served(spec.namespace.clone(), inputs.key.served.clone()),
                _ => SliceKey::Visible(inputs.key.visible.clone()),
            };
            let slice = shared(&parts.slices, (kind.type_url(), key), || {
                TypeSlice::new(snapshot, kind, spec, &services, &inputs.endpoints)
            });
            types.insert(kind.type_url(), slice);
        }
        ProxyView {
            revision: snapshot.revision,
            written_at: snapshot.written_at,
            services,
            serves: inputs.endpoints.iter().map(|e| e.service_key()).collect(),
            scope: inputs.key.visible.scope.clone(),
            scopes_generation: snapshot.scopes.generation,
            types,
            namespace: spec.namespace.clone(),
            envoy: OnceLock::new(),
            wire: WireCache::default(),
        }
    }

    /// The version of every resource of type `t` in the view (what a
    /// wildcard subscription holds).
    pub fn version(&self, t: TypeUrl) -> String {
        match self.types.get(&t) {
            Some(slice) => slice.version.clone(),
            None => set_version(self.resources(t).values()),
        }
    }

    /// The resources of type `t` in the view (listeners: none).
    pub fn resources(&self, t: TypeUrl) -> &ResourceMap {
        static EMPTY: ResourceMap = ResourceMap::new();
        self.types.get(&t).map_or(&EMPTY, |slice| &slice.resources)
    }

    /// What a wildcard subscription to mesh type `t` is sent, if the view
    /// holds the type: encoded once for every view sharing the slice.
    pub(super) fn mesh_wire(&self, t: TypeUrl) -> Option<Arc<TypeWire>> {
        let slice = self.types.get(&t)?;
        Some(
            slice
                .wire
                .get_or_init(|| {
                    let resources = slice.resources.values().cloned().collect();
                    Arc::new(TypeWire::new(slice.version.clone(), resources))
                })
                .clone(),
        )
    }

    /// A view of nothing at `revision`, for tests.
    #[cfg(test)]
    pub(crate) fn empty(revision: u64) -> ProxyView {
        ProxyView {
            revision,
            written_at: Instant::now(),
            services: Arc::default(),
            serves: BTreeSet::new(),
            scope: None,
            scopes_generation: 0,
            types: HashMap::new(),
            namespace: "default".into(),
            envoy: OnceLock::new(),
            wire: WireCache::default(),
        }
    }
}

// === impl TypeSlice ===

impl TypeSlice {
    /// The resources of `kind` a proxy of `spec`'s namespace that sees
    /// `visible` and serves `served` receives.
    fn new(
        snapshot: &XdsSnapshot,
        kind: Kind,
        spec: &NodeSpec,
        visible: &BTreeSet<String>,
        served: &[&Endpoint],
    ) -> TypeSlice {
        let resources: ResourceMap = snapshot
            .of_kind(kind)
            .iter()
            .filter(|(_, r)| match (&r.resource, kind) {
                // Telemetry configures a namespace's proxies, not a service.
                (_, Kind::Telemetry) => r.resource.namespace() == spec.namespace,
                // A gateway configuration goes to the gateway proxies of
                // its namespace that its selector picks, never further.
                (Resource::Gateway(g), _) => spec.selected_by(g),
                // Peer authentications: its namespace's and the mesh's
                // (root namespace); the proxy resolves its own mode from
                // them, so the set is the same for a whole namespace.
                (_, Kind::PeerAuthn) => {
                    let ns = r.resource.namespace();
                    ns == spec.namespace || ns == sane_xds_proto::MESH_ROOT_NAMESPACE
                }
                // An authorization policy goes to the sidecars of the
                // workloads it targets, never further.
                (Resource::Authz(a), _) => {
                    r.resource.namespace() == spec.namespace && served.iter().any(|e| a.targets(e))
                }
                (_, Kind::Route) => {
                    visible.contains(&r.service)
                        && r.destinations.iter().all(|d| visible.contains(d))
                }
                _ => visible.contains(&r.service),
            })
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect();
        TypeSlice {
            version: set_version(resources.values()),
            resources,
            wire: OnceLock::new(),
        }
    }
}

/// What a view is computed from besides the snapshot: the endpoints the
/// proxy serves, its Sidecar scope, and the view's key.
struct Inputs<'a> {
    endpoints: Vec<&'a Endpoint>,
    scope: Option<&'a SidecarScope>,
    key: ViewKey,
}

impl<'a> Inputs<'a> {
    fn of(snapshot: &'a XdsSnapshot, spec: &'a NodeSpec) -> Inputs<'a> {
        let served: Vec<(&String, &Endpoint)> = served(snapshot, spec).collect();
        let endpoints: Vec<&Endpoint> = served.iter().map(|(_, e)| *e).collect();
        let scope = scope_of(snapshot, spec, &endpoints);
        let visible = Arc::new(VisibleKey {
            namespace: spec.namespace.clone(),
            services: spec.services.clone(),
            all_services: spec.all_services,
            scope: scope.map(|s| format!("{}/{}", s.namespace, s.name)),
        });
        Inputs {
            key: ViewKey {
                visible,
                served: served.iter().map(|(n, _)| (*n).clone()).collect(),
                gateways: selected_gateways(snapshot, spec),
            },
            endpoints,
            scope,
        }
    }
}

/// The services a proxy of `spec` sees under `scope` (see
/// [`ProxyView::compute`]).
fn visible_services(
    snapshot: &XdsSnapshot,
    spec: &NodeSpec,
    scope: Option<&SidecarScope>,
) -> BTreeSet<String> {
    let services_map = snapshot.of_kind(Kind::Service);
    let exported: HashSet<&str> = services_map
        .values()
        .filter(|r| match &r.resource {
            Resource::Service(s) => {
                s.exported_to(&spec.namespace) && scope.is_none_or(|sc| sc.admits(s))
            }
            _ => false,
        })
        .map(|r| r.service.as_str())
        .collect();
    let mut visible: BTreeSet<String> = services_map
        .values()
        .filter(|r| exported.contains(r.service.as_str()))
        .filter(|r| {
            spec.all_services
                || r.resource.namespace() == spec.namespace
                || spec.services.contains(&r.service)
        })
        .map(|r| r.service.clone())
        .collect();
    let routes = snapshot.of_kind(Kind::Route);
    loop {
        let before = visible.len();
        let reached: Vec<String> = routes
            .values()
            .filter(|r| visible.contains(&r.service))
            .flat_map(|r| r.destinations.iter())
            .filter(|d| exported.contains(d.as_str()))
            .cloned()
            .collect();
        visible.extend(reached);
        if visible.len() == before {
            break;
        }
    }
    visible
}

/// The Sidecar scope of `spec`'s proxy, which serves `served`.
fn scope_of<'a>(
    snapshot: &'a XdsSnapshot,
    spec: &NodeSpec,
    served: &[&Endpoint],
) -> Option<&'a SidecarScope> {
    snapshot
        .scopes
        .for_proxy(&spec.namespace, &spec.labels, served)
}

/// Names of the gateway configurations of `snapshot` that select `spec`'s
/// proxy (a few per mesh: scanned per stream and push).
fn selected_gateways(snapshot: &XdsSnapshot, spec: &NodeSpec) -> Vec<String> {
    snapshot
        .of_kind(Kind::Gateway)
        .iter()
        .filter(|(_, r)| matches!(&r.resource, Resource::Gateway(g) if spec.selected_by(g)))
        .map(|(name, _)| name.clone())
        .collect()
}

/// The endpoints of `snapshot` that `spec`'s proxy serves, with their names
/// (in name order). Only the endpoints at its inbound IPs are looked at:
/// this runs per stream and push.
fn served<'a>(
    snapshot: &'a XdsSnapshot,
    spec: &'a NodeSpec,
) -> impl Iterator<Item = (&'a String, &'a Endpoint)> + 'a {
    let endpoints = snapshot.of_kind(Kind::Endpoint);
    let at: BTreeSet<&String> = spec
        .inbound
        .iter()
        .filter_map(|a| match a.ip() {
            ip if ip.is_unspecified() => spec.peer_ip,
            ip => Some(ip),
        })
        .flat_map(|ip| snapshot.endpoints_at(ip.to_canonical()))
        .collect();
    at.into_iter()
        .filter_map(|name| endpoints.get_key_value(name))
        .filter_map(|(name, r)| match &r.resource {
            Resource::Endpoint(e) if spec.serves(e) => Some((name, e)),
            _ => None,
        })
}

// === impl ViewCache ===

impl ViewCache {
    /// `spec`'s view of `snapshot`: shared with every stream that asked for
    /// the same slice of the same revision, computed by the first; its
    /// parts shared with every view of the revision that depends on the
    /// same inputs.
    pub fn view(&self, snapshot: &XdsSnapshot, spec: &NodeSpec) -> Arc<ProxyView> {
        let inputs = Inputs::of(snapshot, spec);
        let tag = (snapshot.revision, snapshot.scopes.generation);
        let parts = {
            let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
            if tag != latest.0 && tag.0 >= latest.0 .0 && tag.1 >= latest.0 .1 {
                *latest = (tag, Arc::default());
            }
            (tag == latest.0).then(|| latest.1.clone())
        };
        match parts {
            Some(parts) => shared(&parts.views, inputs.key.clone(), || {
                ProxyView::compute_in(snapshot, spec, &inputs, &parts)
            }),
            // A stream still on an older snapshot than the cached one.
            None => Arc::new(ProxyView::compute_in(
                snapshot,
                spec,
                &inputs,
                &Parts::default(),
            )),
        }
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

    fn put(reg: &crate::registry::Registry, resources: Vec<Resource>) {
        use crate::registry::{Change, Op, Origin};
        let ops = resources
            .into_iter()
            .map(|resource| Op::Put {
                resource,
                ttl: None,
            })
            .collect();
        reg.apply(Change {
            origin: Origin::Api,
            ops,
        })
        .unwrap();
    }

    #[test]
    fn other_namespaces_show_only_what_they_export() {
        use sane_xds_proto::{
            AuthorizationPolicy, Route, RouteRule, Service, Telemetry, WeightedDestination,
        };
        let reg = crate::xds::test_support::registry();
        let Some(Resource::Service(pay)) = reg
            .snapshot()
            .get(Kind::Service, "billing/pay")
            .map(|e| e.resource.clone())
        else {
            panic!("billing/pay in the fixture")
        };
        put(
            &reg,
            vec![
                Resource::Service(Service {
                    export_to: vec![".".into()],
                    ..pay
                }),
                Resource::Authz(AuthorizationPolicy {
                    name: "deny-all".into(),
                    namespace: "billing".into(),
                    service: "pay".into(),
                    ..Default::default()
                }),
                Resource::Telemetry(Telemetry {
                    name: "t".into(),
                    namespace: "billing".into(),
                    ..Default::default()
                }),
                // A route of `shop` into the hidden service.
                Resource::Route(Route {
                    name: "web".into(),
                    namespace: "shop".into(),
                    service: "web".into(),
                    rules: vec![RouteRule {
                        destinations: vec![WeightedDestination {
                            service: "pay.billing".into(),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                }),
            ],
        );
        let snap = XdsSnapshot::build(&reg.snapshot(), Instant::now(), None);
        // `*` and an explicit listing reach every exported service, never
        // the hidden one, its endpoints, or another namespace's policies
        // and telemetry.
        for asks in [&["*"][..], &["pay.billing", "billing/pay"][..]] {
            let view = ProxyView::compute(&snap, &NodeSpec::new("web.shop", "shop", asks));
            let services = names(&view, TypeUrl::Service);
            assert!(!services.contains(&"billing/pay"), "{services:?}");
            let endpoints = names(&view, TypeUrl::Endpoint);
            assert!(
                endpoints.iter().all(|e| !e.starts_with("billing/")),
                "{endpoints:?}"
            );
            assert!(names(&view, TypeUrl::AuthorizationPolicy).is_empty());
            assert!(names(&view, TypeUrl::Telemetry).is_empty());
            // The route into the hidden service is left out (the proxy
            // would reject a route to a service it does not know).
            assert!(names(&view, TypeUrl::Route).is_empty());
        }
        let all = ProxyView::compute(&snap, &NodeSpec::new("x.inventory", "inventory", &["*"]));
        assert_eq!(
            names(&all, TypeUrl::Service),
            ["inventory/backend", "inventory/db", "shop/web"]
        );
        // Its own namespace sees it.
        let own = ProxyView::compute(&snap, &NodeSpec::new("pay.billing", "billing", &[]));
        assert_eq!(names(&own, TypeUrl::Service), ["billing/pay"]);
        assert_eq!(names(&own, TypeUrl::Telemetry), ["billing/t"]);
    }

    #[test]
    fn peer_authentications_go_to_their_namespace_and_the_root_ones_to_all() {
        use sane_xds_proto::{PeerAuthentication, TlsMode, MESH_ROOT_NAMESPACE};
        let reg = crate::xds::test_support::registry();
        let pa = |ns: &str, name: &str| {
            Resource::PeerAuthn(PeerAuthentication {
                name: name.into(),
                namespace: ns.into(),
                mode: TlsMode::Strict.into(),
                ..Default::default()
            })
        };
        put(
            &reg,
            vec![
                pa(MESH_ROOT_NAMESPACE, "mesh"),
                pa("billing", "strict"),
                pa("shop", "strict"),
            ],
        );
        let snap = XdsSnapshot::build(&reg.snapshot(), Instant::now(), None);
        let shop = ProxyView::compute(&snap, &NodeSpec::new("web.shop", "shop", &["*"]));
        assert_eq!(
            names(&shop, TypeUrl::PeerAuthentication),
            ["istio-system/mesh", "shop/strict"]
        );
        let other = ProxyView::compute(&snap, &NodeSpec::new("x.inventory", "inventory", &[]));
        assert_eq!(
            names(&other, TypeUrl::PeerAuthentication),
            ["istio-system/mesh"]
        );
    }

    #[test]
    fn authorization_policies_go_to_the_sidecars_their_endpoints_point_at() {
        use sane_xds_proto::AuthorizationPolicy;
        let reg = crate::xds::test_support::registry();
        let ep = |service: &str, addr: &str, version: &str, identity: &str| {
            Resource::Endpoint(Endpoint {
                service: service.into(),
                namespace: "inventory".into(),
                address: addr.into(),
                port: 8080,
                proxy_port: 15006,
                identity: identity.into(),
                labels: [("version".to_string(), version.to_string())].into(),
                ..Default::default()
            })
        };
        let policy = |name: &str, service: &str, version: Option<&str>| {
            Resource::Authz(AuthorizationPolicy {
                name: name.into(),
                namespace: "inventory".into(),
                service: service.into(),
                selector: version
                    .map(|v| [("version".to_string(), v.to_string())].into())
                    .unwrap_or_default(),
                ..Default::default()
            })
        };
        put(
            &reg,
            vec![
                ep("backend", "10.1.0.1", "v1", ""),
                ep("backend", "10.1.0.2", "v2", ""),
                ep(
                    "db",
                    "10.1.0.3",
                    "v1",
                    "spiffe://cluster.local/ns/inventory/sa/db",
                ),
                policy("backend-deny", "backend", None),
                policy("v2-only", "", Some("v2")),
                policy("db-deny", "db", None),
            ],
        );
        let snap = XdsSnapshot::build(&reg.snapshot(), Instant::now(), None);
        let sidecar = |id: &str, inbound: &str, sa: &str| {
            let mut spec = NodeSpec::new(id, "inventory", &["*"]);
            spec.workload = "whatever-it-says".into();
            spec.inbound = vec![inbound.parse().unwrap()];
            spec.service_account = sa.into();
            ProxyView::compute(&snap, &spec)
        };
        let v1 = sidecar("a.inventory~1", "10.1.0.1:15006", "a");
        assert_eq!(
            names(&v1, TypeUrl::AuthorizationPolicy),
            ["inventory/backend-deny"]
        );
        assert_eq!(v1.serves.iter().collect::<Vec<_>>(), ["backend.inventory"]);
        let v2 = sidecar("a.inventory~2", "10.1.0.2:15006", "a");
        assert_eq!(
            names(&v2, TypeUrl::AuthorizationPolicy),
            ["inventory/backend-deny", "inventory/v2-only"]
        );
        // An unspecified inbound address stands for the stream's peer.
        let mut spec = NodeSpec::new("a.inventory~3", "inventory", &[]);
        spec.inbound = vec!["0.0.0.0:15006".parse().unwrap()];
        spec.peer_ip = Some("10.1.0.2".parse().unwrap());
        let peer = ProxyView::compute(&snap, &spec);
        assert_eq!(names(&peer, TypeUrl::AuthorizationPolicy).len(), 2);
        // An endpoint with an identity is served only under that identity.
        let db = sidecar("db.inventory", "10.1.0.3:15006", "db");
        assert_eq!(
            names(&db, TypeUrl::AuthorizationPolicy),
            ["inventory/db-deny"]
        );
        let impostor = sidecar("a.inventory~4", "10.1.0.3:15006", "a");
        assert!(names(&impostor, TypeUrl::AuthorizationPolicy).is_empty());
        // Nothing points at it: no policy at all, whatever it asks for.
        let client = sidecar("a.inventory~5", "10.9.9.9:15006", "a");
        assert!(names(&client, TypeUrl::AuthorizationPolicy).is_empty());
    }

    #[test]
    fn views_of_sidecars_serving_different_endpoints_share_all_but_their_policies() {
        use sane_xds_proto::AuthorizationPolicy;
        let reg = crate::xds::test_support::registry();
        let ep = |addr: &str| {
            Resource::Endpoint(Endpoint {
                service: "backend".into(),
                namespace: "inventory".into(),
                address: addr.into(),
                port: 8080,
                proxy_port: 15006,
                labels: [("pod".to_string(), addr.to_string())].into(),
                ..Default::default()
            })
        };
        let only = Resource::Authz(AuthorizationPolicy {
            name: "only-first".into(),
            namespace: "inventory".into(),
            selector: [("pod".to_string(), "10.1.0.1".to_string())].into(),
            ..Default::default()
        });
        put(&reg, vec![ep("10.1.0.1"), ep("10.1.0.2"), only]);
        let snap = XdsSnapshot::build(&reg.snapshot(), Instant::now(), None);
        let spec = |inbound: &str| {
            let mut spec = NodeSpec::new(inbound, "inventory", &["*"]);
            spec.inbound = vec![inbound.parse().unwrap()];
            spec
        };
        let cache = ViewCache::default();
        let first = cache.view(&snap, &spec("10.1.0.1:15006"));
        let second = cache.view(&snap, &spec("10.1.0.2:15006"));
        // Two views: each has its own policies, as computed alone.
        assert!(!Arc::ptr_eq(&first, &second));
        for (view, inbound) in [(&first, "10.1.0.1:15006"), (&second, "10.1.0.2:15006")] {
            let alone = ProxyView::compute(&snap, &spec(inbound));
            for t in TypeUrl::ALL {
                assert_eq!(names(view, t), names(&alone, t), "{t:?}");
                assert_eq!(view.version(t), alone.version(t), "{t:?}");
            }
        }
        assert_eq!(
            names(&first, TypeUrl::AuthorizationPolicy),
            ["inventory/only-first"]
        );
        assert!(names(&second, TypeUrl::AuthorizationPolicy).is_empty());
        // One copy of the rest, and one encoding of it.
        assert!(Arc::ptr_eq(&first.services, &second.services));
        for t in [TypeUrl::Service, TypeUrl::Endpoint, TypeUrl::Route] {
            assert!(Arc::ptr_eq(&first.types[&t], &second.types[&t]), "{t:?}");
            let (a, b) = (first.wire(t.into()), second.wire(t.into()));
            assert!(Arc::ptr_eq(&a, &b), "{t:?}");
        }
        // The same node again gets the same view.
        assert!(Arc::ptr_eq(
            &first,
            &cache.view(&snap, &spec("10.1.0.1:15006"))
        ));
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

        let inbound = Node {
            id: "p1".into(),
            metadata: Some(node_metadata_with_inbound(
                "shop",
                &[],
                &["127.0.0.1:15006".parse().unwrap()],
            )),
            ..Default::default()
        };
        let spec = NodeSpec::from_node(Some(&inbound)).unwrap();
        assert_eq!(spec.inbound, ["127.0.0.1:15006".parse().unwrap()]);
    }

    #[test]
    fn oversized_or_unprintable_node_fields_are_refused_without_being_echoed() {
        let huge = "a".repeat(3 * 1024 * 1024);
        let err = NodeSpec::from_node(Some(&Node {
            id: huge,
            ..Default::default()
        }))
        .unwrap_err()
        .to_string();
        assert!(
            err.len() < 400,
            "the error does not carry the id: {} bytes",
            err.len()
        );
        assert!(err.contains("at most 253 bytes"), "{err}");
        let forged = NodeSpec::from_node(Some(&Node {
            id: "p\n\u{1b}[31mall in sync".into(),
            ..Default::default()
        }))
        .unwrap_err()
        .to_string();
        assert!(
            !forged.contains('\n') && !forged.contains('\u{1b}'),
            "{forged}"
        );
        let many: Vec<String> = (0..MAX_LISTED_SERVICES + 1)
            .map(|i| format!("s{i}"))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let err = NodeSpec::from_node(Some(&Node {
            id: "p".into(),
            metadata: Some(node_metadata("shop", &many)),
            ..Default::default()
        }))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("\"services\"") && err.contains("at most 256"),
            "{err}"
        );
        let mut workload = Node {
            id: "p".into(),
            cluster: "w".repeat(MAX_WORKLOAD_BYTES + 1),
            ..Default::default()
        };
        assert!(NodeSpec::from_node(Some(&workload)).is_err());
        workload.cluster = "web".into();
        assert_eq!(
            NodeSpec::from_node(Some(&workload)).unwrap().workload,
            "web"
        );
    }

    #[test]
    fn gateways_go_to_the_proxies_their_selector_picks() {
        use sane_xds_proto::Gateway;
        let reg = crate::xds::test_support::registry();
        let gateway = |name: &str, ns: &str, label: &str| {
            Resource::Gateway(Gateway {
                name: name.into(),
                namespace: ns.into(),
                selector: [("istio".to_string(), label.to_string())].into(),
                ..Default::default()
            })
        };
        put(
            &reg,
            vec![
                gateway("public", "shop", "ingressgateway"),
                gateway("internal", "shop", "internal-gateway"),
                gateway("other", "billing", "ingressgateway"),
            ],
        );
        let snap = XdsSnapshot::build(&reg.snapshot(), Instant::now(), None);
        let mut gw = NodeSpec::new("gw", "shop", &[]);
        gw.labels.insert("istio".into(), "ingressgateway".into());
        gw.labels.insert("app".into(), "edge".into());
        let view = ProxyView::compute(&snap, &gw);
        // Its namespace's only, and only the one its labels select.
        assert_eq!(names(&view, TypeUrl::Gateway), ["shop/public"]);
        let sidecar = ProxyView::compute(&snap, &NodeSpec::new("web", "shop", &[]));
        assert!(names(&sidecar, TypeUrl::Gateway).is_empty());
        // The shared view cache tells the two apart.
        let cache = ViewCache::default();
        let a = cache.view(&snap, &gw);
        let b = cache.view(&snap, &NodeSpec::new("web", "shop", &[]));
        assert_eq!(names(&a, TypeUrl::Gateway), ["shop/public"]);
        assert!(names(&b, TypeUrl::Gateway).is_empty());
    }
}
