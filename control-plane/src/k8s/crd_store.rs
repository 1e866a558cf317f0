//! `--kubernetes`: the cluster is the store. The resource API's writes of
//! routes, destination and authorization policies become writes of the
//! `sane.mesh/v1` objects ([`super::crd::object_of`]), and every replica —
//! this one included — sees them through its watch ([`super::watch`]), so
//! replicas share nothing but the Kubernetes API and need no leader.
//!
//! A write is checked first as the registry would check it (its references
//! and everything it affects, against this replica's registry: a route to
//! an unknown service is a 422 with the field path, and nothing is sent),
//! then sent:
//!
//! | API request | Kubernetes request | Conflict (409 to the client) |
//! | --- | --- | --- |
//! | `PUT` with `If-Match: "0"` (must not exist) | `POST` (create) | `AlreadyExists` |
//! | `PUT` with `If-Match: "<v>"` | `PUT` with `metadata.resourceVersion: "<v>"` | `Conflict`, or `NotFound` |
//! | `PUT` | `GET`, then `POST` or `PUT` with the version read; retried on a conflict | after 5 conflicts in a row: 503 |
//! | `DELETE` with `If-Match: "<v>"` | `DELETE` with `preconditions.resourceVersion` | `Conflict` |
//! | `DELETE` | `DELETE` | — (absent: 404) |
//!
//! Resource versions are the objects' `resourceVersion`s (numbers on
//! etcd-backed API servers), the same through every replica: `GET` answers
//! the version this replica's watch last saw in `ETag`. A write is answered
//! once the API server committed it, after waiting (at most
//! [`SYNC_WAIT`]) for this replica's watch to bring it into the registry,
//! so a read through the same replica sees it; `"synced": false` in the
//! answer says the wait ran out. An API server that cannot be reached or
//! refuses the service account is a 503 naming the cause.
//!
//! Services, endpoints and telemetry have no custom resource: in
//! Kubernetes mode services and endpoints are the cluster's Services and
//! EndpointSlices, and writing any of them through one replica would reach
//! that replica only, so they are refused (409) — unless the registry is
//! shared anyway (`--store etcd://…`).

use super::crd::{self, PolicyKind};
use crate::api::cluster::{ClusterStore, ClusterWrite, WriteFuture};
use crate::error::{Error, Rejected};
use crate::istio::watched::WatchedObjects;
use crate::registry::{Change, Op, Origin, Outcome, Registry};
use crate::resource::{Kind, Resource};
use kube::api::{DeleteParams, PostParams, Preconditions};
use kube::core::DynamicObject;
use kube::Api;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The `sane.mesh` objects' versions the watch has brought into the
/// registry, by registry kind and key.
pub type Versions = BTreeMap<(Kind, String), u64>;

/// How long a write waits for this replica's watch before answering.
pub const SYNC_WAIT: Duration = Duration::from_secs(5);
/// Field manager of the control plane's writes (`kubectl` shows it).
pub const FIELD_MANAGER: &str = "sane-control-plane";
/// Attempts of an unguarded write that keeps meeting concurrent writers.
const ATTEMPTS: u32 = 5;
/// How errors name the store.
const STORE: &str = "the Kubernetes API";

/// The cluster as the API's store (see the module docs).
#[derive(Clone)]
pub struct CrdStore {
    client: kube::Client,
    registry: Arc<Registry>,
    synced: watch::Receiver<Arc<Versions>>,
    watched: Arc<WatchedObjects>,
    shared_registry: bool,
    sync_wait: Duration,
}

// === impl CrdStore ===

impl std::fmt::Debug for CrdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrdStore")
            .field("shared_registry", &self.shared_registry)
            .field("sync_wait", &self.sync_wait)
            .finish_non_exhaustive()
    }
}

impl CrdStore {
    /// Writes through `client`; `synced` is what the watch has brought into
    /// `registry`; `watched` the Istio objects (what they produce cannot be
    /// written here); `shared_registry` when the registry is on etcd (then
    /// kinds without a CRD are written to it as usual).
    pub fn new(
        client: kube::Client,
        registry: Arc<Registry>,
        synced: watch::Receiver<Arc<Versions>>,
        watched: Arc<WatchedObjects>,
        shared_registry: bool,
    ) -> CrdStore {
        CrdStore {
            client,
            registry,
            synced,
            watched,
            shared_registry,
            sync_wait: SYNC_WAIT,
        }
    }

