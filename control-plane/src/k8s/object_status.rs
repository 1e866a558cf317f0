//! What Sane made of each watched Istio and Gateway API object, written
//! back to the object's `status` (`--kubernetes`), as Istio's and the
//! Gateway API's controllers do, so `kubectl get virtualservice x -o yaml`
//! shows it:
//!
//! - Istio kinds: `status.conditions` with one condition of type
//!   `Reconciled` (True: converted; False: left out, `reason` saying why),
//!   `status.validationMessages` with one entry per field Sane does not
//!   honour (Istio's `AnalysisMessageBase`: `type {code, name}`, `level`,
//!   plus a `description` naming the field: an extension, which Kiali
//!   shows and which is not compared, should a schema prune it), and
//!   `status.observedGeneration`.
//! - Gateway API `Gateway`: `status.conditions` `Accepted` and
//!   `Programmed`.
//! - `HTTPRoute`, `GRPCRoute`: one `status.parents[]` entry per
//!   `spec.parentRefs[]`, with [`CONTROLLER_NAME`] and the conditions
//!   `Accepted` and `ResolvedRefs`; other controllers' entries are kept.
//!
//! [`plan`] is a pure function of the object store and the conversion: it
//! returns a write only for an object whose status does not already say
//! it (a condition keeps its `lastTransitionTime` while its status stays),
//! so the watch seeing Sane's own write finds nothing to do, and a
//! status-only change does not convert again (`ObjectStore::handle`).
//! [`write`] sends each as a merge patch of the status subresource,
//! guarded by the `resourceVersion` the status was computed from; a
//! failure is logged with the object named and never stops the watch.

use super::source::SourceSettings;
use super::store::ObjectStore;
use crate::istio::object::ObjectKind;
use crate::istio::store::{ObjectKey, StoredObject};
use crate::istio::watched::{Refused, Watched};
use kube::api::{Patch, PatchParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::Api;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// The `controllerName` of Sane's `status.parents[]` entries on Gateway
/// API routes.
pub const CONTROLLER_NAME: &str = "sane-mesh.io/gateway-controller";

/// Istio validation message code of a field Sane does not honour.
pub const UNSUPPORTED_CODE: &str = "SANE0001";

/// At most this many unsupported fields are listed in a condition message
/// (all of them are in `validationMessages`).
const LISTED_IN_MESSAGE: usize = 10;

/// At most this many `status.parents[]` entries (the Gateway API's limit).
const MAX_PARENTS: usize = 32;

/// One status write.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusWrite {
    /// The object.
    pub key: ObjectKey,
    /// Its `apiVersion` as watched.
    pub api_version: String,
    /// The `resourceVersion` the status was computed from.
    pub resource_version: Option<String>,
    /// The merge patch's `status`: each field Sane owns, `null` to remove.
    pub status: Value,
}

