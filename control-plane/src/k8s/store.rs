//! What the cluster holds, as far as the mesh cares: the latest Services,
//! EndpointSlices, Pods (reduced to [`PodInfo`]), `sane.mesh` objects, and
//! Istio and Gateway API objects (kept as JSON, as `crate::istio` reads
//! them), fed by watch events.
//!
//! The store knows nothing of the registry and does no I/O: the kube-rs
//! watchers ([`super::watch`]) and the tests (recorded watch events, see
//! [`StoreEvent::from_watch_json`]) feed it the same way, and
//! [`super::source::convert`] reads it.
//!
//! A watcher (re)lists from time to time; between [`StoreEvent::RelistStart`]
//! and [`StoreEvent::RelistDone`] objects are collected aside and then
//! replace that kind's objects whole, so an object deleted while the watch
//! was down disappears. [`ObjectStore::is_listed`] tells when every kind has
//! been listed once: before that the store is not the cluster, and syncing
//! it into the registry would delete what the last run left there.

use super::crd::PolicyKind;
use super::{INBOUND_PORT_NAME, SIDECAR_NAME};
use crate::istio::object::ObjectKind as IstioKind;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::core::DynamicObject;
use std::collections::{BTreeMap, BTreeSet};

/// `(namespace, name)`.
pub type ObjectKey = (String, String);

/// A kind of watched object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKind {
    /// `v1/Service`
    Service,
    /// `discovery.k8s.io/v1/EndpointSlice`
    EndpointSlice,
    /// `v1/Pod`
    Pod,
    /// `sane.mesh/v1/<kind>`
    Policy(PolicyKind),
    /// An Istio or Gateway API kind.
    Istio(IstioKind),
}

/// One watched object.
#[derive(Clone, Debug)]
pub enum KubeObject {
    /// A Service.
    Service(Box<Service>),
    /// An EndpointSlice.
    EndpointSlice(Box<EndpointSlice>),
    /// A Pod.
    Pod(Box<Pod>),
    /// A `sane.mesh` object, untyped (see [`super::crd`]).
    Policy(PolicyKind, Box<DynamicObject>),
    /// An Istio or Gateway API object, as JSON.
    Istio(IstioKind, Box<serde_json::Value>),
}

/// What a watcher reports.
#[derive(Clone, Debug)]
pub enum StoreEvent {
    /// The object was created or changed.
    Apply(KubeObject),
    /// The object was deleted.
    Delete(KubeObject),
    /// A full list of the kind begins.
    RelistStart(ObjectKind),
    /// The full list of the kind is complete.
    RelistDone(ObjectKind),
}

/// What the mesh needs of a pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodInfo {
    /// `status.podIPs` (or `status.podIP`).
    pub ips: Vec<String>,
    /// `spec.serviceAccountName`, `default` when unset.
    pub service_account: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// The injected sidecar's inbound port, if the pod has one.
    pub proxy_port: Option<u16>,
}

/// The latest objects of every watched kind.
#[derive(Clone, Debug, Default)]
pub struct ObjectStore {
    services: Bucket<Service>,
    slices: Bucket<EndpointSlice>,
    pods: Bucket<PodInfo>,
    policies: BTreeMap<PolicyKind, Bucket<DynamicObject>>,
    istio: BTreeMap<IstioKind, Bucket<serde_json::Value>>,
    listed: BTreeSet<ObjectKind>,
}

/// One kind's objects, and those of a list in progress.
#[derive(Clone, Debug)]
struct Bucket<T> {
    live: BTreeMap<ObjectKey, T>,
    relisting: Option<BTreeMap<ObjectKey, T>>,
}

// === impl KubeObject ===

