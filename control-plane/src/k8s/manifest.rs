//! `sanectl inject`: injection applied to YAML manifests, and the overlay
//! that writes an injection back into the original document.
//!
//! A file may hold many `---`-separated documents (and `kind: List`s).
//! Workloads — `Pod`, `Deployment`, `StatefulSet`, `DaemonSet`, `ReplicaSet`,
//! `ReplicationController`, `Job`, `CronJob` — get their pod template
//! injected; every other document is copied through byte for byte, comments
//! included.
//!
//! Injection runs on typed k8s-openapi values, but the result is written back
//! as an [`overlay`] onto the original document: only the annotations, the
//! init containers, the probes and the volumes are touched, so fields this
//! build's Kubernetes types do not know (a newer API server's) survive, key
//! order is kept, and the admission webhook's JSON patch is as small as the
//! change.

use super::error::{InjectError, ManifestError};
use super::inject::{workload_name, Decision, Injected, Injector, PodContext, SkipReason};
use super::{BOOTSTRAP_ANNOTATION, ROOT_CERT_ANNOTATION, STATUS_ANNOTATION};
use k8s_openapi::api::core::v1::{Container, PodTemplateSpec};
use serde_yaml::{Mapping, Value};

/// What happened to one object of a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectOutcome {
    /// 1-based document number.
    pub document: usize,
    /// `kind` of the object.
    pub kind: String,
    /// `metadata.name` of the object.
    pub name: String,
    /// What was done.
    pub action: Action,
}

/// What was done to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Its pod template was injected.
    Injected,
    /// It is a workload, left as it was.
    Skipped(SkipReason),
    /// Not a workload: copied through.
    PassedThrough,
}

/// A manifest after injection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectedManifest {
    /// The YAML text.
    pub text: String,
    /// One entry per object, in order.
    pub objects: Vec<ObjectOutcome>,
}

/// Where a kind keeps its pod template (`[]`: the object is the pod).
pub fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Pod" => Some(&[]),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => Some(&["spec", "template"]),
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

/// Injects every workload of a multi-document manifest; objects without a
/// namespace are taken to be in `default_namespace`.
pub fn inject_manifest(
    injector: &Injector,
    text: &str,
    default_namespace: &str,
) -> Result<InjectedManifest, ManifestError> {
    let mut out = String::with_capacity(text.len() * 2);
    let mut objects = Vec::new();
    for (i, (separator, body)) in split_documents(text).into_iter().enumerate() {
        let document = i + 1;
        out.push_str(separator);
        let mut value: Value = serde_yaml::from_str(body)
            .map_err(|source| ManifestError::Yaml { document, source })?;
        let changed = inject_value(
            injector,
            &mut value,
            document,
            default_namespace,
            &mut objects,
        )?;
        if changed {
            let yaml = serde_yaml::to_string(&value)
                .map_err(|source| ManifestError::Yaml { document, source })?;
            out.push_str(&yaml);
        } else {
            out.push_str(body);
        }
    }
    Ok(InjectedManifest { text: out, objects })
}

