//! Istio objects watched in `--kubernetes` mode, against recorded watch
//! events (tests/fixtures/istio-watch/): a Service with its pods, a
//! DestinationRule, a VirtualService (jason → v2, the rest → v1, with a
//! `corsPolicy` Sane cannot honour), one referring to a subset no
//! DestinationRule declares, and an AuthorizationPolicy. They go the way
//! the watcher takes them — object store → `convert_with_istio` (the same
//! conversion as `sanectl apply`) → `KubeSource::sync` — and the registry
//! must hold what they produce, the status their findings and the refused
//! object with why; deleting the VirtualService removes its route.

#![cfg(feature = "kubernetes")]

mod k8s_support;

use k8s_support::fixture;
use sane_control_plane::istio::object::ObjectKind as IstioKind;
use sane_control_plane::istio::store::ObjectKey;
use sane_control_plane::istio::watched::Watched;
use sane_control_plane::k8s::crd::PolicyKind;
use sane_control_plane::k8s::istio_source::convert_with_istio;
use sane_control_plane::k8s::source::{KubeSource, SourceSettings};
use sane_control_plane::k8s::store::{ObjectKind, ObjectStore, StoreEvent};
use sane_control_plane::registry::{Origin, Registry};
use sane_control_plane::resource::{Kind, Resource};
use std::sync::Arc;

fn kinds() -> Vec<ObjectKind> {
    let mut kinds = vec![
        ObjectKind::Service,
        ObjectKind::EndpointSlice,
        ObjectKind::Pod,
    ];
    kinds.extend(PolicyKind::ALL.map(ObjectKind::Policy));
    kinds.extend(IstioKind::ALL.map(ObjectKind::Istio));
    kinds
}

fn events(file: &str) -> Vec<StoreEvent> {
    let recorded: Vec<serde_json::Value> =
        serde_json::from_str(&fixture(&format!("istio-watch/{file}"))).unwrap();
    recorded
        .into_iter()
        .filter_map(|e| StoreEvent::from_watch_json(e).unwrap())
        .collect()
}

struct Harness {
    store: ObjectStore,
    source: KubeSource,
    registry: Arc<Registry>,
    watched: Watched,
}

impl Harness {
    fn listed(file: &str) -> Harness {
        let registry = Arc::new(Registry::in_memory());
        let mut h = Harness {
            store: ObjectStore::new(),
            source: KubeSource::new(registry.clone()),
            registry,
            watched: Watched::default(),
        };
        for kind in kinds() {
            h.store.handle(StoreEvent::RelistStart(kind));
        }
        for e in events(file) {
            h.store.handle(e);
        }
        for kind in kinds() {
            h.store.handle(StoreEvent::RelistDone(kind));
        }
        assert!(h.store.is_listed(&kinds()));
        h.sync();
        h
    }

    fn sync(&mut self) {
        let (converted, watched) = convert_with_istio(
            &self.store,
            &SourceSettings::default(),
            &self.registry.snapshot(),
        );
        self.source.sync(converted).unwrap();
        self.watched = watched;
    }

    fn key(kind: IstioKind, name: &str) -> ObjectKey {
        ObjectKey {
            kind,
            namespace: "bookinfo".into(),
            name: name.into(),
        }
    }

    fn route(&self, key: &str) -> Option<sane_xds_proto::Route> {
        let snap = self.registry.snapshot();
        let entry = snap.get(Kind::Route, key)?;
        assert_eq!(entry.origin, Origin::Kubernetes);
        match &entry.resource {
            Resource::Route(r) => Some(r.clone()),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn watched_istio_objects_reach_the_registry_with_their_findings() {
    let mut h = Harness::listed("01-list.json");

    // The VirtualService's route, subsets resolved through the
    // DestinationRule, in Istio's order.
    let vs = &h.watched.objects[&Harness::key(IstioKind::VirtualService, "reviews")];
    assert_eq!(vs.produced, ["route bookinfo/reviews.vs"]);
    let r = h
        .route("bookinfo/reviews.vs")
        .expect("the VirtualService's route");
    let jason = &r.rules[0];
    assert_eq!(jason.matches[0].headers[0].name, "end-user");
    assert_eq!(jason.matches[0].headers[0].value, "jason");
    assert_eq!(jason.destinations[0].subset["version"], "v2");
    assert_eq!(r.rules[1].destinations[0].subset["version"], "v1");
    // The field it cannot honour, by path (what `sanectl status` lists).
    let paths: Vec<&str> = vs.unsupported.iter().map(|u| u.path.as_str()).collect();
    assert_eq!(paths, ["spec.http[1].corsPolicy"]);
    // Kept as the cluster holds it, without the API server's bookkeeping.
    assert_eq!(vs.object["spec"]["hosts"][0], "reviews");
    assert!(vs.object.get("status").is_none());
    let dr = &h.watched.objects[&Harness::key(IstioKind::DestinationRule, "reviews")];
    assert!(dr.object["metadata"].get("managedFields").is_none());
    assert!(dr.object["metadata"].get("annotations").is_none());

    // The AuthorizationPolicy's policy.
    let ap = &h.watched.objects[&Harness::key(IstioKind::AuthorizationPolicy, "reviews-viewer")];
    let produced = ap.produced[0]
        .strip_prefix("authorization_policy ")
        .expect("an authorization policy")
        .to_string();
    assert!(h.registry.snapshot().get(Kind::Authz, &produced).is_some());

    // The one naming a subset nobody declares is left out alone, with why.
    let (_, why) = &h.watched.refused[&Harness::key(IstioKind::VirtualService, "reviews-v3")];
    assert!(why.contains("subset \"v3\""), "{why}");
    assert_eq!(h.watched.refused.len(), 1, "{:?}", h.watched.refused);

    // Deleting the VirtualService removes what it produced, and only that.
    for e in events("02-delete.json") {
        h.store.handle(e);
    }
    h.sync();
    assert!(h.route("bookinfo/reviews.vs").is_none());
    assert!(!h
        .watched
        .objects
        .contains_key(&Harness::key(IstioKind::VirtualService, "reviews")));
    assert!(h.registry.snapshot().get(Kind::Authz, &produced).is_some());
    assert!(h
        .registry
        .snapshot()
        .get(Kind::Service, "bookinfo/reviews")
        .is_some());
    let (_, why) = &h.watched.refused[&Harness::key(IstioKind::VirtualService, "reviews-v3")];
    assert!(why.contains("subset \"v3\""), "{why}");
}

#[test]
fn a_malformed_object_is_refused_by_name_and_the_rest_still_converts() {
    let mut h = Harness::listed("01-list.json");
    let bad = serde_json::json!({ "type": "ADDED", "object": {
        "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": { "name": "ratings", "namespace": "bookinfo", "resourceVersion": "40" },
        "spec": { "host": "ratings", "subsets": "not a list" }
    }});
    h.store
        .handle(StoreEvent::from_watch_json(bad).unwrap().unwrap());
    h.sync();
    let (_, why) = &h.watched.refused[&Harness::key(IstioKind::DestinationRule, "ratings")];
    assert!(why.contains("spec.subsets"), "{why}");
    assert!(h.route("bookinfo/reviews.vs").is_some());
}