/// What Sane made of one object.
#[derive(Clone, Copy, Debug)]
enum Finding<'a> {
    Converted(&'a StoredObject),
    Refused(&'a Refused),
}

/// The writes last sent, by object: the `resourceVersion` each was
/// computed from and its status; while the store has not yet seen the
/// write come back, the same write is not sent again.
pub type Sent = BTreeMap<ObjectKey, (Option<String>, Value)>;

/// The status writes that bring every object of `store` (outside the
/// excluded namespaces) to what `watched` says of it, at `now` (RFC 3339)
/// for new conditions; objects already saying so are left out.
pub fn plan(
    store: &ObjectStore,
    settings: &SourceSettings,
    watched: &Watched,
    sent: &Sent,
    now: &str,
) -> Vec<StatusWrite> {
    let mut writes = Vec::new();
    for (kind, (ns, name), object) in store.istio_objects() {
        if settings.excluded_namespaces.contains(ns) {
            continue;
        }
        let key = ObjectKey {
            kind,
            namespace: ns.clone(),
            name: name.clone(),
        };
        let finding = match (watched.objects.get(&key), watched.refused.get(&key)) {
            (Some(o), _) => Finding::Converted(o),
            (None, Some(r)) => Finding::Refused(r),
            (None, None) => continue,
        };
        let existing = object.get("status").cloned().unwrap_or(json!({}));
        let next = next_status(kind, object, finding, &existing, now);
        let owned = owned_fields(kind);
        let unchanged = owned.iter().all(|f| {
            comparable(f, existing.get(*f).filter(|v| !v.is_null())) == comparable(f, next.get(*f))
        });
        if unchanged {
            continue;
        }
        let patch: Map<String, Value> = owned
            .iter()
            .map(|f| (f.to_string(), next.get(*f).cloned().unwrap_or(Value::Null)))
            .collect();
        let resource_version = object["metadata"]["resourceVersion"]
            .as_str()
            .map(str::to_string);
        let status = Value::Object(patch);
        let already = sent.get(&key).is_some_and(|(version, was)| {
            *version == resource_version && without_times(was) == without_times(&status)
        });
        if already {
            // Sent already; the watch has not brought it back yet.
            continue;
        }
        writes.push(StatusWrite {
            key,
            api_version: object["apiVersion"].as_str().unwrap_or_default().into(),
            resource_version,
            status,
        });
    }
    writes
}

/// Sends each write (a merge patch of the status subresource); a failure
/// is logged with the object named. Records what was sent in `sent`.
pub async fn write(client: &kube::Client, writes: Vec<StatusWrite>, sent: &mut Sent) {
    for w in writes {
        let Some((group, version)) = w.api_version.split_once('/') else {
            continue;
        };
        let kind = w.key.kind;
        let gvk = GroupVersionKind::gvk(group, version, kind.name());
        let plural = kind.plural().split('.').next().unwrap_or_default();
        let resource = ApiResource::from_gvk_with_plural(&gvk, plural);
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &w.key.namespace, &resource);
        let mut patch = json!({ "status": w.status });
        if let Some(v) = &w.resource_version {
            patch["metadata"] = json!({ "resourceVersion": v });
        }
        match api
            .patch_status(&w.key.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                tracing::debug!(object = %w.key, "status written");
                sent.insert(w.key, (w.resource_version, w.status));
            }
            // Changed since: the watch brings the change, and the next
            // conversion writes its status.
            Err(kube::Error::Api(e)) if e.code == 409 => {
                tracing::debug!(object = %w.key, "status not written: the object changed meanwhile")
            }
            Err(error) => {
                tracing::warn!(object = %w.key, %error, "writing the object's status failed")
            }
        }
    }
}

/// Forgets what was sent to objects no longer watched (`sent` stays
/// bounded by the number of objects).
pub fn forget_gone(sent: &mut Sent, watched: &Watched) {
    sent.retain(|k, _| watched.objects.contains_key(k) || watched.refused.contains_key(k));
}

/// The status fields Sane writes for `kind`.
fn owned_fields(kind: ObjectKind) -> &'static [&'static str] {
    match kind {
        ObjectKind::HttpRoute | ObjectKind::GrpcRoute => &["parents"],
        ObjectKind::KubeGateway => &["conditions"],
        _ => &["conditions", "validationMessages", "observedGeneration"],
    }
}

