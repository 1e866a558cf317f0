//! The Istio and Gateway API objects a `--kubernetes` control plane watches
//! in the cluster (`crate::k8s::istio_source` converts them), as the API
//! and `sanectl status` show them beside the stored ones: each object with
//! what it produced and its unsupported fields, and the objects left out
//! with why.
//!
//! The watch loop replaces the whole set after each conversion; readers
//! take the current set without waiting. The watched Sidecars' scopes are
//! published on a watch channel ([`WatchedObjects::scopes`]) the xDS
//! server merges with the applied ones (`crate::xds::scope::merge`).

use super::store::{ObjectKey, Objects};
use super::IstioError;
use crate::xds::scope::SidecarScope;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// The watched objects now (see the module docs).
#[derive(Debug)]
pub struct WatchedObjects {
    current: Mutex<Arc<Watched>>,
    scopes: watch::Sender<Arc<Vec<SidecarScope>>>,
}

/// One conversion's result.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Watched {
    /// The objects converted, with what they produced and their findings.
    pub objects: Objects,
    /// The objects left out (malformed, a missing subset, a conflict, …).
    pub refused: BTreeMap<ObjectKey, Refused>,
    /// The scopes the converted Sidecars give the proxies they select.
    pub scopes: Vec<SidecarScope>,
}

/// An object left out of the conversion.
#[derive(Clone, Debug, PartialEq)]
pub struct Refused {
    /// The object as the cluster holds it.
    pub object: Value,
    /// Why, in one CamelCase word ([`IstioError::reason`]).
    pub reason: &'static str,
    /// Why, in full.
    pub message: String,
}

// === impl Refused ===

impl Refused {
    /// `object` left out for `error`.
    pub fn new(object: Value, error: &IstioError) -> Refused {
        Refused {
            object,
            reason: error.reason(),
            message: error.to_string(),
        }
    }
}

impl Default for WatchedObjects {
    fn default() -> WatchedObjects {
        WatchedObjects {
            current: Mutex::default(),
            scopes: watch::Sender::new(Arc::default()),
        }
    }
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

    /// Replaces the set (and publishes its scopes if they changed).
    pub fn replace(&self, watched: Watched) {
        let scopes = watched.scopes.clone();
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(watched);
        self.scopes.send_if_modified(|current| {
            let changed = **current != scopes;
            if changed {
                *current = Arc::new(scopes);
            }
            changed
        });
    }

    /// The watched Sidecars' scopes now, and each new set.
    pub fn scopes(&self) -> watch::Receiver<Arc<Vec<SidecarScope>>> {
        self.scopes.subscribe()
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
        for (key, refused) in &self.refused {
            let object = &refused.object;
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
                "error": refused.message,
                "reason": refused.reason,
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
            scopes: Vec::new(),
        };
        only.to_json(true).into_iter().next()
    }
}