    /// Waits at most `wait` for the watch after a write.
    pub fn with_sync_wait(mut self, wait: Duration) -> CrdStore {
        self.sync_wait = wait;
        self
    }

    fn api(&self, kind: PolicyKind, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), namespace, &kind.api_resource())
    }

    /// Refuses what the registry would refuse: a resource another source
    /// owns, one a watched Istio object produces, or a write that leaves
    /// the registry invalid (checked on a scratch copy).
    fn check(&self, resource: &Resource) -> Result<(), Error> {
        let (kind, key) = (resource.kind(), resource.key());
        let state = self.registry.snapshot();
        if let Some(e) = state.get(kind, &key) {
            if matches!(e.origin, Origin::File(_) | Origin::Istio) {
                return Err(Error::Conflict {
                    kind,
                    key,
                    owner: e.origin.to_string(),
                });
            }
        }
        if let Some(object) = self.watched.producer_of(&format!("{kind} {key}")) {
            return Err(Error::Conflict {
                kind,
                key,
                owner: format!("{object} (in the cluster)"),
            });
        }
        let mut ops: Vec<Op> = state
            .iter()
            .filter(|(k, other, _)| !(*k == kind && *other == key))
            .map(|(_, _, e)| Op::Put {
                resource: e.resource.clone(),
                ttl: None,
            })
            .collect();
        ops.push(Op::Put {
            resource: resource.clone(),
            ttl: None,
        });
        Registry::in_memory()
            .apply(Change {
                origin: Origin::Api,
                ops,
            })
            .map(|_| ())
    }

    async fn put_object(
        &self,
        resource: Resource,
        expect: Option<u64>,
    ) -> Result<ClusterWrite, Error> {
        let mut resource = resource;
        resource.normalize();
        let (kind, key) = (resource.kind(), resource.key());
        let Some((policy, object)) = crd::object_of(&resource) else {
            return Err(refused(kind));
        };
        self.check(&resource)?;
        let (namespace, name) = split(&key);
        let api = self.api(policy, namespace);
        let object: DynamicObject = serde_json::from_value(object).map_err(|e| {
            Error::Rejected(Rejected::single(
                format!("{}[{key}]", kind.plural()),
                e.to_string(),
            ))
        })?;
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        let (outcome, version) = match expect {
            Some(0) => match api.create(&params, &object).await {
                Ok(o) => (Outcome::Created, version_of(&o, kind, &key)?),
                Err(e) if code(&e) == Some(409) => {
                    return Err(self.conflict(&api, kind, &key, 0).await)
                }
                Err(e) => return Err(write_error(e, kind, &key)),
            },
            Some(expected) => {
                let mut guarded = object;
                guarded.metadata.resource_version = Some(expected.to_string());
                match api.replace(name, &params, &guarded).await {
                    Ok(o) => {
                        let v = version_of(&o, kind, &key)?;
                        (updated(v, expected), v)
                    }
                    Err(e) if matches!(code(&e), Some(409 | 404)) => {
                        return Err(self.conflict(&api, kind, &key, expected).await)
                    }
                    Err(e) => return Err(write_error(e, kind, &key)),
                }
            }
            None => {
                self.put_unguarded(&api, &params, object, kind, &key)
                    .await?
            }
        };
        let synced = self.wait_synced(kind, &key, Some(version)).await;
        Ok(ClusterWrite {
            outcome,
            version,
            synced,
        })
    }

    /// Create-or-replace: read the current version, write under it, and
    /// start over when another writer came in between.
    async fn put_unguarded(
        &self,
        api: &Api<DynamicObject>,
        params: &PostParams,
        object: DynamicObject,
        kind: Kind,
        key: &str,
    ) -> Result<(Outcome, u64), Error> {
        let (_, name) = split(key);
        for _ in 0..ATTEMPTS {
            let current = api
                .get_opt(name)
                .await
                .map_err(|e| write_error(e, kind, key))?;
            let result = match &current {
                None => api
                    .create(params, &object)
                    .await
                    .map(|o| (Outcome::Created, o)),
                Some(c) => {
                    let mut guarded = object.clone();
                    guarded.metadata.resource_version = c.metadata.resource_version.clone();
                    api.replace(name, params, &guarded)
                        .await
                        .map(|o| (Outcome::Updated, o))
                }
            };
            match result {
                Ok((outcome, o)) => {
                    let v = version_of(&o, kind, key)?;
                    let before = current.as_ref().and_then(parse_version);
                    let outcome = match before {
                        Some(b) if outcome == Outcome::Updated => updated(v, b),
                        _ => outcome,
                    };
                    return Ok((outcome, v));
                }
                Err(e) if code(&e) == Some(409) => continue,
                Err(e) => return Err(write_error(e, kind, key)),
            }
        }
        Err(Error::StoreContention { attempts: ATTEMPTS })
    }

    async fn delete_object(
        &self,
        kind: Kind,
        key: String,
        expect: Option<u64>,
    ) -> Result<ClusterWrite, Error> {
        let Some(policy) = PolicyKind::of_registry_kind(kind) else {
            return Err(refused(kind));
        };
        let (namespace, name) = split(&key);
        let api = self.api(policy, namespace);
        if expect == Some(0) {
            // "Must not exist": a delete can only conflict or find nothing.
            return Err(match self.current_version(&api, kind, &key).await? {
                0 => Error::NotFound { kind, key },
                _ => self.conflict(&api, kind, &key, 0).await,
            });
        }
        let params = DeleteParams {
            preconditions: expect.map(|v| Preconditions {
                resource_version: Some(v.to_string()),
                uid: None,
            }),
            ..Default::default()
        };
        match api.delete(name, &params).await {
            Ok(_) => {}
            Err(e) if code(&e) == Some(404) => return Err(Error::NotFound { kind, key }),
            Err(e) if code(&e) == Some(409) => {
                return Err(self
                    .conflict(&api, kind, &key, expect.unwrap_or_default())
                    .await)
            }
            Err(e) => return Err(write_error(e, kind, &key)),
        }
        let synced = self.wait_synced(kind, &key, None).await;
        Ok(ClusterWrite {
            outcome: Outcome::Deleted,
            version: 0,
            synced,
        })
    }

    /// The version the cluster holds now (0: absent).
    async fn current_version(
        &self,
        api: &Api<DynamicObject>,
        kind: Kind,
        key: &str,
    ) -> Result<u64, Error> {
        let (_, name) = split(key);
        match api.get_opt(name).await {
            Ok(o) => Ok(o.as_ref().and_then(parse_version).unwrap_or(0)),
            Err(e) => Err(write_error(e, kind, key)),
        }
    }

    /// The conflict error, with the version the cluster holds now.
    async fn conflict(
        &self,
        api: &Api<DynamicObject>,
        kind: Kind,
        key: &str,
        expected: u64,
    ) -> Error {
        match self.current_version(api, kind, key).await {
            Ok(found) => Error::VersionConflict {
                kind,
                key: key.to_string(),
                expected,
                found,
            },
            Err(e) => e,
        }
    }

    /// Waits for the watch to bring the write into the registry: the
    /// object at `version` or later, or (`None`) gone.
    async fn wait_synced(&self, kind: Kind, key: &str, version: Option<u64>) -> bool {
        let mut synced = self.synced.clone();
        let id = (kind, key.to_string());
        let seen = synced.wait_for(|v| match version {
            Some(want) => v.get(&id).is_some_and(|have| *have >= want),
            None => !v.contains_key(&id),
        });
        let in_time = matches!(tokio::time::timeout(self.sync_wait, seen).await, Ok(Ok(_)));
        in_time
    }
}

