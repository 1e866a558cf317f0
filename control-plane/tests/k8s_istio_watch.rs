//! Istio objects watched in `--kubernetes` mode, against recorded watch
//! events (tests/fixtures/istio-watch/): a Service with its pods, a
//! DestinationRule, a VirtualService (jason → v2, the rest → v1, with a
//! `corsPolicy` Sane cannot honour), one referring to a subset no
//! DestinationRule declares, and an AuthorizationPolicy. They go the way
//! the watcher takes them — object store → `convert_with_istio` (the same
//! conversion as `sanectl apply`) → `KubeSource::sync` — and the registry
//! must hold what they produce, the status their findings and the refused
//! object with why; deleting the VirtualService removes its route.
//!
//! Then a whole control plane against the fake API server
//! (k8s_support/api_server.rs): a Sidecar applied to the cluster changes
//! what a real ADS client is sent, and what Sane made of each object is
//! written to its `status` once, through the status subresource.

#![cfg(feature = "kubernetes")]

mod k8s_support;
mod support;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use k8s_support::api_server::FakeApiServer;
use k8s_support::{fixture, kube_config, listed_store, recorded_events};
use sane_control_plane::istio::object::ObjectKind as IstioKind;
use sane_control_plane::istio::store::ObjectKey;
use sane_control_plane::istio::watched::Watched;
use sane_control_plane::k8s::crd::PolicyKind;
use sane_control_plane::k8s::istio_source::convert_with_istio;
use sane_control_plane::k8s::object_status::CONTROLLER_NAME;
use sane_control_plane::k8s::source::{KubeSource, SourceSettings};
use sane_control_plane::k8s::store::{ObjectKind, ObjectStore, StoreEvent};
use sane_control_plane::registry::{Origin, Registry};
use sane_control_plane::resource::{Kind, Resource};
use sane_xds_proto::TypeUrl;
use serde_json::{json, Value};
use std::sync::Arc;
use support::{eventually, node, ControlPlane, SotwClient, DEADLINE};

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
    recorded_events(&format!("istio-watch/{file}"))
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
            store: listed_store(&kinds(), events(file)),
            source: KubeSource::new(registry.clone()),
            registry,
            watched: Watched::default(),
        };
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
    let refused = &h.watched.refused[&Harness::key(IstioKind::VirtualService, "reviews-v3")];
    assert!(refused.message.contains("subset \"v3\""), "{refused:?}");
    assert_eq!(refused.reason, "MissingSubset");
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
    let refused = &h.watched.refused[&Harness::key(IstioKind::VirtualService, "reviews-v3")];
    assert!(refused.message.contains("subset \"v3\""), "{refused:?}");
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
    let refused = &h.watched.refused[&Harness::key(IstioKind::DestinationRule, "ratings")];
    assert!(refused.message.contains("spec.subsets"), "{refused:?}");
    assert_eq!(refused.reason, "Malformed");
    assert!(h.route("bookinfo/reviews.vs").is_some());
}

/// The core kinds and the Istio and Gateway API kinds these tests apply.
const INSTALLED: &[&str] = &[
    "api/v1/services",
    "api/v1/pods",
    "apis/discovery.k8s.io/v1/endpointslices",
    "apis/networking.istio.io/v1/virtualservices",
    "apis/networking.istio.io/v1/destinationrules",
    "apis/networking.istio.io/v1/sidecars",
    "apis/gateway.networking.k8s.io/v1/httproutes",
];
const VIRTUAL_SERVICES: &str = "apis/networking.istio.io/v1/virtualservices";
const SIDECARS: &str = "apis/networking.istio.io/v1/sidecars";
const HTTP_ROUTES: &str = "apis/gateway.networking.k8s.io/v1/httproutes";

fn service(namespace: &str, name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": name, "namespace": namespace },
        "spec": { "ports": [ { "name": "http", "port": 80 } ] }
    })
}

fn names(resp: &DiscoveryResponse) -> Vec<String> {
    let mut n: Vec<String> = resp
        .resources
        .iter()
        .map(|a| {
            sane_control_plane::resource::Resource::decode_any(a)
                .expect("a known resource")
                .key()
        })
        .collect();
    n.sort();
    n
}

/// The next response of type `t`; others (pushes of what changed
/// meanwhile) are acknowledged and skipped. Each wait is bounded by
/// `SotwClient::recv`'s deadline.
async fn next_of(ads: &mut SotwClient, t: TypeUrl) -> DiscoveryResponse {
    loop {
        let resp = ads.recv().await;
        if resp.type_url == t.as_str() {
            return resp;
        }
        ads.ack(&resp).await;
    }
}

