//! The `sane.mesh/v1` custom resources: `Route`, `DestinationPolicy`,
//! `AuthorizationPolicy` and `PeerAuthentication`, whose `spec` is the
//! `sane-xds-proto` type itself, minus `name` and `namespace`, which come
//! from the object's metadata.
//!
//! The CRDs' OpenAPI schemas are generated from the HTTP API's schemas
//! ([`crate::api::openapi`]), which a test keeps equal to the resource types,
//! so the cluster, the API and the types describe one thing. The generated
//! definitions are checked in as `deploy/kubernetes/crds.yaml`; a test fails
//! when they drift.
//!
//! The watchers read these objects untyped (`DynamicObject`): one malformed
//! object must be reported, not break the watch of all the others.

use crate::resource::{Kind, Resource};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use sane_xds_proto::{AuthorizationPolicy, DestinationPolicy, PeerAuthentication, Route};
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};

/// API group of the mesh's custom resources.
pub const GROUP: &str = "sane.mesh";
/// Their version.
pub const VERSION: &str = "v1";

/// A kind of `sane.mesh/v1` object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyKind {
    /// Becomes a registry route.
    Route,
    /// Becomes a registry destination policy.
    DestinationPolicy,
    /// Becomes a registry authorization policy.
    AuthorizationPolicy,
    /// Becomes a registry peer authentication.
    PeerAuthentication,
}

// === impl PolicyKind ===

impl PolicyKind {
    /// Every kind.
    pub const ALL: [PolicyKind; 4] = [
        PolicyKind::Route,
        PolicyKind::DestinationPolicy,
        PolicyKind::AuthorizationPolicy,
        PolicyKind::PeerAuthentication,
    ];

    /// The `kind` field.
    pub fn kind(self) -> &'static str {
        match self {
            PolicyKind::Route => "Route",
            PolicyKind::DestinationPolicy => "DestinationPolicy",
            PolicyKind::AuthorizationPolicy => "AuthorizationPolicy",
            PolicyKind::PeerAuthentication => "PeerAuthentication",
        }
    }

    /// The resource name in URLs and RBAC rules.
    pub fn plural(self) -> &'static str {
        match self {
            PolicyKind::Route => "routes",
            PolicyKind::DestinationPolicy => "destinationpolicies",
            PolicyKind::AuthorizationPolicy => "authorizationpolicies",
            PolicyKind::PeerAuthentication => "peerauthentications",
        }
    }

    /// The kind named `kind`.
    pub fn parse(kind: &str) -> Option<PolicyKind> {
        PolicyKind::ALL.into_iter().find(|k| k.kind() == kind)
    }

    /// The kind of registry resource it becomes, if it becomes one.
    pub fn registry_kind(self) -> Option<Kind> {
        match self {
            PolicyKind::Route => Some(Kind::Route),
            PolicyKind::DestinationPolicy => Some(Kind::Policy),
            PolicyKind::AuthorizationPolicy => Some(Kind::Authz),
            PolicyKind::PeerAuthentication => Some(Kind::PeerAuthn),
        }
    }

    /// The kind of object a registry resource of `kind` is written as.
    pub fn of_registry_kind(kind: Kind) -> Option<PolicyKind> {
        PolicyKind::ALL
            .into_iter()
            .find(|k| k.registry_kind() == Some(kind))
    }

    /// What kube-rs needs to watch it.
    pub fn api_resource(self) -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(GROUP, VERSION, self.kind()),
            self.plural(),
        )
    }
}

/// Reads a `Route` object: its spec, named by its metadata.
pub fn route(object: &DynamicObject) -> Result<Route, String> {
    let (name, namespace) = names(object)?;
    let mut route: Route = spec(object)?;
    check_names(&mut route.name, &mut route.namespace, &name, &namespace)?;
    Ok(route)
}

/// Reads a `DestinationPolicy` object: its spec, named by its metadata.
pub fn destination_policy(object: &DynamicObject) -> Result<DestinationPolicy, String> {
    let (name, namespace) = names(object)?;
    let mut policy: DestinationPolicy = spec(object)?;
    check_names(&mut policy.name, &mut policy.namespace, &name, &namespace)?;
    Ok(policy)
}

/// Reads an `AuthorizationPolicy` object: its spec, named by its metadata.
pub fn authorization_policy(object: &DynamicObject) -> Result<AuthorizationPolicy, String> {
    let (name, namespace) = names(object)?;
    let mut policy: AuthorizationPolicy = spec(object)?;
    check_names(&mut policy.name, &mut policy.namespace, &name, &namespace)?;
    Ok(policy)
}

/// Reads a `PeerAuthentication` object: its spec, named by its metadata.
pub fn peer_authentication(object: &DynamicObject) -> Result<PeerAuthentication, String> {
    let (name, namespace) = names(object)?;
    let mut p: PeerAuthentication = spec(object)?;
    check_names(&mut p.name, &mut p.namespace, &name, &namespace)?;
    Ok(p)
}