impl ClusterStore for CrdStore {
    fn route(&self, kind: Kind) -> Option<Result<(), String>> {
        if PolicyKind::of_registry_kind(kind).is_some() {
            Some(Ok(()))
        } else if self.shared_registry {
            None
        } else {
            Some(Err(refused(kind).to_string()))
        }
    }

    fn version(&self, kind: Kind, key: &str) -> Option<u64> {
        self.synced.borrow().get(&(kind, key.to_string())).copied()
    }

    fn put(&self, resource: Resource, expect: Option<u64>) -> WriteFuture<'_> {
        Box::pin(self.put_object(resource, expect))
    }

    fn delete(&self, kind: Kind, key: String, expect: Option<u64>) -> WriteFuture<'_> {
        Box::pin(self.delete_object(kind, key, expect))
    }
}

/// Why `kind` cannot be written through the API in Kubernetes mode.
fn refused(kind: Kind) -> Error {
    let source = match kind {
        Kind::Service | Kind::Endpoint => {
            "they come from the cluster's Services, EndpointSlices and Pods (change those)"
        }
        _ => "it has no sane.mesh/v1 custom resource",
    };
    Error::Rejected(Rejected::single(
        kind.plural(),
        format!(
            "{} cannot be written through the API of a --kubernetes control plane: {source}; \
             a write here would reach this replica alone (run the replicas on etcd, --store, \
             to write them through the API)",
            kind.plural()
        ),
    ))
}