/// The status the fake API server holds for an object, once `ready` says
/// it is there.
async fn status_of(
    fake: &FakeApiServer,
    collection: &str,
    name: &str,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    eventually(DEADLINE, &format!("the status of {name}"), || async {
        let status = fake
            .object(collection, "shop", name)?
            .get("status")?
            .clone();
        ready(&status).then_some(status)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watched_sidecars_scope_proxies_and_findings_are_written_to_status() {
    let mut objects: Vec<Value> = serde_json::from_str(&fixture("cluster/objects.json")).unwrap();
    objects.push(service("shop", "cart"));
    let fake = FakeApiServer::start(INSTALLED, objects).await;
    let dir = tempfile::tempdir().unwrap();
    let url = fake.url();
    let cp = ControlPlane::start_with(dir.path(), |c| c.kubernetes = Some(kube_config(&url, None)))
        .await;
    for key in ["shop/web", "shop/cart"] {
        eventually(DEADLINE, "the cluster's services", || async {
            cp.client.get(Kind::Service, key).await.ok()
        })
        .await;
    }

    // A proxy of `shop` sees its namespace…
    let mut ads = SotwClient::connect(
        cp.xds,
        &cp.workload_token("shop").await,
        node("test.shop~web-1", "shop", &[]),
    )
    .await;
    ads.request(TypeUrl::Service).await;
    let services = ads.recv_type(TypeUrl::Service).await;
    assert_eq!(names(&services), ["shop/cart", "shop/web"]);
    ads.ack(&services).await;

    // …until a Sidecar applied to the cluster limits it to one host.
    fake.apply(json!({
        "apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
        "metadata": { "name": "default", "namespace": "shop" },
        "spec": { "egress": [ { "hosts": [ "./web.shop.svc.cluster.local" ] } ] }
    }));
    let scoped = ads.recv_type(TypeUrl::Service).await;
    assert_eq!(names(&scoped), ["shop/web"]);
    ads.ack(&scoped).await;
    let status = status_of(&fake, SIDECARS, "default", |s| s["conditions"].is_array()).await;
    assert_eq!(status["conditions"][0]["type"], "Reconciled");
    assert_eq!(status["conditions"][0]["status"], "True", "{status}");

    // A VirtualService with a field Sane cannot honour: converted, and
    // the field named in a validation message, in Istio's shape.
    fake.apply(json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": { "name": "web", "namespace": "shop" },
        "spec": { "hosts": ["web"], "http": [ {
            "timeout": "3s",
            "corsPolicy": { "allowOrigins": [ { "exact": "https://example.com" } ] },
            "route": [ { "destination": { "host": "web" } } ]
        } ] }
    }));
    let status = status_of(&fake, VIRTUAL_SERVICES, "web", |s| {
        s["validationMessages"].is_array()
    })
    .await;
    let message = &status["validationMessages"][0];
    assert_eq!(message["type"]["code"], "SANE0001", "{status}");
    assert_eq!(message["type"]["name"], "UnsupportedField");
    assert_eq!(message["level"], "WARNING");
    let description = message["description"].as_str().unwrap();
    assert!(
        description.starts_with("spec.http[0].corsPolicy: not supported"),
        "{description}"
    );
    let reconciled = &status["conditions"][0];
    assert_eq!(reconciled["type"], "Reconciled");
    assert_eq!(reconciled["status"], "True");
    assert_eq!(reconciled["reason"], "ConvertedWithUnsupportedFields");
    assert!(reconciled["lastTransitionTime"].is_string());
    assert_eq!(status["observedGeneration"], 1);
    // The proxy's Sidecar admits web: its route comes too.
    // (The status is written once the registry holds the route; the
    // proxies are sent it after the publisher's debounce.)
    ads.request(TypeUrl::Route).await;
    let routes = loop {
        let routes = next_of(&mut ads, TypeUrl::Route).await;
        ads.ack(&routes).await;
        if !routes.resources.is_empty() {
            break routes;
        }
    };
    assert_eq!(names(&routes), ["shop/web.vs"]);

    // A VirtualService naming a subset nobody declares: left out, and
    // its status says why.
    fake.apply(json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": { "name": "cart-v3", "namespace": "shop" },
        "spec": { "hosts": ["cart"], "http": [ {
            "route": [ { "destination": { "host": "cart", "subset": "v3" } } ]
        } ] }
    }));
    let status = status_of(&fake, VIRTUAL_SERVICES, "cart-v3", |s| {
        s["conditions"].is_array()
    })
    .await;
    let reconciled = &status["conditions"][0];
    assert_eq!(reconciled["status"], "False", "{status}");
    assert_eq!(reconciled["reason"], "MissingSubset");
    assert!(
        reconciled["message"].as_str().unwrap().contains("\"v3\""),
        "{status}"
    );
    assert!(status.get("validationMessages").is_none());

    // An HTTPRoute (GAMMA: its parent is a Service): one parent entry,
    // Sane's, accepted.
    fake.apply(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": { "name": "cart", "namespace": "shop" },
        "spec": {
            "parentRefs": [ { "group": "", "kind": "Service", "name": "cart" } ],
            "rules": [ { "backendRefs": [ { "name": "web", "port": 80 } ] } ]
        }
    }));
    let status = status_of(&fake, HTTP_ROUTES, "cart", |s| s["parents"].is_array()).await;
    let parent = &status["parents"][0];
    assert_eq!(parent["controllerName"], CONTROLLER_NAME, "{status}");
    assert_eq!(parent["parentRef"]["name"], "cart");
    assert_eq!(parent["conditions"][0]["type"], "Accepted");
    assert_eq!(parent["conditions"][0]["status"], "True", "{status}");
    assert_eq!(parent["conditions"][1]["type"], "ResolvedRefs");
    assert_eq!(parent["conditions"][1]["status"], "True");

    // Nothing changed for the others: another conversion (a new object,
    // whose status is written) writes none of theirs again, though the
    // watch saw each of Sane's own writes come back.
    fake.apply(json!({
        "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": { "name": "cart", "namespace": "shop" },
        "spec": { "host": "cart", "subsets": [ { "name": "v1", "labels": { "version": "v1" } } ] }
    }));
    status_of(
        &fake,
        "apis/networking.istio.io/v1/destinationrules",
        "cart",
        |s| s["conditions"].is_array(),
    )
    .await;
    for (collection, name) in [
        (SIDECARS, "default"),
        (VIRTUAL_SERVICES, "web"),
        (VIRTUAL_SERVICES, "cart-v3"),
        (HTTP_ROUTES, "cart"),
    ] {
        let writes = fake.status_writes(collection, "shop", name);
        assert_eq!(writes.len(), 1, "{name}: {writes:?}");
        assert_eq!(writes[0].method, http::Method::PATCH);
    }
    // A status write is not a change of the object: its generation stays.
    let vs = fake.object(VIRTUAL_SERVICES, "shop", "web").unwrap();
    assert_eq!(vs["metadata"]["generation"], 1);

    // The Sidecar deleted: the proxy sees its namespace again.
    fake.remove(SIDECARS, "shop", "default");
    let unscoped = next_of(&mut ads, TypeUrl::Service).await;
    assert_eq!(names(&unscoped), ["shop/cart", "shop/web"]);
    drop(ads);
    cp.stop().await;
}

