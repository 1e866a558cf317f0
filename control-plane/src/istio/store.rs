//! The Istio and Gateway API objects the control plane keeps: each object as
//! it was written, what it produced, and what of it is not honoured.
//!
//! The objects live here, beside the registry, and the Sane resources they
//! produce live in the registry with origin `istio` (so an API write cannot
//! silently change them). A write ([`IstioStore::apply`]) converts every
//! stored object again together with the new ones ([`super::server::plan`]),
//! writes the difference to the registry as one all-or-nothing write, then
//! saves the objects. With a data directory they are saved to
//! `istio-objects.json` (written whole, then renamed: a crash leaves the
//! old file or the new one). The registry write comes first: should the
//! save fail, the next write removes what no stored object produces.
//!
//! Writes are serialized (one at a time); reads take the current set
//! without waiting. The scopes Sidecars give proxies are published on a
//! watch channel ([`IstioStore::scopes`]) the xDS server follows.

use super::error::StoreError;
use super::object::{object_from_json, ObjectKind};
use super::server::{plan, Plan, Request};
use super::{Converted, Note, Unsupported};
use crate::registry::{Applied, Registry};
use crate::xds::scope::{Scopes, SidecarScope};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The file in the data directory holding the objects.
pub const FILE_NAME: &str = "istio-objects.json";
const FORMAT_VERSION: u32 = 1;

/// Stored objects by key.
pub type Objects = BTreeMap<ObjectKey, StoredObject>;

/// The stored objects (see the module docs).
#[derive(Debug)]
pub struct IstioStore {
    /// `<data-dir>/istio-objects.json`; `None` keeps them in memory only.
    path: Option<PathBuf>,
    current: Mutex<Arc<Objects>>,
    /// Held through a whole write: plan, registry write, save.
    writer: tokio::sync::Mutex<()>,
    /// The Sidecar scopes of the stored objects.
    scopes: tokio::sync::watch::Sender<Arc<Scopes>>,
}

/// How an object is addressed: kind, namespace, name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// The kind.
    pub kind: ObjectKind,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// One stored object and the result of its last conversion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredObject {
    /// The object as written (`status` left out).
    pub object: Value,
    /// The Sane resources it produced: `kind namespace/name`.
    pub produced: Vec<String>,
    /// Its fields not honoured, with their path and why.
    pub unsupported: Vec<Unsupported>,
    /// How fields were translated where Sane differs on purpose.
    #[serde(default)]
    pub notes: Vec<Note>,
}

/// The result of a write.
#[derive(Clone, Debug)]
pub struct Written {
    /// The registry write.
    pub applied: Applied,
    /// The conversion of each object the request carried.
    pub converted: Vec<Converted>,
}

#[derive(Serialize, Deserialize)]
struct SavedFile {
    format: u32,
    objects: Vec<StoredObject>,
}

// === impl ObjectKey ===

impl ObjectKey {
    /// The key of a converted object.
    pub fn of(c: &Converted) -> Option<ObjectKey> {
        Some(ObjectKey {
            kind: ObjectKind::parse(&c.api_version, &c.object.kind)?,
            namespace: c.object.namespace.clone(),
            name: c.object.name.clone(),
        })
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind.name(), self.namespace, self.name)
    }
}

// === impl StoredObject ===

impl StoredObject {
    /// The object as the API shows it: its key, `apiVersion`, what it
    /// produced and its findings; with `full`, the object itself too.
    pub fn to_json(&self, key: &ObjectKey, full: bool) -> Value {
        let mut v = serde_json::json!({
            "kind": key.kind.name(),
            "resource": key.kind.plural(),
            "apiVersion": self.object.get("apiVersion").cloned().unwrap_or(Value::Null),
            "namespace": key.namespace,
            "name": key.name,
            "produced": self.produced,
            "unsupported": self.unsupported,
            "notes": self.notes,
        });
        if full {
            v["object"] = self.object.clone();
        }
        v
    }
}

// === impl IstioStore ===

impl IstioStore {
    /// An empty store kept in memory only.
    pub fn in_memory() -> IstioStore {
        IstioStore::with(None, Objects::new())
    }