/// `namespace/name` → its parts (keys of CRD-backed kinds have two).
fn split(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("default", key))
}

/// The HTTP status of an API server's answer.
fn code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(r) => Some(r.code),
        _ => None,
    }
}

fn parse_version(o: &DynamicObject) -> Option<u64> {
    o.metadata.resource_version.as_deref()?.parse().ok()
}

/// The version of a written object; the API server always sets one.
fn version_of(o: &DynamicObject, kind: Kind, key: &str) -> Result<u64, Error> {
    parse_version(o).ok_or_else(|| Error::StoreValue {
        store: STORE.into(),
        key: format!("{kind} {key}"),
        reason: format!(
            "resourceVersion {:?} is not a number",
            o.metadata.resource_version
        ),
    })
}

/// A replace that left the version as it was changed nothing.
fn updated(now: u64, before: u64) -> Outcome {
    if now == before {
        Outcome::Unchanged
    } else {
        Outcome::Updated
    }
}

/// The API server's refusal as the API answers it: invalid → 422 naming
/// the resource, anything else (unreachable, forbidden) → 503.
fn write_error(e: kube::Error, kind: Kind, key: &str) -> Error {
    match &e {
        kube::Error::Api(r) if matches!(r.code, 400 | 404 | 422) => Error::Rejected(
            Rejected::single(format!("{}[{key}]", kind.plural()), r.message.clone()),
        ),
        kube::Error::Api(r) => Error::StoreUnavailable {
            store: STORE.into(),
            reason: format!("{} ({}): {}", r.reason, r.code, r.message),
        },
        _ => Error::StoreUnavailable {
            store: STORE.into(),
            reason: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::ErrorResponse;

    fn api_error(code: u16, reason: &str, message: &str) -> kube::Error {
        kube::Error::Api(ErrorResponse {
            status: "Failure".into(),
            message: message.into(),
            reason: reason.into(),
            code,
        })
    }

    #[test]
    fn api_server_refusals_map_to_what_the_api_answers() {
        let e = write_error(
            api_error(422, "Invalid", "spec.rules: Required value"),
            Kind::Route,
            "shop/r",
        );
        assert!(matches!(e, Error::Rejected(_)), "{e}");
        assert_eq!(e.to_string(), "routes[shop/r]: spec.rules: Required value");
        let e = write_error(
            api_error(403, "Forbidden", "routes.sane.mesh is forbidden"),
            Kind::Route,
            "shop/r",
        );
        assert!(matches!(e, Error::StoreUnavailable { .. }), "{e}");
        assert!(e.to_string().contains("Forbidden (403)"), "{e}");
        assert_eq!(updated(7, 7), Outcome::Unchanged);
        assert_eq!(updated(8, 7), Outcome::Updated);
    }

    #[test]
    fn kinds_without_a_custom_resource_are_refused_saying_why() {
        let e = refused(Kind::Service).to_string();
        assert!(e.contains("Services, EndpointSlices and Pods"), "{e}");
        let e = refused(Kind::Telemetry).to_string();
        assert!(e.contains("no sane.mesh/v1 custom resource"), "{e}");
        assert_eq!(split("shop/web"), ("shop", "web"));
    }
}