/// `existing` with Sane's fields set to what `finding` says.
fn next_status(
    kind: ObjectKind,
    object: &Value,
    finding: Finding<'_>,
    existing: &Value,
    now: &str,
) -> Value {
    let generation = object["metadata"]["generation"].as_i64();
    let mut next = existing.as_object().cloned().unwrap_or_default();
    let conditions_of = |v: &Value| v.get("conditions").cloned().unwrap_or(json!([]));
    match kind {
        ObjectKind::HttpRoute | ObjectKind::GrpcRoute => {
            let ours = route_conditions(finding, generation);
            let old = existing["parents"].as_array().cloned().unwrap_or_default();
            // Other controllers' entries stay, in their place.
            let mut parents: Vec<Value> = old
                .iter()
                .filter(|p| p["controllerName"] != CONTROLLER_NAME)
                .cloned()
                .collect();
            let refs = object["spec"]["parentRefs"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for r in refs {
                let parent_ref = defaulted_parent_ref(&r);
                let before = old
                    .iter()
                    .find(|p| {
                        p["controllerName"] == CONTROLLER_NAME && p["parentRef"] == parent_ref
                    })
                    .map(conditions_of)
                    .unwrap_or(json!([]));
                parents.push(json!({
                    "parentRef": parent_ref,
                    "controllerName": CONTROLLER_NAME,
                    "conditions": merge_conditions(&before, ours.clone(), now),
                }));
            }
            // The Gateway API's schema allows 32 entries.
            parents.truncate(MAX_PARENTS);
            if parents.is_empty() && !existing.get("parents").is_some_and(Value::is_array) {
                next.remove("parents");
            } else {
                next.insert("parents".into(), Value::Array(parents));
            }
        }
        ObjectKind::KubeGateway => {
            let ours = gateway_conditions(finding, generation);
            next.insert(
                "conditions".into(),
                merge_conditions(&conditions_of(existing), ours, now),
            );
        }
        _ => {
            let (condition, messages) = istio_findings(finding);
            next.insert(
                "conditions".into(),
                merge_conditions(&conditions_of(existing), vec![condition], now),
            );
            if messages.is_empty() {
                next.remove("validationMessages");
            } else {
                next.insert("validationMessages".into(), Value::Array(messages));
            }
            match generation {
                Some(g) => next.insert("observedGeneration".into(), json!(g)),
                None => next.remove("observedGeneration"),
            };
        }
    }
    Value::Object(next)
}

/// A condition without its `lastTransitionTime` (set by [`merge_conditions`]).
fn condition(kind: &str, ok: bool, reason: &str, message: &str, generation: Option<i64>) -> Value {
    let mut c = json!({
        "type": kind,
        "status": if ok { "True" } else { "False" },
        "reason": reason,
        "message": message,
    });
    if let Some(g) = generation {
        c["observedGeneration"] = json!(g);
    }
    c
}

/// `ours` replacing the conditions of their types in `existing` (others
/// stay); a condition whose status did not change keeps its
/// `lastTransitionTime`, a new or changed one gets `now`.
fn merge_conditions(existing: &Value, ours: Vec<Value>, now: &str) -> Value {
    let old = existing.as_array().cloned().unwrap_or_default();
    let mut out: Vec<Value> = old
        .iter()
        .filter(|c| !ours.iter().any(|o| o["type"] == c["type"]))
        .cloned()
        .collect();
    for mut c in ours {
        let since = old
            .iter()
            .find(|o| o["type"] == c["type"] && o["status"] == c["status"])
            .and_then(|o| o.get("lastTransitionTime").cloned())
            .unwrap_or_else(|| json!(now));
        c["lastTransitionTime"] = since;
        out.push(c);
    }
    Value::Array(out)
}

/// The `Reconciled` condition and the validation messages of an Istio
/// object.
fn istio_findings(finding: Finding<'_>) -> (Value, Vec<Value>) {
    match finding {
        Finding::Converted(o) => {
            let messages: Vec<Value> = o
                .unsupported
                .iter()
                .map(|u| {
                    json!({
                        "type": { "code": UNSUPPORTED_CODE, "name": "UnsupportedField" },
                        "level": "WARNING",
                        "description": format!("{}: {}", u.path, u.reason),
                    })
                })
                .collect();
            let (reason, message) = if o.unsupported.is_empty() {
                ("Converted", converted_message(o))
            } else {
                (
                    "ConvertedWithUnsupportedFields",
                    format!(
                        "{}; not honoured (see validationMessages): {}",
                        converted_message(o),
                        unsupported_list(o)
                    ),
                )
            };
            (
                condition("Reconciled", true, reason, &message, None),
                messages,
            )
        }
        Finding::Refused(r) => (
            condition("Reconciled", false, r.reason, &r.message, None),
            Vec::new(),
        ),
    }
}

fn converted_message(o: &StoredObject) -> String {
    if o.produced.is_empty() {
        "converted by Sane Mesh; it produced nothing".into()
    } else {
        format!("converted by Sane Mesh into {}", o.produced.join(", "))
    }
}

/// The paths of the unsupported fields, the first [`LISTED_IN_MESSAGE`].
fn unsupported_list(o: &StoredObject) -> String {
    let listed: Vec<&str> = o
        .unsupported
        .iter()
        .take(LISTED_IN_MESSAGE)
        .map(|u| u.path.as_str())
        .collect();
    match o.unsupported.len().checked_sub(LISTED_IN_MESSAGE) {
        Some(more) if more > 0 => format!("{} and {more} more", listed.join(", ")),
        _ => listed.join(", "),
    }
}

/// The message of an accepted Gateway API object: what it became, and
/// the fields not honoured (the Gateway API status has no place of its
/// own for them).
fn accepted_message(o: &StoredObject) -> String {
    if o.unsupported.is_empty() {
        converted_message(o)
    } else {
        let fields: Vec<String> = o
            .unsupported
            .iter()
            .take(LISTED_IN_MESSAGE)
            .map(|u| format!("{}: {}", u.path, u.reason))
            .collect();
        format!(
            "{}; not honoured: {}",
            converted_message(o),
            fields.join("; ")
        )
    }
}

/// A Gateway's `Accepted` and `Programmed`.
fn gateway_conditions(finding: Finding<'_>, generation: Option<i64>) -> Vec<Value> {
    match finding {
        Finding::Converted(o) => vec![
            condition(
                "Accepted",
                true,
                "Accepted",
                &accepted_message(o),
                generation,
            ),
            condition(
                "Programmed",
                true,
                "Programmed",
                "its sane-proxy gateway configuration is served",
                generation,
            ),
        ],
        Finding::Refused(r) => vec![
            condition("Accepted", false, "Invalid", &r.message, generation),
            condition("Programmed", false, "Invalid", &r.message, generation),
        ],
    }
}

/// A route's `Accepted` and `ResolvedRefs` (the same for every parent:
/// Sane converts a route whole or not at all).
fn route_conditions(finding: Finding<'_>, generation: Option<i64>) -> Vec<Value> {
    match finding {
        Finding::Converted(o) => vec![
            condition(
                "Accepted",
                true,
                "Accepted",
                &accepted_message(o),
                generation,
            ),
            condition(
                "ResolvedRefs",
                true,
                "ResolvedRefs",
                "every backend is a known service",
                generation,
            ),
        ],
        Finding::Refused(r) => {
            let missing = matches!(r.reason, "UnknownHost" | "MissingSubset");
            let accepted = match r.reason {
                "UnknownHost" | "MissingSubset" => "BackendNotFound",
                "Conflict" => "Conflicted",
                _ => "UnsupportedValue",
            };
            let refs = if missing {
                condition(
                    "ResolvedRefs",
                    false,
                    "BackendNotFound",
                    &r.message,
                    generation,
                )
            } else {
                condition(
                    "ResolvedRefs",
                    true,
                    "ResolvedRefs",
                    "every backend is a known service",
                    generation,
                )
            };
            vec![
                condition("Accepted", false, accepted, &r.message, generation),
                refs,
            ]
        }
    }
}

/// A status field as compared with the one held: Sane's `description` in
/// validation messages is an extension of Istio's `AnalysisMessageBase`,
/// so an API server whose schema prunes it must not make Sane write the
/// same status again and again.
fn comparable(field: &str, value: Option<&Value>) -> Option<Value> {
    let mut value = value.cloned()?;
    if field == "validationMessages" {
        for m in value.as_array_mut().into_iter().flatten() {
            if let Some(m) = m.as_object_mut() {
                m.remove("description");
            }
        }
    }
    Some(value)
}

/// `status` without any `lastTransitionTime` (which a write recomputed
/// from an older status would set anew).
fn without_times(status: &Value) -> Value {
    match status {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| *k != "lastTransitionTime")
                .map(|(k, v)| (k.clone(), without_times(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_times).collect()),
        other => other.clone(),
    }
}

/// A `parentRef` with the defaults the API server fills in (`group`,
/// `kind`), so a stored status compares equal to a computed one.
fn defaulted_parent_ref(r: &Value) -> Value {
    let mut r = r.clone();
    if let Some(m) = r.as_object_mut() {
        m.entry("group")
            .or_insert_with(|| json!("gateway.networking.k8s.io"));
        m.entry("kind").or_insert_with(|| json!("Gateway"));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::istio::Unsupported;
    use crate::k8s::store::{KubeObject, StoreEvent};

    const NOW: &str = "2026-12-06T05:00:00Z";
    const LATER: &str = "2026-12-06T06:00:00Z";

    fn store_with(objects: &[Value]) -> ObjectStore {
        let mut store = ObjectStore::new();
        for o in objects {
            store.handle(StoreEvent::Apply(KubeObject::from_json(o.clone()).unwrap()));
        }
        store
    }

    fn vs(status: Option<Value>) -> Value {
        let mut o = json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": { "name": "web", "namespace": "shop", "generation": 3, "resourceVersion": "7" },
            "spec": { "hosts": ["web"] }
        });
        if let Some(s) = status {
            o["status"] = s;
        }
        o
    }

    fn key(kind: ObjectKind, name: &str) -> ObjectKey {
        ObjectKey {
            kind,
            namespace: "shop".into(),
            name: name.into(),
        }
    }

    fn converted(unsupported: &[&str]) -> StoredObject {
        StoredObject {
            object: json!({}),
            produced: vec!["route shop/web.vs".into()],
            unsupported: unsupported
                .iter()
                .map(|p| Unsupported {
                    path: p.to_string(),
                    reason: "not supported: no CORS".into(),
                })
                .collect(),
            notes: Vec::new(),
        }
    }

    fn watched_with(key: ObjectKey, o: StoredObject) -> Watched {
        let mut w = Watched::default();
        w.objects.insert(key, o);
        w
    }

    #[test]
    fn istio_objects_get_reconciled_and_a_message_per_unsupported_field() {
        let store = store_with(&[vs(None)]);
        let k = key(ObjectKind::VirtualService, "web");
        let watched = watched_with(k.clone(), converted(&["spec.http[0].corsPolicy"]));
        let s = SourceSettings::default();
        let writes = plan(&store, &s, &watched, &Sent::new(), NOW);
        assert_eq!(writes.len(), 1);
        let w = &writes[0];
        assert_eq!(
            (w.key.clone(), w.resource_version.as_deref()),
            (k, Some("7"))
        );
        let status = &w.status;
        assert_eq!(status["observedGeneration"], 3);
        let c = &status["conditions"][0];
        assert_eq!(c["type"], "Reconciled");
        assert_eq!(c["status"], "True");
        assert_eq!(c["reason"], "ConvertedWithUnsupportedFields");
        assert_eq!(c["lastTransitionTime"], NOW);
        let m = &status["validationMessages"][0];
        assert_eq!(m["type"]["code"], UNSUPPORTED_CODE);
        assert_eq!(m["level"], "WARNING");
        assert_eq!(
            m["description"],
            "spec.http[0].corsPolicy: not supported: no CORS"
        );

        // Once the object holds it, nothing is written, later too; nor
        // when the API server pruned the `description` extension.
        let store = store_with(&[vs(Some(status.clone()))]);
        assert!(plan(&store, &s, &watched, &Sent::new(), LATER).is_empty());
        let mut pruned = status.clone();
        pruned["validationMessages"][0]
            .as_object_mut()
            .unwrap()
            .remove("description");
        let pruned_store = store_with(&[vs(Some(pruned))]);
        assert!(plan(&pruned_store, &s, &watched, &Sent::new(), LATER).is_empty());
        // The field fixed: the messages go (null), the condition changes
        // and gets a new time.
        let fixed = watched_with(key(ObjectKind::VirtualService, "web"), converted(&[]));
        let w = &plan(&store, &s, &fixed, &Sent::new(), LATER)[0];
        assert!(w.status["validationMessages"].is_null());
        assert_eq!(w.status["conditions"][0]["reason"], "Converted");
        assert_eq!(
            w.status["conditions"][0]["lastTransitionTime"], NOW,
            "still True"
        );
    }

    #[test]
    fn a_refused_object_is_reconciled_false_with_the_reason() {
        let store = store_with(&[vs(Some(json!({ "conditions": [
            { "type": "Other", "status": "True" }
        ] })))]);
        let mut watched = Watched::default();
        watched.refused.insert(
            key(ObjectKind::VirtualService, "web"),
            Refused {
                object: vs(None),
                reason: "MissingSubset",
                message: "subset \"v3\" is not declared".into(),
            },
        );
        let w = &plan(
            &store,
            &SourceSettings::default(),
            &watched,
            &Sent::new(),
            NOW,
        )[0];
        let conditions = w.status["conditions"].as_array().unwrap();
        // Another writer's condition stays.
        assert_eq!(conditions[0]["type"], "Other");
        assert_eq!(conditions[1]["status"], "False");
        assert_eq!(conditions[1]["reason"], "MissingSubset");
        assert!(conditions[1]["message"].as_str().unwrap().contains("v3"));
    }

    #[test]
    fn routes_get_one_parent_entry_per_parent_ref_and_others_stay() {
        let route = json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": { "name": "r", "namespace": "shop", "generation": 1 },
            "spec": { "parentRefs": [ { "name": "gw" } ] },
            "status": { "parents": [ {
                "parentRef": { "name": "gw" }, "controllerName": "example.com/other",
                "conditions": []
            } ] }
        });
        let store = store_with(&[route]);
        let watched = watched_with(key(ObjectKind::HttpRoute, "r"), converted(&[]));
        let s = SourceSettings::default();
        let w = &plan(&store, &s, &watched, &Sent::new(), NOW)[0];
        let parents = w.status["parents"].as_array().unwrap();
        assert_eq!(parents.len(), 2);
        assert_eq!(parents[0]["controllerName"], "example.com/other");
        let ours = &parents[1];
        assert_eq!(ours["controllerName"], CONTROLLER_NAME);
        assert_eq!(ours["parentRef"]["kind"], "Gateway");
        assert_eq!(ours["parentRef"]["group"], "gateway.networking.k8s.io");
        assert_eq!(ours["conditions"][0]["type"], "Accepted");
        assert_eq!(ours["conditions"][0]["status"], "True");
        assert_eq!(ours["conditions"][0]["observedGeneration"], 1);
        assert_eq!(ours["conditions"][1]["type"], "ResolvedRefs");
        // The same write while the watch has not brought it back: not again.
        let mut sent = Sent::new();
        sent.insert(
            w.key.clone(),
            (w.resource_version.clone(), w.status.clone()),
        );
        assert!(plan(&store, &s, &watched, &sent, LATER).is_empty());
    }

    #[test]
    fn gateways_are_accepted_and_programmed_or_invalid() {
        let gateway = json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": { "name": "gw", "namespace": "shop", "generation": 2 },
            "spec": { "gatewayClassName": "sane" }
        });
        let store = store_with(&[gateway]);
        let k = key(ObjectKind::KubeGateway, "gw");
        let s = SourceSettings::default();
        let w = &plan(
            &store,
            &s,
            &watched_with(k.clone(), converted(&["spec.x"])),
            &Sent::new(),
            NOW,
        )[0];
        let c = &w.status["conditions"];
        assert_eq!(
            (c[0]["type"].as_str(), c[0]["status"].as_str()),
            (Some("Accepted"), Some("True"))
        );
        assert!(c[0]["message"]
            .as_str()
            .unwrap()
            .contains("not honoured: spec.x"));
        assert_eq!(
            (c[1]["type"].as_str(), c[1]["status"].as_str()),
            (Some("Programmed"), Some("True"))
        );
        assert_eq!(c[1]["observedGeneration"], 2);
        let mut refused = Watched::default();
        refused.refused.insert(
            k,
            Refused {
                object: json!({}),
                reason: "Malformed",
                message: "spec.listeners: wrong type".into(),
            },
        );
        let w = &plan(&store, &s, &refused, &Sent::new(), NOW)[0];
        assert_eq!(w.status["conditions"][0]["status"], "False");
        assert_eq!(w.status["conditions"][1]["reason"], "Invalid");
    }

    #[test]
    fn a_refused_route_names_the_missing_backend() {
        let route = json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
            "metadata": { "name": "r", "namespace": "shop" },
            "spec": { "parentRefs": [ { "name": "web", "kind": "Service", "group": "" } ] }
        });
        let store = store_with(&[route]);
        let mut watched = Watched::default();
        watched.refused.insert(
            key(ObjectKind::GrpcRoute, "r"),
            Refused {
                object: json!({}),
                reason: "UnknownHost",
                message: "host \"nope\" is not a known service".into(),
            },
        );
        let w = &plan(
            &store,
            &SourceSettings::default(),
            &watched,
            &Sent::new(),
            NOW,
        )[0];
        let parent = &w.status["parents"][0];
        assert_eq!(parent["parentRef"]["kind"], "Service");
        assert_eq!(parent["conditions"][0]["status"], "False");
        assert_eq!(parent["conditions"][0]["reason"], "BackendNotFound");
        assert_eq!(parent["conditions"][1]["type"], "ResolvedRefs");
        assert_eq!(parent["conditions"][1]["status"], "False");
    }
}
