//! The Kubernetes registry source against recorded watch events
//! (tests/fixtures/source/): Services, EndpointSlices with terminating
//! endpoints, a rollout replacing a pod, a StatefulSet pod coming back with
//! a new IP, and `sane.mesh` objects. No cluster: the events feed the object
//! store as the watchers would, and the registry must converge to the right
//! endpoints and identities after every event.

#![cfg(feature = "kubernetes")]

mod k8s_support;

use k8s_support::{listed_store, recorded_events};
use sane_control_plane::k8s::crd::PolicyKind;
use sane_control_plane::k8s::source::{convert, KubeSource, SourceSettings};
use sane_control_plane::k8s::store::{ObjectKind, ObjectStore, StoreEvent};
use sane_control_plane::registry::{Change, Op, Origin, Registry};
use sane_control_plane::resource::{Kind, Resource};
use sane_control_plane::Error;
use sane_xds_proto::{Endpoint, LoadBalancer, Protocol};
use std::collections::BTreeMap;
use std::sync::Arc;

const KINDS: [ObjectKind; 7] = [
    ObjectKind::Service,
    ObjectKind::EndpointSlice,
    ObjectKind::Pod,
    ObjectKind::Policy(PolicyKind::Route),
    ObjectKind::Policy(PolicyKind::DestinationPolicy),
    ObjectKind::Policy(PolicyKind::AuthorizationPolicy),
    ObjectKind::Policy(PolicyKind::PeerAuthentication),
];

fn events(file: &str) -> Vec<StoreEvent> {
    recorded_events(&format!("source/{file}"))
}

struct Harness {
    store: ObjectStore,
    source: KubeSource,
    registry: Arc<Registry>,
    settings: SourceSettings,
}

impl Harness {
    /// The first list of every kind, as the watchers report it.
    fn listed(file: &str) -> Harness {
        let registry = Arc::new(Registry::in_memory());
        let mut h = Harness {
            store: listed_store(&KINDS, events(file)),
            source: KubeSource::new(registry.clone()),
            registry,
            settings: SourceSettings::default(),
        };
        h.sync();
        h
    }

    fn sync(&mut self) -> sane_control_plane::k8s::source::SyncReport {
        self.source
            .sync(convert(&self.store, &self.settings))
            .unwrap()
    }

    /// Applies each event and syncs after each, as the watch loop may.
    fn replay(&mut self, file: &str) {
        for e in events(file) {
            self.store.handle(e);
            self.sync();
        }
    }

    fn keys(&self, kind: Kind) -> Vec<String> {
        self.registry
            .snapshot()
            .list(kind)
            .map(|(k, _)| k.to_string())
            .collect()
    }

    fn endpoint(&self, key: &str) -> Endpoint {
        match self.registry.snapshot().get(Kind::Endpoint, key) {
            Some(e) => match &e.resource {
                Resource::Endpoint(e) => e.clone(),
                other => panic!("{other:?}"),
            },
            None => panic!("no endpoint {key}; have {:?}", self.keys(Kind::Endpoint)),
        }
    }
}

#[test]
fn initial_list_converges_to_services_endpoints_identities_and_policies() {
    let mut h = Harness::listed("01-initial.json");
    // ExternalName, UDP-only and kube-system services are not carried.
    assert_eq!(h.keys(Kind::Service), ["shop/legacy", "shop/web"]);
    let snapshot = h.registry.snapshot();
    let Resource::Service(web) = &snapshot.get(Kind::Service, "shop/web").unwrap().resource else {
        panic!()
    };
    let ports: Vec<(&str, u32, i32, u32)> = web
        .ports
        .iter()
        .map(|p| (p.name.as_str(), p.port, p.protocol, p.target_port))
        .collect();
    assert_eq!(
        ports,
        [
            ("http", 80, Protocol::Http as i32, 0),
            ("grpc-admin", 9090, Protocol::Grpc as i32, 9090)
        ]
    );
    assert_eq!(web.addresses, ["10.96.12.34"], "the ClusterIP");

    // The terminating endpoint is left out; meshed pods are reached through
    // their sidecar and carry their service account's identity.
    assert_eq!(
        h.keys(Kind::Endpoint),
        [
            "shop/legacy/10.244.4.4:8080",
            "shop/web/10.244.1.5:15006",
            "shop/web/10.244.2.7:15006"
        ]
    );
    let e = h.endpoint("shop/web/10.244.1.5:15006");
    assert_eq!(e.identity, "spiffe://cluster.local/ns/shop/sa/web");
    assert_eq!(e.proxy_port, 15006);
    assert_eq!(
        e.ports,
        BTreeMap::from([("grpc-admin".into(), 9090), ("http".into(), 8080)])
    );
    assert_eq!(e.labels["version"], "v2");
    let legacy = h.endpoint("shop/legacy/10.244.4.4:8080");
    assert_eq!((legacy.proxy_port, legacy.identity.as_str()), (0, ""));
    assert_eq!(legacy.port, 8080);

    // Routes and policies come from the CRDs; the malformed route and the
    // one to a missing service are left out, and said so.
    assert_eq!(h.keys(Kind::Route), ["shop/web-canary"]);
    assert_eq!(h.keys(Kind::Policy), ["shop/web"]);
    let Resource::Policy(p) = &snapshot.get(Kind::Policy, "shop/web").unwrap().resource else {
        panic!()
    };
    assert_eq!(p.load_balancer, LoadBalancer::RoundRobin as i32);
    assert_eq!(p.connect_timeout_ms, 250);
    assert_eq!(h.keys(Kind::Authz), ["shop/allow-frontend"]);
    let Resource::Authz(a) = &snapshot
        .get(Kind::Authz, "shop/allow-frontend")
        .unwrap()
        .resource
    else {
        panic!()
    };
    assert_eq!(
        a.rules[0].from[0].principals[0],
        "spiffe://cluster.local/ns/shop/sa/frontend"
    );
    let report = h.sync();
    let problems: Vec<String> = report
        .problems
        .iter()
        .map(|p| format!("{}: {}", p.object, p.message))
        .collect();
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(problems[0].starts_with("Route shop/broken: spec.rules[0]"));
    assert!(problems[0].contains("timeuot"));
    assert!(problems[1].starts_with("route shop/to-nowhere: "));
    assert!(problems[1].contains("is not a declared service"));

    // Converged: syncing again writes nothing.
    assert_eq!(report.writes, 0);
    // Everything is owned by Kubernetes.
    for (_, _, entry) in h.registry.snapshot().iter() {
        assert_eq!(entry.origin, Origin::Kubernetes);
    }
}