/// The object a registry route or policy is written as (`--kubernetes`
/// API writes): named by its metadata, its spec the resource without
/// `name` and `namespace` — what [`route`], [`destination_policy`] and
/// [`authorization_policy`] read back. `None` for kinds without a CRD.
pub fn object_of(resource: &Resource) -> Option<(PolicyKind, Value)> {
    let kind = PolicyKind::of_registry_kind(resource.kind())?;
    let mut resource = resource.clone();
    resource.normalize();
    let key = resource.key();
    let (namespace, name) = key.split_once('/')?;
    let mut spec = resource.to_json();
    if let Some(map) = spec.as_object_mut() {
        map.remove("name");
        map.remove("namespace");
    }
    let object = json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": kind.kind(),
        "metadata": { "name": name, "namespace": namespace },
        "spec": spec,
    });
    Some((kind, object))
}

fn names(object: &DynamicObject) -> Result<(String, String), String> {
    let name = object.metadata.name.clone().unwrap_or_default();
    let namespace = object.metadata.namespace.clone().unwrap_or_default();
    if name.is_empty() || namespace.is_empty() {
        return Err("metadata.name and metadata.namespace are required".into());
    }
    Ok((name, namespace))
}

/// The spec as `T` (unknown fields rejected), with the field path on error.
fn spec<T: DeserializeOwned>(object: &DynamicObject) -> Result<T, String> {
    let spec = object.data.get("spec").cloned().unwrap_or(Value::Null);
    if !spec.is_object() {
        return Err("spec: an object is required".into());
    }
    serde_path_to_error::deserialize(spec).map_err(|e| {
        let path = e.path().to_string();
        format!("spec.{path}: {}", e.into_inner()).replace("spec..: ", "spec: ")
    })
}

/// The spec may repeat the metadata's name and namespace, not contradict it.
fn check_names(
    name: &mut String,
    namespace: &mut String,
    meta_name: &str,
    meta_namespace: &str,
) -> Result<(), String> {
    for (field, value, meta) in [
        ("name", &mut *name, meta_name),
        ("namespace", &mut *namespace, meta_namespace),
    ] {
        if !value.is_empty() && value != meta {
            return Err(format!(
                "spec.{field}: {value:?} differs from metadata.{field} {meta:?} (leave it out)"
            ));
        }
        *value = meta.to_string();
    }
    Ok(())
}

/// The CustomResourceDefinitions of every [`PolicyKind`], as the JSON the
/// API server takes.
pub fn definitions() -> Vec<Value> {
    let doc = crate::api::openapi::document();
    let schemas = &doc["components"]["schemas"];
    PolicyKind::ALL
        .into_iter()
        .map(|kind| {
            let mut spec = structural(&schemas[kind.kind()], schemas);
            // Named by the object's metadata.
            if let Some(props) = spec["properties"].as_object_mut() {
                props.remove("name");
                props.remove("namespace");
            }
            if let Some(required) = spec["required"].as_array_mut() {
                required.retain(|r| r != "name" && r != "namespace");
            }
            let columns = match kind {
                PolicyKind::PeerAuthentication => json!([{
                    "name": "Mode", "type": "string", "jsonPath": ".spec.mode",
                    "description": "The mutual TLS mode it sets."
                }]),
                _ => json!([{
                    "name": "Service", "type": "string", "jsonPath": ".spec.service",
                    "description": "The service it applies to."
                }]),
            };
            let description = match kind {
                PolicyKind::Route => "How HTTP requests to a service are matched and split (sane-xds-proto Route).",
                PolicyKind::DestinationPolicy => "How traffic to a service is balanced and protected (sane-xds-proto DestinationPolicy).",
                PolicyKind::AuthorizationPolicy => "Which identities may call a service's workloads, and how (sane-xds-proto AuthorizationPolicy).",
                PolicyKind::PeerAuthentication => "Mutual TLS mode of the inbound side of workloads (sane-xds-proto PeerAuthentication).",
            };
            let mut columns = columns.as_array().cloned().unwrap_or_default();
            columns.push(json!({ "name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp" }));
            json!({
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {
                    "name": format!("{}.{GROUP}", kind.plural()),
                    "labels": { "app.kubernetes.io/part-of": "sane-mesh" }
                },
                "spec": {
                    "group": GROUP,
                    "scope": "Namespaced",
                    "names": {
                        "kind": kind.kind(),
                        "listKind": format!("{}List", kind.kind()),
                        "plural": kind.plural(),
                        "singular": kind.kind().to_ascii_lowercase(),
                        "categories": ["sane-mesh"]
                    },
                    "versions": [{
                        "name": VERSION,
                        "served": true,
                        "storage": true,
                        "additionalPrinterColumns": columns,
                        "schema": { "openAPIV3Schema": {
                            "type": "object",
                            "description": description,
                            "required": ["spec"],
                            "properties": { "spec": spec }
                        }}
                    }]
                }
            })
        })
        .collect()
}