fn sidecar(name: &str, host: &str) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
        "metadata": { "name": name, "namespace": "shop" },
        "spec": { "egress": [ { "hosts": [ host ] } ] }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_sidecar_wins_over_an_applied_one_for_the_same_proxies() {
    // Applied through the API (stored in the data dir) before the control
    // plane watched the cluster: it scopes the namespace to cart.
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path()).await;
    let body = serde_json::to_vec(&sidecar("applied", "./cart.shop.svc.cluster.local")).unwrap();
    let (status, reply) = cp
        .client
        .send(
            http::Method::POST,
            "/api/v1/istio",
            Some(body),
            Some(&cp.token),
        )
        .await
        .unwrap();
    assert!(
        status.is_success(),
        "{status}: {}",
        String::from_utf8_lossy(&reply)
    );
    cp.stop().await;

    let mut objects: Vec<Value> = serde_json::from_str(&fixture("cluster/objects.json")).unwrap();
    objects.push(service("shop", "cart"));
    let fake = FakeApiServer::start(INSTALLED, objects).await;
    let url = fake.url();
    let cp = ControlPlane::start_with(dir.path(), |c| c.kubernetes = Some(kube_config(&url, None)))
        .await;
    for key in ["shop/web", "shop/cart"] {
        eventually(DEADLINE, "the cluster's services", || async {
            cp.client.get(Kind::Service, key).await.ok()
        })
        .await;
    }
    let mut ads = SotwClient::connect(
        cp.xds,
        &cp.workload_token("shop").await,
        node("test.shop~web-1", "shop", &[]),
    )
    .await;
    ads.request(TypeUrl::Service).await;
    let services = next_of(&mut ads, TypeUrl::Service).await;
    assert_eq!(names(&services), ["shop/cart"], "the applied scope");
    ads.ack(&services).await;

    // A watched Sidecar for the same proxies (the whole namespace) wins,
    // though "watched" sorts after "applied".
    fake.apply(sidecar("watched", "./web.shop.svc.cluster.local"));
    let services = next_of(&mut ads, TypeUrl::Service).await;
    assert_eq!(names(&services), ["shop/web"], "the watched scope");
    ads.ack(&services).await;

    // Deleted from the cluster: the applied one scopes them again.
    fake.remove(SIDECARS, "shop", "watched");
    let services = next_of(&mut ads, TypeUrl::Service).await;
    assert_eq!(names(&services), ["shop/cart"]);
    drop(ads);
    cp.stop().await;
}