impl KubeObject {
    /// Reads an object by its `apiVersion` and `kind`.
    pub fn from_json(value: serde_json::Value) -> Result<KubeObject, String> {
        let api_version = value["apiVersion"].as_str().unwrap_or_default().to_string();
        let kind = value["kind"].as_str().unwrap_or_default().to_string();
        let typed = |e: serde_json::Error| format!("{api_version} {kind}: {e}");
        if let Some(istio) = IstioKind::parse(&api_version, &kind) {
            return Ok(KubeObject::Istio(istio, Box::new(value)));
        }
        Ok(match (api_version.as_str(), kind.as_str()) {
            ("v1", "Service") => KubeObject::Service(serde_json::from_value(value).map_err(typed)?),
            ("discovery.k8s.io/v1", "EndpointSlice") => {
                KubeObject::EndpointSlice(serde_json::from_value(value).map_err(typed)?)
            }
            ("v1", "Pod") => KubeObject::Pod(serde_json::from_value(value).map_err(typed)?),
            (v, k) if v == format!("{}/{}", super::crd::GROUP, super::crd::VERSION) => {
                let policy = PolicyKind::parse(k).ok_or_else(|| format!("unknown kind {v} {k}"))?;
                KubeObject::Policy(policy, serde_json::from_value(value).map_err(typed)?)
            }
            (v, k) => return Err(format!("unwatched kind {v} {k}")),
        })
    }

    /// Its `(namespace, name)`.
    pub fn key(&self) -> ObjectKey {
        key(match self {
            KubeObject::Service(s) => &s.metadata,
            KubeObject::EndpointSlice(s) => &s.metadata,
            KubeObject::Pod(p) => &p.metadata,
            KubeObject::Policy(_, o) => &o.metadata,
            KubeObject::Istio(_, o) => return json_key(o),
        })
    }

    /// Its kind.
    pub fn kind(&self) -> ObjectKind {
        match self {
            KubeObject::Service(_) => ObjectKind::Service,
            KubeObject::EndpointSlice(_) => ObjectKind::EndpointSlice,
            KubeObject::Pod(_) => ObjectKind::Pod,
            KubeObject::Policy(k, _) => ObjectKind::Policy(*k),
            KubeObject::Istio(k, _) => ObjectKind::Istio(*k),
        }
    }
}

// === impl StoreEvent ===

impl StoreEvent {
    /// Reads a watch event as the API server streams it (`{"type":
    /// "ADDED", "object": {…}}`), e.g. from a recording: `ADDED` and
    /// `MODIFIED` apply, `DELETED` deletes, `BOOKMARK` is nothing.
    pub fn from_watch_json(value: serde_json::Value) -> Result<Option<StoreEvent>, String> {
        let kind = value["type"].as_str().unwrap_or_default().to_string();
        if kind == "BOOKMARK" {
            return Ok(None);
        }
        let object = KubeObject::from_json(value["object"].clone())?;
        Ok(Some(match kind.as_str() {
            "ADDED" | "MODIFIED" => StoreEvent::Apply(object),
            "DELETED" => StoreEvent::Delete(object),
            other => return Err(format!("unknown watch event type {other:?}")),
        }))
    }
}

// === impl PodInfo ===

impl PodInfo {
    /// Reduces a pod to what the mesh needs.
    pub fn of(pod: &Pod) -> PodInfo {
        let status = pod.status.as_ref();
        let mut ips: Vec<String> = status
            .and_then(|s| s.pod_ips.as_ref())
            .into_iter()
            .flatten()
            .map(|ip| ip.ip.clone())
            .collect();
        if ips.is_empty() {
            ips.extend(status.and_then(|s| s.pod_ip.clone()));
        }
        let spec = pod.spec.as_ref();
        let service_account = spec
            .and_then(|s| s.service_account_name.clone().or(s.service_account.clone()))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into());
        let proxy_port = spec.and_then(|s| {
            s.init_containers
                .iter()
                .flatten()
                .chain(s.containers.iter())
                .find(|c| c.name == SIDECAR_NAME)
                .and_then(|c| {
                    c.ports
                        .iter()
                        .flatten()
                        .find(|p| p.name.as_deref() == Some(INBOUND_PORT_NAME))
                })
                .and_then(|p| u16::try_from(p.container_port).ok())
        });
        PodInfo {
            ips,
            service_account,
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            proxy_port,
        }
    }
}