/// Injects one object (or the items of a `List`); true if it changed.
fn inject_value(
    injector: &Injector,
    value: &mut Value,
    document: usize,
    default_namespace: &str,
    objects: &mut Vec<ObjectOutcome>,
) -> Result<bool, ManifestError> {
    let kind = str_at(value, &["kind"]).unwrap_or_default();
    let name = str_at(value, &["metadata", "name"]).unwrap_or_default();
    if kind == "List" || kind.ends_with("List") && value.get("items").is_some() {
        let mut changed = false;
        if let Some(Value::Sequence(items)) = value.get_mut("items") {
            for item in items {
                changed |= inject_value(injector, item, document, default_namespace, objects)?;
            }
        }
        return Ok(changed);
    }
    let Some(path) = template_path(&kind) else {
        if value.is_mapping() {
            objects.push(ObjectOutcome {
                document,
                kind,
                name,
                action: Action::PassedThrough,
            });
        }
        return Ok(false);
    };
    let namespace = str_at(value, &["metadata", "namespace"])
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| default_namespace.to_string());
    let Some(raw) = value_at_mut(value, path) else {
        return Err(ManifestError::Shape {
            document,
            kind,
            name,
            path: path.join("."),
            message: "missing".into(),
        });
    };
    let template = typed_template(raw).map_err(|(at, message)| ManifestError::Shape {
        document,
        kind: kind.clone(),
        name: name.clone(),
        path: [path.join("."), at]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("."),
        message,
    })?;
    let meta = template.metadata.unwrap_or_default();
    let ctx = PodContext {
        namespace,
        node_id: name.clone(),
        workload: workload_name(&meta, &name),
    };
    let spec = template.spec.unwrap_or_default();
    let wrap = |source: InjectError| ManifestError::Inject {
        document,
        kind: kind.clone(),
        name: name.clone(),
        source,
    };
    let action = match injector.inject(&meta, &spec, &ctx).map_err(wrap)? {
        Decision::Injected(injected) => {
            overlay(raw, &injected).map_err(|e| wrap(InjectError::Bootstrap(e)))?;
            Action::Injected
        }
        Decision::Skipped(reason) => Action::Skipped(reason),
    };
    objects.push(ObjectOutcome {
        document,
        kind,
        name,
        action,
    });
    Ok(action == Action::Injected)
}

/// Reads a pod template (or a pod: the same `metadata` and `spec`) from a
/// document, naming the offending field path on error.
pub fn typed_template(raw: &Value) -> Result<PodTemplateSpec, (String, String)> {
    serde_path_to_error::deserialize::<_, PodTemplateSpec>(raw.clone()).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        (path, e.into_inner().to_string())
    })
}

/// Writes an injection into the original pod (or template) document
/// `raw`: the two annotations, the added init containers in front of the
/// existing ones, the rewritten probes, and the added volumes at the end.
/// Everything else in `raw` stays as it was.
pub fn overlay(raw: &mut Value, injected: &Injected) -> Result<(), String> {
    let root = raw.as_mapping_mut().ok_or("the pod is not a mapping")?;
    let metadata = entry_mapping(root, "metadata")?;
    let annotations = entry_mapping(metadata, "annotations")?;
    let typed = injected.metadata.annotations.clone().unwrap_or_default();
    for key in [
        BOOTSTRAP_ANNOTATION,
        ROOT_CERT_ANNOTATION,
        STATUS_ANNOTATION,
    ] {
        if let Some(v) = typed.get(key) {
            annotations.insert(key.into(), Value::String(v.clone()));
        }
    }
    let spec = entry_mapping(root, "spec")?;
    let added = injected.added_init_containers;
    let typed_init = injected.spec.init_containers.clone().unwrap_or_default();
    let mut init: Vec<Value> = typed_init[..added]
        .iter()
        .map(yaml)
        .collect::<Result<_, _>>()?;
    if let Some(Value::Sequence(existing)) = spec.get("initContainers") {
        for (raw_c, typed_c) in existing.iter().zip(&typed_init[added..]) {
            init.push(with_probes(raw_c, typed_c)?);
        }
    }
    spec.insert("initContainers".into(), Value::Sequence(init));
    if let Some(Value::Sequence(containers)) = spec.get_mut("containers") {
        for (raw_c, typed_c) in containers.iter_mut().zip(&injected.spec.containers) {
            *raw_c = with_probes(raw_c, typed_c)?;
        }
    }
    let typed_volumes = injected.spec.volumes.clone().unwrap_or_default();
    let new_volumes = &typed_volumes[typed_volumes.len() - injected.added_volumes..];
    let mut volumes = match spec.get("volumes") {
        Some(Value::Sequence(v)) => v.clone(),
        _ => Vec::new(),
    };
    for v in new_volumes {
        volumes.push(yaml(v)?);
    }
    spec.insert("volumes".into(), Value::Sequence(volumes));
    Ok(())
}