/// An OpenAPI schema made structural, as CRDs require: `$ref`s inlined,
/// `additionalProperties: false` dropped (the API server prunes unknown
/// fields instead, and `kubectl` warns about them), durations (string or
/// integer) marked int-or-string, and defaults dropped (the control plane
/// applies them; the API server would write them into every object).
fn structural(schema: &Value, schemas: &Value) -> Value {
    if let Some(name) = schema["$ref"].as_str() {
        let name = name.rsplit('/').next().unwrap_or_default();
        return structural(&schemas[name], schemas);
    }
    match schema {
        Value::Object(map) => {
            if let Some(Value::Array(one_of)) = map.get("oneOf") {
                let types: Vec<&str> = one_of.iter().filter_map(|s| s["type"].as_str()).collect();
                if types.contains(&"string") && types.contains(&"integer") {
                    return json!({ "x-kubernetes-int-or-string": true });
                }
            }
            let mut out = Map::new();
            for (k, v) in map {
                match k.as_str() {
                    "default" | "example" => {}
                    "additionalProperties" if v == &Value::Bool(false) => {}
                    "required" if v.as_array().is_some_and(|r| r.is_empty()) => {}
                    "properties" => {
                        let props = v
                            .as_object()
                            .into_iter()
                            .flatten()
                            .map(|(name, s)| (name.clone(), structural(s, schemas)))
                            .collect();
                        out.insert(k.clone(), Value::Object(props));
                    }
                    _ => {
                        out.insert(k.clone(), structural(v, schemas));
                    }
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(|s| structural(s, schemas)).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(kind: &str, spec: Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "sane.mesh/v1",
            "kind": kind,
            "metadata": { "name": "split", "namespace": "shop" },
            "spec": spec
        }))
        .unwrap()
    }

    #[test]
    fn specs_are_the_resource_types_named_by_metadata() {
        let r = route(&object(
            "Route",
            json!({ "service": "web", "rules": [ { "timeout": "2s" } ] }),
        ))
        .unwrap();
        assert_eq!((r.name.as_str(), r.namespace.as_str()), ("split", "shop"));
        assert_eq!(r.rules[0].timeout_ms, 2000);

        let err = route(&object(
            "Route",
            json!({ "service": "web", "rules": [ { "timeuot": "2s" } ] }),
        ))
        .unwrap_err();
        assert!(err.starts_with("spec.rules[0]"), "{err}");
        assert!(err.contains("timeuot"), "{err}");

        let err = destination_policy(&object(
            "DestinationPolicy",
            json!({ "name": "other", "service": "web" }),
        ))
        .unwrap_err();
        assert!(err.contains("spec.name: \"other\" differs"), "{err}");
    }

    #[test]
    fn a_resource_is_written_as_the_object_it_is_read_from() {
        let r = route(&object(
            "Route",
            json!({ "service": "web", "rules": [ { "timeout": "2s" } ] }),
        ))
        .unwrap();
        let (kind, written) = object_of(&Resource::Route(r.clone())).unwrap();
        assert_eq!(kind, PolicyKind::Route);
        assert_eq!(
            written["metadata"],
            json!({ "name": "split", "namespace": "shop" })
        );
        assert!(written["spec"].get("name").is_none(), "{written}");
        let back: DynamicObject = serde_json::from_value(written).unwrap();
        assert_eq!(route(&back).unwrap(), r);
        let service = Resource::Service(sane_xds_proto::Service::default());
        assert!(object_of(&service).is_none());
    }

    #[test]
    fn crd_schemas_are_structural() {
        fn walk(v: &Value, path: &str) {
            if let Some(map) = v.as_object() {
                assert!(!map.contains_key("$ref"), "{path}: $ref");
                assert!(!map.contains_key("default"), "{path}: default");
                assert_ne!(map.get("additionalProperties"), Some(&Value::Bool(false)));
                if map.contains_key("oneOf") {
                    panic!("{path}: oneOf");
                }
                for (k, v) in map {
                    walk(v, &format!("{path}.{k}"));
                }
            }
        }
        let crds = definitions();
        assert_eq!(crds.len(), 4);
        for crd in &crds {
            walk(crd, crd["metadata"]["name"].as_str().unwrap());
        }
        let route =
            &crds[0]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(route["required"], json!(["service", "rules"]));
        assert!(route["properties"].get("name").is_none());
        let timeout = &route["properties"]["rules"]["items"]["properties"]["timeout"];
        assert_eq!(timeout["x-kubernetes-int-or-string"], true);
    }
}
