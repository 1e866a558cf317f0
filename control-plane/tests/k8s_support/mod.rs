//! Helpers of the Kubernetes tests: fixtures, and checking documents
//! against the Kubernetes schemas. Each object is read into its k8s-openapi
//! type (a wrong type fails with the field path) and written back; anything
//! the type does not know — a misspelt or misplaced field — is missing from
//! the result, so the two must be equal.

#![allow(dead_code, unreachable_pub)]

pub mod api_server;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use sane_control_plane::k8s::store::{ObjectKind, ObjectStore, StoreEvent};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::path::PathBuf;

/// A file under `tests/fixtures/`.
pub fn fixture(path: &str) -> String {
    let full = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// The recorded watch events of `tests/fixtures/<path>` (a JSON list of
/// `{"type": …, "object": …}`, as the API server streams them), as the
/// object store takes them.
pub fn recorded_events(path: &str) -> Vec<StoreEvent> {
    let recorded: Vec<Value> = serde_json::from_str(&fixture(path)).unwrap();
    recorded
        .into_iter()
        .filter_map(|e| StoreEvent::from_watch_json(e).unwrap())
        .collect()
}

/// A store that has completed a first list of every kind of `kinds`,
/// holding `events`: what the watchers report when they start.
pub fn listed_store(kinds: &[ObjectKind], events: Vec<StoreEvent>) -> ObjectStore {
    let mut store = ObjectStore::new();
    for kind in kinds {
        store.handle(StoreEvent::RelistStart(*kind));
    }
    for e in events {
        store.handle(e);
    }
    for kind in kinds {
        store.handle(StoreEvent::RelistDone(*kind));
    }
    assert!(store.is_listed(kinds));
    store
}

/// Every document of a YAML text, as JSON values (empty documents dropped).
pub fn documents(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| serde_yaml::Value::deserialize(doc).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .map(|v| serde_json::to_value(v).expect("YAML maps to JSON"))
        .collect()
}

/// Checks one object against the type its `kind` names.
pub fn validate(object: &Value) -> Result<(), String> {
    let kind = object["kind"].as_str().unwrap_or_default();
    match kind {
        "Pod" => roundtrip::<Pod>(object),
        "Deployment" => roundtrip::<Deployment>(object),
        "StatefulSet" => roundtrip::<StatefulSet>(object),
        "DaemonSet" => roundtrip::<DaemonSet>(object),
        "ReplicaSet" => roundtrip::<ReplicaSet>(object),
        "Job" => roundtrip::<Job>(object),
        "CronJob" => roundtrip::<CronJob>(object),
        "Service" => roundtrip::<Service>(object),
        "ConfigMap" => roundtrip::<ConfigMap>(object),
        "Secret" => roundtrip::<Secret>(object),
        "Namespace" => roundtrip::<Namespace>(object),
        "ServiceAccount" => roundtrip::<ServiceAccount>(object),
        "ClusterRole" => roundtrip::<ClusterRole>(object),
        "ClusterRoleBinding" => roundtrip::<ClusterRoleBinding>(object),
        "Role" => roundtrip::<Role>(object),
        "RoleBinding" => roundtrip::<RoleBinding>(object),
        "PodDisruptionBudget" => roundtrip::<PodDisruptionBudget>(object),
        "MutatingWebhookConfiguration" => roundtrip::<MutatingWebhookConfiguration>(object),
        "CustomResourceDefinition" => roundtrip::<CustomResourceDefinition>(object),
        other => Err(format!("no schema known for kind {other:?}")),
    }
}

/// Reads `object` as a `T`, writes it back, and reports every difference.
pub fn roundtrip<T: DeserializeOwned + Serialize>(object: &Value) -> Result<(), String> {
    let typed: T = serde_path_to_error::deserialize(object.clone())
        .map_err(|e| format!("{}: {}", e.path(), e.inner()))?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let mut diffs = Vec::new();
    diff(
        "",
        &without_nulls(object),
        &without_nulls(&back),
        &mut diffs,
    );
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "fields the Kubernetes schema does not have (typos?): {}",
            diffs.join(", ")
        ))
    }
}

fn without_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

fn diff(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                let p = format!("{path}.{k}");
                match y.get(k) {
                    Some(w) => diff(&p, v, w, out),
                    None => out.push(p),
                }
            }
            // Embedded objects (a StatefulSet's volumeClaimTemplates) get
            // their apiVersion and kind written out; that is not a typo.
            let added = y
                .keys()
                .filter(|k| !x.contains_key(*k) && !matches!(k.as_str(), "apiVersion" | "kind"));
            for k in added {
                out.push(format!("{path}.{k} (added)"));
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                diff(&format!("{path}[{i}]"), v, w, out);
            }
        }
        _ if a == b => {}
        // Schema bounds are floats in the types: 100 and 100.0 are one value.
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => {}
        _ => out.push(format!("{path}: {a} became {b}")),
    }
}

/// Decodes standard base64 (with padding), as an AdmissionReview's patch.
pub fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET
            .iter()
            .position(|a| *a == c)
            .expect("base64 character") as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// The `--kubernetes` settings of a control plane following the fake API
/// server at `url` (no webhook; the CA from the data dir unless
/// `ca_secret` names a Secret).
pub fn kube_config(
    url: &str,
    ca_secret: Option<&str>,
) -> sane_control_plane::k8s::KubernetesConfig {
    sane_control_plane::k8s::KubernetesConfig {
        watch: true,
        webhook_addr: None,
        webhook_dns_names: Vec::new(),
        webhook_config: "sane-sidecar-injector".into(),
        inject: sane_control_plane::k8s::inject::InjectConfig::default(),
        source: sane_control_plane::k8s::source::SourceSettings::default(),
        ca_secret: ca_secret.map(str::to_string),
        api_server: Some(url.into()),
    }
}