    /// The store of a data directory: its objects, if it has any.
    pub fn open(dir: &Path) -> Result<IstioStore, StoreError> {
        let path = dir.join(FILE_NAME);
        let objects = match std::fs::read(&path) {
            Ok(bytes) => load(&path, &bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Objects::new(),
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        if !objects.is_empty() {
            tracing::info!(objects = objects.len(), path = %path.display(), "istio objects loaded");
        }
        Ok(IstioStore::with(Some(path), objects))
    }

    fn with(path: Option<PathBuf>, objects: Objects) -> IstioStore {
        let scopes = Scopes::default().next(scopes_of(&objects));
        IstioStore {
            path,
            current: Mutex::new(Arc::new(objects)),
            writer: tokio::sync::Mutex::new(()),
            scopes: tokio::sync::watch::Sender::new(Arc::new(scopes)),
        }
    }

    /// The Sidecar scopes now, and each new set as writes change them.
    pub fn scopes(&self) -> tokio::sync::watch::Receiver<Arc<Scopes>> {
        self.scopes.subscribe()
    }

    /// The stored objects now.
    pub fn objects(&self) -> Arc<Objects> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The stored object that produced the Sane resource `produced`
    /// (`route default/reviews.vs`), if any.
    pub fn producer_of(&self, produced: &str) -> Option<ObjectKey> {
        self.objects()
            .iter()
            .find(|(_, o)| o.produced.iter().any(|p| p == produced))
            .map(|(k, _)| k.clone())
    }

    /// Stores the request's objects (replacing those of the same key),
    /// removes the ones it names, and writes what the whole set now
    /// produces to `registry`. Nothing changes when any step fails.
    pub async fn apply(
        &self,
        registry: &Arc<Registry>,
        request: Request,
    ) -> Result<Written, StoreError> {
        let _writer = self.writer.lock().await;
        let stored = self.objects();
        let state = registry.snapshot();
        let Plan {
            changes,
            objects,
            converted,
            scopes,
        } = plan(&stored, &state, request)?;
        let registry = registry.clone();
        let applied = tokio::task::spawn_blocking(move || registry.apply_all(changes))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
        if let Some(path) = self.path.clone() {
            let to_save = objects.clone();
            tokio::task::spawn_blocking(move || save(&path, &to_save))
                .await
                .map_err(|e| StoreError::Task(e.to_string()))??;
        }
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(objects);
        self.scopes.send_if_modified(|current| {
            let next = current.next(scopes);
            let changed = next.generation != current.generation;
            if changed {
                *current = Arc::new(next);
            }
            changed
        });
        Ok(Written { applied, converted })
    }
}

/// The scopes of the stored Sidecars (each was converted when it was
/// stored; one that no longer converts is logged and left out).
fn scopes_of(objects: &Objects) -> Vec<SidecarScope> {
    objects
        .iter()
        .filter(|(k, _)| k.kind == ObjectKind::Sidecar)
        .filter_map(|(k, o)| {
            let converted = object_from_json(1, o.object.clone()).and_then(|object| {
                super::convert(&[super::Document::Object(object)], &Default::default())
            });
            match converted {
                Ok(c) => Some(c.scopes),
                Err(e) => {
                    tracing::warn!(object = %k, error = %e, "stored Sidecar left out");
                    None
                }
            }
        })
        .flatten()
        .collect()
}

fn load(path: &Path, bytes: &[u8]) -> Result<Objects, StoreError> {
    let invalid = |message: String| StoreError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let file: SavedFile = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
    if file.format != FORMAT_VERSION {
        return Err(invalid(format!(
            "format {} is not {FORMAT_VERSION}",
            file.format
        )));
    }
    let mut objects = Objects::new();
    for (i, stored) in file.objects.into_iter().enumerate() {
        let o = object_from_json(i + 1, stored.object.clone())
            .map_err(|e| invalid(format!("objects[{i}]: {e}")))?;
        let key = ObjectKey {
            kind: o.kind,
            namespace: o.namespace,
            name: o.name,
        };
        objects.insert(key, stored);
    }
    Ok(objects)
}

/// Writes the objects to a temporary file, syncs it, and renames it over
/// `path`.
fn save(path: &Path, objects: &Objects) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = SavedFile {
        format: FORMAT_VERSION,
        objects: objects.values().cloned().collect(),
    };
    let bytes = serde_json::to_vec_pretty(&file).map_err(|e| io(std::io::Error::other(e)))?;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        // The rename itself is durable once the directory is synced.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    Ok(())
}