/// `raw` with its probes replaced by those of `typed` (the same container
/// after injection).
fn with_probes(raw: &Value, typed: &Container) -> Result<Value, String> {
    let mut out = raw.clone();
    let Some(map) = out.as_mapping_mut() else {
        return Err(format!("container {:?} is not a mapping", typed.name));
    };
    for (key, probe) in [
        ("livenessProbe", &typed.liveness_probe),
        ("readinessProbe", &typed.readiness_probe),
        ("startupProbe", &typed.startup_probe),
    ] {
        if let Some(p) = probe {
            map.insert(key.into(), yaml(p)?);
        }
    }
    Ok(out)
}

fn entry_mapping<'a>(map: &'a mut Mapping, key: &str) -> Result<&'a mut Mapping, String> {
    let slot = map
        .entry(Value::String(key.to_string()))
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if slot.is_null() {
        *slot = Value::Mapping(Mapping::new());
    }
    slot.as_mapping_mut()
        .ok_or_else(|| format!("{key} is not a mapping"))
}

fn str_at(value: &Value, path: &[&str]) -> Option<String> {
    let mut v = value;
    for key in path {
        v = v.get(key)?;
    }
    v.as_str().map(str::to_string)
}

fn value_at_mut<'a>(value: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    let mut v = value;
    for key in path {
        v = v.get_mut(key)?;
    }
    Some(v)
}

/// Splits a multi-document YAML text at its `---` lines, keeping each
/// separator line (empty for a first document without one) with the text
/// after it.
fn split_documents(text: &str) -> Vec<(&str, &str)> {
    let mut docs = Vec::new();
    let mut separator = (0, 0);
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed.starts_with("--- #") {
            if offset > 0 {
                docs.push((&text[separator.0..separator.1], &text[separator.1..offset]));
            }
            separator = (offset, offset + line.len());
        }
        offset += line.len();
    }
    docs.push((&text[separator.0..separator.1], &text[separator.1..]));
    docs
}

fn yaml<T: serde::Serialize>(value: &T) -> Result<Value, String> {
    serde_yaml::to_value(value).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::inject::InjectConfig;

    #[test]
    fn documents_split_at_separator_lines_only() {
        let text = "a: 1\n---\nb: '---'\n--- # comment\nc: 3\n";
        let docs = split_documents(text);
        assert_eq!(
            docs,
            vec![
                ("", "a: 1\n"),
                ("---\n", "b: '---'\n"),
                ("--- # comment\n", "c: 3\n")
            ]
        );
        assert_eq!(split_documents("---\nx: 1\n"), vec![("---\n", "x: 1\n")]);
        assert_eq!(split_documents(""), vec![("", "")]);
    }

    #[test]
    fn non_workloads_and_comments_pass_through_byte_for_byte() {
        let text = "# the config\napiVersion: v1\nkind: ConfigMap   # odd spacing kept\nmetadata: {name: c}\ndata: {a: b}\n---\n";
        let injector = Injector::new(InjectConfig::default());
        let out = inject_manifest(&injector, text, "default").unwrap();
        assert_eq!(out.text, text);
        assert_eq!(out.objects.len(), 1);
        assert_eq!(out.objects[0].action, Action::PassedThrough);
    }

    #[test]
    fn shape_errors_name_the_field() {
        let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  template:\n    spec:\n      containers:\n        - name: web\n          ports: [ { containerPort: eighty } ]\n";
        let injector = Injector::new(InjectConfig::default());
        let err = inject_manifest(&injector, text, "default").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("spec.template.spec.containers[0].ports[0].containerPort"),
            "{msg}"
        );
        assert!(msg.contains("Deployment \"web\""), "{msg}");
    }
}
