//! The Istio and Gateway API objects a `--kubernetes` control plane watches
//! in the cluster (`crate::k8s::istio_source` converts them), as the API
//! and `sanectl status` show them beside the stored ones: each object with
//! what it produced and its unsupported fields, and the objects left out
//! with why.
//!
//! The watch loop replaces the whole set after each conversion; readers
//! take the current set without waiting.

use super::store::{ObjectKey, Objects};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The watched objects now (see the module docs).
#[derive(Debug, Default)]
pub struct WatchedObjects {
    current: Mutex<Arc<Watched>>,
}

/// One conversion's result.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Watched {
    /// The objects converted, with what they produced and their findings.
    pub objects: Objects,
    /// The objects left out (malformed, a missing subset, a conflict, …):
    /// the object as the cluster holds it, and why.
    pub refused: BTreeMap<ObjectKey, (Value, String)>,
}

// === impl WatchedObjects ===

impl WatchedObjects {
    /// None yet.
    pub fn new() -> WatchedObjects {
        WatchedObjects::default()
    }

    /// The set now.
    pub fn get(&self) -> Arc<Watched> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the set.
    pub fn replace(&self, watched: Watched) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(watched);
    }

    /// The watched object that produced `produced` (`route shop/r.vs`).
    pub fn producer_of(&self, produced: &str) -> Option<ObjectKey> {
        self.get()
            .objects
            .iter()
            .find(|(_, o)| o.produced.iter().any(|p| p == produced))
            .map(|(k, _)| k.clone())
    }
}

// === impl Watched ===

impl Watched {
    /// Every object as the API lists it (`full`: with the object itself),
    /// marked `"source": "kubernetes"`; a refused one with its `error`.
    pub fn to_json(&self, full: bool) -> Vec<Value> {
        let mut items: Vec<Value> = self
            .objects
            .iter()
            .map(|(k, o)| {
                let mut v = o.to_json(k, full);
                v["source"] = Value::from("kubernetes");
                v
            })
            .collect();
        for (key, (object, why)) in &self.refused {
            let mut v = serde_json::json!({
                "kind": key.kind.name(),
                "resource": key.kind.plural(),
                "apiVersion": object.get("apiVersion").cloned().unwrap_or(Value::Null),
                "namespace": key.namespace,
                "name": key.name,
                "produced": [],
                "unsupported": [],
                "notes": [],
                "source": "kubernetes",
                "error": why,
            });
            if full {
                v["object"] = object.clone();
            }
            items.push(v);
        }
        items
    }

    /// One object by key, as [`Watched::to_json`] shows it with `full`.
    pub fn one(&self, key: &ObjectKey) -> Option<Value> {
        let only = Watched {
            objects: self
                .objects
                .get(key)
                .map(|o| [(key.clone(), o.clone())].into_iter().collect())
                .unwrap_or_default(),
            refused: self
                .refused
                .get(key)
                .map(|r| [(key.clone(), r.clone())].into_iter().collect())
                .unwrap_or_default(),
        };
        only.to_json(true).into_iter().next()
    }
}
