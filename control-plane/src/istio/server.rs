//! Server-side conversion: what a write of Istio and Gateway API objects
//! does to the stored objects and to the registry, as a pure function of
//! both ([`plan`]), so it is tested without a server.
//!
//! Every stored object is converted again with the request's: subsets
//! resolve against every stored DestinationRule, a policy without a
//! selector covers today's services, and a Sane route added meanwhile for a
//! service a VirtualService directs is found as a conflict. The registry
//! write puts what the objects produce (origin `istio`) and deletes what
//! they no longer produce; Sane documents of the same request are put in
//! the same write (origin `api`).

use super::error::StoreError;
use super::object::{object_from_json, Document, Object};
use super::store::{ObjectKey, Objects, StoredObject};
use super::{convert, Context, Converted, IstioError};
use crate::registry::{Change, Op, Origin, State};
use crate::resource::{Kind, Resource};
use crate::xds::scope::SidecarScope;
use sane_xds_proto::MeshResources;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// What a write asks for.
#[derive(Debug, Default)]
pub struct Request {
    /// Objects to store (replacing those of the same kind, namespace and
    /// name) and Sane documents to put.
    pub documents: Vec<Document>,
    /// Stored objects to remove, with what they produced.
    pub remove: Vec<ObjectKey>,
    /// Refuse the write when an object of the request has a field that
    /// cannot be honoured.
    pub strict: bool,
}

/// What a write does.
#[derive(Debug)]
pub struct Plan {
    /// The registry write (all or nothing).
    pub changes: Vec<Change>,
    /// The stored objects afterwards.
    pub objects: Objects,
    /// The conversion of each object of the request.
    pub converted: Vec<Converted>,
    /// The Sidecar scopes of every object afterwards.
    pub scopes: Vec<SidecarScope>,
}

/// Plans a write of `request` against the `stored` objects and the
/// registry `state` (see the module docs). Errors are those of
/// [`convert`], plus `--strict` findings, removing an object that is not
/// stored, and listeners in a Sane document (they are per proxy).
pub fn plan(stored: &Objects, state: &State, request: Request) -> Result<Plan, StoreError> {
    let mut sane = MeshResources::default();
    let mut requested: BTreeMap<ObjectKey, Object> = BTreeMap::new();
    for doc in request.documents {
        match doc {
            Document::Sane(m) => {
                if !m.listeners.is_empty() {
                    return Err(StoreError::Listeners);
                }
                Resource::from_mesh(*m)
                    .into_iter()
                    .for_each(|(_, r)| r.push_into(&mut sane));
            }
            Document::Object(o) => {
                requested.insert(key_of(&o), o);
            }
        }
    }
    for key in &request.remove {
        if !stored.contains_key(key) {
            return Err(StoreError::NotStored(key.clone()));
        }
    }
    let mut all: BTreeMap<ObjectKey, Object> = BTreeMap::new();
    for (key, s) in stored {
        if request.remove.contains(key) || requested.contains_key(key) {
            continue;
        }
        // It was read by `object_from_json` when it was stored.
        all.insert(key.clone(), object_from_json(1, s.object.clone())?);
    }
    let new_keys: BTreeSet<ObjectKey> = requested.keys().cloned().collect();
    all.extend(requested);
    let raw: BTreeMap<ObjectKey, Value> = all
        .iter()
        .map(|(k, o)| (k.clone(), o.raw.clone()))
        .collect();

    let sane_resources: Vec<Resource> = Resource::from_mesh(sane.clone())
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    let sane_keys: BTreeSet<(Kind, String)> =
        sane_resources.iter().map(|r| (r.kind(), r.key())).collect();
    let mut context = Context::default();
    for (kind, key, e) in state.iter() {
        if e.origin == Origin::Istio || sane_keys.contains(&(kind, key.to_string())) {
            continue;
        }
        match &e.resource {
            Resource::Service(s) => context.services.push(s.clone()),
            Resource::Endpoint(ep) => context.endpoints.push(ep.clone()),
            Resource::Route(r) => context.routes.push(r.clone()),
            _ => {}
        }
    }
    let mut docs = vec![Document::Sane(Box::new(sane))];
    docs.extend(all.into_values().map(Document::Object));
    let conversion = convert(&docs, &context)?;

    if request.strict {
        let findings: Vec<String> = conversion
            .objects
            .iter()
            .filter(|c| ObjectKey::of(c).is_some_and(|k| new_keys.contains(&k)))
            .flat_map(|c| {
                c.unsupported
                    .iter()
                    .map(move |u| format!("{}: {}: {}", c.object, u.path, u.reason))
            })
            .collect();
        if !findings.is_empty() {
            return Err(IstioError::Strict(findings).into());
        }
    }

    let scopes = conversion.scopes;
    let produced: Vec<Resource> = Resource::from_mesh(conversion.resources)
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    let produced_keys: BTreeSet<(Kind, String)> =
        produced.iter().map(|r| (r.kind(), r.key())).collect();
    let mut istio_ops: Vec<Op> = state
        .iter()
        .filter(|(kind, key, e)| {
            e.origin == Origin::Istio && !produced_keys.contains(&(*kind, key.to_string()))
        })
        .map(|(kind, key, _)| Op::Delete {
            kind,
            key: key.to_string(),
        })
        .collect();
    istio_ops.extend(produced.into_iter().map(|resource| Op::Put {
        resource,
        ttl: None,
    }));
    let mut changes = Vec::new();
    if !sane_resources.is_empty() {
        changes.push(Change {
            origin: Origin::Api,
            ops: sane_resources
                .into_iter()
                .map(|resource| Op::Put {
                    resource,
                    ttl: None,
                })
                .collect(),
        });
    }
    changes.push(Change {
        origin: Origin::Istio,
        ops: istio_ops,
    });

    let mut objects = Objects::new();
    let mut converted = Vec::new();
    for c in conversion.objects {
        let Some(key) = ObjectKey::of(&c) else {
            continue;
        };
        let Some(object) = raw.get(&key) else {
            continue;
        };
        objects.insert(
            key.clone(),
            StoredObject {
                object: object.clone(),
                produced: c.produced.clone(),
                unsupported: c.unsupported.clone(),
                notes: c.notes.clone(),
            },
        );
        if new_keys.contains(&key) {
            converted.push(c);
        }
    }
    Ok(Plan {
        changes,
        objects,
        converted,
        scopes,
    })
}