// === impl ObjectStore ===

impl ObjectStore {
    /// An empty store; nothing listed yet.
    pub fn new() -> ObjectStore {
        ObjectStore::default()
    }

    /// Applies one watch event. Returns false when it cannot change what
    /// the store converts to: a change of an Istio or Gateway API object's
    /// `status` alone (as when Sane writes it, `super::object_status`).
    pub fn handle(&mut self, event: StoreEvent) -> bool {
        if let StoreEvent::Apply(KubeObject::Istio(kind, o)) = &event {
            let key = json_key(o);
            let bucket = self.istio_bucket(*kind);
            let status_only = bucket.relisting.is_none()
                && bucket
                    .live
                    .get(&key)
                    .is_some_and(|old| without_status(old) == without_status(o));
            if status_only {
                if let StoreEvent::Apply(KubeObject::Istio(_, o)) = event {
                    bucket.live.insert(key, *o);
                }
                return false;
            }
        }
        match event {
            StoreEvent::Apply(object) => match object {
                KubeObject::Service(s) => self.services.apply(key(&s.metadata), *s),
                KubeObject::EndpointSlice(s) => self.slices.apply(key(&s.metadata), *s),
                KubeObject::Pod(p) => self.pods.apply(key(&p.metadata), PodInfo::of(&p)),
                KubeObject::Policy(kind, o) => self.policy_bucket(kind).apply(key(&o.metadata), *o),
                KubeObject::Istio(kind, o) => self.istio_bucket(kind).apply(json_key(&o), *o),
            },
            StoreEvent::Delete(object) => match object {
                KubeObject::Service(s) => self.services.delete(&key(&s.metadata)),
                KubeObject::EndpointSlice(s) => self.slices.delete(&key(&s.metadata)),
                KubeObject::Pod(p) => self.pods.delete(&key(&p.metadata)),
                KubeObject::Policy(kind, o) => self.policy_bucket(kind).delete(&key(&o.metadata)),
                KubeObject::Istio(kind, o) => self.istio_bucket(kind).delete(&json_key(&o)),
            },
            StoreEvent::RelistStart(kind) => match kind {
                ObjectKind::Service => self.services.relist_start(),
                ObjectKind::EndpointSlice => self.slices.relist_start(),
                ObjectKind::Pod => self.pods.relist_start(),
                ObjectKind::Policy(k) => self.policy_bucket(k).relist_start(),
                ObjectKind::Istio(k) => self.istio_bucket(k).relist_start(),
            },
            StoreEvent::RelistDone(kind) => {
                match kind {
                    ObjectKind::Service => self.services.relist_done(),
                    ObjectKind::EndpointSlice => self.slices.relist_done(),
                    ObjectKind::Pod => self.pods.relist_done(),
                    ObjectKind::Policy(k) => self.policy_bucket(k).relist_done(),
                    ObjectKind::Istio(k) => self.istio_bucket(k).relist_done(),
                }
                self.listed.insert(kind);
            }
        }
        true
    }

    /// True once every kind in `kinds` has completed a list.
    pub fn is_listed(&self, kinds: &[ObjectKind]) -> bool {
        kinds.iter().all(|k| self.listed.contains(k))
    }

    /// Every Service.
    pub fn services(&self) -> impl Iterator<Item = (&ObjectKey, &Service)> {
        self.services.live.iter()
    }

    /// Every EndpointSlice.
    pub fn endpoint_slices(&self) -> impl Iterator<Item = (&ObjectKey, &EndpointSlice)> {
        self.slices.live.iter()
    }