#[test]
fn a_rollout_replaces_the_endpoint_only_once_the_new_pod_is_ready() {
    let mut h = Harness::listed("01-initial.json");
    let events = events("02-rollout.json");
    let mut seen = Vec::new();
    for e in events {
        h.store.handle(e);
        h.sync();
        seen.push(h.keys(Kind::Endpoint));
    }
    let web = |keys: &Vec<String>| -> Vec<String> {
        keys.iter()
            .filter(|k| k.starts_with("shop/web/"))
            .cloned()
            .collect()
    };
    // The old pod terminates: out at once; the new one is not ready: not in.
    assert_eq!(web(&seen[2]), ["shop/web/10.244.1.5:15006"]);
    // Ready: in, with the new address and the same identity.
    assert_eq!(
        web(&seen[4]),
        ["shop/web/10.244.1.5:15006", "shop/web/10.244.2.8:15006"]
    );
    assert_eq!(
        seen.last(),
        seen.get(4),
        "pod deletions change nothing more"
    );
    let e = h.endpoint("shop/web/10.244.2.8:15006");
    assert_eq!(e.identity, "spiffe://cluster.local/ns/shop/sa/web");
    assert_eq!(e.labels["version"], "v1");
}

#[test]
fn a_pod_coming_back_with_a_new_ip_is_not_reached_at_the_old_one() {
    let mut h = Harness::listed("01-initial.json");
    h.replay("03-pod-moves.json");
    // The slice still names the old address, which the pod no longer has.
    assert!(!h
        .keys(Kind::Endpoint)
        .iter()
        .any(|k| k.starts_with("shop/legacy/")));
    h.replay("04-slice-follows.json");
    assert!(h
        .keys(Kind::Endpoint)
        .contains(&"shop/legacy/10.244.5.2:8080".to_string()));
}

#[test]
fn deletions_in_the_cluster_are_deleted_from_the_registry() {
    let mut h = Harness::listed("01-initial.json");
    h.replay("05-deletions.json");
    assert_eq!(h.keys(Kind::Service), ["shop/web"]);
    assert!(!h
        .keys(Kind::Endpoint)
        .iter()
        .any(|k| k.starts_with("shop/legacy/")));
    // web-canary is gone; the fixed `broken` route is in.
    assert_eq!(h.keys(Kind::Route), ["shop/broken"]);
}

#[test]
fn a_relist_after_a_watch_gap_drops_what_disappeared() {
    let mut h = Harness::listed("01-initial.json");
    // The watch was down while legacy went away: the relist lacks it.
    h.store.handle(StoreEvent::RelistStart(ObjectKind::Service));
    for e in events("01-initial.json") {
        if let StoreEvent::Apply(o) = &e {
            if o.kind() == ObjectKind::Service && o.key().1 != "legacy" {
                h.store.handle(e);
            }
        }
    }
    h.store.handle(StoreEvent::RelistDone(ObjectKind::Service));
    h.sync();
    assert_eq!(h.keys(Kind::Service), ["shop/web"]);
}

#[test]
fn the_api_cannot_change_what_kubernetes_owns_and_a_restart_takes_it_back() {
    let h = Harness::listed("01-initial.json");
    let err = h
        .registry
        .apply(Change {
            origin: Origin::Api,
            ops: vec![Op::Delete {
                kind: Kind::Service,
                key: "shop/web".into(),
            }],
        })
        .unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err}");
    assert!(err.to_string().contains("managed by kubernetes"), "{err}");

    // A new source (a restart) on the same registry: an empty cluster
    // deletes everything the previous run wrote.
    let mut source = KubeSource::new(h.registry.clone());
    let mut empty = ObjectStore::new();
    for kind in KINDS {
        empty.handle(StoreEvent::RelistStart(kind));
        empty.handle(StoreEvent::RelistDone(kind));
    }
    source.sync(convert(&empty, &h.settings)).unwrap();
    assert!(h.registry.snapshot().is_empty());
}
