//! The cluster's Istio and Gateway API objects (`--kubernetes`), through the
//! same conversion as `sanectl apply` ([`crate::istio::convert`]), into the
//! registry beside what [`super::source::convert`] makes of the cluster.
//!
//! [`convert_with_istio`] is a pure function of the object store and the
//! registry's other resources: the Services, EndpointSlices and
//! `sane.mesh` objects are converted first, and the Istio objects resolve
//! their hosts, subsets and conflicts against those plus what other
//! sources (API, files) put in the registry. What they produce joins the
//! source's resources, so [`super::source::KubeSource::sync`] writes it
//! with origin `kubernetes` in the same transaction, and deleting an
//! object deletes what it produced at the next sync.
//!
//! Unlike `sanectl apply`, where an error refuses the whole write, a
//! watcher cannot refuse the cluster: an object that cannot be converted
//! (malformed, a missing subset, a conflict with another object or a Sane
//! route) is left out alone — its error kept for the status — and the
//! others are converted without it. The whole set is tried first; only
//! when it fails are objects added one at a time in conversion order
//! (ServiceEntries, DestinationRules, then the routes), so the first of two
//! conflicting objects wins.

use super::source::{convert, Converted, Problem, SourceSettings};
use super::store::ObjectStore;
use crate::istio::object::{object_from_json, Document, Object};
use crate::istio::store::{ObjectKey, StoredObject};
use crate::istio::watched::{Refused, Watched};
use crate::istio::{self, Context};
use crate::registry::{Origin, State};
use crate::resource::Resource;
use serde_json::Value;
use std::collections::BTreeMap;

/// Converts the store: cluster objects, then Istio objects against them
/// and `state`'s resources of other origins. Returns what the registry
/// should hold (origin `kubernetes`) and what the status shows of the
/// Istio objects.
pub fn convert_with_istio(
    store: &ObjectStore,
    settings: &SourceSettings,
    state: &State,
) -> (Converted, Watched) {
    let mut converted = convert(store, settings);
    let mut context = Context::default();
    let others = state
        .iter()
        .filter(|(_, _, e)| e.origin != Origin::Kubernetes)
        .map(|(_, _, e)| &e.resource);
    for r in converted.resources.iter().chain(others) {
        match r {
            Resource::Service(s) => context.services.push(s.clone()),
            Resource::Endpoint(e) => context.endpoints.push(e.clone()),
            Resource::Route(r) => context.routes.push(r.clone()),
            _ => {}
        }
    }
    let mut watched = Watched::default();
    let mut objects: Vec<Object> = Vec::new();
    for (n, (kind, (ns, name), json)) in store.istio_objects().enumerate() {
        if settings.excluded_namespaces.contains(ns) {
            continue;
        }
        let json = trimmed(json);
        match object_from_json(n + 1, json.clone()) {
            Ok(o) => objects.push(o),
            Err(e) => {
                let key = ObjectKey {
                    kind,
                    namespace: ns.clone(),
                    name: name.clone(),
                };
                watched.refused.insert(key, Refused::new(json, &e));
            }
        }
    }
    let mut raw: BTreeMap<ObjectKey, Value> =
        objects.iter().map(|o| (key_of(o), o.raw.clone())).collect();
    if let Some(conversion) = accept(objects, &context, &mut watched) {
        watched.scopes = conversion.scopes;
        converted.resources.extend(
            Resource::from_mesh(conversion.resources)
                .into_iter()
                .map(|(_, r)| r),
        );
        for c in conversion.objects {
            let Some(key) = ObjectKey::of(&c) else {
                continue;
            };
            let Some(object) = raw.remove(&key) else {
                continue;
            };
            watched.objects.insert(
                key,
                StoredObject {
                    object,
                    produced: c.produced,
                    unsupported: c.unsupported,
                    notes: c.notes,
                },
            );
        }
    }
    for (key, refused) in &watched.refused {
        converted.problems.push(Problem {
            object: key.to_string(),
            message: refused.message.clone(),
        });
    }
    (converted, watched)
}

/// The conversion of the largest set of `objects` that converts: all of
/// them, or else those that convert when added one at a time; the others
/// are recorded in `watched.refused`.
fn accept(
    mut objects: Vec<Object>,
    context: &Context,
    watched: &mut Watched,
) -> Option<istio::Conversion> {
    if objects.is_empty() {
        return None;
    }
    let docs = |objects: &[Object]| -> Vec<Document> {
        objects.iter().cloned().map(Document::Object).collect()
    };
    if let Ok(all) = istio::convert(&docs(&objects), context) {
        return Some(all);
    }
    // Conversion order: ServiceEntries, DestinationRules, then routes.
    objects.sort_by_key(key_of);
    let mut kept: Vec<Object> = Vec::new();
    let mut last = None;
    for object in objects {
        kept.push(object);
        match istio::convert(&docs(&kept), context) {
            Ok(c) => last = Some(c),
            Err(e) => {
                let Some(o) = kept.pop() else { continue };
                watched.refused.insert(key_of(&o), Refused::new(o.raw, &e));
            }
        }
    }
    last
}

fn key_of(o: &Object) -> ObjectKey {
    ObjectKey {
        kind: o.kind,
        namespace: o.namespace.clone(),
        name: o.name.clone(),
    }
}

/// The object without what the API server adds for its own bookkeeping
/// (`metadata.managedFields`, the last-applied annotation's copy) and
/// without its `status` (what Sane wrote there, `super::object_status`),
/// which the API's listing need not repeat.
fn trimmed(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(o) = object.as_object_mut() {
        o.remove("status");
    }
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
        if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            a.remove("kubectl.kubernetes.io/last-applied-configuration");
            if a.is_empty() {
                meta.remove("annotations");
            }
        }
    }
    object
}