    /// One pod.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&PodInfo> {
        self.pods
            .live
            .get(&(namespace.to_string(), name.to_string()))
    }

    /// Number of pods.
    pub fn pod_count(&self) -> usize {
        self.pods.live.len()
    }

    /// Every object of a `sane.mesh` kind.
    pub fn policies(&self, kind: PolicyKind) -> impl Iterator<Item = (&ObjectKey, &DynamicObject)> {
        self.policies
            .get(&kind)
            .into_iter()
            .flat_map(|b| b.live.iter())
    }

    /// The `resourceVersion` of every `sane.mesh` object that becomes a
    /// registry resource, by registry kind and key (what the API's
    /// `If-Match` compares with in `--kubernetes` mode); objects whose
    /// version is not a number are left out.
    pub fn policy_versions(&self) -> BTreeMap<(crate::resource::Kind, String), u64> {
        let mut out = BTreeMap::new();
        for (kind, bucket) in &self.policies {
            let Some(registry_kind) = kind.registry_kind() else {
                continue;
            };
            for ((ns, name), o) in &bucket.live {
                let version = o.metadata.resource_version.as_deref().unwrap_or_default();
                if let Ok(v) = version.parse::<u64>() {
                    out.insert((registry_kind, format!("{ns}/{name}")), v);
                }
            }
        }
        out
    }

    /// Every Istio and Gateway API object, by kind.
    pub fn istio_objects(
        &self,
    ) -> impl Iterator<Item = (IstioKind, &ObjectKey, &serde_json::Value)> {
        self.istio
            .iter()
            .flat_map(|(kind, b)| b.live.iter().map(move |(k, o)| (*kind, k, o)))
    }

    fn policy_bucket(&mut self, kind: PolicyKind) -> &mut Bucket<DynamicObject> {
        self.policies.entry(kind).or_default()
    }

    fn istio_bucket(&mut self, kind: IstioKind) -> &mut Bucket<serde_json::Value> {
        self.istio.entry(kind).or_default()
    }
}

/// An object held as JSON without its `status` and what the API server
/// changes when the status is written (`resourceVersion`,
/// `managedFields`).
fn without_status(object: &serde_json::Value) -> serde_json::Value {
    let mut object = object.clone();
    if let Some(o) = object.as_object_mut() {
        o.remove("status");
    }
    if let Some(meta) = object
        .get_mut("metadata")
        .and_then(serde_json::Value::as_object_mut)
    {
        meta.remove("resourceVersion");
        meta.remove("managedFields");
    }
    object
}

/// `(namespace, name)` of an object held as JSON.
fn json_key(object: &serde_json::Value) -> ObjectKey {
    let meta = &object["metadata"];
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    (text(&meta["namespace"]), text(&meta["name"]))
}