fn key_of(o: &Object) -> ObjectKey {
    ObjectKey {
        kind: o.kind,
        namespace: o.namespace.clone(),
        name: o.name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::object::parse_documents;
    use super::super::store::IstioStore;
    use super::*;
    use crate::registry::Registry;
    use std::sync::Arc;

    const MESH: &str = "services:\n\
        - { name: reviews, ports: [ { name: http, port: 80 } ] }\n\
        - { name: ratings, ports: [ { name: http, port: 80 } ] }\n\
        endpoints:\n\
        - { service: reviews, address: 10.0.0.1, port: 9080, labels: { version: v1 } }\n\
        - { service: reviews, address: 10.0.0.2, port: 9080, labels: { version: v2 } }\n";

    const DR: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
        metadata: { name: reviews }\n\
        spec:\n  host: reviews\n  subsets:\n  - { name: v1, labels: { version: v1 } }\n  - { name: v2, labels: { version: v2 } }\n";

    fn vs(name: &str, subset: &str) -> String {
        format!(
            "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\n\
             metadata: {{ name: {name}, labels: {{ team: books }} }}\n\
             spec:\n  hosts: [reviews]\n  http:\n  - route: [ {{ destination: {{ host: reviews, subset: {subset} }} }} ]\n    corsPolicy: {{ allowOrigins: [ {{ exact: x }} ] }}\n"
        )
    }

    fn request(text: &str, strict: bool) -> Request {
        Request {
            documents: parse_documents(text).unwrap(),
            remove: Vec::new(),
            strict,
        }
    }

    async fn setup() -> (Arc<Registry>, IstioStore) {
        let registry = Arc::new(Registry::in_memory());
        let store = IstioStore::in_memory();
        store.apply(&registry, request(MESH, false)).await.unwrap();
        (registry, store)
    }

    fn route_origin(registry: &Registry, key: &str) -> Option<Origin> {
        registry
            .snapshot()
            .get(Kind::Route, key)
            .map(|e| e.origin.clone())
    }

    #[tokio::test]
    async fn objects_are_stored_with_what_they_produced_and_their_findings() {
        let (registry, store) = setup().await;
        let written = store
            .apply(
                &registry,
                request(&format!("{DR}---\n{}", vs("reviews", "v1")), false),
            )
            .await
            .unwrap();
        assert_eq!(written.converted.len(), 2);
        let objects = store.objects();
        let (key, vs_obj) = objects
            .iter()
            .find(|(k, _)| k.kind == super::super::object::ObjectKind::VirtualService)
            .unwrap();
        assert_eq!(key.to_string(), "VirtualService default/reviews");
        assert_eq!(vs_obj.produced, vec!["route default/reviews.vs"]);
        assert_eq!(vs_obj.unsupported[0].path, "spec.http[0].corsPolicy");
        // The object as written, labels included.
        assert_eq!(vs_obj.object["metadata"]["labels"]["team"], "books");
        assert_eq!(
            route_origin(&registry, "default/reviews.vs"),
            Some(Origin::Istio)
        );

        // A VirtualService alone now resolves its subset against the stored
        // DestinationRule; replacing it changes the route.
        store
            .apply(&registry, request(&vs("reviews", "v2"), false))
            .await
            .unwrap();
        let snap = registry.snapshot();
        let Resource::Route(r) = &snap
            .get(Kind::Route, "default/reviews.vs")
            .unwrap()
            .resource
        else {
            panic!("not a route")
        };
        assert_eq!(r.rules[0].destinations[0].subset["version"], "v2");

        // Removing it removes what it produced.
        let remove = Request {
            remove: vec![key.clone()],
            ..Default::default()
        };
        store.apply(&registry, remove).await.unwrap();
        assert_eq!(route_origin(&registry, "default/reviews.vs"), None);
        assert_eq!(store.objects().len(), 1, "the DestinationRule stays");
    }

    #[tokio::test]
    async fn refused_writes_store_nothing() {
        let (registry, store) = setup().await;
        let before = registry.revision();
        // --strict with an unsupported field.
        let err = store
            .apply(
                &registry,
                request(&format!("{DR}---\n{}", vs("reviews", "v1")), true),
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("VirtualService default/reviews: spec.http[0].corsPolicy: not supported"),
            "{err}"
        );
        // A subset no stored or sent DestinationRule declares.
        let err = store
            .apply(&registry, request(&vs("reviews", "v1"), false))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("subset \"v1\" of host \"reviews\""), "{err}");
        // A Sane route and a VirtualService for the same host.
        let sane_route = "routes:\n- { name: reviews-canary, service: reviews, rules: [ { destinations: [ { service: reviews } ] } ] }\n";
        store
            .apply(&registry, request(sane_route, false))
            .await
            .unwrap();
        let before_conflict = registry.revision();
        let err = store
            .apply(
                &registry,
                request(&format!("{DR}---\n{}", vs("reviews", "v1")), false),
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "conflict for service \"reviews.default\": Sane route default/reviews-canary and VirtualService default/reviews"
            ),
            "{err}"
        );
        assert_eq!(registry.revision(), before_conflict);
        assert!(before < before_conflict);
        assert!(store.objects().is_empty(), "{:?}", store.objects());
        // Removing an object that is not stored.
        let err = store
            .apply(
                &registry,
                Request {
                    remove: vec![ObjectKey {
                        kind: super::super::object::ObjectKind::VirtualService,
                        namespace: "default".into(),
                        name: "nope".into(),
                    }],
                    ..Default::default()
                },
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("VirtualService default/nope is not stored"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn the_routes_directing_a_service_come_from_the_index() {
        let (registry, store) = setup().await;
        // A route of ratings that sends to reviews refers to reviews but
        // does not direct it.
        let routes = "routes:\n\
            - { name: ratings-to-reviews, service: ratings, rules: [ { destinations: [ { service: reviews } ] } ] }\n\
            - { name: reviews-canary, service: reviews, rules: [ { destinations: [ { service: reviews } ] } ] }\n";
        store
            .apply(&registry, request(routes, false))
            .await
            .unwrap();
        let snap = registry.snapshot();
        let directing: Vec<&str> = snap.routes_of("reviews.default").map(|(k, _)| k).collect();
        assert_eq!(directing, ["default/reviews-canary"]);
        assert!(snap.routes_of("details.default").next().is_none());
    }

    #[tokio::test]
    async fn stored_sidecars_publish_their_scopes() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Arc::new(Registry::in_memory());
        let store = IstioStore::open(dir.path()).unwrap();
        let scopes = store.scopes();
        assert_eq!(scopes.borrow().generation, 0);
        let sidecar = "apiVersion: networking.istio.io/v1\nkind: Sidecar\n\
            metadata: { name: default, namespace: prod }\n\
            spec:\n  egress: [ { hosts: [\"./*\"] } ]\n";
        store
            .apply(&registry, request(sidecar, false))
            .await
            .unwrap();
        {
            let now = scopes.borrow();
            assert_eq!(now.generation, 1);
            assert_eq!(now.scopes[0].egress[0].namespace, "prod");
        }
        // The same again changes nothing; a restart reads them back.
        store
            .apply(&registry, request(sidecar, false))
            .await
            .unwrap();
        assert_eq!(scopes.borrow().generation, 1);
        let reopened = IstioStore::open(dir.path()).unwrap();
        assert_eq!(reopened.scopes().borrow().scopes, scopes.borrow().scopes);
        let remove = Request {
            remove: vec![ObjectKey {
                kind: super::super::object::ObjectKind::Sidecar,
                namespace: "prod".into(),
                name: "default".into(),
            }],
            ..Default::default()
        };
        store.apply(&registry, remove).await.unwrap();
        assert!(scopes.borrow().scopes.is_empty());
        assert_eq!(scopes.borrow().generation, 2);
    }

    #[tokio::test]
    async fn objects_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Arc::new(Registry::in_memory());
        let store = IstioStore::open(dir.path()).unwrap();
        store.apply(&registry, request(MESH, false)).await.unwrap();
        store
            .apply(
                &registry,
                request(&format!("{DR}---\n{}", vs("reviews", "v1")), false),
            )
            .await
            .unwrap();
        let reopened = IstioStore::open(dir.path()).unwrap();
        assert_eq!(*reopened.objects(), *store.objects());
        assert_eq!(
            reopened
                .producer_of("route default/reviews.vs")
                .unwrap()
                .to_string(),
            "VirtualService default/reviews"
        );
    }
}