fn key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjectKey {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

// === impl Bucket ===

impl<T> Default for Bucket<T> {
    fn default() -> Self {
        Bucket {
            live: BTreeMap::new(),
            relisting: None,
        }
    }
}

impl<T> Bucket<T> {
    fn apply(&mut self, key: ObjectKey, value: T) {
        match &mut self.relisting {
            Some(pending) => pending.insert(key, value),
            None => self.live.insert(key, value),
        };
    }

    fn delete(&mut self, key: &ObjectKey) {
        self.live.remove(key);
        if let Some(pending) = &mut self.relisting {
            pending.remove(key);
        }
    }

    fn relist_start(&mut self) {
        self.relisting = Some(BTreeMap::new());
    }

    fn relist_done(&mut self) {
        if let Some(pending) = self.relisting.take() {
            self.live = pending;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(name: &str) -> KubeObject {
        KubeObject::from_json(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": name, "namespace": "shop" },
            "spec": { "ports": [ { "port": 80 } ] }
        }))
        .unwrap()
    }

    #[test]
    fn a_relist_replaces_the_kind_whole() {
        let mut store = ObjectStore::new();
        assert!(!store.is_listed(&[ObjectKind::Service]));
        store.handle(StoreEvent::RelistStart(ObjectKind::Service));
        store.handle(StoreEvent::Apply(service("a")));
        store.handle(StoreEvent::Apply(service("b")));
        // Until the list is complete, readers see the previous objects.
        assert_eq!(store.services().count(), 0);
        store.handle(StoreEvent::RelistDone(ObjectKind::Service));
        assert!(store.is_listed(&[ObjectKind::Service]));
        assert_eq!(store.services().count(), 2);

        // `b` was deleted while the watch was down: the next list drops it.
        store.handle(StoreEvent::RelistStart(ObjectKind::Service));
        store.handle(StoreEvent::Apply(service("a")));
        store.handle(StoreEvent::RelistDone(ObjectKind::Service));
        let names: Vec<&str> = store.services().map(|(k, _)| k.1.as_str()).collect();
        assert_eq!(names, ["a"]);
        store.handle(StoreEvent::Delete(service("a")));
        assert_eq!(store.services().count(), 0);
    }

    #[test]
    fn a_status_only_change_is_kept_but_converts_the_same() {
        let vs = |status: serde_json::Value, version: &str, hosts: &str| {
            StoreEvent::Apply(
                KubeObject::from_json(json!({
                    "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                    "metadata": { "name": "r", "namespace": "shop", "resourceVersion": version },
                    "spec": { "hosts": [hosts] }, "status": status
                }))
                .unwrap(),
            )
        };
        let mut store = ObjectStore::new();
        assert!(store.handle(vs(json!({}), "1", "web")), "new");
        assert!(!store.handle(vs(json!({ "observedGeneration": 1 }), "2", "web")));
        let (_, _, held) = store.istio_objects().next().unwrap();
        assert_eq!(
            held["status"]["observedGeneration"], 1,
            "the status is kept"
        );
        assert!(store.handle(vs(json!({ "observedGeneration": 1 }), "3", "cart")));
    }

    #[test]
    fn watch_events_read_as_the_api_streams_them() {
        let event = json!({ "type": "DELETED", "object": {
            "apiVersion": "sane.mesh/v1", "kind": "Route",
            "metadata": { "name": "r", "namespace": "shop" }, "spec": {}
        }});
        let Some(StoreEvent::Delete(o)) = StoreEvent::from_watch_json(event).unwrap() else {
            panic!("not a delete")
        };
        assert_eq!(o.kind(), ObjectKind::Policy(PolicyKind::Route));
        let bookmark = json!({ "type": "BOOKMARK", "object": {} });
        assert!(StoreEvent::from_watch_json(bookmark).unwrap().is_none());
        let err =
            KubeObject::from_json(json!({ "apiVersion": "v1", "kind": "Secret" })).unwrap_err();
        assert!(err.contains("unwatched"), "{err}");
    }

    #[test]
    fn istio_objects_are_kept_as_json_by_kind() {
        let vs = |version: &str| {
            json!({ "type": "ADDED", "object": {
                "apiVersion": format!("networking.istio.io/{version}"), "kind": "VirtualService",
                "metadata": { "name": "reviews", "namespace": "bookinfo" }, "spec": { "hosts": ["reviews"] }
            }})
        };
        let kind = ObjectKind::Istio(IstioKind::VirtualService);
        let mut store = ObjectStore::new();
        store.handle(StoreEvent::RelistStart(kind));
        for version in ["v1", "v1alpha3"] {
            let event = StoreEvent::from_watch_json(vs(version)).unwrap().unwrap();
            store.handle(event);
        }
        store.handle(StoreEvent::RelistDone(kind));
        assert!(store.is_listed(&[kind]));
        let all: Vec<_> = store.istio_objects().collect();
        assert_eq!(all.len(), 1, "one object, whatever the version");
        assert_eq!(all[0].0, IstioKind::VirtualService);
        assert_eq!(all[0].1, &("bookinfo".to_string(), "reviews".to_string()));
        assert_eq!(all[0].2["apiVersion"], "networking.istio.io/v1alpha3");
        let gone = json!({ "type": "DELETED", "object": vs("v1")["object"].clone() });
        store.handle(StoreEvent::from_watch_json(gone).unwrap().unwrap());
        assert_eq!(store.istio_objects().count(), 0);
    }
}
